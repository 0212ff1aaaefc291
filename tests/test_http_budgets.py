"""The HTTP/REST endpoint's lifecycle and budgets: limits on bodies, answers, requests and connections,
TLS and the token, loading and draining, clients that stall or go away."""

from __future__ import annotations

import json
import ssl
import threading
import time

import numpy as np
import pytest

from tests.conftest import serve_in_process
from tests.http_client import ARM, Reply, X, call, infer_body


def test_a_body_over_the_message_limit_is_400(trained):
    proc = serve_in_process("--model-repository", str(trained["models"]), "--max-message-bytes", "4096")
    try:
        x = np.zeros((1000, 2), np.float32)
        reply = call(proc.http_port, "POST", f"/v2/models/{ARM}/infer", infer_body(x))
        assert reply.status == 400
        assert "over this server's limit of 4096 bytes (--max-message-bytes)" in reply.json()["error"]
        # An answer over the limit is refused too, with what to ask instead.
        reply = call(proc.http_port, "POST", f"/v2/models/{ARM}/infer", infer_body(X, ["samples"], num_samples=500))
        assert reply.status == 400 and "binary outputs" in reply.json()["error"]
    finally:
        proc.stop()


def test_tls_and_the_bearer_token_apply_to_http_and_health_stays_open(trained, tmp_path):
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    paths = {n: tmp_path / f"{n}.pem" for n in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    paths["cert"].write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    (tmp_path / "token").write_text("http-token\n")
    proc = serve_in_process("--model-repository", str(trained["models"]), "--tls-cert", str(paths["cert"]),
                            "--tls-key", str(paths["key"]), "--auth-token-file", str(tmp_path / "token"))  # fmt: skip
    try:
        assert f"HTTP/REST on https://127.0.0.1:{proc.http_port}/v2 (TLS, bearer token required)" in proc.log()
        context = ssl.create_default_context(cafile=str(paths["ca"]))
        port, path = proc.http_port, f"/v2/models/{ARM}/infer"
        assert call(port, "GET", "/v2/health/ready", context=context).status == 200
        for token in (None, "Bearer wrong", "http-token"):
            headers = {} if token is None else {"Authorization": token}
            refused = call(port, "POST", path, infer_body(), headers, context=context)
            assert refused.status == 401 and refused.json() == {"error": "missing or wrong bearer token"}
        # Without the token a made-up path is refused like a real one: nothing to enumerate. Model
        # control needs it too.
        assert call(port, "GET", "/v2/made/up", context=context).status == 401
        assert call(port, "POST", f"/v2/repository/models/{ARM}/unload", context=context).status == 401
        ok = call(port, "POST", path, infer_body(), {"Authorization": "Bearer http-token"}, context=context)
        assert ok.status == 200
        with pytest.raises(ssl.SSLError):
            call(port, "GET", "/v2/health/live", context=ssl.create_default_context())  # an untrusted CA
        assert proc.server.metrics.registry.get_sample_value("mdn_unauthenticated_requests_total") == 5
    finally:
        proc.stop()


def test_draining_reports_not_ready_but_keeps_answering_then_refuses(trained):
    """On shutdown with a drain delay: /v2/health/ready is 503 at once, inference still works during the
    drain; the port is closed once the server stops."""
    proc = serve_in_process("--model-repository", str(trained["models"]))
    port = proc.http_port
    stopping = threading.Thread(target=lambda: __import__("asyncio").run_coroutine_threadsafe(
        proc.server.stop(grace=1, drain_delay=1.0), proc.loop).result(30))  # fmt: skip
    stopping.start()
    try:
        deadline = time.monotonic() + 5
        while call(port, "GET", "/v2/health/ready").status == 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        not_ready = call(port, "GET", "/v2/health/ready")
        assert not_ready.status == 503 and not_ready.json() == {"ready": False}
        assert call(port, "POST", f"/v2/models/{ARM}/infer", infer_body()).status == 200
        assert call(port, "GET", "/v2/health/live").status == 200
    finally:
        stopping.join(30)
        proc.loop.call_soon_threadsafe(proc.loop.stop)
        proc.thread.join(30)
    with pytest.raises(ConnectionRefusedError):
        call(port, "GET", "/v2/health/live")


def test_http_is_off_with_port_minus_one(trained):
    proc = serve_in_process("--model-repository", str(trained["models"]), "--http-port", "-1")
    try:
        assert proc.server.http_port is None and "HTTP/REST" not in proc.log()
    finally:
        proc.stop()


def test_a_taken_http_port_stops_start_up_with_the_flag_to_change(server, trained):
    with pytest.raises(AssertionError, match=r"cannot bind HTTP 127\.0\.0\.1:\d+ .*pick another --http-port"):
        serve_in_process("--model-repository", str(trained["models"]), "--http-port", str(server.http_port))


def test_while_models_load_readiness_and_inference_are_503(trained):
    """Between start() and load_models(): live, but not ready, and inference says to retry."""
    import asyncio

    import aiohttp
    from mdn_serve.app import create_server
    from mdn_serve.config import parse_settings

    async def scenario() -> list[tuple[int, str]]:
        args = ["--port", "0", "--http-port", "0", "--metrics-port", "-1", "--model-repository", str(trained["models"])]
        server, _ = create_server(parse_settings(args, {}))
        await server.start()
        base = f"http://127.0.0.1:{server.http_port}"
        seen = []
        try:
            async with aiohttp.ClientSession() as session:
                for method, path, body in (("GET", "/v2/health/live", None), ("GET", "/v2/health/ready", None),
                                           ("POST", f"/v2/models/{ARM}/infer", infer_body())):  # fmt: skip
                    async with session.request(method, base + path, json=body) as reply:
                        seen.append((reply.status, await reply.text()))
        finally:
            await server.stop(0)
        return seen

    live, ready, infer = asyncio.run(scenario())
    assert live[0] == 200 and ready == (503, '{"ready":false}')
    assert infer[0] == 503 and "models are still loading; retry shortly" in infer[1]


def test_a_full_queue_is_429_with_what_to_do(trained):
    """One compute thread, a queue of one: of several long IK requests sent at once, those that find the
    queue full are refused at once with 429."""
    proc = serve_in_process("--model-repository", str(trained["models"]), "--compute-threads", "1",
                            "--max-queue-size", "1")  # fmt: skip
    try:
        targets = np.random.default_rng(2).uniform(0.3, 0.9, (32, 2)).astype(np.float32)
        body = infer_body(targets, ["ik_solutions"], ik_num_samples=2000)
        replies: list[Reply] = []
        threads = [threading.Thread(target=lambda: replies.append(
            call(proc.http_port, "POST", f"/v2/models/{ARM}/infer", body))) for _ in range(6)]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        statuses = sorted(r.status for r in replies)
        assert statuses.count(200) >= 1 and statuses.count(429) >= 1 and set(statuses) <= {200, 429}, statuses
        refused = next(r for r in replies if r.status == 429)
        assert "retry" in refused.json()["error"]
    finally:
        proc.stop()


def test_a_client_that_disconnects_cancels_its_request_and_frees_the_compute_thread(trained):
    import socket

    proc = serve_in_process("--model-repository", str(trained["models"]), "--compute-threads", "1")
    try:
        targets = np.random.default_rng(3).uniform(0.3, 0.9, (64, 2)).astype(np.float32)
        body = json.dumps(infer_body(targets, ["ik_solutions"], ik_num_samples=4000)).encode()
        with socket.create_connection(("127.0.0.1", proc.http_port)) as sock:
            sock.sendall(
                f"POST /v2/models/{ARM}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            time.sleep(0.3)  # the request is computing
        start = time.monotonic()
        assert call(proc.http_port, "POST", f"/v2/models/{ARM}/infer", infer_body()).status == 200
        waited = time.monotonic() - start
        registry = proc.server.metrics.registry
        labels = {"protocol": "oip-http", "method": "ModelInfer", "model": ARM, "code": "CANCELLED"}
        deadline = time.monotonic() + 5
        while registry.get_sample_value("mdn_requests_total", labels) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert registry.get_sample_value("mdn_requests_total", labels) == 1
        assert waited < 1.0, waited  # the abandoned work stopped within a chunk (alone it takes seconds)
    finally:
        proc.stop()


def test_http_requests_at_once_are_bounded_by_max_concurrent_calls(trained):
    proc = serve_in_process("--model-repository", str(trained["models"]), "--max-concurrent-calls", "1")
    try:
        targets = np.random.default_rng(4).uniform(0.3, 0.9, (32, 2)).astype(np.float32)
        slow = infer_body(targets, ["ik_solutions"], ik_num_samples=2000)
        replies: list[Reply] = []
        first = threading.Thread(target=lambda: replies.append(call(proc.http_port, "POST",
                                                                    f"/v2/models/{ARM}/infer", slow)))  # fmt: skip
        first.start()
        deadline = time.monotonic() + 10
        while proc.server.http.calls == 0 and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.005)
        refused = call(proc.http_port, "POST", f"/v2/models/{ARM}/infer", infer_body())
        assert call(proc.http_port, "GET", "/v2/health/ready").status == 200  # health is never refused
        first.join(60)
        assert refused.status == 429 and "--max-concurrent-calls" in refused.json()["error"]
        assert [r.status for r in replies] == [200]
    finally:
        proc.stop()


def test_a_half_sent_body_is_refused_and_its_connection_closed(trained, monkeypatch):
    import socket

    from mdn_serve.protocols.oip_http import server as http_server

    monkeypatch.setattr(http_server, "BODY_TIMEOUT_SECONDS", 0.5)
    proc = serve_in_process("--model-repository", str(trained["models"]))
    try:
        with socket.create_connection(("127.0.0.1", proc.http_port), timeout=10) as sock:
            sock.sendall(f"POST /v2/models/{ARM}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{".encode())
            start = time.monotonic()
            answer = b""
            while b"did not arrive" not in answer and (chunk := sock.recv(4096)):
                answer += chunk
            waited = time.monotonic() - start
        assert answer.startswith(b"HTTP/1.1 400") and b"did not arrive within 0.5 s" in answer
        assert waited < 5  # answered at once (aiohttp then gives the rest of the body at most 10 s)
    finally:
        proc.stop()


def test_http_connections_past_the_cap_are_answered_503_and_closed(trained):
    import socket

    proc = serve_in_process("--model-repository", str(trained["models"]), "--max-http-connections", "2")
    try:
        held = [socket.create_connection(("127.0.0.1", proc.http_port), timeout=10) for _ in range(2)]
        for sock in held:  # two keep-alive connections, each after one request
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        with socket.create_connection(("127.0.0.1", proc.http_port), timeout=10) as third:
            answer = b""
            while chunk := third.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 503") and b"limit of 2 HTTP connections (--max-http-connections)" in answer
        held.pop().close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the server notices the close, then takes a new one
            if call(proc.http_port, "GET", "/v2/health/live").status == 200:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("a connection was not accepted after one closed")
        held.pop().close()
    finally:
        proc.stop()
