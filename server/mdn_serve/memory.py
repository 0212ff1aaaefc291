"""Make freed memory go back to the operating system (glibc's allocator, on Linux).

A server's large temporaries (mixtures, samples, answers of megabytes) are freed as soon as a
call ends, but glibc keeps freed heap memory for reuse: in one arena per thread that allocated
(up to eight per CPU), and, after a large block is freed, it raises the size from which blocks
are mapped directly, so that the next large ones come from those arenas too. The RSS then stays
at its peak long after the clients that caused it went away. Two settings, made at start-up
before any thread exists, keep it near what is in use: large blocks (MMAP_THRESHOLD and up)
are always mapped on their own and unmapped when freed, and threads share ARENAS arenas.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt parameters, from glibc's malloc.h
M_ARENA_MAX = -8
MMAP_THRESHOLD = 1 << 20  # bytes
ARENAS = 2


def return_freed_memory() -> bool:
    """Apply the settings; False where the C library is not glibc (nothing to do there)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_ARENA_MAX, ARENAS))
    if not ok:
        log.warning("could not tune the allocator (mallopt); freed memory may stay with the process")
    return ok
