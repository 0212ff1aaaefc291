"""`python -m mdn_serve.healthcheck [host:port]`: exit 0 if the server reports SERVING (for container checks)."""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str] | None = None) -> int:
    default = f"127.0.0.1:{os.environ.get('MDN_HEALTH_PORT') or os.environ.get('MDN_PORT', '8001')}"
    parser = argparse.ArgumentParser(
        prog="python -m mdn_serve.healthcheck",
        description="Exit 0 if the server's gRPC health check says SERVING, 1 otherwise (for container checks).",
    )
    parser.add_argument("target", nargs="?", default=default, help="host:port (default: %(default)s, from "
                        "MDN_HEALTH_PORT or MDN_PORT)")  # fmt: skip
    target = parser.parse_args(argv).target
    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=3)
    except grpc.RpcError as exc:
        print(f"{target}: {exc.code().name}", file=sys.stderr)
        return 1
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    print(f"{target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
