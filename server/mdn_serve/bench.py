"""`make bench`: our server against its two ceilings, measured side by side in one run.

- compute ceiling: ONNX Runtime called in-process (one thread, and the default thread count);
- transport ceiling: a no-op gRPC server that answers each request with a canned response of
  the same size as ours, driven by the same load generator;
- our server (a real `mdn-serve` process), for Predict at several batch sizes, Sample and Modes,
  with 1 and 32 concurrent clients; each point right before the no-op server's run of it.

Predict at batch 1 with 32 clients is repeated (median kept) and measured again with a queue
delay. The servers run on half of the CPUs and the load generator on the other half.

Writes report.md, report.json and latency_vs_throughput.png under --out (runs/bench).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import re
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from mdn_serve._proto.mdn.v1 import mdn_pb2 as pb
from mdn_serve.contract import INPUT_NAME, OUTPUT_NAMES
from mdn_serve.loadtest import LoadConfig, LoadResult, encode_request, fetch_metadata, model_inputs, run_load


@dataclass(frozen=True)
class Point:
    rpc: str
    batch: int
    concurrency: int
    num_samples: int = 100

    @property
    def label(self) -> str:
        extra = f", {self.num_samples} samples/row" if self.rpc == "sample" else ""
        return f"{self.rpc.capitalize()} batch {self.batch}{extra}, {self.concurrency} client(s)"


def default_points() -> list[Point]:
    points = [Point("predict", b, c) for b in (1, 64, 1024, 16384) for c in (1, 32)]
    points += [Point("sample", 64, c) for c in (1, 32)]
    points += [Point("modes", b, c) for b in (64, 1024) for c in (1, 32)]
    return points


# ---------------------------------------------------------------- where things run


@dataclass(frozen=True)
class Placement:
    """CPUs for the servers and for the load generator; None where the OS cannot pin."""

    server: frozenset[int] | None = None
    client: frozenset[int] | None = None

    @staticmethod
    def split() -> Placement:
        """Servers on the first half of this process's CPUs, the load generator on the rest.

        Left to the scheduler on a small machine, a server's event loop, its gRPC threads and
        the load generator move between cores, and the ratios swing with it; in production the
        clients are elsewhere anyway. Both servers get the same CPUs.
        """
        if not hasattr(os, "sched_getaffinity"):
            return Placement()
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return Placement()
        half = (len(cpus) + 1) // 2
        return Placement(frozenset(cpus[:half]), frozenset(cpus[half:]))

    def enter_server(self) -> None:
        if self.server is not None:
            os.sched_setaffinity(0, self.server)

    def enter_client(self) -> None:
        if self.client is not None:
            os.sched_setaffinity(0, self.client)

    def describe(self) -> str:
        if self.server is None or self.client is None:
            return "not pinned to CPUs"
        return f"servers on CPU {_cpus(self.server)}, load generator on CPU {_cpus(self.client)}"


def _cpus(cpus: frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


# ---------------------------------------------------------------- compute ceiling


def onnx_ceiling(model_path: Path, batches: list[int], seconds: float, threads: int) -> dict[int, float]:
    """Rows/s of ONNX Runtime called in-process with `threads` intra-op threads (0: its default)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    dim = session.get_inputs()[0].shape[1]
    out: dict[int, float] = {}
    for batch in batches:
        x = np.random.default_rng(0).uniform(0.2, 0.8, (batch, dim)).astype(np.float32)
        for _ in range(3):
            session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
            runs += 1
        out[batch] = runs * batch / (time.perf_counter() - start)
    return out


# ---------------------------------------------------------------- transport ceiling


def _serve_noop(responses: dict[tuple[str, int], bytes], port_queue: Any, placement: Placement) -> None:
    """A gRPC server that does nothing but return the canned response for (method, request size)."""
    placement.enter_server()  # before gRPC starts its threads: they inherit it
    import grpc

    async def main() -> None:
        def unary(method: str) -> grpc.RpcMethodHandler:
            async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                return responses[(method, len(request))]

            return grpc.unary_unary_rpc_method_handler(handle)

        class Handlers(grpc.GenericRpcHandler):  # type: ignore[misc]
            def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
                return unary(details.method)

        options = [("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)]
        server = grpc.aio.server(options=options)
        server.add_generic_rpc_handlers((Handlers(),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        port_queue.put(port)
        await server.wait_for_termination()

    asyncio.run(main())


# ---------------------------------------------------------------- our server


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    port: int
    start_seconds: float
    log_reader: threading.Thread

    def rss_mb(self) -> float:
        """Resident memory of the server and its worker processes, in MB."""
        return sum(_rss_kb(pid) for pid in _process_tree(self.process.pid)) / 1024

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log_reader.join(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _rss_kb(pid: int) -> int:
    try:
        match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return 0
    return int(match.group(1)) if match else 0


def _process_tree(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def start_server(models: Path, extra: list[str], placement: Placement | None = None) -> ServerProcess:
    start = time.perf_counter()
    # The child pins itself before it imports gRPC (a preexec_fn is unsafe in this threaded process).
    cpus = sorted(placement.server) if placement is not None and placement.server is not None else None
    launch = (
        "import os, sys; from mdn_serve.cli import main; "
        + (f"os.sched_setaffinity(0, {cpus}); " if cpus else "")
        + "sys.exit(main(sys.argv[1:]))"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", launch, "--model-repository", str(models), "--port", "0",
         "--metrics-port", "-1", "--max-rows", "16384", "--max-batch-rows", "16384", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    port = 0
    assert process.stdout is not None
    for line in process.stdout:
        found = re.search(r"listening on [^ ]+:(\d+)", line)
        if found:
            port = int(found.group(1))
        if "SERVING" in line:
            break
    else:
        raise RuntimeError("mdn-serve exited before SERVING")
    elapsed = time.perf_counter() - start
    # Keep draining the log so the server never blocks on a full pipe.
    reader = threading.Thread(target=process.stdout.read, daemon=True)
    reader.start()
    return ServerProcess(process, port, elapsed, reader)


# ---------------------------------------------------------------- the run


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
    )
    return asyncio.run(run_load(config, model_info=info))


def canned_responses(
    target: str, model: str, points: list[Point]
) -> tuple[dict[tuple[str, int], bytes], tuple[dict[str, Any], int]]:
    """Ask our server once per point, so the no-op server can answer with same-size payloads."""
    import grpc

    responses: dict[tuple[str, int], bytes] = {}
    base = LoadConfig(target=target, model=model)
    info = asyncio.run(fetch_metadata(base))
    metadata, dim = info

    async def collect() -> None:
        async with grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 256 << 20)]) as ch:
            get = "/mdn.v1.MixtureDensityService/GetModel"
            body = pb.GetModelRequest(model=pb.ModelRef(name=model)).SerializeToString()
            call = ch.unary_unary(get, request_serializer=None, response_deserializer=None)
            responses[(get, len(body))] = await call(body, timeout=60)  # lets mdn-loadtest read the model
            for point in points:
                # Raw tensors: every request of a point has the same size, so one answer stands for all.
                config = replace(base, rpc=point.rpc, batch=point.batch, num_samples=point.num_samples)
                x = model_inputs(metadata, dim, point.batch, np.random.default_rng(config.seed))
                method, body = encode_request(config, x)
                call = ch.unary_unary(method, request_serializer=None, response_deserializer=None)
                responses[(method, len(body))] = await call(body, timeout=60)

    asyncio.run(collect())
    return responses, info


def _pair(ours: str, noop: str, model: str, point: Point, seconds: float, info: Info) -> dict[str, Any]:
    """Our server, then the no-op server, back to back: both see the machine in the same state."""
    mine = load(ours, model, point, seconds, info)
    theirs = load(noop, model, point, seconds, info)
    ratio = mine.requests_per_second / max(theirs.requests_per_second, 1e-9)
    return {"ours": asdict(mine), "noop": asdict(theirs), "vs_noop_requests": ratio}


def measure(ours: str, noop: str, model: str, point: Point, seconds: float, info: Info, repeats: int) -> dict[str, Any]:
    """One entry of the report; with repeats > 1, the pair with the median ratio, and every ratio."""
    pairs = [_pair(ours, noop, model, point, seconds, info) for _ in range(repeats)]
    pairs.sort(key=lambda pair: pair["vs_noop_requests"])
    entry = {"point": asdict(point), "label": point.label, **pairs[len(pairs) // 2]}
    entry["repeat_ratios"] = [pair["vs_noop_requests"] for pair in pairs]
    return entry


HEADLINE = Point("predict", 1, 32)


def run_bench(
    models: Path,
    model: str,
    points: list[Point],
    seconds: float,
    server_args: list[str],
    repeats: int = 3,
    tuned_delay_ms: float = 2.0,
    placement: Placement | None = None,
) -> dict[str, Any]:
    """The whole comparison; this process runs the load generator and the in-process ceiling."""
    placement = placement or Placement()
    before = os.sched_getaffinity(0) if placement.client is not None else None
    placement.enter_client()
    try:
        return _run_bench(models, model, points, seconds, server_args, repeats, tuned_delay_ms, placement)
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
    context = mp.get_context("spawn")
    noop: Any = None
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
    finally:
        server.stop()
        if noop is not None:
            noop.terminate()
            noop.join(10)

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
        "tuned_server_args": tuned_args if tuned else None,
        "start_to_serving_seconds": start_seconds,
        "rss_mb_after_start": rss_start,
        "rss_mb_after_load": max(rss_end, rss_tuned),
        "ort_ceiling_rows_per_second": {"1_thread": ceiling_1, "default_threads": ceiling_all},
        "results": results,
        "tuned_results": tuned,
        "targets": targets(results, tuned, start_seconds, max(rss_start, rss_end, rss_tuned)),
    }  # fmt: skip


def _device(server_args: list[str]) -> str:
    return server_args[server_args.index("--device") + 1] if "--device" in server_args else "cpu"


def _find(results: list[dict[str, Any]], rpc: str, batch: int, concurrency: int) -> dict[str, Any] | None:
    for entry in results:
        p = entry["point"]
        if (p["rpc"], p["batch"], p["concurrency"]) == (rpc, batch, concurrency):
            return entry
    return None


def targets(
    results: list[dict[str, Any]], tuned: list[dict[str, Any]], start_seconds: float, rss_mb: float
) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []

    def check(name: str, value: float | None, op: str, bound: float) -> None:
        met = value is not None and (value >= bound if op == ">=" else value <= bound)
        checks.append({"target": name, "value": value, "bound": f"{op} {bound}", "met": met})

    for entries, flags in ((results, "default flags"), (tuned, "with the queue delay")):
        found = _find(entries, "predict", 1, 32)
        if found is not None:
            runs = len(found["repeat_ratios"])
            name = f"Predict batch 1, 32 clients: requests/s vs the no-op server ({flags}, median of {runs})"
            check(name, found["vs_noop_requests"], ">=", 0.8)
    best_1024 = [
        e["vs_ort_rows_1_thread"] for e in results if e["point"]["rpc"] == "predict" and e["point"]["batch"] == 1024
    ]
    check("Predict batch 1024: rows/s vs in-process ONNX Runtime (1 thread)", max(best_1024, default=None), ">=", 0.6)
    modes, predict = _find(results, "modes", 1024, 1), _find(results, "predict", 1024, 1)
    ratio = modes["ours"]["latency_ms"]["p50"] / predict["ours"]["latency_ms"]["p50"] if modes and predict else None
    check("Modes batch 1024: p50 latency vs Predict batch 1024 (1 client)", ratio, "<=", 3.0)
    check("server RSS with the models loaded, MB", rss_mb, "<=", 200.0)
    check("start to SERVING, seconds", start_seconds, "<=", 2.0)
    return checks


def _table(entries: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| load | ours req/s | ours rows/s | p50 | p99 | no-op req/s | vs no-op | ORT rows/s, 1 thread | vs ORT "
        "| errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        o, n = e["ours"], e["noop"]
        ort_rows = e.get("ort_rows_per_second_1_thread")
        ort_text = f"{ort_rows:.0f} | {e['vs_ort_rows_1_thread']:.2f}" if ort_rows else "- | -"
        errors = sum(v for k, v in o["codes"].items() if k != "OK")
        ratios = e["repeat_ratios"]
        vs_noop = f"{e['vs_noop_requests']:.2f}" + (
            f" ({', '.join(f'{r:.2f}' for r in ratios)})" if len(ratios) > 1 else ""
        )
        lines.append(
            f"| {e['label']} | {o['requests_per_second']:.0f} | {o['rows_per_second']:.0f} | "
            f"{o['latency_ms'].get('p50', 0):.2f} | {o['latency_ms'].get('p99', 0):.2f} | "
            f"{n['requests_per_second']:.0f} | {vs_noop} | {ort_text} | {errors} |"
        )
    return lines


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# mdn-serve benchmark",
        "",
        f"Model `{report['model']}`, {report['seconds_per_point']:g} s per point after a warm-up, "
        f"{m['cpus']} CPUs, {m['platform']}, Python {m['python']}, ONNX Runtime {m['onnxruntime']}, "
        f"device {m['device']}. Server flags: `{' '.join(report['server_args'])}`. "
        f"Server and load generator share the machine ({report['placement']}); each point runs our server, "
        "then the no-op server "
        f"right after it. Predict batch 1 with 32 clients is measured {report['repeats']} times (the median "
        "ratio is shown). Latency in ms.",
        "",
        *_table(report["results"]),
    ]
    if report["tuned_results"]:
        lines += [
            "",
            f"The same server with `{' '.join(report['tuned_server_args'])}`:",
            "",
            *_table(report["tuned_results"]),
        ]
    lines += ["", "| target | value | bound | met |", "|---|---|---|---|"]
    for t in report["targets"]:
        value = "-" if t["value"] is None else f"{t['value']:.3g}"
        lines.append(f"| {t['target']} | {value} | {t['bound']} | {'yes' if t['met'] else 'no'} |")
    lines += [
        "",
        f"Start to SERVING: {report['start_to_serving_seconds']:.2f} s. RSS after start: "
        f"{report['rss_mb_after_start']:.0f} MB, after the load: {report['rss_mb_after_load']:.0f} MB.",
        "",
        "![latency against throughput](latency_vs_throughput.png)",
    ]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for who, marker in (("ours", "o"), ("noop", "x")):
        for rpc, color in (("predict", "C0"), ("sample", "C1"), ("modes", "C2")):
            pts = [e for e in report["results"] if e["point"]["rpc"] == rpc]
            if not pts:
                continue
            xs = [e[who]["rows_per_second"] for e in pts]
            ys = [e[who]["latency_ms"].get("p99", np.nan) for e in pts]
            ax.scatter(xs, ys, marker=marker, color=color, label=f"{'mdn-serve' if who == 'ours' else 'no-op'} {rpc}")
    ax.set(xscale="log", yscale="log", xlabel="rows/s", ylabel="p99 latency (ms)", title="Latency against throughput")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mdn-bench", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--models", type=Path, default=Path("models"))
    p.add_argument("--model", default="two_link_arm")
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    p.add_argument("--seconds", type=float, default=2.0, help="measured seconds per point")
    p.add_argument("--quick", action="store_true", help="a few points only (a smoke run)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--repeats", type=int, default=3, help="runs of Predict batch 1 with 32 clients (median kept)")
    p.add_argument(
        "--tuned-delay-ms", type=float, default=2.0,
        help="also run Predict with 32 clients on a server with this --max-queue-delay-ms (0: skip)",
    )  # fmt: skip
    p.add_argument("--no-pin", action="store_true", help="leave the servers and the load generator unpinned")
    p.add_argument("server_args", nargs="*", help="extra mdn-serve flags, after --")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.tuned_delay_ms < 0:
        p.error("--repeats must be >= 1 and --tuned-delay-ms >= 0")
    if not (args.models / args.model).is_dir():
        print(f"mdn-bench: error: no model {args.model!r} under {args.models}; run `make train export` first",
              file=sys.stderr)  # fmt: skip
        return 2
    points = (
        [Point("predict", 1, 32), Point("predict", 1024, 1), Point("modes", 1024, 1)]
        if args.quick
        else default_points()
    )
    server_args = ["--device", args.device, *args.server_args]
    placement = Placement() if args.no_pin else Placement.split()
    report = run_bench(
        args.models, args.model, points, args.seconds, server_args, args.repeats, args.tuned_delay_ms, placement
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    text = render(report)
    (args.out / "report.md").write_text(text)
    plot(report, args.out / "latency_vs_throughput.png")
    print()
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
