"""`--workers N`: several processes on one port, one metrics scrape for all, restarts, clean stop."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.request

import grpc
import numpy as np
from mdn_serve._proto.mdn.v1 import mdn_pb2 as pb
from mdn_serve._proto.mdn.v1 import mdn_pb2_grpc as pb_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import start_server, stop_server

REQUEST = pb.PredictRequest(
    model=pb.ModelRef(name="two_link_arm"), inputs=pb.Tensor(shape=[1, 2], raw=np.array([0.6, 0.6], "<f4").tobytes())
)


def workers_of(pid: int) -> set[int]:
    children = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    stat = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                children.add(int(entry))
    return children


def predict_on_fresh_connections(target: str, count: int) -> None:
    """Separate channels (connections): SO_REUSEPORT spreads connections over the workers."""
    for i in range(count):
        options = [("grpc.use_local_subchannel_pool", 1), ("test.connection", i)]
        with grpc.insecure_channel(target, options=options) as channel:
            # wait_for_ready: a connection that lands on a worker as it dies is retried, as clients should.
            reply = pb_grpc.MixtureDensityServiceStub(channel).Predict(REQUEST, timeout=10, wait_for_ready=True)
            assert list(reply.weights.shape) == [1, 3]


def predicts_counted(metrics_port: int, method: str = "Predict", protocol: str = "mdn.v1") -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    total = 0.0
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            labels = s.labels
            if s.name == "mdn_requests_total" and labels.get("method") == method and labels["code"] == "OK":
                total += s.value if labels.get("protocol") == protocol else 0.0
    return total


def test_workers_share_the_port_and_one_scrape_counts_them_all(trained, tmp_path):
    proc = start_server(tmp_path / "log", "--model-repository", str(trained["models"]), "--workers", "2",
                        wait_for="with 2 workers")  # fmt: skip
    try:
        pids = workers_of(proc.process.pid)
        assert len(pids) == 2
        predict_on_fresh_connections(proc.target, 40)
        assert predicts_counted(proc.metrics_port) == 40
        log = proc.log()
        served_by = {pid for pid in pids if f"[{pid}]: SERVING" in log}
        assert served_by == pids  # both workers loaded the models and serve
        # The HTTP port is shared the same way (a fresh connection per request), and the one scrape counts
        # the HTTP requests of every worker.
        http_port = int(re.search(r"HTTP/REST on [^ ]+:(\d+) \(2 workers\)", log).group(1))  # type: ignore[union-attr]
        body = json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [0.6, 0.6]}]}).encode()
        for _ in range(20):
            request = urllib.request.Request(f"http://127.0.0.1:{http_port}/v2/models/two_link_arm/infer", data=body)
            with urllib.request.urlopen(request, timeout=10) as reply:
                assert json.loads(reply.read())["model_name"] == "two_link_arm"
        assert predicts_counted(proc.metrics_port, "ModelInfer", "oip-http") == 20  # both workers' HTTP requests

        # A worker that dies is replaced; the other keeps serving meanwhile.
        victim = sorted(pids)[0]
        os.kill(victim, signal.SIGKILL)
        predict_on_fresh_connections(proc.target, 10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
            len(workers_of(proc.process.pid)) == 2 and "restarting" in proc.log()
        ):
            time.sleep(0.1)
        replaced = workers_of(proc.process.pid)
        assert len(replaced) == 2 and victim not in replaced
        while time.monotonic() < deadline and proc.log().count(": SERVING 2 model(s)") < 3:
            time.sleep(0.1)
        predict_on_fresh_connections(proc.target, 10)
    finally:
        assert stop_server(proc) == 0, proc.log()
    assert not workers_of(proc.process.pid)
    assert "worker 0 (pid" in proc.log() and "stopped" in proc.log()


def test_a_worker_that_cannot_start_fails_the_server(tmp_path):
    proc_log = tmp_path / "log"
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "mdn_serve.cli", "--model-repository", str(tmp_path / "empty"), "--workers", "2",
         "--port", "0", "--http-port", "0", "--metrics-port", "-1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    proc_log.write_text(result.stderr)
    assert result.returncode == 1
    assert "failed to start" in result.stderr and "is not a folder" in result.stderr


def test_pinned_workers_each_get_a_cpu_of_their_own(trained, tmp_path):
    usable = sorted(os.sched_getaffinity(0))
    proc = start_server(tmp_path / "log", "--model-repository", str(trained["models"]), "--workers", "2",
                        "--pin-workers", wait_for="with 2 workers")  # fmt: skip
    try:
        pins = [os.sched_getaffinity(pid) for pid in sorted(workers_of(proc.process.pid))]
        assert all(len(cpus) == 1 and cpus <= set(usable) for cpus in pins)
        if len(usable) >= 2:
            assert pins[0] != pins[1]
        assert "CPU" in proc.log()
        predict_on_fresh_connections(proc.target, 4)
    finally:
        assert stop_server(proc) == 0, proc.log()


def test_a_single_pinned_server_runs_on_one_cpu(trained, tmp_path):
    proc = start_server(tmp_path / "log", "--model-repository", str(trained["models"]), "--pin-workers")
    try:
        assert len(os.sched_getaffinity(proc.process.pid)) == 1
        assert "pinned to CPU" in proc.log()
        predict_on_fresh_connections(proc.target, 2)
    finally:
        assert stop_server(proc) == 0, proc.log()
