"""The Open Inference Protocol (KServe v2, `inference.GRPCInferenceService`): thin handlers over the Dataplane."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from mdn_serve.errors import ModelNotFound, Unavailable
from mdn_serve.protocols.oip import codec, outputs
from mdn_serve.protocols.rpc import ServicerBase, deadline_of, handler

if TYPE_CHECKING:  # annotations only: building and reading messages is the codec's job
    from mdn_serve._proto.inference import grpc_service_pb2 as pb

PROTOCOL = "oip"


class OipServicer(ServicerBase):
    protocol = PROTOCOL
    model_of = staticmethod(codec.model_name)
    version_of = staticmethod(codec.model_version)

    @handler("ServerLive")
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return codec.server_live()

    @handler("ServerReady")
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return codec.server_ready(self.dataplane.ready)

    @handler("ModelReady")
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        try:
            self.dataplane.resolve(request.name, request.version)
        except (ModelNotFound, Unavailable):
            return codec.model_ready(False)
        return codec.model_ready(True)

    @handler("ServerMetadata")
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return codec.server_metadata()

    @handler("ModelMetadata")
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        runtime = self.dataplane.resolve(request.name, request.version)
        return codec.model_metadata(runtime, self.dataplane.models().entry(runtime.name).version_list)

    @handler("ModelConfig")
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        runtime = self.dataplane.resolve(request.name, request.version)
        return codec.model_config(runtime, self.dataplane.limits.max_rows)

    @handler("ModelStatistics")
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        return codec.model_statistics(self.dataplane.statistics(request.name, request.version))

    def _check_repository(self, name: str) -> None:
        ours = self.dataplane.repository_name
        if name and name != ours:
            raise ModelNotFound(
                f"no repository named {name[:64]!r}; this server serves one, {ours!r} (or leave the name empty)"
            )

    @handler("RepositoryIndex")
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        self._check_repository(request.repository_name)
        return codec.repository_index(self.dataplane.model_control().index(request.ready))

    @handler("RepositoryModelLoad")
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        self._check_repository(request.repository_name)
        outputs.check_control_parameters(list(request.parameters))
        await self.dataplane.model_control().load_model(request.model_name)
        return codec.model_load()

    @handler("RepositoryModelUnload")
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        self._check_repository(request.repository_name)
        outputs.check_control_parameters(list(request.parameters))
        await self.dataplane.model_control().unload_model(request.model_name)
        return codec.model_unload()

    @handler("ModelInfer", sheds=True)
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        runtime = self.dataplane.resolve(request.model_name, request.model_version)  # NOT_FOUND before input errors
        inputs, raw = codec.decode_inputs(request, self.max_elements)
        params = codec.grpc_parameters(request.parameters)
        names, ask = outputs.plan(codec.output_names(request), params, inputs.get(outputs.SEED_STATE))
        x = inputs[outputs.MODEL_INPUT]
        runtime, out = await self.dataplane.infer(
            "ModelInfer", runtime.name, runtime.version, x, ask, deadline_of(context)
        )
        return codec.infer_response(request, runtime, names, out, raw)
