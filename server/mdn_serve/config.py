"""Server settings: one typed object built in main() from flags and MDN_* environment variables."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdn_serve.scheduling import IO_POLICIES

DEVICES = ("cpu", "cuda", "auto")
CONTROL_MODES = ("none", "explicit")
CONNECTION_AGE_GRACE_SECONDS = 30.0  # calls in flight on a connection closed for its age get this long


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass(frozen=True)
class Settings:
    model_repository: Path = Path("models")
    host: str = "127.0.0.1"
    port: int = 8001
    http_port: int = 8000  # the Open Inference Protocol over HTTP/REST, on --host; -1 disables it
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 8002  # -1 disables the metrics endpoint
    device: str = "cpu"
    # One thread per ONNX Runtime call: the compute threads already run batches in parallel, and
    # an intra-op pool spins between the many small calls a server makes.
    intra_op_threads: int = 1
    inter_op_threads: int = 0
    compute_threads: int = 0  # threads running big batches; 0: one per CPU this process may use, at most 2
    io_scheduling: str = "batch"  # the other threads' Linux scheduling policy (mdn_serve.scheduling)
    max_rows: int = 8192  # rows (B) per request
    max_samples: int = 1_000_000  # B x num_samples per Sample request
    # targets x seeds per Solve (or IK outputs): each seed is refined, far costlier than a sample.
    # The default takes 4096 Panda poses at the default seeds (16 components + 32 draws) in one request.
    max_ik_seeds: int = 262_144
    max_message_bytes: int = 64 * 1024 * 1024
    # Answers computed and not yet delivered (slow or stalled readers hold theirs until their call ends).
    max_response_bytes_in_flight: int = 128 * 1024 * 1024
    max_concurrent_streams: int = 256  # calls at once on one connection (HTTP/2 streams)
    max_concurrent_calls: int = 1024  # calls at once on the whole server; more get RESOURCE_EXHAUSTED
    max_http_connections: int = 2048  # open HTTP connections; a new one past it gets 503 and is closed
    max_connection_age_seconds: float = 1800.0  # connections are closed (GOAWAY) after this long, for rebalancing
    handshake_timeout_seconds: float = 10.0  # a connection must finish its TLS/HTTP2 handshake in this time
    max_connection_idle_seconds: float = 300.0  # a connection without calls this long is closed (GOAWAY)
    max_batch_rows: int = 8192  # rows per merged ONNX Runtime call
    max_queue_delay_ms: float = 0.0  # 0: batch what is already queued, never wait for more
    max_queue_size: int = 1024  # queued requests per model version before RESOURCE_EXHAUSTED
    max_queue_seconds: float = 1.0  # longest a request may wait in the queue to start; 0: its deadline only
    workers: int = 1  # server processes sharing the port (SO_REUSEPORT)
    pin_workers: bool = False  # each worker on one CPU of its own (round robin over the usable ones)
    tls_cert: str = ""  # PEM certificate chain; with tls_key, serves gRPC over TLS
    tls_key: str = ""
    tls_client_ca: str = ""  # PEM CA bundle: requires and checks client certificates (mutual TLS)
    health_port: int = -1  # a plaintext port serving only grpc.health.v1 (for probes when TLS is on)
    auth_token_file: str = ""  # a file holding the bearer token every call but health must carry
    disable_reflection: bool = False
    poll_seconds: float = 0.0  # look for new, changed or removed versions this often; 0: on SIGHUP only
    model_control_mode: str = "none"  # none: load everything, reload on SIGHUP/poll; explicit: load/unload on request
    load_model: tuple[str, ...] = ()  # explicit mode: the models to load at start
    drain_delay_seconds: float = 0.0  # on SIGTERM: NOT_SERVING, but keep serving this long first
    grace_seconds: float = 5.0  # how long in-flight requests may finish on shutdown
    tracing: bool = False  # OpenTelemetry spans over OTLP (the OTEL_* variables turn it on too)
    log_level: str = "INFO"
    # Set by the --workers supervisor for its workers only (no flag): they bind one port together
    # with SO_REUSEPORT. A lone server refuses a port that another process holds.
    share_port: bool = False


def compute_threads(settings: Settings) -> int:
    """--compute-threads, with 0 resolved: on one CPU a second thread buys no parallelism, only
    two big batches thrashing the same core."""
    return settings.compute_threads or min(2, usable_cpus())


def _env_default(env: Mapping[str, str], name: str, fallback: object) -> object:
    return env.get(f"MDN_{name.upper()}", fallback)


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    d = Settings()
    p = argparse.ArgumentParser(
        prog="mdn-serve",
        description="Serve MDNs exported by mdn-export over gRPC and HTTP. Every flag can also be set as an "
        "MDN_* environment variable (e.g. --max-rows as MDN_MAX_ROWS); flags win.",
    )

    def add(flag: str, kind: type, help_text: str, **kwargs: Any) -> None:
        name = flag.lstrip("-").replace("-", "_")
        raw = _env_default(env, name, getattr(d, name))
        try:
            default = kind(raw)
        except ValueError:
            p.error(f"MDN_{name.upper()}={raw!r} is not a valid {kind.__name__}")
        p.add_argument(flag, type=kind, default=default, help=f"{help_text} (default: %(default)s)", **kwargs)

    def switch(flag: str, help_text: str) -> None:
        """An on/off flag; MDN_<NAME>=1 (or true, yes) turns it on too."""
        env_name = "MDN_" + flag.lstrip("-").replace("-", "_").upper()
        on = env.get(env_name, "").lower() in ("1", "true", "yes")
        p.add_argument(flag, action="store_true", default=on, help=f"{help_text} (env {env_name}=1)")

    add("--model-repository", Path, "folder of <name>/<version>/model.onnx")
    add("--host", str, "address to bind the gRPC and HTTP servers to; 0.0.0.0 for every interface")
    add("--port", int, "gRPC port; 0 binds a free one and logs it")
    add("--http-port", int, "HTTP/REST port (Open Inference Protocol, KServe v2); 0 binds a free one, -1 disables it")
    add("--metrics-host", str, "address of the Prometheus /metrics endpoint")
    add("--metrics-port", int, "Prometheus port; 0 picks a free one, -1 disables it")
    add("--device", str, "ONNX Runtime device", choices=DEVICES)
    add("--intra-op-threads", int, "ONNX Runtime intra-op threads per call; 0 for one per core")
    add("--inter-op-threads", int, "ONNX Runtime inter-op threads; 0 for its default")
    add("--compute-threads", int, "threads running big batches off the event loop; 0: one per CPU, at most 2")
    add("--io-scheduling", str, "Linux scheduling policy of every thread but the compute threads: batch lets a "
        "busy compute thread finish its time slice before the event loop takes in new calls (for an overloaded CPU: "
        "more of it to answers); normal: the system's default for all", choices=IO_POLICIES)  # fmt: skip
    add("--max-rows", int, "largest batch (rows) per request")
    add("--max-samples", int, "largest rows x num_samples per Sample request")
    add("--max-ik-seeds", int, "largest targets x seeds (mixture components, draws, seed_state) per IK request")
    add("--max-message-bytes", int, "largest gRPC message, in and out")
    add("--max-response-bytes-in-flight", int, "bytes of answers not yet delivered before new calls get "
        "RESOURCE_EXHAUSTED")  # fmt: skip
    add("--max-concurrent-streams", int, "calls at once on one client connection (HTTP/2 streams)")
    add("--max-concurrent-calls", int, "calls at once on the server; more get RESOURCE_EXHAUSTED")
    add("--max-http-connections", int, "open HTTP connections; a new one past it is answered 503 and closed")
    add("--max-connection-age-seconds", float, "close connections this old (GOAWAY; calls in flight get "
        f"{CONNECTION_AGE_GRACE_SECONDS:g} s more), so clients reconnect and load spreads")  # fmt: skip
    add("--handshake-timeout-seconds", float, "close a connection that has not finished its handshake by then")
    add("--max-connection-idle-seconds", float, "close a connection that made no call for this long")
    add("--max-batch-rows", int, "most rows dynamic batching merges into one ONNX Runtime call")
    add("--max-queue-delay-ms", float, "how long a partial batch may wait for more requests; 0: send what has arrived")
    add("--max-queue-size", int, "requests queued per model version before new ones get RESOURCE_EXHAUSTED")
    add("--max-queue-seconds", float, "longest a request may wait to start (a nearer deadline counts); what could "
        "not start in time gets RESOURCE_EXHAUSTED at once; 0: only the deadline")  # fmt: skip
    add("--workers", int, "server processes sharing the gRPC port; metrics cover all of them")
    switch("--pin-workers", "pin each worker (or the single server) to a CPU of its own")
    add("--tls-cert", str, "PEM certificate (chain) of the server; with --tls-key turns on TLS")
    add("--tls-key", str, "PEM private key of the server")
    add("--tls-client-ca", str, "PEM CA bundle; clients must present a certificate it signed (mutual TLS)")
    add("--health-port", int, "plaintext port serving only the health service, for probes; -1: none")
    add("--auth-token-file", str, "file with a bearer token every call except health must send")
    switch("--disable-reflection", "do not serve gRPC server reflection")
    add("--model-control-mode", str, "none: serve every model in the repository (SIGHUP and --poll-seconds reload "
        "it); explicit: serve the --load-model models, load and unload others on request (RepositoryModelLoad/"
        "Unload)", choices=CONTROL_MODES)  # fmt: skip
    p.add_argument(
        "--load-model", action="append", default=[m for m in env.get("MDN_LOAD_MODEL", "").split(",") if m],
        help="with --model-control-mode explicit: a model to load at start (repeat it for more; env "
        "MDN_LOAD_MODEL=a,b)",
    )  # fmt: skip
    add("--poll-seconds", float, "reload the model repository this often (SIGHUP always reloads); 0: never")
    add("--drain-delay-seconds", float, "on SIGTERM, report NOT_SERVING but keep serving this long (probe propagation)")
    add("--grace-seconds", float, "time in-flight requests get to finish on SIGTERM/SIGINT")
    switch("--tracing", "export OpenTelemetry traces over OTLP (configured by the standard OTEL_* variables; "
           "OTEL_EXPORTER_OTLP_ENDPOINT alone also turns it on)")  # fmt: skip
    add("--log-level", str, "DEBUG, INFO, WARNING or ERROR")
    return p


def parse_settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Flags over MDN_* variables over defaults; exits with a usage message on a bad value."""
    environment = os.environ if env is None else env
    parser = build_parser(environment)
    args = parser.parse_args(argv)
    values = vars(args)
    values["load_model"] = tuple(values["load_model"])
    settings = Settings(**values)  # share_port keeps its default: it is no flag
    problems = []
    for name in (
        "workers",
        "max_rows",
        "max_samples",
        "max_ik_seeds",
        "max_message_bytes",
        "max_response_bytes_in_flight",
        "max_concurrent_streams",
        "max_concurrent_calls",
        "max_http_connections",
        "max_batch_rows",
        "max_queue_size",
    ):
        if getattr(settings, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 <= settings.port <= 65535:
        problems.append("--port must be in 0..65535")
    if not -1 <= settings.http_port <= 65535:
        problems.append("--http-port must be in -1..65535")
    if not -1 <= settings.metrics_port <= 65535:
        problems.append("--metrics-port must be in -1..65535")
    if bool(settings.tls_cert) != bool(settings.tls_key):
        problems.append("--tls-cert and --tls-key go together")
    if settings.tls_client_ca and not settings.tls_cert:
        problems.append("--tls-client-ca needs --tls-cert and --tls-key")
    for name in ("tls_cert", "tls_key", "tls_client_ca", "auth_token_file"):
        path = getattr(settings, name)
        if path and not Path(path).is_file():
            problems.append(f"--{name.replace('_', '-')} {path}: no such file")
    if not -1 <= settings.health_port <= 65535:
        problems.append("--health-port must be in -1..65535")
    for name in ("handshake_timeout_seconds", "max_connection_idle_seconds", "max_connection_age_seconds"):
        if not getattr(settings, name) > 0:
            problems.append(f"--{name.replace('_', '-')} must be > 0")
    non_negative = ("intra_op_threads", "inter_op_threads", "compute_threads", "max_queue_delay_ms", "poll_seconds",
                    "max_queue_seconds")  # fmt: skip
    for name in (*non_negative, "drain_delay_seconds", "grace_seconds"):
        if getattr(settings, name) < 0:
            problems.append(f"--{name.replace('_', '-')} must be >= 0")
    if settings.model_control_mode == "explicit" and settings.poll_seconds > 0:
        problems.append("--poll-seconds reloads the whole repository: with --model-control-mode explicit, load and "
                        "unload models on request instead (SIGHUP refreshes the loaded ones)")  # fmt: skip
    if settings.load_model and settings.model_control_mode != "explicit":
        problems.append("--load-model goes with --model-control-mode explicit (otherwise every model loads)")
    if settings.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        problems.append("--log-level must be DEBUG, INFO, WARNING or ERROR")
    if problems:
        parser.error("; ".join(problems))
    return settings
