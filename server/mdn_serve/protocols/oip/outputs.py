"""The Open Inference Protocol's outputs and request parameters, whichever transport carries them.

`OUTPUTS` is the one table of the outputs the server can produce (datatype, shape, where the
values come from); `plan` turns the outputs a request names and its parameters (as plain values)
into what it asks the pipeline for. The gRPC and HTTP codecs both use them, so both forms of the
protocol offer the same outputs with the same rules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from mdn_core.contract import INPUT_NAME, ModelMetadata
from mdn_core.ik import DEFAULT_REFINE
from numpy.typing import NDArray

from mdn_serve.errors import InvalidInput
from mdn_serve.serving.dataplane import Ask, IkSpec, Outputs, SampleSpec

MODEL_INPUT = INPUT_NAME  # the network's input, `x`
SEED_STATE = "seed_state"  # optional second input: [B, J] or [1, J] joint values, for IK outputs
Param = bool | int | float | str  # a request parameter's value, whichever protocol carried it


@dataclass(frozen=True)
class Output:
    """One output the server can produce: its datatype, shape (-1: variable) and value."""

    datatype: str  # FP32, INT32 or BYTES
    family: str  # what it needs computed: mixture, samples, modes or ik
    shape: Callable[[ModelMetadata], list[int]]
    value: Callable[[Outputs], np.ndarray]


def _solutions(out: Outputs) -> Any:
    assert out.solutions is not None
    return out.solutions


def _modes(out: Outputs) -> Any:
    assert out.modes is not None
    return out.modes


def _samples(out: Outputs) -> np.ndarray:
    assert out.samples is not None
    return out.samples


OUTPUTS: dict[str, Output] = {
    "weights": Output("FP32", "mixture", lambda m: [-1, m.components], lambda o: o.mixture.weights),
    "means": Output("FP32", "mixture", lambda m: [-1, m.components, m.output_dim], lambda o: o.mixture.means),
    "scales": Output("FP32", "mixture", lambda m: [-1, m.components, m.output_dim], lambda o: o.mixture.scales),
    "samples": Output("FP32", "samples", lambda m: [-1, -1, m.output_dim], _samples),
    "modes": Output("FP32", "modes", lambda m: [-1, -1, m.output_dim], lambda o: _modes(o).modes),
    "mode_log_density": Output("FP32", "modes", lambda m: [-1, -1], lambda o: _modes(o).log_density),
    "mode_mass": Output("FP32", "modes", lambda m: [-1, -1], lambda o: _modes(o).mass),
    "num_modes": Output("INT32", "modes", lambda m: [-1], lambda o: _modes(o).num_modes),
    "ik_solutions": Output("FP32", "ik", lambda m: [-1, -1, m.output_dim], lambda o: _solutions(o).solutions),
    "ik_position_error": Output("FP32", "ik", lambda m: [-1, -1], lambda o: _solutions(o).position_error),
    "ik_within_limits": Output("FP32", "ik", lambda m: [-1, -1], lambda o: _solutions(o).within_limits_padded()),
    "ik_score": Output("FP32", "ik", lambda m: [-1, -1], lambda o: _solutions(o).score),
    "ik_orientation_error": Output("FP32", "ik", lambda m: [-1, -1], lambda o: _solutions(o).orientation_error),
    "ik_num_solutions": Output("INT32", "ik", lambda m: [-1], lambda o: _solutions(o).num_solutions),
    "ik_status": Output("BYTES", "ik", lambda m: [-1], lambda o: np.array(_solutions(o).status, dtype=object)),
}
DEFAULT_OUTPUTS = ("weights", "means", "scales")


def outputs_of(meta: ModelMetadata) -> list[str]:
    """The outputs a model offers: IK ones only for arm models."""
    return [name for name, o in OUTPUTS.items() if o.family != "ik" or meta.chain is not None]


def check_input_names(names: list[str]) -> None:
    if INPUT_NAME not in names or len(set(names)) != len(names) or not set(names) <= {INPUT_NAME, SEED_STATE}:
        raise InvalidInput(
            f"send one input tensor named '{INPUT_NAME}' (and optionally '{SEED_STATE}' for IK outputs), got {names}"
        )


def _param(params: Mapping[str, object], name: str, kind: Callable[[str], float | int]) -> float | int | None:
    """A request parameter as a number, whether it came as a number or as text."""
    if name not in params:
        return None
    value = params[name]
    try:
        if isinstance(value, str):
            return kind(value.strip())
        if isinstance(value, int) and not isinstance(value, bool):
            return kind(str(value))
        if isinstance(value, float):
            if kind is int:
                if not value.is_integer():
                    raise ValueError
                return int(value)
            return value
    except ValueError:
        pass
    raise InvalidInput(f"parameter {name!r} must be {'an integer' if kind is int else 'a number'}, got {value!r}")


def _flag(params: Mapping[str, object], name: str, default: bool) -> bool:
    if name not in params:
        return default
    value = params[name]
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    raise InvalidInput(f"parameter {name!r} must be a boolean (true/false or 1/0), got {text!r}")


def plan(
    requested: Sequence[str], params: Mapping[str, object], seed_state: NDArray[np.float32] | None = None
) -> tuple[tuple[str, ...], Ask]:
    """The outputs a request names (in its order; none: the defaults) and what they ask the pipeline for.

    params are the request's parameters as plain values (see grpc_parameters).
    """
    names = tuple(requested) or DEFAULT_OUTPUTS
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        raise InvalidInput(f"unknown output {unknown[0]!r}; outputs are {', '.join(OUTPUTS)}")
    if len(set(names)) != len(names):
        raise InvalidInput(f"an output is requested twice: {list(names)}")
    families = {OUTPUTS[n].family for n in names}
    sampling = None
    if "samples" in families:
        num = _param(params, "num_samples", int)
        seed = _param(params, "seed", int)
        if seed is not None and not 0 <= seed < 2**64:
            raise InvalidInput(f"parameter 'seed' must be in 0..2^64-1, got {seed}")
        temperature = _param(params, "temperature", float)
        scale_temperature = _param(params, "scale_temperature", float)
        sampling = SampleSpec(
            int(num) if num is not None else 1,
            int(seed) if seed is not None else None,
            float(temperature) if temperature is not None else 0.0,
            float(scale_temperature) if scale_temperature is not None else None,
        )
    max_modes = None
    if "modes" in families:
        value = _param(params, "max_modes", int)
        max_modes = int(value) if value is not None else 0
    ik = None
    if seed_state is not None and "ik" not in families:
        raise InvalidInput(f"input '{SEED_STATE}' is for inverse kinematics: ask for ik_* outputs, or drop it")
    if "ik" in families:
        seed = _param(params, "ik_seed", int)
        ik = IkSpec(
            max_solutions=int(_param(params, "max_solutions", int) or 0),
            refine=_flag(params, "refine", default=DEFAULT_REFINE),
            tolerance=float(_param(params, "tolerance", float) or 0.0),
            orientation_tolerance=float(_param(params, "orientation_tolerance", float) or 0.0),
            num_samples=int(_param(params, "ik_num_samples", int) or 0),
            seed=int(seed) if seed is not None else None,
            seed_state=None if seed_state is None else seed_state.astype(np.float64),
        )
    return names, Ask(sampling, max_modes, ik)


def check_control_parameters(names: Sequence[str]) -> None:
    """RepositoryModelLoad/Unload parameters: Triton's `config` and `file:` overrides are refused (models
    load from the repository as they are); `unload_dependents` and anything else are accepted."""
    for name in names:
        if name == "config" or name.startswith("file:"):
            raise InvalidInput(
                f"parameter {name[:64]!r}: mdn-serve loads models from its repository as they are; configuration "
                "and file overrides are not supported (put the file under <repository>/<name>/<version>/)"
            )
