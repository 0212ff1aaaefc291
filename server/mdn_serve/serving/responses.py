"""A budget of response bytes in flight: answers being computed or not yet delivered.

An answer stays in the server's memory until its call ends, however slowly the client reads it
(a client that never opens its HTTP/2 window holds it until its deadline or its connection
goes), twice (COPIES_HELD). So every call holds bytes of the budget from admission to its end: the
dataplane reserves
an estimate of the answer's size before any work (`reserve`), the protocol adapter replaces it
with the real size once the answer is made (`Call.settle`) and gives it back when the call ends
(`Call.close`). A call whose estimate does not fit is refused at once with RESOURCE_EXHAUSTED
(one call is always admitted when nothing is held: --max-message-bytes bounds it). Memory is
then bounded by the configuration, not by clients.
"""

from __future__ import annotations

import contextvars

from mdn_serve.errors import Overloaded
from mdn_serve.metrics import Metrics, fast_inc

VALUES_OVERHEAD = 1.25  # an estimate's margin for answers sent as protobuf values (up to 5 bytes a float)
# Copies of an answer in memory until its call ends: the serialized answer and gRPC's own copy
# (the protocol adapters serialize it themselves, so the message is freed at once).
COPIES_HELD = 2


class Call:
    """What one call holds of the budget."""

    __slots__ = ("budget", "held", "overhead")

    def __init__(self, budget: ResponseBudget) -> None:
        self.budget = budget
        self.held = 0
        self.overhead = VALUES_OVERHEAD  # bytes on the wire per byte of tensor values, at most

    def settle(self, size: int) -> None:
        """The answer is made, `size` bytes serialized: hold what it takes instead of the estimate."""
        self._hold(COPIES_HELD * size)

    def _hold(self, amount: int) -> None:
        self.budget._change(amount - self.held)
        self.held = amount

    def close(self) -> None:
        """The call ended: give back what it held."""
        self.budget._change(-self.held)
        self.held = 0


_CALL: contextvars.ContextVar[Call | None] = contextvars.ContextVar("mdn_response_call", default=None)


class ResponseBudget:
    def __init__(self, limit: int, metrics: Metrics) -> None:
        self.limit = limit
        self.held = 0
        self._gauge = fast_inc(metrics.response_bytes)
        self._refused = fast_inc(metrics.response_refusals)

    def open_call(self) -> Call:
        """A call starts (in its own asyncio task): reservations made while it runs are its own."""
        call = Call(self)
        _CALL.set(call)
        return call

    def current_overhead(self, overhead: float) -> None:
        """The current call's answer may take `overhead` bytes per byte of tensor values (JSON text: 4)."""
        call = _CALL.get()
        if call is not None:
            call.overhead = overhead

    def reserve(self, estimate: float) -> None:
        """Hold `estimate` bytes for the current call's answer, or raise Overloaded if they do not fit."""
        call = _CALL.get()
        if call is None:  # not inside a call (in-process use): nothing to hold
            return
        size = int(estimate * call.overhead * COPIES_HELD)
        if self.held and self.held + size > self.limit:
            self._refused(1)
            raise Overloaded(
                f"the server holds {self.held / 2**20:.0f} MiB of answers being computed or not yet read by their "
                f"clients; this one (about {size / 2**20:.1f} MiB held) would pass the budget "
                f"(--max-response-bytes-in-flight, {self.limit / 2**20:.0f} MiB); retry with backoff"
            )
        call._hold(call.held + size)

    def _change(self, amount: int) -> None:
        self.held += amount
        self._gauge(amount)
