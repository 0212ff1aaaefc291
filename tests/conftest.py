"""Shared fixtures: small models trained and exported once per session, and a running server."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# Cases each fuzz test sent, printed at the end of the run.
FUZZ_CASES: dict[str, int] = {}

SMALL = ["--quiet", "--epochs", "4", "--patience", "4", "--hidden", "16,16"]
# Enough training for the arm's modes to land on the analytic branches (about 10 s).
ARM = [
    "--quiet",
    "--num-samples",
    "20000",
    "--epochs",
    "40",
    "--patience",
    "40",
    "--hidden",
    "64,64",
    "--components",
    "3",
]


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """runs/ and models/ with a small inverse_sine and two_link_arm, trained and exported."""
    from mdn_train import export, train

    root = tmp_path_factory.mktemp("trained")
    runs, models = root / "runs", root / "models"
    assert train.main(["--dataset", "inverse_sine", "--num-samples", "2000", "--runs", str(runs), *SMALL]) == 0
    assert train.main(["--dataset", "two_link_arm", "--runs", str(runs), *ARM]) == 0
    assert export.main(["--all", "--runs", str(runs), "--models", str(models)]) == 0
    return {"runs": runs, "models": models}


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int
    metrics_port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text()


def start_server(log_path: Path, *args: str, wait_for: str = "SERVING", timeout: float = 60.0) -> ServerProcess:
    """Run `mdn-serve --port 0 --metrics-port 0 ...` and wait until its log says wait_for."""
    with log_path.open("wb") as handle:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "mdn_serve.cli", "--port", "0", "--metrics-port", "0", *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text()
        if wait_for in text or proc.poll() is not None:
            break
        time.sleep(0.05)
    text = log_path.read_text()
    if wait_for not in text:
        proc.kill()
        proc.wait()
        raise AssertionError(f"server did not report {wait_for!r}:\n{text}")
    port = re.search(r"listening on [^ ]+:(\d+)", text)
    metrics = re.search(r"metrics on http://[^:]+:(\d+)", text)
    return ServerProcess(proc, log_path, int(port.group(1)) if port else 0, int(metrics.group(1)) if metrics else 0)


def stop_server(server: ServerProcess) -> int:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
    return server.process.wait(timeout=30)


@pytest.fixture(scope="session")
def server(trained: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    proc = start_server(
        log_path, "--model-repository", str(trained["models"]), "--max-rows", "64", "--max-samples", "5000"
    )
    yield proc
    assert stop_server(proc) == 0, proc.log()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FUZZ_CASES:
        terminalreporter.section("fuzz cases sent to the server")
        for label, count in sorted(FUZZ_CASES.items()):
            terminalreporter.write_line(f"{label}: {count}")
