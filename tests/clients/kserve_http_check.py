"""Drive mdn-serve's HTTP/REST endpoint with KServe's own REST client (`kserve.InferenceRESTClient`,
Open Inference Protocol v2); print what it saw as JSON.

usage: python kserve_http_check.py HOST:PORT MODEL
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceRESTClient, RESTConfig
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

X = np.array([[0.6, 0.6], [0.9, 0.3]], np.float32)


async def main() -> None:
    target, model = sys.argv[1], sys.argv[2]
    base = f"http://{target}"
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    report: dict[str, object] = {
        "live": await client.is_server_live(base),
        "ready": await client.is_server_ready(base),
        "model_ready": await client.is_model_ready(base, model),
    }
    for binary in (False, True):
        x = InferInput(name="x", shape=list(X.shape), datatype="FP32")
        x.set_data_from_numpy(X, binary_data=binary)
        outputs = [
            RequestedOutput(name=n, parameters={"binary_data": binary}) for n in ("weights", "modes", "num_modes")
        ]
        request = InferRequest(
            model_name=model,
            infer_inputs=[x],
            request_outputs=outputs,
            request_id=f"kserve-{binary}",
            parameters={"max_modes": 2},
        )
        response = await client.infer(base, request, model_name=model)
        report["binary" if binary else "json"] = {
            "id": response.id,
            "outputs": {o.name: np.nan_to_num(o.as_numpy(), nan=-999).tolist() for o in response.outputs},
        }
    await client.close()
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    asyncio.run(main())
