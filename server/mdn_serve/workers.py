"""`--workers N`: N server processes on one port, supervised, with one metrics endpoint for all.

The supervisor reserves the port with SO_REUSEPORT, forks the workers before any gRPC object
exists (gRPC does not survive a fork), restarts a worker that dies, and serves /metrics from
every worker's samples (Prometheus' multi-process mode). SIGTERM or SIGINT is passed on to the
workers, which drain as a single server would.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import time
from dataclasses import replace
from typing import Any

from mdn_serve.config import Settings

log = logging.getLogger("mdn_serve.workers")

RESTART_BACKOFF_SECONDS = 1.0


def pin_to_cpu(slot: int) -> int | None:
    """Pin this process to the slot-th CPU it may use (round robin); the CPU, or None where the
    OS cannot pin.

    Called before gRPC starts its threads, so they all inherit it: the event loop and gRPC's
    threads on one core hand requests to each other without crossing cores.
    """
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    cpu = cpus[slot % len(cpus)]
    os.sched_setaffinity(0, {cpu})
    log.info("pinned to CPU %d", cpu)
    return cpu


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, non-listening socket that holds the port for workers binding it with SO_REUSEPORT."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _run_worker(settings: Settings, ready_fd: int) -> None:
    """In the child: serve, tell the supervisor once SERVING, exit with the server's status."""
    from mdn_serve.app import run

    def announce(_server: Any) -> None:
        os.write(ready_fd, b"1")
        os.close(ready_fd)

    code = 1
    try:
        code = run(settings, announce)
    finally:
        logging.shutdown()
        os._exit(code)


def supervise(settings: Settings, metrics_dir: str) -> int:
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

    from mdn_serve.metrics_http import serve_metrics

    holder = reserve_port(settings.host, settings.port)
    port = holder.getsockname()[1]
    http_holder = reserve_port(settings.host, settings.http_port) if settings.http_port >= 0 else None
    http_port = -1 if http_holder is None else http_holder.getsockname()[1]
    worker_settings = replace(settings, port=port, http_port=http_port, metrics_port=-1, workers=1, share_port=True)
    log.info("listening on %s:%d (gRPC, %d workers)", settings.host, port, settings.workers)
    if http_port >= 0:
        log.info("HTTP/REST on %s:%d (%d workers)", settings.host, http_port, settings.workers)

    ready_read, ready_write = os.pipe()
    children: dict[int, int] = {}  # pid -> worker slot
    stopping = False

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            os.close(ready_read)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            if settings.pin_workers:
                pin_to_cpu(slot)
            _run_worker(worker_settings, ready_write)
        children[pid] = slot
        log.info("worker %d started (pid %d)", slot, pid)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def reload(signum: int, _frame: object) -> None:
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, reload)
    for slot in range(settings.workers):
        spawn(slot)

    metrics_server = None
    if settings.metrics_port >= 0:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=metrics_dir)  # type: ignore[no-untyped-call]
        metrics_server = serve_metrics(settings.metrics_port, settings.metrics_host, registry)
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, metrics_server.server_port)

    # SERVING once every worker has said so. A worker that dies before that fails the whole
    # server (a bad model would kill every restart too); one that dies later is restarted.
    announced = 0
    exit_code = 0
    while children:
        readable, _, _ = select.select([ready_read], [], [], 0.2)
        if readable:
            announced += len(os.read(ready_read, 64))
            if announced == settings.workers:
                log.info("SERVING on %s:%d with %d workers", settings.host, port, settings.workers)
        for pid, code in _reap(mark_process_dead):
            slot = children.pop(pid, -1)
            if stopping:
                log.info("worker %d (pid %d) exited with %d", slot, pid, code)
                exit_code = exit_code or code
            elif announced < settings.workers:
                log.error("worker %d (pid %d) failed to start (exit %d); stopping", slot, pid, code)
                exit_code = 1
                forward(signal.SIGTERM, None)
            else:
                log.error("worker %d (pid %d) died with %d; restarting it", slot, pid, code)
                time.sleep(RESTART_BACKOFF_SECONDS)
                if not stopping:
                    spawn(slot)
    if metrics_server is not None:
        metrics_server.shutdown()
        metrics_server.server_close()
    holder.close()
    if http_holder is not None:
        http_holder.close()
    log.info("stopped")
    return exit_code


def _reap(mark_dead: Any) -> list[tuple[int, int]]:
    """Exited workers as [(pid, exit code)], without blocking; drops their live-only metric samples."""
    done = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        mark_dead(pid)
        code = os.waitstatus_to_exitcode(status)
        done.append((pid, code if code >= 0 else 128 - code))
    return done
