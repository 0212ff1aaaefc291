"""--io-scheduling: the event loop and gRPC's threads under SCHED_BATCH, the compute threads under the normal policy."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import grpc
import numpy as np
import pytest
from mdn_serve._proto.mdn.v1 import mdn_pb2 as pb
from mdn_serve.config import parse_settings
from mdn_serve.scheduling import (
    COMPUTE_THREAD_NAME,
    compute_thread_started,
    use_io_policy,
    with_compute_policy,
)

from tests.conftest import start_server, stop_server

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux scheduling policies")

T = TypeVar("T")
MODES = "/mdn.v1.MixtureDensityService/Modes"


def in_fresh_thread(fn: Callable[[], T]) -> T:
    """fn() on a thread of its own, so that the policies it sets stay off the test runner's threads."""
    out: list[T] = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join(30)
    assert out, "the thread failed"
    return out[0]


def policy() -> int:
    return os.sched_getscheduler(0)


def comm() -> str:
    return Path("/proc/thread-self/comm").read_text().strip()


def test_the_io_policy_is_inherited_and_compute_threads_go_back_to_the_normal_one() -> None:
    def scenario() -> dict[str, object]:
        use_io_policy("batch")
        seen: dict[str, object] = {"io": policy()}
        child = threading.Thread(target=lambda: seen.update(child=policy()))
        child.start()
        child.join()
        with ThreadPoolExecutor(1, initializer=compute_thread_started) as pool:
            seen["compute"] = pool.submit(lambda: (policy(), comm())).result()
        seen["loader"] = with_compute_policy(policy)()
        return seen

    seen = in_fresh_thread(scenario)
    assert seen == {
        "io": os.SCHED_BATCH,
        "child": os.SCHED_BATCH,
        "compute": (os.SCHED_OTHER, COMPUTE_THREAD_NAME),
        "loader": os.SCHED_OTHER,
    }


def test_normal_is_the_normal_policy_whatever_the_parent_and_a_bad_choice_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def scenario() -> int:
        use_io_policy("batch")
        use_io_policy("normal")  # as a server started by a process under SCHED_BATCH
        return policy()

    assert in_fresh_thread(scenario) == os.SCHED_OTHER
    with pytest.raises(ValueError, match="batch, normal"):
        use_io_policy("fast")
    assert parse_settings([]).io_scheduling == "batch"
    assert parse_settings(["--io-scheduling", "normal"]).io_scheduling == "normal"
    with pytest.raises(SystemExit):
        parse_settings(["--io-scheduling", "fast"])
    assert "invalid choice: 'fast'" in capsys.readouterr().err


def thread_policies(pid: int) -> list[tuple[int, str, int]]:
    """(tid, name, policy) of every thread of process pid."""
    out = []
    for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")):
        name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        out.append((tid, name, os.sched_getscheduler(tid)))
    return out


@pytest.mark.parametrize("choice", ["batch", "normal"])
def test_a_real_servers_threads(trained: dict[str, Path], tmp_path: Path, choice: str) -> None:
    args = ["--model-repository", str(trained["models"]), "--metrics-port", "-1"]
    server = start_server(tmp_path / "server.log", *args, *(["--io-scheduling", choice] if choice != "batch" else []))
    try:
        # More rows than the event loop computes itself: the batch runs on a compute thread.
        x = np.random.default_rng(0).uniform([0.3, 0.3], [0.9, 0.8], (512, 2)).astype("<f4")
        inputs = pb.Tensor(shape=x.shape, raw=x.tobytes())
        request = pb.ModesRequest(model=pb.ModelRef(name="two_link_arm"), inputs=inputs)
        with grpc.insecure_channel(server.target) as channel:
            channel.unary_unary(MODES)(request.SerializeToString(), timeout=30)
        threads = thread_policies(server.process.pid)
    finally:
        assert stop_server(server) == 0
    compute = [p for _, name, p in threads if name == COMPUTE_THREAD_NAME]
    assert compute and set(compute) == {os.SCHED_OTHER}, threads
    event_loop = next(p for tid, _, p in threads if tid == server.process.pid)
    grpc_threads = {p for _, name, p in threads if name.startswith(("event_engine", "grpc"))}
    if choice == "batch":
        assert event_loop == os.SCHED_BATCH and grpc_threads == {os.SCHED_BATCH}, threads
        assert "I/O threads run under SCHED_BATCH" in server.log()
    else:
        assert {p for _, _, p in threads} == {os.SCHED_OTHER}, threads


def test_a_system_that_refuses_the_policy_leaves_a_warning_and_the_server_runs_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(pid: int, policy: int, param: os.sched_param) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)  # as a seccomp profile that forbids the call would

    def scenario() -> int:
        use_io_policy("batch")
        return policy()

    with caplog.at_level("WARNING", logger="mdn_serve.scheduling"):
        assert in_fresh_thread(scenario) == os.SCHED_OTHER
    assert "cannot set this thread's scheduling policy" in caplog.text
    assert "Operation not permitted" in caplog.text
