"""`make bench`: our server against its two ceilings, measured side by side in one run (see run.py)."""

from mdn_serve.tools.bench.cli import main

__all__ = ["main"]
