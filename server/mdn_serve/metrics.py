"""Prometheus metrics, declared once. Every metric lives in the registry it is given."""

from __future__ import annotations

from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

M = TypeVar("M", Counter, Gauge, Histogram)

# From 50 us to 30 s, about 4 buckets per factor of 2.5: fine enough to read p50/p99 of
# sub-millisecond requests and still cover slow mode searches on big batches.
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00015, 0.0002, 0.0003, 0.0004, 0.0005, 0.00075,
    0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075,
    0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
    1.0, 2.0, 5.0, 10.0, 30.0,
)  # fmt: skip
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._request_children: dict[tuple[str, str, str, str], tuple[Any, Any, Any]] = {}
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
            "mdn_rejected_requests", "Requests dropped by the batcher, by reason (queue_full, deadline, cancelled).",
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
        self.model_info = Gauge(
            "mdn_model_info", "1 for each loaded model version, labelled with the execution provider.",
            ["model", "version", "provider"], registry=r, multiprocess_mode="livemax",
        )  # fmt: skip

    def request_children(self, protocol: str, method: str, model: str, code: str) -> tuple[Any, Any, Any]:
        """(latency histogram, request counter, error counter or None for OK) of one request's labels."""
        key = (protocol, method, model, code)
        found = self._request_children.get(key)
        if found is None:
            errors = None if code == "OK" else self.errors.labels(*key)
            seconds, count = self.request_seconds.labels(*key), self.requests.labels(*key)
            found = self._request_children[key] = (seconds, count, errors)
        return found

    def child(self, metric: M, *labels: str) -> M:
        """metric.labels(*labels), cached: the request path asks for the same few children all the time."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found
