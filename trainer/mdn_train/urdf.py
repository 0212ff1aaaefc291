"""A serial chain from a URDF file, read with yourdfpy, and the robots shipped by example-robot-data.

The server never reads URDF: the chain goes into the exported file's metadata
(`SerialChain.to_metadata`), and the server checks that block at load.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import yourdfpy
from mdn_core.chain import Joint, SerialChain

from mdn_train.errors import TrainerError

# Built-in robots: (file inside example-robot-data's robots folder, base link, tip link).
ROBOTS = {
    "panda": ("panda_description/urdf/panda.urdf", "panda_link0", "panda_link8"),
    "ur5": ("ur_description/urdf/ur5_robot.urdf", "base_link", "ee_link"),
}
_ROBOTS_DIR = "cmeel.prefix/share/example-robot-data/robots"


def robot_urdf(robot: str) -> Path:
    """The path of a built-in robot's URDF inside the installed example-robot-data wheel."""
    relative, _, _ = ROBOTS[robot]
    try:
        dist = importlib.metadata.distribution("example-robot-data")
    except importlib.metadata.PackageNotFoundError:
        raise TrainerError(
            "the built-in robots need the example-robot-data package (the `train` extra; `make install`)"
        ) from None
    path = Path(str(dist.locate_file(f"{_ROBOTS_DIR}/{relative}")))
    if not path.is_file():
        raise TrainerError(f"example-robot-data has no {relative} (looked at {path})")
    return path


def load_chain(path: Path, base_link: str, tip_link: str, target: str = "pose") -> SerialChain:
    """The movable joints from base_link to tip_link as a SerialChain; TrainerError says what is wrong."""
    if not path.is_file():
        raise TrainerError(f"URDF file {path} does not exist")
    try:
        robot = yourdfpy.URDF.load(
            str(path), build_scene_graph=False, load_meshes=False, build_collision_scene_graph=False,
            load_collision_meshes=False,
        ).robot  # fmt: skip
    except Exception as exc:  # yourdfpy raises lxml's and its own errors for unreadable files
        raise TrainerError(f"{path}: not a readable URDF: {exc}") from None
    links = [link.name for link in robot.links]
    for which, name in (("base", base_link), ("tip", tip_link)):
        if name not in links:
            raise TrainerError(f"{path.name} has no {which} link {name!r}; its links are {', '.join(links)}")
    parent_joint = {joint.child: joint for joint in robot.joints}
    path_joints = []
    link = tip_link
    while link != base_link:
        joint = parent_joint.get(link)
        if joint is None:
            raise TrainerError(f"{tip_link!r} is not below {base_link!r} in {path.name}: pick a tip inside its subtree")
        path_joints.append(joint)
        link = joint.parent
    path_joints.reverse()

    joints: list[Joint] = []
    pending = np.eye(4)  # fixed transforms since the last movable joint
    for joint in path_joints:
        origin = np.eye(4) if joint.origin is None else np.asarray(joint.origin, dtype=np.float64)
        if joint.type == "fixed":
            pending = pending @ origin
            continue
        if joint.type in ("floating", "planar"):
            raise TrainerError(f"joint {joint.name!r} is {joint.type}: a serial arm's chain cannot contain one")
        if joint.type not in ("revolute", "continuous", "prismatic"):
            raise TrainerError(f"joint {joint.name!r} has an unknown type {joint.type!r}")
        axis = np.array([1.0, 0.0, 0.0]) if joint.axis is None else np.asarray(joint.axis, dtype=np.float64)
        axis = axis / np.linalg.norm(axis)
        if joint.type == "continuous":
            lower, upper = -np.pi, np.pi
        else:
            limit = joint.limit
            if limit is None or limit.lower is None or limit.upper is None:
                raise TrainerError(f"joint {joint.name!r} ({joint.type}) has no <limit lower upper>")
            lower, upper = float(limit.lower), float(limit.upper)
        frame = pending @ origin
        joints.append(
            Joint(
                joint.name,
                joint.type,
                tuple(float(v) for v in frame[:3, :].ravel()),
                (float(axis[0]), float(axis[1]), float(axis[2])),
                lower,
                upper,
            )
        )
        pending = np.eye(4)
    if not joints:
        raise TrainerError(f"no movable joint between {base_link!r} and {tip_link!r} in {path.name}")
    return SerialChain(
        tuple(joints), tuple(float(v) for v in pending[:3, :].ravel()), target, base_link, tip_link, path.name
    )
