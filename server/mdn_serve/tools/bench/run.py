"""`make bench`: our server against its two ceilings, measured side by side in one run.

- compute ceiling: ONNX Runtime called in-process (one thread, and the default thread count);
- transport ceiling: a no-op gRPC server that answers each request with a canned response of
  the same size as ours, driven by the same load generator;
- our server (a real `mdn-serve` process), for Predict at several batch sizes, Sample and Modes,
  with 1 and 32 concurrent clients; each point right before the no-op server's run of it;
- over HTTP/REST: the mixture at batch 1 (JSON) and 1024 (binary tensors) against a no-op HTTP
  server on the same stack (aiohttp), the same way.

Predict at batch 1 with 32 clients is repeated (median kept) and measured again with a queue
delay. The servers run on half of the CPUs and the load generator on the other half.

Writes report.md, report.json and latency_vs_throughput.png under --out (runs/bench).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

import onnxruntime as ort

from mdn_serve.config import parse_settings
from mdn_serve.tools.bench import tracing
from mdn_serve.tools.bench.ceilings import Placement, _serve_noop, canned_responses, onnx_ceiling
from mdn_serve.tools.bench.http import HTTP_POINTS, HttpPoint, bodies, canned_answers, measure_http, serve_noop_http
from mdn_serve.tools.bench.ik import IK_BATCHES, IK_MODEL, measure_ik
from mdn_serve.tools.bench.overload import OVERLOAD_BATCH, OVERLOAD_FACTOR, measure_overload
from mdn_serve.tools.bench.points import CLIENT_BACKOFF_MS, HEADLINE, Point
from mdn_serve.tools.bench.report import targets
from mdn_serve.tools.bench.servers import start_server
from mdn_serve.tools.loadtest import LoadConfig, LoadResult, run_load

Info = tuple[dict[str, Any], int]  # the model's metadata and input width, as mdn-loadtest reads them


def load(target: str, model: str, point: Point, seconds: float, info: Info) -> LoadResult:
    config = LoadConfig(
        target=target,
        model=model,
        rpc=point.rpc,
        batch=point.batch,
        num_samples=point.num_samples,
        concurrency=point.concurrency,
        duration=seconds,
        warmup=min(0.5, seconds / 2),
        timeout=60.0,
        backoff_ms=CLIENT_BACKOFF_MS,
    )
    return asyncio.run(run_load(config, model_info=info))


def _pair(ours: str, noop: str, model: str, point: Point, seconds: float, info: Info) -> dict[str, Any]:
    """Our server, then the no-op server, back to back: both see the machine in the same state. The ratio
    counts the requests answered OK: a refusal is no throughput, however fast it comes back."""
    mine = load(ours, model, point, seconds, info)
    theirs = load(noop, model, point, seconds, info)
    ratio = mine.answered_requests_per_second / max(theirs.answered_requests_per_second, 1e-9)
    return {"ours": asdict(mine), "noop": asdict(theirs), "vs_noop_requests": ratio}


def measure(ours: str, noop: str, model: str, point: Point, seconds: float, info: Info, repeats: int) -> dict[str, Any]:
    """One entry of the report; with repeats > 1, the pair with the median ratio, and every ratio."""
    pairs = [_pair(ours, noop, model, point, seconds, info) for _ in range(repeats)]
    pairs.sort(key=lambda pair: pair["vs_noop_requests"])
    entry = {"point": asdict(point), "label": point.label, **pairs[len(pairs) // 2]}
    entry["repeat_ratios"] = [pair["vs_noop_requests"] for pair in pairs]
    return entry


def run_bench(
    models: Path,
    model: str,
    points: list[Point],
    seconds: float,
    server_args: list[str],
    repeats: int = 3,
    tuned_delay_ms: float = 2.0,
    placement: Placement | None = None,
    http_points: list[HttpPoint] | None = None,
) -> dict[str, Any]:
    """The whole comparison; this process runs the load generator and the in-process ceiling."""
    placement = placement or Placement()
    before = os.sched_getaffinity(0) if placement.client is not None else None
    placement.enter_client()
    try:
        return _run_bench(models, model, points, seconds, server_args, repeats, tuned_delay_ms, placement,
                          HTTP_POINTS if http_points is None else http_points)  # fmt: skip
    finally:
        if before is not None:
            os.sched_setaffinity(0, before)


def _run_bench(
    models: Path,
    model: str,
    points: list[Point],
    seconds: float,
    server_args: list[str],
    repeats: int,
    tuned_delay_ms: float,
    placement: Placement,
    http_points: list[HttpPoint],
) -> dict[str, Any]:
    model_path = max((models / model).iterdir(), key=lambda p: int(p.name)) / "model.onnx"
    batches = sorted({p.batch for p in points if p.rpc == "predict"})
    print("ONNX Runtime in-process ceiling ...", flush=True)
    ceiling_1 = onnx_ceiling(model_path, batches, min(seconds, 1.0), threads=1)
    ceiling_all = onnx_ceiling(model_path, batches, min(seconds, 1.0), threads=0)

    server = start_server(models, server_args, placement)
    start_seconds, rss_start = server.start_seconds, server.rss_mb()
    results: list[dict[str, Any]] = []
    tuned: list[dict[str, Any]] = []
    tuned_args = [*server_args, "--max-queue-delay-ms", f"{tuned_delay_ms:g}"]
    rss_tuned = 0.0
    ik: list[dict[str, Any]] = []
    overload: dict[str, Any] = {}
    overload_other: dict[str, Any] = {}
    http: list[dict[str, Any]] = []
    traced: dict[str, Any] = {}
    sink: Any = None
    context = mp.get_context("spawn")
    noop: Any = None
    noop_http: Any = None
    try:
        responses, info = canned_responses(f"127.0.0.1:{server.port}", model, points)
        queue: Any = context.Queue()
        noop = context.Process(target=_serve_noop, args=(responses, queue, placement), daemon=True)
        noop.start()
        noop_target = f"127.0.0.1:{queue.get(timeout=60)}"
        for point in points:
            print(f"{point.label}: mdn-serve, then the no-op server ...", flush=True)
            n = repeats if point == HEADLINE else 1
            results.append(measure(f"127.0.0.1:{server.port}", noop_target, model, point, seconds, info, n))
        if http_points:
            requests = bodies(info[1], http_points)
            answers = asyncio.run(canned_answers(f"http://127.0.0.1:{server.http_port}/v2/models/{model}/infer",
                                                 requests))  # fmt: skip
            noop_http = context.Process(target=serve_noop_http, args=(answers, queue, placement), daemon=True)
            noop_http.start()
            http = measure_http(server.http_port, queue.get(timeout=60), model, requests, seconds)
        print(f"Modes batch {OVERLOAD_BATCH} at {OVERLOAD_FACTOR:g}x capacity (open loop) ...", flush=True)
        overload = measure_overload(f"127.0.0.1:{server.port}", model, seconds, info)
        if (models / IK_MODEL).is_dir():
            print(f"Solve on {IK_MODEL}, batch {', '.join(map(str, IK_BATCHES))}, then in-process ...", flush=True)
            ik = measure_ik(f"127.0.0.1:{server.port}", models, seconds)
        rss_end = server.rss_mb()
        if tuned_delay_ms > 0 and HEADLINE in points:
            server.stop()
            # The same server with a queue delay: how far batching takes small requests.
            server = start_server(models, tuned_args, placement)
            for point in (HEADLINE, Point("predict", 64, 32)):
                print(f"{point.label}, --max-queue-delay-ms {tuned_delay_ms:g} ...", flush=True)
                n = repeats if point == HEADLINE else 1
                tuned.append(measure(f"127.0.0.1:{server.port}", noop_target, model, point, seconds, info, n))
            rss_tuned = server.rss_mb()
        # The overload point again on a server whose threads run under the other --io-scheduling policy.
        other_policy = "normal" if _io_policy(server_args) == "batch" else "batch"
        server.stop()
        server = start_server(models, [*server_args, "--io-scheduling", other_policy], placement)
        print(f"the same overload, --io-scheduling {other_policy} ...", flush=True)
        overload_other = {"io_scheduling": other_policy,
                          **measure_overload(f"127.0.0.1:{server.port}", model, seconds, info)}  # fmt: skip
        if tracing.available() and HEADLINE in points:
            server.stop()
            sink = context.Process(target=tracing.serve_sink, args=(queue, placement), daemon=True)
            sink.start()
            endpoint = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{queue.get(timeout=60)}"}
            server = start_server(models, server_args, placement, endpoint)
            print(f"{HEADLINE.label}, tracing every request ...", flush=True)
            traced = measure(f"127.0.0.1:{server.port}", noop_target, model, HEADLINE, seconds, info, repeats)
    finally:
        server.stop()
        for process in (noop, noop_http, sink):
            if process is not None:
                process.terminate()
                process.join(10)

    for entry in results:
        point, ours = entry["point"], entry["ours"]
        if point["rpc"] == "predict":
            entry["ort_rows_per_second_1_thread"] = ceiling_1[point["batch"]]
            entry["ort_rows_per_second_default"] = ceiling_all[point["batch"]]
            entry["vs_ort_rows_1_thread"] = ours["rows_per_second"] / ceiling_1[point["batch"]]
    return {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "onnxruntime": ort.__version__, "device": _device(server_args)},
        "model": model,
        "placement": placement.describe(),
        "seconds_per_point": seconds,
        "repeats": repeats,
        "server_args": server_args,
        "client_backoff_ms": CLIENT_BACKOFF_MS,
        "tuned_server_args": tuned_args if tuned else None,
        "start_to_serving_seconds": start_seconds,
        "rss_mb_after_start": rss_start,
        "rss_mb_after_load": max(rss_end, rss_tuned),
        "ort_ceiling_rows_per_second": {"1_thread": ceiling_1, "default_threads": ceiling_all},
        "results": results,
        "tuned_results": tuned,
        "http_results": http,
        "traced_result": traced,
        "ik_results": ik,
        "overload": {"io_scheduling": _io_policy(server_args), **overload} if overload else overload,
        "overload_other_io_scheduling": overload_other,
        "targets": targets(results, tuned, start_seconds, max(rss_start, rss_end, rss_tuned), overload),
    }  # fmt: skip


def _io_policy(server_args: list[str]) -> str:
    """The --io-scheduling the servers run with: their flags (and MDN_* variables), read as they read them."""
    return parse_settings(server_args).io_scheduling


def _device(server_args: list[str]) -> str:
    return server_args[server_args.index("--device") + 1] if "--device" in server_args else "cpu"
