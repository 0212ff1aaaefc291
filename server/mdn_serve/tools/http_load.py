"""`mdn-loadtest --protocol oip-http`: the Open Inference Protocol over HTTP/REST, as a client that cares
about speed sends it (binary tensors both ways, one keep-alive connection per client).

The same outputs and parameters as the gRPC form for each --rpc; HTTP statuses are counted under the
gRPC code names the server's metrics use (429 is RESOURCE_EXHAUSTED), so reports read the same.
"""

from __future__ import annotations

import json
import ssl
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from mdn_serve.tools.channel import read_token
from mdn_serve.tools.payloads import MetadataMissing

if TYPE_CHECKING:
    import aiohttp

    from mdn_serve.tools.loadtest import LoadConfig

HEADER_LENGTH = "Inference-Header-Content-Length"
CODES = {200: "OK", 400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED",
         500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}  # fmt: skip
OUTPUTS = {"predict": (), "sample": ("samples",), "modes": ("modes", "mode_mass", "num_modes"),
           "solve": ("ik_solutions", "ik_num_solutions")}  # fmt: skip


def base_url(config: LoadConfig) -> str:
    secure = config.tls or bool(config.ca_cert or config.client_cert)
    return f"{'https' if secure else 'http'}://{config.target}"


def ssl_context(config: LoadConfig) -> ssl.SSLContext | None:
    if not (config.tls or config.ca_cert or config.client_cert):
        return None
    context = ssl.create_default_context(cafile=config.ca_cert or None)
    if config.client_cert:
        context.load_cert_chain(config.client_cert, config.client_key or None)
    return context


def headers(config: LoadConfig) -> dict[str, str]:
    token = read_token(config.token_file)
    return {"Authorization": f"Bearer {token}"} if token else {}


def encode_body(config: LoadConfig, x: NDArray[np.float32]) -> bytes:
    """An infer request's body: its JSON header, then the input tensor (little-endian float32)."""
    blob = np.ascontiguousarray(x, "<f4").tobytes()
    tensor = {"name": config.input_name, "shape": list(x.shape), "datatype": "FP32",
              "parameters": {"binary_data_size": len(blob)}}  # fmt: skip
    params: dict[str, Any] = {"binary_data_output": True}
    if config.rpc == "sample":
        params["num_samples"] = config.num_samples
    document: dict[str, Any] = {"inputs": [tensor], "parameters": params}
    if OUTPUTS[config.rpc]:
        document["outputs"] = [{"name": n} for n in OUTPUTS[config.rpc]]
    return json.dumps(document).encode() + blob


def header_length(body: bytes) -> int:
    """Where an encode_body body's JSON ends (the tensor's bytes follow it)."""
    return json.JSONDecoder().raw_decode(body.decode("latin-1"))[1]


async def fetch_metadata(config: LoadConfig) -> tuple[dict[str, Any], int]:
    """The model's metadata JSON (from its configuration's `mdn_metadata`, when the server gives one) and
    its input width (from its metadata's input shape)."""
    import aiohttp

    url = f"{base_url(config)}/v2/models/{config.model}"
    timeout = aiohttp.ClientTimeout(total=config.timeout)
    context = ssl_context(config)
    tls: ssl.SSLContext | bool = context if context is not None else True
    async with aiohttp.ClientSession(timeout=timeout, headers=headers(config)) as session:
        async with session.get(url, ssl=tls) as reply:
            meta = await _json(reply)
        async with session.get(f"{url}/config", ssl=tls) as reply:
            config_doc = await _json(reply) if reply.status == 200 else {}
    inputs = meta.get("inputs") or []
    if not inputs or not inputs[0].get("shape"):
        raise MetadataMissing(
            f"model {config.model!r} at {config.target} lists no input shape in its metadata; "
            "give --input-dim (and --input-name if its input is not called 'x')"
        )
    text = (config_doc.get("parameters", {}).get("mdn_metadata") or {}).get("string_value", "{}")
    return json.loads(text), int(inputs[0]["shape"][-1])


async def _json(reply: aiohttp.ClientResponse) -> dict[str, Any]:
    body = await reply.read()
    if reply.status != 200:
        raise MetadataMissing(f"{reply.url} answered {reply.status}: {body[:300].decode(errors='replace')}")
    document: dict[str, Any] = json.loads(body)
    return document


class HttpSender:
    """Sends pre-encoded infer bodies over `concurrency` keep-alive connections."""

    def __init__(self, config: LoadConfig, bodies: list[bytes]) -> None:
        self.config = config
        self.bodies = bodies
        self.url = f"{base_url(config)}/v2/models/{config.model}/infer"
        self.session: aiohttp.ClientSession | None = None
        self._ssl = ssl_context(config)
        self._headers = [{**headers(config), HEADER_LENGTH: str(header_length(b))} for b in bodies]

    async def ready(self) -> None:
        import aiohttp

        limit = max(self.config.concurrency, 1) if self.config.rate <= 0 else 0  # open loop: as many as needed
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, ssl=self._ssl if self._ssl is not None else True),
            timeout=aiohttp.ClientTimeout(total=self.config.timeout),
        )

    async def send(self, i: int) -> tuple[str, str]:
        """(status code name, the error's message) of one request."""
        import aiohttp

        assert self.session is not None
        k = i % len(self.bodies)
        try:
            async with self.session.post(self.url, data=self.bodies[k], headers=self._headers[k]) as reply:
                body = await reply.read()
                if reply.status == 200:
                    return "OK", ""
                try:
                    detail = str(json.loads(body).get("error", ""))
                except (ValueError, AttributeError):
                    detail = body[:300].decode(errors="replace")
                return CODES.get(reply.status, f"HTTP_{reply.status}"), detail
        except TimeoutError:
            return "DEADLINE_EXCEEDED", f"no answer within --timeout {self.config.timeout:g} s"
        except aiohttp.ClientError as exc:
            return "UNAVAILABLE", f"{type(exc).__name__}: {exc}"

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
