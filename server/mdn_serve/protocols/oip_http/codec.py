"""The Open Inference Protocol's HTTP/REST form (KServe v2) <-> numpy, with Triton's binary tensor extension.

A request body is a JSON object, optionally followed by binary tensors: the
`Inference-Header-Content-Length` header then says how many bytes the JSON takes, and each input
sent so carries a `binary_data_size` parameter (its bytes, in input order, little-endian). An
output is answered in binary when its `binary_data` parameter, or the request's
`binary_data_output` parameter, is true. Outputs, their datatypes and what they ask the pipeline
for are the gRPC form's (`oip.codec.OUTPUTS`, `oip.codec.plan`): one table for both.

JSON has no NaN: the NaN that pads ragged outputs (modes, IK solutions) is `null` in JSON data and
NaN in binary data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mdn_serve.errors import InvalidInput
from mdn_serve.protocols.oip.codec import INPUT_DTYPES, raw_bytes
from mdn_serve.protocols.oip.outputs import OUTPUTS, SEED_STATE, check_input_names, plan
from mdn_serve.protocols.shapes import element_count
from mdn_serve.serving.dataplane import Ask, Outputs
from mdn_serve.serving.repository import ModelRuntime

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"
# Most bytes a value takes in JSON data ("-1.2345678e-05,"), over the 4 it takes in binary.
JSON_OVERHEAD = 4.0


@dataclass
class InferRequest:
    """A decoded infer request: what the dataplane needs, and how to answer."""

    id: str
    inputs: dict[str, NDArray[np.float32]]
    names: tuple[str, ...]
    ask: Ask
    binary: frozenset[str]  # outputs to answer in binary
    timeout_us: int | None = None  # Triton's `timeout` parameter: microseconds the caller waits
    params: dict[str, Any] = field(default_factory=dict)


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def _params(value: object, where: str) -> dict[str, Any]:
    params = _object(value if value is not None else {}, f"{where} 'parameters'")
    for name, v in params.items():
        if not isinstance(v, bool | int | float | str):
            raise InvalidInput(f"{where} parameter {name!r} must be a boolean, number or string, got {v!r}")
    return params


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(the JSON part, the binary part) of a request body."""
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        n = -1
    if not 0 <= n <= len(body):
        raise InvalidInput(
            f"{HEADER_LENGTH} is {header_length!r}: it must be a whole number of bytes of JSON at the start of the "
            f"body, which has {len(body)} bytes"
        )
    return body[:n], body[n:]


def load_json(text: bytes, what: str = "the request body") -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{what} is not UTF-8 text; send JSON (binary tensors go after it, see "
                           f"{HEADER_LENGTH})") from None  # fmt: skip


def decode_infer(body: bytes, header_length: str | None, max_elements: int) -> InferRequest:
    """An infer request from its body and Inference-Header-Content-Length header (None when absent)."""
    text, binary = split_body(body, header_length)
    request = _object(load_json(text), "the request")
    request_id = request.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInput(f"'id' must be a string, got {request_id!r}")
    params = _params(request.get("parameters"), "the request's")
    inputs_json = request.get("inputs")
    if not isinstance(inputs_json, list) or not inputs_json:
        raise InvalidInput("the request needs 'inputs': a list of tensors, e.g. "
                           '[{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [0.5]}]')  # fmt: skip
    tensors = [_object(t, f"inputs[{i}]") for i, t in enumerate(inputs_json)]
    check_input_names([str(t.get("name")) for t in tensors])
    inputs: dict[str, NDArray[np.float32]] = {}
    offset = 0
    for tensor in tensors:
        array, used = _decode(tensor, binary, offset, max_elements)
        inputs[str(tensor["name"])] = array
        offset += used
    if offset != len(binary):
        raise InvalidInput(
            f"the body has {len(binary)} bytes after its JSON, but the inputs' binary_data_size add up to {offset}"
        )
    outputs_json = request.get("outputs") or []
    if not isinstance(outputs_json, list):
        raise InvalidInput("'outputs' must be a list of {\"name\": ...} objects")
    outputs = [_object(o, f"outputs[{i}]") for i, o in enumerate(outputs_json)]
    names = [str(o.get("name")) for o in outputs]
    chosen, ask = plan(names, params, inputs.get(SEED_STATE))
    every = _flag(params.get("binary_data_output", False), "binary_data_output")
    binary_out = {n for n in chosen if every}
    for name, o in zip(names, outputs, strict=True):
        flag = _params(o.get("parameters"), f"output {name!r}").get("binary_data")
        if flag is not None:
            (binary_out.add if _flag(flag, "binary_data") else binary_out.discard)(name)
    timeout = params.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 0):
        raise InvalidInput(
            f"parameter 'timeout' is microseconds the client waits: a whole number >= 0, got {timeout!r}"
        )
    return InferRequest(request_id, inputs, chosen, ask, frozenset(binary_out), timeout or None, params)


def _flag(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    raise InvalidInput(f"parameter {name!r} must be true or false, got {value!r}")


def _decode(tensor: dict[str, Any], binary: bytes, offset: int, max_elements: int) -> tuple[NDArray[np.float32], int]:
    """One input as float32, and the binary bytes it took."""
    name = tensor["name"]
    datatype = tensor.get("datatype")
    dtype = INPUT_DTYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise InvalidInput(f"unsupported datatype {datatype!r} for input '{name}'; send FP32 (or FP64)")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidInput(f"input '{name}' needs 'shape': a list of whole numbers, got {shape!r}")
    count = element_count(shape, f"input '{name}' shape", max_elements)
    params = _params(tensor.get("parameters"), f"input '{name}'")
    size = params.get("binary_data_size")
    if size is not None:
        if "data" in tensor:
            raise InvalidInput(f"input '{name}' has both 'data' and binary_data_size; send one or the other")
        if isinstance(size, bool) or not isinstance(size, int) or size != count * dtype.itemsize:
            raise InvalidInput(
                f"input '{name}' binary_data_size is {size!r}, but shape {shape} x {datatype} "
                f"({dtype.itemsize} bytes each) needs {count * dtype.itemsize}"
            )
        if offset + size > len(binary):
            raise InvalidInput(f"input '{name}' needs {size} binary bytes, but the body has only "
                               f"{len(binary) - offset} left after the JSON and earlier inputs")  # fmt: skip
        raw = binary[offset : offset + size]
        return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(np.float32, copy=False), size
    if "data" not in tensor:
        raise InvalidInput(f"input '{name}' has no 'data' (and no binary_data_size parameter)")
    try:
        values = np.asarray(tensor["data"])
    except ValueError:
        raise InvalidInput(f"input '{name}' data is ragged: nested lists must all have the same length") from None
    if values.dtype.kind not in "iuf" and values.size:
        raise InvalidInput(f"input '{name}' data must hold numbers only (JSON numbers, no strings or nulls)")
    if values.size != count:
        raise InvalidInput(f"input '{name}' data has {values.size} values, but shape {shape} needs {count}")
    return values.astype(np.float32).reshape(shape), 0


def _json_numbers(array: np.ndarray) -> str:
    """A flat JSON list body of an array's values: floats at their shortest float32 form, NaN as null."""
    flat = array.ravel()
    if flat.dtype.kind == "f":
        text = flat.astype(np.float32).astype(str)
        text[~np.isfinite(flat)] = "null"
        return ",".join(text.tolist())
    return ",".join(map(str, flat.tolist()))


def encode_infer(runtime: ModelRuntime, request: InferRequest, out: Outputs) -> tuple[bytes, int | None]:
    """(the response body, the length of its JSON part when binary outputs follow it, else None)."""
    parts: list[str] = []
    blobs: list[bytes] = []
    for name in request.names:
        spec = OUTPUTS[name]
        array = spec.value(out)
        head = f'{{"name":"{name}","datatype":"{spec.datatype}","shape":[{",".join(map(str, array.shape))}]'
        if name in request.binary:
            blob = raw_bytes(spec.datatype, array)
            blobs.append(blob)
            parts.append(f'{head},"parameters":{{"binary_data_size":{len(blob)}}}}}')
        elif spec.datatype == "BYTES":
            parts.append(f'{head},"data":{json.dumps([str(s) for s in array.ravel()])}}}')
        else:
            parts.append(f'{head},"data":[{_json_numbers(array)}]}}')
    ident = f',"id":{json.dumps(request.id)}' if request.id else ""
    header = (
        f'{{"model_name":{json.dumps(runtime.name)},"model_version":{json.dumps(runtime.version)}{ident},'
        f'"outputs":[{",".join(parts)}]}}'
    ).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
