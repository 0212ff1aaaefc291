"""Hot reload on SIGHUP and by polling: new versions in, removed ones out, bad files refused, no request lost."""

from __future__ import annotations

import shutil
import signal
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from mdn_serve._proto.inference import grpc_service_pb2 as oip
from mdn_serve._proto.inference import grpc_service_pb2_grpc as oip_grpc
from mdn_serve.tools.client import MdnClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import serve_in_process, start_server, stop_server


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def metric(port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(s.value for f in text_string_to_metric_families(body) for s in f.samples if s.name == name)


class Load:
    """Clients predicting all along; every answer must be OK."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.codes: list[str] = []
        self.versions: set[str] = set()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run) for _ in range(3)]

    def run(self) -> None:
        with MdnClient(self.target, timeout=10) as client:
            while not self.stop.is_set():
                try:
                    result = client.predict("two_link_arm", np.full((4, 2), 0.6, np.float32))
                    self.codes.append("OK")
                    self.versions.add(result.version)
                except grpc.RpcError as exc:
                    self.codes.append(exc.code().name)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


def test_sighup_swaps_versions_under_load_and_refuses_bad_files(trained, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(trained["models"] / "two_link_arm", repo / "two_link_arm")
    source = repo / "two_link_arm" / "1" / "model.onnx"
    proc = start_server(tmp_path / "log", "--model-repository", str(repo))
    client = MdnClient(proc.target, timeout=10)
    try:
        with Load(proc.target) as load:
            wait_for(lambda: len(load.codes) > 20)  # version 1 answering under load
            # A new version appears: loaded and warmed, then it answers for the latest.
            (repo / "two_link_arm" / "2").mkdir()
            shutil.copy(source, repo / "two_link_arm" / "2" / "model.onnx")
            proc.process.send_signal(signal.SIGHUP)
            wait_for(lambda: client.get_model("two_link_arm").version == "2")
            assert client.get_model("two_link_arm").versions == ["1", "2"]

            # A half-written file is refused with a log line and a metric; version 2 keeps serving.
            (repo / "two_link_arm" / "3").mkdir()
            (repo / "two_link_arm" / "3" / "model.onnx").write_bytes(source.read_bytes()[:1000])
            proc.process.send_signal(signal.SIGHUP)
            wait_for(lambda: metric(proc.metrics_port, "mdn_model_load_failures_total") >= 1)
            assert client.get_model("two_link_arm").version == "2"
            assert "not serving two_link_arm version 3" in proc.log()
            with grpc.insecure_channel(proc.target) as channel:  # the index says which and why
                index = oip_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(oip.RepositoryIndexRequest())
            states = {m.version: (m.state, m.reason) for m in index.models}
            assert states["1"] == states["2"] == ("READY", "")
            assert states["3"][0] == "UNAVAILABLE" and "model.onnx" in states["3"][1]

            # Removed versions go away; the rest carries on.
            shutil.rmtree(repo / "two_link_arm" / "1")
            shutil.rmtree(repo / "two_link_arm" / "3")
            proc.process.send_signal(signal.SIGHUP)
            wait_for(lambda: client.get_model("two_link_arm").versions == ["2"])
            with pytest.raises(grpc.RpcError) as info:
                client.predict("two_link_arm", [[0.6, 0.6]], version="1")
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            time.sleep(0.3)
        assert load.codes and set(load.codes) == {"OK"}  # not one request lost across three reloads
        assert load.versions == {"1", "2"}
    finally:
        client.close()
        assert stop_server(proc) == 0


def test_polling_picks_up_new_versions_without_a_signal(trained, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(trained["models"] / "two_link_arm", repo / "two_link_arm")
    proc = serve_in_process("--model-repository", str(repo), "--poll-seconds", "0.2")
    try:
        with MdnClient(proc.target, timeout=10) as client:
            time.sleep(0.7)  # several polls that find nothing new: not logged at INFO
            assert "repository reloaded" not in proc.log()
            shutil.copytree(repo / "two_link_arm" / "1", repo / "two_link_arm" / "7")
            wait_for(lambda: client.get_model("two_link_arm").version == "7")
            assert client.predict("two_link_arm", [[0.6, 0.6]]).version == "7"
            time.sleep(0.7)
            assert proc.log().count("repository reloaded") == 1  # the one change, once
    finally:
        proc.stop()
