"""Open an exported MDN: one ONNX Runtime session, its contract checked, its metadata validated.

Everything that runs an exported file opens it here: the server's repository, mdn-export (on
the file it has just written, before it is moved into place), evaluation, the benchmark and the
tests. A file that breaks the contract never gets a session anyone can call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from mdn_core.contract import INPUT_NAME, METADATA_KEY, OUTPUT_NAMES, ContractError, ModelMetadata, parse_metadata

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
_OUTPUTS = list(OUTPUT_NAMES)
WARM_UP_BATCHES = (1, 16, 256)


class Mixture(NamedTuple):  # a tuple: built for every request, so it must be cheap
    weights: NDArray[np.float32]  # (B, K)
    means: NDArray[np.float32]  # (B, K, D)
    scales: NDArray[np.float32]  # (B, K, D)

    def rows(self, start: int, stop: int) -> Mixture:
        return Mixture(self.weights[start:stop], self.means[start:stop], self.scales[start:stop])


class MixtureGraph:
    """An ONNX Runtime session of a graph with the contract's input and outputs (metadata aside)."""

    def __init__(self, session: ort.InferenceSession, source: str) -> None:
        self.session = session
        self.source = source  # the file's path, or "<bytes>"
        self.provider: str = session.get_providers()[0]

    def run(self, x: NDArray[np.float32]) -> Mixture:
        """Mixture parameters for x (B, in_dim) float32, C-contiguous."""
        w, m, s = self.session.run(_OUTPUTS, {INPUT_NAME: x})
        return Mixture(w, m, s)

    def run_chunked(self, x: NDArray[np.float32], chunk: int = 8192) -> Mixture:
        """run() over any number of rows, chunk rows per ONNX Runtime call."""
        parts = [self.run(np.ascontiguousarray(x[i : i + chunk], dtype=np.float32)) for i in range(0, len(x), chunk)]
        return Mixture(*(np.concatenate([p[j] for p in parts]) for j in range(3)))


class LoadedModel(MixtureGraph):
    """An exported MDN: the graph plus its validated metadata."""

    def __init__(self, session: ort.InferenceSession, source: str, metadata: ModelMetadata) -> None:
        super().__init__(session, source)
        self.metadata = metadata

    def warm_up(self) -> None:
        """Run a few batch sizes once and check the shapes against the metadata; ContractError if they differ."""
        start = time.perf_counter()
        meta = self.metadata
        k, d = meta.components, meta.output_dim
        for batch in WARM_UP_BATCHES:
            try:
                out = self.run(np.zeros((batch, meta.input_dim), np.float32))
            except Exception as exc:  # a graph that loads but cannot run (ORT's own exception types)
                raise ContractError(f"ONNX Runtime cannot run it (batch of {batch}): {exc}") from None
            if out.weights.shape != (batch, k) or out.means.shape != (batch, k, d) or out.scales.shape != (batch, k, d):
                raise ContractError(
                    f"outputs have shapes {out.weights.shape}, {out.means.shape}, {out.scales.shape}; "
                    f"the metadata says K={k}, D={d}"
                )
        log.info("warmed up %s in %.1f ms on %s", self.source, 1000 * (time.perf_counter() - start), self.provider)


def load_model(
    source: Path | bytes,
    providers: Sequence[str] = (CPU,),
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    warm_up: bool = True,
) -> LoadedModel:
    """Open an exported MDN, check the graph against the contract and parse its metadata.

    Raises ContractError (a ValueError) saying what is wrong; the caller adds the file's name.
    """
    graph = load_graph(source, providers, intra_op_threads, inter_op_threads)
    model = LoadedModel(graph.session, graph.source, check_metadata(graph.session))
    if warm_up:
        model.warm_up()
    return model


def load_graph(
    source: Path | bytes,
    providers: Sequence[str] = (CPU,),
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
) -> MixtureGraph:
    """Open a graph whose metadata is not written yet (mdn-export's parity check and evaluation)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.log_severity_level = 3
    # Idle pool threads spinning for work would take the CPU from the event loop between calls.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    where = str(source) if isinstance(source, Path) else "<bytes>"
    try:
        session = ort.InferenceSession(
            str(source) if isinstance(source, Path) else source, options, providers=list(providers)
        )
    except Exception as exc:  # ORT raises its own exception types for unreadable graphs
        raise ContractError(f"ONNX Runtime cannot load it: {exc}") from None
    if providers and providers[0] == CUDA and session.get_providers()[0] != CUDA:
        raise ContractError("the CUDA provider could not be initialised (is a GPU visible?)")
    check_graph(session)
    return MixtureGraph(session, where)


def check_metadata(session: ort.InferenceSession) -> ModelMetadata:
    """The session's parsed `mdn` metadata, checked against the graph's input width."""
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise ContractError(f"no '{METADATA_KEY}' metadata property; export it with mdn-export")
    meta = parse_metadata(props[METADATA_KEY])
    width = session.get_inputs()[0].shape[1]
    if width != meta.input_dim:
        raise ContractError(f"input '{INPUT_NAME}' has shape [batch, {width}], expected [batch, {meta.input_dim}]")
    return meta


def check_graph(session: ort.InferenceSession) -> None:
    """Raise ContractError unless the graph has the contract's one input and three outputs."""
    inputs = session.get_inputs()
    if [i.name for i in inputs] != [INPUT_NAME]:
        raise ContractError(f"graph inputs are {[i.name for i in inputs]}, expected ['{INPUT_NAME}']")
    if inputs[0].type != "tensor(float)":
        raise ContractError(f"input '{INPUT_NAME}' is {inputs[0].type}, expected tensor(float)")
    shape = inputs[0].shape
    if len(shape) != 2 or not isinstance(shape[1], int):
        raise ContractError(f"input '{INPUT_NAME}' has shape {shape}, expected [batch, input_dim]")
    outputs = [o.name for o in session.get_outputs()]
    if sorted(outputs) != sorted(OUTPUT_NAMES):
        raise ContractError(f"graph outputs are {outputs}, expected {list(OUTPUT_NAMES)}")
