"""Clients that never read their answers: memory stays within the configured budget, and returns.

A raw HTTP/2 client (h2) opens connections whose stream windows are 0, so the server can send
nothing back: every answer it computes stays in its memory until the call ends. With default
flags the response budget (--max-response-bytes-in-flight) refuses new work once it is full.
"""

from __future__ import annotations

import socket
import threading
import time

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import numpy as np
from mdn_serve._proto.mdn.v1 import mdn_pb2 as pb
from mdn_serve.tools.client import MdnClient

from tests.conftest import start_server, stop_server
from tests.test_overload import rss_mb, scrape

SAMPLE = "/mdn.v1.MixtureDensityService/Sample"
CONNECTIONS, STREAMS = 4, 50
NUM_SAMPLES = 500_000  # x 2 output dimensions x 4 bytes: a 4 MB answer to a 40-byte request


class StalledConnection:
    """One HTTP/2 connection that sends its calls and never opens a window for the answers."""

    def __init__(self, port: int, request: bytes) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.lock = threading.Lock()  # the h2 state is shared with the reader thread
        self.frame = b"\x00" + len(request).to_bytes(4, "big") + request  # gRPC's length-prefixed message
        self.statuses: dict[int, str] = {}
        self.resets: dict[int, int] = {}  # stream -> the error code of the server's RST_STREAM
        with self.lock:
            self.conn.initiate_connection()
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
            self.sock.sendall(self.conn.data_to_send())
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def call(self, count: int) -> None:
        """Start `count` more calls."""
        with self.lock:
            for _ in range(count):
                stream = self.conn.get_next_available_stream_id()
                headers = [(":method", "POST"), (":scheme", "http"), (":path", SAMPLE),
                           (":authority", f"127.0.0.1:{self.port}"), ("content-type", "application/grpc"),
                           ("te", "trailers")]  # fmt: skip
                self.conn.send_headers(stream, headers)
                self.conn.send_data(stream, self.frame, end_stream=True)
            self.sock.sendall(self.conn.data_to_send())

    def _read(self) -> None:
        """Take in headers and trailers (not flow controlled: refusals arrive), acknowledge settings
        and pings, and never send a WINDOW_UPDATE."""
        try:
            while data := self.sock.recv(65536):
                with self.lock:
                    for event in self.conn.receive_data(data):
                        if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                            status = {str(k): str(v) for k, v in event.headers or []}.get("grpc-status")
                            if status is not None:
                                self.statuses[event.stream_id] = status
                        elif isinstance(event, h2.events.StreamReset) and event.remote_reset:
                            self.resets[event.stream_id] = event.error_code
                    self.sock.sendall(self.conn.data_to_send())
        except OSError:
            pass

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader and sends FIN (close alone would wait for it)
        self.reader.join(timeout=5)
        self.sock.close()


def test_unread_answers_stay_within_the_response_budget_and_memory_returns(trained, tmp_path):
    proc = start_server(tmp_path / "log", "--model-repository", str(trained["models"]))
    x = np.array([[0.6, 0.6]], "<f4")
    request = pb.SampleRequest(model=pb.ModelRef(name="two_link_arm"), inputs=pb.Tensor(shape=x.shape, raw=x.tobytes()),
                               num_samples=NUM_SAMPLES).SerializeToString()  # fmt: skip
    try:
        with MdnClient(proc.target) as client:
            for _ in range(3):  # warm: one answer of each kind read normally
                assert client.sample("two_link_arm", x, num_samples=NUM_SAMPLES).samples.shape == (1, NUM_SAMPLES, 2)
        idle = rss_mb(proc.process.pid)
        stalled = [StalledConnection(proc.port, request) for _ in range(CONNECTIONS)]
        for _ in range(STREAMS // 5):  # in waves, so that the queue never holds more than it can start in time
            for connection in stalled:
                connection.call(5)
            time.sleep(0.15)
        deadline = time.monotonic() + 60
        peak = idle
        while time.monotonic() < deadline:  # until every call is answered or refused
            peak = max(peak, rss_mb(proc.process.pid))
            metrics = scrape(proc.metrics_port)
            handled = sum(v for (name, labels), v in metrics.items()
                          if name == "mdn_requests_total" and ("method", "Sample") in labels)  # fmt: skip
            if handled >= 3 + CONNECTIONS * STREAMS:
                break
            time.sleep(0.1)
        peak = max(peak, rss_mb(proc.process.pid))
        held = metrics[("mdn_response_bytes_in_flight", ())]
        refused = metrics[("mdn_response_budget_refusals_total", ())]
        assert refused > 0 and 100 * 2**20 < held <= 128 * 2**20, (held, refused)  # the budget is full, not over
        assert peak - idle < 300, (idle, peak)
        refusals = [s for c in stalled for s in c.statuses.values()]
        assert refusals and set(refusals) == {str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])}
        with MdnClient(proc.target) as client:  # other clients are still served
            client.timeout = 10
            assert client.predict("two_link_arm", x).means.shape[0] == 1
            try:
                client.sample("two_link_arm", x, num_samples=NUM_SAMPLES)
                raise AssertionError("a big answer was computed with the budget full")
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "--max-response-bytes-in-flight" in (exc.details() or "")

        for connection in stalled:
            connection.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and scrape(proc.metrics_port)[("mdn_response_bytes_in_flight", ())] > 0:
            time.sleep(0.1)
        assert scrape(proc.metrics_port)[("mdn_response_bytes_in_flight", ())] == 0
        time.sleep(0.5)
        after = rss_mb(proc.process.pid)
        assert after - idle < 100, (idle, peak, after)
        with MdnClient(proc.target) as client:  # and big answers are served again
            assert client.sample("two_link_arm", x, num_samples=NUM_SAMPLES).samples.shape == (1, NUM_SAMPLES, 2)
    finally:
        assert stop_server(proc) == 0


def test_calls_past_a_connections_stream_cap_are_refused_by_grpc_itself(trained, tmp_path):
    """--max-concurrent-streams: calls a connection opens past the cap (here by a raw HTTP/2 client that
    ignores the server's SETTINGS; a gRPC client can also get there when the busy event loop has not
    yet taken up its calls) are refused by gRPC with RST_STREAM REFUSED_STREAM, which gRPC clients
    report as UNAVAILABLE "Stream removed": nothing was done, safe to retry. The calls within the cap
    are served."""
    cap = 4
    proc = start_server(tmp_path / "log", "--model-repository", str(trained["models"]), "--max-concurrent-streams",
                        str(cap))  # fmt: skip
    x = np.array([[0.6, 0.6]], "<f4")
    request = pb.SampleRequest(model=pb.ModelRef(name="two_link_arm"), inputs=pb.Tensor(shape=x.shape, raw=x.tobytes()),
                               num_samples=NUM_SAMPLES).SerializeToString()  # fmt: skip
    connection = StalledConnection(proc.port, request)  # answers never read: the calls stay open
    try:
        deadline = time.monotonic() + 10
        while connection.conn.remote_settings.max_concurrent_streams != cap:  # the server's SETTINGS arrived
            assert time.monotonic() < deadline, "no SETTINGS from the server"
            time.sleep(0.01)
        with connection.lock:  # h2 itself would not open more streams than the server allows
            connection.conn.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 100
            connection.conn.remote_settings.acknowledge()
        connection.call(2 * cap)
        deadline = time.monotonic() + 10
        while len(connection.resets) < cap and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(connection.resets.values()) == [h2.errors.ErrorCodes.REFUSED_STREAM] * cap, connection.resets
        assert sorted(connection.resets) == [2 * i + 1 for i in range(cap, 2 * cap)]  # those past the cap
        with MdnClient(proc.target) as client:  # and the server goes on serving
            assert client.predict("two_link_arm", x).means.shape[0] == 1
    finally:
        connection.close()
        assert stop_server(proc) == 0


ALLOCATOR_PROBE = """
import resource, sys
import numpy as np
from mdn_serve import memory
memory.TRIM_THRESHOLD = int(sys.argv[1])
assert memory.return_freed_memory()
def faults(size, times=200):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(times):  # what a refinement step does: fill a temporary, drop it
        np.ones(size // 8)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(faults(512 << 10), faults(4 << 20, 20))
"""


def test_the_allocator_keeps_freed_temporaries_for_reuse_and_maps_big_blocks_on_their_own():
    """What mdn_serve.memory sets up, by page faults: a half-megabyte temporary allocated and freed 200
    times faults its pages in once, not every time (with glibc's 128 KiB heap top, which a fixed
    mapping threshold otherwise leaves, each free gave the pages back: an IK solve ran a quarter
    slower); a 4 MiB block is mapped on its own, so it goes back to the system when freed."""
    import subprocess
    import sys

    from mdn_serve.memory import TRIM_THRESHOLD

    def probe(trim: int) -> tuple[int, int]:
        out = subprocess.run([sys.executable, "-c", ALLOCATOR_PROBE, str(trim)], check=True, capture_output=True,
                             text=True, timeout=60).stdout.split()  # fmt: skip
        return int(out[0]), int(out[1])

    pages = (512 << 10) // 4096
    reused, mapped = probe(TRIM_THRESHOLD)
    assert reused < 10 * pages, reused  # about once, not 200 times
    assert mapped > 4 * (4 << 20) // 4096, mapped  # faulted in afresh again and again: returned when freed
    churned, _ = probe(128 << 10)
    assert churned > 100 * pages, churned
