"""The protocol-free core: validate a request, then hand it to the model's dynamic batcher.

Protocol adapters decode their messages into numpy arrays and an `Ask` (what the request wants
besides the mixture), call `infer` and encode what comes back; nothing here sees a protobuf
object. Every protocol ends here, so validation, limits and metrics are the same for all.
"""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from mdn_core.chain import TARGET_NAMES, target_features
from mdn_core.ik import default_draws
from numpy.typing import NDArray

from mdn_serve.errors import InvalidInput, LimitExceeded, MdnError, ModelNotFound, Unavailable
from mdn_serve.metrics import Metrics
from mdn_serve.scheduling import COMPUTE_THREAD_NAME, compute_thread_started
from mdn_serve.serving.batching import DynamicBatcher
from mdn_serve.serving.pipeline import MIXTURE_ONLY, Ask, IkSpec, Outputs, SampleSpec
from mdn_serve.serving.queue import BatchingConfig
from mdn_serve.serving.repository import ModelRepository, ModelRuntime
from mdn_serve.serving.responses import ResponseBudget
from mdn_serve.serving.statistics import VersionStatistics
from mdn_serve.serving.trace import CURRENT

if TYPE_CHECKING:
    from mdn_serve.serving.control import ModelControl
    from mdn_serve.tracing import Tracer

__all__ = ["Ask", "Dataplane", "IkSpec", "Limits", "Outputs", "SampleSpec"]

QUATERNION_NORM_SLACK = 1e-3


@dataclass(frozen=True)
class Limits:
    max_rows: int = 8192
    max_samples: int = 1_000_000
    max_ik_seeds: int = 262_144
    max_response_bytes_in_flight: int = 128 * 2**20


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
        self.load_failures: dict[tuple[str, str], str] = {}  # (name, version) -> why a reload refused it
        self.repository_name = ""  # the repository folder's name (the app sets it), as RepositoryIndex knows it
        self.control: ModelControl | None = None  # loads and unloads models (the app sets it)
        self.tracer: Tracer | None = None  # request spans, when tracing is on (the app sets it before models load)
        self.responses = ResponseBudget(limits.max_response_bytes_in_flight, metrics)
        self._retiring: dict[asyncio.Future[None], DynamicBatcher] = {}
        self._batchers: dict[tuple[str, str], DynamicBatcher] = {}
        self._executor = ThreadPoolExecutor(
            max_workers=compute_threads, thread_name_prefix=COMPUTE_THREAD_NAME, initializer=compute_thread_started
        )

    def set_repository(self, repository: ModelRepository) -> list[asyncio.Future[None]]:
        """Serve this repository from now on (at start, and atomically on every reload).

        Batchers of unchanged versions carry on; those of replaced or removed versions finish
        what they hold, then stop: the returned futures are done when they have.
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
                    batchers[key] = batcher = DynamicBatcher(runtime, self._executor, self.metrics, self.batching)
                    batcher.tracing = self.tracer is not None
                    self.metrics.model_info.labels(entry.name, version, runtime.provider).set(1)
        self._batchers, self.repository = batchers, repository
        retired: list[asyncio.Future[None]] = []
        for key, batcher in old.items():
            if batchers.get(key) is not batcher:
                if key not in batchers:
                    self.metrics.model_info.remove(*key, batcher.runtime.provider)
                retiring = asyncio.ensure_future(batcher.retire())
                self._retiring[retiring] = batcher
                retired.append(retiring)
        self._retiring = {t: b for t, b in self._retiring.items() if not t.done()}
        return retired

    @property
    def ready(self) -> bool:
        return self.repository is not None

    def abandon(self) -> int:
        """The grace period is over: answer everything queued or computing UNAVAILABLE now, and let
        the compute threads stop within one chunk. Returns how many requests were answered so."""
        error = Unavailable("the server is shutting down and its grace period is over; retry on another replica")
        batchers = [*self._batchers.values(), *self._retiring.values()]
        return sum(batcher.abandon(error) for batcher in batchers)

    async def close(self) -> None:
        for batcher in self._batchers.values():
            await batcher.close()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def model_control(self) -> ModelControl:
        if self.control is None:
            raise Unavailable("this server has no model control")
        return self.control

    def models(self) -> ModelRepository:
        if self.repository is None:
            raise Unavailable("models are still loading; retry shortly")
        return self.repository

    def resolve(self, name: str, version: str) -> ModelRuntime:
        return self.models().get(name, version)

    def shed(self, name: str, version: str) -> None:
        """Raise QueueFull when the model version's queue is so far behind that the batcher would
        refuse any request (see DynamicBatcher.shed); anything else (no such model, say) is left
        for the request's own path to report."""
        repository = self.repository
        if repository is None:
            return
        try:
            runtime = repository.get(name, version)
        except MdnError:
            return
        batcher = self._batchers.get((runtime.name, runtime.version))
        if batcher is not None:
            batcher.shed()

    def index(self, ready_only: bool) -> list[tuple[str, str, str, str]]:
        """(name, version, state, reason) of every version served (READY) and, unless ready_only,
        every version a reload refused and nothing serves (UNAVAILABLE); a served version whose
        newer file was refused is READY with that reason."""
        out = [(n, v, "READY", self.load_failures.get((n, v), "")) for n, v in sorted(self._batchers)]
        if not ready_only:
            out += [(n, v, "UNAVAILABLE", why) for (n, v), why in sorted(self.load_failures.items())
                    if (n, v) not in self._batchers]  # fmt: skip
        return sorted(out, key=lambda e: (e[0], int(e[1]) if e[1].isdigit() else 0))

    def statistics(self, name: str, version: str) -> list[tuple[str, str, VersionStatistics]]:
        """(name, version, statistics) of the loaded versions asked for: every model when name is
        empty, every version of the model when version is (NOT_FOUND for what is not loaded)."""
        repository = self.models()
        if name:
            runtime = repository.get(name, version)  # NOT_FOUND, with what exists
            keys = (
                [(runtime.name, runtime.version)] if version else [(name, v) for v in repository.entry(name).versions]
            )
        else:
            keys = sorted(self._batchers)
        return [(n, v, self._batchers[(n, v)].stats) for n, v in keys if (n, v) in self._batchers]

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

    async def infer(
        self,
        method: str,
        name: str,
        version: str,
        x: NDArray[np.float32],
        ask: Ask = MIXTURE_ONLY,
        deadline: float | None = None,
    ) -> tuple[ModelRuntime, Outputs]:
        """Mixture parameters for x, plus whatever `ask` wants (samples, modes, IK solutions).

        deadline is a time.monotonic() value after which the caller no longer waits.
        """
        runtime = self.resolve(name, version)
        if ask.ik is not None:
            x, spec = prepare_ik(runtime, ask.ik, x, self.limits)
            ask = replace(ask, ik=spec)
        x = self.check_inputs(runtime, x)
        if ask.sampling is not None:
            check_sampling(ask.sampling, x.shape[0], self.limits)
        if ask.max_modes is not None and ask.max_modes < 0:
            raise InvalidInput(f"max_modes must be >= 0 (0 means all), got {ask.max_modes}")
        self.responses.reserve(answer_bytes(runtime, x.shape[0], ask))
        self.metrics.observer(self.metrics.rows, method, runtime.name)(x.shape[0])
        batcher = self._batchers.get((runtime.name, runtime.version))
        if batcher is None:  # unloaded by a reload since it was resolved
            raise ModelNotFound(f"model {runtime.name!r} version {runtime.version} was just unloaded; retry")
        trace = CURRENT.get()
        if trace is not None:
            trace.model, trace.version, trace.rows = runtime.name, runtime.version, x.shape[0]
        return runtime, await batcher.submit(x, ask, deadline, trace)


def prepare_ik(
    runtime: ModelRuntime, spec: IkSpec, targets: NDArray[np.float32], limits: Limits
) -> tuple[NDArray[np.float32], IkSpec]:
    """Check an IK request; the network's inputs for its targets, and the spec with the targets."""
    chain = runtime.metadata.chain
    if chain is None:
        raise InvalidInput(
            f"model {runtime.name!r} has no kinematics in its metadata; inverse kinematics needs an arm model"
        )
    width = chain.target_width
    if targets.ndim != 2 or targets.shape[1] != width:
        raise InvalidInput(
            f"model {runtime.name!r} takes {chain.target} targets [batch, {width}] ({TARGET_NAMES[chain.target]}), "
            f"got shape {list(targets.shape)}"
        )
    rows = targets.shape[0]
    if rows == 0:
        raise InvalidInput("targets have no rows (batch size 0); send at least one target")
    if rows > limits.max_rows:
        raise LimitExceeded(
            f"batch of {rows} targets is over this server's limit of {limits.max_rows}; split the request"
        )
    bad = np.argwhere(~np.isfinite(targets))
    if len(bad):
        raise InvalidInput(f"targets contain NaN or infinite values (first at row {bad[0][0]}, column {bad[0][1]})")
    if chain.target == "pose":
        norms = np.linalg.norm(targets[:, 3:7].astype(np.float64), axis=1)
        off = np.flatnonzero(np.abs(norms - 1.0) > QUATERNION_NORM_SLACK)
        if len(off):
            raise InvalidInput(
                f"targets row {off[0]}: the quaternion (qx, qy, qz, qw) has norm {norms[off[0]]:.6g}; send a unit "
                f"quaternion (norm within {QUATERNION_NORM_SLACK:g} of 1)"
            )
    if spec.max_solutions < 0:
        raise InvalidInput(f"max_solutions must be >= 0 (0 means all), got {spec.max_solutions}")
    for name, value in (("tolerance", spec.tolerance), ("orientation_tolerance", spec.orientation_tolerance)):
        if not (math.isfinite(value) and value >= 0):
            raise InvalidInput(f"{name} must be a finite number >= 0 (0 means the default), got {value}")
    if spec.num_samples < 0:
        raise InvalidInput(f"num_samples must be >= 0, got {spec.num_samples}")
    if rows * spec.num_samples > limits.max_samples:
        raise LimitExceeded(
            f"{rows} targets x {spec.num_samples} samples is over this server's limit of "
            f"{limits.max_samples} samples per request; ask for fewer"
        )
    # Every seed is refined: the mixture's modes (at most one per component), the draws, the seed state.
    draws = spec.num_samples or default_draws(chain)
    seeds = rows * spec.seeds_per_target(chain, runtime.metadata.components)
    if seeds > limits.max_ik_seeds:
        raise LimitExceeded(
            f"{rows} targets x up to {seeds // rows} seeds ({runtime.metadata.components} components, {draws} "
            f"draws{', the seed state' if spec.seed_state is not None else ''}) = {seeds} is over this server's "
            f"limit of {limits.max_ik_seeds} IK seeds per request; split the targets or ask for fewer draws"
        )
    state = spec.seed_state
    if state is not None:
        if state.ndim != 2 or state.shape[0] not in (1, rows) or state.shape[1] != chain.num_joints:
            raise InvalidInput(
                f"seed_state must have shape [{rows}, {chain.num_joints}] or [1, {chain.num_joints}] (joint values "
                f"{', '.join(j.name for j in chain.joints)}), got {list(state.shape)}"
            )
        if not np.isfinite(state).all():
            raise InvalidInput("seed_state contains NaN or infinite values")
    features = target_features(chain.target, targets)
    return features, replace(spec, targets=targets.astype(np.float64))


def check_sampling(spec: SampleSpec, rows: int, limits: Limits) -> None:
    """Raise InvalidInput / LimitExceeded for sampling options out of range."""
    if spec.num_samples < 1:
        raise InvalidInput(f"num_samples must be >= 1, got {spec.num_samples}")
    t = spec.temperature
    if math.isnan(t) or t < 0 or math.isinf(t):
        raise InvalidInput(f"temperature must be a finite number >= 0 (0 means 1.0), got {t}")
    s = spec.scale_temperature
    if s is not None and not (math.isfinite(s) and s >= 0):
        raise InvalidInput(f"scale_temperature must be a finite number >= 0 (0: draws at the means), got {s}")
    total = rows * spec.num_samples
    if total > limits.max_samples:
        raise LimitExceeded(
            f"{rows} rows x {spec.num_samples} samples = {total} is over this server's limit of "
            f"{limits.max_samples} samples per request; ask for fewer"
        )


def answer_bytes(runtime: ModelRuntime, rows: int, ask: Ask) -> float:
    """The most bytes of tensors the answer to a request can carry (4 bytes a value)."""
    k, d = runtime.metadata.components, runtime.output_dim
    values = rows * k * (1 + 2 * d)  # the mixture
    if ask.sampling is not None:
        values += rows * ask.sampling.num_samples * d
    if ask.max_modes is not None:
        values += rows * (min(k, ask.max_modes or k) * (d + 2) + 1)
    chain = runtime.metadata.chain
    if ask.ik is not None and chain is not None:
        seeds = ask.ik.seeds_per_target(chain, k)
        values += rows * (min(seeds, ask.ik.max_solutions or seeds) * (chain.num_joints + 6) + 2)
    return 4.0 * values
