"""Explicit model control (Triton's RepositoryModelLoad / RepositoryModelUnload), over gRPC and HTTP,
against a real server on a repository of its own; and under load."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from mdn_serve._proto.inference import grpc_service_pb2 as oip
from mdn_serve._proto.inference import grpc_service_pb2_grpc as oip_grpc
from mdn_serve.config import parse_settings
from mdn_serve.tools.client import MdnClient

from tests.conftest import serve_in_process
from tests.http_client import call
from tests.test_third_party_clients import run_client

ARM, TOY, BROKEN = "two_link_arm", "inverse_sine", "broken"


@pytest.fixture
def repository(trained, tmp_path) -> Path:
    """The test models, plus a model whose only file is not an ONNX graph."""
    root: Path = tmp_path / "models"
    shutil.copytree(trained["models"], root)
    (root / BROKEN / "1").mkdir(parents=True)
    (root / BROKEN / "1" / "model.onnx").write_bytes(b"not an onnx graph")
    return root


def index(stub) -> set[tuple[str, str, str, str]]:
    return {(m.name, m.version, m.state, m.reason) for m in stub.RepositoryIndex(oip.RepositoryIndexRequest()).models}


def test_explicit_mode_loads_unloads_and_refuses_bad_files(repository):
    proc = serve_in_process("--model-repository", str(repository), "--model-control-mode", "explicit",
                            "--load-model", ARM)  # fmt: skip
    try:
        with grpc.insecure_channel(proc.target) as channel:
            stub = oip_grpc.GRPCInferenceServiceStub(channel)
            assert index(stub) == {(ARM, "1", "READY", ""), (TOY, "", "UNAVAILABLE", "not loaded"),
                                   (BROKEN, "", "UNAVAILABLE", "not loaded")}  # fmt: skip
            assert not stub.ModelReady(oip.ModelReadyRequest(name=TOY)).ready
            stub.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name=TOY), timeout=30)
            with MdnClient(proc.target) as client:
                assert client.predict(TOY, [[0.5]]).version == "1"
            # A file that fails is refused with the reason; nothing else changes.
            with pytest.raises(grpc.RpcError) as bad:
                stub.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name=BROKEN), timeout=30)
            assert bad.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "model 'broken' was not loaded (it is not served)" in (bad.value.details() or "")
            assert "ONNX Runtime cannot load it" in (bad.value.details() or "")
            failures = proc.server.metrics.registry.get_sample_value(
                "mdn_model_load_failures_total", {"model": BROKEN, "version": "-"}
            )
            assert failures == 1
            broken = [e for e in index(stub) if e[0] == BROKEN]
            assert len(broken) == 1 and broken[0][2] == "UNAVAILABLE" and "ONNX Runtime" in broken[0][3]
            # A second version on disk: loading the loaded model again picks it up, reusing version 1.
            before = proc.server.dataplane.models().get(TOY, "1")
            shutil.copytree(repository / TOY / "1", repository / TOY / "2")
            stub.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name=TOY), timeout=30)
            assert proc.server.dataplane.models().get(TOY, "1") is before
            assert proc.server.dataplane.models().entry(TOY).version_list == ["1", "2"]
            stub.RepositoryModelUnload(oip.RepositoryModelUnloadRequest(model_name=TOY), timeout=30)
            assert (TOY, "", "UNAVAILABLE", "unloaded") in index(stub)
            for make, code in (
                (lambda: stub.RepositoryModelUnload(oip.RepositoryModelUnloadRequest(model_name=TOY)), "NOT_FOUND"),
                (lambda: stub.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name="../x")), "NOT_FOUND"),
                (
                    lambda: stub.RepositoryModelLoad(
                        oip.RepositoryModelLoadRequest(
                            model_name=TOY, parameters={"config": oip.ModelRepositoryParameter(string_param="{}")}
                        )
                    ),
                    "INVALID_ARGUMENT",
                ),
                (
                    lambda: stub.RepositoryModelLoad(
                        oip.RepositoryModelLoadRequest(model_name=TOY, repository_name="other")
                    ),
                    "NOT_FOUND",
                ),
            ):
                with pytest.raises(grpc.RpcError) as refused:
                    make()
                assert refused.value.code().name == code, refused.value.details()
        # The same over HTTP.
        port = proc.http_port
        assert call(port, "POST", f"/v2/repository/models/{TOY}/load").status == 200
        assert call(port, "GET", f"/v2/models/{TOY}/versions/2/ready").json()["ready"] is True
        assert call(port, "POST", f"/v2/repository/models/{TOY}/unload", {"parameters": {"unload_dependents": False}}
                    ).status == 200  # fmt: skip
        assert call(port, "GET", f"/v2/models/{TOY}/ready").status == 404
        reply = call(port, "POST", f"/v2/repository/models/{BROKEN}/load")
        assert reply.status == 400 and "was not loaded" in reply.json()["error"]
    finally:
        proc.stop()


def test_load_and_unload_need_explicit_mode_and_the_flags_go_together(trained, capsys):
    proc = serve_in_process("--model-repository", str(trained["models"]))
    try:
        reply = call(proc.http_port, "POST", f"/v2/repository/models/{TOY}/unload")
        assert reply.status == 400 and "--model-control-mode explicit" in reply.json()["error"]
        assert call(proc.http_port, "GET", f"/v2/models/{TOY}/ready").status == 200  # still served
    finally:
        proc.stop()
    for argv, message in (
        (["--model-control-mode", "explicit", "--poll-seconds", "5"], "--poll-seconds reloads the whole repository"),
        (["--load-model", TOY], "--load-model goes with --model-control-mode explicit"),
    ):
        with pytest.raises(SystemExit):
            parse_settings(argv, {})
        assert message in capsys.readouterr().err
    assert parse_settings(["--model-control-mode", "explicit"], {"MDN_LOAD_MODEL": "a,b"}).load_model == ("a", "b")
    with pytest.raises(AssertionError, match="no model 'nope'"):
        serve_in_process("--model-repository", str(trained["models"]), "--model-control-mode", "explicit",
                         "--load-model", "nope")  # fmt: skip


def test_unload_drains_admitted_work_and_others_are_untouched_under_load(repository):
    """A long Solve admitted before the unload finishes OK, and the unload returns only after it; a
    steady load on another model sees nothing but OK through loads, reloads and unloads."""
    proc = serve_in_process("--model-repository", str(repository), "--model-control-mode", "explicit",
                            "--load-model", ARM, "--load-model", TOY)  # fmt: skip
    stop = threading.Event()
    codes: dict[str, int] = {}

    def steady() -> None:
        with MdnClient(proc.target, timeout=30) as client:
            while not stop.is_set():
                try:
                    client.predict(TOY, [[0.5]])
                    codes["OK"] = codes.get("OK", 0) + 1
                except grpc.RpcError as exc:
                    codes[exc.code().name] = codes.get(exc.code().name, 0) + 1

    load = threading.Thread(target=steady)
    load.start()
    try:
        targets = np.random.default_rng(1).uniform(0.3, 0.9, (48, 2)).astype(np.float32)
        finished: dict[str, float] = {}

        def long_solve() -> None:
            with MdnClient(proc.target, timeout=60) as client:
                answer = client.solve(ARM, targets, num_samples=1000)
            finished["solve"] = time.monotonic()
            finished["solutions"] = float(sum(answer.num_solutions))

        solver = threading.Thread(target=long_solve)
        solver.start()
        deadline = time.monotonic() + 10
        while (
            not proc.server.dataplane.metrics.registry.get_sample_value(
                "mdn_requests_in_flight", {"protocol": "mdn.v1", "method": "Solve"}
            )
            and time.monotonic() < deadline
        ):
            time.sleep(0.005)
        asked = time.monotonic()
        assert call(proc.http_port, "POST", f"/v2/repository/models/{ARM}/unload").status == 200
        unloaded = time.monotonic()
        solver.join(60)
        assert finished["solutions"] > 0
        assert asked < finished["solve"] <= unloaded + 0.05  # the Solve was still running, and drained first
        with MdnClient(proc.target, timeout=10) as client, pytest.raises(grpc.RpcError) as gone:
            client.predict(ARM, [[0.6, 0.6]])
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        for _ in range(3):  # load, reload (unchanged: kept), unload and load again, all beside the steady load
            assert call(proc.http_port, "POST", f"/v2/repository/models/{ARM}/load").status == 200
            assert call(proc.http_port, "POST", f"/v2/repository/models/{TOY}/load").status == 200
        time.sleep(0.2)
    finally:
        stop.set()
        load.join(30)
        proc.stop()
    assert set(codes) == {"OK"} and codes["OK"] > 20


def test_triton_clients_load_and_unload(repository):
    proc = serve_in_process("--model-repository", str(repository), "--model-control-mode", "explicit")
    try:
        report = run_client("triton_control_check.py", proc.target, f"127.0.0.1:{proc.http_port}", TOY, BROKEN)
    finally:
        proc.stop()
    for kind, not_found, failed in (("grpc", "StatusCode.NOT_FOUND", "StatusCode.FAILED_PRECONDITION"),
                                    ("http", "404", "400")):  # fmt: skip
        ready_before, loaded, ready, listed, unloaded, ready_after, broken, unknown = report[kind]
        assert (ready_before, loaded, ready, unloaded, ready_after) == (False, "OK", True, "OK", False), kind
        assert [TOY, "READY"] in listed and [ARM, "UNAVAILABLE"] in listed
        assert broken.startswith(f"{failed}: model 'broken' was not loaded"), broken
        assert unknown.startswith(f"{not_found}: no model 'no_such_model'"), unknown
