"""Clients nobody here wrote, against the real server: Triton's Python clients, gRPC and HTTP (and Node's grpc-js
when present)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mdn_serve.tools.client import MdnClient

REPO = Path(__file__).resolve().parents[1]
CLIENTS_PYTHON = Path(os.environ.get("MDN_CLIENTS_PYTHON", REPO / ".venv-clients" / "bin" / "python"))
ARM = "two_link_arm"


def run_client(script: str, *args: str) -> dict[str, Any]:
    """Run one of tests/clients/ in the third-party clients' environment; the JSON report it prints."""
    if not CLIENTS_PYTHON.exists():
        pytest.fail(f"{CLIENTS_PYTHON} is missing: `make install` builds the third-party clients environment")
    result = subprocess.run([str(CLIENTS_PYTHON), str(REPO / "tests" / "clients" / script), *args],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.fixture(scope="module")
def triton_report(server) -> dict[str, Any]:
    return run_client("triton_check.py", server.target, ARM)


def test_triton_client_sees_a_live_ready_server_and_its_model(triton_report):
    r = triton_report
    assert (r["live"], r["ready"], r["model_ready"], r["unknown_model_ready"]) == (True, True, True, False)
    assert r["server"]["name"] == "mdn-serve"
    assert r["model"]["platform"] == "onnx_onnxv1" and r["model"]["versions"] == ["1"]
    assert r["model"]["inputs"] == [["x", "FP32", ["-1", "2"]]]
    assert set(r["model"]["outputs"]) >= {"weights", "means", "scales", "samples", "modes", "num_modes"}


def test_triton_client_reads_the_model_configuration_with_the_arms_kinematics(triton_report):
    config = triton_report["config"]
    assert config["max_batch_size"] == 64  # the test server's --max-rows
    assert config["inputs"] == [["x", "TYPE_FP32", ["2"], False], ["seed_state", "TYPE_FP32", ["2"], True]]
    params = config["parameters"]
    assert params["ik_target_layout"] == "planar" and params["ik_target_columns"] == "x,y"
    assert params["joint_types"] == "revolute,revolute" and params["base_link"] == "base"
    assert json.loads(params["mdn_metadata"])["name"] == ARM
    assert len(params["joint_lower"].split(",")) == 2


def test_triton_inference_matches_mdn_v1(server, triton_report):
    x = np.array([[0.6, 0.6], [0.9, 0.3]], np.float32)
    client = MdnClient(server.target)
    predicted = client.predict(ARM, x)
    d = triton_report["default"]
    assert triton_report["default_id"] == "triton-1" and triton_report["default_version"] == "1"
    for name in ("weights", "means", "scales"):
        assert d[name]["dtype"] == "float32"
        np.testing.assert_array_equal(np.array(d[name]["values"], np.float32), getattr(predicted, name))

    c = triton_report["chosen"]
    assert triton_report["chosen_outputs"] == ["samples", "modes", "mode_mass", "num_modes"]
    samples = client.sample(ARM, x, 20, seed=5, temperature=0.5).samples
    np.testing.assert_array_equal(np.array(c["samples"]["values"], np.float32), samples)
    modes = client.modes(ARM, x, max_modes=2)
    assert c["num_modes"]["dtype"] == "int32" and c["num_modes"]["values"] == modes.num_modes
    np.testing.assert_array_equal(np.array(c["modes"]["values"], np.float32), np.nan_to_num(modes.modes, nan=-999))


def test_triton_client_reads_model_statistics(triton_report):
    """Triton's statistics extension: the check's two inferences of two rows each, counted."""
    assert "statistics" in triton_report["server"]["extensions"]

    def stats(key: str) -> Any:
        (entry,) = triton_report[key]["model_stats"]
        assert (entry["name"], entry["version"]) == (ARM, "1")
        return entry

    before, after = stats("stats_before"), stats("stats_after")

    def grew(*path: str) -> int:
        def get(d: Any) -> int:
            for key in path:
                d = d.get(key, {})
            return int(d or 0)  # proto3 JSON leaves zeros out

        return get(after) - get(before)

    assert grew("inference_count") == 4 and grew("inference_stats", "success", "count") == 2
    for stage in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert grew("inference_stats", stage, "count") == 2, stage
        assert grew("inference_stats", stage, "ns") > 0, stage
    assert grew("execution_count") >= 1 and int(after["last_inference"]) > 0
    assert triton_report["stats_unknown_model"]["status"] == "StatusCode.NOT_FOUND"


def test_triton_client_reads_the_repository_index(triton_report):
    models = {(m["name"], m["version"], m["state"]) for m in triton_report["index"]["models"]}
    assert models == {(ARM, "1", "READY"), ("inverse_sine", "1", "READY")}


def test_triton_client_gets_our_error_statuses(triton_report):
    assert triton_report["wrong_shape"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "takes 2 input column(s)" in triton_report["wrong_shape"]["message"]
    assert triton_report["unknown_model"]["status"] == "StatusCode.NOT_FOUND"
    assert triton_report["unknown_output"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "unknown output 'logits'" in triton_report["unknown_output"]["message"]


@pytest.fixture(scope="module")
def triton_http_report(server) -> dict[str, Any]:
    """What tritonclient.http saw against the HTTP/REST endpoint (JSON and binary tensors)."""
    return run_client("triton_http_check.py", f"127.0.0.1:{server.http_port}", ARM)


def test_triton_http_client_sees_the_server_model_and_configuration(triton_http_report):
    r = triton_http_report
    assert (r["live"], r["ready"], r["model_ready"], r["unknown_model_ready"]) == (True, True, True, False)
    assert r["server"]["name"] == "mdn-serve" and "binary_tensor_data" in r["server"]["extensions"]
    assert r["model"]["platform"] == "onnx_onnxv1" and r["model"]["inputs"] == [["x", "FP32", [-1, 2]]]
    assert r["config"]["max_batch_size"] == 64
    assert r["config"]["inputs"] == [["x", "TYPE_FP32", [2], False], ["seed_state", "TYPE_FP32", [2], True]]
    assert r["config"]["parameters"]["ik_target_layout"] == "planar"


@pytest.mark.parametrize("encoding", ["json", "binary"])
def test_triton_http_inference_matches_mdn_v1(server, triton_http_report, encoding):
    r = triton_http_report
    x = np.array([[0.6, 0.6], [0.9, 0.3]], np.float32)
    assert r[f"default_{encoding}_response"] == {
        "id": f"triton-http-{encoding}",
        "model_name": ARM,
        "model_version": "1",
    }
    with MdnClient(server.target) as client:
        predicted = client.predict(ARM, x)
        samples = client.sample(ARM, x, 20, seed=5, temperature=0.5).samples
        modes = client.modes(ARM, x, max_modes=2)
        solved = client.solve(ARM, x, seed=3)
    d = r[f"default_{encoding}"]
    for name in ("weights", "means", "scales"):
        assert d[name]["dtype"] == "float32"
        np.testing.assert_array_equal(np.array(d[name]["values"], np.float32), getattr(predicted, name))
    c = r[f"chosen_{encoding}"]
    assert r[f"chosen_{encoding}_outputs"] == [[n, encoding == "binary"] for n in c]  # binary exactly when asked
    np.testing.assert_array_equal(np.array(c["samples"]["values"], np.float32), samples)
    np.testing.assert_array_equal(np.array(c["modes"]["values"], np.float32), np.nan_to_num(modes.modes, nan=-999))
    assert c["num_modes"]["dtype"] == "int32" and c["num_modes"]["values"] == modes.num_modes
    np.testing.assert_array_equal(
        np.array(c["ik_solutions"]["values"], np.float32), np.nan_to_num(solved.solutions, nan=-999)
    )
    assert c["ik_num_solutions"]["values"] == solved.num_solutions and c["ik_status"]["values"] == list(solved.status)


def test_triton_http_client_reads_statistics_index_and_errors(triton_http_report):
    r = triton_http_report
    (before,), (after,) = r["stats_before"]["model_stats"], r["stats_after"]["model_stats"]
    assert after["inference_count"] - before["inference_count"] == 4 * 2  # four inferences of two rows
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 4
    assert {(m["name"], m["state"]) for m in r["index"]} == {(ARM, "READY"), ("inverse_sine", "READY")}
    assert r["wrong_shape"]["status"] == "400" and "takes 2 input column(s)" in r["wrong_shape"]["message"]
    assert r["unknown_model"]["status"] == "404" and r["stats_unknown_model"]["status"] == "404"
    assert r["unknown_output"]["status"] == "400" and "unknown output 'logits'" in r["unknown_output"]["message"]


def test_kserve_rest_client_infers_with_json_and_binary_tensors(server):
    """KServe's own REST client (Open Inference Protocol v2) against the HTTP endpoint."""
    report = run_client("kserve_http_check.py", f"127.0.0.1:{server.http_port}", ARM)
    assert (report["live"], report["ready"], report["model_ready"]) == (True, True, True)
    x = np.array([[0.6, 0.6], [0.9, 0.3]], np.float32)
    with MdnClient(server.target) as client:
        predicted = client.predict(ARM, x)
        modes = client.modes(ARM, x, max_modes=2)
    for encoding in ("json", "binary"):
        got = report[encoding]
        assert got["id"] == f"kserve-{encoding == 'binary'}"
        np.testing.assert_array_equal(np.array(got["outputs"]["weights"], np.float32), predicted.weights)
        np.testing.assert_array_equal(
            np.array(got["outputs"]["modes"], np.float32), np.nan_to_num(modes.modes, nan=-999)
        )
        assert got["outputs"]["num_modes"] == modes.num_modes


NODE_DIR = REPO / "tests" / "clients" / "node"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed on this machine")
def test_node_grpc_js_client_calls_model_infer(server):
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail(f"{NODE_DIR}/node_modules is missing: `make install` runs npm ci there when node is present")
    result = subprocess.run(
        [
            "node",
            str(NODE_DIR / "oip_check.js"),
            server.target,
            ARM,
            str(REPO / "proto" / "inference" / "grpc_service.proto"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    r = json.loads(result.stdout)
    assert (r["ready"], r["platform"], r["id"], r["version"]) == (True, "onnx_onnxv1", "node-1", "1")
    assert r["outputs"] == [
        {"name": "means", "datatype": "FP32", "shape": [2, 3, 2]},
        {"name": "num_modes", "datatype": "INT32", "shape": [2]},
    ]
    x = np.array([[0.6, 0.6], [0.9, 0.3]], np.float32)
    client = MdnClient(server.target)
    np.testing.assert_array_equal(np.array(r["means"], np.float32), client.predict(ARM, x).means.ravel())
    assert r["num_modes"] == client.modes(ARM, x).num_modes
    assert r["unknown_model_code"] == 5  # NOT_FOUND
