"""OpenTelemetry tracing, end to end: spans sent over OTLP to a real receiver started here (built from
the OpenTelemetry protocol's own service definitions), continuing the caller's trace."""

from __future__ import annotations

import secrets
import threading
import time
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import pytest
from mdn_serve.config import Settings
from mdn_serve.tools.client import MdnClient
from mdn_serve.tracing import wanted
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.conftest import serve_in_process
from tests.http_client import call, infer_body

ARM = "two_link_arm"


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver keeping every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.resources: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:
        with self.lock:
            for resource_spans in request.resource_spans:
                self.resources.append({a.key: a.value.string_value for a in resource_spans.resource.attributes})
                for scope in resource_spans.scope_spans:
                    self.spans.extend(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: bytes, timeout: float = 10.0, count: int = 1) -> list[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [s for s in self.spans if s.trace_id == trace_id]
            if len({s.span_id for s in found if s.kind == s.SPAN_KIND_SERVER}) >= count and len(found) > count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no spans of trace {trace_id.hex()} arrived; got {len(self.spans)} others")


@pytest.fixture
def receiver():
    collector = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield collector, port
    server.stop(0)


def attributes(span: Any) -> dict[str, Any]:
    out = {}
    for a in span.attributes:
        kind = a.value.WhichOneof("value")
        out[a.key] = getattr(a.value, kind) if kind else None
    return out


def test_spans_continue_the_callers_trace_over_grpc_and_http(trained, receiver, monkeypatch):
    collector, port = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    proc = serve_in_process("--model-repository", str(trained["models"]))
    try:
        assert "tracing on: OpenTelemetry spans over OTLP" in proc.log()
        trace_id, parent = secrets.token_bytes(16), secrets.token_bytes(8)
        traceparent = f"00-{trace_id.hex()}-{parent.hex()}-01"
        x = np.array([[0.6, 0.6], [0.9, 0.3]], np.float32)
        with grpc.insecure_channel(proc.target) as channel:
            from mdn_serve._proto.mdn.v1 import mdn_pb2 as pb
            from mdn_serve._proto.mdn.v1 import mdn_pb2_grpc as pb_grpc

            request = pb.SolveRequest(model=pb.ModelRef(name=ARM), targets=pb.Tensor(
                shape=[2, 2], raw=x.astype("<f4").tobytes()))  # fmt: skip
            pb_grpc.InverseKinematicsServiceStub(channel).Solve(request, metadata=[("traceparent", traceparent)])
        spans = collector.trace(trace_id)
        (root,) = [s for s in spans if s.kind == s.SPAN_KIND_SERVER]
        assert root.name == "mdn.v1.InverseKinematicsService/Solve" and root.parent_span_id == parent
        a = attributes(root)
        assert (a["mdn.model"], a["mdn.model_version"], a["mdn.rows"], a["mdn.code"]) == (ARM, "1", 2, "OK")
        assert a["rpc.system"] == "grpc" and a["rpc.grpc.status_code"] == 0 and a["mdn.batch_rows"] >= 2
        children = {s.name: s for s in spans if s.parent_span_id == root.span_id}
        assert set(children) == {"queue", "compute input", "onnxruntime", "postprocess"}
        for child in children.values():
            assert root.start_time_unix_nano <= child.start_time_unix_nano <= child.end_time_unix_nano
            assert child.end_time_unix_nano <= root.end_time_unix_nano
            assert attributes(child)["mdn.model"] == ARM
        assert children["onnxruntime"].start_time_unix_nano >= children["queue"].end_time_unix_nano
        assert collector.resources[0]["service.name"] == "mdn-serve"

        # HTTP: the traceparent header; an error is an error span; health is not traced.
        trace_id, parent = secrets.token_bytes(16), secrets.token_bytes(8)
        headers = {"traceparent": f"00-{trace_id.hex()}-{parent.hex()}-01"}
        assert call(proc.http_port, "GET", "/v2/health/ready", headers=headers).status == 200
        assert call(proc.http_port, "POST", f"/v2/models/{ARM}/infer", infer_body(), headers).status == 200
        bad = infer_body(np.zeros((1, 3), np.float32))
        assert call(proc.http_port, "POST", f"/v2/models/{ARM}/infer", bad, headers).status == 400
        spans = collector.trace(trace_id, count=2)
        roots = sorted((s for s in spans if s.kind == s.SPAN_KIND_SERVER), key=lambda s: s.start_time_unix_nano)
        assert [s.name for s in roots] == ["POST /v2/models/{model}/infer"] * 2
        assert all(s.parent_span_id == parent for s in roots)
        ok, failed = (attributes(s) for s in roots)
        assert ok["http.response.status_code"] == 200 and ok["mdn.model"] == ARM
        assert failed["http.response.status_code"] == 400 and failed["mdn.code"] == "INVALID_ARGUMENT"
        assert roots[1].status.code == roots[1].status.STATUS_CODE_ERROR
        ok_children = {s.name for s in spans if s.parent_span_id == roots[0].span_id}
        assert ok_children == {"queue", "compute input", "onnxruntime"}  # the mixture only: no post-processing
        with MdnClient(proc.target) as client:  # an untraced caller starts a trace of its own
            client.predict(ARM, [[0.6, 0.6]])
    finally:
        proc.stop()
    assert not any(s.name.endswith(("health/ready", "ServerReady")) for s in collector.spans)


def test_tracing_is_off_unless_asked_for():
    off = Settings()
    assert not wanted(off, {})
    assert wanted(Settings(tracing=True), {})
    assert wanted(off, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert wanted(off, {"OTEL_TRACES_EXPORTER": "otlp"})
    assert not wanted(Settings(tracing=True), {"OTEL_SDK_DISABLED": "true"})
    assert not wanted(off, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_TRACES_EXPORTER": "none"})


def test_a_server_without_tracing_never_imports_the_sdk(trained):
    import subprocess
    import sys

    args = ["--port", "0", "--http-port", "-1", "--model-repository", str(trained["models"])]
    code = (
        "import sys; from mdn_serve.app import create_server; from mdn_serve.config import parse_settings; "
        f"create_server(parse_settings({args!r}, {{}})); "
        "print(any(m.startswith('opentelemetry') for m in sys.modules))"
    )
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.stdout.strip() == "False", out.stderr
