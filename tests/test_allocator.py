"""The malloc settings (searchlab.allocator): measured through glibc's own statistics.

Each case runs in a fresh interpreter (the settings are per process and cannot be undone)
and reads ``mallinfo2().hblkhd``, the bytes glibc currently holds in mmap'ed blocks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")

SCRIPT = r"""
import ctypes, json
import torch
from searchlab.evaluate import Evaluator

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
Evaluator("rosenbrock", "smoke")          # applies the settings (unless disabled)
import searchlab.allocator as a
before = libc.mallinfo2().hblkhd
t = torch.ones(100 * 2**20 // 4)          # a 100 MiB block
during = libc.mallinfo2().hblkhd
print(json.dumps({"tuned": a.malloc_tuned(), "mmapped": during - before}))
"""


def run(env_value: str | None) -> dict:
    env = dict(os.environ)
    env.pop("SEARCHLAB_MALLOC_TUNING", None)
    if env_value is not None:
        env["SEARCHLAB_MALLOC_TUNING"] = env_value
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _has_mallinfo2() -> bool:
    import ctypes

    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not _has_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_evaluator_keeps_large_blocks_off_mmap():
    tuned = run(None)
    assert tuned["tuned"] is True
    assert tuned["mmapped"] < 2**20  # the 100 MiB block came from the heap


@pytest.mark.skipif(not _has_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_env_var_leaves_the_allocator_alone():
    plain = run("0")
    assert plain["tuned"] is False
    assert plain["mmapped"] >= 100 * 2**20  # glibc's default: a fresh mmap
