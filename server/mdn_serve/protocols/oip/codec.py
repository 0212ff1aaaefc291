"""Open Inference Protocol messages <-> numpy and the dataplane's types: the only OIP code that touches protobuf.

Input `x` is FP32 (FP64 is accepted and cast), in typed contents or raw bytes. Outputs are
chosen by name from `OUTPUTS`, the one table of their datatypes, shapes and where their values
come from; which outputs a request names decides what it asks the pipeline for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from mdn_core.chain import TARGET_NAMES
from mdn_core.contract import INPUT_NAME, ModelMetadata
from mdn_core.ik import DEFAULT_REFINE
from numpy.typing import NDArray

from mdn_serve import __version__
from mdn_serve._proto.inference import grpc_service_pb2 as pb
from mdn_serve.errors import InvalidInput
from mdn_serve.protocols.packed import extend_floats
from mdn_serve.protocols.shapes import element_count
from mdn_serve.serving.dataplane import Ask, IkSpec, Outputs, SampleSpec
from mdn_serve.serving.repository import ModelRuntime
from mdn_serve.serving.statistics import VersionStatistics

SERVICES = pb.DESCRIPTOR.services_by_name
PLATFORM = "onnx_onnxv1"
SERVER_NAME = "mdn-serve"
EXTENSIONS = ["parameters", "model_configuration", "statistics"]
INPUT_DTYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}
CONTENT_FIELD = {"FP32": "fp32_contents", "FP64": "fp64_contents"}
RAW_DTYPES = {"FP32": "<f4", "INT32": "<i4"}
MODEL_INPUT = INPUT_NAME  # the network's input, `x`
SEED_STATE = "seed_state"  # optional second input: [B, J] or [1, J] joint values, for IK outputs


@dataclass(frozen=True)
class Output:
    """One output the server can produce: its datatype, shape (-1: variable) and value."""

    datatype: str  # FP32, INT32 or BYTES
    family: str  # what it needs computed: mixture, samples, modes or ik
    shape: Callable[[ModelMetadata], list[int]]
    value: Callable[[Outputs], np.ndarray]


def _solutions(out: Outputs) -> Any:
    assert out.solutions is not None
    return out.solutions


def _modes(out: Outputs) -> Any:
    assert out.modes is not None
    return out.modes


def _samples(out: Outputs) -> np.ndarray:
    assert out.samples is not None
    return out.samples


OUTPUTS: dict[str, Output] = {
    "weights": Output("FP32", "mixture", lambda m: [-1, m.components], lambda o: o.mixture.weights),
    "means": Output("FP32", "mixture", lambda m: [-1, m.components, m.output_dim], lambda o: o.mixture.means),
    "scales": Output("FP32", "mixture", lambda m: [-1, m.components, m.output_dim], lambda o: o.mixture.scales),
    "samples": Output("FP32", "samples", lambda m: [-1, -1, m.output_dim], _samples),
    "modes": Output("FP32", "modes", lambda m: [-1, -1, m.output_dim], lambda o: _modes(o).modes),
    "mode_log_density": Output("FP32", "modes", lambda m: [-1, -1], lambda o: _modes(o).log_density),
    "mode_mass": Output("FP32", "modes", lambda m: [-1, -1], lambda o: _modes(o).mass),
    "num_modes": Output("INT32", "modes", lambda m: [-1], lambda o: _modes(o).num_modes),
    "ik_solutions": Output("FP32", "ik", lambda m: [-1, -1, m.output_dim], lambda o: _solutions(o).solutions),
    "ik_position_error": Output("FP32", "ik", lambda m: [-1, -1], lambda o: _solutions(o).position_error),
    "ik_within_limits": Output("FP32", "ik", lambda m: [-1, -1], lambda o: _solutions(o).within_limits_padded()),
    "ik_score": Output("FP32", "ik", lambda m: [-1, -1], lambda o: _solutions(o).score),
    "ik_orientation_error": Output("FP32", "ik", lambda m: [-1, -1], lambda o: _solutions(o).orientation_error),
    "ik_num_solutions": Output("INT32", "ik", lambda m: [-1], lambda o: _solutions(o).num_solutions),
    "ik_status": Output("BYTES", "ik", lambda m: [-1], lambda o: np.array(_solutions(o).status, dtype=object)),
}
DEFAULT_OUTPUTS = ("weights", "means", "scales")


def model_name(request: object) -> str:
    """The model a request names (for metric labels), or "" when it names none."""
    return str(getattr(request, "model_name", "") or getattr(request, "name", ""))


def model_version(request: object) -> str:
    """The version a request names, or "" (the latest)."""
    return str(getattr(request, "model_version", "") or getattr(request, "version", ""))


def outputs_of(meta: ModelMetadata) -> list[str]:
    """The outputs a model offers: IK ones only for arm models."""
    return [name for name, o in OUTPUTS.items() if o.family != "ik" or meta.chain is not None]


def model_metadata(runtime: ModelRuntime, versions: list[str]) -> pb.ModelMetadataResponse:
    meta = pb.ModelMetadataResponse.TensorMetadata
    m = runtime.metadata
    return pb.ModelMetadataResponse(
        name=runtime.name,
        versions=versions,
        platform=PLATFORM,
        inputs=[meta(name=INPUT_NAME, datatype="FP32", shape=[-1, m.input_dim])],
        outputs=[meta(name=n, datatype=OUTPUTS[n].datatype, shape=OUTPUTS[n].shape(m)) for n in outputs_of(m)],
    )


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
    if INPUT_NAME not in names or len(set(names)) != len(names) or not set(names) <= {INPUT_NAME, SEED_STATE}:
        raise InvalidInput(
            f"send one input tensor named '{INPUT_NAME}' (and optionally '{SEED_STATE}' for IK outputs), got {names}"
        )
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


def _param(params: dict[str, pb.InferParameter], name: str, kind: Callable[[str], float | int]) -> float | int | None:
    """A request parameter as a number, whichever of the protocol's types carries it."""
    p = params.get(name)
    if p is None:
        return None
    which = p.WhichOneof("parameter_choice")
    value: object = getattr(p, which) if which else None
    try:
        if which == "string_param":
            return kind(str(value).strip())
        if which in ("int64_param", "uint64_param"):
            return kind(str(value))
        if which == "double_param":
            number = float(value)  # type: ignore[arg-type]
            if kind is int:
                if not number.is_integer():
                    raise ValueError
                return int(number)
            return number
    except ValueError:
        pass
    raise InvalidInput(f"parameter {name!r} must be {'an integer' if kind is int else 'a number'}, got {value!r}")


def _flag(params: dict[str, pb.InferParameter], name: str, default: bool) -> bool:
    p = params.get(name)
    if p is None:
        return default
    which = p.WhichOneof("parameter_choice")
    if which == "bool_param":
        return bool(p.bool_param)
    text = str(getattr(p, which)).strip().lower() if which else ""
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    raise InvalidInput(f"parameter {name!r} must be a boolean (true/false or 1/0), got {text!r}")


def plan(request: pb.ModelInferRequest, seed_state: NDArray[np.float32] | None = None) -> tuple[tuple[str, ...], Ask]:
    """The outputs a request names (in its order) and what they ask the pipeline for."""
    names = tuple(o.name for o in request.outputs) or DEFAULT_OUTPUTS
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        raise InvalidInput(f"unknown output {unknown[0]!r}; outputs are {', '.join(OUTPUTS)}")
    if len(set(names)) != len(names):
        raise InvalidInput(f"an output is requested twice: {list(names)}")
    families = {OUTPUTS[n].family for n in names}
    params = dict(request.parameters)
    sampling = None
    if "samples" in families:
        num = _param(params, "num_samples", int)
        seed = _param(params, "seed", int)
        if seed is not None and not 0 <= seed < 2**64:
            raise InvalidInput(f"parameter 'seed' must be in 0..2^64-1, got {seed}")
        temperature = _param(params, "temperature", float)
        scale_temperature = _param(params, "scale_temperature", float)
        sampling = SampleSpec(
            int(num) if num is not None else 1,
            int(seed) if seed is not None else None,
            float(temperature) if temperature is not None else 0.0,
            float(scale_temperature) if scale_temperature is not None else None,
        )
    max_modes = None
    if "modes" in families:
        value = _param(params, "max_modes", int)
        max_modes = int(value) if value is not None else 0
    ik = None
    if seed_state is not None and "ik" not in families:
        raise InvalidInput(f"input '{SEED_STATE}' is for inverse kinematics: ask for ik_* outputs, or drop it")
    if "ik" in families:
        seed = _param(params, "ik_seed", int)
        ik = IkSpec(
            max_solutions=int(_param(params, "max_solutions", int) or 0),
            refine=_flag(params, "refine", default=DEFAULT_REFINE),
            tolerance=float(_param(params, "tolerance", float) or 0.0),
            orientation_tolerance=float(_param(params, "orientation_tolerance", float) or 0.0),
            num_samples=int(_param(params, "ik_num_samples", int) or 0),
            seed=int(seed) if seed is not None else None,
            seed_state=None if seed_state is None else seed_state.astype(np.float64),
        )
    return names, Ask(sampling, max_modes, ik)


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
            response.raw_output_contents.append(_raw_bytes(spec.datatype, array))
        elif spec.datatype == "INT32":
            tensor.contents.int_contents.extend(array.ravel().tolist())
        elif spec.datatype == "BYTES":
            tensor.contents.bytes_contents.extend(s.encode() for s in array.ravel())
        else:
            extend_floats(tensor.contents, "fp32_contents", array)
    return response


def _raw_bytes(datatype: str, array: np.ndarray) -> bytes:
    """The protocol's raw encoding: little-endian values; BYTES as 4-byte length prefix + data each."""
    if datatype == "BYTES":
        parts = [s.encode() for s in array.ravel()]
        return b"".join(len(p).to_bytes(4, "little") + p for p in parts)
    return np.ascontiguousarray(array, dtype=RAW_DTYPES[datatype]).tobytes()


def model_statistics(entries: list[tuple[str, str, VersionStatistics]]) -> pb.ModelStatisticsResponse:
    """Triton's ModelStatisticsResponse for (name, version, statistics) entries."""
    response = pb.ModelStatisticsResponse()
    for name, version, stats in entries:
        with stats.lock:
            out = response.model_stats.add(
                name=name,
                version=version,
                last_inference=stats.last_inference_ms,
                inference_count=stats.inference_count,
                execution_count=stats.execution_count,
            )
            infer = out.inference_stats
            for field in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
                duration = getattr(stats, field)
                target = getattr(infer, field)
                target.count, target.ns = duration.count, duration.ns
    return response


def repository_index(entries: list[tuple[str, str, str, str]]) -> pb.RepositoryIndexResponse:
    """Triton's RepositoryIndexResponse for (name, version, state, reason) entries."""
    response = pb.RepositoryIndexResponse()
    for name, version, state, reason in entries:
        response.models.add(name=name, version=version, state=state, reason=reason)
    return response
