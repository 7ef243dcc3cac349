"""Which vectorised CPU kernels torch runs, and so how every reward is rounded.

torch chooses its ATen CPU kernels (elementwise ops, reductions, softmax, ...) once per
process, at the first op: AVX-512 kernels where the CPU has AVX-512, AVX2 otherwise.
The two sum in different orders, and a child network trained at a large lr amplifies
the last-bit differences into a different reward. Measured on one AMD EPYC with AVX-512,
mnist1d ``compare``, seed 0, 1 thread: ``adam`` 0.8735 with torch's own choice (AVX-512)
and 0.8715 with AVX2 kernels, the value AVX2-only machines give. The same rule and seed
would give one reward on one machine and another on the next. That would break the
reward cache, the tabular benchmark's "lookups equal fresh evaluations" guarantee and
every number published from another machine.

So ``import searchlab`` sets ``ATEN_CPU_CAPABILITY=avx2`` on x86-64 Linux machines with
AVX2 and FMA, before torch runs its first op. Every x86-64 machine with AVX2 then runs the
same kernels, and worker processes inherit the setting. The user keeps control: an
``ATEN_CPU_CAPABILITY`` already in the environment is left alone, and
``SEARCHLAB_CPU_KERNELS=native`` turns the pin off (torch's own choice; the rewards
are then those of this machine's kernels). Other machines (aarch64, macOS, Windows) are
left as they are. Matrix products go through MKL, which already takes the same code path
on these machines: with only the ATen kernels pinned, the AVX-512 machine reproduced the
AVX2 machines' rewards exactly (``tests/test_kernels.py``; BENCHMARKS.md, "Reward noise").

The choice is fixed by torch's first op: if a program runs torch ops before it imports
searchlab, the pin comes too late for that process. :func:`check` (called by every
``Evaluator``) then warns once.
"""

from __future__ import annotations

import os
import platform
import sys
import warnings

__all__ = ["PINNED", "ENV", "OPT_OUT", "pin", "wanted", "current", "check"]

#: the kernels searchlab pins (the value of ATEN_CPU_CAPABILITY)
PINNED = "avx2"
ENV = "ATEN_CPU_CAPABILITY"
OPT_OUT = "SEARCHLAB_CPU_KERNELS"      # "native": torch's own choice

_state = {"pinned_here": False, "warned": False}


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def _can_pin() -> bool:
    return (sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")
            and {"avx2", "fma"} <= _cpu_flags())


def pin() -> bool:
    """Set ``ATEN_CPU_CAPABILITY=avx2`` for this process and its children, unless the
    user chose otherwise or the machine cannot run AVX2. Returns whether it was set here."""
    if ENV in os.environ or os.environ.get(OPT_OUT, "").lower() == "native":
        return False
    if not _can_pin():
        return False
    os.environ[ENV] = PINNED
    _state["pinned_here"] = True
    return True


def wanted() -> str | None:
    """The kernels this process asked for (``"AVX2"``), or None for torch's own choice."""
    value = os.environ.get(ENV)
    return value.upper() if value else None


def current() -> str:
    """The kernels torch runs in this process (``"AVX2"``, ``"AVX512"``, ``"DEFAULT"``).
    Asking fixes the choice, as torch's first op does."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def check() -> str:
    """The kernels in use; warns once if they are not the ones asked for (torch ran an op
    before ``import searchlab`` set the pin)."""
    now = current()
    want = wanted()
    if want is not None and want != now and not _state["warned"]:
        _state["warned"] = True
        warnings.warn(
            f"torch runs {now} CPU kernels in this process, not the {want} that "
            f"{ENV}={os.environ.get(ENV)} asks for: torch chose them at an op that ran before "
            "searchlab was imported. Rewards here can differ in rounding from worker "
            "processes, the reward cache and other machines (searchlab.kernels). Import "
            "searchlab before running torch ops, or set the variable before starting Python.",
            RuntimeWarning, stacklevel=3)
    return now
