"""The protocol-free core: validate inputs, run ONNX Runtime and the mixture math off the event loop.

Protocol adapters decode their messages into numpy arrays, call these methods and encode
what comes back; nothing here sees a protobuf object.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from mdn_serve.errors import InvalidInput, LimitExceeded, Unavailable
from mdn_serve.metrics import Metrics
from mdn_serve.mixture import Modes, mixture_modes, sample_mixture
from mdn_serve.repository import ModelRepository
from mdn_serve.runtime import Mixture, ModelRuntime

T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    max_rows: int = 8192
    max_samples: int = 1_000_000


class Dataplane:
    def __init__(self, metrics: Metrics, limits: Limits, compute_threads: int = 2) -> None:
        self.metrics = metrics
        self.limits = limits
        self.repository: ModelRepository | None = None
        self._executor = ThreadPoolExecutor(max_workers=compute_threads, thread_name_prefix="mdn-compute")

    def set_repository(self, repository: ModelRepository) -> None:
        self.repository = repository
        for entry in repository.models.values():
            for version, runtime in entry.versions.items():
                self.metrics.model_info.labels(entry.name, version, runtime.provider).set(1)

    @property
    def ready(self) -> bool:
        return self.repository is not None

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def models(self) -> ModelRepository:
        if self.repository is None:
            raise Unavailable("models are still loading; retry shortly")
        return self.repository

    def resolve(self, name: str, version: str) -> ModelRuntime:
        return self.models().get(name, version)

    def check_inputs(self, runtime: ModelRuntime, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """Raise InvalidInput / LimitExceeded for anything the model cannot take."""
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
        finite = np.isfinite(x)
        if not finite.all():
            row, col = np.argwhere(~finite)[0]
            raise InvalidInput(f"inputs contain NaN or infinite values (first at row {row}, column {col})")
        return np.ascontiguousarray(x, dtype=np.float32)

    async def _compute(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _infer(self, runtime: ModelRuntime, x: NDArray[np.float32]) -> Mixture:
        start = time.perf_counter()
        out = runtime.run(x)
        self.metrics.compute_seconds.labels(runtime.name, runtime.version).observe(time.perf_counter() - start)
        return out

    def _observe_rows(self, method: str, runtime: ModelRuntime, x: NDArray[np.float32]) -> None:
        self.metrics.rows.labels(method, runtime.name).observe(x.shape[0])

    async def predict(self, name: str, version: str, x: NDArray[np.float32]) -> tuple[ModelRuntime, Mixture]:
        runtime = self.resolve(name, version)
        x = self.check_inputs(runtime, x)
        self._observe_rows("Predict", runtime, x)
        return runtime, await self._compute(lambda: self._infer(runtime, x))

    async def sample(
        self,
        name: str,
        version: str,
        x: NDArray[np.float32],
        num_samples: int,
        seed: int | None,
        temperature: float,
    ) -> tuple[ModelRuntime, NDArray[np.float32]]:
        """temperature 0 means 1.0; no seed draws fresh entropy."""
        runtime = self.resolve(name, version)
        if num_samples < 1:
            raise InvalidInput(f"num_samples must be >= 1, got {num_samples}")
        if math.isnan(temperature) or temperature < 0 or math.isinf(temperature):
            raise InvalidInput(f"temperature must be a finite number >= 0 (0 means 1.0), got {temperature}")
        x = self.check_inputs(runtime, x)
        total = x.shape[0] * num_samples
        if total > self.limits.max_samples:
            raise LimitExceeded(
                f"{x.shape[0]} rows x {num_samples} samples = {total} is over this server's limit of "
                f"{self.limits.max_samples} samples per request; ask for fewer"
            )
        tau = 1.0 if temperature == 0 else float(temperature)
        self._observe_rows("Sample", runtime, x)

        def work() -> NDArray[np.float32]:
            mix = self._infer(runtime, x)
            start = time.perf_counter()
            rng = np.random.default_rng(seed)
            out = sample_mixture(mix.weights, mix.means, mix.scales, num_samples, rng, tau)
            self.metrics.postprocess_seconds.labels("Sample", runtime.name).observe(time.perf_counter() - start)
            return out

        return runtime, await self._compute(work)

    async def modes(
        self, name: str, version: str, x: NDArray[np.float32], max_modes: int
    ) -> tuple[ModelRuntime, Modes]:
        runtime = self.resolve(name, version)
        if max_modes < 0:
            raise InvalidInput(f"max_modes must be >= 0 (0 means all), got {max_modes}")
        x = self.check_inputs(runtime, x)
        self._observe_rows("Modes", runtime, x)

        def work() -> Modes:
            mix = self._infer(runtime, x)
            start = time.perf_counter()
            out = mixture_modes(mix.weights, mix.means, mix.scales, max_modes=max_modes)
            self.metrics.postprocess_seconds.labels("Modes", runtime.name).observe(time.perf_counter() - start)
            return out

        return runtime, await self._compute(work)
