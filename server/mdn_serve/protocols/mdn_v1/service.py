"""mdn.v1 over gRPC: MixtureDensityService and InverseKinematicsService, thin handlers over the Dataplane."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc

from mdn_serve.protocols.mdn_v1 import codec
from mdn_serve.protocols.rpc import ServicerBase, deadline_of, handler

if TYPE_CHECKING:  # annotations only: building and reading messages is the codec's job
    from mdn_serve._proto.mdn.v1 import mdn_pb2 as pb

PROTOCOL = "mdn.v1"


class _Base(ServicerBase):
    protocol = PROTOCOL
    model_of = staticmethod(codec.model_name)
    version_of = staticmethod(codec.model_version)


class MdnServicer(_Base):
    @handler("ListModels")
    async def ListModels(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        repo = self.dataplane.models()
        return codec.list_models((e.latest, e.version_list) for _, e in sorted(repo.models.items()))

    @handler("GetModel")
    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        runtime = self.dataplane.resolve(request.model.name, request.model.version)
        return codec.model_info(runtime, self.dataplane.models().entry(runtime.name).version_list)

    @handler("Predict", sheds=True)
    async def Predict(self, request: pb.PredictRequest, context: grpc.aio.ServicerContext) -> pb.PredictResponse:
        x, raw = codec.decode_inputs(request, self.max_elements)
        ref = request.model
        runtime, out = await self.dataplane.infer("Predict", ref.name, ref.version, x, deadline=deadline_of(context))
        return codec.predict_response(runtime, out, raw)

    @handler("Sample", sheds=True)
    async def Sample(self, request: pb.SampleRequest, context: grpc.aio.ServicerContext) -> pb.SampleResponse:
        x, raw = codec.decode_inputs(request, self.max_elements)
        ask, ref = codec.sample_ask(request), request.model
        runtime, out = await self.dataplane.infer("Sample", ref.name, ref.version, x, ask, deadline_of(context))
        return codec.sample_response(runtime, out, raw)

    @handler("Modes", sheds=True)
    async def Modes(self, request: pb.ModesRequest, context: grpc.aio.ServicerContext) -> pb.ModesResponse:
        x, raw = codec.decode_inputs(request, self.max_elements)
        ask, ref = codec.modes_ask(request), request.model
        runtime, out = await self.dataplane.infer("Modes", ref.name, ref.version, x, ask, deadline_of(context))
        return codec.modes_response(runtime, out, raw)


class IkServicer(_Base):
    @handler("Solve", sheds=True)
    async def Solve(self, request: pb.SolveRequest, context: grpc.aio.ServicerContext) -> pb.SolveResponse:
        targets, raw = codec.decode_targets(request, self.max_elements)
        ask, ref = codec.solve_ask(request, self.max_elements), request.model
        runtime, out = await self.dataplane.infer("Solve", ref.name, ref.version, targets, ask, deadline_of(context))
        return codec.solve_response(runtime, out, raw)
