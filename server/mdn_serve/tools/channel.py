"""One way to open a channel to mdn-serve for every tool: TLS, mutual TLS, bearer token, message limits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class ChannelConfig:
    target: str = "localhost:8001"
    tls: bool = False  # TLS with the system roots unless ca_cert is given
    ca_cert: str = ""  # PEM CA bundle that signed the server's certificate (implies TLS)
    client_cert: str = ""  # PEM client certificate and key, for mutual TLS (implies TLS)
    client_key: str = ""
    token: str = ""  # sent as `authorization: Bearer <token>` on every call
    max_message_bytes: int = 256 << 20

    @property
    def secure(self) -> bool:
        return self.tls or bool(self.ca_cert or self.client_cert)

    def options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
        ]

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=Path(self.ca_cert).read_bytes() if self.ca_cert else None,
            private_key=Path(self.client_key).read_bytes() if self.client_key else None,
            certificate_chain=Path(self.client_cert).read_bytes() if self.client_cert else None,
        )

    def metadata(self) -> list[tuple[str, str]] | None:
        """Call metadata: the bearer token, when there is one."""
        return [("authorization", f"Bearer {self.token}")] if self.token else None

    def open(self) -> grpc.Channel:
        """A blocking channel."""
        if self.secure:
            return grpc.secure_channel(self.target, self.credentials(), options=self.options())
        return grpc.insecure_channel(self.target, options=self.options())

    def open_aio(self) -> grpc.aio.Channel:
        """An asyncio channel."""
        if self.secure:
            return grpc.aio.secure_channel(self.target, self.credentials(), options=self.options())
        return grpc.aio.insecure_channel(self.target, options=self.options())


def read_token(path: str | None) -> str:
    """The bearer token in a file, or "" for no file."""
    return Path(path).read_text().strip() if path else ""
