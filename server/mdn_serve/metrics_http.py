"""The /metrics HTTP endpoint: prometheus_client's WSGI app on a threaded server whose connections
must send their request within READ_TIMEOUT seconds (a half-sent request cannot hold a thread)."""

from __future__ import annotations

import socket
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

READ_TIMEOUT = 5.0  # seconds a connection gets to send its request
POLL_SECONDS = 0.05  # how soon shutdown() is noticed (the default 0.5 s would delay every stop)


class _Handler(WSGIRequestHandler):
    timeout = READ_TIMEOUT  # applied to the socket by StreamRequestHandler

    def handle(self) -> None:
        try:
            super().handle()
        except (TimeoutError, ConnectionError):  # a slow or vanished client: drop it quietly
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not worth a log line
        pass


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def serve_metrics(port: int, host: str, registry: CollectorRegistry) -> WSGIServer:
    """Serve registry on host:port (0: a free port) from a daemon thread; returns the server."""
    family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0][0]
    server_class: type[_Server] = type("MetricsServer", (_Server,), {"address_family": family})
    httpd: WSGIServer = make_server(host, port, make_wsgi_app(registry), server_class, handler_class=_Handler)
    threading.Thread(target=httpd.serve_forever, args=(POLL_SECONDS,), name="metrics-http", daemon=True).start()
    return httpd
