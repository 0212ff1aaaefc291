"""The served repository over time: the first load, then reloads on SIGHUP or every --poll-seconds.

Each new or changed file is loaded and warmed up before it serves; a file that fails is refused,
counted (mdn_model_load_failures_total) and reported by RepositoryIndex, and the rest of the same
reload serves. Reloads never overlap.
"""

from __future__ import annotations

import asyncio
import logging

from mdn_serve.config import Settings
from mdn_serve.metrics import Metrics
from mdn_serve.serving.dataplane import Dataplane
from mdn_serve.serving.repository import ModelRepository, choose_providers

log = logging.getLogger("mdn_serve")


class RepositoryLoader:
    def __init__(self, settings: Settings, dataplane: Dataplane, metrics: Metrics) -> None:
        self.settings = settings
        self.dataplane = dataplane
        self.metrics = metrics
        self._providers: list[str] = []
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None

    async def load(self) -> ModelRepository:
        """Load and warm up every model, and serve them; --poll-seconds then starts polling."""
        s = self.settings
        providers = self._providers = choose_providers(s.device)
        log.info("device %s: execution providers %s", s.device, providers)
        repository = await asyncio.to_thread(
            ModelRepository.load, s.model_repository, providers, s.intra_op_threads, s.inter_op_threads
        )
        self.dataplane.set_repository(repository)
        for name, entry in sorted(repository.models.items()):
            latest = entry.latest
            log.info("model %s: versions %s, provider %s", name, ",".join(entry.version_list), latest.provider)
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
        """Pick up new, changed and removed versions; each new file is loaded and warmed first."""
        async with self._lock:
            current = self.dataplane.repository
            if current is None:
                return
            s = self.settings
            failures: dict[tuple[str, str], str] = {}

            def failed(name: str, version: str, reason: str) -> None:
                self.metrics.load_failures.labels(name, version).inc()
                failures[(name, version)] = reason

            fresh = await asyncio.to_thread(
                current.reloaded, s.model_repository, self._providers, s.intra_op_threads, s.inter_op_threads, failed
            )
            self.metrics.reloads.inc()
            self.dataplane.load_failures = failures  # what this reload refused (RepositoryIndex)
            if fresh is current:  # nothing changed: not worth a line at INFO every --poll-seconds
                log.debug("repository unchanged")
                return
            self.dataplane.set_repository(fresh)
            log.info(
                "repository reloaded: %s",
                ", ".join(f"{n} {','.join(e.version_list)}" for n, e in sorted(fresh.models.items())),
            )
