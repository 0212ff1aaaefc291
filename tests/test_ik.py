"""Inverse kinematics: refinement and ranking against the closed form, the Solve RPC, and OIP outputs."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest
from mdn_core.ik import solve
from mdn_core.kinematics import PlanarArm
from mdn_core.refine import refine
from mdn_serve._proto.inference import grpc_service_pb2 as oip
from mdn_serve._proto.inference import grpc_service_pb2_grpc as oip_grpc
from mdn_serve._proto.mdn.v1 import mdn_pb2 as pb
from mdn_serve._proto.mdn.v1 import mdn_pb2_grpc as pb_grpc
from mdn_serve.tools.client import MdnClient

ARM = PlanarArm((0.8, 0.2), ((0.3, 1.2), (-math.pi / 2, math.pi / 2)))
THREE = PlanarArm((0.5, 0.3, 0.2), ((-0.5, 1.5), (-2.0, 2.0), (-2.0, 2.0)))


def mixture_around(
    seeds: np.ndarray, weights: np.ndarray, spread: float = 0.01
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A mixture with one narrow component at each seed: (B, K, J) -> weights, means, scales."""
    b, k, j = seeds.shape
    return (
        np.broadcast_to(weights, (b, k)).astype(np.float32),
        seeds.astype(np.float32),
        np.full((b, k, j), spread, np.float32),
    )


def test_jacobian_matches_finite_differences():
    rng = np.random.default_rng(0)
    for arm in (ARM, THREE):
        angles = rng.uniform(-1, 1, (5, arm.num_joints))
        eps = 1e-6
        numeric = np.stack(
            [
                (arm.forward(angles + eps * e) - arm.forward(angles - eps * e)) / (2 * eps)
                for e in np.eye(arm.num_joints)
            ],
            axis=-1,
        )
        task_rows = arm.chain.forward_and_jacobian(angles)[1][..., : arm.chain.task_rows, :]
        np.testing.assert_allclose(task_rows, numeric, atol=1e-8)


def test_refinement_reaches_the_closed_form_solution():
    rng = np.random.default_rng(1)
    limits = np.asarray(ARM.joint_limits)
    truth = rng.uniform(limits[:, 0] + 0.1, limits[:, 1] - 0.1, (200, 2))
    truth[:, 1] = np.sign(truth[:, 1]) * np.maximum(np.abs(truth[:, 1]), 0.3)  # clear of the singular elbow
    targets = ARM.forward(truth)
    seeds = truth + rng.normal(0, 0.05, truth.shape)
    refined = refine(ARM.chain, targets, seeds[:, None, :], 1e-9, 1e-4)[0][:, 0]
    assert np.max(np.linalg.norm(ARM.forward(refined) - targets, axis=-1)) < 1e-9
    np.testing.assert_allclose(refined, truth, atol=1e-6)  # the same branch as the seed
    assert ARM.within_limits(refined).all()


def test_both_elbows_are_returned_exact_and_ranked_by_mass():
    targets = ARM.forward(np.array([[0.7, 0.9], [0.75, -0.8]]))
    branches, feasible = ARM.two_link_ik(targets)
    assert feasible.all()
    seeds = branches + np.array([0.03, -0.04])  # the MDN's modes are close, not exact
    found = solve(ARM.chain, targets, *mixture_around(seeds, np.array([0.3, 0.7])))
    assert found.num_solutions.tolist() == [2, 2] and found.status == ["ok", "ok"]
    assert (found.position_error <= 1e-6).all() and found.within_limits.all()
    np.testing.assert_allclose(found.score[:, 0], 0.7, atol=1e-3)  # the heavier mode first
    np.testing.assert_allclose(found.solutions[:, 0], branches[:, 1], atol=1e-5)
    np.testing.assert_allclose(found.solutions[:, 1], branches[:, 0], atol=1e-5)


def test_duplicates_merge_into_one_solution_with_their_mass():
    targets = ARM.forward(np.array([[0.7, 0.9]]))
    branches, _ = ARM.two_link_ik(targets)
    seeds = np.stack([branches[:, 0] + 0.02, branches[:, 0] - 0.02, branches[:, 1]], axis=1)
    found = solve(ARM.chain, targets, *mixture_around(seeds, np.array([0.3, 0.3, 0.4])))
    assert found.num_solutions.tolist() == [2]
    np.testing.assert_allclose(sorted(found.score[0]), [0.4, 0.6], atol=1e-3)


def test_near_the_joint_limits_only_the_feasible_branch_is_returned():
    # theta1 just above its lower limit on the elbow-down branch; the other branch needs theta1 < 0.3.
    target = ARM.forward(np.array([[0.32, -0.6]]))
    branches, feasible = ARM.two_link_ik(target)
    assert feasible.tolist() == [[False, True]]
    found = solve(ARM.chain, target, *mixture_around(branches + 0.02, np.array([0.5, 0.5])))
    assert found.num_solutions.tolist() == [1]
    np.testing.assert_allclose(found.solutions[0, 0], branches[0, 1], atol=1e-5)
    assert ARM.within_limits(found.solutions[0, :1].astype(np.float64)).all()


def test_near_singular_targets_where_the_branches_merge():
    target = ARM.forward(np.array([[0.7, 1e-4]]))  # almost stretched: both elbows nearly coincide
    branches, _ = ARM.two_link_ik(target)
    found = solve(ARM.chain, target, *mixture_around(branches + np.array([0.0, 0.05]), np.array([0.5, 0.5])))
    assert found.num_solutions[0] >= 1
    n = found.num_solutions[0]
    assert (found.position_error[0, :n] <= 1e-6).all()
    for solution in found.solutions[0, :n]:
        assert np.min(np.linalg.norm(branches[0] - solution, axis=-1)) < 0.01


def test_unreachable_and_infeasible_targets_say_why():
    targets = np.array([[2.0, 0.0], [0.1, 0.0], [0.6, 0.5]])  # too far, too close, outside the joint limits
    seeds = np.broadcast_to(np.array([[0.7, 0.5], [0.7, -0.5]]), (3, 2, 2))
    found = solve(ARM.chain, targets, *mixture_around(seeds, np.array([0.5, 0.5])))
    assert found.num_solutions.tolist() == [0, 0, 0]
    assert "unreachable" in found.status[0] and "reaches 0.6 to 1" in found.status[0]
    assert "unreachable" in found.status[1]
    assert "no configuration within the joint limits" in found.status[2]
    assert np.isnan(found.solutions).all()


def test_unrefined_modes_are_flagged_not_filtered():
    target = ARM.forward(np.array([[0.7, 0.9]]))
    seeds = np.array([[[0.7, 0.9], [0.1, -0.9]]])  # the second mode lies below theta1's limit
    found = solve(ARM.chain, target, *mixture_around(seeds, np.array([0.6, 0.4])), refine_solutions=False)
    assert found.num_solutions.tolist() == [2]
    assert found.within_limits[0].tolist() == [True, False]


def test_three_link_arm_solutions_are_exact_by_forward_kinematics():
    rng = np.random.default_rng(2)
    limits = np.asarray(THREE.joint_limits)
    truth = rng.uniform(limits[:, 0] + 0.2, limits[:, 1] - 0.2, (50, 3))
    targets = THREE.forward(truth)
    seeds = rng.uniform(limits[:, 0], limits[:, 1], (50, 6, 3))  # a redundant arm: many answers
    found = solve(THREE.chain, targets, *mixture_around(seeds, np.full(6, 1 / 6), spread=0.3), num_samples=4, seed=0)
    assert (found.num_solutions >= 1).mean() > 0.9
    for b in range(50):
        n = found.num_solutions[b]
        got = found.solutions[b, :n].astype(np.float64)
        assert (np.linalg.norm(THREE.forward(got) - targets[b], axis=-1) <= 1e-6 + 1e-7).all()
        assert THREE.within_limits(got, slack=1e-6).all()


def test_max_solutions_keeps_the_best():
    targets = ARM.forward(np.array([[0.7, 0.9]]))
    branches, _ = ARM.two_link_ik(targets)
    found = solve(ARM.chain, targets, *mixture_around(branches, np.array([0.2, 0.8])), max_solutions=1)
    assert found.num_solutions.tolist() == [1] and found.solutions.shape == (1, 1, 2)
    np.testing.assert_allclose(found.solutions[0, 0], branches[0, 1], atol=1e-5)


# ---------------------------------------------------------------- over the wire


def reachable_targets(n: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    angles = np.stack([rng.uniform(0.3, 1.2, 4 * n), rng.uniform(0.6, 1.2, 4 * n) * rng.choice([-1, 1], 4 * n)], 1)
    candidates = ARM.forward(angles)
    both, _ = ARM.two_link_ik(candidates)
    inside = np.all(ARM.within_limits(both, slack=-0.1), axis=-1)
    return candidates[inside][:n].astype(np.float32)


@pytest.mark.parametrize("raw", [True, False])
def test_solve_rpc_finds_both_elbows_exactly(server, raw):
    targets = reachable_targets(30)
    with MdnClient(server.target, raw=raw) as client:
        found = client.solve("two_link_arm", targets)
    assert (found.model, found.version) == ("two_link_arm", "1")
    branches, _ = ARM.two_link_ik(targets.astype(np.float64))
    for b in range(len(targets)):
        n = found.num_solutions[b]
        assert found.status[b] == "ok" and n >= 2
        assert (found.position_error[b, :n] <= 1e-6).all() and (found.within_limits[b, :n] == 1).all()
        for branch in branches[b]:
            assert np.min(np.linalg.norm(found.solutions[b, :n] - branch, axis=-1)) < 1e-4


def test_solve_rpc_explains_targets_without_solutions(server):
    with MdnClient(server.target) as client:
        found = client.solve("two_link_arm", [[2.0, 0.0], [0.6, 0.6]])
    assert found.num_solutions[0] == 0 and found.status[0].startswith("unreachable")
    assert found.num_solutions[1] >= 2 and found.status[1] == "ok"


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (pb.SolveRequest(model=pb.ModelRef(name="inverse_sine"), targets=pb.Tensor(shape=[1, 1], values=[0.5])),
         grpc.StatusCode.INVALID_ARGUMENT, "has no kinematics"),
        (pb.SolveRequest(model=pb.ModelRef(name="two_link_arm")), grpc.StatusCode.INVALID_ARGUMENT, "no targets"),
        (pb.SolveRequest(model=pb.ModelRef(name="two_link_arm"), targets=pb.Tensor(shape=[1, 3], values=[1, 2, 3])),
         grpc.StatusCode.INVALID_ARGUMENT, "takes planar targets [batch, 2]"),
        (pb.SolveRequest(model=pb.ModelRef(name="two_link_arm"), targets=pb.Tensor(shape=[1, 2], values=[0.6, 0.6]),
                         tolerance=-1), grpc.StatusCode.INVALID_ARGUMENT, "tolerance"),
        (pb.SolveRequest(model=pb.ModelRef(name="two_link_arm"), targets=pb.Tensor(shape=[1, 2], values=[0.6, 0.6]),
                         max_solutions=-1), grpc.StatusCode.INVALID_ARGUMENT, "max_solutions"),
        (pb.SolveRequest(model=pb.ModelRef(name="two_link_arm"), targets=pb.Tensor(shape=[1, 2], values=[0.6, 0.6]),
                         num_samples=-2), grpc.StatusCode.INVALID_ARGUMENT, "num_samples"),
        (pb.SolveRequest(model=pb.ModelRef(name="nope"), targets=pb.Tensor(shape=[1, 2], values=[0.6, 0.6])),
         grpc.StatusCode.NOT_FOUND, "unknown model"),
    ],
)  # fmt: skip
def test_solve_rpc_errors(server, request_, code, message):
    with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as info:
        pb_grpc.InverseKinematicsServiceStub(channel).Solve(request_, timeout=10)
    assert info.value.code() == code and message in info.value.details()


@pytest.mark.parametrize("raw", [True, False])
def test_ik_outputs_over_the_open_inference_protocol(server, raw):
    targets = np.array([[0.6, 0.6], [2.0, 0.0]], np.float32)
    request = oip.ModelInferRequest(model_name="two_link_arm")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[2, 2])
    if raw:
        request.raw_input_contents.append(targets.tobytes())
    else:
        tensor.contents.fp32_contents.extend(targets.ravel().tolist())
    for name in ("ik_solutions", "ik_num_solutions", "ik_status"):
        request.outputs.add(name=name)
    request.parameters["refine"].string_param = "true"
    with grpc.insecure_channel(server.target) as channel:
        response = oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    expected = MdnClient(server.target).solve("two_link_arm", targets)
    outputs = {o.name: o for o in response.outputs}
    if raw:
        solutions = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(list(outputs["ik_solutions"].shape))
        counts = np.frombuffer(response.raw_output_contents[1], "<i4").tolist()
        blob, status = response.raw_output_contents[2], []
        while blob:
            size = int.from_bytes(blob[:4], "little")
            status.append(blob[4 : 4 + size].decode())
            blob = blob[4 + size :]
    else:
        solutions = np.array(outputs["ik_solutions"].contents.fp32_contents).reshape(
            list(outputs["ik_solutions"].shape)
        )
        counts = list(outputs["ik_num_solutions"].contents.int_contents)
        status = [s.decode() for s in outputs["ik_status"].contents.bytes_contents]
    assert outputs["ik_status"].datatype == "BYTES" and outputs["ik_num_solutions"].datatype == "INT32"
    assert counts == expected.num_solutions and status == expected.status
    np.testing.assert_allclose(solutions, expected.solutions, atol=1e-6)


def test_ik_seeds_have_their_own_budget(trained):
    from tests.conftest import serve_in_process

    # The two-link arm has 3 components and no default draws: 3 seeds per target.
    running = serve_in_process("--model-repository", str(trained["models"]), "--max-ik-seeds", "99")
    try:
        targets = np.tile([[0.6, 0.6]], (33, 1)).astype(np.float32)
        with MdnClient(running.target) as client:
            assert list(client.solve("two_link_arm", targets).num_solutions) == [2] * 33
            with pytest.raises(grpc.RpcError) as caught:
                client.solve("two_link_arm", np.vstack([targets, targets[:1]]))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (
                "34 targets x up to 3 seeds" in caught.value.details()
                and "limit of 99 IK seeds" in caught.value.details()
            )
            with pytest.raises(grpc.RpcError) as drawn:  # one target, a million draws: refused before any work
                client.solve("two_link_arm", targets[:1], num_samples=1_000_000)
            assert "1000003 is over this server's limit" in drawn.value.details()
    finally:
        running.stop()


def test_solve_works_in_chunks_that_give_the_same_answer_and_can_be_stopped(monkeypatch):
    import mdn_core.ik as ik
    from mdn_core.chunks import Interrupted
    from mdn_serve.errors import DeadlineExpired
    from mdn_serve.serving.pipeline import Ask, IkSpec, postprocess

    rng = np.random.default_rng(7)
    angles = np.stack([rng.uniform(0.4, 1.1, 60), rng.uniform(0.6, 1.3, 60) * rng.choice([-1, 1], 60)], 1)
    targets = ARM.forward(angles)
    branches, _ = ARM.two_link_ik(targets)
    mixture = mixture_around(branches + 0.02, np.array([0.4, 0.6]))
    whole = solve(ARM.chain, targets, *mixture)
    drawn = solve(ARM.chain, targets, *mixture, num_samples=5, seed=11)  # seeded draws: chunks must not change them
    monkeypatch.setattr(ik, "CHUNK_SEEDS", 12)  # 3 seeds per target here: chunks of 4 targets (1 with the draws)
    for before, after in ((whole, solve(ARM.chain, targets, *mixture)),
                          (drawn, solve(ARM.chain, targets, *mixture, num_samples=5, seed=11))):  # fmt: skip
        assert after.status == before.status and after.num_solutions.tolist() == before.num_solutions.tolist()
        for name in ("solutions", "position_error", "score", "within_limits", "iterations"):
            np.testing.assert_array_equal(getattr(after, name), getattr(before, name))
    calls: list[int] = []

    def stop() -> bool:
        calls.append(1)
        return True

    with pytest.raises(Interrupted, match="after 4 of 60 targets"):
        solve(ARM.chain, targets, *mixture, should_stop=stop)
    assert len(calls) == 1  # asked once, before the second chunk: the first chunk always runs

    # In the pipeline: a request whose caller stopped waiting gets DeadlineExpired, the others their answer.
    from mdn_core.model import Mixture

    mix = Mixture(*(np.concatenate([a, a]).astype(np.float32) for a in mixture))
    x = np.concatenate([targets, targets]).astype(np.float32)
    asks = [Ask(ik=IkSpec()), Ask(ik=IkSpec())]
    out = postprocess(asks, [0, 60, 120], x, mix, ARM.chain, [lambda: True, lambda: False])
    first = out[0]
    assert isinstance(out[1], DeadlineExpired) and not isinstance(first, BaseException)
    assert first.solutions is not None and first.solutions.num_solutions.tolist() == whole.num_solutions.tolist()


def test_a_solve_whose_deadline_passed_stops_and_frees_the_compute_thread(trained):
    import time

    from tests.conftest import serve_in_process

    running = serve_in_process(
        "--model-repository",
        str(trained["models"]),
        "--compute-threads",
        "1",
        "--max-ik-seeds",
        "20000000",
        "--max-samples",
        "20000000",
    )
    try:
        targets = np.tile([[0.6, 0.6]], (8192, 1)).astype(np.float32)
        with MdnClient(running.target) as client:
            client.timeout = 0.3
            start = time.monotonic()
            with pytest.raises(grpc.RpcError) as caught:  # about 8 million seeds: many seconds of work
                client.solve("two_link_arm", targets, num_samples=1000)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            client.timeout = 30.0
            client.predict("two_link_arm", targets[:1])  # waits for the one compute thread
            waited = time.monotonic() - start
        # Unstopped, the solve would hold the thread for the whole of its work (8 s and more here);
        # stopped, the thread is free within a chunk of the 0.3 s deadline (the rest is the Predict).
        assert waited < 0.3 + 0.15, waited
    finally:
        running.stop()
