"""The benchmark's HTTP/REST points: our server's Open Inference Protocol over HTTP against a no-op
HTTP server on the same stack (aiohttp), which answers every request with a canned body of the
same size as ours, driven by the same closed-loop load generator right after it.

Batch 1 goes as JSON (what curl users and simple clients send); batch 1024 as binary tensors in
and out (what a client that cares about speed sends, and what tritonclient.http does by default).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mdn_serve.tools.bench.ceilings import Placement

HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class HttpPoint:
    batch: int
    concurrency: int
    binary: bool

    @property
    def label(self) -> str:
        return f"HTTP infer batch {self.batch} ({'binary' if self.binary else 'JSON'}), {self.concurrency} client(s)"


HTTP_POINTS = [HttpPoint(1, 1, False), HttpPoint(1, 32, False), HttpPoint(1024, 1, True), HttpPoint(1024, 4, True)]


def request_body(x: np.ndarray, binary: bool) -> tuple[bytes, dict[str, str]]:
    """An infer request for the mixture of x's rows, as JSON or with binary tensors both ways."""
    tensor: dict[str, Any] = {"name": "x", "shape": list(x.shape), "datatype": "FP32"}
    if not binary:
        tensor["data"] = x.ravel().tolist()
        return json.dumps({"inputs": [tensor]}).encode(), {"Content-Type": "application/json"}
    blob = x.astype("<f4").tobytes()
    tensor["parameters"] = {"binary_data_size": len(blob)}
    header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    return header + blob, {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"}


async def closed_loop(url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float,
                      warmup: float) -> dict[str, Any]:  # fmt: skip
    """`concurrency` clients, each posting `body` when its last answer arrived, on one connection each."""
    import aiohttp

    latencies: list[float] = []
    answered: list[float] = []  # the latencies of the requests answered 200
    codes: dict[str, int] = {}
    state = {"measuring": False, "stop": False}

    async def client(session: aiohttp.ClientSession) -> None:
        while not state["stop"]:
            start = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                status = str(response.status)
            if state["measuring"]:
                latencies.append(time.perf_counter() - start)
                if status == "200":
                    answered.append(latencies[-1])
                codes[status] = codes.get(status, 0) + 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.ensure_future(client(session)) for _ in range(concurrency)]
        await asyncio.sleep(warmup)
        state["measuring"] = True
        began = time.perf_counter()
        await asyncio.sleep(seconds)
        state["measuring"], state["stop"] = False, True
        elapsed = time.perf_counter() - began
        await asyncio.gather(*tasks)
    ms = np.array(latencies) * 1000
    ok = np.array(answered) * 1000
    return {
        "requests_per_second": len(latencies) / elapsed,
        "answered_requests_per_second": len(answered) / elapsed,  # 200 only
        "latency_ms": _percentiles(ms),
        "answered_latency_ms": _percentiles(ok),
        "codes": codes,
    }


def _percentiles(ms: NDArray[np.float64]) -> dict[str, float]:
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))} if len(ms) else {}


def serve_noop_http(answers: dict[int, tuple[bytes, dict[str, str]]], port_queue: Any, placement: Placement) -> None:
    """An aiohttp server that reads each infer request and returns the canned answer for its size."""
    placement.enter_server()
    from aiohttp import web

    async def infer(request: web.Request) -> web.Response:
        body = await request.read()
        answer, headers = answers[len(body)]
        return web.Response(body=answer, headers=headers)

    async def main() -> None:
        app = web.Application(client_max_size=256 << 20)
        app.router.add_post("/v2/models/{model}/infer", infer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(runner, sock).start()
        port_queue.put(sock.getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(main())


def bodies(dim: int, points: list[HttpPoint]) -> dict[HttpPoint, tuple[bytes, dict[str, str]]]:
    rng = np.random.default_rng(0)
    return {p: request_body(rng.uniform(0.3, 0.9, (p.batch, dim)).astype(np.float32), p.binary) for p in points}


async def canned_answers(url: str, requests: dict[HttpPoint, tuple[bytes, dict[str, str]]]
                         ) -> dict[int, tuple[bytes, dict[str, str]]]:  # fmt: skip
    """Our server's answer to each point's request, keyed by the request's size (what the no-op reads)."""
    import aiohttp

    out: dict[int, tuple[bytes, dict[str, str]]] = {}
    async with aiohttp.ClientSession() as session:
        for body, headers in requests.values():
            async with session.post(url, data=body, headers=headers) as response:
                answer = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"mdn-serve answered {response.status}: {answer[:200]!r}")
                kept = {k: v for k, v in response.headers.items() if k in ("Content-Type", HEADER_LENGTH)}
                out[len(body)] = (answer, kept)
    return out


def measure_http(ours: int, noop: int, model: str, requests: dict[HttpPoint, tuple[bytes, dict[str, str]]],
                 seconds: float) -> list[dict[str, Any]]:  # fmt: skip
    """Each point on our server, then on the no-op server: requests/s and their ratio."""
    results = []
    for point, (body, headers) in requests.items():
        print(f"{point.label}: mdn-serve, then the no-op HTTP server ...", flush=True)
        warmup = min(0.5, seconds / 2)
        path = f"/v2/models/{model}/infer"
        mine = asyncio.run(closed_loop(f"http://127.0.0.1:{ours}{path}", body, headers, point.concurrency, seconds,
                                       warmup))  # fmt: skip
        theirs = asyncio.run(closed_loop(f"http://127.0.0.1:{noop}{path}", body, headers, point.concurrency,
                                         seconds, warmup))  # fmt: skip
        ratio = mine["answered_requests_per_second"] / max(theirs["answered_requests_per_second"], 1e-9)  # 200s only
        results.append({
            "label": point.label, "batch": point.batch, "concurrency": point.concurrency, "binary": point.binary,
            "ours": mine, "noop": theirs, "vs_noop_requests": ratio,
        })  # fmt: skip
    return results
