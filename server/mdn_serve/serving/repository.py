"""The model repository on disk: <root>/<name>/<version>/model.onnx, integer versions.

Files are opened with mdn_core.model.load_model, which checks the contract and the metadata
(kinematics included); a file it refuses is never served.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from mdn_core.contract import MODEL_FILENAME, ContractError, ModelMetadata
from mdn_core.model import CPU, CUDA, LoadedModel, Mixture, load_model
from numpy.typing import NDArray

from mdn_serve.errors import InvalidInput, ModelLoadError, ModelNotFound

log = logging.getLogger(__name__)


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


SHOWN_CHARACTERS = 64
MAX_NAME_CHARACTERS = 256  # longer model names are refused (INVALID_ARGUMENT), not looked up
MAX_VERSION_DIGITS = 18  # versions are whole numbers of at most this many digits


def _shown(text: str) -> str:
    """A client-supplied name as an error message quotes it: at most SHOWN_CHARACTERS of it."""
    if len(text) <= SHOWN_CHARACTERS:
        return repr(text)
    return f"{text[:SHOWN_CHARACTERS]!r}... ({len(text)} characters)"


def file_stamp(path: Path) -> tuple[int, int, int]:
    """Identity of a file's content for reloads: (inode, size, mtime in ns)."""
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


class ModelRuntime:
    """One served model version: its name, version and file, and the model loaded from it."""

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
        try:
            self.model: LoadedModel = load_model(path, providers, intra_op_threads, inter_op_threads, warm_up=False)
        except ContractError as exc:
            raise ModelLoadError(f"{path}: {exc}") from None
        self.metadata: ModelMetadata = self.model.metadata
        self.provider = self.model.provider

    @property
    def input_dim(self) -> int:
        return self.metadata.input_dim

    @property
    def output_dim(self) -> int:
        return self.metadata.output_dim

    @property
    def components(self) -> int:
        return self.metadata.components

    def run(self, x: NDArray[np.float32]) -> Mixture:
        """Mixture parameters for x (B, in_dim) float32, C-contiguous (the batcher calls model.run itself)."""
        return self.model.run(x)

    def warm_up(self) -> None:
        """Run the model once at a few batch sizes; ModelLoadError if it fails or its shapes are off."""
        try:
            self.model.warm_up()
        except ContractError as exc:
            raise ModelLoadError(f"{self.path}: {exc}") from None
        except Exception as exc:  # ONNX Runtime's own errors: the file loads but cannot run
            raise ModelLoadError(f"{self.path}: running it failed: {type(exc).__name__}: {exc}") from None


@dataclass
class ModelEntry:
    """Every loaded version of one model, keyed by version string."""

    name: str
    versions: dict[str, ModelRuntime] = field(default_factory=dict)

    @property
    def version_list(self) -> list[str]:
        """Versions in ascending numeric order."""
        return sorted(self.versions, key=int)

    @property
    def latest(self) -> ModelRuntime:
        return self.versions[self.version_list[-1]]


def model_versions(model_dir: Path) -> dict[str, Path]:
    """A model folder's versions ({"1": path, ...}); ModelLoadError for a malformed version folder."""
    versions: dict[str, Path] = {}
    for version_dir in sorted(p for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not version_dir.name.isdigit() or int(version_dir.name) < 1:
            raise ModelLoadError(f"{version_dir}: version folders must be positive integers")
        path = version_dir / MODEL_FILENAME
        if not path.is_file():
            raise ModelLoadError(f"{version_dir}: no {MODEL_FILENAME} in this version folder")
        versions[str(int(version_dir.name))] = path
    return versions


def model_folders(root: Path) -> dict[str, Path]:
    """The repository's model folders by name (hidden ones, mdn-export's staging folders, skipped)."""
    if not root.is_dir():
        raise ModelLoadError(
            f"model repository {root} is not a folder; run `make train export` or pass --model-repository"
        )
    return {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def discover(root: Path, names: Collection[str] | None = None) -> dict[str, dict[str, Path]]:
    """Find model files (of the named models only, when names is given; each must exist)."""
    folders = model_folders(root)
    if names is not None:
        missing = sorted(set(names) - set(folders))
        if missing:
            raise ModelNotFound(
                f"no model {_shown(missing[0])} under {root}; models there: {', '.join(folders) or 'none'}"
            )
        folders = {n: folders[n] for n in names}
    found = {name: versions for name, path in folders.items() if (versions := model_versions(path))}
    if not found and names is None:
        raise ModelLoadError(
            f"no models under {root} (expected <name>/<version>/{MODEL_FILENAME}); run `make train export`"
        )
    return found


def _load_entry(
    name: str, versions: dict[str, Path], providers: list[str], intra_op_threads: int, inter_op_threads: int
) -> ModelEntry:
    """Load and warm up versions of one model; ModelLoadError (naming the file) at the first that fails."""
    entry = ModelEntry(name)
    for version, path in versions.items():
        runtime = ModelRuntime(name, version, path, providers, intra_op_threads, inter_op_threads)
        if runtime.metadata.name != name:
            log.warning("%s: metadata names the model %r; serving it as %r", path, runtime.metadata.name, name)
        runtime.warm_up()
        entry.versions[version] = runtime
    return entry


class ModelRepository:
    """Loaded models; lookups by name and optional version."""

    def __init__(self, models: dict[str, ModelEntry]) -> None:
        self.models = models
        # Asked for on every request that names no version: looked up once, not sorted each time.
        self._latest = {name: entry.latest for name, entry in models.items()}

    @classmethod
    def load(
        cls,
        root: Path,
        providers: list[str],
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        names: Collection[str] | None = None,
    ) -> ModelRepository:
        """Load and warm up every version (of the named models only, when names is given); the first
        bad file stops start-up with its name."""
        models: dict[str, ModelEntry] = {}
        for name, versions in discover(root, names).items():
            models[name] = _load_entry(name, versions, providers, intra_op_threads, inter_op_threads)
        return cls(models)

    def with_model(
        self, root: Path, name: str, providers: list[str], intra_op_threads: int = 0, inter_op_threads: int = 0
    ) -> ModelRepository:
        """A new repository serving every version of `name` now on disk (loaded, or reloaded where the
        file changed; unchanged files are reused). ModelNotFound when there is no such folder, and
        ModelLoadError when any version fails: then nothing changes."""
        versions = discover(root, [name])[name] if name in model_folders(root) else None
        if versions is None:
            raise ModelNotFound(
                f"no model {_shown(name)} under {root}; models there: {', '.join(model_folders(root)) or 'none'}"
            )
        if not versions:
            raise ModelLoadError(f"{root / name}: no version folders (expected <version>/{MODEL_FILENAME})")
        old = self.models.get(name)
        reuse = {v: r for v, r in (old.versions.items() if old else ()) if v in versions
                 and r.file_stamp == file_stamp(versions[v])}  # fmt: skip
        fresh = {v: p for v, p in versions.items() if v not in reuse}
        entry = _load_entry(name, fresh, providers, intra_op_threads, inter_op_threads)
        entry.versions.update(reuse)
        return ModelRepository({**self.models, name: entry})

    def without_model(self, name: str) -> ModelRepository:
        """A new repository without `name` (ModelNotFound when it is not loaded)."""
        self.entry(name)
        return ModelRepository({n: e for n, e in self.models.items() if n != name})

    def reloaded(
        self,
        root: Path,
        providers: list[str],
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        on_failure: Callable[[str, str, str], None] | None = None,
        names: Collection[str] | None = None,
    ) -> ModelRepository:
        """A new repository for what is on disk now (of the named models only, when names is given),
        reusing every version whose file is unchanged (this one itself when nothing changed).

        A new or changed file is loaded and warmed up before it can serve; one that fails
        (corrupt, half-written, breaking the contract) is reported through on_failure(name,
        version, reason) and the version it would replace, if any, keeps serving.
        """
        try:
            found = discover(root, None if names is None else [n for n in names if n in model_folders(root)])
        except (ModelLoadError, ModelNotFound) as exc:
            if on_failure is not None:
                on_failure("-", "-", str(exc))
            return self  # an empty or broken repository does not take the served models down
        models: dict[str, ModelEntry] = {}
        for name, versions in found.items():
            entry = ModelEntry(name)
            for version, path in versions.items():
                old = self.models[name].versions.get(version) if name in self.models else None
                if old is not None and old.file_stamp == file_stamp(path):
                    entry.versions[version] = old
                    continue
                try:
                    runtime = ModelRuntime(name, version, path, providers, intra_op_threads, inter_op_threads)
                    runtime.warm_up()
                except (ModelLoadError, OSError) as exc:
                    log.error("not serving %s version %s: %s", name, version, exc)
                    if on_failure is not None:
                        on_failure(name, version, str(exc))
                    if old is not None:
                        entry.versions[version] = old
                    continue
                log.info("loaded %s version %s from %s", name, version, path)
                entry.versions[version] = runtime
            if entry.versions:
                models[name] = entry
        changed = False
        for name, entry in self.models.items():
            for version in entry.versions:
                if name not in models or version not in models[name].versions:
                    log.info("unloaded %s version %s (gone from %s)", name, version, root)
                    changed = True
        for name, entry in models.items():
            old_entry = self.models.get(name)
            for version, runtime in entry.versions.items():
                changed |= old_entry is None or old_entry.versions.get(version) is not runtime
        return ModelRepository(models) if changed else self  # the same object: nothing to swap

    def get(self, name: str, version: str = "") -> ModelRuntime:
        if not name:
            raise ModelNotFound(f"no model name given; models: {', '.join(sorted(self.models))}")
        if not version and (latest := self._latest.get(name)) is not None:
            return latest
        if len(name) > MAX_NAME_CHARACTERS:
            raise InvalidInput(
                f"model name {_shown(name)} is over {MAX_NAME_CHARACTERS} characters; models: "
                f"{', '.join(sorted(self.models))}"
            )
        key = version.lstrip("0") or "0" if version.isascii() and version.isdigit() else ""  # "007" is 7
        if version and not (key and len(key) <= MAX_VERSION_DIGITS):
            raise InvalidInput(
                f"version {_shown(version)} is not a version number (a whole number, or empty for the latest)"
            )
        entry = self.models.get(name)
        if entry is None:
            raise ModelNotFound(f"unknown model {_shown(name)}; models: {', '.join(sorted(self.models))}")
        if not version:
            return entry.latest
        runtime = entry.versions.get(key)
        if runtime is None:
            raise ModelNotFound(
                f"model {name!r} has no version {_shown(version)}; versions: {', '.join(entry.version_list)}"
            )
        return runtime

    def entry(self, name: str) -> ModelEntry:
        self.get(name)
        return self.models[name]
