"""The protocol-free core: validate inputs, then hand them to the model's dynamic batcher.

Protocol adapters decode their messages into numpy arrays, call `infer` and encode what
comes back; nothing here sees a protobuf object.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from mdn_serve.batching import BatchingConfig, DynamicBatcher, Outputs, SampleSpec
from mdn_serve.errors import InvalidInput, LimitExceeded, ModelNotFound, Unavailable
from mdn_serve.ik import DEFAULT_TOLERANCE, Solutions, solve
from mdn_serve.kinematics import PlanarArm
from mdn_serve.metrics import Metrics
from mdn_serve.repository import ModelRepository
from mdn_serve.runtime import ModelRuntime

__all__ = ["Dataplane", "Limits", "Outputs", "SampleSpec"]

T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    max_rows: int = 8192
    max_samples: int = 1_000_000


class Dataplane:
    def __init__(
        self,
        metrics: Metrics,
        limits: Limits,
        compute_threads: int = 2,
        batching: BatchingConfig | None = None,
    ) -> None:
        self.metrics = metrics
        self.limits = limits
        self.batching = batching or BatchingConfig(max_concurrent_batches=compute_threads)
        self.repository: ModelRepository | None = None
        self.accepting = True  # False once shutdown has begun: new calls get UNAVAILABLE
        self._retiring: set[asyncio.Future[None]] = set()
        self._batchers: dict[tuple[str, str], DynamicBatcher] = {}
        self._executor = ThreadPoolExecutor(max_workers=compute_threads, thread_name_prefix="mdn-compute")

    def set_repository(self, repository: ModelRepository) -> None:
        """Serve this repository from now on (at start, and atomically on every reload).

        Batchers of unchanged versions carry on; those of replaced or removed versions finish
        what they hold, then stop.
        """
        old = self._batchers
        batchers: dict[tuple[str, str], DynamicBatcher] = {}
        for entry in repository.models.values():
            for version, runtime in entry.versions.items():
                key = (entry.name, version)
                kept = old.get(key)
                if kept is not None and kept.runtime is runtime:
                    batchers[key] = kept
                else:
                    batchers[key] = DynamicBatcher(runtime, self._executor, self.metrics, self.batching)
                    self.metrics.model_info.labels(entry.name, version, runtime.provider).set(1)
        self._batchers, self.repository = batchers, repository
        for key, batcher in old.items():
            if batchers.get(key) is not batcher:
                if key not in batchers:
                    self.metrics.model_info.remove(*key, batcher.runtime.provider)
                self._retiring.add(asyncio.ensure_future(batcher.retire()))
                self._retiring = {t for t in self._retiring if not t.done()}

    @property
    def ready(self) -> bool:
        return self.repository is not None

    async def close(self) -> None:
        for batcher in self._batchers.values():
            await batcher.close()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def models(self) -> ModelRepository:
        if self.repository is None:
            raise Unavailable("models are still loading; retry shortly")
        return self.repository

    def resolve(self, name: str, version: str) -> ModelRuntime:
        return self.models().get(name, version)

    def check_inputs(self, runtime: ModelRuntime, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """Raise InvalidInput / LimitExceeded for a shape the model cannot take."""
        if x.ndim != 2:
            raise InvalidInput(f"inputs must have rank 2 [batch, {runtime.input_dim}], got shape {list(x.shape)}")
        if x.shape[1] != runtime.input_dim:
            names = ", ".join(runtime.metadata.input_names)
            raise InvalidInput(
                f"model {runtime.name!r} takes {runtime.input_dim} input column(s) ({names}), got shape {list(x.shape)}"
            )
        if x.shape[0] == 0:
            raise InvalidInput("inputs have no rows (batch size 0); send at least one row")
        if x.shape[0] > self.limits.max_rows:
            raise LimitExceeded(
                f"batch of {x.shape[0]} rows is over this server's limit of {self.limits.max_rows}; split the request"
            )
        # NaN and infinite values are looked for once per batch, by the batcher.
        return np.ascontiguousarray(x, dtype=np.float32)

    def _check_sampling(self, spec: SampleSpec, rows: int) -> None:
        if spec.num_samples < 1:
            raise InvalidInput(f"num_samples must be >= 1, got {spec.num_samples}")
        t = spec.temperature
        if math.isnan(t) or t < 0 or math.isinf(t):
            raise InvalidInput(f"temperature must be a finite number >= 0 (0 means 1.0), got {t}")
        total = rows * spec.num_samples
        if total > self.limits.max_samples:
            raise LimitExceeded(
                f"{rows} rows x {spec.num_samples} samples = {total} is over this server's limit of "
                f"{self.limits.max_samples} samples per request; ask for fewer"
            )

    async def compute(self, fn: Callable[[], T]) -> T:
        """Run CPU-heavy work (beyond one batch) on the compute threads."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def solve_ik(
        self,
        name: str,
        version: str,
        targets: NDArray[np.float32],
        max_solutions: int,
        refine: bool,
        tolerance: float,
        num_samples: int,
        seed: int | None,
        method: str = "Solve",
        deadline: float | None = None,
    ) -> tuple[ModelRuntime, Solutions]:
        """Ranked, verified IK solutions for an arm model (see mdn_serve.ik)."""
        runtime = self.resolve(name, version)
        kinematics = runtime.metadata.kinematics
        if kinematics is None:
            raise InvalidInput(f"model {runtime.name!r} has no kinematics in its metadata; Solve needs an arm model")
        arm = PlanarArm.from_metadata(kinematics)
        if max_solutions < 0:
            raise InvalidInput(f"max_solutions must be >= 0 (0 means all), got {max_solutions}")
        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise InvalidInput(
                f"tolerance must be a finite number >= 0 (0 means {DEFAULT_TOLERANCE:g}), got {tolerance}"
            )
        if num_samples < 0:
            raise InvalidInput(f"num_samples must be >= 0, got {num_samples}")
        if targets.ndim == 2 and targets.shape[0] * num_samples > self.limits.max_samples:
            raise LimitExceeded(
                f"{targets.shape[0]} targets x {num_samples} samples is over this server's limit of "
                f"{self.limits.max_samples} samples per request; ask for fewer"
            )
        runtime, out = await self.infer(method, runtime.name, runtime.version, targets, deadline=deadline)
        mix = out.mixture
        x = np.ascontiguousarray(targets, dtype=np.float32)
        tol = tolerance or DEFAULT_TOLERANCE

        def work() -> Solutions:
            return solve(arm, x, mix.weights, mix.means, mix.scales, max_solutions, refine, tol, num_samples, seed)

        return runtime, await self.compute(work)

    async def infer(
        self,
        method: str,
        name: str,
        version: str,
        x: NDArray[np.float32],
        sampling: SampleSpec | None = None,
        max_modes: int | None = None,
        deadline: float | None = None,
    ) -> tuple[ModelRuntime, Outputs]:
        """Mixture parameters for x, plus samples and/or modes when asked for.

        Every protocol ends here, so validation, limits and metrics are the same for all.
        deadline is a time.monotonic() value after which the caller no longer waits.
        """
        runtime = self.resolve(name, version)
        x = self.check_inputs(runtime, x)
        if sampling is not None:
            self._check_sampling(sampling, x.shape[0])
        if max_modes is not None and max_modes < 0:
            raise InvalidInput(f"max_modes must be >= 0 (0 means all), got {max_modes}")
        self.metrics.observer(self.metrics.rows, method, runtime.name)(x.shape[0])
        batcher = self._batchers.get((runtime.name, runtime.version))
        if batcher is None:  # unloaded by a reload since it was resolved
            raise ModelNotFound(f"model {runtime.name!r} version {runtime.version} was just unloaded; retry")
        return runtime, await batcher.submit(x, sampling, max_modes, deadline)
