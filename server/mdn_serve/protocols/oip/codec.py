"""Open Inference Protocol messages <-> numpy and the dataplane's types: the only OIP code that touches protobuf.

Input `x` is FP32 (FP64 is accepted and cast), in typed contents or raw bytes. Outputs are
chosen by name from `OUTPUTS`, the one table of their datatypes, shapes and where their values
come from; which outputs a request names decides what it asks the pipeline for.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf import json_format
from mdn_core.chain import TARGET_NAMES
from mdn_core.contract import INPUT_NAME, ModelMetadata
from numpy.typing import NDArray

from mdn_serve import __version__
from mdn_serve._proto.inference import grpc_service_pb2 as pb
from mdn_serve.errors import InvalidInput
from mdn_serve.protocols.oip.outputs import (
    OUTPUTS,
    SEED_STATE,
    Param,
    check_input_names,
    outputs_of,
)
from mdn_serve.protocols.packed import extend_floats
from mdn_serve.protocols.shapes import element_count
from mdn_serve.serving.dataplane import Outputs
from mdn_serve.serving.repository import ModelRuntime
from mdn_serve.serving.statistics import VersionStatistics

SERVICES = pb.DESCRIPTOR.services_by_name
PLATFORM = "onnx_onnxv1"
SERVER_NAME = "mdn-serve"
EXTENSIONS = ["parameters", "model_configuration", "statistics", "model_repository"]
INPUT_DTYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}
CONTENT_FIELD = {"FP32": "fp32_contents", "FP64": "fp64_contents"}
RAW_DTYPES = {"FP32": "<f4", "INT32": "<i4"}


def model_name(request: object) -> str:
    """The model a request names (for metric labels), or "" when it names none."""
    return str(getattr(request, "model_name", "") or getattr(request, "name", ""))


def model_version(request: object) -> str:
    """The version a request names, or "" (the latest)."""
    return str(getattr(request, "model_version", "") or getattr(request, "version", ""))


def metadata_document(runtime: ModelRuntime, versions: list[str]) -> dict[str, Any]:
    """ModelMetadata as plain values: the HTTP form's JSON, and the gRPC message's fields."""
    m = runtime.metadata

    def tensor(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
        return {"name": name, "datatype": datatype, "shape": shape}

    return {
        "name": runtime.name,
        "versions": versions,
        "platform": PLATFORM,
        "inputs": [tensor(INPUT_NAME, "FP32", [-1, m.input_dim])],
        "outputs": [tensor(n, OUTPUTS[n].datatype, OUTPUTS[n].shape(m)) for n in outputs_of(m)],
    }


def model_metadata(runtime: ModelRuntime, versions: list[str]) -> pb.ModelMetadataResponse:
    return pb.ModelMetadataResponse(**metadata_document(runtime, versions))


CONFIG_TYPES = {"FP32": pb.TYPE_FP32, "INT32": pb.TYPE_INT32, "BYTES": pb.TYPE_STRING}


def _numbers(values: Any) -> str:
    return ",".join(repr(float(v)) for v in values)


def config_parameters(m: ModelMetadata) -> dict[str, str]:
    """What ModelConfig's `parameters` say about a model: its metadata, and for arms the chain, flattened."""
    params = {"task": m.task, "components": str(m.components), "mdn_metadata": m.to_json()}
    chain = m.chain
    if chain is not None:
        limits = chain.limits
        params |= {
            "ik_target_layout": chain.target,
            "ik_target_columns": TARGET_NAMES[chain.target].replace(" ", ""),
            "joint_names": ",".join(j.name for j in chain.joints),
            "joint_types": ",".join(j.kind for j in chain.joints),
            "joint_lower": _numbers(limits[:, 0]),
            "joint_upper": _numbers(limits[:, 1]),
            "base_link": chain.base_link,
            "tip_link": chain.tip_link,
        }
        if chain.source:
            params["urdf"] = chain.source
    return params


def model_config(runtime: ModelRuntime, max_rows: int) -> pb.ModelConfigResponse:
    """Triton's model configuration extension: shapes without the batch dimension, optional inputs marked,
    and the kinematics in `parameters` (ModelMetadata has no field for them).

    For arm models `x` carries the network's features for mixture, sample and mode outputs, and targets in
    the `ik_target_columns` layout when `ik_*` outputs are asked for; `seed_state` is then optional.
    """
    m = runtime.metadata
    inputs = [pb.ModelInput(name=INPUT_NAME, data_type=pb.TYPE_FP32, dims=[m.input_dim])]
    if m.chain is not None:
        inputs.append(pb.ModelInput(name=SEED_STATE, data_type=pb.TYPE_FP32, dims=[m.chain.num_joints], optional=True))
    outputs = [
        pb.ModelOutput(name=n, data_type=CONFIG_TYPES[OUTPUTS[n].datatype], dims=OUTPUTS[n].shape(m)[1:])
        for n in outputs_of(m)
    ]
    config = pb.ModelConfig(
        name=runtime.name,
        platform=PLATFORM,
        backend="onnxruntime",
        max_batch_size=max_rows,
        input=inputs,
        output=outputs,
        parameters={k: pb.ModelParameter(string_value=v) for k, v in config_parameters(m).items()},
    )
    return pb.ModelConfigResponse(config=config)


def config_document(runtime: ModelRuntime, max_rows: int) -> dict[str, Any]:
    """ModelConfig's `config` as JSON (Triton's HTTP form): protobuf's JSON mapping, with dims as numbers."""
    document: dict[str, Any] = json_format.MessageToDict(
        model_config(runtime, max_rows).config, preserving_proto_field_name=True
    )
    for tensor in (*document.get("input", []), *document.get("output", [])):
        tensor["dims"] = [int(d) for d in tensor.get("dims", [])]
    return document


def server_live() -> pb.ServerLiveResponse:
    return pb.ServerLiveResponse(live=True)


def server_ready(ready: bool) -> pb.ServerReadyResponse:
    return pb.ServerReadyResponse(ready=ready)


def model_ready(ready: bool) -> pb.ModelReadyResponse:
    return pb.ModelReadyResponse(ready=ready)


def server_metadata() -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)


def decode_inputs(request: pb.ModelInferRequest, max_elements: int) -> tuple[dict[str, NDArray[np.float32]], bool]:
    """The request's input tensors by name as float32 (`x`, and `seed_state` when sent), and whether they came raw."""
    names = [t.name for t in request.inputs]
    check_input_names(names)
    typed = any(
        t.HasField("contents") and any(len(getattr(t.contents, f.name)) for f in t.contents.DESCRIPTOR.fields)
        for t in request.inputs
    )
    raw = bool(request.raw_input_contents)
    if raw and typed:
        raise InvalidInput("the request mixes raw_input_contents and typed contents; use one or the other")
    if raw and len(request.raw_input_contents) != len(names):
        raise InvalidInput(
            f"raw_input_contents has {len(request.raw_input_contents)} entries for {len(names)} input(s); "
            "send one per input"
        )
    arrays = {
        t.name: _decode(t, request.raw_input_contents[i] if raw else None, max_elements)
        for i, t in enumerate(request.inputs)
    }
    return arrays, raw


def _decode(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None, max_elements: int) -> NDArray[np.float32]:
    name = tensor.name
    dtype = INPUT_DTYPES.get(tensor.datatype)
    if dtype is None:
        raise InvalidInput(f"unsupported datatype {tensor.datatype!r} for input '{name}'; send FP32 (or FP64)")
    shape = list(tensor.shape)
    count = element_count(shape, f"input '{name}' shape", max_elements)
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise InvalidInput(
                f"raw input '{name}' has {len(raw)} bytes, but shape {shape} x {tensor.datatype} "
                f"({dtype.itemsize} bytes each) needs {count * dtype.itemsize}"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(np.float32, copy=False)
    field = CONTENT_FIELD[tensor.datatype]
    others = [
        f.name for f in tensor.contents.DESCRIPTOR.fields if f.name != field and len(getattr(tensor.contents, f.name))
    ]
    if others:
        raise InvalidInput(f"input '{name}' is {tensor.datatype}: put its data in {field}, not {others[0]}")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidInput(f"input '{name}' {field} has {len(values)} values, but shape {shape} needs {count}")
    array: NDArray[np.float32] = np.asarray(values, dtype=np.float32).reshape(shape)
    return array


def output_names(request: pb.ModelInferRequest) -> list[str]:
    return [o.name for o in request.outputs]


def grpc_parameters(params: Any) -> dict[str, Param]:
    """A gRPC parameters map (name -> InferParameter) as plain values."""
    out: dict[str, Param] = {}
    for name, p in params.items():
        which = p.WhichOneof("parameter_choice")
        if which is not None:
            out[name] = getattr(p, which)
    return out


def infer_response(
    request: pb.ModelInferRequest, runtime: ModelRuntime, names: tuple[str, ...], out: Outputs, raw: bool
) -> pb.ModelInferResponse:
    """The named outputs, in the order named, raw or typed as the request's input came."""
    response = pb.ModelInferResponse(model_name=runtime.name, model_version=runtime.version, id=request.id)
    for name in names:
        spec = OUTPUTS[name]
        array = spec.value(out)
        tensor = response.outputs.add(name=name, datatype=spec.datatype, shape=array.shape)
        if raw:
            response.raw_output_contents.append(raw_bytes(spec.datatype, array))
        elif spec.datatype == "INT32":
            tensor.contents.int_contents.extend(array.ravel().tolist())
        elif spec.datatype == "BYTES":
            tensor.contents.bytes_contents.extend(s.encode() for s in array.ravel())
        else:
            extend_floats(tensor.contents, "fp32_contents", array)
    return response


def raw_bytes(datatype: str, array: np.ndarray) -> bytes:
    """The protocol's raw encoding: little-endian values; BYTES as 4-byte length prefix + data each."""
    if datatype == "BYTES":
        parts = [s.encode() for s in array.ravel()]
        return b"".join(len(p).to_bytes(4, "little") + p for p in parts)
    return np.ascontiguousarray(array, dtype=RAW_DTYPES[datatype]).tobytes()


STAGES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


def statistics_document(entries: list[tuple[str, str, VersionStatistics]]) -> dict[str, Any]:
    """Triton's ModelStatisticsResponse as plain values for (name, version, statistics) entries."""
    stats_list = []
    for name, version, stats in entries:
        with stats.lock:
            stages = {f: {"count": getattr(stats, f).count, "ns": getattr(stats, f).ns} for f in STAGES}
            stats_list.append({
                "name": name,
                "version": version,
                "last_inference": stats.last_inference_ms,
                "inference_count": stats.inference_count,
                "execution_count": stats.execution_count,
                "inference_stats": stages,
            })  # fmt: skip
    return {"model_stats": stats_list}


def model_statistics(entries: list[tuple[str, str, VersionStatistics]]) -> pb.ModelStatisticsResponse:
    return pb.ModelStatisticsResponse(**statistics_document(entries))


def index_document(entries: list[tuple[str, str, str, str]]) -> list[dict[str, str]]:
    """Triton's repository index as plain values for (name, version, state, reason) entries."""
    return [{"name": n, "version": v, "state": state, "reason": why} for n, v, state, why in entries]


def model_load() -> pb.RepositoryModelLoadResponse:
    return pb.RepositoryModelLoadResponse()


def model_unload() -> pb.RepositoryModelUnloadResponse:
    return pb.RepositoryModelUnloadResponse()


def repository_index(entries: list[tuple[str, str, str, str]]) -> pb.RepositoryIndexResponse:
    return pb.RepositoryIndexResponse(models=index_document(entries))
