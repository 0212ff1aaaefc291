"""The real server over a real channel: every RPC, both encodings, errors, metrics, health."""

from __future__ import annotations

import json
import math
import struct
import urllib.request
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from mdn_core.model import load_model
from mdn_core.modes import mixture_modes
from mdn_serve._proto.mdn.v1 import mdn_pb2 as pb
from mdn_serve._proto.mdn.v1 import mdn_pb2_grpc as pb_grpc
from mdn_serve.tools.client import MdnClient
from mdn_train.export import planar_arm
from prometheus_client.parser import text_string_to_metric_families

ARM, TOY = "two_link_arm", "inverse_sine"


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.MixtureDensityServiceStub(channel)


def reference(trained, name, x):
    return load_model(trained["models"] / name / "1" / "model.onnx").run(np.asarray(x, np.float32))


def raw_tensor(array) -> pb.Tensor:
    a = np.asarray(array, "<f4")
    return pb.Tensor(shape=a.shape, raw=a.tobytes())


def test_list_and_get_models(server):
    with MdnClient(server.target) as client:
        models = {m.name: m for m in client.list_models()}
        assert set(models) == {ARM, TOY}
        arm = models[ARM]
        assert (arm.version, list(arm.versions), arm.input_dim, arm.output_dim, arm.components) == (
            "1",
            ["1"],
            2,
            2,
            3,
        )
        assert list(arm.input_names) == ["ee_x", "ee_y"] and list(arm.output_names) == ["theta1", "theta2"]
        meta = json.loads(client.get_model(ARM, "1").metadata_json)
        assert meta["kinematics"]["link_lengths"] == [0.8, 0.2] and "metrics" in meta
        assert client.get_model(TOY).input_names == ["t"]


@pytest.mark.parametrize("raw", [True, False])
def test_predict_matches_onnx_runtime_in_both_encodings(server, trained, stub, raw):
    x = np.array([[0.6, 0.6], [0.9, 0.3], [0.5, 0.7]], np.float32)
    with MdnClient(server.target, raw=raw) as client:
        got = client.predict(ARM, x)
    assert (got.model, got.version) == (ARM, "1")
    for a, b in zip((got.weights, got.means, got.scales), reference(trained, ARM, x), strict=True):
        np.testing.assert_array_equal(a, b)
    # The response uses the request's encoding.
    inputs = raw_tensor(x) if raw else pb.Tensor(shape=x.shape, values=x.ravel().tolist())
    response = stub.Predict(pb.PredictRequest(model=pb.ModelRef(name=ARM), inputs=inputs))
    assert bool(response.means.raw) == raw and bool(response.means.values) == (not raw)
    assert list(response.means.shape) == [3, 3, 2]


def test_sampling_is_seeded_and_matches_the_mixture(server):
    x = np.array([[0.3], [0.5]], np.float32)
    with MdnClient(server.target) as client:
        a = client.sample(TOY, x, 2000, seed=42)
        b = client.sample(TOY, x, 2000, seed=42)
        c = client.sample(TOY, x, 2000, seed=43)
        values = MdnClient(server.target, raw=False).sample(TOY, x, 2000, seed=42)
        mix = client.predict(TOY, x)
    assert a.samples.shape == (2, 2000, 1)
    np.testing.assert_array_equal(a.samples, b.samples)
    np.testing.assert_array_equal(a.samples, values.samples)
    assert not np.array_equal(a.samples, c.samples)
    mean = np.einsum("bk,bkd->bd", mix.weights, mix.means)
    var = np.einsum("bk,bkd->bd", mix.weights, mix.scales**2 + mix.means**2) - mean**2
    np.testing.assert_allclose(a.samples.mean(1), mean, atol=5 * np.sqrt(var.max() / 2000))
    np.testing.assert_allclose(a.samples.var(1), var, rtol=0.15)


def test_temperature_changes_the_spread(server):
    with MdnClient(server.target) as client:
        cold = client.sample(TOY, [[0.5]], 4000, seed=1, temperature=0.05).samples
        one = client.sample(TOY, [[0.5]], 4000, seed=1, temperature=1.0).samples
        default = client.sample(TOY, [[0.5]], 4000, seed=1).samples
    np.testing.assert_array_equal(one, default)  # 0 means 1.0
    assert cold.std() < one.std()


def test_modes_land_on_the_closed_form_arm_solutions(server, trained):
    arm = planar_arm(json.loads(MdnClient(server.target).get_model(ARM).metadata_json)["kinematics"])
    rng = np.random.default_rng(0)
    angles = np.stack([rng.uniform(0.3, 1.2, 400), rng.uniform(0.6, 1.2, 400) * rng.choice([-1, 1], 400)], 1)
    candidates = arm.forward(angles)
    both, _ = arm.two_link_ik(candidates)
    # Targets whose two elbow solutions both lie at least 0.1 rad inside the joint limits.
    inside = np.all(arm.within_limits(both, slack=-0.1), axis=-1)
    targets = candidates[inside][:40].astype(np.float32)
    assert len(targets) == 40
    solutions, _ = arm.two_link_ik(targets.astype(np.float64))
    with MdnClient(server.target) as client:
        got = client.modes(ARM, targets)
        top = client.modes(ARM, targets, max_modes=1)
    for b in range(len(targets)):
        modes = got.modes[b, : got.num_modes[b]]
        for branch in solutions[b]:
            assert np.min(np.linalg.norm(modes - branch, axis=-1)) < 0.1, (b, modes, solutions[b])
    # Sorted by mass, NaN-padded to the widest row, and the same as the library computes.
    assert np.all(np.diff(np.nan_to_num(got.mass, nan=-1), axis=1) <= 0)
    w, m, s = reference(trained, ARM, targets)
    local = mixture_modes(w, m, s)
    np.testing.assert_array_equal(got.num_modes, local.num_modes)
    np.testing.assert_allclose(got.modes, local.modes, atol=1e-6)
    assert top.modes.shape[1] == 1 and top.num_modes == [1] * len(targets)


def test_modes_in_values_encoding_pad_with_nan(server, stub):
    # t = 0.5 has three branches and the ends have one: rows get different mode counts.
    x = np.array([[0.5], [-0.05]], np.float32)
    response = stub.Modes(
        pb.ModesRequest(model=pb.ModelRef(name=TOY), inputs=pb.Tensor(shape=[2, 1], values=x.ravel()))
    )
    modes = np.array(response.modes.values).reshape(list(response.modes.shape))
    counts = list(response.num_modes)
    assert modes.shape[1] == max(counts) and not response.modes.raw
    for b, n in enumerate(counts):
        assert not np.isnan(modes[b, :n]).any() and np.isnan(modes[b, n:]).all()


def rpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10)
    return info.value


ref = pb.ModelRef(name=ARM)
ok = raw_tensor([[0.5, 0.5]])
INVALID = [
    ("Predict", pb.PredictRequest(model=ref), "no inputs"),
    ("Predict", pb.PredictRequest(model=ref, inputs=raw_tensor([0.5, 0.5])), "rank 2"),
    (
        "Predict",
        pb.PredictRequest(model=ref, inputs=raw_tensor([[0.5, 0.5, 0.5]])),
        "takes 2 input column(s) (ee_x, ee_y)",
    ),
    ("Predict", pb.PredictRequest(model=ref, inputs=pb.Tensor(shape=[0, 2])), "no rows"),
    ("Predict", pb.PredictRequest(model=ref, inputs=raw_tensor(np.zeros((65, 2)))), "limit of 64"),
    (
        "Predict",
        pb.PredictRequest(model=ref, inputs=pb.Tensor(shape=[2, 2], values=[1, 2, 3])),
        "has 3 values",
    ),
    ("Predict", pb.PredictRequest(model=ref, inputs=pb.Tensor(shape=[1, 2], raw=b"\0" * 7)), "has 7 bytes"),
    (
        "Predict",
        pb.PredictRequest(model=ref, inputs=pb.Tensor(shape=[1, 2], values=[1, 2], raw=ok.raw)),
        "both values and raw",
    ),
    ("Predict", pb.PredictRequest(model=ref, inputs=raw_tensor([[0.5, math.nan]])), "NaN or infinite"),
    ("Predict", pb.PredictRequest(model=ref, inputs=raw_tensor([[math.inf, 0.5]])), "NaN or infinite"),
    (
        "Predict",
        pb.PredictRequest(model=ref, inputs=pb.Tensor(shape=[-1, 2], raw=ok.raw)),
        "negative dimension",
    ),
    (
        "Predict",
        pb.PredictRequest(model=ref, inputs=pb.Tensor(shape=[1 << 40, 1 << 40], raw=ok.raw)),
        "more than a request",
    ),
    ("Sample", pb.SampleRequest(model=ref, inputs=ok, num_samples=0), "num_samples must be >= 1"),
    ("Sample", pb.SampleRequest(model=ref, inputs=ok, num_samples=-3), "num_samples must be >= 1"),
    (
        "Sample",
        pb.SampleRequest(model=ref, inputs=raw_tensor(np.zeros((2, 2))), num_samples=2501),
        "5002 is over",
    ),
    ("Sample", pb.SampleRequest(model=ref, inputs=ok, num_samples=1, temperature=-1), "temperature"),
    ("Sample", pb.SampleRequest(model=ref, inputs=ok, num_samples=1, temperature=math.nan), "temperature"),
    ("Sample", pb.SampleRequest(model=ref, inputs=ok, num_samples=1, temperature=math.inf), "temperature"),
    ("Modes", pb.ModesRequest(model=ref, inputs=ok, max_modes=-1), "max_modes must be >= 0"),
    ("Modes", pb.ModesRequest(model=ref), "no inputs"),
]


@pytest.mark.parametrize(("method", "request_", "message"), INVALID, ids=[f"{m}-{t}" for m, _, t in INVALID])
def test_invalid_requests_are_rejected_with_a_clear_message(stub, method, request_, message):
    err = rpc_error(getattr(stub, method), request_)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.details()


@pytest.mark.parametrize(
    ("ref_", "message"),
    [
        (pb.ModelRef(name="nope"), "unknown model 'nope'"),
        (pb.ModelRef(name=ARM, version="9"), "has no version '9'; versions: 1"),
        (pb.ModelRef(), "no model name"),
    ],
)
def test_unknown_models_and_versions_are_not_found(stub, ref_, message):
    for call, request_ in (
        (stub.Predict, pb.PredictRequest(model=ref_, inputs=ok)),
        (stub.Sample, pb.SampleRequest(model=ref_, inputs=ok, num_samples=1)),
        (stub.Modes, pb.ModesRequest(model=ref_, inputs=ok)),
        (stub.GetModel, pb.GetModelRequest(model=ref_)),
    ):
        err = rpc_error(call, request_)
        assert err.code() == grpc.StatusCode.NOT_FOUND and message in err.details()


def test_server_keeps_serving_after_errors(server, stub):
    for method, request_, _ in INVALID:
        with pytest.raises(grpc.RpcError):
            getattr(stub, method)(request_, timeout=10)
    reply = stub.Predict(pb.PredictRequest(model=ref, inputs=ok), timeout=10)
    assert list(reply.weights.shape) == [1, 3]
    assert server.alive()


def test_health_and_reflection(server):
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "mdn.v1.MixtureDensityService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for s in next(iter(stream)).list_services_response.service}
    assert {
        "mdn.v1.MixtureDensityService",
        "mdn.v1.InverseKinematicsService",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
    } <= names


def scrape(server) -> dict[str, list[Any]]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(body)}


def sample_value(samples, name, **labels) -> float:
    return float(
        sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))
    )


def test_metrics_count_real_requests(server, stub):
    before = scrape(server)
    for _ in range(3):
        stub.Modes(pb.ModesRequest(model=ref, inputs=raw_tensor(np.full((5, 2), 0.6))), timeout=10)
    rpc_error(stub.Predict, pb.PredictRequest(model=pb.ModelRef(name="nope"), inputs=ok))
    after = scrape(server)

    def delta(family, name, **labels):
        return sample_value(after[family], name, **labels) - sample_value(before.get(family, []), name, **labels)

    ok_labels = {"protocol": "mdn.v1", "method": "Modes", "model": ARM, "code": "OK"}
    assert delta("mdn_request_duration_seconds", "mdn_request_duration_seconds_count", **ok_labels) == 3
    assert delta("mdn_requests", "mdn_requests_total", **ok_labels) == 3
    assert (
        delta(
            "mdn_request_errors",
            "mdn_request_errors_total",
            method="Predict",
            model="unknown",
            code="NOT_FOUND",
        )
        == 1
    )
    assert delta("mdn_request_rows", "mdn_request_rows_sum", method="Modes", model=ARM) == 15
    assert delta("mdn_inference_duration_seconds", "mdn_inference_duration_seconds_count", model=ARM, version="1") == 3
    assert (
        delta(
            "mdn_postprocess_duration_seconds",
            "mdn_postprocess_duration_seconds_count",
            model=ARM,
            version="1",
        )
        == 3
    )
    # Sub-millisecond buckets exist, so p50/p99 of fast requests can be read.
    buckets = {s.labels["le"] for s in after["mdn_request_duration_seconds"] if s.name.endswith("_bucket")}
    assert {"5e-05", "0.0001", "0.0005"} <= buckets
    info = [s for s in after["mdn_model_info"] if s.value == 1]
    assert {(s.labels["model"], s.labels["version"], s.labels["provider"]) for s in info} == {
        (ARM, "1", "CPUExecutionProvider"),
        (TOY, "1", "CPUExecutionProvider"),
    }
    assert sample_value(after["mdn_requests_in_flight"], "mdn_requests_in_flight") == 0


def test_raw_request_bytes_are_little_endian_float32(stub):
    # Build the bytes by hand, independently of numpy's dtype handling.
    body = struct.pack("<2f", 0.6, 0.6)
    reply = stub.Predict(pb.PredictRequest(model=ref, inputs=pb.Tensor(shape=[1, 2], raw=body)), timeout=10)
    weights = struct.unpack("<3f", reply.weights.raw)
    assert sum(weights) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    ("ref", "code", "message"),
    [
        (pb.ModelRef(name="m" * 10_000), "INVALID_ARGUMENT", "model name 'mmmm"),
        (pb.ModelRef(name="m" * 256), "NOT_FOUND", "unknown model 'mmmm"),
        (pb.ModelRef(name=ARM, version="9" * 5_000), "INVALID_ARGUMENT", "version '9999"),
        (pb.ModelRef(name=ARM, version="latest"), "INVALID_ARGUMENT", "is not a version number"),
        (pb.ModelRef(name=ARM, version="-1"), "INVALID_ARGUMENT", "is not a version number"),
        (pb.ModelRef(name=ARM, version="9" * 18), "NOT_FOUND", "has no version '9999"),
        (pb.ModelRef(name=ARM, version="0001"), "OK", None),
    ],
)
def test_huge_or_malformed_names_and_versions_get_short_messages(stub, ref, code, message):
    request = pb.PredictRequest(model=ref, inputs=raw_tensor([[0.6, 0.6]]))
    if message is None:  # leading zeros name the same version
        assert stub.Predict(request, timeout=10).model.version == "1"
        return
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=10)
    assert info.value.code().name == code
    assert message in info.value.details() and len(info.value.details()) < 300
