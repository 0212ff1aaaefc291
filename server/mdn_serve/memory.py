"""Make freed memory go back to the operating system (glibc's allocator, on Linux).

A server's large temporaries (mixtures, samples, answers of megabytes) are freed as soon as a
call ends, but glibc keeps freed heap memory for reuse: in one arena per thread that allocated
(up to eight per CPU), and, after a large block is freed, it raises the size from which blocks
are mapped directly, so that the next large ones come from those arenas too. The RSS then stays
at its peak long after the clients that caused it went away. Settings made at start-up, before
any thread exists, keep it near what is in use: large blocks (MMAP_THRESHOLD and up) are always
mapped on their own and unmapped when freed, and threads share ARENAS arenas.

A fixed MMAP_THRESHOLD also fixes the threshold at which free memory at the top of the heap goes
back to the system, at glibc's 128 KiB: then nearly every free of a mid-sized temporary gives
memory back and the next allocation faults it in again, page by page. On a 7-joint arm's IK
(hundreds of kilobytes per array, allocated and freed at every refinement step) that cost a
quarter of the speed. So the heap keeps up to TRIM_THRESHOLD free at its top before it gives
any back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 1 << 20  # bytes
TRIM_THRESHOLD = 16 << 20  # bytes
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
    ok = all(
        mallopt(parameter, value)
        for parameter, value in (
            (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (M_ARENA_MAX, ARENAS),
        )
    )
    if not ok:
        log.warning("could not tune the allocator (mallopt); freed memory may stay with the process")
    return ok
