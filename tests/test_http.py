"""The Open Inference Protocol over HTTP/REST: real HTTP over a socket, against the same server as gRPC."""

from __future__ import annotations

import http.client
import json
import ssl
import struct
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from mdn_serve.tools.client import MdnClient

from tests.conftest import serve_in_process

ARM = "two_link_arm"
X = np.array([[0.6, 0.6], [0.9, 0.3]], np.float32)


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    port: int,
    method: str,
    path: str,
    body: bytes | object | None = None,
    headers: Mapping[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> Reply:
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
    if context is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=context)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def infer_body(x: np.ndarray = X, outputs: list[str] | None = None, **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                        "data": x.ravel().tolist()}]}  # fmt: skip
    if outputs:
        body["outputs"] = [{"name": n} for n in outputs]
    if params:
        body["parameters"] = params
    return body


def arrays(reply: Reply) -> dict[str, np.ndarray]:
    """A JSON or binary infer answer's outputs as numpy arrays (JSON null -> NaN)."""
    header_length = reply.headers.get("inference-header-content-length")
    text, blob = (reply.body, b"") if header_length is None else (
        reply.body[: int(header_length)], reply.body[int(header_length):])  # fmt: skip
    document = json.loads(text)
    out: dict[str, np.ndarray] = {}
    offset = 0
    for o in document["outputs"]:
        size = o.get("parameters", {}).get("binary_data_size")
        if size is None:
            dtype = np.int32 if o["datatype"] == "INT32" else (object if o["datatype"] == "BYTES" else np.float32)
            values = [np.nan if v is None else v for v in o["data"]] if dtype is np.float32 else o["data"]
            out[o["name"]] = np.array(values, dtype=dtype).reshape(o["shape"])
            continue
        raw = blob[offset : offset + size]
        offset += size
        if o["datatype"] == "BYTES":
            items, i = [], 0
            while i < len(raw):
                (n,) = struct.unpack_from("<I", raw, i)
                items.append(raw[i + 4 : i + 4 + n].decode())
                i += 4 + n
            out[o["name"]] = np.array(items, dtype=object).reshape(o["shape"])
        else:
            dtype = np.int32 if o["datatype"] == "INT32" else np.float32
            out[o["name"]] = np.frombuffer(raw, dtype=dtype).reshape(o["shape"])
    assert offset == len(blob)
    return out


def test_health_metadata_and_model_endpoints(server):
    port = server.http_port
    assert call(port, "GET", "/v2/health/live").json() == {"live": True}
    assert call(port, "GET", "/v2/health/ready").json() == {"ready": True}
    meta = call(port, "GET", "/v2").json()
    assert meta["name"] == "mdn-serve" and "binary_tensor_data" in meta["extensions"]
    for path in (f"/v2/models/{ARM}", f"/v2/models/{ARM}/versions/1"):
        model = call(port, "GET", path).json()
        assert model["platform"] == "onnx_onnxv1" and model["versions"] == ["1"]
        assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]
        assert call(port, "GET", path + "/ready").json()["ready"] is True
        config = call(port, "GET", path + "/config").json()
        assert config["max_batch_size"] == 64 and config["input"][0]["dims"] == [2]
        assert config["parameters"]["joint_types"]["string_value"] == "revolute,revolute"
    missing = call(port, "GET", "/v2/models/no_such_model/ready")
    assert missing.status == 404 and "unknown model 'no_such_model'" in missing.json()["error"]
    assert call(port, "GET", f"/v2/models/{ARM}/versions/7").status == 404
    index = call(port, "POST", "/v2/repository/index", {"ready": True}).json()
    assert {(m["name"], m["state"]) for m in index} == {(ARM, "READY"), ("inverse_sine", "READY")}


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_matches_the_grpc_answers(server, binary):
    """Every family of outputs (mixture, seeded samples, modes, IK with its BYTES status), JSON or binary,
    equals what gRPC answers: floats survive JSON exactly (each is written at its float32 shortest form)."""
    names = ["weights", "means", "scales", "samples", "modes", "mode_mass", "num_modes", "ik_solutions",
             "ik_num_solutions", "ik_status"]  # fmt: skip
    body = infer_body(outputs=names, num_samples=7, seed=11, max_modes=2, ik_seed=3)
    body["id"] = "req-1"
    if binary:
        body["parameters"]["binary_data_output"] = True
    reply = call(server.http_port, "POST", f"/v2/models/{ARM}/infer", body)
    assert reply.status == 200, reply.body
    assert reply.headers["content-type"] == ("application/octet-stream" if binary else "application/json")
    got = arrays(reply)
    document = json.loads(reply.body[: int(reply.headers.get("inference-header-content-length", len(reply.body)))])
    assert (document["model_name"], document["model_version"], document["id"]) == (ARM, "1", "req-1")
    assert [o["name"] for o in document["outputs"]] == names
    with MdnClient(server.target) as client:
        predicted = client.predict(ARM, X)
        samples = client.sample(ARM, X, 7, seed=11).samples
        modes = client.modes(ARM, X, max_modes=2)
        solved = client.solve(ARM, X, seed=3)
    for name in ("weights", "means", "scales"):
        np.testing.assert_array_equal(got[name], getattr(predicted, name))
    np.testing.assert_array_equal(got["samples"], samples)
    np.testing.assert_array_equal(got["modes"], modes.modes)
    np.testing.assert_array_equal(got["num_modes"], modes.num_modes)
    np.testing.assert_array_equal(got["ik_solutions"], solved.solutions)
    np.testing.assert_array_equal(got["ik_num_solutions"], solved.num_solutions)
    assert got["ik_status"].tolist() == list(solved.status)


def test_binary_inputs_with_the_header_length(server):
    """Triton's binary tensor extension on the way in: JSON, then the raw little-endian tensor; one output binary."""
    header = json.dumps({
        "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "parameters": {"binary_data_size": 16}}],
        "outputs": [{"name": "weights", "parameters": {"binary_data": True}}, {"name": "means"}],
    }).encode()  # fmt: skip
    reply = call(server.http_port, "POST", f"/v2/models/{ARM}/infer", header + X.astype("<f4").tobytes(),
                 {"Inference-Header-Content-Length": str(len(header))})  # fmt: skip
    assert reply.status == 200, reply.body
    got = arrays(reply)
    with MdnClient(server.target) as client:
        predicted = client.predict(ARM, X)
    np.testing.assert_array_equal(got["weights"], predicted.weights)
    np.testing.assert_array_equal(got["means"], predicted.means)
    outputs = json.loads(reply.body[: int(reply.headers["inference-header-content-length"])])["outputs"]
    assert [("data" in o, o.get("parameters", {}).get("binary_data_size")) for o in outputs] == [
        (False, 2 * 3 * 4), (True, None)]  # fmt: skip


def _binary(header: dict[str, Any], blob: bytes, length: int | None = None) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(header).encode()
    return text + blob, {"Inference-Header-Content-Length": str(len(text) if length is None else length)}


BAD_REQUESTS = {
    "not JSON": (b'{"inputs": [', {}, "not valid JSON: Expecting value at line 1 column 13"),
    "not an object": (b"[1, 2]", {}, "the request must be a JSON object"),
    "no inputs": (b"{}", {}, "the request needs 'inputs'"),
    "wrong input name": (
        json.dumps({"inputs": [{"name": "y", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}).encode(),
        {},
        "send one input tensor named 'x'",
    ),
    "wrong datatype": (
        json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]}]}).encode(),
        {},
        "unsupported datatype 'INT64' for input 'x'; send FP32",
    ),
    "count vs shape": (
        json.dumps({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2]}]}).encode(),
        {},
        "input 'x' data has 2 values, but shape [2, 2] needs 4",
    ),
    "strings": (
        json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": ["a", "b"]}]}).encode(),
        {},
        "input 'x' data must hold numbers only",
    ),
    "ragged": (
        json.dumps({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3]]}]}).encode(),
        {},
        "input 'x' data is ragged",
    ),
    "wrong columns": (json.dumps(infer_body(np.zeros((1, 3), np.float32))).encode(), {}, "takes 2 input column(s)"),
    "bad parameter": (
        json.dumps(infer_body(outputs=["samples"], num_samples="many")).encode(),
        {},
        "parameter 'num_samples' must be an integer, got 'many'",
    ),
    "binary size": (
        *_binary(
            {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]},
            b"\0" * 8,
        ),
        "binary_data_size is 4, but shape [1, 2] x FP32 (4 bytes each) needs 8",
    ),
    "binary leftover": (
        *_binary(
            {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]},
            b"\0" * 12,
        ),
        "the body has 12 bytes after its JSON, but the inputs' binary_data_size add up to 8",
    ),
    "header length": (*_binary({"inputs": []}, b"", length=10_000), "Inference-Header-Content-Length is '10000'"),
    "binary flag": (
        json.dumps({**infer_body(), "parameters": {"binary_data_output": "yes"}}).encode(),
        {},
        "parameter 'binary_data_output' must be true or false",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_are_400_with_a_message_that_says_what_to_fix(server, case):
    body, headers, message = BAD_REQUESTS[case]
    reply = call(server.http_port, "POST", f"/v2/models/{ARM}/infer", body, headers)
    assert reply.status == 400, reply.body
    assert reply.headers["content-type"] == "application/json"
    assert message in reply.json()["error"]


def test_unknown_paths_models_and_methods(server):
    port = server.http_port
    unknown_path = call(port, "GET", "/v2/nothing/here")
    assert unknown_path.status == 404 and "no such endpoint '/v2/nothing/here'" in unknown_path.json()["error"]
    wrong_method = call(port, "GET", f"/v2/models/{ARM}/infer")
    assert wrong_method.status == 405 and "GET is not allowed" in wrong_method.json()["error"]
    unknown_model = call(port, "POST", "/v2/models/no_such_model/infer", infer_body())
    assert unknown_model.status == 404 and "models: inverse_sine, two_link_arm" in unknown_model.json()["error"]


def test_a_passed_timeout_is_504_and_metrics_label_the_protocol(server):
    """Triton's `timeout` parameter (microseconds) is the request's deadline."""
    big = np.random.default_rng(0).uniform(0.3, 0.9, (64, 2)).astype(np.float32)
    reply = call(server.http_port, "POST", f"/v2/models/{ARM}/infer",
                 infer_body(big, ["ik_solutions"], ik_num_samples=64, timeout=1))  # fmt: skip
    assert reply.status == 504 and "deadline" in reply.json()["error"]
    registry = server.server.metrics.registry
    labels = {"protocol": "oip-http", "method": "ModelInfer", "model": ARM}
    assert (registry.get_sample_value("mdn_requests_total", {**labels, "code": "DEADLINE_EXCEEDED"}) or 0) >= 1
    before = registry.get_sample_value("mdn_requests_total", {**labels, "code": "OK"}) or 0
    assert call(server.http_port, "POST", f"/v2/models/{ARM}/infer", infer_body()).status == 200
    assert registry.get_sample_value("mdn_requests_total", {**labels, "code": "OK"}) == before + 1


def test_statistics_count_http_requests(server):
    def stats() -> Any:
        (entry,) = call(server.http_port, "GET", f"/v2/models/{ARM}/versions/1/stats").json()["model_stats"]
        return entry

    before = stats()
    assert call(server.http_port, "POST", f"/v2/models/{ARM}/infer", infer_body()).status == 200
    after = stats()
    assert after["inference_count"] - before["inference_count"] == 2
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 1
    everything = call(server.http_port, "GET", "/v2/models/stats").json()["model_stats"]
    assert {e["name"] for e in everything} == {ARM, "inverse_sine"}


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
