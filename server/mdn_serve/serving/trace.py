"""What a traced request went through in the batcher, stamped as it happens (no tracing library here).

A protocol adapter that traces a request sets a RequestTrace as CURRENT before calling the
dataplane; the dataplane names the model, and the batcher stamps the request's queueing and its
batch's stages (perf_counter nanoseconds). The adapter turns the stamps into child spans once the
request is answered. Untraced requests carry None and cost one check per batch.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(slots=True)
class RequestTrace:
    model: str = ""
    version: str = ""
    rows: int = 0
    enqueued: int = 0  # queued (perf_counter ns)
    taken: int = 0  # taken from the queue into a batch
    stacked: int = 0  # the batch's inputs stacked and checked
    infer_start: int = 0  # the ONNX Runtime call
    infer_end: int = 0
    done: int = 0  # the batch's outputs made (samples, modes, IK, the split)
    batch_rows: int = 0
    batch_requests: int = 0
    postprocessed: bool = False  # the batch did more than split the mixture


CURRENT: ContextVar[RequestTrace | None] = ContextVar("mdn_request_trace", default=None)


def stamp_taken(traces: list[RequestTrace], taken: float, stacked: float) -> None:
    """A batch was taken from the queue at `taken` and stacked in `stacked` seconds (perf_counter)."""
    for trace in traces:
        trace.taken, trace.stacked = int(taken * 1e9), int((taken + stacked) * 1e9)


def stamp_computed(
    traces: list[RequestTrace],
    infer_start: float,
    infer_seconds: float,
    after: float,
    batch: tuple[int, int],
    postprocessed: bool,
) -> None:
    """The batch ((rows, requests)) ran ONNX Runtime from `infer_start` for `infer_seconds`, then made
    its outputs in `after` seconds."""
    end = infer_start + infer_seconds
    for trace in traces:
        trace.infer_start, trace.infer_end = int(infer_start * 1e9), int(end * 1e9)
        trace.done = int((end + after) * 1e9)
        (trace.batch_rows, trace.batch_requests), trace.postprocessed = batch, postprocessed
