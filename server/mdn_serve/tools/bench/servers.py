"""Our server as the benchmark runs it: a real `mdn-serve` process, its start time and memory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mdn_serve.tools.bench.ceilings import Placement


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    port: int
    http_port: int
    start_seconds: float
    log_reader: threading.Thread

    def rss_mb(self) -> float:
        """Resident memory of the server and its worker processes, in MB."""
        return sum(_rss_kb(pid) for pid in _process_tree(self.process.pid)) / 1024

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log_reader.join(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _rss_kb(pid: int) -> int:
    try:
        match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return 0
    return int(match.group(1)) if match else 0


def _process_tree(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def start_server(
    models: Path, extra: list[str], placement: Placement | None = None, env: dict[str, str] | None = None
) -> ServerProcess:
    """A real mdn-serve process, once SERVING. Tracing is off unless `env` turns it on: the OTEL_*
    variables of this process are not passed on."""
    start = time.perf_counter()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    environment |= {"PYTHONUNBUFFERED": "1", **(env or {})}
    # The child pins itself before it imports gRPC (a preexec_fn is unsafe in this threaded process).
    cpus = sorted(placement.server) if placement is not None and placement.server is not None else None
    launch = (
        "import os, sys; from mdn_serve.cli import main; "
        + (f"os.sched_setaffinity(0, {cpus}); " if cpus else "")
        + "sys.exit(main(sys.argv[1:]))"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", launch, "--model-repository", str(models), "--port", "0",
         "--http-port", "0", "--metrics-port", "-1", "--max-rows", "16384", "--max-batch-rows", "16384", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment,
    )  # fmt: skip
    port = http_port = 0
    assert process.stdout is not None
    for line in process.stdout:
        found = re.search(r"listening on [^ ]+:(\d+)", line)
        if found:
            port = int(found.group(1))
        found = re.search(r"HTTP/REST on https?://[^ ]+:(\d+)/", line)
        if found:
            http_port = int(found.group(1))
        if "SERVING" in line:
            break
    else:
        raise RuntimeError("mdn-serve exited before SERVING")
    elapsed = time.perf_counter() - start
    # Keep draining the log so the server never blocks on a full pipe.
    reader = threading.Thread(target=process.stdout.read, daemon=True)
    reader.start()
    return ServerProcess(process, port, http_port, elapsed, reader)
