"""Dynamic batching: concurrent requests for one model version share one ONNX Runtime call.

Triton's semantics: a batch is sent as soon as a compute slot is free, with whatever is
queued (up to max_batch_rows); with a max_queue_delay > 0 a lone request waits that long for
company. The queue is bounded and a request that does not fit is rejected at once. Requests
whose deadline passed or whose caller went away are dropped before compute.

Answers do not depend on batching: every row is computed independently, and each request
draws its samples from its own generator, so a seeded request gets the same samples alone
or merged with others.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from mdn_serve.errors import DeadlineExpired, QueueFull
from mdn_serve.metrics import Metrics
from mdn_serve.mixture import Modes, mixture_modes, sample_draws, samples_from_draws
from mdn_serve.runtime import Mixture, ModelRuntime

# After a queue delay gathered no company, partial batches leave at once for this long.
LONELY_BACKOFF_SECONDS = 0.25


@dataclass(frozen=True)
class SampleSpec:
    num_samples: int
    seed: int | None = None  # None draws fresh entropy
    temperature: float = 0.0  # 0 means 1.0

    @property
    def tau(self) -> float:
        return 1.0 if self.temperature == 0 else float(self.temperature)


@dataclass(frozen=True)
class Outputs:
    mixture: Mixture
    samples: NDArray[np.float32] | None  # (B, N, D) when sampling was asked for
    modes: Modes | None  # when modes were asked for


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_rows: int = 8192
    max_queue_delay: float = 0.0  # seconds a partial batch may wait for more requests
    max_queue_size: int = 1024  # requests waiting per model version
    max_concurrent_batches: int = 2  # batches of one model version computing at once
    # Batches this small run on the event loop itself: a thread hand-off costs more than the work.
    inline_rows: int = 64


@dataclass
class _Work:
    x: NDArray[np.float32]
    sampling: SampleSpec | None
    max_modes: int | None


@dataclass
class _Request(_Work):
    future: asyncio.Future[Outputs]
    enqueued: float
    deadline: float | None  # time.monotonic() after which the caller no longer waits


class DynamicBatcher:
    """The queue and batch loop for one model version."""

    def __init__(self, runtime: ModelRuntime, executor: Executor, metrics: Metrics, config: BatchingConfig) -> None:
        self.runtime = runtime
        self.executor = executor
        self.metrics = metrics
        self.config = config
        self._queue: collections.deque[_Request] = collections.deque()
        self._queued_rows = 0
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(config.max_concurrent_batches)
        self._loop_task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._lonely_until = 0.0  # until then, partial batches do not wait (see _batch_loop)
        labels = (runtime.name, runtime.version)
        self._depth = metrics.queue_depth.labels(*labels)
        self._queue_seconds = metrics.queue_seconds.labels(*labels)
        self._batch_rows = metrics.batch_rows.labels(*labels)
        self._executions = metrics.executions.labels(*labels)
        self._inferences = metrics.inferences.labels(*labels)
        self._compute_seconds = metrics.compute_seconds.labels(*labels)
        self._postprocess_seconds = metrics.postprocess_seconds.labels(*labels)

    async def submit(
        self,
        x: NDArray[np.float32],
        sampling: SampleSpec | None = None,
        max_modes: int | None = None,
        deadline: float | None = None,
    ) -> Outputs:
        """Queue one request and wait for its share of a batch."""
        if len(self._queue) >= self.config.max_queue_size:
            self._reject("queue_full")
            raise QueueFull(
                f"model {self.runtime.name!r} version {self.runtime.version} has {len(self._queue)} requests "
                "queued, its limit; retry with backoff"
            )
        if (
            self.config.max_queue_delay == 0
            and not self._queue
            and not self._slots.locked()
            and self._is_small_request(x, sampling, max_modes)
        ):
            # Nothing is waiting to be batched with: answer at once, with no queue hop.
            self._queue_seconds.observe(0.0)
            return self._compute([_Work(x, sampling, max_modes)])[0]
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._batch_loop())
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(x, sampling, max_modes, future, time.monotonic(), deadline))
        self._queued_rows += x.shape[0]
        self._depth.set(len(self._queue))
        self._arrived.set()
        try:
            return await future
        except asyncio.CancelledError:
            future.cancel()  # the batch loop skips it if it has not started computing
            raise

    def _reject(self, reason: str) -> None:
        self.metrics.rejections.labels(self.runtime.name, self.runtime.version, reason).inc()

    async def retire(self) -> None:
        """Finish everything queued and computing, then stop (the version was replaced or removed)."""
        while self._queue or self._running or self._slots.locked():
            await asyncio.sleep(0.01)
        await self.close()

    async def close(self) -> None:
        tasks = [t for t in (self._loop_task, *self._running) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        while self._queue:
            request = self._queue.popleft()
            if not request.future.done():
                request.future.cancel()

    async def _batch_loop(self) -> None:
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            await self._slots.acquire()
            await asyncio.sleep(0)  # let requests already delivered to the loop join this batch
            if (
                self.config.max_queue_delay > 0
                and self._queued_rows < self.config.max_batch_rows
                and time.monotonic() >= self._lonely_until
            ) and not await self._wait_for_company():
                # Nobody came: this traffic has no concurrency to batch (one client waiting on
                # each answer, say), so stop making requests wait, and look again later.
                self._lonely_until = time.monotonic() + LONELY_BACKOFF_SECONDS
            batch = self._take_batch()
            if not batch:
                self._slots.release()
                continue
            if self._is_small(batch):
                self._finish(batch)
                continue
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _wait_for_company(self) -> bool:
        """Let the oldest request wait up to max_queue_delay for the batch to fill.

        Returns whether any request joined it meanwhile.
        """
        oldest = self._queue[0].enqueued if self._queue else time.monotonic()
        before = len(self._queue)
        while self._queued_rows < self.config.max_batch_rows:
            remaining = oldest + self.config.max_queue_delay - time.monotonic()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
        return len(self._queue) > before

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
            self._queue_seconds.observe(now - request.enqueued)
            batch.append(request)
            rows += n
        self._depth.set(len(self._queue))
        return batch

    def _is_small_request(self, x: NDArray[np.float32], sampling: SampleSpec | None, max_modes: int | None) -> bool:
        return x.shape[0] <= self.config.inline_rows and sampling is None and max_modes is None

    def _is_small(self, batch: list[_Request]) -> bool:
        """Plain mixture parameters for a few rows: microseconds of ONNX Runtime, no mixture math."""
        rows = sum(r.x.shape[0] for r in batch)
        return rows <= self.config.inline_rows and all(r.sampling is None and r.max_modes is None for r in batch)

    def _finish(self, batch: list[_Request]) -> None:
        """Compute a small batch right here on the event loop."""
        try:
            self._deliver(batch, self._compute(batch), None)
        except Exception as exc:
            self._deliver(batch, None, exc)
        finally:
            self._slots.release()

    async def _execute(self, batch: list[_Request]) -> None:
        try:
            results = await asyncio.get_running_loop().run_in_executor(self.executor, self._compute, batch)
        except Exception as exc:
            self._deliver(batch, None, exc)
        else:
            self._deliver(batch, results, None)
        finally:
            self._slots.release()

    @staticmethod
    def _deliver(batch: list[_Request], results: list[Outputs] | None, error: Exception | None) -> None:
        for i, request in enumerate(batch):
            if request.future.done():
                continue
            if results is not None:
                request.future.set_result(results[i])
            else:
                assert error is not None
                request.future.set_exception(error)

    def _compute(self, batch: Sequence[_Work]) -> list[Outputs]:
        """One ONNX Runtime call for the whole batch, then samples and modes, split per request."""
        x = batch[0].x if len(batch) == 1 else np.concatenate([r.x for r in batch])
        start = time.perf_counter()
        mix = self.runtime.run(x)
        self._compute_seconds.observe(time.perf_counter() - start)
        self._executions.inc()
        self._inferences.inc(len(batch))
        self._batch_rows.observe(x.shape[0])

        bounds = np.cumsum([0] + [r.x.shape[0] for r in batch])
        done = time.perf_counter()
        samples = self._samples(batch, bounds, mix)
        modes = self._modes(batch, bounds, mix)
        if samples or modes:
            self._postprocess_seconds.observe(time.perf_counter() - done)
        return [
            Outputs(
                Mixture(mix.weights[a:b], mix.means[a:b], mix.scales[a:b]),
                samples.get(i),
                modes.get(i),
            )
            for i, (a, b) in enumerate(itertools.pairwise(bounds))
        ]

    @staticmethod
    def _samples(batch: Sequence[_Work], bounds: NDArray[np.intp], mix: Mixture) -> dict[int, NDArray[np.float32]]:
        """Sample every request that asked, vectorised over requests that share (N, temperature)."""
        groups: dict[tuple[int, float], list[int]] = collections.defaultdict(list)
        for i, r in enumerate(batch):
            if r.sampling is not None:
                groups[(r.sampling.num_samples, r.sampling.tau)].append(i)
        out: dict[int, NDArray[np.float32]] = {}
        dim = mix.means.shape[-1]
        for (num, tau), members in groups.items():
            rows = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in members])
            draws = []
            for i in members:
                spec = batch[i].sampling
                assert spec is not None
                draws.append(sample_draws(np.random.default_rng(spec.seed), bounds[i + 1] - bounds[i], num, dim))
            uniforms = np.concatenate([u for u, _ in draws])
            normals = np.concatenate([z for _, z in draws])
            drawn = samples_from_draws(mix.weights[rows], mix.means[rows], mix.scales[rows], uniforms, normals, tau)
            offset = 0
            for i in members:
                n = bounds[i + 1] - bounds[i]
                out[i] = drawn[offset : offset + n]
                offset += n
        return out

    @staticmethod
    def _modes(batch: Sequence[_Work], bounds: NDArray[np.intp], mix: Mixture) -> dict[int, Modes]:
        """One mode search over the rows of every request that asked, then split."""
        members = [i for i, r in enumerate(batch) if r.max_modes is not None]
        if not members:
            return {}
        rows = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in members])
        found = mixture_modes(mix.weights[rows], mix.means[rows], mix.scales[rows])
        out: dict[int, Modes] = {}
        offset = 0
        for i in members:
            n = bounds[i + 1] - bounds[i]
            out[i] = found.take(offset, offset + n, batch[i].max_modes or 0)
            offset += n
        return out
