"""The batching queue of one model version: bounded in count and in time.

Each request carries the compute time estimated for it (mdn_serve.serving.costs). `admit`
refuses at once what is over max_queue_size, and what could not be done within its budget
(max_queue_seconds, or its deadline if nearer, less HEADROOM of it) given the work ahead of it;
`take` pops a batch, dropping what was cancelled, what passed its deadline and what can no longer
be done in time.
The estimates are corrected by the queue's pace: the times from queueing to answer measured over
those estimated, since compute threads share the CPUs with each other and the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from mdn_serve.errors import DeadlineExpired, QueueFull
from mdn_serve.metrics import Metrics, fast_observe
from mdn_serve.serving.costs import Work, WorkCosts
from mdn_serve.serving.pipeline import Ask, Outputs
from mdn_serve.serving.repository import ModelRuntime
from mdn_serve.serving.statistics import VersionStatistics
from mdn_serve.serving.trace import RequestTrace

# The pace (times to answer measured / estimated) learns from requests estimated to take at
# least PACE_MIN_SECONDS seconds, PACE_SMOOTHING of the way per request, within PACE_RANGE.
PACE_MIN_SECONDS = 0.01
PACE_SMOOTHING = 0.05
PACE_RANGE = (0.25, 8.0)
SHED_WINDOW = 32  # requests whose batch estimates the early refusal (shed) goes by
# The share of a request's budget kept for the time it spends outside the queue, which the estimates
# do not see (waiting for the busy event loop to reach its handler, and its answer's trip back), and
# for their error: under overload every admitted request is near the edge, so the answered p99 is the
# budget less HEADROOM plus the tail of that error. make bench's overload point run alone (Modes at 4x
# capacity, server on one CPU, I/O threads under SCHED_BATCH), twelve times each: with 0.05 the p99 went past
# its bound (twice the unloaded p99 plus the 1 s budget) in four, by up to 169 ms; with 0.1 in none
# (20-91 ms under), goodput unchanged (median 0.85 of capacity both).
HEADROOM = 0.1


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_rows: int = 8192
    max_queue_delay: float = 0.0  # seconds a partial batch may wait for more requests
    max_queue_size: int = 1024  # requests waiting per model version
    max_queue_seconds: float = 1.0  # longest a request may wait to start; 0: only its deadline bounds it
    max_concurrent_batches: int = 2  # batches of one model version computing at once
    # Batches this small run on the event loop itself: a thread hand-off costs more than the work.
    inline_rows: int = 64


@dataclass(slots=True)
class QueuedRequest:
    x: NDArray[np.float32]
    ask: Ask
    future: asyncio.Future[Outputs]
    enqueued: float
    deadline: float | None  # time.monotonic() after which the caller no longer waits
    work: Work
    seconds: float  # the compute time estimated for it when it was queued
    estimate: float = 0.0  # seconds from queueing to answer estimated then (before the pace)
    start_by: float = math.inf  # time.monotonic() by which it must start to be done within its budget
    trace: RequestTrace | None = None  # stamps for tracing, when the request is traced


class RequestQueue:
    """The requests waiting for one model version, bounded in count and in time."""

    def __init__(
        self, runtime: ModelRuntime, metrics: Metrics, config: BatchingConfig, stats: VersionStatistics | None = None
    ) -> None:
        self.runtime = runtime
        self.stats = stats or VersionStatistics()
        self.metrics = metrics
        self.config = config
        self.costs = WorkCosts(runtime)
        self.requests: collections.deque[QueuedRequest] = collections.deque()
        self.rows = 0
        self.seconds = 0.0  # estimated compute seconds of the requests queued
        # Time from queueing to answer measured, over the time estimated (the work ahead, then its
        # batch): compute threads share the CPUs with the event loop and each other, so a second of
        # estimated work rarely takes just a second.
        self.pace = 1.0
        self._recent_batches: collections.deque[float] = collections.deque(maxlen=SHED_WINDOW)
        labels = (runtime.name, runtime.version)
        self.depth = metrics.queue_depth.labels(*labels)
        self._queue_seconds = fast_observe(metrics.queue_seconds.labels(*labels))

    def __len__(self) -> int:
        return len(self.requests)

    def reject(self, reason: str) -> None:
        self.metrics.rejections.labels(self.runtime.name, self.runtime.version, reason).inc()

    def admit(self, request: QueuedRequest, ahead: float) -> None:
        """Queue a request, or refuse it (QueueFull) when the queue is full, or when the `ahead`
        seconds of work already queued and computing, and then its own batch, times the pace
        measured, would not be done within its budget: max_queue_seconds, or its deadline if nearer."""
        name, version = self.runtime.name, self.runtime.version
        if len(self.requests) >= self.config.max_queue_size:
            self.reject("queue_full")
            raise QueueFull(
                f"model {name!r} version {version} has {len(self.requests)} requests queued, its limit; "
                "retry with backoff"
            )
        limit = self.config.max_queue_seconds or math.inf
        budget = limit if request.deadline is None else min(limit, request.deadline - request.enqueued)
        usable = budget * (1.0 - HEADROOM)
        # The batch it will run in: itself and what is queued, up to max_batch_rows rows.
        rows = request.x.shape[0]
        batch = min(self.seconds + request.seconds, request.seconds * max(1.0, self.config.max_batch_rows / rows))
        wait, batch = ahead * self.pace, batch * self.pace
        self._recent_batches.append(batch)
        if ahead > 0 and wait + batch > usable:
            self.reject("queue_time")
            why = "before its deadline" if budget < limit else f"within the queue-time budget of {limit:g} s"
            raise QueueFull(
                f"model {name!r} version {version} is about {wait:.2f} s behind, so this request could not "
                f"be done {why}; retry with backoff"
            )
        request.estimate = ahead + batch / self.pace
        # It must start in time to be done within its budget; one with nothing ahead of it (whose
        # batch alone may take longer) is served however long it takes, and waits its budget at most.
        request.start_by = request.enqueued + (usable - batch if ahead > 0 else usable)
        self.requests.append(request)
        self.rows += rows
        self.seconds += request.seconds

    def shed(self, ahead: float) -> None:
        """Refuse (QueueFull) when `ahead` seconds of work, times the pace, and then the smallest batch
        of the last SHED_WINDOW requests offered would pass max_queue_seconds: a request like those
        would be refused by admit anyway, after its inputs were decoded for nothing."""
        limit = self.config.max_queue_seconds
        if not limit or ahead <= 0:
            return
        wait = ahead * self.pace
        if wait + min(self._recent_batches, default=0.0) > limit * (1.0 - HEADROOM):
            self.reject("queue_time")
            raise QueueFull(
                f"model {self.runtime.name!r} version {self.runtime.version} is about {wait:.2f} s behind, so no "
                f"request like the last ones could be done within the queue-time budget of {limit:g} s; retry with "
                "backoff"
            )

    def take(self, max_rows: int) -> list[QueuedRequest]:
        """Pop requests up to max_rows (at least one), dropping the ones nobody waits for and the
        ones that waited past max_queue_seconds."""
        batch: list[QueuedRequest] = []
        rows = 0
        now = time.monotonic()
        limit = self.config.max_queue_seconds or math.inf
        while self.requests:
            request = self.requests[0]
            n = request.x.shape[0]
            if batch and rows + n > max_rows:
                break
            self.requests.popleft()
            self.rows -= n
            self.seconds -= request.seconds
            if request.future.done():  # cancelled by its caller while queued
                self.reject("cancelled")
                continue
            if request.deadline is not None and now >= request.deadline:
                self.reject("deadline")
                request.future.set_exception(DeadlineExpired("the deadline passed while the request was queued"))
                continue
            if now > request.start_by:
                self.reject("queue_time")
                request.future.set_exception(
                    QueueFull(
                        f"the request waited {now - request.enqueued:.2f} s in the queue and could no longer be done "
                        f"within its budget ({limit:g} s, or its deadline if nearer); retry with backoff"
                    )
                )
                continue
            self._queue_seconds(now - request.enqueued)
            self.stats.queued(now - request.enqueued)
            batch.append(request)
            rows += n
        if not self.requests:
            self.seconds = 0.0  # no drift from float sums
        self.depth.set(len(self.requests))
        return batch

    def learn(self, request: QueuedRequest) -> None:
        """A request's outputs are back with its caller: how long that took from queueing, against
        the estimate."""
        if request.estimate > PACE_MIN_SECONDS:
            ratio = (time.monotonic() - request.enqueued) / request.estimate
            self.pace += PACE_SMOOTHING * (min(max(ratio, PACE_RANGE[0]), PACE_RANGE[1]) - self.pace)

    def clear(self) -> list[QueuedRequest]:
        """Empty the queue; what it held."""
        out = list(self.requests)
        self.requests.clear()
        self.rows, self.seconds = 0, 0.0
        self.depth.set(0)
        return out
