"""Transport security and authentication: TLS / mutual TLS credentials and a bearer-token check."""

from __future__ import annotations

import hmac
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from mdn_serve.config import Settings
from mdn_serve.errors import MdnError

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)  # probes work without a token


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (or mutual TLS with --tls-client-ca) credentials, or None for plaintext."""
    if not settings.tls_cert:
        return None
    try:
        chain = Path(settings.tls_cert).read_bytes()
        key = Path(settings.tls_key).read_bytes()
        client_ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    except OSError as exc:
        raise MdnError(f"cannot read TLS files: {exc}") from None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def server_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The same TLS (or mutual TLS) as server_credentials, for the HTTP server; None for plaintext."""
    if not settings.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
        if settings.tls_client_ca:
            context.load_verify_locations(cafile=settings.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise MdnError(f"cannot use the TLS files: {exc}") from None
    return context


def read_token(path: str) -> bytes:
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise MdnError(f"cannot read --auth-token-file: {exc}") from None
    if not token:
        raise MdnError(f"--auth-token-file {path} is empty")
    return token.encode()


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Lets a call through only with `authorization: Bearer <token>`; health stays open.

    The comparison takes the same time whatever the token sent; the token is never logged. A call
    without the token is UNAUTHENTICATED whatever method it names, real or not (so the methods
    cannot be enumerated without it), and on_refused() counts it.
    """

    def __init__(self, token: bytes, on_refused: Callable[[], None] | None = None) -> None:
        self._expected = b"Bearer " + token
        self._on_refused = on_refused

        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        async def refuse_stream(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
            yield  # pragma: no cover - abort raises

        self._refuse_unary = grpc.unary_unary_rpc_method_handler(refuse)
        self._refuse_stream = grpc.stream_stream_rpc_method_handler(refuse_stream)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if details.method.startswith(OPEN_PREFIXES):
            return await continuation(details)
        sent = b""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                sent = value.encode() if isinstance(value, str) else value
                break
        handler = await continuation(details)
        if hmac.compare_digest(sent, self._expected):
            return handler
        if self._on_refused is not None:
            self._on_refused()
        if handler is not None and (handler.request_streaming or handler.response_streaming):
            return self._refuse_stream
        return self._refuse_unary
