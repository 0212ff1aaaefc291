"""One inference pipeline: every mix of outputs, over both protocols, from one ONNX Runtime call."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from mdn_core.contract import METADATA_KEY, ContractError
from mdn_core.ik import solve
from mdn_core.model import load_model
from mdn_core.modes import mixture_modes
from mdn_serve._proto.inference import grpc_service_pb2 as oip
from mdn_serve._proto.inference import grpc_service_pb2_grpc as oip_grpc
from mdn_serve.errors import DeadlineExpired, ModelLoadError
from mdn_serve.serving import pipeline
from mdn_serve.serving.repository import ModelRepository
from mdn_serve.tools.client import MdnClient

from tests.conftest import serve_in_process
from tests.test_oip import ARM, X, as_arrays, infer_request
from tests.test_server import sample_value, scrape

FAMILIES = {
    "mixture": ("weights", "means", "scales"),
    "samples": ("samples",),
    "modes": ("modes", "mode_log_density", "mode_mass", "num_modes"),
    "ik": (
        "ik_solutions",
        "ik_position_error",
        "ik_orientation_error",
        "ik_within_limits",
        "ik_score",
        "ik_num_solutions",
        "ik_status",
    ),
}
MIXES = [mix for n in range(1, 5) for mix in itertools.combinations(FAMILIES, n)]
NUM_SAMPLES, SEED = 7, 3


def params() -> dict[str, oip.InferParameter]:
    return {
        "num_samples": oip.InferParameter(int64_param=NUM_SAMPLES),
        "seed": oip.InferParameter(int64_param=SEED),
        "max_modes": oip.InferParameter(int64_param=0),
    }


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.target) as channel:
        yield oip_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def expected(server) -> dict[str, np.ndarray]:
    """Each output as mdn.v1 answers it, one RPC per family."""
    with MdnClient(server.target, raw=True) as client:
        p = client.predict(ARM, X)
        s = client.sample(ARM, X, NUM_SAMPLES, seed=SEED)
        m = client.modes(ARM, X)
        ik = client.solve(ARM, X)
    return {
        "weights": p.weights, "means": p.means, "scales": p.scales, "samples": s.samples,
        "modes": m.modes, "mode_log_density": m.log_density, "mode_mass": m.mass,
        "num_modes": np.array(m.num_modes, np.int32), "ik_solutions": ik.solutions,
        "ik_position_error": ik.position_error, "ik_orientation_error": ik.orientation_error,
        "ik_within_limits": ik.within_limits, "ik_score": ik.score,
        "ik_num_solutions": np.array(ik.num_solutions, np.int32), "ik_status": np.array(ik.status, dtype=object),
    }  # fmt: skip


@pytest.mark.parametrize("mix", MIXES, ids=["+".join(m) for m in MIXES])
def test_every_mix_of_outputs_over_oip_matches_mdn_v1(stub, expected, mix):
    names = [name for family in mix for name in FAMILIES[family]]
    response = stub.ModelInfer(infer_request(raw=False, outputs=names, params=params()), timeout=30)
    got = as_arrays(response)
    assert [t.name for t in response.outputs] == names  # in the order asked
    for name in names:
        if name == "ik_status":
            assert list(got[name]) == list(expected[name])
        else:
            want = expected[name]
            assert got[name].shape == want.shape, name
            # Batched with other requests, ONNX Runtime may round a row in the last float32 bit.
            np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("rpc", ["predict", "sample", "modes", "solve"], ids=["Predict", "Sample", "Modes", "Solve"])
def test_each_mdn_v1_rpc_matches_the_core_math(server, trained, rpc):
    model = load_model(trained["models"] / ARM / "1" / "model.onnx")
    w, m, s = model.run(X)
    with MdnClient(server.target) as client:
        if rpc == "predict":
            np.testing.assert_allclose(client.predict(ARM, X).means, m, rtol=1e-5, atol=1e-6)
        elif rpc == "sample":
            got = client.sample(ARM, X, 2000, seed=SEED).samples
            assert got.shape == (2, 2000, 2) and np.isfinite(got).all()
        elif rpc == "modes":
            want = mixture_modes(w, m, s)
            np.testing.assert_allclose(client.modes(ARM, X).modes, want.modes, rtol=1e-4, atol=1e-5)
        else:
            assert model.metadata.chain is not None
            exact = solve(model.metadata.chain, X, w, m, s)
            np.testing.assert_allclose(client.solve(ARM, X).solutions, exact.solutions, atol=1e-5)


def executions(server) -> float:
    return sample_value(scrape(server)["mdn_executions"], "mdn_executions_total", model=ARM, version="1")


def test_one_request_is_one_onnx_runtime_call_and_one_mode_search_whatever_it_asks(server, stub, monkeypatch):
    searches = []

    def counted(*args, **kwargs):
        searches.append(len(args[0]))
        return mixture_modes(*args, **kwargs)

    monkeypatch.setattr(pipeline, "mixture_modes", counted)
    everything = [name for names in FAMILIES.values() for name in names]
    before = executions(server)
    response = stub.ModelInfer(infer_request(outputs=everything, params=params()), timeout=30)
    assert len(response.outputs) == len(everything)
    assert executions(server) - before == 1
    assert searches == [len(X)]  # IK seeded from the same search as the modes output
    with MdnClient(server.target) as client:
        client.solve(ARM, X)
    assert executions(server) - before == 2 and len(searches) == 2


def with_metadata(source, target, change) -> None:
    model = onnx.load(str(source))
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            meta = json.loads(prop.value)
            change(meta)
            prop.value = json.dumps(meta)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))


def test_a_malformed_kinematics_block_refuses_the_file_at_load_and_at_reload(trained, tmp_path):
    source = trained["models"] / ARM / "1" / "model.onnx"
    bad = tmp_path / "bad" / ARM / "1" / "model.onnx"
    with_metadata(source, bad, lambda meta: meta["kinematics"].update(link_lengths=[0.8, "long"]))
    with pytest.raises(ContractError, match=r"kinematics\.link_lengths"):
        load_model(bad)
    with pytest.raises(ModelLoadError, match=r"model\.onnx: metadata field 'kinematics\.link_lengths'"):
        ModelRepository.load(tmp_path / "bad", ["CPUExecutionProvider"])

    repo = tmp_path / "repo"
    shutil.copytree(trained["models"] / ARM, repo / ARM)
    running = serve_in_process("--model-repository", str(repo))
    try:
        with_metadata(source, repo / ARM / "2" / "model.onnx", lambda meta: meta["kinematics"].pop("joint_limits"))
        asyncio.run_coroutine_threadsafe(running.server.reload(), running.loop).result(60)
        with MdnClient(running.target) as client:
            assert client.get_model(ARM).versions == ["1"]  # version 1 keeps serving
            assert client.solve(ARM, X).version == "1"
        failures = scrape(running)["mdn_model_load_failures"]
        assert sample_value(failures, "mdn_model_load_failures_total", model=ARM, version="2") == 1
        assert "kinematics.joint_limits" in running.log()
    finally:
        running.stop()


def fails_when_run(source: Path, target: Path) -> None:
    """A copy of source whose graph loads (the contract holds) but fails at run time for batch sizes
    whose 2 x B values do not reshape into rows of 3: x goes through Reshape [-1, 3], then back."""
    model = onnx.load(str(source))
    graph = model.graph
    x = graph.input[0].name
    for node in graph.node:
        node.input[:] = ["x_roundtrip" if name == x else name for name in node.input]
    shapes = [
        onnx.helper.make_tensor("rows_of_3", onnx.TensorProto.INT64, [2], [-1, 3]),
        onnx.helper.make_tensor("rows_of_2", onnx.TensorProto.INT64, [2], [-1, 2]),
    ]
    graph.initializer.extend(shapes)
    graph.node.insert(0, onnx.helper.make_node("Reshape", [x, "rows_of_3"], ["x_by_3"]))
    graph.node.insert(1, onnx.helper.make_node("Reshape", ["x_by_3", "rows_of_2"], ["x_roundtrip"]))
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))


def test_a_file_that_fails_only_when_run_is_refused_and_the_rest_of_the_reload_serves(trained, tmp_path):
    source = trained["models"] / ARM / "1" / "model.onnx"
    repo = tmp_path / "repo"
    shutil.copytree(trained["models"] / ARM, repo / ARM)
    running = serve_in_process("--model-repository", str(repo))
    try:
        fails_when_run(source, repo / ARM / "2" / "model.onnx")
        shutil.copytree(trained["models"] / "inverse_sine", repo / "inverse_sine")  # valid and new
        asyncio.run_coroutine_threadsafe(running.server.reload(), running.loop).result(60)
        with MdnClient(running.target) as client:
            assert client.get_model(ARM).versions == ["1"]
            assert client.predict("inverse_sine", [[0.5]]).version == "1"  # the same reload's good file
        failures = scrape(running)["mdn_model_load_failures"]
        assert sample_value(failures, "mdn_model_load_failures_total", model=ARM, version="2") == 1
        assert "ONNX Runtime cannot run it" in running.log()
    finally:
        running.stop()


def test_sampling_runs_in_chunks_that_draw_the_same_samples_and_can_be_stopped(monkeypatch):
    from mdn_core.mixture import sample_mixture
    from mdn_core.model import Mixture

    rng = np.random.default_rng(2)
    w = rng.dirichlet(np.ones(3), 6).astype(np.float32)
    m = rng.normal(size=(6, 3, 2)).astype(np.float32)
    s = rng.uniform(0.1, 1.0, (6, 3, 2)).astype(np.float32)
    mix = Mixture(w, m, s)
    x = np.zeros((6, 1), np.float32)
    # Three requests sharing (N, temperature): 1, 2 and 3 rows, each with its own seed.
    asks = [pipeline.Ask(sampling=pipeline.SampleSpec(50, seed=seed)) for seed in (4, 5, 6)]
    bounds = [0, 1, 3, 6]
    monkeypatch.setattr(pipeline, "SAMPLE_CHUNK", 40)  # chunks split rows, requests and one row's samples
    out = pipeline.postprocess(asks, bounds, x, mix, None)
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        want = sample_mixture(w[a:b], m[a:b], s[a:b], 50, np.random.default_rng(4 + i))
        got = out[i]
        assert isinstance(got, pipeline.Outputs) and got.samples is not None
        np.testing.assert_array_equal(got.samples, want)

    asked = []

    def first_request_waits() -> bool:
        asked.append(1)
        return len(asked) < 3

    out = pipeline.postprocess(asks, bounds, x, mix, None, [first_request_waits, lambda: False, lambda: False])
    assert all(isinstance(o, DeadlineExpired) for o in out)  # shared work: stopped once nobody waits
    assert "stopped after" in str(out[0])
