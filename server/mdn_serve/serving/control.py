"""Which models serve, over time: the first load, reloads, and Triton's explicit model control.

Two modes (--model-control-mode):
- `none` (the default): every model in the repository loads at start; SIGHUP and --poll-seconds
  reload the repository (new, changed and removed versions).
- `explicit`: only the models named by --load-model load at start; `load_model` and
  `unload_model` (RepositoryModelLoad / RepositoryModelUnload over gRPC and HTTP) add, refresh and
  remove models one at a time, and SIGHUP refreshes the loaded ones.

Each new or changed file is loaded and warmed up before it serves; a file that fails is refused,
counted (mdn_model_load_failures_total) and reported by the repository index, and what served
before keeps serving. An unloaded model's queued and running requests finish before unload_model
returns. Loads, unloads and reloads never overlap.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from mdn_serve.config import Settings
from mdn_serve.errors import LoadFailed, ModelLoadError, ModelNotFound
from mdn_serve.metrics import Metrics
from mdn_serve.scheduling import with_compute_policy
from mdn_serve.serving.dataplane import Dataplane
from mdn_serve.serving.repository import MAX_NAME_CHARACTERS, ModelRepository, choose_providers, model_folders

log = logging.getLogger("mdn_serve")

EXPLICIT = "explicit"

T = TypeVar("T")


async def _loading(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) on a worker thread under the normal scheduling policy (mdn_serve.scheduling): it
    creates ONNX Runtime sessions, whose intra-op threads take their policy from it."""
    return await asyncio.to_thread(with_compute_policy(fn), *args)


class ModelControl:
    def __init__(self, settings: Settings, dataplane: Dataplane, metrics: Metrics) -> None:
        self.settings = settings
        self.dataplane = dataplane
        self.metrics = metrics
        self.explicit = settings.model_control_mode == EXPLICIT
        self._providers: list[str] = []
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        self._unloaded: set[str] = set()  # unloaded on request (explicit mode), for the index

    def _load_args(self) -> tuple[list[str], int, int]:
        s = self.settings
        return self._providers, s.intra_op_threads, s.inter_op_threads

    async def start(self) -> ModelRepository:
        """Load and warm up the models to serve at start, and serve them; --poll-seconds then polls."""
        s = self.settings
        providers = self._providers = choose_providers(s.device)
        log.info("device %s: execution providers %s", s.device, providers)
        names = list(s.load_model) if self.explicit else None
        try:
            repository = await _loading(ModelRepository.load, s.model_repository, *self._load_args(), names)
        except ModelNotFound as exc:  # --load-model names a model that is not there
            raise ModelLoadError(f"--load-model: {exc}") from None
        self.dataplane.set_repository(repository)
        for name, entry in sorted(repository.models.items()):
            latest = entry.latest
            log.info("model %s: versions %s, provider %s", name, ",".join(entry.version_list), latest.provider)
        if self.explicit:
            log.info("explicit model control: %d model(s) loaded; load others with RepositoryModelLoad",
                     len(repository.models))  # fmt: skip
        if s.poll_seconds > 0:
            self._poller = asyncio.get_running_loop().create_task(self._poll(s.poll_seconds))
        return repository

    def stop_polling(self) -> None:
        if self._poller is not None:
            self._poller.cancel()

    async def _poll(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await self.reload()
            except Exception:
                log.exception("reload failed")

    async def reload(self) -> None:
        """Pick up new, changed and removed versions (of the loaded models only, in explicit mode)."""
        async with self._lock:
            current = self.dataplane.repository
            if current is None:
                return
            s = self.settings
            failures: dict[tuple[str, str], str] = {}

            def failed(name: str, version: str, reason: str) -> None:
                self.metrics.load_failures.labels(name, version).inc()
                failures[(name, version)] = reason

            names = sorted(current.models) if self.explicit else None
            fresh = await _loading(current.reloaded, s.model_repository, *self._load_args(), failed, names)
            self.metrics.reloads.inc()
            self.dataplane.load_failures = failures  # what this reload refused (the repository index)
            if fresh is current:  # nothing changed: not worth a line at INFO every --poll-seconds
                log.debug("repository unchanged")
                return
            self.dataplane.set_repository(fresh)
            log.info(
                "repository reloaded: %s",
                ", ".join(f"{n} {','.join(e.version_list)}" for n, e in sorted(fresh.models.items())),
            )

    def _check(self, name: str) -> None:
        if not self.explicit:
            raise LoadFailed(
                "models are loaded from the repository at start and on reloads (SIGHUP, --poll-seconds); start "
                "the server with --model-control-mode explicit to load and unload them on request"
            )
        if not name:
            raise ModelNotFound("no model name given")
        if len(name) > MAX_NAME_CHARACTERS:
            raise ModelNotFound(f"model names are at most {MAX_NAME_CHARACTERS} characters")

    async def load_model(self, name: str) -> None:
        """Load every version of `name` now on disk (or refresh a loaded model: changed files are
        reloaded, unchanged ones kept), warmed up before they serve; LoadFailed if any version fails,
        and then nothing changes."""
        self._check(name)
        async with self._lock:
            current = self.dataplane.models()
            root = self.settings.model_repository
            if name not in model_folders(root):  # names are looked up, never joined to a path
                raise ModelNotFound(
                    f"no model {name[:64]!r} under {root}; models there: {', '.join(model_folders(root)) or 'none'}"
                )
            failures = {k: v for k, v in self.dataplane.load_failures.items() if k[0] != name}
            try:
                fresh = await _loading(current.with_model, root, name, *self._load_args())
            except ModelLoadError as exc:
                self.metrics.load_failures.labels(name, "-").inc()
                self.dataplane.load_failures = {**failures, (name, ""): str(exc)}
                log.error("load of %s refused: %s", name, exc)
                served = "its versions served before still serve" if name in current.models else "it is not served"
                raise LoadFailed(f"model {name!r} was not loaded ({served}): {exc}") from None
            self.dataplane.load_failures = failures
            self.dataplane.set_repository(fresh)
            self._unloaded.discard(name)
        log.info("loaded %s: versions %s", name, ",".join(fresh.models[name].version_list))

    async def unload_model(self, name: str) -> None:
        """Stop serving `name`: new requests get NOT_FOUND at once, and what is queued or running for
        it finishes before this returns."""
        self._check(name)
        async with self._lock:
            fresh = self.dataplane.models().without_model(name)  # NOT_FOUND when it is not loaded
            retiring = self.dataplane.set_repository(fresh)
            self._unloaded.add(name)
        await asyncio.gather(*retiring)
        log.info("unloaded %s", name)

    def index(self, ready_only: bool) -> list[tuple[str, str, str, str]]:
        """(name, version, state, reason) of every version served and every version refused, and (in
        explicit mode) every model in the repository that is not loaded."""
        out = self.dataplane.index(ready_only)
        if self.explicit and not ready_only:
            listed = {n for n, *_ in out}
            try:
                folders = model_folders(self.settings.model_repository)
            except ModelLoadError:
                folders = {}
            for name in sorted(set(folders) - listed):
                out.append((name, "", "UNAVAILABLE", "unloaded" if name in self._unloaded else "not loaded"))
        return sorted(out, key=lambda e: (e[0], int(e[1]) if e[1].isdigit() else 0))
