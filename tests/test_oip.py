"""The Open Inference Protocol service, driven with our own stubs over a real channel."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from mdn_serve._proto.inference import grpc_service_pb2 as oip
from mdn_serve._proto.inference import grpc_service_pb2_grpc as oip_grpc
from mdn_serve.tools.client import MdnClient

from tests.test_server import sample_value, scrape

ARM, TOY = "two_link_arm", "inverse_sine"
X = np.array([[0.6, 0.6], [0.9, 0.3]], np.float32)


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.target) as channel:
        yield oip_grpc.GRPCInferenceServiceStub(channel)


def infer_request(x=X, raw=True, outputs=(), params=None, datatype="FP32", model=ARM, **extra):
    request = oip.ModelInferRequest(model_name=model, id="req-7", **extra)
    tensor = request.inputs.add(name="x", datatype=datatype, shape=list(x.shape))
    dtype = "<f4" if datatype == "FP32" else "<f8"
    if raw:
        request.raw_input_contents.append(np.asarray(x, dtype).tobytes())
    elif datatype == "FP32":
        tensor.contents.fp32_contents.extend(x.ravel().tolist())
    else:
        tensor.contents.fp64_contents.extend(x.ravel().tolist())
    for name in outputs:
        request.outputs.add(name=name)
    for key, value in (params or {}).items():
        request.parameters[key].CopyFrom(value)
    return request


def as_arrays(response) -> dict[str, np.ndarray]:
    """Every output, raw or typed; BYTES (typed only) as str."""
    out = {}
    for i, tensor in enumerate(response.outputs):
        if response.raw_output_contents:
            dtype = "<i4" if tensor.datatype == "INT32" else "<f4"
            array = np.frombuffer(response.raw_output_contents[i], dtype)
        elif tensor.datatype == "BYTES":
            array = np.array([b.decode() for b in tensor.contents.bytes_contents], dtype=object)
        elif tensor.datatype == "INT32":
            array = np.array(tensor.contents.int_contents, np.int32)
        else:
            array = np.array(tensor.contents.fp32_contents, np.float32)
        out[tensor.name] = array.reshape(list(tensor.shape))
    return out


def test_liveness_readiness_and_metadata(stub):
    assert stub.ServerLive(oip.ServerLiveRequest()).live
    assert stub.ServerReady(oip.ServerReadyRequest()).ready
    assert stub.ModelReady(oip.ModelReadyRequest(name=ARM)).ready
    assert stub.ModelReady(oip.ModelReadyRequest(name=ARM, version="1")).ready
    assert not stub.ModelReady(oip.ModelReadyRequest(name=ARM, version="2")).ready
    assert not stub.ModelReady(oip.ModelReadyRequest(name="nope")).ready
    server = stub.ServerMetadata(oip.ServerMetadataRequest())
    assert server.name == "mdn-serve" and server.version
    assert list(server.extensions) == ["parameters", "model_configuration", "statistics", "model_repository"]
    meta = stub.ModelMetadata(oip.ModelMetadataRequest(name=ARM))
    assert (meta.name, list(meta.versions), meta.platform) == (ARM, ["1"], "onnx_onnxv1")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 2])]
    outputs = {t.name: (t.datatype, list(t.shape)) for t in meta.outputs}
    assert outputs == {
        "weights": ("FP32", [-1, 3]),
        "means": ("FP32", [-1, 3, 2]),
        "scales": ("FP32", [-1, 3, 2]),
        "samples": ("FP32", [-1, -1, 2]),
        "modes": ("FP32", [-1, -1, 2]),
        "mode_log_density": ("FP32", [-1, -1]),
        "mode_mass": ("FP32", [-1, -1]),
        "num_modes": ("INT32", [-1]),
        "ik_solutions": ("FP32", [-1, -1, 2]),
        "ik_position_error": ("FP32", [-1, -1]),
        "ik_within_limits": ("FP32", [-1, -1]),
        "ik_score": ("FP32", [-1, -1]),
        "ik_orientation_error": ("FP32", [-1, -1]),
        "ik_num_solutions": ("INT32", [-1]),
        "ik_status": ("BYTES", [-1]),
    }
    toy = {t.name for t in stub.ModelMetadata(oip.ModelMetadataRequest(name=TOY)).outputs}
    assert not any(name.startswith("ik_") for name in toy)  # no kinematics, no IK outputs


@pytest.mark.parametrize(("raw", "datatype"), [(True, "FP32"), (False, "FP32"), (True, "FP64"), (False, "FP64")])
def test_default_outputs_match_mdn_v1_predict(server, stub, raw, datatype):
    response = stub.ModelInfer(infer_request(raw=raw, datatype=datatype))
    assert (response.model_name, response.model_version, response.id) == (ARM, "1", "req-7")
    assert bool(response.raw_output_contents) == raw  # raw in, raw out; typed in, typed out
    got = as_arrays(response)
    assert list(got) == ["weights", "means", "scales"]
    expected = MdnClient(server.target).predict(ARM, X)
    for name in got:
        np.testing.assert_array_equal(got[name], getattr(expected, name))


def p_int(v):
    return oip.InferParameter(int64_param=v)


def p_str(v):
    return oip.InferParameter(string_param=v)


@pytest.mark.parametrize(
    "params",
    [
        {"num_samples": p_int(50), "seed": p_int(11), "temperature": oip.InferParameter(double_param=0.5)},
        {"num_samples": p_str("50"), "seed": oip.InferParameter(uint64_param=11), "temperature": p_str("0.5")},
        {"num_samples": oip.InferParameter(double_param=50.0), "seed": p_str("11"), "temperature": p_str("0.5")},
    ],
)
def test_samples_with_parameters_match_mdn_v1(server, stub, params):
    response = stub.ModelInfer(infer_request(outputs=["samples", "weights"], params=params))
    got = as_arrays(response)
    assert list(got) == ["samples", "weights"]
    expected = MdnClient(server.target).sample(ARM, X, 50, seed=11, temperature=0.5)
    np.testing.assert_array_equal(got["samples"], expected.samples)


def test_scale_temperature_over_both_protocols(server, stub):
    params = {"num_samples": p_int(50), "seed": p_int(11), "scale_temperature": p_str("0")}
    got = as_arrays(stub.ModelInfer(infer_request(outputs=["samples", "means"], params=params)))
    expected = MdnClient(server.target).sample(ARM, X, 50, seed=11, scale_temperature=0.0)
    np.testing.assert_array_equal(got["samples"], expected.samples)
    # Scales at zero: every draw is one of the component means.
    distance = np.abs(got["samples"][:, :, None, :] - got["means"][:, None, :, :]).max(axis=-1).min(axis=-1)
    assert distance.max() == 0.0
    bad = {"num_samples": p_int(5), "scale_temperature": oip.InferParameter(double_param=-1.0)}
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(infer_request(outputs=["samples"], params=bad))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "scale_temperature" in caught.value.details()


@pytest.mark.parametrize("raw", [True, False])
def test_modes_match_mdn_v1(server, stub, raw):
    outputs = ["num_modes", "modes", "mode_log_density", "mode_mass"]
    response = stub.ModelInfer(infer_request(raw=raw, outputs=outputs, params={"max_modes": p_int(2)}))
    got = as_arrays(response)
    expected = MdnClient(server.target).modes(ARM, X, max_modes=2)
    assert got["num_modes"].dtype == np.int32 and got["num_modes"].tolist() == expected.num_modes
    np.testing.assert_array_equal(got["modes"], expected.modes)
    np.testing.assert_array_equal(got["mode_log_density"], expected.log_density)
    np.testing.assert_array_equal(got["mode_mass"], expected.mass)


def mixed():
    request = infer_request(raw=False)
    request.raw_input_contents.append(X.tobytes())
    return request


def short_raw():
    request = infer_request()
    request.raw_input_contents[0] = b"\0" * 12
    return request


def two_inputs():
    request = infer_request()
    request.inputs.add(name="y", datatype="FP32", shape=[1])
    return request


def wrong_contents():
    request = infer_request(raw=False)
    request.inputs[0].contents.ClearField("fp32_contents")
    request.inputs[0].contents.int_contents.extend([1, 2, 3, 4])
    return request


def with_seed_state(request, state=((0.5, 0.5),)):
    """The request with a raw seed_state input added beside x."""
    state = np.asarray(state, np.float32)
    request.inputs.add(name="seed_state", datatype="FP32", shape=list(state.shape))
    request.raw_input_contents.append(state.tobytes())
    return request


BAD = [
    ("mixed raw and typed", mixed, "mixes raw_input_contents and typed contents"),
    ("raw length", short_raw, "has 12 bytes, but shape [2, 2] x FP32 (4 bytes each) needs 16"),
    ("unknown output", lambda: infer_request(outputs=["logits"]), "unknown output 'logits'"),
    ("duplicate output", lambda: infer_request(outputs=["modes", "modes"]), "requested twice"),
    ("datatype", lambda: infer_request(datatype="INT32", raw=False), "unsupported datatype 'INT32'"),
    (
        "input name",
        lambda: oip.ModelInferRequest(
            model_name=ARM,
            inputs=[oip.ModelInferRequest.InferInputTensor(name="ee", datatype="FP32", shape=[1, 2])],
            raw_input_contents=[X[:1].tobytes()],
        ),
        "send one input tensor named 'x' (and optionally 'seed_state' for IK outputs), got ['ee']",
    ),
    ("two inputs", two_inputs, "send one input tensor named 'x'"),
    ("no inputs", lambda: oip.ModelInferRequest(model_name=ARM), "send one input tensor named 'x'"),
    ("seed_state without IK", lambda: with_seed_state(infer_request()), "input 'seed_state' is for inverse kinematics"),
    ("wrong contents field", wrong_contents, "put its data in fp32_contents, not int_contents"),
    ("rank", lambda: infer_request(x=np.zeros(4, np.float32)), "rank 2"),
    ("nan", lambda: infer_request(x=np.array([[np.nan, 0.5]], np.float32)), "NaN or infinite"),
    ("bad parameter", lambda: infer_request(outputs=["samples"], params={"num_samples": p_str("many")}), "integer"),
    (
        "fractional count",
        lambda: infer_request(outputs=["samples"], params={"num_samples": oip.InferParameter(double_param=2.5)}),
        "integer",
    ),
    ("zero samples", lambda: infer_request(outputs=["samples"], params={"num_samples": p_int(0)}), "num_samples"),
    ("negative seed", lambda: infer_request(outputs=["samples"], params={"seed": p_int(-1)}), "seed"),
    ("negative max_modes", lambda: infer_request(outputs=["modes"], params={"max_modes": p_int(-1)}), "max_modes"),
]


@pytest.mark.parametrize(("case", "build", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_infer_requests_are_invalid_argument(stub, case, build, message):
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(build(), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()


def test_unknown_models_are_not_found(stub):
    for call, request in (
        (stub.ModelInfer, infer_request(model="nope")),
        (stub.ModelInfer, infer_request(model_version="5")),
        (stub.ModelMetadata, oip.ModelMetadataRequest(name="nope")),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_metrics_label_the_protocol(server, stub):
    before = scrape(server)
    stub.ModelInfer(infer_request())
    after = scrape(server)
    labels = {"protocol": "oip", "method": "ModelInfer", "model": ARM, "code": "OK"}
    name = "mdn_requests_total"
    assert (
        sample_value(after["mdn_requests"], name, **labels) - sample_value(before["mdn_requests"], name, **labels) == 1
    )


def test_seed_state_ranks_ik_solutions_over_both_protocols(server, stub):
    """The second elbow (theta2 < 0) comes first when the seed state sits near it, over mdn.v1 and OIP alike."""
    target = np.array([[0.6, 0.6]], np.float32)
    near_second = np.array([[1.0, -1.4]], np.float32)
    with MdnClient(server.target) as client:
        default = client.solve(ARM, target)
        ranked = client.solve(ARM, target, seed_state=near_second)
    assert default.num_solutions == ranked.num_solutions == [2]
    assert default.solutions[0, 0, 1] > 0 and ranked.solutions[0, 0, 1] < 0
    request = with_seed_state(infer_request(x=target, outputs=["ik_solutions", "ik_num_solutions"]), near_second)
    got = as_arrays(stub.ModelInfer(request, timeout=30))
    np.testing.assert_allclose(got["ik_solutions"], ranked.solutions, atol=1e-6)


def test_model_statistics_count_what_each_version_served(stub):
    """Triton's statistics extension, from our own stubs: successes, a failure in the batch, the
    stages of each request, every model when no name is given, NOT_FOUND for an unknown one."""

    def stats():
        (entry,) = stub.ModelStatistics(oip.ModelStatisticsRequest(name=ARM, version="1"), timeout=10).model_stats
        return entry

    before = stats()
    for _ in range(3):
        stub.ModelInfer(infer_request(), timeout=10)
    with pytest.raises(grpc.RpcError) as nan:  # NaN is found by the batcher: a failure counted there
        stub.ModelInfer(infer_request(np.array([[0.6, np.nan]], np.float32)), timeout=10)
    assert nan.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = stats()
    b, a = before.inference_stats, after.inference_stats
    assert after.inference_count - before.inference_count == 3 * len(X)
    assert (a.success.count - b.success.count, a.fail.count - b.fail.count) == (3, 1)
    assert a.success.ns > b.success.ns and a.queue.count - b.queue.count == 4
    assert a.compute_infer.count - b.compute_infer.count == 3 and a.compute_infer.ns > b.compute_infer.ns
    assert after.execution_count - before.execution_count == 3
    assert after.last_inference >= before.last_inference > 0
    everything = stub.ModelStatistics(oip.ModelStatisticsRequest(), timeout=10).model_stats
    assert {(s.name, s.version) for s in everything} >= {(ARM, "1"), (TOY, "1")}
    with pytest.raises(grpc.RpcError) as unknown:
        stub.ModelStatistics(oip.ModelStatisticsRequest(name="nope"), timeout=10)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert "statistics" in stub.ServerMetadata(oip.ServerMetadataRequest(), timeout=10).extensions


def test_repository_index_lists_every_served_version(stub, server):
    index = stub.RepositoryIndex(oip.RepositoryIndexRequest(), timeout=10).models
    assert {(m.name, m.version, m.state, m.reason) for m in index} == {(ARM, "1", "READY", ""), (TOY, "1", "READY", "")}
    ready = stub.RepositoryIndex(oip.RepositoryIndexRequest(ready=True), timeout=10).models
    assert [(m.name, m.version) for m in ready] == [(m.name, m.version) for m in index]
    ours = server.server.settings.model_repository.resolve().name
    assert len(stub.RepositoryIndex(oip.RepositoryIndexRequest(repository_name=ours), timeout=10).models) == 2
    with pytest.raises(grpc.RpcError) as other:
        stub.RepositoryIndex(oip.RepositoryIndexRequest(repository_name="elsewhere"), timeout=10)
    assert other.value.code() == grpc.StatusCode.NOT_FOUND and ours in (other.value.details() or "")
