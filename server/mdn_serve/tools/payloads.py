"""What the load generator sends: inputs in each model's domain, encoded as one protocol's request."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from mdn_core.chain import pose_targets, target_features, task_of
from mdn_core.contract import parse_kinematics
from numpy.typing import NDArray

from mdn_serve._proto.inference import grpc_service_pb2 as oip
from mdn_serve._proto.mdn.v1 import mdn_pb2 as pb

if TYPE_CHECKING:
    from mdn_serve.tools.loadtest import LoadConfig


class MetadataMissing(Exception):
    """The server's metadata does not say what the model takes."""


def model_inputs(metadata: dict[str, Any], input_dim: int, batch: int, rng: np.random.Generator) -> NDArray[np.float32]:
    """Inputs in the model's domain: reachable targets for arms, the training range otherwise."""
    chain = parse_kinematics(metadata.get("kinematics"))
    if chain is not None:
        limits = chain.limits
        reached = chain.forward(rng.uniform(limits[:, 0], limits[:, 1], (batch, chain.num_joints)))
        if chain.target == "pose":  # the network takes a pose as features
            return target_features("pose", pose_targets(reached))
        return task_of(chain.target, reached).astype(np.float32)
    low, high = metadata.get("input_min"), metadata.get("input_max")
    if isinstance(low, list) and isinstance(high, list) and len(low) == len(high) == input_dim:
        return rng.uniform(low, high, (batch, input_dim)).astype(np.float32)
    return rng.standard_normal((batch, input_dim)).astype(np.float32)


def ik_targets(metadata: dict[str, Any], batch: int, rng: np.random.Generator) -> NDArray[np.float32]:
    """Reachable targets in an arm model's layout (what Solve takes); ValueError for a model without kinematics."""
    chain = parse_kinematics(metadata.get("kinematics"))
    if chain is None:
        raise ValueError("--rpc solve needs an arm model (its metadata has no kinematics)")
    lim = chain.limits
    reached = chain.forward(rng.uniform(lim[:, 0], lim[:, 1], (batch, chain.num_joints)))
    if chain.target == "pose":
        return pose_targets(reached).astype(np.float32)
    return task_of(chain.target, reached).astype(np.float32)


def request_inputs(
    config: LoadConfig, metadata: dict[str, Any], input_dim: int, rng: np.random.Generator
) -> NDArray[np.float32]:
    """One request's tensor: targets for Solve, the model's inputs otherwise."""
    if config.rpc == "solve":
        return ik_targets(metadata, config.batch, rng)
    return model_inputs(metadata, input_dim, config.batch, rng)


def encode_request(config: LoadConfig, x: NDArray[np.float32]) -> tuple[str, bytes]:
    """(method path, serialized request) for one batch; raw little-endian tensors."""
    raw = np.ascontiguousarray(x, "<f4").tobytes()
    if config.protocol == "mdn":
        ref = pb.ModelRef(name=config.model)
        tensor = pb.Tensor(shape=x.shape, raw=raw)
        message: Any
        if config.rpc == "solve":
            solve = pb.SolveRequest(model=ref, targets=tensor, seed=config.seed)
            return "/mdn.v1.InverseKinematicsService/Solve", solve.SerializeToString()
        if config.rpc == "predict":
            message = pb.PredictRequest(model=ref, inputs=tensor)
        elif config.rpc == "sample":
            message = pb.SampleRequest(model=ref, inputs=tensor, num_samples=config.num_samples)
        else:
            message = pb.ModesRequest(model=ref, inputs=tensor)
        return f"/mdn.v1.MixtureDensityService/{config.rpc.capitalize()}", message.SerializeToString()
    request = oip.ModelInferRequest(model_name=config.model)
    request.inputs.add(name=config.input_name, datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(raw)
    if config.rpc == "sample":
        request.outputs.add(name="samples")
        request.parameters["num_samples"].int64_param = config.num_samples
    elif config.rpc == "modes":
        for name in ("modes", "mode_mass", "num_modes"):
            request.outputs.add(name=name)
    elif config.rpc == "solve":
        for name in ("ik_solutions", "ik_num_solutions"):
            request.outputs.add(name=name)
    return "/inference.GRPCInferenceService/ModelInfer", request.SerializeToString()
