"""mdn-loadtest and mdn-bench against real servers, briefly: they count what they send and report it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys

import pytest
from mdn_serve.tools import loadtest

from tests.conftest import serve_in_process


@pytest.mark.parametrize(
    "args",
    [
        ["--rpc", "predict", "--batch", "4", "--concurrency", "4"],
        ["--protocol", "oip", "--rpc", "modes", "--batch", "8", "--concurrency", "2"],
        ["--rpc", "sample", "--num-samples", "10", "--rate", "200"],
        ["--rpc", "solve", "--batch", "4", "--concurrency", "2"],
        ["--protocol", "oip", "--rpc", "solve", "--batch", "2", "--concurrency", "2"],
    ],
)
def test_loadtest_reports_throughput_latency_and_codes(server, tmp_path, capsys, args):
    out = tmp_path / "result.json"
    code = loadtest.main(["--target", server.target, "--duration", "0.5", "--warmup", "0.1", "--quiet",
                          "--json", str(out), *args])  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert result["requests"] > 0 and result["codes"] == {"OK": result["requests"]}
    assert result["rows"] == result["requests"] * result["config"]["batch"]
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"] <= result["latency_ms"]["max"]
    if "--rate" in args:  # open loop: the schedule, not the server, sets the pace
        assert result["requests_per_second"] == pytest.approx(200, rel=0.2)
    table = capsys.readouterr().out
    assert "| requests | req/s | rows/s |" in table and "status codes: OK" in table


@pytest.mark.parametrize(
    "args",
    [
        ["--rpc", "predict", "--batch", "4", "--concurrency", "4"],
        ["--rpc", "modes", "--batch", "8", "--concurrency", "2"],
        ["--rpc", "sample", "--num-samples", "10", "--rate", "200"],
        ["--rpc", "solve", "--batch", "4", "--concurrency", "2"],
    ],
)
def test_loadtest_over_http_reports_the_same(server, tmp_path, args):
    """--protocol oip-http against the HTTP port: binary tensors both ways, the same report."""
    out = tmp_path / "result.json"
    code = loadtest.main(["--target", f"127.0.0.1:{server.http_port}", "--protocol", "oip-http", "--duration", "0.5",
                          "--warmup", "0.1", "--quiet", "--json", str(out), *args])  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert result["requests"] > 0 and result["codes"] == {"OK": result["requests"]}
    assert result["rows"] == result["requests"] * result["config"]["batch"]


def test_loadtest_over_http_counts_errors_under_the_grpc_code_names(server, tmp_path, capsys):
    out = tmp_path / "result.json"
    code = loadtest.main(["--target", f"127.0.0.1:{server.http_port}", "--protocol", "oip-http", "--batch", "100",
                          "--duration", "0.3", "--warmup", "0", "--quiet", "--json", str(out)])  # fmt: skip
    assert code == 1
    assert set(json.loads(out.read_text())["codes"]) == {"INVALID_ARGUMENT"}
    assert "first INVALID_ARGUMENT: batch of 100 rows is over this server's limit" in capsys.readouterr().err
    missing = ["--target", f"127.0.0.1:{server.http_port}", "--protocol", "oip-http", "--model", "nope", "--quiet"]
    assert loadtest.main([*missing, "--duration", "0.3"]) == 1
    assert "answered 404: " in capsys.readouterr().err


def test_loadtest_counts_errors_by_status_and_fails_when_nothing_succeeds(server, tmp_path, capsys):
    out = tmp_path / "result.json"
    code = loadtest.main(["--target", server.target, "--model", "two_link_arm", "--batch", "100", "--duration",
                          "0.3", "--warmup", "0", "--quiet", "--json", str(out)])  # fmt: skip
    assert code == 1
    result = json.loads(out.read_text())  # the test server allows 64 rows per request
    assert set(result["codes"]) == {"INVALID_ARGUMENT"} and result["requests"] > 0
    assert result["rows"] == 0 and result["rows_per_second"] == 0  # nothing was answered
    err = capsys.readouterr().err
    assert "first INVALID_ARGUMENT: batch of 100 rows is over this server's limit" in err
    assert "every request failed" in err


def test_loadtest_fails_over_its_error_rate_and_needs_no_metadata_given_the_input(server, tmp_path, capsys):
    """--input-dim and --input-name stand in for metadata that a peer server may not give; more
    failures than --max-error-rate make the run fail."""
    common = ["--target", server.target, "--model", "two_link_arm", "--protocol", "oip", "--input-dim", "2",
              "--input-name", "x", "--duration", "0.3", "--warmup", "0", "--quiet"]  # fmt: skip
    assert loadtest.main([*common, "--batch", "4"]) == 0
    assert "status codes: OK" in capsys.readouterr().out
    assert loadtest.main([*common, "--input-name", "nope"]) == 1
    assert "first INVALID_ARGUMENT: " in capsys.readouterr().err


def test_open_loop_throughput_is_counted_over_the_window_not_the_drain(trained, tmp_path):
    """A batch waits 0.8 s for more requests: the open loop then waits up to that long for its last answers,
    and dividing by that drain as well would report about (1 + 0.4) / (1 + 0.8) of the rate."""
    slow = serve_in_process("--model-repository", str(trained["models"]), "--max-queue-delay-ms", "800")
    try:
        out = tmp_path / "result.json"
        code = loadtest.main(["--target", slow.target, "--rate", "50", "--duration", "1.0", "--warmup", "1.0",
                              "--quiet", "--json", str(out)])  # fmt: skip
    finally:
        slow.stop()
    assert code == 0
    result = json.loads(out.read_text())
    assert result["latency_ms"]["p99"] >= 700  # the batching delay
    assert result["seconds"] == pytest.approx(1.0, abs=0.05)
    assert result["requests_per_second"] == pytest.approx(50, rel=0.12)
    assert result["requests"] == pytest.approx(50, abs=2)  # the ones sent within the window, answered or not


def test_loadtest_exit_code_follows_the_error_rate(monkeypatch, capsys):
    """main's verdict on a run where 10% of requests failed, at two thresholds."""

    async def ten_percent_failed(config, progress=False, model_info=None):
        latency = {"p50": 1.0, "p90": 2.0, "p99": 3.0, "max": 4.0}
        return loadtest.LoadResult(config=dataclasses.asdict(config), seconds=1.0, requests=100, rows=90,
                                   requests_per_second=100.0, rows_per_second=90.0, latency_ms=latency,
                                   answered_latency_ms=latency, codes={"OK": 90, "UNAVAILABLE": 10},
                                   first_errors={"UNAVAILABLE": "shutting down"})  # fmt: skip

    monkeypatch.setattr(loadtest, "run_load", ten_percent_failed)
    assert loadtest.main(["--quiet"]) == 1  # over the default 1%
    assert "10.0% of requests failed, over --max-error-rate 0.01" in capsys.readouterr().err
    assert loadtest.main(["--quiet", "--max-error-rate", "0.2"]) == 0
    assert "first UNAVAILABLE: shutting down" in capsys.readouterr().err


def test_loadtest_help_shows_every_default():
    help_text = loadtest.build_parser().format_help()
    assert "--max-error-rate" in help_text and "(default: 0.01)" in help_text


def test_loadtest_rejects_unbounded_or_bad_runs(capsys):
    for bad in (["--duration", "0"], ["--duration", "100000"], ["--batch", "0"], ["--concurrency", "0"]):
        with pytest.raises(SystemExit):
            loadtest.main(bad)
    assert "--duration must be in" in capsys.readouterr().err


def test_bench_smoke_writes_its_report(trained, tmp_path):
    # In its own process: the benchmark pins itself (and the servers it starts) to CPUs.
    args = ["--models", str(trained["models"]), "--out", str(tmp_path), "--quick", "--seconds", "0.3", "--repeats", "2"]
    subprocess.run([sys.executable, "-m", "mdn_serve.tools.bench", *args], check=True, capture_output=True, timeout=300)
    report = json.loads((tmp_path / "report.json").read_text())
    entries = report["results"] + report["tuned_results"]
    assert len(report["results"]) == 3 and len(report["tuned_results"]) == 2
    assert all(e["ours"]["requests"] > 0 and e["noop"]["requests"] > 0 for e in entries)
    assert [len(e["repeat_ratios"]) for e in entries] == [2, 1, 1, 2, 1]
    assert "--max-queue-delay-ms" in report["tuned_server_args"]
    names = [t["target"] for t in report["targets"]]
    assert sum(name.startswith("Predict batch 1, 32 clients") for name in names) == 2
    assert "start to SERVING, seconds" in names
    http = report["http_results"]  # JSON at batch 1, binary at 1024, each on ours and the no-op HTTP server
    assert [(e["batch"], e["binary"]) for e in http] == [(1, False), (1024, True)]
    assert all(set(e["ours"]["codes"]) == {"200"} and e["noop"]["requests_per_second"] > 0 for e in http)
    assert "over HTTP/REST" in (tmp_path / "report.md").read_text()
    traced = report["traced_result"]  # the headline point again, with every request traced
    assert traced["ours"]["requests"] > 0 and "tracing every request" not in traced["label"]
    assert "Tracing: Predict batch 1" in (tmp_path / "report.md").read_text()
    from mdn_serve.config import Settings
    from mdn_serve.tools.bench.overload import QUEUE_BUDGET_SECONDS

    assert Settings().max_queue_seconds == QUEUE_BUDGET_SECONDS  # the bound the report uses is the server's
    overload = report["overload"]  # every code is OK or a refusal, and goodput is measured
    assert set(overload["overload_codes"]) <= {"OK", "RESOURCE_EXHAUSTED"} and overload["goodput_rows_per_second"] > 0
    assert any("goodput vs capacity" in name for name in names)
    other = report["overload_other_io_scheduling"]  # the same on a server under the other --io-scheduling
    assert (overload["io_scheduling"], other["io_scheduling"]) == ("batch", "normal")
    assert set(other["overload_codes"]) <= {"OK", "RESOURCE_EXHAUSTED"} and other["goodput_rows_per_second"] > 0
    assert "with `--io-scheduling normal`" in (tmp_path / "report.md").read_text()
    if len(os.sched_getaffinity(0)) >= 2:
        assert report["placement"].startswith("servers on CPU ")
    assert report["rss_mb_after_start"] > 10 and report["start_to_serving_seconds"] > 0
    assert "| target | value | bound | met |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "latency_vs_throughput.png").stat().st_size > 5000


def test_the_bench_ik_rate_of_one_client_is_one_batch_per_mean_latency():
    """Four 0.45 s requests of 256 targets in a 2 s window: 569 targets per second, not the 512 that
    counting them over the window gives; with a failed request, the answered rows over the window."""
    from mdn_serve.tools.bench.ik import closed_loop_rate

    def result(codes: dict[str, int], rows: int) -> loadtest.LoadResult:
        latency = {"p50": 450.0, "p90": 450.0, "p99": 450.0, "max": 450.0, "mean": 450.0}
        return loadtest.LoadResult(config={}, seconds=2.0, requests=4, rows=rows, requests_per_second=2.0,
                                   rows_per_second=rows / 2.0, latency_ms=latency, answered_latency_ms=latency,
                                   codes=codes)  # fmt: skip

    assert closed_loop_rate(result({"OK": 4}, 1024), 256) == pytest.approx(256 / 0.45)
    assert closed_loop_rate(result({"OK": 3, "DEADLINE_EXCEEDED": 1}, 768), 256) == 384.0


def test_answers_are_counted_by_arrival_within_the_window_beside_the_sends_within_it():
    """The open loop's steady-state throughput counts the OK answers that arrive within the window,
    whenever sent; the sends within the window are counted however late their answers arrive."""
    recorder = loadtest._Recorder()
    recorder.window_start, recorder.window_end = 10.0, 12.0
    recorder.record(9.5, 1.0, "OK")  # sent in the warm-up, answered in the window
    recorder.record(11.5, 1.0, "OK")  # sent in the window, answered after it
    recorder.record(10.5, 0.5, "OK")  # both within
    recorder.record(10.5, 0.5, "RESOURCE_EXHAUSTED", "refused")  # arrives in the window, but refused
    recorder.record(9.0, 0.5, "OK")  # neither
    assert recorder.answered_in_window == 2
    assert recorder.codes == {"OK": 2, "RESOURCE_EXHAUSTED": 1}


def test_the_bench_reads_the_servers_io_scheduling_from_their_flags():
    from mdn_serve.tools.bench.run import _io_policy

    assert _io_policy(["--device", "cpu"]) == "batch"
    assert _io_policy(["--io-scheduling", "normal", "--device", "cpu"]) == "normal"
    assert _io_policy(["--io-scheduling", "normal", "--io-scheduling=batch"]) == "batch"


def test_the_bench_counts_answers_not_refusals_as_throughput(monkeypatch):
    """A point where our server refused nine requests in ten: its throughput, ratio to the no-op server
    and latency are those of the answers, and the report names the refusals with their first message."""
    from mdn_serve.tools.bench import report, run
    from mdn_serve.tools.bench.points import Point

    def result(ok: int, refused: int, ok_ms: float) -> loadtest.LoadResult:
        codes = {"OK": ok, **({"RESOURCE_EXHAUSTED": refused} if refused else {})}
        every = {"p50": 1.0 if refused else ok_ms, "p90": ok_ms, "p99": ok_ms, "max": ok_ms, "mean": ok_ms}
        first = {"RESOURCE_EXHAUSTED": "the queue is 1.2 s behind"} if refused else {}
        return loadtest.LoadResult(
            config={}, seconds=2.0, requests=ok + refused, rows=ok * 64, requests_per_second=(ok + refused) / 2.0,
            rows_per_second=ok * 64 / 2.0, latency_ms=every, answered_latency_ms={"p50": ok_ms, "p99": ok_ms},
            codes=codes, first_errors=first, answered_requests_per_second=ok / 2.0,
        )  # fmt: skip

    answers = iter([result(20, 180, 30.0), result(100, 0, 2.0)])  # ours, then the no-op server
    monkeypatch.setattr(run, "load", lambda *args: next(answers))
    entry = run.measure("ours", "noop", "m", Point("predict", 64, 32), 2.0, ({}, 2), repeats=1)
    assert entry["vs_noop_requests"] == pytest.approx(0.2)  # 10 answered/s against 50, not 100 against 50
    assert report.answered(entry["ours"]) == (10.0, {"p50": 30.0, "p99": 30.0})
    text = "\n".join(report._table([entry]))
    assert "| 10 | 640 | 30.00 | 30.00 | 50 | 0.20 |" in text
    assert "180 (RESOURCE_EXHAUSTED 180)" in text and "RESOURCE_EXHAUSTED: the queue is 1.2 s behind" in text


def test_backoff_waits_grow_with_refusals_in_a_row_and_stay_bounded():
    import random

    jitter = random.Random(0)
    for refused in range(1, 40):
        ceiling = min(loadtest.MAX_BACKOFF, 0.010 * 2 ** (refused - 1))
        waits = [loadtest.backoff_seconds(10.0, refused, jitter) for _ in range(200)]
        assert min(waits) >= 0.0 and max(waits) <= ceiling
        assert max(waits) > 0.5 * ceiling  # spread over the whole range, not stuck near 0
    a, b = random.Random(7), random.Random(7)
    first, second = ([loadtest.backoff_seconds(10.0, 3, r) for _ in range(5)] for r in (a, b))
    assert first == second  # seeded: a rerun waits the same


@pytest.mark.parametrize("backoff_ms, most, least", [(0.0, None, 200), (100.0, 30, 1)])
def test_closed_loop_clients_back_off_after_refusals_only_when_asked(monkeypatch, backoff_ms, most, least):
    """Against a sender that refuses everything: without --backoff-ms each client sends again at once;
    with it, a client refused n times in a row waits up to 100 ms x 2^(n-1) first."""

    class Refusing:
        def __init__(self, config, payloads):
            pass

        async def ready(self):
            pass

        async def send(self, i):
            await asyncio.sleep(0)
            return "RESOURCE_EXHAUSTED", "the queue is full"

        async def close(self):
            pass

    monkeypatch.setattr(loadtest, "GrpcSender", Refusing)
    config = loadtest.LoadConfig(concurrency=4, duration=0.6, warmup=0.0, input_dim=2, backoff_ms=backoff_ms)
    result = asyncio.run(loadtest.run_load(config))
    assert result.codes == {"RESOURCE_EXHAUSTED": result.requests}
    assert result.requests >= least and (most is None or result.requests <= most)
