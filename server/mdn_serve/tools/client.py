"""A small client for mdn.v1 (MdnClient); the `mdn-client` command is in client_cli."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mdn_serve._proto.mdn.v1 import mdn_pb2 as pb
from mdn_serve._proto.mdn.v1 import mdn_pb2_grpc as pb_grpc
from mdn_serve.protocols.mdn_v1.tensors import decode_tensor, encode_tensor
from mdn_serve.tools.channel import ChannelConfig

Array = NDArray[np.float32]
_NO_LIMIT = 1 << 62


def _arr(tensor: pb.Tensor) -> Array:
    return decode_tensor(tensor, "response", _NO_LIMIT)[0]


@dataclass(frozen=True)
class PredictResult:
    model: str
    version: str
    weights: Array  # (B, K)
    means: Array  # (B, K, D)
    scales: Array  # (B, K, D)


@dataclass(frozen=True)
class SampleResult:
    model: str
    version: str
    samples: Array  # (B, N, D)


@dataclass(frozen=True)
class SolveResult:
    model: str
    version: str
    solutions: Array  # (B, M, J) joint angles, NaN-padded, best first
    position_error: Array  # (B, M)
    within_limits: Array  # (B, M) 1 or 0
    score: Array  # (B, M) mixture mass behind each solution
    num_solutions: list[int]
    status: list[str]  # "ok", or why a target has no solution
    orientation_error: Array  # (B, M) radians, for pose targets (NaN otherwise)


@dataclass(frozen=True)
class ModesResult:
    model: str
    version: str
    modes: Array  # (B, M, D), NaN-padded
    log_density: Array  # (B, M)
    mass: Array  # (B, M)
    num_modes: list[int]


class MdnClient:
    """Blocking client. raw=True sends and receives tensors as little-endian bytes (the fast path).

    TLS: pass ca_cert (PEM path; None with tls=True uses the system roots), and client_cert and
    client_key for mutual TLS. token adds `authorization: Bearer <token>` to every call.
    """

    def __init__(
        self,
        target: str,
        timeout: float = 30.0,
        raw: bool = True,
        max_message_bytes: int = 64 << 20,
        tls: bool = False,
        ca_cert: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        token: str | None = None,
    ) -> None:
        self.config = ChannelConfig(
            target,
            tls=tls,
            ca_cert=ca_cert or "",
            client_cert=client_cert or "",
            client_key=client_key or "",
            token=token or "",
            max_message_bytes=max_message_bytes,
        )
        self.channel = self.config.open()
        self.stub = pb_grpc.MixtureDensityServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.ik_stub = pb_grpc.InverseKinematicsServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.timeout = timeout
        self.raw = raw
        self._metadata = self.config.metadata()

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> MdnClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _inputs(self, inputs: Any) -> pb.Tensor:
        return encode_tensor(np.atleast_2d(np.asarray(inputs, dtype=np.float32)), self.raw)

    def list_models(self) -> list[pb.ModelInfo]:
        return list(self.stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout, metadata=self._metadata).models)

    def get_model(self, name: str, version: str = "") -> pb.ModelInfo:
        request = pb.GetModelRequest(model=pb.ModelRef(name=name, version=version))
        info: pb.ModelInfo = self.stub.GetModel(request, timeout=self.timeout, metadata=self._metadata)
        return info

    def predict(self, name: str, inputs: Any, version: str = "") -> PredictResult:
        req = pb.PredictRequest(model=pb.ModelRef(name=name, version=version), inputs=self._inputs(inputs))
        r = self.stub.Predict(req, timeout=self.timeout, metadata=self._metadata)
        return PredictResult(r.model.name, r.model.version, _arr(r.weights), _arr(r.means), _arr(r.scales))

    def sample(
        self,
        name: str,
        inputs: Any,
        num_samples: int,
        seed: int | None = None,
        temperature: float = 0.0,
        version: str = "",
        scale_temperature: float | None = None,
    ) -> SampleResult:
        req = pb.SampleRequest(
            model=pb.ModelRef(name=name, version=version),
            inputs=self._inputs(inputs),
            num_samples=num_samples,
            seed=seed,
            temperature=temperature,
            scale_temperature=scale_temperature,
        )
        r = self.stub.Sample(req, timeout=self.timeout, metadata=self._metadata)
        return SampleResult(r.model.name, r.model.version, _arr(r.samples))

    def modes(self, name: str, inputs: Any, max_modes: int = 0, version: str = "") -> ModesResult:
        req = pb.ModesRequest(
            model=pb.ModelRef(name=name, version=version), inputs=self._inputs(inputs), max_modes=max_modes
        )
        r = self.stub.Modes(req, timeout=self.timeout, metadata=self._metadata)
        return ModesResult(
            r.model.name, r.model.version, _arr(r.modes), _arr(r.log_density), _arr(r.mass), list(r.num_modes)
        )

    def solve(
        self,
        name: str,
        targets: Any,
        max_solutions: int = 0,
        refine: bool = True,
        tolerance: float = 0.0,
        num_samples: int = 0,
        seed: int | None = None,
        version: str = "",
        orientation_tolerance: float = 0.0,
        seed_state: Any = None,
    ) -> SolveResult:
        """Inverse kinematics: every distinct joint configuration reaching each target.

        targets (B, width) in the model's layout: x, y (planar); x, y, z (position); or
        x, y, z, qx, qy, qz, qw (pose). seed_state (B, J) or (1, J): rank by distance to it.
        """
        req = pb.SolveRequest(
            model=pb.ModelRef(name=name, version=version),
            targets=self._inputs(targets),
            max_solutions=max_solutions,
            refine=refine,
            tolerance=tolerance,
            num_samples=num_samples,
            seed=seed,
            orientation_tolerance=orientation_tolerance,
        )
        if seed_state is not None:
            req.seed_state.CopyFrom(self._inputs(seed_state))
        r = self.ik_stub.Solve(req, timeout=self.timeout, metadata=self._metadata)
        return SolveResult(
            r.model.name,
            r.model.version,
            _arr(r.solutions),
            _arr(r.position_error),
            _arr(r.within_limits),
            _arr(r.score),
            list(r.num_solutions),
            list(r.status),
            _arr(r.orientation_error),
        )
