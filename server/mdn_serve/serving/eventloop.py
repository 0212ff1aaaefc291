"""The server's event loop: asyncio's selector loop that can run callbacks when it is idle.

With a queue delay of 0 the dynamic batcher must "batch what is already waiting". In a
single-threaded server, requests that have reached the process but whose handlers have not
run yet are waiting too: they are events and callbacks the loop has still to process. So the
batcher asks to be called once the loop has nothing else ready, instead of at once: every
request that already arrived joins the batch, and nobody waits for requests still to come.
A loop that never runs out of work would defer the batch for ever, so a callback waits at
most `max_idle_wait` seconds.

On any other event loop `call_when_idle` falls back to `call_soon`.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import time
from collections.abc import Callable, Mapping
from typing import Any

# The most a batch waits for a busy loop to run out of work (see the module docstring).
MAX_IDLE_WAIT_SECONDS = 0.001
_CAN_YIELD = hasattr(os, "sched_yield")
_YIELDS = 3


class _IdleSelector(selectors.BaseSelector):
    """Wraps the platform selector. When the loop is about to block and callbacks wait for
    idleness, it polls without blocking: events go back to the loop as usual, and only when
    there are none (or the oldest callback has waited long enough) are the callbacks handed
    to the loop, which runs them in the same iteration."""

    def __init__(self, max_idle_wait: float) -> None:
        self._inner = selectors.DefaultSelector()
        self._max_idle_wait = max_idle_wait
        self._waiting: list[Callable[[], object]] = []
        self._due = 0.0
        self.loop: asyncio.AbstractEventLoop | None = None

    def call_when_idle(self, callback: Callable[[], object]) -> None:
        if not self._waiting:
            self._due = time.monotonic() + self._max_idle_wait
        self._waiting.append(callback)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if not self._waiting:
            return self._inner.select(timeout)
        if timeout is not None and timeout <= 0:  # callbacks are ready to run: the loop is busy
            if time.monotonic() >= self._due:
                self._release()
            return self._inner.select(timeout)
        events = self._inner.select(0)
        # gRPC hands requests over through its own threads (the one reading the socket, then the
        # one watching the completion queue): those that are runnable but waiting for this CPU
        # may hold requests that already arrived. Let them run, and look again.
        for _ in range(_YIELDS if _CAN_YIELD else 0):
            if events:
                break
            os.sched_yield()
            events = self._inner.select(0)
        if not events or time.monotonic() >= self._due:
            self._release()
        return events

    def _release(self) -> None:
        waiting, self._waiting = self._waiting, []
        assert self.loop is not None
        for callback in waiting:
            self.loop.call_soon(callback)

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.get_key(fileobj)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._inner.get_map()

    def close(self) -> None:
        self._waiting.clear()
        self._inner.close()


class ServingEventLoop(asyncio.SelectorEventLoop):
    """asyncio's selector event loop plus `call_when_idle`."""

    def __init__(self, max_idle_wait: float = MAX_IDLE_WAIT_SECONDS) -> None:
        self._idle_selector = _IdleSelector(max_idle_wait)
        super().__init__(self._idle_selector)
        self._idle_selector.loop = self

    def call_when_idle(self, callback: Callable[[], object]) -> None:
        """Run callback once the loop has no other ready work (or max_idle_wait has passed)."""
        self._idle_selector.call_when_idle(callback)


def call_when_idle(loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> None:
    """callback at the loop's next idle moment on a ServingEventLoop, else at its next iteration."""
    if isinstance(loop, ServingEventLoop):
        loop.call_when_idle(callback)
    else:
        loop.call_soon(callback)
