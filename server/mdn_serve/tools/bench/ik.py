"""The benchmark's IK points: Solve on a robot arm model against the same work done in-process.

The in-process ceiling runs the network and `mdn_core.ik.solve` on the same kind of targets
(random reachable poses) in this process; the served side is `mdn-loadtest --rpc solve` with one
client. Served solutions per second are the served targets per second times the solutions per
target the in-process runs found (the same code and the same distribution of targets).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
from mdn_core.chain import target_features
from mdn_core.ik import solve
from mdn_core.model import load_model

from mdn_serve.tools.loadtest import LoadConfig, LoadResult, fetch_metadata, run_load
from mdn_serve.tools.payloads import ik_targets

IK_MODEL = "panda"
IK_BATCHES = (1, 256)


def in_process(path: Path, metadata: dict[str, Any], batch: int, seconds: float) -> tuple[float, float]:
    """(targets per second, solutions per target) of the network plus solve, one thread."""
    model = load_model(path, intra_op_threads=1)
    chain = model.metadata.chain
    assert chain is not None
    rng = np.random.default_rng(0)
    batches = [ik_targets(metadata, batch, rng).astype(np.float64) for _ in range(8)]
    w, m, s = model.run(target_features(chain.target, batches[0]))
    solve(chain, batches[0], w, m, s, seed=0)  # warm-up: first-call allocations and ONNX Runtime's own
    targets_done = solutions = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or targets_done == 0:
        targets = batches[targets_done // batch % len(batches)]
        w, m, s = model.run(target_features(chain.target, targets))
        found = solve(chain, targets, w, m, s, seed=0)
        targets_done += batch
        solutions += int(found.num_solutions.sum())
    return targets_done / (time.perf_counter() - start), solutions / targets_done


def closed_loop_rate(result: LoadResult, batch: int) -> float:
    """Targets per second of one client in a closed loop: one batch per mean latency, when every
    request was answered (else the answered rows over the window).

    Each request is sent as the one before is answered, so the rate is what one request takes. The
    count of requests over the window would round it off where a request takes a good part of the
    window: four 0.45 s requests in a 2 s window read as 512 targets per second of 256, not 569. (The
    client's own time between requests, a fraction of a millisecond, is left out.)
    """
    mean_seconds = result.latency_ms.get("mean", 0.0) / 1000.0
    if result.errors or not result.requests or mean_seconds <= 0.0:
        return result.rows_per_second
    return batch / mean_seconds


def measure_ik(target: str, models: Path, seconds: float) -> list[dict[str, Any]]:
    """One entry per batch size; empty when the repository has no IK_MODEL."""
    folder = models / IK_MODEL
    if not folder.is_dir():
        return []
    path = max(folder.iterdir(), key=lambda p: int(p.name)) / "model.onnx"
    info = asyncio.run(fetch_metadata(LoadConfig(target=target, model=IK_MODEL)))
    out = []
    for batch in IK_BATCHES:
        ceiling, per_target = in_process(path, info[0], batch, seconds)
        config = LoadConfig(target=target, model=IK_MODEL, rpc="solve", batch=batch, concurrency=1,
                            duration=seconds, warmup=min(0.5, seconds / 2), timeout=60.0)  # fmt: skip
        served = asyncio.run(run_load(config, model_info=info))
        targets_per_second = closed_loop_rate(served, batch)
        out.append({
            "model": IK_MODEL, "batch": batch, "requests_per_second": targets_per_second / batch,
            "latency_ms": served.latency_ms, "codes": served.codes,
            "solutions_per_second": targets_per_second * per_target, "solutions_per_target": per_target,
            "in_process_targets_per_second": ceiling, "vs_in_process": targets_per_second / ceiling,
        })  # fmt: skip
    return out
