"""The Open Inference Protocol over HTTP/REST (KServe v2, Triton's extensions), served by aiohttp.

aiohttp's server runs on the gRPC server's own asyncio event loop, so both protocols share one
process, one dataplane and one batcher per model version: an HTTP request and a gRPC request for
the same model can land in the same ONNX Runtime batch. Every endpoint goes through `endpoint`,
which does what the gRPC adapters' `handler` does (refusal while draining, early shedding, the
response budget, metrics labelled protocol="oip-http") and maps the core's errors to HTTP
statuses with a JSON body `{"error": "..."}` saying what to fix.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from mdn_serve import __version__
from mdn_serve.errors import InvalidInput, MdnError, Overloaded, Unavailable
from mdn_serve.protocols.oip import codec as oip
from mdn_serve.protocols.oip.outputs import MODEL_INPUT, check_control_parameters
from mdn_serve.protocols.oip_http import codec
from mdn_serve.protocols.oip_http.listener import Listener
from mdn_serve.protocols.rpc import status_for
from mdn_serve.serving.dataplane import Dataplane
from mdn_serve.tracing import UNTRACED

log = logging.getLogger(__name__)

PROTOCOL = "oip-http"
OPEN_PREFIX = "/v2/health/"  # probes work without the token
# The HTTP status of each outcome, by the gRPC status name the metrics use for both protocols.
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "UNAUTHENTICATED": 401,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
# How long a client gets to take its answer: one that stops reading has its connection closed, so
# the answer's memory (held against --max-response-bytes-in-flight until then) is freed.
SEND_TIMEOUT_SECONDS = 60.0
# How long a request's body may take to arrive (a 64 MiB body at 2 MiB/s): a client that stops half-way
# through cannot hold its connection and handler for ever.
BODY_TIMEOUT_SECONDS = 30.0
SMALL_ANSWER_BYTES = 64 * 1024  # answers up to this size are handed to aiohttp without the send timeout
EXTENSIONS = [*oip.EXTENSIONS, "binary_tensor_data"]


@dataclass
class Answer:
    body: bytes
    status: int = 200
    content_type: str = codec.JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)


def json_answer(document: object, status: int = 200) -> Answer:
    return Answer(json.dumps(document, separators=(",", ":")).encode(), status)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = json_answer({"error": message}).body
    return web.Response(body=body, status=status, content_type=codec.JSON_TYPE, headers=headers)


Endpoint = Callable[["HttpFrontend", web.Request], Awaitable[Answer]]


def endpoint(method: str, sheds: bool = False) -> Callable[[Endpoint], Callable[[HttpFrontend, web.Request], Any]]:
    """Times the request, counts it by outcome, holds its answer against the response budget until
    it is sent, and turns exceptions into HTTP errors (our own with their message, anything else
    500 with a generic one and the traceback in the log)."""

    def wrap(fn: Endpoint) -> Callable[[HttpFrontend, web.Request], Any]:
        @functools.wraps(fn)
        async def wrapped(self: HttpFrontend, request: web.Request) -> web.StreamResponse:
            dataplane = self.dataplane
            metrics = dataplane.metrics
            name = request.match_info.get("model", "")
            model = name or "-"
            if model != "-" and (dataplane.repository is None or model not in dataplane.repository.models):
                model = "unknown"  # bounded label cardinality, as for gRPC
            start = time.perf_counter()
            code = "OK"
            in_flight = metrics.incrementer(metrics.in_flight, PROTOCOL, method)
            in_flight(1)
            tracer, span = dataplane.tracer, None
            if tracer is not None and method not in UNTRACED:
                route = request.match_info.route.resource
                path = route.canonical if route is not None else request.path
                attributes = {"http.request.method": request.method, "http.route": path, "mdn.protocol": PROTOCOL}
                span = tracer.begin(f"{request.method} {path}", request.headers, attributes)
            call = dataplane.responses.open_call()
            self.calls += 1
            try:
                if not request.path.startswith(OPEN_PREFIX):
                    if not dataplane.accepting:
                        raise Unavailable("the server is shutting down; retry on another replica")
                    if self.calls > self.max_calls:
                        raise Overloaded(
                            f"this server is handling its limit of {self.max_calls} HTTP requests at once "
                            "(--max-concurrent-calls); retry with backoff"
                        )
                if sheds:
                    dataplane.shed(name, request.match_info.get("version", ""))
                answer = await fn(self, request)
                call.settle(len(answer.body))
                response = web.Response(
                    body=answer.body, status=answer.status, content_type=answer.content_type, headers=answer.headers
                )
                if len(answer.body) <= SMALL_ANSWER_BYTES:  # goes into the socket's buffer at once: aiohttp sends it
                    return response
                try:
                    async with asyncio.timeout(SEND_TIMEOUT_SECONDS):
                        await response.prepare(request)
                        await response.write_eof()
                except TimeoutError:
                    code = "CANCELLED"
                    if request.transport is not None:
                        request.transport.abort()
                return response
            except MdnError as exc:
                code = status_for(exc).name
                return error_response(HTTP_STATUS.get(code, 500), str(exc))
            except asyncio.CancelledError:  # the client went away
                code = "CANCELLED"
                raise
            except Exception:
                code = "INTERNAL"
                log.exception("%s %s failed", PROTOCOL, method)
                return error_response(500, "internal error; the server log has the details")
            finally:
                self.calls -= 1
                call.close()
                in_flight(-1)
                if span is not None:
                    status = 200 if code in ("OK", "CANCELLED") else HTTP_STATUS.get(code, 500)
                    tracer.end(span, code, {"http.response.status_code": status})  # type: ignore[union-attr]
                observe, count, errors = metrics.request_recorders(PROTOCOL, method, model, code)
                observe(time.perf_counter() - start)
                count(1)
                if errors is not None:
                    errors(1)

        return wrapped

    return wrap


class HttpFrontend:
    """The HTTP/REST routes over a Dataplane, and their server's lifecycle (bind, start, stop)."""

    def __init__(
        self,
        dataplane: Dataplane,
        max_message_bytes: int,
        ready: Callable[[], bool],
        token: bytes | None = None,
        on_refused: Callable[[], None] | None = None,
        max_calls: int = 1024,
        max_connections: int = 2048,
    ) -> None:
        self.dataplane = dataplane
        self.max_calls = max_calls  # HTTP requests handled at once (health aside); more get 429
        self.max_connections = max_connections  # open connections; a new one past it gets 503 and is closed
        self.calls = 0
        self.max_message_bytes = max_message_bytes
        self.max_elements = max_message_bytes // 4
        self._ready = ready
        self._expected = None if token is None else b"Bearer " + token
        self._on_refused = on_refused
        self.app = web.Application(client_max_size=max_message_bytes, middlewares=[self._guard])
        self._add_routes()
        self.listener = Listener(max_connections)
        self.port = 0

    def _add_routes(self) -> None:
        get, post = self.app.router.add_get, self.app.router.add_post
        get("/v2/health/live", self.live, allow_head=False)
        get("/v2/health/ready", self.server_ready, allow_head=False)
        get("/v2", self.server_metadata, allow_head=False)
        get("/v2/models/stats", self.statistics, allow_head=False)  # before /v2/models/{model}
        post("/v2/repository/index", self.repository_index)
        post("/v2/repository/models/{model}/load", self.model_load)
        post("/v2/repository/models/{model}/unload", self.model_unload)
        for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            get(base, self.model_metadata, allow_head=False)
            get(base + "/ready", self.model_ready, allow_head=False)
            get(base + "/config", self.model_config, allow_head=False)
            get(base + "/stats", self.statistics, allow_head=False)
            post(base + "/infer", self.infer)

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """The bearer token (health stays open; without it every path, real or not, is 401, so none can
        be discovered), and aiohttp's own refusals (unknown path, wrong method) as JSON errors."""
        if self._expected is not None and not request.path.startswith(OPEN_PREFIX):
            sent = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(sent, self._expected):
                if self._on_refused is not None:
                    self._on_refused()
                return error_response(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status == 404:
                return error_response(404, f"no such endpoint {request.path[:200]!r}; see /v2 and /v2/models/<name>")
            if exc.status == 405:
                return error_response(405, f"{request.method} is not allowed on {request.path[:200]!r}",
                                      {"Allow": exc.headers.get("Allow", "")})  # fmt: skip
            raise

    # --- lifecycle ---------------------------------------------------------------------------------

    def bind(self, host: str, port: int, share_port: bool = False) -> int:
        """Bind the port now (0: a free one), so that it is known before any model loads; the port."""
        self.port = self.listener.bind(host, port, share_port)
        return self.port

    async def start(self, ssl_context: ssl.SSLContext | None, keepalive_seconds: float, stop_seconds: float) -> None:
        """Serve on the bound socket; stop() then waits up to stop_seconds for requests in flight."""
        await self.listener.start(self.app, ssl_context, keepalive_seconds, stop_seconds)

    async def stop(self) -> None:
        """Close the listening socket and every connection (in-flight requests are answered first by the
        dataplane's own shutdown: see MdnServer.stop)."""
        await self.listener.stop()

    # --- endpoints -----------------------------------------------------------------------------------

    @endpoint("ServerLive")
    async def live(self, request: web.Request) -> Answer:
        return json_answer({"live": True})

    @endpoint("ServerReady")
    async def server_ready(self, request: web.Request) -> Answer:
        ready = self._ready()
        return json_answer({"ready": ready}, 200 if ready else 503)

    @endpoint("ServerMetadata")
    async def server_metadata(self, request: web.Request) -> Answer:
        return json_answer({"name": oip.SERVER_NAME, "version": __version__, "extensions": EXTENSIONS})

    @endpoint("ModelMetadata")
    async def model_metadata(self, request: web.Request) -> Answer:
        runtime = self._resolve(request)
        versions = self.dataplane.models().entry(runtime.name).version_list
        return json_answer(oip.metadata_document(runtime, versions))

    @endpoint("ModelReady")
    async def model_ready(self, request: web.Request) -> Answer:
        name = request.match_info["model"]
        try:
            runtime = self._resolve(request)
        except Unavailable:
            return json_answer({"name": name, "ready": False}, 503)
        return json_answer({"name": runtime.name, "version": runtime.version, "ready": True})

    @endpoint("ModelConfig")
    async def model_config(self, request: web.Request) -> Answer:
        return json_answer(oip.config_document(self._resolve(request), self.dataplane.limits.max_rows))

    @endpoint("ModelStatistics")
    async def statistics(self, request: web.Request) -> Answer:
        name, version = request.match_info.get("model", ""), request.match_info.get("version", "")
        return json_answer(oip.statistics_document(self.dataplane.statistics(name, version)))

    @endpoint("RepositoryIndex")
    async def repository_index(self, request: web.Request) -> Answer:
        body = await self._body(request)
        options = codec.load_json(body) if body.strip() else {}
        ready = options.get("ready", False) if isinstance(options, dict) else None
        if not isinstance(ready, bool):
            raise InvalidInput('the body must be empty or a JSON object like {"ready": true}')
        return json_answer(oip.index_document(self.dataplane.model_control().index(ready)))

    async def _control_parameters(self, request: web.Request) -> None:
        body = await self._body(request)
        document = codec.load_json(body) if body.strip() else {}
        params = document.get("parameters", {}) if isinstance(document, dict) else None
        if not isinstance(params, dict):
            raise InvalidInput('the body must be empty or a JSON object like {"parameters": {}}')
        check_control_parameters(list(params))

    @endpoint("RepositoryModelLoad")
    async def model_load(self, request: web.Request) -> Answer:
        await self._control_parameters(request)
        await self.dataplane.model_control().load_model(request.match_info["model"])
        return json_answer({})

    @endpoint("RepositoryModelUnload")
    async def model_unload(self, request: web.Request) -> Answer:
        await self._control_parameters(request)
        await self.dataplane.model_control().unload_model(request.match_info["model"])
        return json_answer({})

    @endpoint("ModelInfer", sheds=True)
    async def infer(self, request: web.Request) -> Answer:
        runtime = self._resolve(request)  # NOT_FOUND before input errors
        body = await self._body(request)
        decoded = codec.decode_infer(body, request.headers.get(codec.HEADER_LENGTH), self.max_elements)
        if len(decoded.binary) < len(decoded.names):  # some values go out as JSON text, up to 4x their size
            self.dataplane.responses.current_overhead(codec.JSON_OVERHEAD)
        deadline = None if decoded.timeout_us is None else time.monotonic() + decoded.timeout_us / 1e6
        inputs = decoded.inputs
        runtime, out = await self.dataplane.infer(
            "ModelInfer", runtime.name, runtime.version, inputs[MODEL_INPUT], decoded.ask, deadline
        )
        body, header_length = codec.encode_infer(runtime, decoded, out)
        if len(body) > self.max_message_bytes:
            raise InvalidInput(
                f"the answer is {len(body)} bytes, over this server's limit of {self.max_message_bytes} "
                "(--max-message-bytes); ask for fewer rows or samples, or binary outputs (binary_data)"
            )
        if header_length is None:
            return Answer(body)
        return Answer(body, content_type=codec.BINARY_TYPE, headers={codec.HEADER_LENGTH: str(header_length)})

    def _resolve(self, request: web.Request) -> Any:
        return self.dataplane.resolve(request.match_info["model"], request.match_info.get("version", ""))

    async def _body(self, request: web.Request) -> bytes:
        try:
            if request.content.is_eof():  # all of it arrived already (small requests): no timer needed
                return await request.read()
            async with asyncio.timeout(BODY_TIMEOUT_SECONDS):
                return await request.read()
        except TimeoutError:
            raise InvalidInput(
                f"the request body did not arrive within {BODY_TIMEOUT_SECONDS:g} s; send it whole (its "
                "Content-Length bytes) without pausing"
            ) from None
        except web.HTTPRequestEntityTooLarge:
            raise InvalidInput(
                f"the request body is over this server's limit of {self.max_message_bytes} bytes "
                "(--max-message-bytes); split the request"
            ) from None
