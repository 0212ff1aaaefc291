"""Shared fixtures: small models trained and exported once per session, and running servers.

Servers run in this process (`serve_in_process`: create_server on port 0, its own event loop in a
thread) unless a test is about signals, worker processes or the console script; those start
`mdn-serve` as a subprocess (`start_server`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mdn_serve.app import MdnServer, create_server
from mdn_serve.config import parse_settings
from mdn_serve.metrics import Metrics
from mdn_serve.serving.eventloop import ServingEventLoop

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
            [sys.executable, "-m", "mdn_serve.cli", "--port", "0", "--http-port", "0", "--metrics-port", "0", *args],
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


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclass
class InProcessServer:
    """A server on its own event loop (a thread of this process), bound to port 0."""

    server: MdnServer
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    records: _Records = field(repr=False)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def metrics_port(self) -> int:
        return self.server.metrics_port or 0

    @property
    def http_port(self) -> int:
        return self.server.http_port or 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return "\n".join(self.records.lines)

    def alive(self) -> bool:
        return self.thread.is_alive() and self.loop.is_running()

    def stop(self, grace: float = 5.0) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop).result(30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)
            logging.getLogger("mdn_serve").removeHandler(self.records)


def serve_in_process(*args: str, timeout: float = 60.0) -> InProcessServer:
    """Build, bind, start and load a server from mdn-serve flags (ports 0 unless given); returns once SERVING."""
    settings = parse_settings(["--port", "0", "--http-port", "0", "--metrics-port", "0", *args], env={})
    records = _Records()
    logger = logging.getLogger("mdn_serve")
    logger.addHandler(records)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    loop = ServingEventLoop()
    box: dict[str, object] = {}
    serving = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            server, _port = create_server(settings, Metrics())
            box["server"] = server
            await server.start()
            await server.load_models()

        try:
            loop.run_until_complete(boot())
        except BaseException as exc:
            box["error"] = exc
            if "server" in box:
                loop.run_until_complete(box["server"].stop(0))  # type: ignore[attr-defined]
            serving.set()
            return
        serving.set()
        loop.run_forever()
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()

    thread = threading.Thread(target=run, name="in-process-server", daemon=True)
    thread.start()
    if not serving.wait(timeout) or "error" in box:
        logger.removeHandler(records)
        raise AssertionError(f"the in-process server did not start: {box.get('error')!r}")
    server = box["server"]
    assert isinstance(server, MdnServer)
    return InProcessServer(server, loop, thread, records)


@pytest.fixture(scope="session")
def server(trained: dict[str, Path]) -> Iterator[InProcessServer]:
    running = serve_in_process(
        "--model-repository", str(trained["models"]), "--max-rows", "64", "--max-samples", "5000"
    )
    yield running
    running.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FUZZ_CASES:
        terminalreporter.section("fuzz cases sent to the server")
        for label, count in sorted(FUZZ_CASES.items()):
            terminalreporter.write_line(f"{label}: {count}")
