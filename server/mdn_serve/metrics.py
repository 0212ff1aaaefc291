"""Prometheus metrics, declared once. Every metric lives in the registry it is given."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

M = TypeVar("M", Counter, Gauge, Histogram)
RequestRecorders = tuple[Callable[[float], None], Callable[[float], None], Callable[[float], None] | None]

# From 50 us to 30 s, about 4 buckets per factor of 2.5: fine enough to read p50/p99 of
# sub-millisecond requests and still cover slow mode searches on big batches.
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00015, 0.0002, 0.0003, 0.0004, 0.0005, 0.00075,
    0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075,
    0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
    1.0, 2.0, 5.0, 10.0, 30.0,
)  # fmt: skip
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536)


def fast_observe(child: Histogram) -> Callable[[float], None]:
    """child.observe without prometheus_client's per-call checks and linear bucket scan.

    The request path observes several histograms per request. This keeps the same two
    values up to date (the first bucket whose bound is >= the amount, and the sum) with one
    bisect; they are the values prometheus_client exposes, whether it keeps them in memory
    or in multi-process files. Falls back to child.observe if the client's layout changes.
    """
    try:
        bounds, buckets, total = child._upper_bounds, child._buckets, child._sum
    except AttributeError:
        return child.observe

    def observe(amount: float) -> None:
        buckets[bisect_left(bounds, amount)].inc(1)
        total.inc(amount)

    return observe


def fast_inc(child: Counter | Gauge) -> Callable[[float], None]:
    """child.inc (a negative amount decrements a gauge) without prometheus_client's per-call checks."""
    value = getattr(child, "_value", None)
    return child.inc if value is None else value.inc


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._request_recorders: dict[tuple[str, str, str, str], RequestRecorders] = {}
        self._recorders: dict[tuple[str, int, tuple[str, ...]], Callable[[float], None]] = {}
        r = self.registry
        self.request_seconds = Histogram(
            "mdn_request_duration_seconds",
            "End-to-end request latency in the server, by protocol, RPC method, model and status code.",
            ["protocol", "method", "model", "code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        request_labels = ["protocol", "method", "model", "code"]
        self.requests = Counter(
            "mdn_requests", "Requests handled, by protocol, method, model and status code.", request_labels, registry=r
        )
        self.errors = Counter(
            "mdn_request_errors",
            "Requests that ended in an error, by protocol, method, model and status code.",
            request_labels,
            registry=r,
        )
        self.in_flight = Gauge(
            "mdn_requests_in_flight", "Requests being handled now, by protocol and method.", ["protocol", "method"],
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.compute_seconds = Histogram(
            "mdn_inference_duration_seconds",
            "ONNX Runtime time per call, by model and version.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.postprocess_seconds = Histogram(
            "mdn_postprocess_duration_seconds",
            "Mixture math (sampling, mode search) time per batch, by model and version.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        batch_labels = ["model", "version"]
        self.queue_seconds = Histogram(
            "mdn_queue_duration_seconds", "Time requests wait in the batching queue.", batch_labels,
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "mdn_queue_depth", "Requests waiting in the batching queue.", batch_labels, registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.batch_rows = Histogram(
            "mdn_batch_rows", "Rows per ONNX Runtime execution (after batching).", batch_labels,
            buckets=ROW_BUCKETS, registry=r,
        )  # fmt: skip
        self.executions = Counter(
            "mdn_executions", "ONNX Runtime executions (batches).", batch_labels, registry=r
        )  # fmt: skip
        self.inferences = Counter(
            "mdn_inferences", "Requests computed; inferences / executions is the average batch size.",
            batch_labels, registry=r,
        )  # fmt: skip
        self.rejections = Counter(
            "mdn_rejected_requests",
            "Requests refused or dropped by the batcher, by reason (queue_full, queue_time, deadline, cancelled).",
            [*batch_labels, "reason"], registry=r,
        )  # fmt: skip
        self.rows = Histogram(
            "mdn_request_rows", "Input rows (batch size) per request, by method and model.", ["method", "model"],
            buckets=ROW_BUCKETS, registry=r,
        )  # fmt: skip
        self.load_failures = Counter(
            "mdn_model_load_failures", "Model versions that could not be loaded on a reload, by model and version.",
            ["model", "version"], registry=r,
        )  # fmt: skip
        self.reloads = Counter("mdn_repository_reloads", "Repository reloads (SIGHUP or poll).", registry=r)
        self.unauthenticated = Counter(
            "mdn_unauthenticated_requests",
            "Calls refused for a missing or wrong bearer token (any method).",
            registry=r,
        )
        self.response_bytes = Gauge(
            "mdn_response_bytes_in_flight",
            "Bytes of answers computed and not yet delivered (held until each call ends).",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.response_refusals = Counter(
            "mdn_response_budget_refusals",
            "Calls refused because the answers not yet delivered filled --max-response-bytes-in-flight.",
            registry=r,
        )  # fmt: skip
        self.model_info = Gauge(
            "mdn_model_info", "1 for each loaded model version, labelled with the execution provider.",
            ["model", "version", "provider"], registry=r, multiprocess_mode="livemax",
        )  # fmt: skip

    def observer(self, histogram: Histogram, *labels: str) -> Callable[[float], None]:
        """fast_observe of one labelled child, cached: the request path asks for the same few."""
        key = ("observe", id(histogram), labels)
        found = self._recorders.get(key)
        if found is None:
            found = self._recorders[key] = fast_observe(histogram.labels(*labels))
        return found

    def incrementer(self, metric: Counter | Gauge, *labels: str) -> Callable[[float], None]:
        """fast_inc of one labelled child, cached."""
        key = ("inc", id(metric), labels)
        found = self._recorders.get(key)
        if found is None:
            found = self._recorders[key] = fast_inc(metric.labels(*labels))
        return found

    def request_recorders(self, protocol: str, method: str, model: str, code: str) -> RequestRecorders:
        """(observe latency, count the request, count the error or None for OK) for one request's labels."""
        key = (protocol, method, model, code)
        found = self._request_recorders.get(key)
        if found is None:
            errors = None if code == "OK" else self.incrementer(self.errors, *key)
            found = self._request_recorders[key] = (
                self.observer(self.request_seconds, *key),
                self.incrementer(self.requests, *key),
                errors,
            )
        return found

    def child(self, metric: M, *labels: str) -> M:
        """metric.labels(*labels), cached: the request path asks for the same few children all the time."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found
