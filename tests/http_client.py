"""A small HTTP client for the tests of the HTTP/REST endpoint: requests over a real socket, answers decoded
(JSON or Triton's binary tensors) into numpy arrays."""

from __future__ import annotations

import http.client
import json
import ssl
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

ARM = "two_link_arm"
X = np.array([[0.6, 0.6], [0.9, 0.3]], np.float32)


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    port: int,
    method: str,
    path: str,
    body: bytes | object | None = None,
    headers: Mapping[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> Reply:
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
    if context is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=context)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def infer_body(x: np.ndarray = X, outputs: list[str] | None = None, **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                        "data": x.ravel().tolist()}]}  # fmt: skip
    if outputs:
        body["outputs"] = [{"name": n} for n in outputs]
    if params:
        body["parameters"] = params
    return body


def arrays(reply: Reply) -> dict[str, np.ndarray]:
    """A JSON or binary infer answer's outputs as numpy arrays (JSON null -> NaN)."""
    header_length = reply.headers.get("inference-header-content-length")
    text, blob = (reply.body, b"") if header_length is None else (
        reply.body[: int(header_length)], reply.body[int(header_length):])  # fmt: skip
    document = json.loads(text)
    out: dict[str, np.ndarray] = {}
    offset = 0
    for o in document["outputs"]:
        size = o.get("parameters", {}).get("binary_data_size")
        if size is None:
            dtype = np.int32 if o["datatype"] == "INT32" else (object if o["datatype"] == "BYTES" else np.float32)
            values = [np.nan if v is None else v for v in o["data"]] if dtype is np.float32 else o["data"]
            out[o["name"]] = np.array(values, dtype=dtype).reshape(o["shape"])
            continue
        raw = blob[offset : offset + size]
        offset += size
        if o["datatype"] == "BYTES":
            items, i = [], 0
            while i < len(raw):
                (n,) = struct.unpack_from("<I", raw, i)
                items.append(raw[i + 4 : i + 4 + n].decode())
                i += 4 + n
            out[o["name"]] = np.array(items, dtype=object).reshape(o["shape"])
        else:
            dtype = np.int32 if o["datatype"] == "INT32" else np.float32
            out[o["name"]] = np.frombuffer(raw, dtype=dtype).reshape(o["shape"])
    assert offset == len(blob)
    return out
