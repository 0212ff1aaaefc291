"""The robot report's coverage: which restart solutions are distinct, near singularities too."""

from __future__ import annotations

import dataclasses

import numpy as np
from mdn_core.chain import pose_targets
from mdn_core.ik import goal_of, joint_distance, task_errors
from mdn_core.refine import refine
from mdn_core.solutions import Solutions
from mdn_train import robot_eval
from mdn_train.robot_eval import SAME_SOLUTION_RADIANS, one_solution, random_restarts
from mdn_train.urdf import ROBOTS, load_chain, robot_urdf

UR5 = load_chain(robot_urdf("ur5"), *ROBOTS["ur5"][1:])


def _refined(target: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    out, _ = refine(UR5, target, seeds[None], 1e-5, 1e-4, iterations=200)
    first: np.ndarray = out[0]
    return first


def test_points_of_one_near_singular_solution_are_one_solution():
    """q5 near 0 (the wrist singularity): the tolerances admit a long thin set of configurations
    around the solution; two points of it 0.05 rad apart are one solution, though not within
    SAME_SOLUTION_RADIANS of each other."""
    q = np.array([0.3, -1.0, 1.2, -0.5, 2e-4, 0.7])
    target = pose_targets(UR5.forward(q[None]))
    _, jac = UR5.forward_and_jacobian(q[None])
    along = np.linalg.svd(jac[0])[2][-1]  # the direction the arm barely feels
    other = _refined(target, (q + 0.05 * along / np.abs(along).max())[None])[0]
    assert joint_distance(UR5, other, q).max() > 2 * SAME_SOLUTION_RADIANS
    assert one_solution(UR5, target, q[None], other[None]).all()


def test_distinct_solutions_of_a_pose_are_not_one_solution():
    q = np.array([0.3, -1.0, 1.2, -0.5, 1.1, 0.7])
    target = pose_targets(UR5.forward(q[None]))
    found = random_restarts(UR5, target, 100, 0)
    solutions = found.solutions[0, : found.num_solutions[0]].astype(np.float64)
    assert len(solutions) >= 4  # a UR5 pose has up to eight
    a, b = np.repeat(solutions[:1], len(solutions) - 1, axis=0), solutions[1:]
    assert not one_solution(UR5, np.repeat(target, len(b), axis=0), a, b).any()
    assert one_solution(UR5, target, solutions[:1], solutions[:1]).all()


def test_coverage_counts_a_missing_branch_but_not_a_second_point_of_one_solution(monkeypatch):
    well = np.array([0.3, -1.0, 1.2, -0.5, 1.1, 0.7])
    near = np.array([0.3, -1.0, 1.2, -0.5, 2e-4, 0.7])
    targets = pose_targets(UR5.forward(np.stack([well, near])))
    found = random_restarts(UR5, targets, 100, 0)
    _, jac = UR5.forward_and_jacobian(near[None])
    along = np.linalg.svd(jac[0])[2][-1]
    second = _refined(targets[1:], (near + 0.05 * along / np.abs(along).max())[None])[0]
    # The restarts: every solution of the first pose, and two points of one solution of the second.
    restarts = found.solutions.copy()
    restarts[1, :2], restarts[1, 2:] = np.stack([near, second]), np.nan
    counts = np.array([found.num_solutions[0], 2], dtype=np.int32)
    restarted = dataclasses.replace(found, solutions=restarts, num_solutions=counts)
    monkeypatch.setattr(robot_eval, "random_restarts", lambda *_: restarted)

    def served(drop_first_branch: bool) -> Solutions:
        sol = restarts.copy()
        sol[1, 1] = np.nan  # the served answer has one point of the near-singular solution
        n = counts - np.array([int(drop_first_branch), 1])
        if drop_first_branch:
            sol[0, :-1] = sol[0, 1:]
        return dataclasses.replace(found, solutions=sol, num_solutions=n.astype(np.int32))

    whole = robot_eval._coverage(UR5, targets, served(False))
    assert whole == {"finds_every_restart_solution": 1.0, "finds_every_restart_point": 0.5}
    missing = robot_eval._coverage(UR5, targets, served(True))
    assert missing == {"finds_every_restart_solution": 0.5, "finds_every_restart_point": 0.0}


def test_solutions_are_distinct_when_the_path_between_them_jumps_though_every_point_meets_the_target():
    """Two UR5 solutions of one pose (a pair that random restarts and the served request returned):
    every point of the path between them refines onto the target, some to one and some to the other;
    the jump between them is what tells them apart."""
    a = np.array([[0.3192, -0.3174, -2.6023, 2.7937, 0.8471, -2.4171]])
    target = pose_targets(UR5.forward(a))
    b = _refined(target, np.array([[-0.2686, -0.7164, -2.5927, 2.9506, 0.2719, -2.1545]]))
    path = a + np.linspace(0.0, 1.0, 120)[:, None] * (b - a)
    onto = _refined(target, path)
    _, pos, rot = task_errors(UR5, goal_of(UR5, target)[:, None], UR5.forward(onto[None]))
    assert pos.max() <= 1e-5 and rot.max() <= 1e-4
    assert not one_solution(UR5, target, a, b).any()
