"""mdn.v1 messages <-> numpy and the dataplane's types. The only mdn.v1 code that touches protobuf.

Tensors are dense float32, row-major, as raw little-endian bytes (the fast path) or repeated
values; a response uses the encoding of its request.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from mdn_core.ik import DEFAULT_REFINE
from numpy.typing import NDArray

from mdn_serve._proto.mdn.v1 import mdn_pb2 as pb
from mdn_serve.errors import InvalidInput
from mdn_serve.protocols.mdn_v1.tensors import decode_tensor, encode_tensor, write_tensor
from mdn_serve.serving.dataplane import Ask, IkSpec, Outputs, SampleSpec
from mdn_serve.serving.repository import ModelRuntime


def model_name(request: object) -> str:
    """The model a request names (for metric labels), or "" when it names none."""
    ref = getattr(request, "model", None)
    return ref.name if isinstance(ref, pb.ModelRef) else ""


def model_version(request: object) -> str:
    """The version a request names, or "" (the latest)."""
    ref = getattr(request, "model", None)
    return ref.version if isinstance(ref, pb.ModelRef) else ""


def decode_inputs(
    request: pb.PredictRequest | pb.SampleRequest | pb.ModesRequest, max_elements: int
) -> tuple[NDArray[np.float32], bool]:
    if not request.HasField("inputs"):
        raise InvalidInput("request has no inputs; set inputs to a [batch, input_dim] tensor")
    return decode_tensor(request.inputs, "inputs", max_elements)


def decode_targets(request: pb.SolveRequest, max_elements: int) -> tuple[NDArray[np.float32], bool]:
    if not request.HasField("targets"):
        raise InvalidInput(
            "request has no targets; set targets to a [batch, width] tensor in the model's target layout"
        )
    return decode_tensor(request.targets, "targets", max_elements)


def sample_ask(request: pb.SampleRequest) -> Ask:
    seed = request.seed if request.HasField("seed") else None
    scale = request.scale_temperature if request.HasField("scale_temperature") else None
    return Ask(sampling=SampleSpec(request.num_samples, seed, request.temperature, scale))


def modes_ask(request: pb.ModesRequest) -> Ask:
    return Ask(max_modes=request.max_modes)


def solve_ask(request: pb.SolveRequest, max_elements: int) -> Ask:
    state = None
    if request.HasField("seed_state"):
        state = decode_tensor(request.seed_state, "seed_state", max_elements)[0].astype(np.float64)
    return Ask(
        ik=IkSpec(
            max_solutions=request.max_solutions,
            refine=request.refine if request.HasField("refine") else DEFAULT_REFINE,
            tolerance=request.tolerance,
            num_samples=request.num_samples,
            seed=request.seed if request.HasField("seed") else None,
            orientation_tolerance=request.orientation_tolerance,
            seed_state=state,
        )
    )


SERVICES = pb.DESCRIPTOR.services_by_name

_REFS: dict[tuple[str, str], pb.ModelRef] = {}


def model_ref(runtime: ModelRuntime) -> pb.ModelRef:
    """The response's model reference, built once per version (it is on every response)."""
    key = (runtime.name, runtime.version)
    ref = _REFS.get(key)
    if ref is None:
        ref = _REFS[key] = pb.ModelRef(name=runtime.name, version=runtime.version)
    return ref


def model_info(runtime: ModelRuntime, versions: list[str]) -> pb.ModelInfo:
    meta = runtime.metadata
    return pb.ModelInfo(
        name=runtime.name,
        version=runtime.version,
        versions=versions,
        input_dim=meta.input_dim,
        output_dim=meta.output_dim,
        components=meta.components,
        input_names=meta.input_names,
        output_names=meta.output_names,
        metadata_json=meta.to_json(),
    )


def list_models(latest: Iterable[tuple[ModelRuntime, list[str]]]) -> pb.ListModelsResponse:
    return pb.ListModelsResponse(models=[model_info(runtime, versions) for runtime, versions in latest])


def predict_response(runtime: ModelRuntime, out: Outputs, raw: bool) -> pb.PredictResponse:
    mix = out.mixture
    response = pb.PredictResponse(model=model_ref(runtime))
    write_tensor(response.weights, mix.weights, raw)
    write_tensor(response.means, mix.means, raw)
    write_tensor(response.scales, mix.scales, raw)
    return response


def sample_response(runtime: ModelRuntime, out: Outputs, raw: bool) -> pb.SampleResponse:
    assert out.samples is not None
    response = pb.SampleResponse(model=model_ref(runtime))
    write_tensor(response.samples, out.samples, raw)
    return response


def modes_response(runtime: ModelRuntime, out: Outputs, raw: bool) -> pb.ModesResponse:
    modes = out.modes
    assert modes is not None
    response = pb.ModesResponse(model=model_ref(runtime), num_modes=modes.num_modes.tolist())
    write_tensor(response.modes, modes.modes, raw)
    write_tensor(response.log_density, modes.log_density, raw)
    write_tensor(response.mass, modes.mass, raw)
    return response


def solve_response(runtime: ModelRuntime, out: Outputs, raw: bool) -> pb.SolveResponse:
    found = out.solutions
    assert found is not None
    return pb.SolveResponse(
        model=model_ref(runtime),
        solutions=encode_tensor(found.solutions, raw),
        position_error=encode_tensor(found.position_error, raw),
        within_limits=encode_tensor(found.within_limits_padded(), raw),
        num_solutions=found.num_solutions.tolist(),
        status=found.status,
        score=encode_tensor(found.score, raw),
        orientation_error=encode_tensor(found.orientation_error, raw),
    )
