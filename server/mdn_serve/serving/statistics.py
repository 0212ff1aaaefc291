"""Per model version statistics, as Triton's statistics extension reports them.

Counted by the batcher as it works, from the same clocks as the Prometheus metrics: each
request's time in the queue, and its share of the batch that served it (stacking and checking
the inputs, the ONNX Runtime call, the post-processing that made its outputs), each counted
once per request with the batch's duration, as Triton does; requests that succeeded (their rows
are the inference count) or failed after reaching the batcher, refusals included, with their time
from queueing to the outcome; and the batches themselves (the execution count).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9) * count


@dataclass
class VersionStatistics:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    # The compute threads and the event loop both record: one lock, never held for long.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def succeeded(self, seconds: float, rows: int) -> None:
        with self.lock:
            self.success.add(seconds)
            self.inference_count += rows
            self.last_inference_ms = int(time.time() * 1000)

    def failed(self, seconds: float) -> None:
        with self.lock:
            self.fail.add(seconds)

    def queued(self, seconds: float) -> None:
        with self.lock:
            self.queue.add(seconds)

    def batch(self, requests: int, input_seconds: float, infer_seconds: float, output_seconds: float) -> None:
        """One batch of `requests` requests: each is counted with the batch's durations."""
        with self.lock:
            self.execution_count += 1
            self.compute_input.add(input_seconds, requests)
            self.compute_infer.add(infer_seconds, requests)
            self.compute_output.add(output_seconds, requests)
