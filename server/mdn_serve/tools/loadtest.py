"""A load generator for mdn-serve (mdn.v1 or the Open Inference Protocol, over gRPC or HTTP): `mdn-loadtest`.

Closed loop: N clients, each sends its next request when the last one returns (with
`--backoff-ms`, a client whose request was refused, RESOURCE_EXHAUSTED or UNAVAILABLE, first waits
a random time up to that, doubling with each refusal in a row up to MAX_BACKOFF, as the server's
refusals ask; without it, at once, the worst case for the server). Open loop:
requests leave at a fixed rate whatever happens, and latency is measured from each request's
scheduled send time, so a server stall shows up as latency instead of being hidden by a
client that waited. Every run is bounded by a duration and a request count.

What is measured: the requests sent within the window of `duration` seconds after the warm-up,
whenever they complete (the run waits for the last ones): their latencies, their status codes,
and their count over the window's length as the throughput. Requests still in flight when the
window opens were sent during the warm-up and are left out, as many as are left in flight when it
closes, so a steady load is counted at its rate. (Dividing instead by the time it took to drain the
last answers would understate an open loop's throughput by up to the server's queue time.)

Beside it, `answered_rows_per_second`: the rows of OK answers that *arrived* within the window, over
its length, whenever their requests were sent. Under overload, with a warm-up longer than the
server's queue budget (so that its queue is full when the window opens), this is the server's
steady-state useful throughput. The count by send time is not: the requests sent at the end of the
window are answered after it, once the load has stopped and the server no longer spends its CPU
refusing requests, and a queue that grows during the window is counted at its growth.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from mdn_serve.tools import grpc_load, http_load
from mdn_serve.tools.grpc_load import GrpcSender
from mdn_serve.tools.http_load import HttpSender
from mdn_serve.tools.payloads import MetadataMissing, encode_request, request_inputs

RPCS = ("predict", "sample", "modes", "solve")
PROTOCOLS = ("mdn", "oip", "oip-http")
MAX_DURATION = 3600.0
DISTINCT_INPUTS = 16  # requests cycle through this many pre-encoded payloads
MAX_OUTSTANDING = 10_000  # open loop: sends in flight before the client counts itself saturated
RETRYABLE = frozenset({"RESOURCE_EXHAUSTED", "UNAVAILABLE"})  # refusals a closed-loop client backs off from
MAX_BACKOFF = 1.0  # seconds: the longest wait a run of refusals grows to


@dataclass(frozen=True)
class LoadConfig:
    target: str = "localhost:8001"
    model: str = "two_link_arm"
    protocol: str = "mdn"
    rpc: str = "predict"
    batch: int = 1
    num_samples: int = 100
    concurrency: int = 16  # closed loop: clients in flight
    rate: float = 0.0  # open loop when > 0: requests per second
    backoff_ms: float = 0.0  # closed loop: after a refusal, wait up to this (doubling per refusal in a row)
    duration: float = 10.0
    max_requests: int = 10_000_000
    warmup: float = 1.0  # seconds of load before measuring
    timeout: float = 30.0
    channels: int = 1
    tls: bool = False
    ca_cert: str = ""
    client_cert: str = ""
    client_key: str = ""
    token_file: str = ""
    seed: int = 0
    # For servers whose metadata does not give them (other Open Inference Protocol servers):
    input_dim: int = 0  # columns per row; 0: from the model's metadata
    input_name: str = "x"  # the OIP input tensor's name


@dataclass
class LoadResult:
    config: dict[str, Any]
    seconds: float
    requests: int
    rows: int
    requests_per_second: float  # every request sent within the window, refused or failed ones too
    rows_per_second: float  # rows of the requests answered OK
    latency_ms: dict[str, float]  # every request, refused or failed ones too
    answered_latency_ms: dict[str, float]  # the requests answered OK only
    codes: dict[str, int] = field(default_factory=dict)
    skipped_sends: int = 0  # open loop: sends dropped because too many were outstanding
    first_error: str = ""  # "CODE: details" of the first failed request, to say what went wrong
    first_errors: dict[str, str] = field(default_factory=dict)  # status code -> details of its first request
    answered_rows_per_second: float = 0.0  # rows of OK answers that arrived within the window, per second
    answered_requests_per_second: float = 0.0  # requests sent within the window and answered OK, per second

    @property
    def errors(self) -> int:
        return sum(n for code, n in self.codes.items() if code != "OK")


async def fetch_metadata(config: LoadConfig) -> tuple[dict[str, Any], int]:
    """The model's metadata JSON and input width, from the server (mdn.v1 GetModel, OIP ModelMetadata, or
    their HTTP forms). With config.input_dim set, nothing is asked: the inputs are drawn from a standard normal.
    """
    if config.input_dim > 0:
        return {}, config.input_dim
    if config.protocol == "oip-http":
        return await http_load.fetch_metadata(config)
    return await grpc_load.fetch_metadata(config)


class _Recorder:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.answered: list[float] = []  # latencies of the requests answered OK
        self.codes: Counter[str] = Counter()
        self.window_start = math.inf  # time.perf_counter() from which sends are measured
        self.window_end = math.inf  # ... and up to which
        self.answered_in_window = 0  # OK answers that arrived within the window, whenever sent
        self.first_error = ""
        self.first_errors: dict[str, str] = {}

    def record(self, sent: float, seconds: float, code: str, detail: str = "") -> None:
        if code == "OK" and self.window_start <= sent + seconds < self.window_end:
            self.answered_in_window += 1
        if sent >= self.window_start:
            self.latencies.append(seconds)
            self.codes[code] += 1
            if code == "OK":
                self.answered.append(seconds)
            elif code not in self.first_errors:
                self.first_errors[code] = detail
                self.first_error = self.first_error or f"{code}: {detail}"


async def run_load(
    config: LoadConfig, progress: bool = False, model_info: tuple[dict[str, Any], int] | None = None
) -> LoadResult:
    """Drive the target with config's load; returns throughput, latency percentiles and status codes.

    model_info (metadata JSON, input width) is fetched from the target unless given.
    """
    if not 0 < config.duration <= MAX_DURATION:
        raise ValueError(f"duration must be in (0, {MAX_DURATION}] seconds")
    metadata, input_dim = model_info if model_info is not None else await fetch_metadata(config)
    rng = np.random.default_rng(config.seed)
    inputs = [request_inputs(config, metadata, input_dim, rng) for _ in range(DISTINCT_INPUTS)]
    sender: GrpcSender | HttpSender
    if config.protocol == "oip-http":
        sender = HttpSender(config, [http_load.encode_body(config, x) for x in inputs])
    else:
        sender = GrpcSender(config, [encode_request(config, x) for x in inputs])
    recorder = _Recorder()
    sent = 0
    stop_at = math.inf
    skipped = 0

    async def one(i: int, scheduled: float) -> str:
        code, detail = await sender.send(i)
        recorder.record(scheduled, time.perf_counter() - scheduled, code, detail)
        return code

    async def closed_client(worker: int) -> None:
        nonlocal sent
        jitter = random.Random(config.seed * 1_000_003 + worker)
        refused = 0  # refusals in a row
        while time.perf_counter() < stop_at and sent < config.max_requests:
            sent += 1
            code = await one(sent + worker, time.perf_counter())
            refused = refused + 1 if code in RETRYABLE else 0
            if refused and config.backoff_ms > 0:
                await asyncio.sleep(backoff_seconds(config.backoff_ms, refused, jitter))

    async def open_loop() -> None:
        nonlocal sent, skipped
        interval = 1.0 / config.rate
        outstanding: set[asyncio.Task[str]] = set()
        start = time.perf_counter()
        i = 0
        while sent < config.max_requests:
            scheduled = start + i * interval
            if scheduled >= stop_at:
                break
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            i += 1
            if len(outstanding) >= MAX_OUTSTANDING:
                skipped += 1  # the client itself cannot keep up; counted, not hidden
                continue
            sent += 1
            task = asyncio.ensure_future(one(i, scheduled))
            outstanding.add(task)
            task.add_done_callback(outstanding.discard)
        if outstanding:
            await asyncio.gather(*outstanding)

    async def report_progress(begin: float) -> None:
        while True:
            await asyncio.sleep(1.0)
            lat = recorder.latencies
            done = len(lat)
            elapsed = time.perf_counter() - begin
            p50 = 1000 * float(np.percentile(lat[-5000:], 50)) if lat else 0.0
            p99 = 1000 * float(np.percentile(lat[-5000:], 99)) if lat else 0.0
            errors = sum(n for c, n in recorder.codes.items() if c != "OK")
            print(
                f"\r{elapsed:6.1f}s  {done:9d} req  {done / max(elapsed, 1e-9):9.0f} req/s  "
                f"p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  errors {errors}",
                end="",
                file=sys.stderr,
                flush=True,
            )

    try:
        await sender.ready()
        begin = recorder.window_start = time.perf_counter() + config.warmup
        stop_at = recorder.window_end = begin + config.duration
        load = (
            asyncio.ensure_future(open_loop())
            if config.rate > 0
            else asyncio.gather(*(closed_client(w) for w in range(config.concurrency)))
        )
        if config.warmup > 0:
            await asyncio.sleep(config.warmup)
        ticker = asyncio.ensure_future(report_progress(begin)) if progress else None
        await load
        seconds = config.duration
        if ticker is not None:
            ticker.cancel()
            print(file=sys.stderr)
    finally:
        await sender.close()

    lat = np.asarray(recorder.latencies) * 1000.0
    count = len(lat)
    rows = recorder.codes["OK"] * config.batch  # rows answered: a failed request computed nothing
    pct = {f"p{q}": float(np.percentile(lat, q)) for q in (50, 90, 99)} if count else {}
    ok = np.asarray(recorder.answered) * 1000.0
    ok_pct = {f"p{q}": float(np.percentile(ok, q)) for q in (50, 90, 99)} if len(ok) else {}
    return LoadResult(
        config=asdict(config),
        seconds=seconds,
        requests=count,
        rows=rows,
        requests_per_second=count / seconds if seconds > 0 else 0.0,
        rows_per_second=rows / seconds if seconds > 0 else 0.0,
        latency_ms={**pct, "max": float(lat.max()) if count else 0.0, "mean": float(lat.mean()) if count else 0.0},
        answered_latency_ms=ok_pct,
        codes=dict(recorder.codes),
        skipped_sends=skipped,
        first_error=recorder.first_error,
        first_errors=recorder.first_errors,
        answered_rows_per_second=recorder.answered_in_window * config.batch / seconds if seconds > 0 else 0.0,
        answered_requests_per_second=recorder.codes["OK"] / seconds if seconds > 0 else 0.0,
    )


def backoff_seconds(backoff_ms: float, refused: int, jitter: random.Random) -> float:
    """How long a closed-loop client waits after `refused` refusals in a row: uniform up to backoff_ms,
    doubled per refusal in a row, at most MAX_BACKOFF ("full jitter": clients refused together do not
    come back together)."""
    ceiling = min(MAX_BACKOFF, backoff_ms / 1000.0 * 2.0 ** min(refused - 1, 30))
    return jitter.uniform(0.0, ceiling)


def format_result(r: LoadResult) -> str:
    c = r.config
    mode = f"open loop at {c['rate']:g} req/s" if c["rate"] > 0 else f"closed loop, {c['concurrency']} clients"
    lines = [
        f"{c['protocol']} {c['rpc']} on {c['model']} at {c['target']}, batch {c['batch']}, {mode}, {r.seconds:.1f} s",
        "",
        "| requests | req/s | rows/s | p50 ms | p90 ms | p99 ms | max ms | errors |",
        "|---|---|---|---|---|---|---|---|",
        f"| {r.requests} | {r.requests_per_second:.0f} | {r.rows_per_second:.0f} | "
        f"{r.latency_ms.get('p50', 0):.3f} | {r.latency_ms.get('p90', 0):.3f} | {r.latency_ms.get('p99', 0):.3f} | "
        f"{r.latency_ms.get('max', 0):.3f} | {r.errors} |",
    ]
    if r.codes:
        lines.append("")
        lines.append("status codes: " + ", ".join(f"{k} {v}" for k, v in sorted(r.codes.items())))
    if r.errors and r.answered_latency_ms:
        ok = r.answered_latency_ms
        lines.append(f"answered (OK) only: p50 {ok['p50']:.3f} ms, p90 {ok['p90']:.3f} ms, p99 {ok['p99']:.3f} ms")
        lines.append(f"rows of OK answers arriving within the window: {r.answered_rows_per_second:.0f}/s")
    if r.skipped_sends:
        lines.append(f"sends skipped because the client could not keep up: {r.skipped_sends}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    d = LoadConfig()
    p = argparse.ArgumentParser(
        prog="mdn-loadtest",
        description="Load-test an mdn-serve server (or another Open Inference Protocol server) over gRPC or HTTP.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,  # every flag's default in --help
    )
    p.add_argument("--target", default=d.target, help="host:port (this machine)")
    p.add_argument("--model", default=d.model)
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default=d.protocol,
        help="mdn (mdn.v1), oip (KServe v2 over gRPC) or oip-http (over HTTP: --target its port)",
    )
    p.add_argument("--rpc", choices=RPCS, default=d.rpc)
    p.add_argument("--batch", type=int, default=d.batch, help="rows per request")
    p.add_argument("--num-samples", type=int, default=d.num_samples, help="samples per row for --rpc sample")
    p.add_argument("--concurrency", type=int, default=d.concurrency, help="closed loop: clients in flight")
    p.add_argument("--rate", type=float, default=d.rate, help="open loop: requests per second (0: closed loop)")
    p.add_argument("--backoff-ms", type=float, default=d.backoff_ms,
                   help="closed loop: after a refusal (RESOURCE_EXHAUSTED, UNAVAILABLE) wait a random time up to "
                        "this, doubling per refusal in a row up to 1 s (0: send again at once)")  # fmt: skip
    p.add_argument("--duration", type=float, default=d.duration, help="seconds measured, after --warmup")
    p.add_argument("--warmup", type=float, default=d.warmup, help="seconds of load before measuring")
    p.add_argument("--max-requests", type=int, default=d.max_requests, help="stop after this many requests")
    p.add_argument("--timeout", type=float, default=d.timeout, help="deadline per request, seconds")
    p.add_argument("--channels", type=int, default=d.channels, help="gRPC channels (connections) to spread over")
    p.add_argument("--tls", action="store_true", help="use TLS")
    p.add_argument("--ca-cert", default="", help="CA certificate (PEM) that signed the server's certificate")
    p.add_argument("--client-cert", default="", help="client certificate (PEM), for mutual TLS")
    p.add_argument("--client-key", default="", help="client private key (PEM), for mutual TLS")
    p.add_argument("--token-file", default="", help="file with the bearer token the server expects")
    p.add_argument("--json", type=Path, help="also write the result as JSON to this file")
    p.add_argument("--max-error-rate", type=float, default=0.01,
                   help="exit 1 when a larger share of requests fails (1: never)")  # fmt: skip
    p.add_argument(
        "--input-dim",
        type=int,
        default=d.input_dim,
        help="columns per row, for servers whose metadata does not say (0: from the metadata)",
    )
    p.add_argument("--input-name", default=d.input_name, help="OIP input tensor name")
    p.add_argument("--quiet", action="store_true", help="no live progress line")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problems = []
    if args.batch < 1:
        problems.append("--batch must be >= 1")
    if args.concurrency < 1:
        problems.append("--concurrency must be >= 1")
    if args.rate < 0:
        problems.append("--rate must be >= 0")
    if args.backoff_ms < 0:
        problems.append("--backoff-ms must be >= 0")
    if not 0 < args.duration <= MAX_DURATION:
        problems.append(f"--duration must be in (0, {MAX_DURATION:.0f}] seconds")
    if args.max_requests < 1:
        problems.append("--max-requests must be >= 1")
    if problems:
        build_parser().error("; ".join(problems))
    fields = {k: v for k, v in vars(args).items() if k in LoadConfig.__dataclass_fields__}
    config = LoadConfig(**fields)
    try:
        result = asyncio.run(run_load(config, progress=not args.quiet))
    except grpc.aio.AioRpcError as exc:
        print(f"mdn-loadtest: error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except TimeoutError:
        print(f"mdn-loadtest: error: no connection to {config.target} within {config.timeout} s", file=sys.stderr)
        return 1
    except MetadataMissing as exc:
        print(f"mdn-loadtest: error: {exc}", file=sys.stderr)
        return 1
    print(format_result(result))
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
    for code, detail in result.first_errors.items():
        print(f"first {code}: {detail}", file=sys.stderr)
    if result.requests and not result.codes.get("OK"):
        print("mdn-loadtest: error: every request failed; nothing was measured", file=sys.stderr)
        return 1
    failed = result.errors / result.requests if result.requests else 0.0
    if failed > args.max_error_rate:
        print(f"mdn-loadtest: error: {failed:.1%} of requests failed, over --max-error-rate {args.max_error_rate:g}",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
