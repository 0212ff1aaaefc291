"""The protocol-free core: validate inputs, run ONNX Runtime and the mixture math off the event loop.

Protocol adapters decode their messages into numpy arrays, call these methods and encode
what comes back; nothing here sees a protobuf object.
"""

from __future__ import annotations

import asyncio
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from mdn_serve.errors import InvalidInput, LimitExceeded, Unavailable
from mdn_serve.metrics import Metrics
from mdn_serve.mixture import Modes, mixture_modes, sample_mixture
from mdn_serve.repository import ModelRepository
from mdn_serve.runtime import Mixture, ModelRuntime


@dataclass(frozen=True)
class SampleSpec:
    num_samples: int
    seed: int | None = None  # None draws fresh entropy
    temperature: float = 0.0  # 0 means 1.0


@dataclass(frozen=True)
class Outputs:
    mixture: Mixture
    samples: NDArray[np.float32] | None  # (B, N, D) when sampling was asked for
    modes: Modes | None  # when modes were asked for


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

    def _check_sampling(self, spec: SampleSpec, rows: int) -> float:
        """Validate a sampling request; returns the effective temperature."""
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
        return 1.0 if t == 0 else float(t)

    async def infer(
        self,
        method: str,
        name: str,
        version: str,
        x: NDArray[np.float32],
        sampling: SampleSpec | None = None,
        max_modes: int | None = None,
    ) -> tuple[ModelRuntime, Outputs]:
        """One ONNX Runtime call for x, plus samples and/or modes when asked for.

        Every protocol ends here, so validation, limits and metrics are the same for all.
        """
        runtime = self.resolve(name, version)
        x = self.check_inputs(runtime, x)
        tau = self._check_sampling(sampling, x.shape[0]) if sampling is not None else 1.0
        if max_modes is not None and max_modes < 0:
            raise InvalidInput(f"max_modes must be >= 0 (0 means all), got {max_modes}")
        self.metrics.rows.labels(method, runtime.name).observe(x.shape[0])

        def work() -> Outputs:
            start = time.perf_counter()
            mix = runtime.run(x)
            done = time.perf_counter()
            self.metrics.compute_seconds.labels(runtime.name, runtime.version).observe(done - start)
            samples = modes = None
            if sampling is not None:
                rng = np.random.default_rng(sampling.seed)
                samples = sample_mixture(mix.weights, mix.means, mix.scales, sampling.num_samples, rng, tau)
            if max_modes is not None:
                modes = mixture_modes(mix.weights, mix.means, mix.scales, max_modes=max_modes)
            if sampling is not None or max_modes is not None:
                self.metrics.postprocess_seconds.labels(method, runtime.name).observe(time.perf_counter() - done)
            return Outputs(mix, samples, modes)

        return runtime, await asyncio.get_running_loop().run_in_executor(self._executor, work)
