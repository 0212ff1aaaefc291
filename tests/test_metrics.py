"""The request path's metric recorders expose exactly what prometheus_client's own methods would."""

from __future__ import annotations

from mdn_serve.metrics import LATENCY_BUCKETS, ROW_BUCKETS, Metrics, fast_inc, fast_observe
from prometheus_client import generate_latest

# Values on bucket bounds, between them, below the first and above the last.
LATENCIES = [0.0, 0.00005, 0.00007, 0.001, 0.0010001, 0.02, 29.9, 30.0, 31.0, 1e6, *LATENCY_BUCKETS[::3]]
ROWS = [1, 2, 3, 64, 65, 16384, 65536, 65537, *ROW_BUCKETS]


def record(metrics: Metrics, fast: bool) -> bytes:
    seconds = metrics.request_seconds.labels("mdn.v1", "Predict", "arm", "OK")
    rows = metrics.rows.labels("Predict", "arm")
    requests = metrics.requests.labels("mdn.v1", "Predict", "arm", "OK")
    in_flight = metrics.in_flight.labels("mdn.v1", "Predict")
    if fast:
        observe_seconds, observe_rows = fast_observe(seconds), fast_observe(rows)
        count, flight = fast_inc(requests), fast_inc(in_flight)
    else:
        observe_seconds, observe_rows, count, flight = seconds.observe, rows.observe, requests.inc, in_flight.inc
    for value in LATENCIES:
        observe_seconds(value)
        count(1)
    for value in ROWS:
        observe_rows(value)
    for step in (1, 1, -1, 1, -1):
        flight(step)
    return generate_latest(metrics.registry)


def without_created(exposition: bytes) -> list[str]:
    return [line for line in exposition.decode().splitlines() if "_created" not in line]


def test_fast_recorders_expose_the_same_samples_as_the_client_methods():
    fast, slow = record(Metrics(), fast=True), record(Metrics(), fast=False)
    assert without_created(fast) == without_created(slow)
    assert 'mdn_request_duration_seconds_bucket{code="OK",le="0.001",method="Predict"' in fast.decode()


def test_request_recorders_are_cached_and_count_errors_only_for_errors():
    metrics = Metrics()
    ok = metrics.request_recorders("mdn.v1", "Predict", "arm", "OK")
    assert metrics.request_recorders("mdn.v1", "Predict", "arm", "OK") is ok
    assert ok[2] is None
    observe, count, errors = metrics.request_recorders("mdn.v1", "Predict", "arm", "INVALID_ARGUMENT")
    assert errors is not None
    observe(0.01)
    count(1)
    errors(1)
    labels = {"protocol": "mdn.v1", "method": "Predict", "model": "arm", "code": "INVALID_ARGUMENT"}
    assert metrics.registry.get_sample_value("mdn_request_errors_total", labels) == 1
    assert metrics.registry.get_sample_value("mdn_requests_total", labels) == 1
    assert metrics.registry.get_sample_value("mdn_request_duration_seconds_count", labels) == 1
