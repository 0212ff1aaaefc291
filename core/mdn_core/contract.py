"""The one contract between trainer and server: the exported ONNX graph and its metadata.

Graph: input `x` float32 (B, in_dim) with dynamic B; outputs `weights` (B, K) with rows
summing to 1, `means` (B, K, D) and `scales` (B, K, D) > 0, all in raw (unstandardised)
units. The model's metadata property `mdn` holds a JSON object described by `ModelMetadata`;
its optional `kinematics` block is parsed here too, so a malformed one refuses the file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from mdn_core.chain import CHAIN_SCHEMA_VERSION, JOINT_TYPES, TARGET_WIDTH, Joint, SerialChain, planar_chain

INPUT_NAME = "x"
OUTPUT_NAMES = ("weights", "means", "scales")
METADATA_KEY = "mdn"
SCHEMA_VERSION = 1
MODEL_FILENAME = "model.onnx"


class ContractError(ValueError):
    """An ONNX file or its metadata does not follow the mdn-serve contract."""


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    version: str
    task: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    components: int
    raw: dict[str, Any]  # the whole JSON object, including config, metrics and kinematics
    chain: SerialChain | None = None  # the parsed `kinematics` block, for arm models

    @property
    def input_dim(self) -> int:
        return len(self.input_names)

    @property
    def output_dim(self) -> int:
        return len(self.output_names)

    def to_json(self) -> str:
        return json.dumps(self.raw, sort_keys=True, allow_nan=False)


def build_metadata(
    *,
    name: str,
    version: str,
    task: str,
    input_names: list[str],
    output_names: list[str],
    components: int,
    config: dict[str, Any],
    metrics: dict[str, Any],
    kinematics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> ModelMetadata:
    raw: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "version": version,
        "task": task,
        "input": INPUT_NAME,
        "outputs": list(OUTPUT_NAMES),
        "input_names": list(input_names),
        "output_names": list(output_names),
        "input_dim": len(input_names),
        "output_dim": len(output_names),
        "components": components,
        "config": config,
        "metrics": _finite(metrics),
    }
    if kinematics is not None:
        raw["kinematics"] = kinematics
    raw.update(extra or {})
    return parse_metadata(json.dumps(raw, allow_nan=False))


def _finite(value: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def parse_metadata(text: str) -> ModelMetadata:
    """Parse and check the `mdn` metadata JSON; ContractError says what is wrong."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ContractError(f"metadata '{METADATA_KEY}' is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ContractError(f"metadata '{METADATA_KEY}' must be a JSON object")
    if raw.get("schema_version") != SCHEMA_VERSION:
        raise ContractError(
            f"metadata schema_version is {raw.get('schema_version')!r}, this server reads {SCHEMA_VERSION}"
        )
    for key, kind in (("name", str), ("version", str), ("task", str), ("components", int)):
        if not isinstance(raw.get(key), kind):
            raise ContractError(f"metadata field {key!r} must be a {kind.__name__}")
    names = {}
    for key in ("input_names", "output_names"):
        value = raw.get(key)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise ContractError(f"metadata field {key!r} must be a non-empty list of strings")
        names[key] = tuple(value)
    if raw["components"] < 1:
        raise ContractError("metadata field 'components' must be >= 1")
    chain = parse_kinematics(raw.get("kinematics"), len(names["output_names"]))
    return ModelMetadata(
        name=raw["name"],
        version=raw["version"],
        task=raw["task"],
        input_names=names["input_names"],
        output_names=names["output_names"],
        components=raw["components"],
        raw=raw,
        chain=chain,
    )


def parse_kinematics(block: Any, output_dim: int | None = None) -> SerialChain | None:
    """The metadata's `kinematics` block as a chain (None when absent); ContractError names the bad field.

    Two forms: `serial_chain` (any chain, written by mdn-export since URDF support) and
    `planar_serial` (link lengths and joint limits of a planar arm, as older exports wrote it).
    """
    if block is None:
        return None
    if not isinstance(block, dict):
        raise ContractError("metadata field 'kinematics' must be a JSON object")
    kind = block.get("type")
    if kind == "planar_serial":
        chain = _planar(block)
    elif kind == "serial_chain":
        chain = _serial(block)
    else:
        raise ContractError(
            f"metadata field 'kinematics.type' is {kind!r}; this reader knows 'serial_chain' and 'planar_serial'"
        )
    if output_dim is not None and chain.num_joints != output_dim:
        raise ContractError(
            f"metadata field 'kinematics' describes {chain.num_joints} joint(s), but the model outputs "
            f"{output_dim} joint value(s)"
        )
    return chain


def _planar(block: dict[str, Any]) -> SerialChain:
    lengths, limits = block.get("link_lengths"), block.get("joint_limits")
    if not isinstance(lengths, list) or not lengths or not all(_is_number(v) for v in lengths):
        raise ContractError("metadata field 'kinematics.link_lengths' must be a list of numbers")
    if not isinstance(limits, list) or not all(
        isinstance(pair, list) and len(pair) == 2 and all(_is_number(v) for v in pair) for pair in limits
    ):
        raise ContractError("metadata field 'kinematics.joint_limits' must be a list of [low, high] number pairs")
    if len(limits) != len(lengths):
        raise ContractError(
            f"metadata field 'kinematics.joint_limits' has {len(limits)} pairs for {len(lengths)} links"
        )
    if any(not v > 0 for v in lengths):
        raise ContractError("metadata field 'kinematics.link_lengths' must be > 0")
    try:
        return planar_chain(tuple(float(v) for v in lengths), tuple((float(a), float(b)) for a, b in limits))
    except ValueError as exc:
        raise ContractError(f"metadata field 'kinematics.joint_limits': {exc}") from None


def _numbers(value: Any, count: int, field: str) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) != count or not all(_is_number(v) for v in value):
        raise ContractError(f"metadata field 'kinematics.{field}' must be a list of {count} numbers")
    return tuple(float(v) for v in value)


def _serial(block: dict[str, Any]) -> SerialChain:
    if block.get("version") != CHAIN_SCHEMA_VERSION:
        raise ContractError(
            f"metadata field 'kinematics.version' is {block.get('version')!r}; this reader knows {CHAIN_SCHEMA_VERSION}"
        )
    target = block.get("target")
    if target not in TARGET_WIDTH:
        raise ContractError(f"metadata field 'kinematics.target' must be one of {', '.join(TARGET_WIDTH)}")
    for key in ("base_link", "tip_link", "source"):
        if not isinstance(block.get(key), str):
            raise ContractError(f"metadata field 'kinematics.{key}' must be a string")
    joints_raw = block.get("joints")
    if not isinstance(joints_raw, list) or not joints_raw:
        raise ContractError("metadata field 'kinematics.joints' must be a non-empty list")
    joints = []
    for i, j in enumerate(joints_raw):
        where = f"joints[{i}]"
        if not isinstance(j, dict) or not isinstance(j.get("name"), str):
            raise ContractError(f"metadata field 'kinematics.{where}' must be an object with a string 'name'")
        if j.get("type") not in JOINT_TYPES:
            raise ContractError(f"metadata field 'kinematics.{where}.type' must be one of {', '.join(JOINT_TYPES)}")
        origin = _numbers(j.get("origin"), 12, f"{where}.origin")
        ax, ay, az = _numbers(j.get("axis"), 3, f"{where}.axis")
        lower, upper = j.get("lower"), j.get("upper")
        if not (_is_number(lower) and _is_number(upper)):
            raise ContractError(f"metadata field 'kinematics.{where}.lower/upper' must be numbers")
        try:
            joints.append(Joint(j["name"], j["type"], origin, (ax, ay, az), float(lower), float(upper)))  # type: ignore[arg-type]
        except ValueError as exc:
            raise ContractError(f"metadata field 'kinematics.{where}': {exc}") from None
    tip = _numbers(block.get("tip"), 12, "tip")
    return SerialChain(tuple(joints), tip, target, block["base_link"], block["tip_link"], block["source"])


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
