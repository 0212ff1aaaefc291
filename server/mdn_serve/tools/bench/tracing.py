"""The cost of tracing, measured: the headline point on a server that traces every request and
exports the spans over OTLP to a local sink, against the same point with tracing off (the
default server) in the same run. Skipped where the OpenTelemetry packages are not installed."""

from __future__ import annotations

import importlib.util
from typing import Any

from mdn_serve.tools.bench.ceilings import Placement


def available() -> bool:
    """Whether the server can trace here (the `tracing` extra) and the sink can be built."""
    return all(importlib.util.find_spec(m) is not None for m in ("opentelemetry.sdk", "opentelemetry.proto"))


def serve_sink(port_queue: Any, placement: Placement) -> None:
    """An OTLP/gRPC trace receiver that counts the spans it is sent and keeps nothing."""
    placement.enter_server()
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    class Sink(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Sink(), server)  # type: ignore[no-untyped-call]
    port_queue.put(server.add_insecure_port("127.0.0.1:0"))
    server.start()
    server.wait_for_termination()
