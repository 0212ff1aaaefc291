"""The Open Inference Protocol (KServe v2, `inference.GRPCInferenceService`) over the same Dataplane.

Only conversion lives here: tensors and parameters in, the Dataplane's arrays out. Input `x`
is FP32 (FP64 is accepted and cast) in typed contents or raw bytes; outputs are chosen by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from numpy.typing import NDArray

from mdn_serve import __version__
from mdn_serve._proto.inference import grpc_service_pb2 as pb
from mdn_serve._proto.inference import grpc_service_pb2_grpc as pb_grpc
from mdn_serve.codec import element_count
from mdn_serve.contract import INPUT_NAME
from mdn_serve.dataplane import Dataplane, Outputs, SampleSpec
from mdn_serve.errors import InvalidInput, ModelNotFound, Unavailable
from mdn_serve.rpc import deadline_of, handler
from mdn_serve.runtime import ModelRuntime

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
PROTOCOL = "oip"
PLATFORM = "onnx_onnxv1"
SERVER_NAME = "mdn-serve"
EXTENSIONS = ["parameters"]

DEFAULT_OUTPUTS = ("weights", "means", "scales")
MODE_OUTPUTS = ("modes", "mode_log_density", "mode_mass", "num_modes")
IK_OUTPUTS = ("ik_solutions", "ik_position_error", "ik_within_limits", "ik_score", "ik_num_solutions", "ik_status")
ALL_OUTPUTS = (*DEFAULT_OUTPUTS, "samples", *MODE_OUTPUTS, *IK_OUTPUTS)
INPUT_DTYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}
CONTENT_FIELD = {"FP32": "fp32_contents", "FP64": "fp64_contents"}
PARAMETERS = ("num_samples", "seed", "temperature", "max_modes")


def _model_of(request: object) -> str:
    return str(getattr(request, "model_name", "") or getattr(request, "name", ""))


def output_shapes(runtime: ModelRuntime) -> dict[str, tuple[str, list[int]]]:
    """Datatype and shape (-1: variable) of every output the server can produce for a model."""
    k, d = runtime.components, runtime.output_dim
    return {
        "weights": ("FP32", [-1, k]),
        "means": ("FP32", [-1, k, d]),
        "scales": ("FP32", [-1, k, d]),
        "samples": ("FP32", [-1, -1, d]),
        "modes": ("FP32", [-1, -1, d]),
        "mode_log_density": ("FP32", [-1, -1]),
        "mode_mass": ("FP32", [-1, -1]),
        "num_modes": ("INT32", [-1]),
    }


def ik_output_shapes(runtime: ModelRuntime) -> dict[str, tuple[str, list[int]]]:
    """The inverse-kinematics outputs, for models whose metadata carries kinematics."""
    if runtime.metadata.kinematics is None:
        return {}
    j = runtime.output_dim
    return {
        "ik_solutions": ("FP32", [-1, -1, j]),
        "ik_position_error": ("FP32", [-1, -1]),
        "ik_within_limits": ("FP32", [-1, -1]),
        "ik_score": ("FP32", [-1, -1]),
        "ik_num_solutions": ("INT32", [-1]),
        "ik_status": ("BYTES", [-1]),
    }


def decode_input(request: pb.ModelInferRequest, max_elements: int) -> tuple[NDArray[np.float32], bool]:
    """The request's one input tensor as float32 (B, in_dim), and whether it came raw."""
    if len(request.inputs) != 1:
        names = [t.name for t in request.inputs]
        raise InvalidInput(f"send exactly one input tensor named '{INPUT_NAME}', got {len(names)}: {names}")
    tensor = request.inputs[0]
    if tensor.name != INPUT_NAME:
        raise InvalidInput(f"unknown input {tensor.name!r}; the input of every model here is '{INPUT_NAME}'")
    dtype = INPUT_DTYPES.get(tensor.datatype)
    if dtype is None:
        raise InvalidInput(f"unsupported datatype {tensor.datatype!r} for input '{INPUT_NAME}'; send FP32 (or FP64)")
    shape = list(tensor.shape)
    count = element_count(shape, f"input '{INPUT_NAME}' shape", max_elements)
    typed = tensor.HasField("contents") and any(
        len(getattr(tensor.contents, f.name)) for f in tensor.contents.DESCRIPTOR.fields
    )
    if request.raw_input_contents:
        if typed:
            raise InvalidInput("the request mixes raw_input_contents and typed contents; use one or the other")
        if len(request.raw_input_contents) != 1:
            raise InvalidInput(
                f"raw_input_contents has {len(request.raw_input_contents)} entries for 1 input; send one per input"
            )
        raw = request.raw_input_contents[0]
        if len(raw) != count * dtype.itemsize:
            raise InvalidInput(
                f"raw input '{INPUT_NAME}' has {len(raw)} bytes, but shape {shape} x {tensor.datatype} "
                f"({dtype.itemsize} bytes each) needs {count * dtype.itemsize}"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(np.float32, copy=False), True
    field = CONTENT_FIELD[tensor.datatype]
    others = [
        f.name for f in tensor.contents.DESCRIPTOR.fields if f.name != field and len(getattr(tensor.contents, f.name))
    ]
    if others:
        raise InvalidInput(f"input '{INPUT_NAME}' is {tensor.datatype}: put its data in {field}, not {others[0]}")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidInput(f"input '{INPUT_NAME}' {field} has {len(values)} values, but shape {shape} needs {count}")
    array: NDArray[np.float32] = np.asarray(values, dtype=np.float32).reshape(shape)
    return array, False


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


@dataclass(frozen=True)
class IkPlan:
    max_solutions: int
    refine: bool
    tolerance: float
    num_samples: int
    seed: int | None


@dataclass(frozen=True)
class InferPlan:
    outputs: tuple[str, ...]
    sampling: SampleSpec | None
    max_modes: int | None
    ik: IkPlan | None


def plan(request: pb.ModelInferRequest) -> InferPlan:
    names = tuple(o.name for o in request.outputs) or DEFAULT_OUTPUTS
    unknown = [n for n in names if n not in ALL_OUTPUTS]
    if unknown:
        raise InvalidInput(f"unknown output {unknown[0]!r}; outputs are {', '.join(ALL_OUTPUTS)}")
    if len(set(names)) != len(names):
        raise InvalidInput(f"an output is requested twice: {list(names)}")
    params = dict(request.parameters)
    sampling = None
    if "samples" in names:
        num = _param(params, "num_samples", int)
        seed = _param(params, "seed", int)
        if seed is not None and not 0 <= seed < 2**64:
            raise InvalidInput(f"parameter 'seed' must be in 0..2^64-1, got {seed}")
        temperature = _param(params, "temperature", float)
        sampling = SampleSpec(
            int(num) if num is not None else 1,
            int(seed) if seed is not None else None,
            float(temperature) if temperature is not None else 0.0,
        )
    max_modes = None
    if any(n in MODE_OUTPUTS for n in names):
        value = _param(params, "max_modes", int)
        max_modes = int(value) if value is not None else 0
    ik = None
    if any(n in IK_OUTPUTS for n in names):
        refine = _flag(params, "refine", default=True)
        seed = _param(params, "ik_seed", int)
        ik = IkPlan(
            max_solutions=int(_param(params, "max_solutions", int) or 0),
            refine=refine,
            tolerance=float(_param(params, "tolerance", float) or 0.0),
            num_samples=int(_param(params, "ik_num_samples", int) or 0),
            seed=int(seed) if seed is not None else None,
        )
    return InferPlan(names, sampling, max_modes, ik)


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


def output_arrays(out: Outputs, names: tuple[str, ...]) -> list[tuple[str, str, np.ndarray]]:
    """(name, datatype, array) for each requested output, in the order requested."""
    mix = out.mixture
    found: dict[str, np.ndarray] = {"weights": mix.weights, "means": mix.means, "scales": mix.scales}
    if out.samples is not None:
        found["samples"] = out.samples
    if out.modes is not None:
        m = out.modes
        found.update(modes=m.modes, mode_log_density=m.log_density, mode_mass=m.mass, num_modes=m.num_modes)
    return [(n, "INT32" if n == "num_modes" else "FP32", found[n]) for n in names]


class OipServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: Dataplane, max_elements: int) -> None:
        self.dataplane = dataplane
        self.max_elements = max_elements

    @handler(PROTOCOL, "ServerLive", _model_of)
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @handler(PROTOCOL, "ServerReady", _model_of)
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dataplane.ready)

    @handler(PROTOCOL, "ModelReady", _model_of)
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        try:
            self.dataplane.resolve(request.name, request.version)
        except (ModelNotFound, Unavailable):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @handler(PROTOCOL, "ServerMetadata", _model_of)
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)

    @handler(PROTOCOL, "ModelMetadata", _model_of)
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        runtime = self.dataplane.resolve(request.name, request.version)
        meta = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=runtime.name,
            versions=self.dataplane.models().entry(runtime.name).version_list,
            platform=PLATFORM,
            inputs=[meta(name=INPUT_NAME, datatype="FP32", shape=[-1, runtime.input_dim])],
            outputs=[
                meta(name=n, datatype=t, shape=s)
                for n, (t, s) in {**output_shapes(runtime), **ik_output_shapes(runtime)}.items()
            ],
        )

    @handler(PROTOCOL, "ModelInfer", _model_of)
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        runtime = self.dataplane.resolve(request.model_name, request.model_version)  # NOT_FOUND before input errors
        x, raw = decode_input(request, self.max_elements)
        todo = plan(request)
        arrays: dict[str, tuple[str, np.ndarray]] = {}
        if any(n not in IK_OUTPUTS for n in todo.outputs):
            runtime, out = await self.dataplane.infer(
                "ModelInfer",
                runtime.name,
                runtime.version,
                x,
                sampling=todo.sampling,
                max_modes=todo.max_modes,
                deadline=deadline_of(context),
            )
            arrays.update({n: (t, a) for n, t, a in output_arrays(out, todo.outputs)})
        if todo.ik is not None:
            ik = todo.ik
            runtime, found = await self.dataplane.solve_ik(
                runtime.name, runtime.version, x, ik.max_solutions, ik.refine, ik.tolerance, ik.num_samples,
                ik.seed, method="ModelInfer", deadline=deadline_of(context),
            )  # fmt: skip
            shown = ~np.isnan(found.position_error)
            arrays.update(
                ik_solutions=("FP32", found.solutions),
                ik_position_error=("FP32", found.position_error),
                ik_within_limits=("FP32", np.where(shown, found.within_limits, np.nan)),
                ik_score=("FP32", found.score),
                ik_num_solutions=("INT32", found.num_solutions),
                ik_status=("BYTES", np.array(found.status, dtype=object)),
            )
        response = pb.ModelInferResponse(model_name=runtime.name, model_version=runtime.version, id=request.id)
        for name in todo.outputs:
            datatype, array = arrays[name]
            tensor = response.outputs.add(name=name, datatype=datatype, shape=array.shape)
            if raw:
                response.raw_output_contents.append(_raw_bytes(datatype, array))
            elif datatype == "INT32":
                tensor.contents.int_contents.extend(array.ravel().tolist())
            elif datatype == "BYTES":
                tensor.contents.bytes_contents.extend(s.encode() for s in array.ravel())
            else:
                tensor.contents.fp32_contents.extend(array.ravel().tolist())
        return response


def _raw_bytes(datatype: str, array: np.ndarray) -> bytes:
    """The protocol's raw encoding: little-endian values; BYTES as 4-byte length prefix + data each."""
    if datatype == "BYTES":
        parts = [s.encode() for s in array.ravel()]
        return b"".join(len(p).to_bytes(4, "little") + p for p in parts)
    return np.ascontiguousarray(array, dtype="<i4" if datatype == "INT32" else "<f4").tobytes()
