"""Dynamic batching: concurrent requests for one model version share one ONNX Runtime call.

The batcher only queues requests and merges their ONNX Runtime calls; what each request asked
for beyond the mixture is computed by mdn_serve.serving.pipeline on the batch's result.

Triton's semantics: a batch is sent as soon as a compute slot is free, with whatever is
queued (up to max_batch_rows); with a max_queue_delay > 0 a lone request waits that long for
company. With the default delay of 0 nobody waits for requests still to come, but requests
that already reached the server and are still on their way through the event loop are
waiting too: the batch leaves when the loop has handled them (see mdn_serve.serving.eventloop).

The queue is bounded and a request that does not fit is rejected at once. Requests whose
deadline passed or whose caller went away are dropped before compute, and so are requests
with NaN or infinite inputs (INVALID_ARGUMENT), found with one check per batch.

Answers do not depend on batching (see mdn_serve.serving.pipeline).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from mdn_serve.errors import DeadlineExpired, InvalidInput, QueueFull, Unavailable
from mdn_serve.metrics import Metrics, fast_inc, fast_observe
from mdn_serve.serving.eventloop import call_when_idle
from mdn_serve.serving.pipeline import MIXTURE_ONLY, Ask, Outputs, postprocess, split_plain
from mdn_serve.serving.repository import ModelRuntime

_NO_ROWS = np.zeros((0, 0), np.float32)

# After a queue delay gathered no company, partial batches leave at once for this long.
LONELY_BACKOFF_SECONDS = 0.25


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_rows: int = 8192
    max_queue_delay: float = 0.0  # seconds a partial batch may wait for more requests
    max_queue_size: int = 1024  # requests waiting per model version
    max_concurrent_batches: int = 2  # batches of one model version computing at once
    # Batches this small run on the event loop itself: a thread hand-off costs more than the work.
    inline_rows: int = 64


@dataclass(slots=True)
class _Request:
    x: NDArray[np.float32]
    ask: Ask
    future: asyncio.Future[Outputs]
    enqueued: float
    deadline: float | None  # time.monotonic() after which the caller no longer waits


class DynamicBatcher:
    """The queue and the batching decisions for one model version.

    Everything runs on the event loop, driven by callbacks: a request arriving, the queue
    delay running out, the loop going idle, a compute slot coming free.
    """

    def __init__(self, runtime: ModelRuntime, executor: Executor, metrics: Metrics, config: BatchingConfig) -> None:
        self.runtime = runtime
        self.executor = executor
        self.metrics = metrics
        self.config = config
        self._queue: collections.deque[_Request] = collections.deque()
        self._queued_rows = 0
        # Batches on the compute threads, with their requests.
        self._computing: dict[asyncio.Future[Sequence[Outputs | BaseException]], list[_Request]] = {}
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._queued_when_armed = 0  # queue length when the delay timer was set
        self._lonely_until = 0.0  # until then, partial batches do not wait (see _on_delay_over)
        labels = (runtime.name, runtime.version)
        self._depth = metrics.queue_depth.labels(*labels)
        self._queue_seconds = fast_observe(metrics.queue_seconds.labels(*labels))
        self._batch_rows = fast_observe(metrics.batch_rows.labels(*labels))
        self._executions = fast_inc(metrics.executions.labels(*labels))
        self._inferences = fast_inc(metrics.inferences.labels(*labels))
        self._compute_seconds = fast_observe(metrics.compute_seconds.labels(*labels))
        self._postprocess_seconds = metrics.postprocess_seconds.labels(*labels)

    async def submit(
        self,
        x: NDArray[np.float32],
        ask: Ask = MIXTURE_ONLY,
        deadline: float | None = None,
    ) -> Outputs:
        """Queue one request and wait for its share of a batch."""
        if len(self._queue) >= self.config.max_queue_size:
            self._reject("queue_full")
            raise QueueFull(
                f"model {self.runtime.name!r} version {self.runtime.version} has {len(self._queue)} requests "
                "queued, its limit; retry with backoff"
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outputs] = loop.create_future()
        self._queue.append(_Request(x, ask, future, time.monotonic(), deadline))
        self._queued_rows += x.shape[0]
        self._schedule(loop)
        try:
            return await future
        except asyncio.CancelledError:
            future.cancel()  # a batch not yet taken skips it
            raise

    def _reject(self, reason: str) -> None:
        self.metrics.rejections.labels(self.runtime.name, self.runtime.version, reason).inc()

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        """Decide when the queue is looked at next.

        A full batch, or a queue delay of 0, sends what is queued once the event loop has
        handled every request that already reached the server (see mdn_serve.eventloop). With
        a delay, the oldest request waits up to that long for company.
        """
        if not self._queue or self._flush_scheduled:
            return  # nothing to do, or already planned
        if len(self._computing) >= self.config.max_concurrent_batches:
            self._depth.set(len(self._queue))  # they wait: a finishing batch calls again
            return
        delay = self.config.max_queue_delay
        if delay > 0 and self._queued_rows < self.config.max_batch_rows and time.monotonic() >= self._lonely_until:
            wait = self._queue[0].enqueued + delay - time.monotonic()
            if wait > 0:
                if self._timer is None:
                    self._queued_when_armed = len(self._queue)
                    self._timer = loop.call_later(wait, self._on_delay_over, loop)
                self._depth.set(len(self._queue))
                return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._flush_scheduled = True
        call_when_idle(loop, self._flush)

    def _on_delay_over(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if len(self._queue) <= self._queued_when_armed:
            # Nobody came: this traffic has no concurrency to batch (one client waiting on
            # each answer, say), so stop making requests wait, and look again later.
            self._lonely_until = time.monotonic() + LONELY_BACKOFF_SECONDS
        self._flush()

    def _flush(self) -> None:
        """Send batches while compute slots are free; small plain ones are computed right here."""
        self._flush_scheduled = False
        loop = asyncio.get_running_loop()
        while self._queue and len(self._computing) < self.config.max_concurrent_batches:
            batch, x = _finite(self._take_batch())
            if not batch:
                continue
            plain = all(r.ask is MIXTURE_ONLY or r.ask.plain for r in batch)
            if plain and x.shape[0] <= self.config.inline_rows:
                # Mixture parameters for a few rows: microseconds of ONNX Runtime and no mixture
                # math, so a thread hand-off would cost more than the work.
                try:
                    _deliver(batch, self._compute(batch, x, plain), None)
                except Exception as exc:
                    _deliver(batch, None, exc)
                continue
            running = loop.run_in_executor(self.executor, self._compute, batch, x, plain)
            self._computing[running] = batch
            running.add_done_callback(functools.partial(self._computed, batch))

    def _computed(self, batch: list[_Request], running: asyncio.Future[Sequence[Outputs | BaseException]]) -> None:
        self._computing.pop(running, None)
        if running.cancelled():
            _deliver(batch, None, Unavailable("the model version was unloaded while computing; retry"))
        elif (error := running.exception()) is not None:
            _deliver(batch, None, error)
        else:
            _deliver(batch, running.result(), None)
        self._schedule(asyncio.get_running_loop())

    async def retire(self) -> None:
        """Finish everything queued and computing, then stop (the version was replaced or removed)."""
        while self._queue or self._computing:
            await asyncio.sleep(0.01)
        await self.close()

    def abandon(self, error: Exception) -> int:
        """Answer every request queued or computing with `error` now (the server's grace period is
        over); a computing batch sees its requests answered and stops within one chunk. Returns
        how many requests were answered so."""
        answered = 0
        requests = [r for batch in self._computing.values() for r in batch] + list(self._queue)
        self._queue.clear()
        self._queued_rows = 0
        self._depth.set(0)
        for request in requests:
            if not request.future.done():
                request.future.set_exception(error)
                answered += 1
        return answered

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for running in list(self._computing):
            running.cancel()
        while self._queue:
            request = self._queue.popleft()
            if not request.future.done():
                request.future.cancel()
        self._queued_rows = 0
        await asyncio.sleep(0)  # let the cancelled batches' callbacks answer their callers

    def _take_batch(self) -> list[_Request]:
        """Pop requests up to max_batch_rows (at least one), dropping the ones nobody waits for."""
        batch: list[_Request] = []
        rows = 0
        now = time.monotonic()
        while self._queue:
            request = self._queue[0]
            n = request.x.shape[0]
            if batch and rows + n > self.config.max_batch_rows:
                break
            self._queue.popleft()
            self._queued_rows -= n
            if request.future.done():  # cancelled by its caller while queued
                self._reject("cancelled")
                continue
            if request.deadline is not None and now >= request.deadline:
                self._reject("deadline")
                request.future.set_exception(DeadlineExpired("the deadline passed while the request was queued"))
                continue
            self._queue_seconds(now - request.enqueued)
            batch.append(request)
            rows += n
        self._depth.set(len(self._queue))
        return batch

    def _compute(self, batch: list[_Request], x: NDArray[np.float32], plain: bool) -> Sequence[Outputs | BaseException]:
        """One ONNX Runtime call for x (the batch's inputs stacked), then the pipeline's post-processing.

        plain: no request asks for more than the mixture parameters.
        """
        start = time.perf_counter()
        mix = self.runtime.model.run(x)
        self._compute_seconds(time.perf_counter() - start)
        self._executions(1)
        self._inferences(len(batch))
        self._batch_rows(x.shape[0])
        if plain and len(batch) == 1:
            return [Outputs(mix, None, None, None)]
        bounds = [0, *itertools.accumulate(r.x.shape[0] for r in batch)]
        if plain:
            return split_plain(mix, bounds)
        done = time.perf_counter()
        wanted = [functools.partial(_waiting, r) for r in batch]
        out = postprocess([r.ask for r in batch], bounds, x, mix, self.runtime.metadata.chain, wanted)
        self._postprocess_seconds.observe(time.perf_counter() - done)
        return out


def _deliver(
    batch: list[_Request], results: Sequence[Outputs | BaseException] | None, error: BaseException | None
) -> None:
    for i, request in enumerate(batch):
        if request.future.done():
            continue
        if results is not None:
            result = results[i]
            if isinstance(result, BaseException):
                request.future.set_exception(result)
            else:
                request.future.set_result(result)
        else:
            assert error is not None
            request.future.set_exception(error)


def _waiting(request: _Request) -> bool:
    """Whether a request's caller still waits: not cancelled, deadline not passed (from a compute thread:
    reading a future's state is a plain attribute read)."""
    if request.future.done():
        return False
    return request.deadline is None or time.monotonic() < request.deadline


def _finite(batch: list[_Request]) -> tuple[list[_Request], NDArray[np.float32]]:
    """The batch's inputs stacked, after failing the requests with NaN or infinite values.

    One check for the whole batch; only a batch that fails it is looked at request by request.
    """
    if not batch:
        return batch, _NO_ROWS
    x = batch[0].x if len(batch) == 1 else np.concatenate([r.x for r in batch])
    if np.isfinite(x).all():
        return batch, x
    kept = []
    for request in batch:
        finite = np.isfinite(request.x)
        if finite.all():
            kept.append(request)
        else:
            row, col = np.argwhere(~finite)[0]
            request.future.set_exception(
                InvalidInput(f"inputs contain NaN or infinite values (first at row {row}, column {col})")
            )
    return _finite(kept)
