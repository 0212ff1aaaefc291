"""A small client for mdn.v1, as a library (MdnClient) and a CLI (`mdn-client`)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from numpy.typing import NDArray

from mdn_serve._proto.mdn.v1 import mdn_pb2 as pb
from mdn_serve._proto.mdn.v1 import mdn_pb2_grpc as pb_grpc
from mdn_serve.protocols.mdn_v1.tensors import decode_tensor, encode_tensor
from mdn_serve.tools.channel import ChannelConfig, read_token

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
    ) -> SampleResult:
        req = pb.SampleRequest(
            model=pb.ModelRef(name=name, version=version),
            inputs=self._inputs(inputs),
            num_samples=num_samples,
            seed=seed,
            temperature=temperature,
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


# ---------------------------------------------------------------- CLI


def _read_inputs(args: argparse.Namespace, info: pb.ModelInfo) -> Array:
    names = list(info.input_names)
    if args.csv:
        with Path(args.csv).open(newline="") as handle:
            rows = [r for r in csv.reader(handle) if r]
        if not rows:
            raise SystemExit(f"mdn-client: error: {args.csv} is empty")
        header = [h.strip() for h in rows[0]]
        missing = [n for n in names if n not in header]
        if missing:
            raise SystemExit(
                f"mdn-client: error: {args.csv} needs columns {', '.join(names)}; missing {', '.join(missing)}"
            )
        cols = [header.index(n) for n in names]
        try:
            return np.array([[float(r[c]) for c in cols] for r in rows[1:]], dtype=np.float32)
        except (ValueError, IndexError) as exc:
            raise SystemExit(f"mdn-client: error: {args.csv}: {exc}") from None
    if not args.input:
        raise SystemExit(f"mdn-client: error: give --input {','.join(names)} (repeat for a batch) or --csv FILE")
    try:
        return np.array([[float(v) for v in item.split(",")] for item in args.input], dtype=np.float32)
    except ValueError as exc:
        raise SystemExit(f"mdn-client: error: --input: {exc}") from None


def _point(names: Sequence[str], values: Sequence[float]) -> str:
    return " ".join(f"{n}={v:.6g}" for n, v in zip(names, values, strict=True))


def _jsonable(a: NDArray[np.floating]) -> Any:
    """Nested lists, with NaN padding as null."""
    obj = a.astype(object)
    obj[np.isnan(a)] = None
    return obj.tolist()


def _model_lines(info: pb.ModelInfo) -> str:
    return (
        f"{info.name}  version {info.version} (of {', '.join(info.versions)})  "
        f"{', '.join(info.input_names)} -> {', '.join(info.output_names)}  K={info.components}"
    )


def _result_lines(result: PredictResult | SampleResult | ModesResult, info: pb.ModelInfo, x: Array) -> list[str]:
    ins, outs = list(info.input_names), list(info.output_names)
    lines = []
    for b, row in enumerate(x):
        lines.append(f"input {_point(ins, row)}  ({result.model} v{result.version})")
        if isinstance(result, PredictResult):
            for k in np.argsort(-result.weights[b]):
                lines.append(
                    f"  weight {result.weights[b, k]:.4f}  mean {_point(outs, result.means[b, k])}"
                    f"  scale {_point(outs, result.scales[b, k])}"
                )
        elif isinstance(result, SampleResult):
            lines += [f"  {_point(outs, sample)}" for sample in result.samples[b]]
        else:
            for j in range(result.num_modes[b]):
                lines.append(
                    f"  mode {j + 1}: {_point(outs, result.modes[b, j])}  mass {result.mass[b, j]:.4f}"
                    f"  log_density {result.log_density[b, j]:.4f}"
                )
    return lines


def _solve_lines(result: SolveResult, info: pb.ModelInfo, x: Array) -> list[str]:
    ins, outs = list(info.input_names), list(info.output_names)
    lines = []
    for b, row in enumerate(x):
        n = result.num_solutions[b]
        lines.append(f"target {_point(ins, row)}: {n} solution(s)  ({result.model} v{result.version})")
        if n == 0:
            lines.append(f"  {result.status[b]}")
        for j in range(n):
            limits = "within limits" if result.within_limits[b, j] == 1 else "OUTSIDE the joint limits"
            lines.append(
                f"  {j + 1}. {_point(outs, result.solutions[b, j])}  position error {result.position_error[b, j]:.2e}"
                f"  mass {result.score[b, j]:.3f}  {limits}"
            )
    return lines


def run_cli(args: argparse.Namespace, client: MdnClient) -> str:
    """Run one command and return what to print."""
    if args.command == "models":
        models = client.list_models()
        if args.json:
            return json.dumps(
                [
                    {
                        "name": m.name,
                        "version": m.version,
                        "versions": list(m.versions),
                        "input_names": list(m.input_names),
                        "output_names": list(m.output_names),
                        "components": m.components,
                    }
                    for m in models
                ],
                indent=2,
            )
        return "\n".join(_model_lines(m) for m in models)

    info = client.get_model(args.model, args.version)
    if args.command == "ik":
        if len(args.target_xy) % 2:
            raise SystemExit("mdn-client: error: give targets as x y pairs, e.g. `ik --model two_link_arm 0.6 0.5`")
        xy = np.array(args.target_xy, dtype=np.float32).reshape(-1, 2)
        found = client.solve(
            args.model, xy, args.max_solutions, not args.no_refine, args.tolerance, args.num_samples, args.seed,
            args.version,
        )  # fmt: skip
        if args.json:
            fields = {k: _jsonable(v) if isinstance(v, np.ndarray) else v for k, v in vars(found).items()}
            return json.dumps(fields)
        return "\n".join(_solve_lines(found, info, xy))
    x = _read_inputs(args, info)
    result: PredictResult | SampleResult | ModesResult
    if args.command == "predict":
        result = client.predict(args.model, x, args.version)
    elif args.command == "sample":
        result = client.sample(args.model, x, args.num_samples, args.seed, args.temperature, args.version)
    else:
        result = client.modes(args.model, x, args.max_modes, args.version)
    if args.json:
        fields = {k: _jsonable(v) if isinstance(v, np.ndarray) else v for k, v in vars(result).items()}
        return json.dumps(fields)
    return "\n".join(_result_lines(result, info, x))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mdn-client", description="Ask an mdn-serve server for mixtures, samples or modes."
    )
    p.add_argument("--target", default="localhost:8001", help="server address host:port (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--values", action="store_true", help="send tensors as repeated floats instead of raw bytes")
    p.add_argument("--timeout", type=float, default=30.0, help="deadline per call in seconds")
    p.add_argument("--tls", action="store_true", help="connect with TLS (system roots unless --ca-cert)")
    p.add_argument("--ca-cert", help="PEM CA certificate that signed the server's certificate (implies --tls)")
    p.add_argument("--client-cert", help="PEM client certificate, for mutual TLS")
    p.add_argument("--client-key", help="PEM client private key, for mutual TLS")
    p.add_argument("--token-file", help="file with the bearer token the server expects")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the served models")
    commands = {"predict": "mixture parameters", "sample": "draws from the mixture", "modes": "modes of the mixture"}
    for name, text in commands.items():
        c = sub.add_parser(name, help=text)
        c.add_argument("--model", required=True)
        c.add_argument("--version", default="", help="default: the latest")
        c.add_argument("--input", action="append", help="one input row, comma-separated; repeat for a batch")
        c.add_argument("--csv", help="a CSV file whose header names the model's inputs")
        if name == "sample":
            c.add_argument("-n", "--num-samples", type=int, default=10)
            c.add_argument("--seed", type=int)
            c.add_argument("--temperature", type=float, default=0.0, help="0 means 1.0")
        if name == "modes":
            c.add_argument("--max-modes", type=int, default=0, help="0: all")
    ik = sub.add_parser("ik", help="inverse kinematics: every joint configuration reaching each target")
    ik.add_argument("--model", required=True)
    ik.add_argument("--version", default="", help="default: the latest")
    ik.add_argument("target_xy", nargs="+", type=float, help="target positions as x y pairs")
    ik.add_argument("--max-solutions", type=int, default=0, help="0: all")
    ik.add_argument("--no-refine", action="store_true", help="return the mixture's modes unrefined")
    ik.add_argument("--tolerance", type=float, default=0.0, help="position error to refine to (0: 1e-6)")
    ik.add_argument("--num-samples", type=int, default=0, help="extra seeds drawn from the mixture")
    ik.add_argument("--seed", type=int)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    token = read_token(args.token_file)
    with MdnClient(
        args.target,
        timeout=args.timeout,
        raw=not args.values,
        tls=args.tls,
        ca_cert=args.ca_cert,
        client_cert=args.client_cert,
        client_key=args.client_key,
        token=token,
    ) as client:
        try:
            text = run_cli(args, client)
        except grpc.RpcError as exc:
            print(f"mdn-client: error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
