"""The server's lifecycle, step by step: build, bind (the port is known before any model loads),
start answering (health NOT_SERVING), load and warm up the models, SERVING, drain, stop.

`create_server(settings)` builds and binds; `serve(settings)` runs one server process until a
signal. Tests run servers in-process with the first and keep subprocesses for the second.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mdn_serve import tracing
from mdn_serve.config import CONNECTION_AGE_GRACE_SECONDS, Settings, compute_threads
from mdn_serve.errors import MdnError
from mdn_serve.metrics import Metrics
from mdn_serve.metrics_http import serve_metrics
from mdn_serve.protocols import ADAPTERS
from mdn_serve.protocols.rpc import add_service
from mdn_serve.scheduling import use_io_policy
from mdn_serve.security import BearerTokenInterceptor, read_token, server_credentials, server_ssl_context
from mdn_serve.serving.control import ModelControl
from mdn_serve.serving.dataplane import Dataplane, Limits
from mdn_serve.serving.eventloop import ServingEventLoop
from mdn_serve.serving.queue import BatchingConfig

if TYPE_CHECKING:
    from mdn_serve.protocols.oip_http import HttpFrontend

log = logging.getLogger("mdn_serve")

OVERALL = ""  # the health service's name for the server as a whole
STOP_SETTLE_SECONDS = 0.2
ABANDON_SECONDS = 0.5  # after the grace period, how long abandoned calls get to send their UNAVAILABLE


class MdnServer:
    """One gRPC server with the mdn.v1 and OIP services, health and reflection; the OIP over HTTP/REST beside
    it on the same event loop and dataplane; and a metrics endpoint."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        threads = compute_threads(settings)
        batching = BatchingConfig(
            max_batch_rows=settings.max_batch_rows,
            max_queue_delay=settings.max_queue_delay_ms / 1000.0,
            max_queue_size=settings.max_queue_size,
            max_queue_seconds=settings.max_queue_seconds,
            max_concurrent_batches=threads,
        )
        self.dataplane = Dataplane(
            self.metrics,
            Limits(
                settings.max_rows, settings.max_samples, settings.max_ik_seeds, settings.max_response_bytes_in_flight
            ),
            threads,
            batching,
        )
        self.dataplane.repository_name = settings.model_repository.resolve().name
        self.health = health.aio.HealthServicer()
        self.port = 0
        self.metrics_port: int | None = None
        self._metrics_server: Any = None
        size = settings.max_message_bytes
        interceptors = []
        token = read_token(settings.auth_token_file) if settings.auth_token_file else None
        refused = self.metrics.unauthenticated.inc
        if token is not None:
            interceptors.append(BearerTokenInterceptor(token, refused))
        self.serving = False  # models loaded and not shutting down: what readiness reports
        self.http: HttpFrontend | None = None
        if settings.http_port >= 0:  # aiohttp is imported only then (it costs about 0.2 s and 10 MB)
            from mdn_serve.protocols.oip_http import HttpFrontend

            self.http = HttpFrontend(
                self.dataplane,
                size,
                lambda: self.serving,
                token,
                refused,
                settings.max_concurrent_calls,
                settings.max_http_connections,
            )
        self.http_port: int | None = None
        self.server = grpc.aio.server(
            options=grpc_options(settings),
            interceptors=interceptors,
            maximum_concurrent_rpcs=settings.max_concurrent_calls,
        )
        self.health_server: grpc.aio.Server | None = None
        self.control = self.dataplane.control = ModelControl(settings, self.dataplane, self.metrics)
        self.tracer = self.dataplane.tracer = tracing.create(settings)
        if self.tracer is not None:
            log.info("tracing on: OpenTelemetry spans over OTLP to %s", tracing.endpoint())
        self.health_port: int | None = None
        # Every adapter's services, in one loop: what is registered is what health and reflection list.
        elements = size // 4
        self.service_names: list[str] = []
        for adapter in ADAPTERS:
            for binding in adapter.services:
                add_service(self.server, binding.servicer(self.dataplane, elements), binding.descriptor)
                self.service_names.append(binding.descriptor.full_name)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if not settings.disable_reflection:
            health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
            reflection.enable_server_reflection(
                (*self.service_names, health_name, reflection.SERVICE_NAME), self.server
            )

    @property
    def _health_names(self) -> tuple[str, ...]:
        return (OVERALL, *self.service_names)

    def bind(self) -> int:
        """Bind the gRPC port (and the plaintext health port, if any); the gRPC port bound."""
        s = self.settings
        credentials = server_credentials(s)
        address = f"{s.host}:{s.port}"
        try:
            if credentials is None:
                self.port = self.server.add_insecure_port(address)
            else:
                self.port = self.server.add_secure_port(address, credentials)
        except RuntimeError:  # gRPC's way of saying the address is taken
            self.port = 0
        if self.port == 0:
            raise MdnError(f"cannot bind {s.host}:{s.port}: is another server on it? pick another --port")
        if s.health_port >= 0:
            # Kubernetes gRPC probes speak plaintext: a port with nothing but the health service.
            self.health_server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if s.share_port else 0)])
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            self.health_port = self.health_server.add_insecure_port(f"{s.host}:{s.health_port}")
        mode = "plaintext" if credentials is None else ("mutual TLS" if s.tls_client_ca else "TLS")
        auth = ", bearer token required" if s.auth_token_file else ""
        log.info("listening on %s:%d (gRPC, %s%s)", s.host, self.port, mode, auth)
        if self.http is not None:
            self.http_port = self.http.bind(s.host, s.http_port, s.share_port)
            scheme = "http" if credentials is None else "https"
            log.info("HTTP/REST on %s://%s:%d/v2 (%s%s)", scheme, s.host, self.http_port, mode, auth)
        return self.port

    async def start(self) -> None:
        """Answer calls (health NOT_SERVING, the rest UNAVAILABLE) and serve /metrics; binds first if needed."""
        s = self.settings
        if self.port == 0:
            self.bind()
        for name in self._health_names:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        if self.http is not None:
            await self.http.start(
                server_ssl_context(s), s.max_connection_idle_seconds, s.grace_seconds + ABANDON_SECONDS
            )
        if self.health_server is not None:
            await self.health_server.start()
            log.info("health (plaintext) on %s:%d", s.host, self.health_port)
        if s.metrics_port >= 0:
            try:
                self._metrics_server = serve_metrics(s.metrics_port, s.metrics_host, self.metrics.registry)
            except OSError as exc:
                raise MdnError(
                    f"cannot serve metrics on {s.metrics_host}:{s.metrics_port} ({exc.strerror}); "
                    "pick another --metrics-port, or -1 to turn metrics off"
                ) from None
            self.metrics_port = self._metrics_server.server_port
            log.info("metrics on http://%s:%d/metrics", s.metrics_host, self.metrics_port)

    async def load_models(self) -> None:
        """Load and warm up every model, then report SERVING."""
        repository = await self.control.start()
        for name in self._health_names:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.serving = True
        log.info("SERVING %d model(s) on %s:%d", len(repository.models), self.settings.host, self.port)

    async def reload(self) -> None:
        """Pick up new, changed and removed versions (SIGHUP, --poll-seconds)."""
        await self.control.reload()

    async def stop(self, grace: float | None = None, drain_delay: float = 0.0) -> None:
        """NOT_SERVING first, keep serving for drain_delay (so load balancers notice), then stop
        taking calls (new ones get UNAVAILABLE) and let in-flight ones finish within grace. What is
        still queued or computing then is answered UNAVAILABLE and abandoned (the compute threads
        stop within one chunk), so the server is down within about a second of the grace period."""
        self.control.stop_polling()
        self.serving = False
        await self.health.enter_graceful_shutdown()
        if drain_delay > 0:
            log.info("draining: NOT_SERVING, still answering for %.1f s", drain_delay)
            await asyncio.sleep(drain_delay)
        grace = self.settings.grace_seconds if grace is None else grace
        over = asyncio.get_running_loop().time() + grace
        # Refuse new calls ourselves (UNAVAILABLE, so clients go elsewhere) for a moment before
        # gRPC stops accepting: calls still in transit then are not cut off mid-way.
        self.dataplane.accepting = False
        await asyncio.sleep(min(STOP_SETTLE_SECONDS, grace))
        # gRPC's own grace runs a little past ours: abandoned calls then end with our UNAVAILABLE
        # rather than being cut off.
        stopping = {asyncio.ensure_future(self.server.stop(grace + ABANDON_SECONDS))}
        if self.http is not None:  # stops listening at once; waits for requests in flight
            stopping.add(asyncio.ensure_future(self.http.stop()))
        left = max(0.0, over - asyncio.get_running_loop().time())
        _done, pending = await asyncio.wait(stopping, timeout=left)
        if pending:
            answered = self.dataplane.abandon()
            if answered:  # (a server that never got going has nothing to abandon: no warning)
                log.warning("grace period over: %d queued or running request(s) answered UNAVAILABLE", answered)
        await asyncio.gather(*stopping)
        if self.health_server is not None:
            await self.health_server.stop(0)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        await self.dataplane.close()
        if self.tracer is not None:  # exports the spans still buffered
            await asyncio.to_thread(self.tracer.shutdown)
        log.info("stopped")

    async def wait(self) -> None:
        await self.server.wait_for_termination()


def grpc_options(settings: Settings) -> list[tuple[str, int]]:
    """The gRPC server's channel arguments: message size, port sharing, and the bounds on connections."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 1 if settings.share_port else 0),
        # A connection that never finishes its handshake, or stays idle, is closed; keepalive
        # pings find peers that went away without closing (half-open connections).
        ("grpc.server_handshake_timeout_ms", int(settings.handshake_timeout_seconds * 1000)),
        ("grpc.max_connection_idle_ms", int(settings.max_connection_idle_seconds * 1000)),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        ("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * 1000)),
        ("grpc.max_connection_age_grace_ms", int(CONNECTION_AGE_GRACE_SECONDS * 1000)),
    ]


def create_server(settings: Settings, metrics: Metrics | None = None) -> tuple[MdnServer, int]:
    """A server built and bound, not yet started: (server, the gRPC port it bound)."""
    server = MdnServer(settings, metrics)
    return server, server.bind()


async def serve(settings: Settings, on_serving: Callable[[MdnServer], None] | None = None) -> None:
    """Run one server until SIGTERM or SIGINT; on_serving is called once it reports SERVING."""
    server = MdnServer(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        server.bind()
        await server.start()
        await server.load_models()
    except BaseException:
        await server.stop(0)
        raise
    if on_serving is not None:
        on_serving(server)
    reloads: set[asyncio.Task[None]] = set()

    def reload_soon() -> None:
        task = loop.create_task(server.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload_soon)
    await stopping.wait()
    log.info(
        "shutting down: drain %.1f s, then finish in-flight requests (grace %.1f s)",
        settings.drain_delay_seconds,
        settings.grace_seconds,
    )
    await server.stop(drain_delay=settings.drain_delay_seconds)


def run(settings: Settings, on_serving: Callable[[MdnServer], None] | None = None) -> int:
    """Serve until a signal; the process exit code (1 for a start-up error, logged)."""
    use_io_policy(settings.io_scheduling)  # before the event loop, gRPC and ONNX Runtime start threads
    try:
        with asyncio.Runner(loop_factory=ServingEventLoop) as runner:
            runner.run(serve(settings, on_serving))
    except MdnError as exc:
        log.error("%s", exc)
        return 1
    except OSError as exc:  # e.g. the metrics port is taken
        log.error("cannot start: %s", exc)
        return 1
    return 0
