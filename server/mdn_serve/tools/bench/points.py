"""The load points the benchmark measures."""

from __future__ import annotations

from dataclasses import dataclass

# Closed-loop clients back off after a refusal (mdn-loadtest --backoff-ms), as the server's refusals
# ask: one that sends again at once turns a point near a budget's edge into a storm of refusals,
# whose gRPC cost on the server's core halved what it answered (Predict batch 16384, 32 clients).
CLIENT_BACKOFF_MS = 10.0


@dataclass(frozen=True)
class Point:
    rpc: str
    batch: int
    concurrency: int
    num_samples: int = 100

    @property
    def label(self) -> str:
        extra = f", {self.num_samples} samples/row" if self.rpc == "sample" else ""
        return f"{self.rpc.capitalize()} batch {self.batch}{extra}, {self.concurrency} client(s)"


def default_points() -> list[Point]:
    points = [Point("predict", b, c) for b in (1, 64, 1024, 16384) for c in (1, 32)]
    points += [Point("sample", 64, c) for c in (1, 32)]
    points += [Point("modes", b, c) for b in (64, 1024) for c in (1, 32)]
    return points


HEADLINE = Point("predict", 1, 32)
QUICK = [Point("predict", 1, 32), Point("predict", 1024, 1), Point("modes", 1024, 1)]
