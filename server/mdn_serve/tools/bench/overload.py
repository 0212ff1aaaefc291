"""The overload point of `make bench`: open-loop Modes at four times what the server can do.

Three runs against the same server: one client (the unloaded latency), eight clients in a closed
loop (the capacity), then requests sent at four times that rate whatever happens (open loop).
Goodput is the rows of OK answers arriving per second under overload, in a window that opens once
the server's queue is full (a warm-up of the queue-time budget and half a second more; the window
lasts the benchmark's seconds per point, at least MIN_OVERLOAD_SECONDS), over the capacity; the
answered p99 (of the requests sent within the window) is compared with twice the unloaded p99 plus
the queue-time budget (--max-queue-seconds, 1 s by default), the bound a time-bounded queue should
keep.

Counting instead the requests sent within the window that were answered OK overstates it: the last
of them are answered after the window, once the load stops and the server no longer spends its CPU
on refusals (on one core, a Modes batch of 16,384 rows took 150 ms then against 230 ms under load).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from mdn_serve.tools.bench.points import CLIENT_BACKOFF_MS
from mdn_serve.tools.loadtest import LoadConfig, run_load

OVERLOAD_BATCH = 512
OVERLOAD_FACTOR = 4.0
CAPACITY_CLIENTS = 8
MIN_OVERLOAD_SECONDS = 1.0  # the overload window, at least
QUEUE_BUDGET_SECONDS = 1.0  # mdn-serve's default --max-queue-seconds, which the benchmark's servers run with


def measure_overload(target: str, model: str, seconds: float, info: tuple[dict[str, Any], int]) -> dict[str, Any]:
    # The closed loops back off after a refusal as make bench's other clients do; the open loop never waits.
    base = LoadConfig(target=target, model=model, rpc="modes", batch=OVERLOAD_BATCH, duration=seconds, warmup=0.5,
                      timeout=10.0, backoff_ms=CLIENT_BACKOFF_MS)  # fmt: skip
    unloaded = asyncio.run(run_load(replace(base, concurrency=1), model_info=info))
    capacity = asyncio.run(run_load(replace(base, concurrency=CAPACITY_CLIENTS), model_info=info))
    # What the server answered, not what it was sent: a refusal in the capacity run is no capacity.
    rate = OVERLOAD_FACTOR * capacity.rows_per_second / OVERLOAD_BATCH
    # A window shorter than a few batches (a batch of 16,384 rows takes a few hundred ms under the load)
    # could see no answer arrive at all.
    window = max(seconds, MIN_OVERLOAD_SECONDS)
    overload = asyncio.run(
        run_load(replace(base, rate=rate, warmup=QUEUE_BUDGET_SECONDS + 0.5, duration=window), model_info=info)
    )
    budget_ms = 1000.0 * QUEUE_BUDGET_SECONDS
    return {
        "rpc": "modes",
        "batch": OVERLOAD_BATCH,
        "factor": OVERLOAD_FACTOR,
        "capacity_requests_per_second": capacity.rows_per_second / OVERLOAD_BATCH,
        "capacity_rows_per_second": capacity.rows_per_second,
        "unloaded_p99_ms": unloaded.latency_ms.get("p99", 0.0),
        "overload_rate": rate,
        "overload_codes": overload.codes,
        "overload_first_errors": overload.first_errors,  # status code -> the message of its first request
        "goodput_rows_per_second": overload.answered_rows_per_second,
        "goodput_vs_capacity": (
            overload.answered_rows_per_second / capacity.rows_per_second if capacity.rows_per_second else 0.0
        ),
        "sent_in_window_answered_rows_per_second": overload.rows_per_second,
        "answered_p99_ms": overload.answered_latency_ms.get("p99"),
        "p99_bound_ms": 2 * unloaded.latency_ms.get("p99", 0.0) + budget_ms,
    }
