"""mdn.v1 over gRPC: thin handlers over the Dataplane, and the one error-to-status mapping."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import numpy as np

from mdn_serve._proto.mdn.v1 import mdn_pb2 as pb
from mdn_serve._proto.mdn.v1 import mdn_pb2_grpc as pb_grpc
from mdn_serve.codec import decode_tensor, encode_tensor, require_inputs
from mdn_serve.dataplane import Dataplane
from mdn_serve.errors import InvalidInput, LimitExceeded, MdnError, ModelNotFound, Unavailable
from mdn_serve.runtime import ModelRuntime

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["MixtureDensityService"].full_name

STATUS_OF: dict[type[MdnError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    LimitExceeded: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


def status_for(exc: BaseException) -> grpc.StatusCode:
    for kind in type(exc).__mro__:
        if kind in STATUS_OF:
            return STATUS_OF[kind]
    return grpc.StatusCode.INTERNAL


def rpc(method: str) -> Callable[[Handler[Req, Resp]], Handler[Req, Resp]]:
    """Times the call, counts it by status code, and turns exceptions into gRPC statuses.

    Our own errors carry a message for the client; anything else is INTERNAL with a
    generic message, and the traceback goes to the log only.
    """

    def wrap(handler: Handler[Req, Resp]) -> Handler[Req, Resp]:
        @functools.wraps(handler)
        async def wrapped(self: MdnServicer, request: Req, context: grpc.aio.ServicerContext) -> Resp:
            metrics = self.dataplane.metrics
            model = getattr(getattr(request, "model", None), "name", "") or "-"
            if model != "-" and self.dataplane.ready and model not in self.dataplane.models().models:
                model = "unknown"  # keep label cardinality bounded whatever clients send
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            metrics.in_flight.labels(method).inc()
            try:
                return await handler(self, request, context)
            except MdnError as exc:
                code = status_for(exc)
                await context.abort(code, str(exc))
            except asyncio.CancelledError:  # the client cancelled or its deadline passed
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("%s failed", method)
                await context.abort(code, "internal error; the server log has the details")
            finally:
                metrics.in_flight.labels(method).dec()
                labels = (method, model, code.name)
                metrics.request_seconds.labels(*labels).observe(time.perf_counter() - start)
                metrics.requests.labels(*labels).inc()
                if code != grpc.StatusCode.OK:
                    metrics.errors.labels(*labels).inc()
            raise AssertionError("unreachable: abort raises")

        return wrapped

    return wrap


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

    def _inputs(self, request: pb.PredictRequest | pb.SampleRequest | pb.ModesRequest) -> tuple[np.ndarray, bool]:
        require_inputs(request.HasField("inputs"))
        return decode_tensor(request.inputs, "inputs", self.max_elements)

    @staticmethod
    def _ref(runtime: ModelRuntime) -> pb.ModelRef:
        return pb.ModelRef(name=runtime.name, version=runtime.version)

    @rpc("ListModels")
    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        repo = self.dataplane.models()
        return pb.ListModelsResponse(
            models=[model_info(e.latest, e.version_list) for _, e in sorted(repo.models.items())]
        )

    @rpc("GetModel")
    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        runtime = self.dataplane.resolve(request.model.name, request.model.version)
        return model_info(runtime, self.dataplane.models().entry(runtime.name).version_list)

    @rpc("Predict")
    async def Predict(self, request: pb.PredictRequest, context: grpc.aio.ServicerContext) -> pb.PredictResponse:
        x, raw = self._inputs(request)
        runtime, mix = await self.dataplane.predict(request.model.name, request.model.version, x)
        return pb.PredictResponse(
            model=self._ref(runtime),
            weights=encode_tensor(mix.weights, raw),
            means=encode_tensor(mix.means, raw),
            scales=encode_tensor(mix.scales, raw),
        )

    @rpc("Sample")
    async def Sample(self, request: pb.SampleRequest, context: grpc.aio.ServicerContext) -> pb.SampleResponse:
        x, raw = self._inputs(request)
        seed = request.seed if request.HasField("seed") else None
        runtime, samples = await self.dataplane.sample(
            request.model.name, request.model.version, x, request.num_samples, seed, request.temperature
        )
        return pb.SampleResponse(model=self._ref(runtime), samples=encode_tensor(samples, raw))

    @rpc("Modes")
    async def Modes(self, request: pb.ModesRequest, context: grpc.aio.ServicerContext) -> pb.ModesResponse:
        x, raw = self._inputs(request)
        runtime, modes = await self.dataplane.modes(request.model.name, request.model.version, x, request.max_modes)
        return pb.ModesResponse(
            model=self._ref(runtime),
            modes=encode_tensor(modes.modes, raw),
            log_density=encode_tensor(modes.log_density, raw),
            mass=encode_tensor(modes.mass, raw),
            num_modes=modes.num_modes.tolist(),
        )
