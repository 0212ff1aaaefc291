"""Drive mdn-serve's HTTP/REST endpoint with Triton's own HTTP client (`tritonclient.http`); print what it saw as JSON.

Runs in the clients environment (`make install`), like triton_check.py. Every inference is made
twice, once with JSON tensors and once with the binary tensor extension, inputs and outputs.

usage: python triton_http_check.py HOST:PORT MODEL
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

X = np.array([[0.6, 0.6], [0.9, 0.3]], np.float32)
CHOSEN = ["samples", "modes", "mode_mass", "num_modes", "ik_solutions", "ik_num_solutions", "ik_status"]


def lists(result: triton.InferResult, names: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for name in names:
        array = result.as_numpy(name)
        if array.dtype == object:
            values: object = [v.decode() if isinstance(v, bytes) else str(v) for v in array.ravel()]
        else:
            values = np.nan_to_num(array, nan=-999).tolist()
        out[name] = {"dtype": str(array.dtype), "shape": list(array.shape), "values": values}
    return out


def error_of(call) -> dict[str, str]:
    try:
        call()
    except InferenceServerException as exc:
        return {"status": str(exc.status()), "message": str(exc.message())}
    return {"status": "OK", "message": ""}


def infer_both_ways(client: triton.InferenceServerClient, model: str, report: dict[str, object]) -> None:
    for binary in (False, True):
        key = "binary" if binary else "json"
        x = triton.InferInput("x", list(X.shape), "FP32")
        x.set_data_from_numpy(X, binary_data=binary)
        default = client.infer(model, [x], request_id=f"triton-http-{key}")
        report[f"default_{key}"] = lists(default, ["weights", "means", "scales"])
        report[f"default_{key}_response"] = {
            k: v for k, v in default.get_response().items() if k in ("id", "model_name", "model_version")
        }
        chosen = client.infer(
            model,
            [x],
            outputs=[triton.InferRequestedOutput(n, binary_data=binary) for n in CHOSEN],
            parameters={"num_samples": 20, "seed": 5, "temperature": 0.5, "max_modes": 2, "ik_seed": 3},
        )
        report[f"chosen_{key}"] = lists(chosen, CHOSEN)
        report[f"chosen_{key}_outputs"] = [
            (o["name"], "binary_data_size" in o.get("parameters", {})) for o in chosen.get_response()["outputs"]
        ]


def main() -> None:
    target, model = sys.argv[1], sys.argv[2]
    client = triton.InferenceServerClient(url=target)
    report: dict[str, object] = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "unknown_model_ready": client.is_model_ready("no_such_model"),
    }
    server = client.get_server_metadata()
    meta = client.get_model_metadata(model)
    report["server"] = {"name": server["name"], "version": server["version"], "extensions": server["extensions"]}
    report["stats_before"] = client.get_inference_statistics(model)
    report["model"] = {
        "platform": meta["platform"],
        "versions": meta["versions"],
        "inputs": [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]],
        "outputs": [t["name"] for t in meta["outputs"]],
    }
    config = client.get_model_config(model)
    report["config"] = {
        "max_batch_size": config["max_batch_size"],
        "inputs": [(t["name"], t["data_type"], t["dims"], t.get("optional", False)) for t in config["input"]],
        "parameters": {k: v["string_value"] for k, v in config["parameters"].items()},
    }
    infer_both_ways(client, model, report)

    bad = triton.InferInput("x", [1, 3], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
    x = triton.InferInput("x", list(X.shape), "FP32")
    x.set_data_from_numpy(X)
    report["wrong_shape"] = error_of(lambda: client.infer(model, [bad]))
    report["unknown_model"] = error_of(lambda: client.infer("no_such_model", [x]))
    report["unknown_output"] = error_of(
        lambda: client.infer(model, [x], outputs=[triton.InferRequestedOutput("logits")])
    )
    report["stats_after"] = client.get_inference_statistics(model)
    report["index"] = client.get_model_repository_index()
    report["stats_unknown_model"] = error_of(lambda: client.get_inference_statistics("no_such_model"))
    client.close()
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
