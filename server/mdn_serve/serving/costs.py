"""What a request will cost to compute, learned from the batches computed so far.

A queue bounded in count is not bounded in time: 1,024 small requests wait milliseconds, 1,024
mode searches of 8,192 rows wait minutes. The batcher therefore estimates, for each request it
is offered, how long the work already queued and computing will take to clear, and refuses at
once a request that could not start within its queue-time budget (its deadline, and at most
--max-queue-seconds). The estimates come from what the batches measured, per unit of each
stage's work:

- mixture: ONNX Runtime, per row;
- samples: sampling, per sample drawn;
- modes: the mode search, per row searched (every row of a request wanting modes or IK);
- ik: the refinement, per seed (targets x (components + draws + seed state)).

Each is an exponentially weighted mean of seconds per unit over the batches that ran that stage.
Until a stage has run once it is estimated at 0: the first requests are never refused for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from mdn_serve.serving.pipeline import Ask
from mdn_serve.serving.repository import ModelRuntime

SMOOTHING = 0.2  # weight of the newest batch in each stage's mean
STAGES = ("mixture", "samples", "modes", "ik")


@dataclass(slots=True)
class Work:
    """Units of work of one request (or a batch of them) in each stage."""

    mixture: float = 0.0
    samples: float = 0.0
    modes: float = 0.0
    ik: float = 0.0

    def add(self, other: Work) -> None:
        self.mixture += other.mixture
        self.samples += other.samples
        self.modes += other.modes
        self.ik += other.ik


class WorkCosts:
    """Seconds per unit of work in each stage, for one model version."""

    def __init__(self, runtime: ModelRuntime) -> None:
        self.components = runtime.metadata.components
        self.chain = runtime.metadata.chain
        self.per_unit = dict.fromkeys(STAGES, 0.0)
        self._seen = dict.fromkeys(STAGES, False)

    def work(self, rows: int, ask: Ask) -> Work:
        """The units of work of a request of `rows` rows that asks for `ask`."""
        out = Work(mixture=rows)
        if ask.sampling is not None:
            out.samples = rows * ask.sampling.num_samples
        if ask.max_modes is not None or ask.ik is not None:
            out.modes = rows
        if ask.ik is not None and self.chain is not None:
            out.ik = rows * ask.ik.seeds_per_target(self.chain, self.components)
        return out

    def seconds(self, work: Work) -> float:
        p = self.per_unit
        return work.mixture * p["mixture"] + work.samples * p["samples"] + work.modes * p["modes"] + work.ik * p["ik"]

    def record(self, stage: str, seconds: float, units: float) -> None:
        """A batch spent `seconds` on `units` units of `stage` (called from the compute threads:
        a lost update between two of them only delays the mean by one batch)."""
        if units <= 0:
            return
        rate = seconds / units
        if not self._seen[stage]:
            self._seen[stage] = True
            self.per_unit[stage] = rate
        else:
            self.per_unit[stage] += SMOOTHING * (rate - self.per_unit[stage])
