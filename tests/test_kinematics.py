import math

import numpy as np
import pytest
from mdn_core.contract import parse_kinematics
from mdn_core.kinematics import PlanarArm

ARM = PlanarArm((0.8, 0.2), ((0.3, 1.2), (-math.pi / 2, math.pi / 2)))


def test_closed_form_ik_inverts_forward_kinematics():
    rng = np.random.default_rng(0)
    limits = np.asarray(ARM.joint_limits)
    angles = rng.uniform(limits[:, 0], limits[:, 1], (1000, 2))
    targets = ARM.forward(angles)
    solutions, feasible = ARM.two_link_ik(targets)
    assert feasible.any(-1).all()  # the generating angles are always one feasible branch
    fk = ARM.forward(solutions)
    np.testing.assert_allclose(fk, np.broadcast_to(targets[:, None], fk.shape), atol=1e-12)
    branch = np.where(angles[:, 1] >= 0, 0, 1)
    np.testing.assert_allclose(solutions[np.arange(1000), branch], angles, atol=1e-9)


def test_forward_kinematics_of_a_stretched_arm():
    np.testing.assert_allclose(ARM.forward(np.array([[0.0, 0.0]])), [[1.0, 0.0]])
    np.testing.assert_allclose(ARM.forward(np.array([[math.pi / 2, -math.pi / 2]])), [[0.2, 0.8]], atol=1e-12)


def test_unreachable_targets_are_infeasible():
    _, feasible = ARM.two_link_ik(np.array([[2.0, 0.0], [0.1, 0.0]]))
    assert not feasible.any()


def test_metadata_round_trip_and_validation():
    chain = parse_kinematics(ARM.to_metadata())
    assert chain is not None and chain.target == "planar"
    q = np.array([[0.4, -0.3], [1.0, 0.5]])
    np.testing.assert_allclose(chain.forward(q)[:, :2, 3], ARM.forward(q), atol=1e-12)
    with pytest.raises(ValueError, match="link lengths"):
        PlanarArm((0.8, -0.2), ((0, 1), (0, 1)))
    with pytest.raises(ValueError, match="joint limits"):
        PlanarArm((0.8,), ((0, 1), (0, 1)))
    with pytest.raises(ValueError, match="low < high"):
        PlanarArm((0.8,), ((1, 0),))
    with pytest.raises(ValueError, match=r"kinematics\.type"):
        parse_kinematics({"type": "spherical"})
