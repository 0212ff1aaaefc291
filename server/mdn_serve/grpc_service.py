"""mdn.v1 over gRPC: thin handlers over the Dataplane, and the one error-to-status mapping."""

from __future__ import annotations

import grpc
import numpy as np

from mdn_serve._proto.mdn.v1 import mdn_pb2 as pb
from mdn_serve._proto.mdn.v1 import mdn_pb2_grpc as pb_grpc
from mdn_serve.codec import decode_tensor, encode_tensor, require_inputs, write_tensor
from mdn_serve.dataplane import Dataplane, SampleSpec
from mdn_serve.rpc import deadline_of, handler
from mdn_serve.runtime import ModelRuntime

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["MixtureDensityService"].full_name
PROTOCOL = "mdn.v1"


def _model_of(request: object) -> str:
    ref = getattr(request, "model", None)
    return ref.name if isinstance(ref, pb.ModelRef) else ""


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


class MdnServicer(pb_grpc.MixtureDensityServiceServicer):
    def __init__(self, dataplane: Dataplane, max_elements: int) -> None:
        self.dataplane = dataplane
        self.max_elements = max_elements
        self._refs: dict[tuple[str, str], pb.ModelRef] = {}

    def _inputs(self, request: pb.PredictRequest | pb.SampleRequest | pb.ModesRequest) -> tuple[np.ndarray, bool]:
        require_inputs(request.HasField("inputs"))
        return decode_tensor(request.inputs, "inputs", self.max_elements)

    def _ref(self, runtime: ModelRuntime) -> pb.ModelRef:
        key = (runtime.name, runtime.version)
        ref = self._refs.get(key)
        if ref is None:
            ref = self._refs[key] = pb.ModelRef(name=runtime.name, version=runtime.version)
        return ref

    @handler(PROTOCOL, "ListModels", _model_of)
    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        repo = self.dataplane.models()
        return pb.ListModelsResponse(
            models=[model_info(e.latest, e.version_list) for _, e in sorted(repo.models.items())]
        )

    @handler(PROTOCOL, "GetModel", _model_of)
    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        runtime = self.dataplane.resolve(request.model.name, request.model.version)
        return model_info(runtime, self.dataplane.models().entry(runtime.name).version_list)

    @handler(PROTOCOL, "Predict", _model_of)
    async def Predict(self, request: pb.PredictRequest, context: grpc.aio.ServicerContext) -> pb.PredictResponse:
        x, raw = self._inputs(request)
        runtime, out = await self.dataplane.infer(
            "Predict", request.model.name, request.model.version, x, deadline=deadline_of(context)
        )
        mix = out.mixture
        response = pb.PredictResponse(model=self._ref(runtime))
        write_tensor(response.weights, mix.weights, raw)
        write_tensor(response.means, mix.means, raw)
        write_tensor(response.scales, mix.scales, raw)
        return response

    @handler(PROTOCOL, "Sample", _model_of)
    async def Sample(self, request: pb.SampleRequest, context: grpc.aio.ServicerContext) -> pb.SampleResponse:
        x, raw = self._inputs(request)
        seed = request.seed if request.HasField("seed") else None
        spec = SampleSpec(request.num_samples, seed, request.temperature)
        runtime, out = await self.dataplane.infer(
            "Sample", request.model.name, request.model.version, x, sampling=spec, deadline=deadline_of(context)
        )
        assert out.samples is not None
        response = pb.SampleResponse(model=self._ref(runtime))
        write_tensor(response.samples, out.samples, raw)
        return response

    @handler(PROTOCOL, "Modes", _model_of)
    async def Modes(self, request: pb.ModesRequest, context: grpc.aio.ServicerContext) -> pb.ModesResponse:
        x, raw = self._inputs(request)
        runtime, out = await self.dataplane.infer(
            "Modes",
            request.model.name,
            request.model.version,
            x,
            max_modes=request.max_modes,
            deadline=deadline_of(context),
        )
        modes = out.modes
        assert modes is not None
        response = pb.ModesResponse(model=self._ref(runtime), num_modes=modes.num_modes.tolist())
        write_tensor(response.modes, modes.modes, raw)
        write_tensor(response.log_density, modes.log_density, raw)
        write_tensor(response.mass, modes.mass, raw)
        return response


IK_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InverseKinematicsService"].full_name


class IkServicer(pb_grpc.InverseKinematicsServiceServicer):
    def __init__(self, dataplane: Dataplane, max_elements: int) -> None:
        self.dataplane = dataplane
        self.max_elements = max_elements

    @handler(PROTOCOL, "Solve", _model_of)
    async def Solve(self, request: pb.SolveRequest, context: grpc.aio.ServicerContext) -> pb.SolveResponse:
        require_inputs(request.HasField("targets"), "targets", "[batch, 2] end-effector positions")
        targets, raw = decode_tensor(request.targets, "targets", self.max_elements)
        runtime, found = await self.dataplane.solve_ik(
            request.model.name,
            request.model.version,
            targets,
            max_solutions=request.max_solutions,
            refine=request.refine if request.HasField("refine") else True,
            tolerance=request.tolerance,
            num_samples=request.num_samples,
            seed=request.seed if request.HasField("seed") else None,
            deadline=deadline_of(context),
        )
        shown = ~np.isnan(found.position_error)
        return pb.SolveResponse(
            model=pb.ModelRef(name=runtime.name, version=runtime.version),
            solutions=encode_tensor(found.solutions, raw),
            position_error=encode_tensor(found.position_error, raw),
            within_limits=encode_tensor(np.where(shown, found.within_limits, np.nan), raw),
            num_solutions=found.num_solutions.tolist(),
            status=found.status,
            score=encode_tensor(found.score, raw),
        )
