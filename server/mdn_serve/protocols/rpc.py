"""What every gRPC protocol adapter shares: its description, metrics, and the one error-to-status mapping.

An adapter is a sub-package of mdn_serve.protocols holding a codec (the only code that touches
its generated protobuf classes), thin servicers over the Dataplane, and a `ProtocolAdapter`
describing itself; the app registers every adapter's services, health and reflection from
those descriptions in one loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from mdn_serve.errors import (
    DeadlineExpired,
    InvalidInput,
    LimitExceeded,
    LoadFailed,
    MdnError,
    ModelNotFound,
    Overloaded,
    Unavailable,
)
from mdn_serve.serving.dataplane import Dataplane
from mdn_serve.tracing import UNTRACED

log = logging.getLogger(__name__)

STATUS_OF: dict[type[MdnError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    LimitExceeded: grpc.StatusCode.INVALID_ARGUMENT,
    LoadFailed: grpc.StatusCode.FAILED_PRECONDITION,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExpired: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class ServicerBase:
    """What every servicer holds; a subclass names its protocol label and how a request names its model."""

    protocol: ClassVar[str]

    def __init__(self, dataplane: Dataplane, max_elements: int) -> None:
        self.dataplane = dataplane
        self.max_elements = max_elements  # the most values one request may carry
        self.service = ""  # the gRPC service's full name (add_service sets it), for span names

    @staticmethod
    def model_of(request: Any) -> str:
        raise NotImplementedError

    @staticmethod
    def version_of(request: Any) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class ServiceBinding:
    descriptor: ServiceDescriptor
    servicer: Callable[[Dataplane, int], ServicerBase]  # (dataplane, most values a request may carry)


@dataclass(frozen=True)
class ProtocolAdapter:
    """What the app needs to know of a protocol to serve it."""

    label: str  # the `protocol` label of its metrics
    services: tuple[ServiceBinding, ...]

    @property
    def service_names(self) -> tuple[str, ...]:
        return tuple(s.descriptor.full_name for s in self.services)


S = TypeVar("S", bound=ServicerBase)
Req = TypeVar("Req")
Resp = TypeVar("Resp", bound=Message)
Handler = Callable[[S, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The caller's deadline as a time.monotonic() value, or None when it set none."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def status_for(exc: BaseException) -> grpc.StatusCode:
    for kind in type(exc).__mro__:
        if kind in STATUS_OF:
            return STATUS_OF[kind]
    return grpc.StatusCode.INTERNAL


def handler(method: str, sheds: bool = False) -> Callable[[Handler[S, Req, Resp]], Handler[S, Req, Resp]]:
    """Times the call, counts it by status code, and turns exceptions into gRPC statuses.

    sheds: an inference method, refused before its inputs are even decoded when its model's queue
    is too far behind for any request to be done within the queue-time budget (turning requests
    away is most of the work an overloaded server does, so it must cost little).

    Our own errors carry a message for the client; anything else is INTERNAL with a
    generic message, and the traceback goes to the log only.
    """

    def wrap(fn: Handler[S, Req, Resp]) -> Handler[S, Req, Resp]:
        @functools.wraps(fn)
        async def wrapped(self: S, request: Req, context: grpc.aio.ServicerContext) -> Resp:
            dataplane, protocol = self.dataplane, self.protocol
            metrics, responses = dataplane.metrics, dataplane.responses
            name = self.model_of(request)
            model = name or "-"
            if model != "-" and (dataplane.repository is None or model not in dataplane.repository.models):
                model = "unknown"  # keep label cardinality bounded whatever clients send, also while loading
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            in_flight = metrics.incrementer(metrics.in_flight, protocol, method)
            in_flight(1)
            tracer, span = dataplane.tracer, None
            if tracer is not None and method not in UNTRACED:
                carrier = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
                attributes = {"rpc.system": "grpc", "rpc.service": self.service, "rpc.method": method}
                span = tracer.begin(f"{self.service}/{method}", carrier, attributes)
            try:
                if not dataplane.accepting:
                    raise Unavailable("the server is shutting down; retry on another replica")
                if sheds:
                    dataplane.shed(name, self.version_of(request))
                call = responses.open_call()
                try:
                    response = await fn(self, request, context)
                except BaseException:
                    call.close()
                    raise
                # Held until the call ends: a client that does not read its answer keeps it in memory.
                call.settle(response.ByteSize())
                context.add_done_callback(lambda _: call.close())
                return response
            except MdnError as exc:
                code = status_for(exc)
                await context.abort(code, str(exc))
            except asyncio.CancelledError:  # the client cancelled or its deadline passed
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("%s %s failed", protocol, method)
                await context.abort(code, "internal error; the server log has the details")
            finally:
                in_flight(-1)
                if span is not None:
                    tracer.end(span, code.name, {"rpc.grpc.status_code": code.value[0]})  # type: ignore[union-attr]
                observe, count, errors = metrics.request_recorders(protocol, method, model, code.name)
                observe(time.perf_counter() - start)
                count(1)
                if errors is not None:
                    errors(1)
            raise AssertionError("unreachable: abort raises")

        return wrapped

    return wrap


def add_service(server: grpc.aio.Server, servicer: ServicerBase, service: ServiceDescriptor) -> None:
    """Register servicer's methods for `service`, parsing requests and serializing answers ourselves.

    gRPC's generated registration parses each request before our code runs and answers a
    message that does not parse with INTERNAL; here a malformed message is the client's mistake
    and gets INVALID_ARGUMENT, counted like every other error.
    """
    servicer.service = service.full_name
    handlers = {}
    for method in service.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _parsing(servicer, method.name, request_class), request_deserializer=None, response_serializer=None
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def _parsing(
    servicer: ServicerBase, method: str, request_class: Any
) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Any]]:
    bound = getattr(servicer, method)
    protocol = servicer.protocol

    async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            request = request_class.FromString(raw)
        except DecodeError:
            metrics = servicer.dataplane.metrics
            labels = (protocol, method, "-", grpc.StatusCode.INVALID_ARGUMENT.name)
            metrics.child(metrics.requests, *labels).inc()
            metrics.child(metrics.errors, *labels).inc()
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid {request_class.DESCRIPTOR.full_name}"
            )
        # Serialized here, so that the message is freed at once: gRPC keeps only the bytes (and its
        # own copy of them) until the call ends.
        response: bytes = (await bound(request, context)).SerializeToString()
        return response

    return handle
