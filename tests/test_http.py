"""The Open Inference Protocol over HTTP/REST: endpoints, answers and errors, real HTTP over a socket,
against the same server as gRPC."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from mdn_serve.tools.client import MdnClient

from tests.http_client import ARM, X, arrays, call, infer_body


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
