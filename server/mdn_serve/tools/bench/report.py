"""The benchmark's targets, its Markdown report and its latency-against-throughput plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def answered(result: dict[str, Any]) -> tuple[float, dict[str, float]]:
    """One load result's requests answered OK per second and their latency percentiles ({} when none
    was): a refusal is no throughput, and its quick answer no latency of the service."""
    return result["answered_requests_per_second"], result["answered_latency_ms"]


def _errors(codes: dict[str, int], ok: str) -> str:
    """The requests not answered `ok`, with their status codes: `0`, or `2244 (RESOURCE_EXHAUSTED 2244)`."""
    failed = {code: n for code, n in sorted(codes.items()) if code != ok}
    total = sum(failed.values())
    return f"{total} ({', '.join(f'{c} {n}' for c, n in failed.items())})" if total else "0"


def _find(results: list[dict[str, Any]], rpc: str, batch: int, concurrency: int) -> dict[str, Any] | None:
    for entry in results:
        p = entry["point"]
        if (p["rpc"], p["batch"], p["concurrency"]) == (rpc, batch, concurrency):
            return entry
    return None


def targets(
    results: list[dict[str, Any]],
    tuned: list[dict[str, Any]],
    start_seconds: float,
    rss_mb: float,
    overload: dict[str, Any] | None = None,
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
    ratio = None
    if modes and predict:
        modes_p50, predict_p50 = (answered(e["ours"])[1].get("p50") for e in (modes, predict))
        ratio = modes_p50 / predict_p50 if modes_p50 and predict_p50 else None
    check("Modes batch 1024: p50 latency vs Predict batch 1024 (1 client)", ratio, "<=", 3.0)
    if overload:
        name = f"Modes batch {overload['batch']} at {overload['factor']:g}x capacity: goodput vs capacity"
        check(name, overload["goodput_vs_capacity"], ">=", 0.8)
        name = f"... answered p99, ms (bound: 2x the unloaded p99 {overload['unloaded_p99_ms']:.1f} ms + 1 s budget)"
        check(name, overload["answered_p99_ms"], "<=", round(overload["p99_bound_ms"], 1))
    check("server RSS with the models loaded, MB", rss_mb, "<=", 200.0)
    check("start to SERVING, seconds", start_seconds, "<=", 2.0)
    return checks


def _table(entries: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| load | ours req/s | ours rows/s | p50 | p99 | no-op req/s | vs no-op | ORT rows/s, 1 thread | vs ORT "
        "| not OK |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        (rate, latency), (noop_rate, _) = answered(e["ours"]), answered(e["noop"])
        ort_rows = e.get("ort_rows_per_second_1_thread")
        ort_text = f"{ort_rows:.0f} | {e['vs_ort_rows_1_thread']:.2f}" if ort_rows else "- | -"
        ratios = e["repeat_ratios"]
        vs_noop = f"{e['vs_noop_requests']:.2f}" + (
            f" ({', '.join(f'{r:.2f}' for r in ratios)})" if len(ratios) > 1 else ""
        )
        lines.append(
            f"| {e['label']} | {rate:.0f} | {e['ours']['rows_per_second']:.0f} | "
            f"{latency.get('p50', 0):.2f} | {latency.get('p99', 0):.2f} | "
            f"{noop_rate:.0f} | {vs_noop} | {ort_text} | {_errors(e['ours']['codes'], 'OK')} |"
        )
    refused = [e for e in entries if any(code != "OK" for code in e["ours"]["codes"])]
    if refused:
        lines += ["", "Not answered OK, with the first message of each code:"]
        lines += [
            f"- {e['label']}: " + "; ".join(f"{c}: {m}" for c, m in e["ours"].get("first_errors", {}).items())
            for e in refused
        ]
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
        "ratio is shown). Requests, rows and latencies count the answers OK; a closed-loop client refused "
        f"waits up to {report['client_backoff_ms']:g} ms before it sends again (doubling per refusal in a "
        "row). Latency in ms.",
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
    if report.get("http_results"):
        lines += [
            "",
            "Open Inference Protocol over HTTP/REST (the mixture), against a no-op aiohttp server answering "
            "with a canned body of the same size, right after ours:",
            "",
            "| load | ours req/s | ours rows/s | p50 | p99 | no-op req/s | vs no-op | not 200 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for e in report["http_results"]:
            (rate, latency), (noop_rate, _) = answered(e["ours"]), answered(e["noop"])
            lines.append(
                f"| {e['label']} | {rate:.0f} | {rate * e['batch']:.0f} | {latency.get('p50', 0):.2f} | "
                f"{latency.get('p99', 0):.2f} | {noop_rate:.0f} | {e['vs_noop_requests']:.2f} | "
                f"{_errors(e['ours']['codes'], '200')} |"
            )
    traced, headline = report.get("traced_result"), _find(report["results"], "predict", 1, 32)
    if traced and headline:
        on, off = answered(traced["ours"])[0], answered(headline["ours"])[0]
        lines += [
            "",
            f"Tracing: {traced['label']} on a server tracing every request (spans exported over OTLP to a local "
            f"sink): {on:.0f} requests/s, {traced['vs_noop_requests']:.2f} of the no-op server "
            f"({', '.join(f'{r:.2f}' for r in traced['repeat_ratios'])}), against {off:.0f} requests/s and "
            f"{headline['vs_noop_requests']:.2f} with tracing off (the default, first table): on/off {on / off:.2f}. "
            "With tracing off the SDK is not loaded and each request pays one attribute check.",
        ]
    if report.get("ik_results"):
        lines += [
            "",
            "Solve (inverse kinematics) on a robot arm, one client in a closed loop (its rate: one request per "
            "mean latency), against the same network and solve run in-process on one thread:",
            "",
            "| model | targets per request | requests/s | solutions/s | p50 | served targets/s vs in-process |",
            "|---|---|---|---|---|---|",
        ]
        for e in report["ik_results"]:
            lines.append(
                f"| {e['model']} | {e['batch']} | {e['requests_per_second']:.0f} | {e['solutions_per_second']:.0f} | "
                f"{e['latency_ms'].get('p50', 0):.2f} | {e['vs_in_process']:.2f} |"
            )
    if report.get("overload"):
        o = report["overload"]
        lines += [
            "",
            f"Overload: Modes batch {o['batch']}, one client, then eight clients in a closed loop (the "
            f"capacity: what they get answered), then an open loop at {o['factor']:g}x that capacity "
            f"({o['overload_rate']:.0f} requests/s): "
            f"capacity {o['capacity_rows_per_second']:.0f} rows/s, goodput {o['goodput_rows_per_second']:.0f} rows/s "
            f"({o['goodput_vs_capacity']:.2f}; rows of OK answers arriving within a window that opens once the "
            f"queue is full; counted instead by the requests sent within it, however late answered, "
            f"{o.get('sent_in_window_answered_rows_per_second', 0):.0f} rows/s), "
            f"answered p99 {o['answered_p99_ms'] or 0:.0f} ms against an unloaded "
            f"p99 of {o['unloaded_p99_ms']:.1f} ms; status codes: {_codes(o)}.",
        ]
        unexpected = {c: m for c, m in o.get("overload_first_errors", {}).items() if c != "RESOURCE_EXHAUSTED"}
        if unexpected:
            lines.append("First message of each other status: " + "; ".join(f"{c}: {m}" for c, m in unexpected.items()))
    if report.get("overload_other_io_scheduling"):
        o, mine = report["overload_other_io_scheduling"], report["overload"].get("io_scheduling", "batch")
        lines += [
            "",
            f"The same overload on a fresh server with `--io-scheduling {o['io_scheduling']}` (the one above: "
            f"{mine}): capacity {o['capacity_rows_per_second']:.0f} rows/s, goodput {o['goodput_rows_per_second']:.0f} "
            f"rows/s ({o['goodput_vs_capacity']:.2f}), answered p99 {o['answered_p99_ms'] or 0:.0f} ms against a "
            f"bound of {o['p99_bound_ms']:.0f} ms; status codes: {_codes(o)}.",
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


def _codes(overload: dict[str, Any]) -> str:
    """An overload run's status codes and their counts, as the report prints them."""
    return ", ".join(f"{k} {v}" for k, v in sorted(overload["overload_codes"].items()))


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
            ys = [answered(e[who])[1].get("p99", np.nan) for e in pts]
            ax.scatter(xs, ys, marker=marker, color=color, label=f"{'mdn-serve' if who == 'ours' else 'no-op'} {rpc}")
    ax.set(xscale="log", yscale="log", xlabel="rows/s", ylabel="p99 latency (ms)", title="Latency against throughput")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
