"""deploy/: images, the Compose stack, Grafana, Kubernetes and KServe, checked with the real tools."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from mdn_serve import healthcheck
from mdn_serve._proto.mdn.v1 import mdn_pb2 as pb
from mdn_serve._proto.mdn.v1 import mdn_pb2_grpc as pb_grpc
from mdn_serve.config import parse_settings
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import serve_in_process

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent


def tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / name), *args], capture_output=True, text=True, timeout=120, cwd=REPO)


@pytest.mark.parametrize("dockerfile", sorted((DEPLOY / "docker").glob("Dockerfile*")), ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(dockerfile):
    result = tool("hadolint", str(dockerfile))
    assert result.returncode == 0, result.stdout + result.stderr
    text = dockerfile.read_text()
    assert re.search(r"^USER 10001", text, re.M), "images run as a non-root user"
    assert ("[train]" in text) == (dockerfile.name == "Dockerfile.train")  # serving images install no torch


def test_compose_file_follows_the_compose_spec():
    result = tool("check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "compose.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert set(compose["services"]) == {"mdn-serve", "prometheus", "grafana"}
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == ["mdn-serve:8002"]


def exported_metric_names(metrics_port: int) -> set[str]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    families = list(text_string_to_metric_families(text))
    # Families without a series yet (no error so far, say) still have their HELP and TYPE lines.
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names = {f.name + suffix for f in families for suffix in suffixes.get(f.type, ("",))}
    return names | {s.name for f in families for s in f.samples}


def test_dashboard_and_alerts_only_use_metrics_the_server_exports(server):
    # Traffic first, so that every labelled series exists.
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.MixtureDensityServiceStub(channel)
        x = np.full((2, 2), 0.6, "<f4")
        stub.Modes(
            pb.ModesRequest(model=pb.ModelRef(name="two_link_arm"), inputs=pb.Tensor(shape=[2, 2], raw=x.tobytes()))
        )
    names = exported_metric_names(server.metrics_port) | {"up"}
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "mdn-serve.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    recorded = {rule["record"] for group in rules["groups"] for rule in group["rules"] if "record" in rule}
    used = {name for expr in exprs for name in re.findall(r"\b(mdn_[a-z_]+|up)\b", expr)}
    assert used and used <= names, sorted(used - names)
    assert all(ref in recorded for expr in exprs for ref in re.findall(r"\bmdn:[a-z0-9_:]+", expr))
    titles = " ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for subject in ("request rate", "p99", "errors", "batch", "queue", "in flight"):
        assert subject in titles


def render_kubernetes() -> str:
    if shutil.which("kubectl"):
        result = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "k8s" / "overlays" / "example")],
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout
    base = DEPLOY / "k8s" / "base"  # without kubectl: the base's resources as they are
    files = yaml.safe_load((base / "kustomization.yaml").read_text())["resources"]
    return "\n---\n".join((base / f).read_text() for f in files)


def test_kubernetes_manifests_validate_strictly_and_cover_the_drain(tmp_path):
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(render_kubernetes())
    result = tool("kubernetes-validate", "--strict", str(rendered))
    assert result.returncode == 0, result.stdout + result.stderr
    docs = {d["kind"]: d for d in yaml.safe_load_all(rendered.read_text()) if d}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= set(docs)
    assert docs["Service"]["spec"]["clusterIP"] == "None"  # headless, for client-side round robin
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["grpc"]["port"] == 8001 and container["livenessProbe"]["grpc"]
    args = container["args"]
    drain = float(args[args.index("--drain-delay-seconds") + 1]) + float(args[args.index("--grace-seconds") + 1])
    assert pod["terminationGracePeriodSeconds"] > container["lifecycle"]["preStop"]["sleep"]["seconds"] + drain
    annotations = docs["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "8002"


def test_kserve_runtime_and_inference_service_fit_together():
    runtime = yaml.safe_load((DEPLOY / "kserve" / "servingruntime.yaml").read_text())
    isvc = yaml.safe_load((DEPLOY / "kserve" / "inferenceservice.yaml").read_text())
    assert runtime["kind"] == "ServingRuntime" and isvc["kind"] == "InferenceService"
    assert runtime["spec"]["protocolVersions"] == ["grpc-v2"]
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"] and model["protocolVersion"] == "grpc-v2"
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    args = runtime["spec"]["containers"][0]["args"]
    assert "--model-repository=/mnt/models" in args and "--host=0.0.0.0" in args
    # The REST runtime: KServe sends HTTP to the container's one port, which must be mdn-serve's --http-port.
    http = yaml.safe_load((DEPLOY / "kserve" / "servingruntime-http.yaml").read_text())
    assert http["spec"]["protocolVersions"] == ["v2"]
    (container,) = http["spec"]["containers"]
    (port,) = container["ports"]
    assert f"--http-port={port['containerPort']}" in container["args"] and port["name"] == "http1"
    settings = parse_settings([a for a in container["args"] if not a.startswith("--model-repository")], {})
    assert settings.http_port == port["containerPort"] and settings.host == "0.0.0.0"


def test_container_healthcheck_reports_serving(server, capsys):
    assert healthcheck.main([server.target]) == 0
    assert "SERVING" in capsys.readouterr().out
    assert healthcheck.main(["127.0.0.1:1"]) == 1


def test_round_robin_spreads_requests_over_several_servers(trained, tmp_path):
    """Scale-out in miniature: three servers, one round-robin channel, every server busy."""
    servers = [serve_in_process("--model-repository", str(trained["models"])) for i in range(3)]
    try:
        target = "ipv4:" + ",".join(f"127.0.0.1:{s.port}" for s in servers)
        options = [("grpc.lb_policy_name", "round_robin")]
        request = pb.PredictRequest(
            model=pb.ModelRef(name="two_link_arm"), inputs=pb.Tensor(shape=[1, 2], values=[0.6, 0.6])
        )
        with grpc.insecure_channel(target, options=options) as channel:
            stub = pb_grpc.MixtureDensityServiceStub(channel)
            for _ in range(60):
                stub.Predict(request, timeout=10, wait_for_ready=True)
        counts = []
        for s in servers:
            text = urllib.request.urlopen(f"http://127.0.0.1:{s.metrics_port}/metrics", timeout=5).read().decode()
            counts.append(sum(
                sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                if sample.name == "mdn_requests_total" and sample.labels.get("method") == "Predict"
            ))  # fmt: skip
        assert sum(counts) == 60 and min(counts) >= 10, counts
    finally:
        for s in servers:
            s.stop()


def test_container_healthcheck_has_usage(capsys):
    with pytest.raises(SystemExit) as info:
        healthcheck.main(["--help"])
    assert info.value.code == 0 and "Exit 0 if the server" in capsys.readouterr().out
