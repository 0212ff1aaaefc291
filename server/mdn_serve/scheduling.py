"""Which of the server's threads gets a busy CPU first (Linux).

An overloaded server spends its CPU on two kinds of work: computing answers (the compute threads)
and taking calls in, mostly to turn them away (the event loop and gRPC's own threads). Linux lets a
thread that wakes up preempt the one running, so on a CPU that has no time to spare every call
that arrives interrupts the batch being computed: at four times capacity on one CPU the compute
thread kept 0.66-0.68 of it (0.90 at capacity) and the event loop and gRPC took the rest.

With --io-scheduling batch (the default) every thread but the compute threads runs under
SCHED_BATCH: a woken I/O thread does not preempt a running compute thread but waits for its time
slice to end (a few milliseconds). The fair scheduler still shares the CPU between them (a
SCHED_BATCH thread is not starved), and where a CPU is idle an I/O thread runs at once: this
changes nothing while the server has CPU to spare.
`make bench` measures the overload point with both settings: on some days it gains goodput under
overload, on others it makes no difference (the README gives both).

The policy is inherited by the threads a thread creates. `use_io_policy` is called on the main
thread before the event loop, gRPC or ONNX Runtime start any; compute threads, and the threads
that create ONNX Runtime sessions (whose intra-op threads inherit from them), go back to the
normal policy (`use_compute_policy`). Unprivileged processes may switch between these two
policies; where the system refuses, the server logs it and runs with the normal policy.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

log = logging.getLogger(__name__)

IO_POLICIES = ("batch", "normal")
COMPUTE_THREAD_NAME = "mdn-compute"  # what `top -H` and /proc/<pid>/task/<tid>/comm show for them

_SUPPORTED = sys.platform.startswith("linux") and hasattr(os, "SCHED_BATCH")

P = ParamSpec("P")
R = TypeVar("R")


def _set_policy(policy: int) -> bool:
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))  # pid 0: the calling thread
    except OSError as exc:
        log.warning("cannot set this thread's scheduling policy (%s): it keeps its current one", exc)
        return False
    return True


def use_io_policy(choice: str) -> None:
    """Put the calling thread, and every thread it creates from now on, under `choice`'s policy
    (one of IO_POLICIES; 'normal': SCHED_OTHER, whatever the policy the process started with)."""
    if choice not in IO_POLICIES:
        raise ValueError(f"io scheduling must be one of {', '.join(IO_POLICIES)}, got {choice!r}")
    if choice == "normal":
        use_compute_policy()
        return
    if not _SUPPORTED:
        log.info("--io-scheduling batch needs Linux; running with the normal scheduling policy")
        return
    if _set_policy(os.SCHED_BATCH):
        log.info("I/O threads run under SCHED_BATCH: they wait out a busy compute thread's time slice")


def use_compute_policy() -> None:
    """The calling thread runs under the normal policy (SCHED_OTHER), whatever its parent's."""
    if _SUPPORTED and os.sched_getscheduler(0) != os.SCHED_OTHER:
        _set_policy(os.SCHED_OTHER)


def compute_thread_started() -> None:
    """A compute thread's initializer: the normal policy, and a name that tools show."""
    use_compute_policy()
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/thread-self/comm", "w") as comm:
                comm.write(COMPUTE_THREAD_NAME)
        except OSError:  # a /proc that does not allow it: the name is for people only
            pass


def with_compute_policy(fn: Callable[P, R]) -> Callable[P, R]:
    """fn, run under the normal policy (for a worker thread that creates ONNX Runtime sessions)."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        use_compute_policy()
        return fn(*args, **kwargs)

    return run
