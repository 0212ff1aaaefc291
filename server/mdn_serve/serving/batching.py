"""Dynamic batching: concurrent requests for one model version share one ONNX Runtime call.

The batcher only queues requests and merges their ONNX Runtime calls; what each request asked
for beyond the mixture is computed by mdn_serve.serving.pipeline on the batch's result.

Triton's semantics: a batch is sent as soon as a compute slot is free, with whatever is
queued (up to max_batch_rows); with a max_queue_delay > 0 a lone request waits that long for
company. With the default delay of 0 nobody waits for requests still to come, but requests
that already reached the server and are still on their way through the event loop are
waiting too: the batch leaves when the loop has handled them (see mdn_serve.serving.eventloop).

The queue (mdn_serve.serving.queue) is bounded in count and in time: what could not be done
within its budget is refused at once, and what waited too long all the same is dropped before
compute, with what was cancelled or passed its deadline. Requests with NaN or infinite inputs
fail with INVALID_ARGUMENT, found with one check per batch.

Answers do not depend on batching (see mdn_serve.serving.pipeline).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import Sequence
from concurrent.futures import Executor

import numpy as np
from mdn_core.model import Mixture
from numpy.typing import NDArray

from mdn_serve.errors import InvalidInput, QueueFull, Unavailable
from mdn_serve.metrics import Metrics, fast_inc, fast_observe
from mdn_serve.serving.costs import WorkCosts
from mdn_serve.serving.eventloop import call_when_idle
from mdn_serve.serving.pipeline import MIXTURE_ONLY, Ask, Outputs, postprocess, split_plain
from mdn_serve.serving.queue import BatchingConfig, QueuedRequest, RequestQueue
from mdn_serve.serving.repository import ModelRuntime
from mdn_serve.serving.statistics import VersionStatistics
from mdn_serve.serving.trace import RequestTrace, stamp_computed, stamp_taken

_NO_ROWS = np.zeros((0, 0), np.float32)
_Results = Sequence[Outputs | BaseException]  # a computed batch: each request's outputs or error

# After a queue delay gathered no company, partial batches leave at once for this long.
LONELY_BACKOFF_SECONDS = 0.25


class DynamicBatcher:
    """The batching decisions for one model version.

    Everything runs on the event loop, driven by callbacks: a request arriving, the queue
    delay running out, the loop going idle, a compute slot coming free.
    """

    def __init__(self, runtime: ModelRuntime, executor: Executor, metrics: Metrics, config: BatchingConfig) -> None:
        self.runtime = runtime
        self.executor = executor
        self.metrics = metrics
        self.config = config
        self.stats = VersionStatistics()
        self._queue = RequestQueue(runtime, metrics, config, self.stats)
        self.costs = self._queue.costs
        # Batches on the compute threads: their requests, when they started, their estimated seconds.
        self._computing: dict[asyncio.Future[_Results], tuple[list[QueuedRequest], float, float]] = {}
        self._flush_scheduled = False
        self.tracing = False  # stamp traced requests (the dataplane sets it when tracing is on)
        self._timer: asyncio.TimerHandle | None = None
        self._queued_when_armed = 0  # queue length when the delay timer was set
        self._lonely_until = 0.0  # until then, partial batches do not wait (see _on_delay_over)
        labels = (runtime.name, runtime.version)
        self._executions = fast_inc(metrics.executions.labels(*labels))
        self._inferences = fast_inc(metrics.inferences.labels(*labels))
        self._batch_rows = fast_observe(metrics.batch_rows.labels(*labels))
        self._compute_seconds = fast_observe(metrics.compute_seconds.labels(*labels))
        self._postprocess_seconds = metrics.postprocess_seconds.labels(*labels)

    async def submit(
        self,
        x: NDArray[np.float32],
        ask: Ask = MIXTURE_ONLY,
        deadline: float | None = None,
        trace: RequestTrace | None = None,
    ) -> Outputs:
        """Queue one request and wait for its share of a batch (stamping `trace` on the way, if given)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outputs] = loop.create_future()
        work = self.costs.work(x.shape[0], ask)
        request = QueuedRequest(x, ask, future, time.monotonic(), deadline, work, self.costs.seconds(work), trace=trace)
        if trace is not None:
            trace.enqueued = time.perf_counter_ns()
        try:
            self._queue.admit(request, self.seconds_ahead(request.enqueued))
            self._schedule(loop)
            outputs = await future
        except asyncio.CancelledError:
            future.cancel()  # a batch not yet taken skips it
            raise
        except Exception:
            self.stats.failed(time.monotonic() - request.enqueued)
            raise
        self._queue.learn(request)  # measured here: the event loop's own delay in handing it back counts
        self.stats.succeeded(time.monotonic() - request.enqueued, x.shape[0])
        return outputs

    def shed(self) -> None:
        """Refuse at once (QueueFull) when the work ahead alone passes the queue-time budget: then no
        request, whatever its size or deadline, could be admitted."""
        try:
            self._queue.shed(self.seconds_ahead(time.monotonic()))
        except QueueFull:
            self.stats.failed(0.0)  # a refusal is a failed request in the statistics, as at admission
            raise

    def seconds_ahead(self, now: float) -> float:
        """Estimated seconds until a request queued now starts: the work queued and what is left of
        the batches computing, shared by the compute slots."""
        left = sum(max(0.0, seconds - (now - started)) for _, started, seconds in self._computing.values())
        return (self._queue.seconds + left) / self.config.max_concurrent_batches

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        """Decide when the queue is looked at next.

        A full batch, or a queue delay of 0, sends what is queued once the event loop has
        handled every request that already reached the server (see mdn_serve.eventloop). With
        a delay, the oldest request waits up to that long for company.
        """
        queue = self._queue
        if not queue or self._flush_scheduled:
            return  # nothing to do, or already planned
        if len(self._computing) >= self.config.max_concurrent_batches:
            queue.depth.set(len(queue))  # they wait: a finishing batch calls again
            return
        delay = self.config.max_queue_delay
        if delay > 0 and queue.rows < self.config.max_batch_rows and time.monotonic() >= self._lonely_until:
            wait = queue.requests[0].enqueued + delay - time.monotonic()
            if wait > 0:
                if self._timer is None:
                    self._queued_when_armed = len(queue)
                    self._timer = loop.call_later(wait, self._on_delay_over, loop)
                queue.depth.set(len(queue))
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
            taken = self._queue.take(self.config.max_batch_rows)
            start = time.perf_counter()
            batch, x = _finite(taken)
            if not batch:
                continue
            stacked = time.perf_counter() - start
            if self.tracing:
                stamp_taken([r.trace for r in batch if r.trace is not None], start, stacked)
            plain = all(r.ask is MIXTURE_ONLY or r.ask.plain for r in batch)
            if plain and x.shape[0] <= self.config.inline_rows:
                # Mixture parameters for a few rows: microseconds of ONNX Runtime and no mixture
                # math, so a thread hand-off would cost more than the work.
                try:
                    _deliver(batch, self._compute(batch, x, plain, stacked), None)
                except Exception as exc:
                    _deliver(batch, None, exc)
                continue
            running = loop.run_in_executor(self.executor, self._compute, batch, x, plain, stacked)
            self._computing[running] = (batch, time.monotonic(), sum(r.seconds for r in batch))
            running.add_done_callback(functools.partial(self._computed, batch))

    def _computed(self, batch: list[QueuedRequest], running: asyncio.Future[_Results]) -> None:
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
        requests = [r for batch, _, _ in self._computing.values() for r in batch] + self._queue.clear()
        answered = 0
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
        for request in self._queue.clear():
            if not request.future.done():
                request.future.cancel()
        await asyncio.sleep(0)  # let the cancelled batches' callbacks answer their callers

    def _compute(self, batch: list[QueuedRequest], x: NDArray[np.float32], plain: bool, stacked: float) -> _Results:
        """One ONNX Runtime call for x (the batch's inputs stacked, which took `stacked` seconds),
        then the pipeline's post-processing.

        plain: no request asks for more than the mixture parameters.
        """
        start = time.perf_counter()
        mix = self.runtime.model.run(x)
        seconds = time.perf_counter() - start
        self._compute_seconds(seconds)
        self.costs.record("mixture", seconds, x.shape[0])
        self._executions(1)
        self._inferences(len(batch))
        self._batch_rows(x.shape[0])
        done = time.perf_counter()
        out = batch_outputs(self.runtime, batch, x, mix, plain, self.costs)
        after = time.perf_counter() - done
        if not plain:
            self._postprocess_seconds.observe(after)
        self.stats.batch(len(batch), stacked, seconds, after)
        if self.tracing:
            traces = [r.trace for r in batch if r.trace is not None]
            stamp_computed(traces, start, seconds, after, (x.shape[0], len(batch)), not plain)
        return out


def batch_outputs(
    runtime: ModelRuntime, batch: list[QueuedRequest], x: NDArray[np.float32], mix: Mixture, plain: bool,
    costs: WorkCosts,
) -> _Results:  # fmt: skip
    """Each request's outputs from the batch's mixture."""
    if plain and len(batch) == 1:
        return [Outputs(mix, None, None, None)]
    bounds = [0, *itertools.accumulate(r.x.shape[0] for r in batch)]
    if plain:
        return split_plain(mix, bounds)
    wanted = [functools.partial(_waiting, r) for r in batch]
    return postprocess([r.ask for r in batch], bounds, x, mix, runtime.metadata.chain, wanted, costs.record)


def _deliver(
    batch: list[QueuedRequest], results: Sequence[Outputs | BaseException] | None, error: BaseException | None
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


def _waiting(request: QueuedRequest) -> bool:
    """Whether a request's caller still waits: not cancelled, deadline not passed (from a compute thread:
    reading a future's state is a plain attribute read)."""
    if request.future.done():
        return False
    return request.deadline is None or time.monotonic() < request.deadline


def _finite(batch: list[QueuedRequest]) -> tuple[list[QueuedRequest], NDArray[np.float32]]:
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
