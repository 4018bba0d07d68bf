"""Keep freed memory in the process: glibc's ``malloc`` tuned for training loops on the CPU.

torch's CPU allocator takes every tensor's memory from ``malloc``. glibc serves large blocks (above its
``M_MMAP_THRESHOLD``, 128 KiB to start with) with fresh ``mmap`` pages and returns them to the kernel on
``free``; it also gives the top of its heap back once more than ``M_TRIM_THRESHOLD`` is free there. A
training step allocates and frees the same activation buffers every time, so the kernel hands the process
the same memory again and again, one zero-filled page (4 KiB) per minor page fault. One PPO update step of
the benchmarks' tiny T5 took ~4,500 page faults, GPT-2 ~10,000 (docs/speed.md, "Page faults").

:func:`keep_freed_memory` raises both thresholds through ``mallopt`` (the values the environment variables
``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` would set at start-up), so that blocks up to 32 MiB
come from the heap and freed memory stays there for the next step. The price: the process holds on to
memory it has freed, up to its peak use plus ``trim_threshold``. ``malloc_keep_freed=false`` in the run
config leaves glibc's defaults. Anywhere but Linux with glibc (macOS, musl), nothing is changed.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

# glibc's mallopt parameters (<malloc.h>)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc refuses more on 64-bit systems (HEAP_MAX_SIZE / 2)


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the symbols of the running process, libc's among them
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None  # musl and others: mallopt's parameters do not mean the same
    return libc


def keep_freed_memory(mmap_threshold: int = MMAP_THRESHOLD_MAX, trim_threshold: int = 1 << 30) -> bool:
    """Serve blocks below ``mmap_threshold`` bytes from the heap and keep up to ``trim_threshold`` bytes of
    freed memory at its top (glibc's ``mallopt``). Returns True when glibc took both settings, False where
    there is no glibc (nothing changed). Process-wide; later allocations only."""
    libc = _glibc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, int(trim_threshold)))
    if ok:
        log.debug("malloc: blocks < %d bytes from the heap, up to %d freed bytes kept", mmap_threshold, trim_threshold)
    return ok
