"""The model repository on disk: <root>/<name>/<version>/model.onnx, integer versions."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from mdn_serve.contract import MODEL_FILENAME
from mdn_serve.errors import ModelLoadError, ModelNotFound
from mdn_serve.runtime import ModelRuntime

log = logging.getLogger(__name__)


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


def discover(root: Path) -> dict[str, dict[str, Path]]:
    """Find model files; hidden entries (staging folders of mdn-export) are skipped."""
    if not root.is_dir():
        raise ModelLoadError(
            f"model repository {root} is not a folder; run `make train export` or pass --model-repository"
        )
    found: dict[str, dict[str, Path]] = {}
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions: dict[str, Path] = {}
        for version_dir in sorted(p for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if not version_dir.name.isdigit() or int(version_dir.name) < 1:
                raise ModelLoadError(f"{version_dir}: version folders must be positive integers")
            path = version_dir / MODEL_FILENAME
            if not path.is_file():
                raise ModelLoadError(f"{version_dir}: no {MODEL_FILENAME} in this version folder")
            versions[str(int(version_dir.name))] = path
        if versions:
            found[model_dir.name] = versions
    if not found:
        raise ModelLoadError(
            f"no models under {root} (expected <name>/<version>/{MODEL_FILENAME}); run `make train export`"
        )
    return found


class ModelRepository:
    """Loaded models; lookups by name and optional version."""

    def __init__(self, models: dict[str, ModelEntry]) -> None:
        self.models = models

    @classmethod
    def load(
        cls, root: Path, providers: list[str], intra_op_threads: int = 0, inter_op_threads: int = 0
    ) -> ModelRepository:
        """Load and warm up every version; the first bad file stops start-up with its name."""
        models: dict[str, ModelEntry] = {}
        for name, versions in discover(root).items():
            entry = ModelEntry(name)
            for version, path in versions.items():
                runtime = ModelRuntime(name, version, path, providers, intra_op_threads, inter_op_threads)
                if runtime.metadata.name != name:
                    log.warning("%s: metadata names the model %r; serving it as %r", path, runtime.metadata.name, name)
                runtime.warm_up()
                entry.versions[version] = runtime
            models[name] = entry
        return cls(models)

    def get(self, name: str, version: str = "") -> ModelRuntime:
        if not name:
            raise ModelNotFound(f"no model name given; models: {', '.join(sorted(self.models))}")
        entry = self.models.get(name)
        if entry is None:
            raise ModelNotFound(f"unknown model {name!r}; models: {', '.join(sorted(self.models))}")
        if not version:
            return entry.latest
        key = str(int(version)) if version.isascii() and version.isdigit() else version
        runtime = entry.versions.get(key)
        if runtime is None:
            raise ModelNotFound(f"model {name!r} has no version {version!r}; versions: {', '.join(entry.version_list)}")
        return runtime

    def entry(self, name: str) -> ModelEntry:
        self.get(name)
        return self.models[name]
