"""One inference pipeline: what a request asks for, and the one stage that computes it.

A request says what it wants (an `Ask`: samples, modes, inverse kinematics, each with its
options; the mixture parameters always come). The batcher merges the inputs of many requests
into one ONNX Runtime call; `postprocess` then computes everything the batch asked for from
that call's mixture: one sampling pass per (N, temperature), one mode search over every row
whose request wants modes or IK, and the IK refinement seeded from those same modes. So one
request costs one ONNX Runtime call and at most one mode search, whatever mix it asks for.

Every row is computed independently and each request draws from its own generator, so the
answers do not depend on which requests shared a batch.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from mdn_core.chain import SerialChain
from mdn_core.chunks import Interrupted, spans
from mdn_core.ik import DEFAULT_REFINE, default_draws, solve
from mdn_core.mixture import samples_from_draws
from mdn_core.model import Mixture
from mdn_core.modes import Modes, mixture_modes
from mdn_core.solutions import Solutions
from numpy.typing import NDArray

from mdn_serve.errors import DeadlineExpired

SAMPLE_CHUNK = 262_144  # samples (rows x num_samples) per chunk of sampling: tens of milliseconds


@dataclass(frozen=True, slots=True)
class SampleSpec:
    num_samples: int
    seed: int | None = None  # None draws fresh entropy
    temperature: float = 0.0  # 0 means 1.0
    scale_temperature: float | None = None  # None: the same as temperature

    @property
    def tau(self) -> float:
        return 1.0 if self.temperature == 0 else float(self.temperature)

    @property
    def scale_tau(self) -> float | None:
        return None if self.scale_temperature is None else float(self.scale_temperature)


@dataclass(frozen=True, slots=True, eq=False)
class IkSpec:
    max_solutions: int = 0  # 0: all
    refine: bool = DEFAULT_REFINE
    tolerance: float = 0.0  # 0: the chain's default
    num_samples: int = 0  # extra seeds drawn from the mixture per target; 0: the chain's default
    seed: int | None = None
    orientation_tolerance: float = 0.0  # 0: the default
    seed_state: NDArray[np.float64] | None = None  # (B, J) or (1, J)
    targets: NDArray[np.float64] | None = None  # the targets as asked (the dataplane sets them)

    def seeds_per_target(self, chain: SerialChain, components: int) -> int:
        """Seeds refined per target at most: the mixture's modes (one per component at most), the
        draws, the seed state."""
        return components + (self.num_samples or default_draws(chain)) + (self.seed_state is not None)


@dataclass(frozen=True, slots=True)
class Ask:
    """What one request wants besides the mixture parameters."""

    sampling: SampleSpec | None = None
    max_modes: int | None = None  # None: no modes; 0: all of them
    ik: IkSpec | None = None

    @property
    def plain(self) -> bool:
        """Mixture parameters only: nothing to compute after ONNX Runtime."""
        return self.sampling is None and self.max_modes is None and self.ik is None


MIXTURE_ONLY = Ask()


class Outputs(NamedTuple):  # a tuple: built for every request, so it must be cheap
    mixture: Mixture
    samples: NDArray[np.float32] | None  # (B, N, D) when sampling was asked for
    modes: Modes | None  # when modes were asked for
    solutions: Solutions | None  # when inverse kinematics was asked for


def split_plain(mix: Mixture, bounds: Sequence[int]) -> list[Outputs]:
    """Each request's rows of the mixture, for a batch that asked for nothing more."""
    return [Outputs(mix.rows(a, b), None, None, None) for a, b in itertools.pairwise(bounds)]


def postprocess(
    asks: Sequence[Ask],
    bounds: Sequence[int],
    x: NDArray[np.float32],
    mix: Mixture,
    chain: SerialChain | None,
    wanted: Sequence[Callable[[], bool]] | None = None,
    record: Callable[[str, float, float], None] | None = None,
) -> list[Outputs | BaseException]:
    """Samples, modes and IK solutions for every request of a batch, split per request.

    asks[i] covers rows bounds[i]:bounds[i + 1] of x (the stacked inputs) and of mix. wanted[i]()
    says whether request i's caller still waits (not cancelled, deadline not passed, server not
    shutting down). Every stage works in chunks (see mdn_core.chunks) and asks between them: a
    stage shared by several requests stops when none of them waits, IK (one request at a time)
    when its request does not; such a request gets a DeadlineExpired instead of its outputs.
    record(stage, seconds, units) hears how long each stage took for how much work ("samples":
    samples drawn, "modes": rows searched, "ik": seeds), for the batcher's cost estimates.
    """
    waits = wanted or [_always] * len(asks)
    timed = record or _ignore
    failed: dict[int, BaseException] = {}
    start = time.perf_counter()
    samples = _samples(asks, bounds, mix, waits, failed)
    timed("samples", time.perf_counter() - start, sum(s.size // s.shape[-1] for s in samples.values()))
    start = time.perf_counter()
    modes = _modes(asks, bounds, mix, waits, failed)
    timed("modes", time.perf_counter() - start, sum(m.num_modes.shape[0] for m in modes.values()))
    out: list[Outputs | BaseException] = []
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        ask, found = asks[i], modes.get(i)
        if i in failed:
            out.append(failed[i])
            continue
        solutions = None
        if ask.ik is not None:
            assert chain is not None and found is not None  # the dataplane admits IK for arm models only
            spec, part = ask.ik, mix.rows(a, b)
            targets = x[a:b] if spec.targets is None else spec.targets
            start = time.perf_counter()
            try:
                solutions = solve(
                    chain, targets, *part, spec.max_solutions, spec.refine, spec.tolerance, spec.num_samples or None,
                    spec.seed, found, spec.orientation_tolerance, spec.seed_state, _none_of(waits, [i]),
                )  # fmt: skip
            except Interrupted as stopped:
                out.append(_stopped("its targets were solved", stopped))
                continue
            timed("ik", time.perf_counter() - start, (b - a) * spec.seeds_per_target(chain, mix.weights.shape[1]))
        shown = None
        if ask.max_modes is not None and found is not None:
            shown = found.take(0, b - a, ask.max_modes) if ask.max_modes else found
        out.append(Outputs(mix.rows(a, b), samples.get(i), shown, solutions))
    return out


def _always() -> bool:
    return True


def _ignore(stage: str, seconds: float, units: float) -> None:
    pass


def _none_of(waits: Sequence[Callable[[], bool]], members: Sequence[int]) -> Callable[[], bool]:
    """should_stop for work shared by `members`: stop when none of them waits any more."""
    return lambda: not any(waits[i]() for i in members)


def _stopped(stage: str, stopped: Interrupted) -> DeadlineExpired:
    return DeadlineExpired(f"the caller stopped waiting while {stage} ({stopped})")


def _samples(
    asks: Sequence[Ask],
    bounds: Sequence[int],
    mix: Mixture,
    waits: Sequence[Callable[[], bool]],
    failed: dict[int, BaseException],
) -> dict[int, NDArray[np.float32]]:
    """Sample every request that asked, vectorised over requests that share (N, temperatures)."""
    groups: dict[tuple[int, float, float | None], list[int]] = collections.defaultdict(list)
    for i, ask in enumerate(asks):
        if ask.sampling is not None:
            groups[(ask.sampling.num_samples, ask.sampling.tau, ask.sampling.scale_tau)].append(i)
    out: dict[int, NDArray[np.float32]] = {}
    for members in groups.values():
        try:
            drawn = _sample_group([asks[i].sampling for i in members], [(bounds[i], bounds[i + 1]) for i in members],
                                  mix, _none_of(waits, members))  # fmt: skip
        except Interrupted as stopped:
            failed.update((i, _stopped("its samples were drawn", stopped)) for i in members)
            continue
        offset = 0
        for i in members:
            n = bounds[i + 1] - bounds[i]
            out[i] = drawn[offset : offset + n]
            offset += n
    return out


def _sample_group(
    specs: Sequence[SampleSpec | None], spans_of: Sequence[tuple[int, int]], mix: Mixture, stop: Callable[[], bool]
) -> NDArray[np.float32]:
    """Samples (rows, N, D) for requests with one (N, temperatures), their rows stacked, in chunks of
    about SAMPLE_CHUNK samples.

    Each request draws from its own generator exactly what sample_draws would (all its uniforms,
    then its normals in row-major order, chunk after chunk), so the chunks change nothing.
    """
    first = specs[0]
    assert first is not None
    num, dim = first.num_samples, mix.means.shape[-1]
    generators, uniforms = [], []
    for spec, (a, b) in zip(specs, spans_of, strict=True):
        assert spec is not None
        generator = np.random.default_rng(spec.seed)
        uniforms.append(generator.random((b - a, num)))
        generators.append(generator)
    rows = np.concatenate([np.arange(a, b) for a, b in spans_of])
    owners = np.cumsum([0] + [b - a for a, b in spans_of])  # each request's first row in the stack
    u = uniforms[0] if len(uniforms) == 1 else np.concatenate(uniforms)
    drawn = np.empty((len(rows), num, dim), np.float32)
    for a, b in spans(len(rows), SAMPLE_CHUNK // num, stop, "rows"):
        for c, d in spans(num, SAMPLE_CHUNK, stop, "samples"):
            normals = []
            for m in range(int(np.searchsorted(owners, a, side="right")) - 1, len(generators)):
                lo, hi = max(a, owners[m]), min(b, owners[m + 1])
                if lo >= hi:
                    break
                normals.append(generators[m].standard_normal((hi - lo, d - c, dim)))
            z = normals[0] if len(normals) == 1 else np.concatenate(normals)
            r = rows[a:b]
            drawn[a:b, c:d] = samples_from_draws(
                mix.weights[r], mix.means[r], mix.scales[r], u[a:b, c:d], z, first.tau, first.scale_tau
            )
    return drawn


def _modes(
    asks: Sequence[Ask],
    bounds: Sequence[int],
    mix: Mixture,
    waits: Sequence[Callable[[], bool]],
    failed: dict[int, BaseException],
) -> dict[int, Modes]:
    """One mode search over the rows of every request that wants modes or IK; all modes, per request."""
    members = [i for i, ask in enumerate(asks) if (ask.max_modes is not None or ask.ik is not None) and i not in failed]
    if not members:
        return {}
    rows = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in members])
    try:
        found = mixture_modes(
            mix.weights[rows], mix.means[rows], mix.scales[rows], should_stop=_none_of(waits, members)
        )
    except Interrupted as stopped:
        failed.update((i, _stopped("its modes were searched for", stopped)) for i in members)
        return {}
    out: dict[int, Modes] = {}
    offset = 0
    for i in members:
        n = bounds[i + 1] - bounds[i]
        out[i] = found.take(offset, offset + n)
        offset += n
    return out
