"""`mdn-client`: ask an mdn-serve server for mixtures, samples, modes or IK solutions from the shell."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from mdn_core.contract import parse_kinematics
from numpy.typing import NDArray

from mdn_serve._proto.mdn.v1 import mdn_pb2 as pb
from mdn_serve.tools.channel import read_token
from mdn_serve.tools.client import Array, MdnClient, ModesResult, PredictResult, SampleResult, SolveResult


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
    return _rows("--input", args.input, len(names), ", ".join(names))


def _rows(flag: str, items: Sequence[str], width: int, what: str) -> Array:
    """Comma-separated rows of `width` numbers each, with a message naming the row that is not."""
    rows = []
    for i, item in enumerate(items, 1):
        try:
            row = [float(v) for v in item.split(",")]
        except ValueError as exc:
            raise SystemExit(f"mdn-client: error: {flag} row {i} ({item!r}): {exc}") from None
        if len(row) != width:
            raise SystemExit(f"mdn-client: error: {flag} row {i} has {len(row)} values; each needs {width} ({what})")
        rows.append(row)
    return np.array(rows, dtype=np.float32)


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


def _solve_lines(result: SolveResult, info: pb.ModelInfo, x: Array, ins: list[str]) -> list[str]:
    outs = list(info.output_names)
    lines = []
    for b, row in enumerate(x):
        n = result.num_solutions[b]
        lines.append(f"target {_point(ins, row)}: {n} solution(s)  ({result.model} v{result.version})")
        if n == 0:
            lines.append(f"  {result.status[b]}")
        for j in range(n):
            limits = "within limits" if result.within_limits[b, j] == 1 else "OUTSIDE the joint limits"
            turn = result.orientation_error[b, j]
            rotation = "" if np.isnan(turn) else f"  orientation error {turn:.2e}"
            lines.append(
                f"  {j + 1}. {_point(outs, result.solutions[b, j])}  position error {result.position_error[b, j]:.2e}"
                f"{rotation}  mass {result.score[b, j]:.3f}  {limits}"
            )
    return lines


TARGET_LABELS = {"planar": None, "position": ["x", "y", "z"], "pose": ["x", "y", "z", "qx", "qy", "qz", "qw"]}


def _ik_targets(args: argparse.Namespace, info: pb.ModelInfo) -> tuple[Array, list[str]]:
    """The ik command's targets in the model's layout, and names for them."""
    chain = parse_kinematics(json.loads(info.metadata_json or "{}").get("kinematics"))
    layout = chain.target if chain is not None else "planar"
    width = 7 if layout == "pose" else (3 if layout == "position" else 2)
    values = [v for pose in args.pose or [] for v in pose] + list(args.target_xy)
    if args.input:  # the same --input rows as the other commands
        values += _rows("--input", args.input, width, f"a {layout} target").ravel().tolist()
    example = {"planar": "0.6 0.5", "position": "--position 0.4 0.1 0.5", "pose": "--pose 0.4 0.1 0.5 1 0 0 0"}
    if not values or len(values) % width:
        raise SystemExit(
            f"mdn-client: error: model {args.model!r} takes {layout} targets of {width} numbers each, "
            f"e.g. `ik --model {args.model} {example[layout]}`"
        )
    return np.array(values, dtype=np.float32).reshape(-1, width), TARGET_LABELS[layout] or list(info.input_names)


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
        xy, names = _ik_targets(args, info)
        found = client.solve(
            args.model, xy, args.max_solutions, not args.no_refine, args.tolerance, args.num_samples, args.seed,
            args.version, args.orientation_tolerance,
        )  # fmt: skip
        if args.json:
            fields = {k: _jsonable(v) if isinstance(v, np.ndarray) else v for k, v in vars(found).items()}
            return json.dumps(fields)
        return "\n".join(_solve_lines(found, info, xy, names))
    x = _read_inputs(args, info)
    result: PredictResult | SampleResult | ModesResult
    if args.command == "predict":
        result = client.predict(args.model, x, args.version)
    elif args.command == "sample":
        result = client.sample(
            args.model, x, args.num_samples, args.seed, args.temperature, args.version, args.scale_temperature
        )
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
    p.add_argument("--json", action="store_true", help="print JSON instead of text (here or after the command)")
    p.add_argument("--values", action="store_true", help="send tensors as repeated floats instead of raw bytes")
    p.add_argument("--timeout", type=float, default=30.0, help="deadline per call in seconds")
    p.add_argument("--tls", action="store_true", help="connect with TLS (system roots unless --ca-cert)")
    p.add_argument("--ca-cert", help="PEM CA certificate that signed the server's certificate (implies --tls)")
    p.add_argument("--client-cert", help="PEM client certificate, for mutual TLS")
    p.add_argument("--client-key", help="PEM client private key, for mutual TLS")
    p.add_argument("--token-file", help="file with the bearer token the server expects")
    sub = p.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("models", help="list the served models")
    # --json after the command too: `mdn-client modes ... --json` as well as `mdn-client --json modes ...`.
    listing.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON instead of text")
    commands = {"predict": "mixture parameters", "sample": "draws from the mixture", "modes": "modes of the mixture"}
    for name, text in commands.items():
        c = sub.add_parser(name, help=text)
        c.add_argument("--model", required=True)
        c.add_argument("--version", default="", help="default: the latest")
        c.add_argument("--input", action="append", help="one input row, comma-separated; repeat for a batch")
        c.add_argument("--csv", help="a CSV file whose header names the model's inputs")
        c.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON instead of text")
        if name == "sample":
            c.add_argument("-n", "--num-samples", type=int, default=10)
            c.add_argument("--seed", type=int)
            c.add_argument("--temperature", type=float, default=0.0, help="0 means 1.0")
            c.add_argument(
                "--scale-temperature",
                type=float,
                default=None,
                help="temperature of the scales alone (default: --temperature)",
            )
        if name == "modes":
            c.add_argument("--max-modes", type=int, default=0, help="0: all")
    ik = sub.add_parser("ik", help="inverse kinematics: every joint configuration reaching each target")
    ik.add_argument("--model", required=True)
    ik.add_argument("--version", default="", help="default: the latest")
    ik.add_argument("target_xy", nargs="*", type=float, help="targets in the model's layout: x y pairs for planar arms")
    ik.add_argument("--input", action="append", help="one target, comma-separated (as for the other commands)")
    ik.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON instead of text")
    ik.add_argument(
        "--pose",
        nargs=7,
        type=float,
        action="append",
        metavar=("X", "Y", "Z", "QX", "QY", "QZ", "QW"),
        help="a pose target (position, then a unit quaternion); repeat for a batch",
    )
    ik.add_argument(
        "--position",
        nargs=3,
        type=float,
        action="append",
        dest="pose",
        metavar=("X", "Y", "Z"),
        help="a position target, for position-only models; repeat for a batch",
    )
    ik.add_argument("--orientation-tolerance", type=float, default=0.0, help="radians (0: 1e-4)")
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
    try:
        print(text, flush=True)
    except BrokenPipeError:  # the reader (`| head`) has had enough: that is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
