"""The Open Inference Protocol (KServe v2) over HTTP/REST, with Triton's binary tensor and statistics extensions."""

from mdn_serve.protocols.oip_http.server import PROTOCOL, HttpFrontend

__all__ = ["PROTOCOL", "HttpFrontend"]
