"""The serving event loop: callbacks that wait until the loop has nothing else ready."""

from __future__ import annotations

import asyncio
import socket
import time

from mdn_serve.serving.eventloop import ServingEventLoop, call_when_idle


def run(main, loop_factory=ServingEventLoop):
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


def test_idle_callbacks_run_after_the_work_already_in_hand():
    order: list[str] = []

    async def main():
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def busy(n: int) -> None:  # work that keeps scheduling more work for a while
            order.append(f"busy{n}")
            if n < 5:
                loop.call_soon(busy, n + 1)

        def idle() -> None:
            order.append("idle")
            done.set_result(None)

        loop.call_soon(busy, 0)
        call_when_idle(loop, idle)
        await done

    run(main)
    assert order == [f"busy{n}" for n in range(6)] + ["idle"]


def test_idle_callbacks_wait_for_pending_io_events():
    """Data that already reached a socket is handled before the idle callback runs."""
    order: list[str] = []

    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setblocking(False)
        done = loop.create_future()
        loop.add_reader(a, lambda: order.append(f"read {a.recv(100)!r}"))
        b.send(b"x")
        time.sleep(0.01)  # the byte is in a's buffer before the loop looks

        def idle() -> None:
            order.append("idle")
            done.set_result(None)

        call_when_idle(loop, idle)
        await done
        loop.remove_reader(a)
        a.close()
        b.close()

    run(main)
    assert order == ["read b'x'", "idle"]


def test_a_loop_that_never_runs_out_of_work_still_runs_idle_callbacks_soon():
    async def main():
        loop = asyncio.get_running_loop()
        stop = False

        def spin() -> None:
            if not stop:
                loop.call_soon(spin)

        spin()
        start = time.monotonic()
        done = loop.create_future()
        call_when_idle(loop, lambda: done.set_result(time.monotonic() - start))
        waited = await done
        stop = True
        return waited

    waited = run(main, lambda: ServingEventLoop(max_idle_wait=0.02))
    assert 0.02 <= waited < 0.5


def test_other_loops_run_the_callback_at_the_next_iteration():
    async def main():
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        call_when_idle(loop, lambda: done.set_result("ran"))
        return await asyncio.wait_for(done, 1)

    assert run(main, asyncio.new_event_loop) == "ran"
