"""The two ceilings our server is measured against, and where each process runs.

- compute: ONNX Runtime called in-process on the same model file;
- transport: a no-op gRPC server answering each request with a canned response of the same size
  as ours, driven by the same load generator.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from mdn_core.model import load_model

from mdn_serve._proto.mdn.v1 import mdn_pb2 as pb
from mdn_serve.tools.bench.points import Point
from mdn_serve.tools.loadtest import LoadConfig, fetch_metadata
from mdn_serve.tools.payloads import encode_request, model_inputs


@dataclass(frozen=True)
class Placement:
    """CPUs for the servers and for the load generator; None where the OS cannot pin."""

    server: frozenset[int] | None = None
    client: frozenset[int] | None = None

    @staticmethod
    def split() -> Placement:
        """Servers on the first half of this process's CPUs, the load generator on the rest.

        Left to the scheduler on a small machine, a server's event loop, its gRPC threads and
        the load generator move between cores, and the ratios swing with it; in production the
        clients are elsewhere anyway. Both servers get the same CPUs.
        """
        if not hasattr(os, "sched_getaffinity"):
            return Placement()
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return Placement()
        half = (len(cpus) + 1) // 2
        return Placement(frozenset(cpus[:half]), frozenset(cpus[half:]))

    def enter_server(self) -> None:
        if self.server is not None:
            os.sched_setaffinity(0, self.server)

    def enter_client(self) -> None:
        if self.client is not None:
            os.sched_setaffinity(0, self.client)

    def describe(self) -> str:
        if self.server is None or self.client is None:
            return "not pinned to CPUs"
        return f"servers on CPU {_cpus(self.server)}, load generator on CPU {_cpus(self.client)}"


def _cpus(cpus: frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def onnx_ceiling(model_path: Path, batches: list[int], seconds: float, threads: int) -> dict[int, float]:
    """Rows/s of ONNX Runtime called in-process with `threads` intra-op threads (0: its default)."""
    model = load_model(model_path, intra_op_threads=threads, warm_up=False)
    dim = model.metadata.input_dim
    out: dict[int, float] = {}
    for batch in batches:
        x = np.random.default_rng(0).uniform(0.2, 0.8, (batch, dim)).astype(np.float32)
        for _ in range(3):
            model.run(x)
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model.run(x)
            runs += 1
        out[batch] = runs * batch / (time.perf_counter() - start)
    return out


def _serve_noop(responses: dict[tuple[str, int], bytes], port_queue: Any, placement: Placement) -> None:
    """A gRPC server that does nothing but return the canned response for (method, request size)."""
    placement.enter_server()  # before gRPC starts its threads: they inherit it
    import grpc

    async def main() -> None:
        def unary(method: str) -> grpc.RpcMethodHandler:
            async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                return responses[(method, len(request))]

            return grpc.unary_unary_rpc_method_handler(handle)

        class Handlers(grpc.GenericRpcHandler):  # type: ignore[misc]
            def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
                return unary(details.method)

        options = [("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)]
        server = grpc.aio.server(options=options)
        server.add_generic_rpc_handlers((Handlers(),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        port_queue.put(port)
        await server.wait_for_termination()

    asyncio.run(main())


def canned_responses(
    target: str, model: str, points: list[Point]
) -> tuple[dict[tuple[str, int], bytes], tuple[dict[str, Any], int]]:
    """Ask our server once per point, so the no-op server can answer with same-size payloads."""
    import grpc

    responses: dict[tuple[str, int], bytes] = {}
    base = LoadConfig(target=target, model=model)
    info = asyncio.run(fetch_metadata(base))
    metadata, dim = info

    async def collect() -> None:
        async with grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 256 << 20)]) as ch:
            get = "/mdn.v1.MixtureDensityService/GetModel"
            body = pb.GetModelRequest(model=pb.ModelRef(name=model)).SerializeToString()
            call = ch.unary_unary(get, request_serializer=None, response_deserializer=None)
            responses[(get, len(body))] = await call(body, timeout=60)  # lets mdn-loadtest read the model
            for point in points:
                # Raw tensors: every request of a point has the same size, so one answer stands for all.
                config = replace(base, rpc=point.rpc, batch=point.batch, num_samples=point.num_samples)
                x = model_inputs(metadata, dim, point.batch, np.random.default_rng(config.seed))
                method, body = encode_request(config, x)
                call = ch.unary_unary(method, request_serializer=None, response_deserializer=None)
                responses[(method, len(body))] = await call(body, timeout=60)

    asyncio.run(collect())
    return responses, info
