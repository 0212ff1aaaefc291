"""The HTTP endpoint's socket and connections: bound before models load, served by aiohttp on the running
event loop, with a cap on open connections (past it, a new connection is answered 503 and closed)."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl

from aiohttp import web

from mdn_serve.errors import MdnError
from mdn_serve.protocols.oip_http.codec import JSON_TYPE


def bind_socket(host: str, port: int, share_port: bool) -> socket.socket:
    family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if share_port:  # --workers: every worker binds the port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise MdnError(
            f"cannot bind HTTP {host}:{port} ({exc.strerror}): is another server on it? pick another "
            "--http-port, or -1 to turn HTTP off"
        ) from None
    return sock


def refusal(limit: int) -> bytes:
    """The whole answer to a connection past the cap."""
    body = json.dumps({"error": f"this server holds its limit of {limit} HTTP connections "
                                "(--max-http-connections); retry later or on another replica"}).encode()  # fmt: skip
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: {JSON_TYPE}\r\nContent-Length: {len(body)}"
            "\r\nRetry-After: 1\r\nConnection: close\r\n\r\n")  # fmt: skip
    return head.encode() + body


class _Refuse(asyncio.Protocol):
    """A connection past the cap: answered 503 with the reason at once, then closed."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self.answer)
        transport.close()


class Listener:
    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self._sock: socket.socket | None = None
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None

    def bind(self, host: str, port: int, share_port: bool) -> int:
        self._sock = bind_socket(host, port, share_port)
        port_bound: int = self._sock.getsockname()[1]
        return port_bound

    async def start(
        self, app: web.Application, ssl_context: ssl.SSLContext | None, keepalive_seconds: float, stop_seconds: float
    ) -> None:
        assert self._sock is not None, "bind() first"
        runner = web.AppRunner(
            app,
            shutdown_timeout=stop_seconds,
            access_log=None,
            handler_cancellation=True,  # a client that disconnects cancels its request's work
            keepalive_timeout=keepalive_seconds,  # also closes a connection idle or stalled in its headers
        )
        await runner.setup()
        handlers = runner.server
        assert handlers is not None
        answer = refusal(self.max_connections)

        def connection() -> asyncio.Protocol:
            """aiohttp's handler for a new connection, or, past the cap, one that says why and closes."""
            if len(handlers.connections) >= self.max_connections:
                return _Refuse(answer)
            return handlers()

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(connection, sock=self._sock, ssl=ssl_context, backlog=1024)
        self._runner = runner

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        elif self._sock is not None:
            self._sock.close()
