"""A real Prometheus against a real server, and promtool on our rules and our /metrics page."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from mdn_serve.tools import loadtest

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"

if shutil.which("prometheus") is None or shutil.which("promtool") is None:
    if os.environ.get("MDN_REQUIRE_PROMETHEUS"):
        raise RuntimeError("prometheus and promtool are required here (apt-get install prometheus)")
    pytest.skip(
        "prometheus is not installed (Debian package `prometheus`; .ci/run installs it)", allow_module_level=True
    )


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["promtool", *args], input=stdin, capture_output=True, timeout=60, cwd=PROMETHEUS_DIR)


def test_config_and_rules_are_valid_and_the_rule_unit_tests_pass():
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_our_metrics_page_passes_promtool_lint(server):
    page = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read()
    result = promtool("check", "metrics", stdin=page)
    assert result.returncode == 0, result.stdout + result.stderr


def free_port() -> int:
    # Prometheus cannot report a port it picked itself, so take a free one just before starting it.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def query(port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    answer = json.loads(urllib.request.urlopen(url, timeout=5).read())
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def test_a_real_prometheus_scrapes_the_server_and_the_dashboard_queries_answer(server, tmp_path):
    config = tmp_path / "prometheus.yml"
    rules = (PROMETHEUS_DIR / "alerts.yml").read_text()
    (tmp_path / "alerts.yml").write_text(rules)
    config.write_text(
        "global: {scrape_interval: 500ms, evaluation_interval: 500ms}\n"
        "rule_files: [alerts.yml]\n"
        "scrape_configs:\n"
        f"  - job_name: mdn-serve\n    static_configs: [{{targets: ['127.0.0.1:{server.metrics_port}']}}]\n"
    )
    port = free_port()
    with (tmp_path / "prometheus.log").open("wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if query(port, 'up{job="mdn-serve"}'):
                    break
            except OSError:
                pass
            time.sleep(0.2)
        # Traffic, with some bad requests among it (batch 100 is over the test server's 64 rows).
        for args, expected in ((["--batch", "4"], 0), (["--batch", "100"], 1), (["--rpc", "modes", "--batch", "8"], 0)):
            assert loadtest.main(["--target", server.target, "--duration", "0.75", "--warmup", "0", "--quiet",
                                  "--concurrency", "4", *args]) == expected  # fmt: skip
        time.sleep(1.5)  # a few scrapes and rule evaluations
        assert float(query(port, 'up{job="mdn-serve"}')[0]["value"][1]) == 1
        p99 = query(port, 'histogram_quantile(0.99, sum by (le) (rate(mdn_request_duration_seconds_bucket'
                          '{method="Predict",code="OK"}[30s])))')  # fmt: skip
        assert 0 < float(p99[0]["value"][1]) < 1.0  # seconds: a sensible p99 for small batches
        ratio = query(port, "sum(rate(mdn_request_errors_total[30s])) / sum(rate(mdn_requests_total[30s]))")
        assert 0 < float(ratio[0]["value"][1]) < 1  # the bad requests show, the good ones too
        per_method = query(port, "mdn:request_latency_seconds:p99_rate1m")
        assert {r["metric"]["method"] for r in per_method} >= {"Predict", "Modes"}
        batch = query(port, "sum(rate(mdn_inferences_total[30s])) / sum(rate(mdn_executions_total[30s]))")
        assert float(batch[0]["value"][1]) >= 1  # average requests per ONNX Runtime call
    finally:
        proc.terminate()
        proc.wait(timeout=30)
