"""`mdn-bench`: parse the flags, run the benchmark, write report.md, report.json and the plot."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mdn_serve.tools.bench import run as bench_run
from mdn_serve.tools.bench.ceilings import Placement
from mdn_serve.tools.bench.http import HTTP_POINTS
from mdn_serve.tools.bench.points import QUICK, default_points
from mdn_serve.tools.bench.report import plot, render
from mdn_serve.tools.bench.run import run_bench


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mdn-bench", description=(bench_run.__doc__ or "").splitlines()[0])
    p.add_argument("--models", type=Path, default=Path("models"))
    p.add_argument("--model", default="two_link_arm")
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    p.add_argument("--seconds", type=float, default=2.0, help="measured seconds per point")
    p.add_argument("--quick", action="store_true", help="a few points only (a smoke run)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--repeats", type=int, default=3, help="runs of Predict batch 1 with 32 clients (median kept)")
    p.add_argument(
        "--tuned-delay-ms", type=float, default=2.0,
        help="also run Predict with 32 clients on a server with this --max-queue-delay-ms (0: skip)",
    )  # fmt: skip
    p.add_argument("--no-pin", action="store_true", help="leave the servers and the load generator unpinned")
    p.add_argument("server_args", nargs="*", help="extra mdn-serve flags, after --")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.tuned_delay_ms < 0:
        p.error("--repeats must be >= 1 and --tuned-delay-ms >= 0")
    if not (args.models / args.model).is_dir():
        print(f"mdn-bench: error: no model {args.model!r} under {args.models}; run `make train export` first",
              file=sys.stderr)  # fmt: skip
        return 2
    points = QUICK if args.quick else default_points()
    server_args = ["--device", args.device, *args.server_args]
    placement = Placement() if args.no_pin else Placement.split()
    http_points = [HTTP_POINTS[1], HTTP_POINTS[2]] if args.quick else HTTP_POINTS
    report = run_bench(
        args.models, args.model, points, args.seconds, server_args, args.repeats, args.tuned_delay_ms, placement,
        http_points,
    )  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    text = render(report)
    (args.out / "report.md").write_text(text)
    plot(report, args.out / "latency_vs_throughput.png")
    print()
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
