"""ONNX Runtime sessions for exported MDNs: provider choice, contract checks, warm-up."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from mdn_serve.contract import (
    INPUT_NAME,
    METADATA_KEY,
    OUTPUT_NAMES,
    ContractError,
    ModelMetadata,
    parse_metadata,
)
from mdn_serve.errors import ModelLoadError

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def choose_providers(device: str) -> list[str]:
    """Execution providers for --device; raises ModelLoadError when CUDA is asked for but missing."""
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    if device == "cuda":
        if CUDA not in available:
            raise ModelLoadError(
                f"--device cuda needs ONNX Runtime's {CUDA}, but this install offers {', '.join(available)}; "
                "install the `cuda` extra (onnxruntime-gpu, see `make install-cuda`) or use --device cpu"
            )
        return [CUDA, CPU]
    if device == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    raise ValueError(f"unknown device {device!r}")


class Mixture(NamedTuple):  # a tuple: built for every request, so it must be cheap
    weights: NDArray[np.float32]  # (B, K)
    means: NDArray[np.float32]  # (B, K, D)
    scales: NDArray[np.float32]  # (B, K, D)


def file_stamp(path: Path) -> tuple[int, int, int]:
    """Identity of a file's content for reloads: (inode, size, mtime in ns)."""
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


class ModelRuntime:
    """One loaded model version: an ONNX Runtime session plus its validated metadata."""

    def __init__(
        self,
        name: str,
        version: str,
        path: Path,
        providers: list[str],
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
    ) -> None:
        self.name, self.version, self.path = name, version, path
        self.file_stamp = file_stamp(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.log_severity_level = 3
        # Idle pool threads spinning for work would take the CPU from the event loop between calls.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for unreadable graphs
            raise ModelLoadError(f"{path}: ONNX Runtime cannot load it: {exc}") from None
        if providers[0] == CUDA and self.session.get_providers()[0] != CUDA:
            raise ModelLoadError(f"{path}: the CUDA provider could not be initialised (is a GPU visible?)")
        self.provider = self.session.get_providers()[0]
        try:
            self.metadata = self._check_contract()
        except ContractError as exc:
            raise ModelLoadError(f"{path}: {exc}") from None

    @property
    def input_dim(self) -> int:
        return self.metadata.input_dim

    @property
    def output_dim(self) -> int:
        return self.metadata.output_dim

    @property
    def components(self) -> int:
        return self.metadata.components

    def _check_contract(self) -> ModelMetadata:
        props = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in props:
            raise ContractError(f"no '{METADATA_KEY}' metadata property; export it with mdn-export")
        meta = parse_metadata(props[METADATA_KEY])
        inputs = self.session.get_inputs()
        if [i.name for i in inputs] != [INPUT_NAME]:
            raise ContractError(f"graph inputs are {[i.name for i in inputs]}, expected ['{INPUT_NAME}']")
        if inputs[0].type != "tensor(float)":
            raise ContractError(f"input '{INPUT_NAME}' is {inputs[0].type}, expected tensor(float)")
        shape = inputs[0].shape
        if len(shape) != 2 or shape[1] != meta.input_dim:
            raise ContractError(f"input '{INPUT_NAME}' has shape {shape}, expected [batch, {meta.input_dim}]")
        outputs = [o.name for o in self.session.get_outputs()]
        if sorted(outputs) != sorted(OUTPUT_NAMES):
            raise ContractError(f"graph outputs are {outputs}, expected {list(OUTPUT_NAMES)}")
        return meta

    def run(self, x: NDArray[np.float32]) -> Mixture:
        """Mixture parameters for x (B, in_dim) float32, C-contiguous."""
        w, m, s = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        return Mixture(w, m, s)

    def warm_up(self) -> None:
        """Run a few batch sizes once, check what comes back, and log the time."""
        start = time.perf_counter()
        for batch in (1, 16, 256):
            out = self.run(np.zeros((batch, self.input_dim), np.float32))
            k, d = self.components, self.output_dim
            if out.weights.shape != (batch, k) or out.means.shape != (batch, k, d) or out.scales.shape != (batch, k, d):
                raise ModelLoadError(
                    f"{self.path}: outputs have shapes {out.weights.shape}, {out.means.shape}, {out.scales.shape}; "
                    f"the metadata says K={k}, D={d}"
                )
        log.info("warmed up %s in %.1f ms on %s", self.path, 1000 * (time.perf_counter() - start), self.provider)
