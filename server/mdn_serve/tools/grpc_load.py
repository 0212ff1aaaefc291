"""`mdn-loadtest` over gRPC (mdn.v1 or the Open Inference Protocol): channels, metadata, the sender."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import grpc

from mdn_serve._proto.inference import grpc_service_pb2 as oip
from mdn_serve._proto.mdn.v1 import mdn_pb2 as pb
from mdn_serve.tools.channel import ChannelConfig, read_token
from mdn_serve.tools.payloads import MetadataMissing

if TYPE_CHECKING:
    from mdn_serve.tools.loadtest import LoadConfig


def channel_config(config: LoadConfig) -> ChannelConfig:
    return ChannelConfig(
        config.target,
        tls=config.tls,
        ca_cert=config.ca_cert,
        client_cert=config.client_cert,
        client_key=config.client_key,
        token=read_token(config.token_file),
    )


def auth_metadata(config: LoadConfig) -> list[tuple[str, str]] | None:
    return channel_config(config).metadata()


def _channel(config: LoadConfig) -> grpc.aio.Channel:
    return channel_config(config).open_aio()


async def fetch_metadata(config: LoadConfig) -> tuple[dict[str, Any], int]:
    """The model's metadata JSON and input width, from mdn.v1 GetModel (or OIP ModelMetadata)."""
    async with _channel(config) as channel:
        try:
            get = channel.unary_unary(
                "/mdn.v1.MixtureDensityService/GetModel",
                request_serializer=pb.GetModelRequest.SerializeToString,
                response_deserializer=pb.ModelInfo.FromString,
            )
            info = await get(
                pb.GetModelRequest(model=pb.ModelRef(name=config.model)),
                timeout=config.timeout,
                metadata=auth_metadata(config),
            )
            return json.loads(info.metadata_json or "{}"), info.input_dim
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
        meta = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelMetadata",
            request_serializer=oip.ModelMetadataRequest.SerializeToString,
            response_deserializer=oip.ModelMetadataResponse.FromString,
        )
        response = await meta(
            oip.ModelMetadataRequest(name=config.model), timeout=config.timeout, metadata=auth_metadata(config)
        )
        if not response.inputs or not response.inputs[0].shape:
            raise MetadataMissing(
                f"model {config.model!r} at {config.target} lists no input shape in its metadata; "
                "give --input-dim (and --input-name if its input is not called 'x')"
            )
        return {}, int(response.inputs[0].shape[-1])


class GrpcSender:
    """Sends pre-encoded requests of one method over `--channels` gRPC channels."""

    def __init__(self, config: LoadConfig, payloads: list[tuple[str, bytes]]) -> None:
        self.config, self.bodies = config, [body for _, body in payloads]
        self.channels = [_channel(config) for _ in range(max(1, config.channels))]
        method = payloads[0][0]
        self.calls = [c.unary_unary(method, request_serializer=None, response_deserializer=None) for c in self.channels]
        self.auth = auth_metadata(config)

    async def ready(self) -> None:
        for channel in self.channels:
            await asyncio.wait_for(channel.channel_ready(), self.config.timeout)

    async def send(self, i: int) -> tuple[str, str]:
        try:
            await self.calls[i % len(self.calls)](self.bodies[i % len(self.bodies)], timeout=self.config.timeout,
                                                  metadata=self.auth)  # fmt: skip
        except grpc.aio.AioRpcError as exc:
            return exc.code().name, exc.details() or ""
        return "OK", ""

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
