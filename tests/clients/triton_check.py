"""Drive mdn-serve with Triton's own Python client (`tritonclient.grpc`) and print what it saw as JSON.

Runs in its own interpreter (the clients environment, `make install`): tritonclient brings its
own `inference` protobuf package, which cannot share a process with the server's.

usage: python triton_check.py HOST:PORT MODEL
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

X = np.array([[0.6, 0.6], [0.9, 0.3]], np.float32)


def lists(result: triton.InferResult, names: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for name in names:
        array = result.as_numpy(name)
        out[name] = {
            "dtype": str(array.dtype),
            "shape": list(array.shape),
            "values": np.nan_to_num(array, nan=-999).tolist(),
        }
    return out


def error_of(call) -> dict[str, str]:
    try:
        call()
    except InferenceServerException as exc:
        return {"status": str(exc.status()), "message": str(exc.message())}
    return {"status": "OK", "message": ""}


def main() -> None:
    target, model = sys.argv[1], sys.argv[2]
    client = triton.InferenceServerClient(url=target)
    report: dict[str, object] = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "unknown_model_ready": client.is_model_ready("no_such_model"),
    }
    server = client.get_server_metadata(as_json=True)
    meta = client.get_model_metadata(model, as_json=True)
    report["server"] = {"name": server["name"], "version": server["version"], "extensions": server["extensions"]}
    report["stats_before"] = client.get_inference_statistics(model, as_json=True)
    report["model"] = {
        "platform": meta["platform"],
        "versions": meta["versions"],
        "inputs": [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]],
        "outputs": [t["name"] for t in meta["outputs"]],
    }

    config = client.get_model_config(model, as_json=True)["config"]
    report["config"] = {
        "max_batch_size": config["max_batch_size"],
        "inputs": [(t["name"], t["data_type"], t["dims"], t.get("optional", False)) for t in config["input"]],
        "parameters": {k: v["string_value"] for k, v in config["parameters"].items()},
    }

    x = triton.InferInput("x", list(X.shape), "FP32")
    x.set_data_from_numpy(X)  # raw bytes, the client's default
    default = client.infer(model, [x], request_id="triton-1")
    report["default"] = lists(default, ["weights", "means", "scales"])
    report["default_id"] = default.get_response().id
    report["default_version"] = default.get_response().model_version

    names = ["samples", "modes", "mode_mass", "num_modes"]
    chosen = client.infer(
        model,
        [x],
        outputs=[triton.InferRequestedOutput(n) for n in names],
        parameters={"num_samples": 20, "seed": 5, "temperature": 0.5, "max_modes": 2},
    )
    report["chosen"] = lists(chosen, names)
    report["chosen_outputs"] = [o.name for o in chosen.get_response().outputs]

    bad = triton.InferInput("x", [1, 3], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
    report["wrong_shape"] = error_of(lambda: client.infer(model, [bad]))
    report["unknown_model"] = error_of(lambda: client.infer("no_such_model", [x]))
    report["unknown_output"] = error_of(
        lambda: client.infer(model, [x], outputs=[triton.InferRequestedOutput("logits")])
    )
    report["stats_after"] = client.get_inference_statistics(model, as_json=True)
    report["index"] = client.get_model_repository_index(as_json=True)
    report["stats_unknown_model"] = error_of(lambda: client.get_inference_statistics("no_such_model"))
    client.close()
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
