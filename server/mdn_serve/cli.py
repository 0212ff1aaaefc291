"""`mdn-serve`: parse the settings, then run one server process or a supervisor of several.

Prometheus' client picks its storage when it is first imported, so this module decides on
multi-process mode (and sets PROMETHEUS_MULTIPROC_DIR) before anything imports it.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Sequence

from mdn_serve.config import parse_settings
from mdn_serve.memory import return_freed_memory


def main(argv: Sequence[str] | None = None) -> int:
    return_freed_memory()  # before any thread starts
    settings = parse_settings(argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )
    if settings.workers > 1:
        if "prometheus_client" in sys.modules:
            raise RuntimeError("prometheus_client was imported before multi-process mode was set up")
        metrics_dir = tempfile.mkdtemp(prefix="mdn-serve-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        from mdn_serve.workers import supervise

        return supervise(settings, metrics_dir)
    if settings.pin_workers:
        from mdn_serve.workers import pin_to_cpu

        pin_to_cpu(0)
    from mdn_serve.app import run

    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
