"""Process allocator settings that keep CPU training from page-faulting (glibc).

PyTorch on CPU allocates every activation and gradient with ``malloc``.  glibc serves
blocks above its mmap threshold (dynamic, at most 32 MiB) with a fresh ``mmap`` and gives
them back with ``munmap`` on free, and it trims the heap top once more than twice that
threshold is free; either way the next allocation of that size touches brand-new pages,
and the kernel zero-fills them one 4 KiB page fault at a time.  The CIFAR-10 child's
first activations are 13 MB per copy (92 MB for 7 stacked copies): measured with
``bench/evaluator.py`` on this project's 2-core machine, a batched CIFAR-10 sweep of 7
stacked copies spent 16 % of its time in the kernel (page faults) and ran 1.4x slower
than with the settings below; a plain one-copy CIFAR-10 loop ran 1.17x slower and the
plain mnist1d loop 1.4x (BENCHMARKS.md, "Evaluator").

:func:`tune_malloc` (called by :class:`~searchlab.evaluate.Evaluator`) therefore sets,
once per process, ``M_MMAP_MAX = 0`` (large blocks come from the heap and are reused)
and ``M_TRIM_THRESHOLD = 1 GiB`` (freed memory stays with the process up to that much).
The cost: the process keeps its peak heap instead of returning it to the system.  Set
the environment variable ``SEARCHLAB_MALLOC_TUNING=0`` to leave the allocator alone.  On
other C libraries (no ``mallopt``), or under another allocator preloaded with
``LD_PRELOAD`` (jemalloc, tcmalloc: they ignore ``mallopt``), nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading

__all__ = ["ENV_VAR", "malloc_tuned", "tune_malloc"]

ENV_VAR = "SEARCHLAB_MALLOC_TUNING"
# glibc <malloc.h> parameter numbers
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30

_lock = threading.Lock()
_state: bool | None = None  # None: not tried yet


def _disabled() -> bool:
    return os.environ.get(ENV_VAR, "1").strip().lower() in {"0", "false", "no", "off"}


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def tune_malloc() -> bool:
    """Apply the settings of the module docstring once per process; returns whether they
    are in effect (False when disabled by ``SEARCHLAB_MALLOC_TUNING=0`` or unsupported)."""
    global _state
    with _lock:
        if _state is None:
            libc = None if _disabled() else _libc()
            _state = bool(libc is not None
                          and libc.mallopt(M_MMAP_MAX, 0) == 1
                          and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
        return _state


def malloc_tuned() -> bool:
    """Whether :func:`tune_malloc` has put the settings in effect in this process."""
    return bool(_state)
