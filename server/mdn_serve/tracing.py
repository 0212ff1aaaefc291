"""Distributed tracing with OpenTelemetry: opt-in, exported over OTLP, nothing loaded when off.

On with --tracing, or with the standard variables (OTEL_EXPORTER_OTLP_ENDPOINT,
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, or OTEL_TRACES_EXPORTER=otlp); OTEL_SDK_DISABLED=true or
OTEL_TRACES_EXPORTER=none keep it off. The SDK reads the rest of its configuration (endpoint,
headers, sampler, batch sizes, service name) from the OTEL_* variables as usual.

Each request (health and readiness excepted) gets a SERVER span that continues the caller's trace
(W3C `traceparent` from gRPC metadata or HTTP headers), with child spans made afterwards from what
the batcher stamped (serving.trace): queue wait, stacking the batch's inputs, the ONNX Runtime
call, and the post-processing (samples, modes, IK refinement) when the batch had any.
When tracing is off the adapters hold None and skip all of it; the SDK is not even imported.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mdn_serve import __version__
from mdn_serve.config import Settings
from mdn_serve.errors import MdnError
from mdn_serve.serving.trace import CURRENT, RequestTrace

UNTRACED = frozenset({"ServerLive", "ServerReady", "ModelReady"})  # health and readiness


def wanted(settings: Settings, env: Mapping[str, str]) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return settings.tracing or exporter == "otlp" or any(env.get(name) for name in endpoints)


@dataclass
class Active:
    """One request's span while it runs."""

    span: Any
    trace: RequestTrace
    token: Any


class Tracer:
    """Starts and ends the request spans; built by `create` only when tracing is on."""

    def __init__(self, provider: Any, propagate: Any, api: Any) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("mdn_serve", __version__)
        self._propagate, self._api = propagate, api  # opentelemetry.propagate and opentelemetry.trace

    def begin(self, name: str, carrier: Mapping[str, str], attributes: dict[str, Any]) -> Active:
        """A SERVER span continuing the caller's trace; the request's RequestTrace becomes CURRENT."""
        parent = self._propagate.extract(carrier)
        span = self._tracer.start_span(name, context=parent, kind=self._api.SpanKind.SERVER, attributes=attributes)
        trace = RequestTrace()
        return Active(span, trace, CURRENT.set(trace))

    def end(self, active: Active, code: str, extra: dict[str, Any] | None = None) -> None:
        """The request's outcome; the batcher's stamps become child spans."""
        CURRENT.reset(active.token)
        span, trace = active.span, active.trace
        if not span.is_recording():  # not sampled (OTEL_TRACES_SAMPLER): nothing to add
            span.end()
            return
        if trace.model:
            span.set_attributes({"mdn.model": trace.model, "mdn.model_version": trace.version, "mdn.rows": trace.rows})
        if extra:
            span.set_attributes(extra)
        if trace.done:
            span.set_attributes({"mdn.batch_rows": trace.batch_rows, "mdn.batch_requests": trace.batch_requests})
            self._children(span, trace)
        span.set_attribute("mdn.code", code)
        if code != "OK":
            span.set_status(self._api.Status(self._api.StatusCode.ERROR, code))
        span.end()

    def _children(self, span: Any, trace: RequestTrace) -> None:
        offset = time.time_ns() - time.perf_counter_ns()  # the stamps' clock to the epoch
        context = self._api.set_span_in_context(span)
        stages = [("queue", trace.enqueued, trace.taken), ("compute input", trace.taken, trace.stacked),
                  ("onnxruntime", trace.infer_start, trace.infer_end)]  # fmt: skip
        if trace.postprocessed:
            stages.append(("postprocess", trace.infer_end, trace.done))
        attributes = {"mdn.model": trace.model, "mdn.model_version": trace.version, "mdn.batch_rows": trace.batch_rows}
        for name, start, end in stages:
            if start and end >= start:
                child = self._tracer.start_span(name, context=context, start_time=start + offset, attributes=attributes)
                child.end(end_time=end + offset)

    def shutdown(self) -> None:
        """Export what is buffered and stop (blocking: call it off the event loop)."""
        self.provider.shutdown()


def endpoint(env: Mapping[str, str] | None = None) -> str:
    """Where the OTLP exporter sends spans, as the SDK picks it."""
    environment = os.environ if env is None else env
    return (
        environment.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environment.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or "localhost:4317 (the default)"
    )


def create(settings: Settings, env: Mapping[str, str] | None = None) -> Tracer | None:
    """A Tracer exporting over OTLP when tracing is wanted, else None."""
    environment = os.environ if env is None else env
    if not wanted(settings, environment):
        return None
    try:
        from opentelemetry import propagate, trace
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise MdnError(
            "tracing is on (--tracing or OTEL_* variables) but the OpenTelemetry SDK is not installed: "
            "pip install 'mdn-serve[tracing]'"
        ) from None
    attributes = {"service.version": __version__}
    if "OTEL_SERVICE_NAME" not in environment:
        attributes["service.name"] = "mdn-serve"
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return Tracer(provider, propagate, trace)
