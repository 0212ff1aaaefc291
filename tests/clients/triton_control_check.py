"""Triton's explicit model control from its own clients, gRPC and HTTP, against mdn-serve; prints JSON.

usage: python triton_control_check.py GRPC_HOST:PORT HTTP_HOST:PORT MODEL BROKEN_MODEL
"""

from __future__ import annotations

import json
import sys

import tritonclient.grpc as grpc_client
import tritonclient.http as http_client
from tritonclient.utils import InferenceServerException


def outcome(call) -> str:
    try:
        call()
    except InferenceServerException as exc:
        return f"{exc.status()}: {exc.message()}"
    return "OK"


def main() -> None:
    grpc_target, http_target, model, broken = sys.argv[1:5]
    report: dict[str, object] = {}
    for kind, client in (("grpc", grpc_client.InferenceServerClient(grpc_target)),
                         ("http", http_client.InferenceServerClient(http_target))):  # fmt: skip
        steps: list[object] = [client.is_model_ready(model)]
        steps.append(outcome(lambda c=client: c.load_model(model)))
        steps.append(client.is_model_ready(model))
        index = client.get_model_repository_index(**({"as_json": True} if kind == "grpc" else {}))
        models = index["models"] if kind == "grpc" else index
        steps.append(sorted((m["name"], m.get("state", "")) for m in models))
        steps.append(outcome(lambda c=client: c.unload_model(model)))
        steps.append(client.is_model_ready(model))
        steps.append(outcome(lambda c=client: c.load_model(broken)))
        steps.append(outcome(lambda c=client: c.load_model("no_such_model")))
        report[kind] = steps
        client.close()
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
