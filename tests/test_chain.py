"""Serial chains from real URDFs: our kinematics against pinocchio, URDF errors, pose IK, served poses."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pinocchio as pin
import pytest
from mdn_core.chain import pose_targets
from mdn_core.ik import goal_of, solve, task_errors
from mdn_core.refine import refine
from mdn_core.rotations import matrix_quaternion, quaternion_matrix, rotation_log, rotation_log_columns
from mdn_serve._proto.inference import grpc_service_pb2 as oip
from mdn_serve._proto.inference import grpc_service_pb2_grpc as oip_grpc
from mdn_serve.tools.client import MdnClient
from mdn_train import export, train
from mdn_train.errors import TrainerError
from mdn_train.urdf import ROBOTS, load_chain, robot_urdf

from tests.conftest import serve_in_process


def pinocchio_configuration(model: Any, names: list[str], row: np.ndarray) -> np.ndarray:
    """Our joint values (in our joint order) as pinocchio's configuration vector; others neutral."""
    full = pin.neutral(model)
    for name, value in zip(names, row, strict=True):
        joint = model.joints[model.getJointId(name)]
        if joint.nq == 2:  # pinocchio keeps a continuous joint as (cos, sin)
            full[joint.idx_q : joint.idx_q + 2] = [math.cos(value), math.sin(value)]
        else:
            full[joint.idx_q] = value
    return np.asarray(full)


def pinocchio_pose(path: Path, tip: str, names: list[str], q: np.ndarray) -> np.ndarray:
    """The tip's transforms by pinocchio."""
    model = pin.buildModelFromUrdf(str(path))
    data = model.createData()
    frame = model.getFrameId(tip)
    out = []
    for row in q:
        pin.framesForwardKinematics(model, data, pinocchio_configuration(model, names, row))
        out.append(data.oMf[frame].homogeneous.copy())
    return np.array(out)


def pinocchio_jacobian(path: Path, tip: str, names: list[str], row: np.ndarray) -> np.ndarray:
    """pinocchio's Jacobian of the tip in the base frame (tip as reference point), our joint order."""
    model = pin.buildModelFromUrdf(str(path))
    full = pinocchio_configuration(model, names, row)
    jac = pin.computeFrameJacobian(model, model.createData(), full, model.getFrameId(tip), pin.LOCAL_WORLD_ALIGNED)
    return np.asarray(jac)[:, [model.joints[model.getJointId(n)].idx_v for n in names]]


@pytest.mark.parametrize("robot", sorted(ROBOTS))
def test_forward_kinematics_and_jacobian_match_pinocchio(robot):
    path = robot_urdf(robot)
    _, base, tip = ROBOTS[robot]
    chain = load_chain(path, base, tip)
    names = [j.name for j in chain.joints]
    q = np.random.default_rng(0).uniform(chain.limits[:, 0], chain.limits[:, 1], (50, chain.num_joints))
    np.testing.assert_allclose(chain.forward(q), pinocchio_pose(path, tip, names, q), atol=1e-9)
    _, jac = chain.forward_and_jacobian(q)
    for row, ours in zip(q[:10], jac[:10], strict=True):
        np.testing.assert_allclose(ours, pinocchio_jacobian(path, tip, names, row), atol=1e-9)


MIXED = """<robot name="mixed">
  <link name="base"/><link name="l1"/><link name="l2"/><link name="l3"/><link name="l4"/><link name="tool"/>
  <joint name="turn" type="revolute"><parent link="base"/><child link="l1"/><axis xyz="0 0 1"/>
    <origin xyz="0 0 0.2" rpy="0 0 0.3"/><limit lower="-2" upper="2" effort="1" velocity="1"/></joint>
  <joint name="slide" type="prismatic"><parent link="l1"/><child link="l2"/><axis xyz="0.6 0 0.8"/>
    <origin xyz="0.1 0.05 0" rpy="0.4 -0.2 0.1"/><limit lower="-0.3" upper="0.5" effort="1" velocity="1"/></joint>
  <joint name="spin" type="continuous"><parent link="l2"/><child link="l3"/><axis xyz="0 1 0"/>
    <origin xyz="0 0.2 0.1" rpy="-0.5 0 0.7"/></joint>
  <joint name="wrist" type="revolute"><parent link="l3"/><child link="l4"/><axis xyz="1 0 0"/>
    <origin xyz="0.15 0 0"/><limit lower="-1.5" upper="1.5" effort="1" velocity="1"/></joint>
  <joint name="flange" type="fixed"><parent link="l4"/><child link="tool"/>
    <origin xyz="0 0 0.12" rpy="0.2 0.1 0"/></joint>
</robot>"""


def test_prismatic_and_continuous_joints_match_pinocchio(tmp_path):
    path = tmp_path / "mixed.urdf"
    path.write_text(MIXED)
    chain = load_chain(path, "base", "tool")
    assert [j.kind for j in chain.joints] == ["revolute", "prismatic", "continuous", "revolute"]
    names = [j.name for j in chain.joints]
    q = np.random.default_rng(2).uniform(chain.limits[:, 0], chain.limits[:, 1], (40, 4))
    np.testing.assert_allclose(chain.forward(q), pinocchio_pose(path, "tool", names, q), atol=1e-9)
    _, jac = chain.forward_and_jacobian(q)
    for row, ours in zip(q[:10], jac[:10], strict=True):
        np.testing.assert_allclose(ours, pinocchio_jacobian(path, "tool", names, row), atol=1e-9)


def test_built_in_robots_are_the_real_arms():
    panda = load_chain(robot_urdf("panda"), *ROBOTS["panda"][1:])
    assert [j.name for j in panda.joints] == [f"panda_joint{i}" for i in range(1, 8)]
    assert panda.source == "panda.urdf" and panda.tip_link == "panda_link8"
    np.testing.assert_allclose(panda.limits[3], [-3.0718, -0.0698])
    ur5 = load_chain(robot_urdf("ur5"), *ROBOTS["ur5"][1:])
    assert ur5.num_joints == 6 and ur5.periodic.sum() >= 4  # the +-2 pi joints wrap


def test_rotations_round_trip_and_the_log_map_is_stable():
    rng = np.random.default_rng(1)
    quat = rng.normal(size=(200, 4))
    quat /= np.linalg.norm(quat, axis=1, keepdims=True)
    rot = quaternion_matrix(quat)
    np.testing.assert_allclose(quaternion_matrix(matrix_quaternion(rot)), rot, atol=1e-12)
    axis = np.array([0.0, 0.6, 0.8])
    for angle in (1e-9, 1e-5, 0.3, math.pi - 1e-7, math.pi):
        half = angle / 2
        r = quaternion_matrix(np.array([*(axis * math.sin(half)), math.cos(half)]))
        assert np.linalg.norm(rotation_log(r)) == pytest.approx(angle, abs=1e-9)
    # The refinement's form, matrices laid out (3, 3, n), agrees with it, near pi too.
    angles = (math.pi - 1e-7, math.pi)
    near_pi = quaternion_matrix(np.array([[*(axis * math.sin(a / 2)), math.cos(a / 2)] for a in angles]))
    both = np.concatenate([rot, near_pi])
    np.testing.assert_allclose(rotation_log_columns(both.transpose(1, 2, 0)).T, rotation_log(both), atol=1e-12)


URDF = """<robot name="r">
  <link name="base"/><link name="a"/><link name="b"/><link name="tool"/><link name="side"/>
  <joint name="j1" type="{kind}"><parent link="base"/><child link="a"/><axis xyz="0 0 1"/>
    <origin xyz="0 0 0.1"/><limit lower="-1" upper="1" effort="1" velocity="1"/></joint>
  <joint name="j2" type="fixed"><parent link="a"/><child link="b"/><origin xyz="0.3 0 0"/></joint>
  <joint name="j3" type="fixed"><parent link="b"/><child link="tool"/><origin xyz="0.1 0 0"/></joint>
  <joint name="j4" type="fixed"><parent link="base"/><child link="side"/></joint>
</robot>"""


@pytest.mark.parametrize(
    ("kind", "base", "tip", "message"),
    [
        ("revolute", "base", "hand", "no tip link 'hand'; its links are base, a, b, tool, side"),
        ("revolute", "tool", "base", "'base' is not below 'tool'"),
        ("floating", "base", "tool", "joint 'j1' is floating"),
        ("planar", "base", "tool", "joint 'j1' is planar"),
        ("revolute", "a", "tool", "no movable joint between 'a' and 'tool'"),
    ],
)
def test_urdf_problems_are_clear_errors(tmp_path, kind, base, tip, message):
    path = tmp_path / "r.urdf"
    path.write_text(URDF.format(kind=kind))
    with pytest.raises(TrainerError, match=message.replace("(", r"\(")):
        load_chain(path, base, tip)
    with pytest.raises(TrainerError, match="does not exist"):
        load_chain(tmp_path / "missing.urdf", base, tip)


def test_fixed_joints_fold_into_the_chain(tmp_path):
    path = tmp_path / "r.urdf"
    path.write_text(URDF.format(kind="revolute"))
    chain = load_chain(path, "base", "tool", target="position")
    assert chain.num_joints == 1
    np.testing.assert_allclose(chain.forward(np.array([[math.pi / 2]]))[0, :3, 3], [0.0, 0.4, 0.1], atol=1e-12)


def test_pose_refinement_converges_within_the_limits_and_periodic_turns_follow_the_seed_state():
    chain = load_chain(robot_urdf("ur5"), *ROBOTS["ur5"][1:])
    rng = np.random.default_rng(3)
    q = rng.uniform(chain.limits[:, 0] / 2, chain.limits[:, 1] / 2, (40, 6))
    targets = pose_targets(chain.forward(q))
    refined, steps = refine(chain, targets, q[:, None, :] + rng.normal(0, 0.1, (40, 3, 6)), 1e-5, 1e-4)
    _, pos, rot = task_errors(chain, goal_of(chain, targets)[:, None], chain.forward(refined))
    assert ((pos <= 1e-5) & (rot <= 1e-4)).mean() > 0.95 and chain.within_limits(refined).all()
    assert steps.mean() < 20
    # A narrow mixture at the truth, and a seed state one turn away on the periodic joints.
    means = q[:, None, :].astype(np.float32)
    weights, scales = np.ones((40, 1), np.float32), np.full_like(means, 1e-3)
    state = q + np.where(chain.periodic & (q < 0), 2 * math.pi, 0.0)
    found = solve(chain, targets, weights, means, scales, num_samples=0, seed_state=state)
    assert (found.num_solutions >= 1).all()
    np.testing.assert_allclose(found.solutions[:, 0], state, atol=1e-3)


# ---------------------------------------------------------------- served pose IK


@pytest.fixture(scope="module")
def panda_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("panda")
    args = ["--dataset", "panda", "--num-samples", "3000", "--epochs", "3", "--hidden", "32,32", "--components", "4"]
    assert train.main([*args, "--quiet", "--runs", str(root / "runs")]) == 0
    assert export.main(["--name", "panda", "--runs", str(root / "runs"), "--models", str(root / "models"),
                        "--no-plots"]) == 0  # fmt: skip
    running = serve_in_process("--model-repository", str(root / "models"))
    yield running
    running.stop()


def test_served_pose_solutions_pass_an_independent_forward_kinematics_check(panda_server):
    chain = load_chain(robot_urdf("panda"), *ROBOTS["panda"][1:])
    q = np.random.default_rng(4).uniform(chain.limits[:, 0], chain.limits[:, 1], (20, 7))
    targets = pose_targets(chain.forward(q))
    with MdnClient(panda_server.target) as client:
        found = client.solve("panda", targets, seed=0)
        info = client.get_model("panda")
    assert "panda_joint7" in info.metadata_json and '"target": "pose"' in info.metadata_json
    assert np.mean(np.array(found.num_solutions) > 0) >= 0.9
    names = [j.name for j in chain.joints]
    for b, n in enumerate(found.num_solutions):
        if n == 0:
            assert "no configuration" in found.status[b]
            continue
        poses = pinocchio_pose(robot_urdf("panda"), "panda_link8", names, found.solutions[b, :n].astype(np.float64))
        assert np.all(np.linalg.norm(poses[:, :3, 3] - targets[b, :3], axis=-1) <= 1e-5 + 1e-7)
        turn = np.linalg.norm(
            rotation_log(np.swapaxes(poses[:, :3, :3], -1, -2) @ quaternion_matrix(targets[b, 3:])), axis=-1
        )
        assert np.all(turn <= 1e-4 + 1e-6) and np.all(found.orientation_error[b, :n] <= 1e-4)
        assert chain.within_limits(found.solutions[b, :n].astype(np.float64), slack=1e-6).all()


@pytest.mark.parametrize(
    ("targets", "extra", "message"),
    [
        ([[0.3, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0]], {}, "quaternion (qx, qy, qz, qw) has norm 0"),
        ([[0.3, 0.0, 0.5, 0.0, 0.0, 0.0, 0.9]], {}, "norm 0.9"),
        ([[0.3, 0.0, 0.5]], {}, "takes pose targets [batch, 7]"),
        ([[0.3, np.nan, 0.5, 0.0, 0.0, 0.0, 1.0]], {}, "NaN or infinite"),
        ([[0.3, 0.0, 0.5, 0.0, 0.0, 0.0, 1.0]], {"seed_state": [[0.0] * 6]}, "seed_state must have shape [1, 7]"),
    ],
)
def test_bad_pose_requests_are_invalid_argument(panda_server, targets, extra, message):
    with MdnClient(panda_server.target) as client, pytest.raises(grpc.RpcError) as info:
        client.solve("panda", targets, **extra)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in info.value.details()


def test_the_command_line_client_takes_pose_targets(panda_server, capsys):
    from mdn_serve.tools import client_cli

    chain = load_chain(robot_urdf("panda"), *ROBOTS["panda"][1:])
    pose = pose_targets(chain.forward(np.array([[0.1, 0.3, -0.2, -1.8, 0.1, 2.0, 0.5]])))[0]
    args = ["--target", panda_server.target, "ik", "--model", "panda", "--pose", *(f"{v:.9f}" for v in pose)]
    assert client_cli.main(args) == 0
    out = capsys.readouterr().out
    assert "target x=" in out and "qw=" in out and "orientation error" in out
    with pytest.raises(SystemExit, match="takes pose targets of 7 numbers each"):
        client_cli.main(["--target", panda_server.target, "ik", "--model", "panda", "0.4", "0.1"])


def test_refinement_survives_singular_configurations():
    """The UR5 stretched out (every joint at 0) is singular; damping keeps each step solvable."""
    chain = load_chain(robot_urdf("ur5"), *ROBOTS["ur5"][1:])
    zero = np.zeros((4, 1, 6))
    targets = pose_targets(chain.forward(np.array([[0.0, -0.5, 0.5, 0.0, 0.3, 0.0]] * 4)))
    refined, steps = refine(chain, targets, zero, 1e-5, 1e-4, iterations=200)
    assert np.isfinite(refined).all() and (steps > 0).all()


def test_the_load_generator_sends_reachable_pose_targets(panda_server, tmp_path):
    from mdn_serve.tools import loadtest

    out = tmp_path / "load.json"
    assert (
        loadtest.main(
            [
                "--target",
                panda_server.target,
                "--model",
                "panda",
                "--rpc",
                "solve",
                "--batch",
                "3",
                "--concurrency",
                "2",
                "--duration",
                "0.5",
                "--warmup",
                "0",
                "--quiet",
                "--json",
                str(out),
            ]
        )
        == 0
    )  # fmt: skip  (2 clients: within the queue-time budget, every one answered)
    result = json.loads(out.read_text())
    assert result["requests"] > 0 and set(result["codes"]) == {"OK"}


def test_the_chain_block_round_trips_and_a_bad_one_names_its_field():
    from mdn_core.contract import ContractError, parse_kinematics

    chain = load_chain(robot_urdf("ur5"), *ROBOTS["ur5"][1:])
    block: dict[str, Any] = chain.to_metadata()
    assert parse_kinematics(block, 6) == chain
    for change, field in (
        ({"version": 2}, "kinematics.version"),
        ({"target": "orbit"}, "kinematics.target"),
        ({"tip": [0.0] * 11}, "kinematics.tip"),
    ):
        with pytest.raises(ContractError, match=field.replace(".", r"\.")):
            parse_kinematics({**block, **change})
    broken = {**block, "joints": [{**block["joints"][0], "axis": [0.0, 0.0, 2.0]}, *block["joints"][1:]]}
    with pytest.raises(ContractError, match=r"kinematics\.joints\[0\].*not a unit vector"):
        parse_kinematics(broken)
    with pytest.raises(ContractError, match="describes 6 joint"):
        parse_kinematics(block, 7)


def test_oip_model_config_names_the_joints_and_limits_of_the_urdf(panda_server):
    chain = load_chain(robot_urdf("panda"), *ROBOTS["panda"][1:])
    with grpc.insecure_channel(panda_server.target) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        config = stub.ModelConfig(oip.ModelConfigRequest(name="panda"), timeout=10).config
        with pytest.raises(grpc.RpcError) as missing:
            stub.ModelConfig(oip.ModelConfigRequest(name="no_such_arm"), timeout=10)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["joint_names"].split(",") == [j.name for j in chain.joints]
    np.testing.assert_allclose([float(v) for v in params["joint_lower"].split(",")], chain.limits[:, 0], rtol=0, atol=0)
    np.testing.assert_allclose([float(v) for v in params["joint_upper"].split(",")], chain.limits[:, 1], rtol=0, atol=0)
    assert (params["base_link"], params["tip_link"], params["urdf"]) == ("panda_link0", "panda_link8", "panda.urdf")
    assert params["ik_target_layout"] == "pose" and params["ik_target_columns"] == "x,y,z,qx,qy,qz,qw"
    assert [(i.name, list(i.dims), i.optional) for i in config.input] == [("x", [9], False), ("seed_state", [7], True)]
    assert {o.name: list(o.dims) for o in config.output}["ik_solutions"] == [-1, 7]
