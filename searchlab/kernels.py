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
AVX2 and FMA, before torch runs its first op, and caps MKL and oneDNN at AVX2 too
(``MKL_ENABLE_INSTRUCTIONS=AVX2``, ``ONEDNN_MAX_CPU_ISA=AVX2``: on an Intel CPU with
AVX-512 they would otherwise pick their AVX-512 code). Worker processes inherit the
settings. numpy's OpenBLAS gets the same cap (``OPENBLAS_CORETYPE=Haswell``, its AVX2
kernels, which AVX2-only AMD EPYC machines choose themselves): with its AVX-512 kernels the
QR that draws the problem ensemble's quadratic bowl rounds differently, and so every
ensemble reward moved with the machine (measured: a hash of the ensemble's values and
gradients differs between ``OPENBLAS_CORETYPE=SkylakeX``, this machine's own choice, and
``Haswell``/``Zen``). It takes effect only if numpy is imported after searchlab (or the
variable is set before Python starts). Each variable the user has set is left alone,
and ``SEARCHLAB_CPU_KERNELS=native`` sets none of them (torch's own choice; the rewards
are then those of this machine's kernels, and a reward cache shared with pinned runs
mixes the two: give such runs a cache of their own). Other machines (aarch64, macOS,
Windows) are left as they are.

What was measured (BENCHMARKS.md, "The machine's CPU kernels"): on an AMD EPYC with
AVX-512, pinning the ATen kernels alone reproduced the rewards recorded on AVX2-only AMD
EPYC machines exactly (table rows, the verdict's cache, the noise tables), and the MKL and
oneDNN caps changed none of the rewards checked there.

The pin does not make every x86-64 machine round alike: **the CPU vendor matters too.**
MKL, which torch calls for float32 matrix products and for several elementwise
functions (float32 ``exp``, ``log``, ``tanh`` and ``sqrt``, float64 ``sqrt``: their
results move with MKL's settings, ``bench/vendor.py``), picks vendor-specific code.
Measured on an Intel Xeon with AVX-512, pinned like this: 1 of 20 sampled rows of the
shipped table (made on AMD EPYC) re-evaluates to the same reward, 3 of 20 and 0 of 10 in
other samples (SGD, seed 0: 0.8705 against 0.8555), and 2 of 205 sampled rows get another probe
fingerprint (rules with a cancellation after a float64 ``sqrt``). No setting of
``MKL_CBWR`` or ``MKL_ENABLE_INSTRUCTIONS`` reproduced the AMD numbers there
(BENCHMARKS.md, "Intel CPUs"). So rewards are reproducible between machines of one
vendor; :func:`cpu_vendor` names this machine's, and :data:`REFERENCE_VENDOR` the one the
shipped table and the project's recorded numbers were computed on.

``import torch`` imports numpy, and so loads OpenBLAS: a program that imports torch before
searchlab gets OpenBLAS's own kernels in that process, while its worker processes start
with the variable set. Measured on the Intel Xeon: ensemble rewards differed between the
calling process and its workers, in the last digits for most rules and by up to 0.018
for one. :func:`check` warns about it on CPUs with AVX-512 (for evaluators of problem tasks:
MNIST-1D's data are the same under either kernel choice). MKL read a
``MKL_ENABLE_INSTRUCTIONS`` set after ``import torch`` (but before any MKL call) as one set
before Python started: the same output hashes, measured once on that machine.

The choice is fixed by torch's first op: if a program runs torch ops before it imports
searchlab, the pin comes too late for that process. :func:`check` (called by every
``Evaluator``, also in worker processes) then warns once.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
import warnings

__all__ = ["PINNED", "ENV", "OPT_OUT", "REFERENCE_VENDOR", "THREAD_INVARIANT_VENDORS", "can_pin",
           "pin", "wanted", "current", "check", "check_threads", "cpu_vendor"]

#: the kernels searchlab pins (the value of ATEN_CPU_CAPABILITY)
PINNED = "avx2"
ENV = "ATEN_CPU_CAPABILITY"
OPT_OUT = "SEARCHLAB_CPU_KERNELS"      # "native": torch's own choice
#: the same cap for the libraries torch calls (matrix products, convolutions) and for
#: numpy's OpenBLAS (the problem ensemble's instances use its QR)
LIBRARY_CAPS = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                "OPENBLAS_CORETYPE": "Haswell"}

#: the CPU vendor (``/proc/cpuinfo``'s ``vendor_id``) of the machines that computed the
#: shipped table, the verdict's reward cache and the numbers in BENCHMARKS.md
REFERENCE_VENDOR = "AuthenticAMD"

#: CPU vendors on which an evaluation with several torch threads was measured to give the
#: 1-thread bits (mnist1d, the problem ensemble: batch norm on one thread,
#: ``searchlab.tasks.serial``, is the one thread-dependent op there).  On an Intel Xeon,
#: MKL's matrix products at the final run's shapes split their sums by thread too
#: (BENCHMARKS.md, "What makes a reward depend on the thread count").
THREAD_INVARIANT_VENDORS = frozenset({"AuthenticAMD"})
_warned: list[bool] = []
_warned_threads: list[bool] = []
_warned_openblas: list[bool] = []
#: set when searchlab set OPENBLAS_CORETYPE after numpy was imported (``import torch``
#: imports numpy): OpenBLAS chose its kernels when numpy loaded it, so the cap does not
#: apply in this process (worker processes, which start with the variable, get it)
_late_openblas: list[bool] = []


@functools.lru_cache(maxsize=4)
def _cpuinfo(field: str) -> str:
    """The value of the first ``field`` line of ``/proc/cpuinfo`` (``""`` if none, or no
    such file). One file read per field and process."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(field):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def _cpu_flags() -> set[str]:
    return set(_cpuinfo("flags").split())


def cpu_vendor() -> str:
    """This machine's CPU vendor as ``/proc/cpuinfo`` names it (``"AuthenticAMD"``,
    ``"GenuineIntel"``), or ``""`` where there is no such file (macOS, Windows)."""
    return _cpuinfo("vendor_id")


def can_pin() -> bool:
    """Whether this machine can run the pinned kernels (x86-64 Linux with AVX2 and FMA)."""
    return (sys.platform.startswith("linux") and platform.machine() == "x86_64"
            and {"avx2", "fma"} <= _cpu_flags())


def pin() -> bool:
    """Set ``ATEN_CPU_CAPABILITY=avx2`` (and the MKL/oneDNN caps) for this process and its
    children, each unless the user set it, and none with ``SEARCHLAB_CPU_KERNELS=native``
    or on a machine that cannot run AVX2. Returns whether the ATen pin was set here."""
    if os.environ.get(OPT_OUT, "").lower() == "native" or not can_pin():
        return False
    for name, value in LIBRARY_CAPS.items():
        if name not in os.environ:
            os.environ[name] = value
            if name == "OPENBLAS_CORETYPE" and "numpy" in sys.modules:
                _late_openblas.append(True)
    if ENV in os.environ:
        return False
    os.environ[ENV] = PINNED
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


def check(openblas: bool = False) -> str:
    """The kernels in use; warns once if they are not the ones asked for (torch ran an op
    before ``import searchlab`` set the pin), and, with ``openblas`` (the caller's numbers
    go through numpy's OpenBLAS: the problem tasks' instances), once if numpy was imported
    before searchlab set ``OPENBLAS_CORETYPE`` on a CPU with AVX-512."""
    now = current()
    want = wanted()
    if want is not None and want != now and not _warned:
        _warned.append(True)
        warnings.warn(
            f"torch runs {now} CPU kernels in this process, not the {want} that "
            f"{ENV}={os.environ.get(ENV)} asks for: either a torch op ran before searchlab "
            "set the variable (import searchlab first, or set it before starting Python), "
            "or this CPU or torch build cannot run them. Rewards here can differ in "
            "rounding from other processes, the reward cache and other machines "
            "(searchlab.kernels).", RuntimeWarning, stacklevel=3)
    if openblas and _late_openblas and not _warned_openblas and "avx512f" in _cpu_flags():
        _warned_openblas.append(True)
        warnings.warn(
            "numpy was imported before searchlab (import torch imports it), so OpenBLAS chose "
            "its own kernels for this AVX-512 CPU before searchlab set "
            "OPENBLAS_CORETYPE=Haswell: in this "
            "process the problem tasks' instances (the ensemble's rotated bowl is numpy's "
            "QR) differ from those of worker processes and of other machines, and so do "
            "their rewards. Import searchlab before torch and numpy, or set "
            "OPENBLAS_CORETYPE=Haswell before starting Python (searchlab.kernels).",
            RuntimeWarning, stacklevel=3)
    return now


def check_threads(threads: int) -> None:
    """Warn once if ``threads`` (> 1) torch threads may give other rewards than one thread on
    this machine (:data:`THREAD_INVARIANT_VENDORS`)."""
    vendor = cpu_vendor()
    if threads > 1 and vendor not in THREAD_INVARIANT_VENDORS and not _warned_threads:
        _warned_threads.append(True)
        warnings.warn(
            f"evaluating with {threads} torch threads on a {vendor or 'CPU of unknown vendor'}: "
            "rewards equal 1-thread rewards bit for bit only where that was measured "
            f"({', '.join(sorted(THREAD_INVARIANT_VENDORS))}); here the matrix products may "
            "round otherwise and move rewards (BENCHMARKS.md, 'What makes a reward depend on "
            "the thread count'). Use threads=1 for rewards comparable with 1-thread runs.",
            RuntimeWarning, stacklevel=3)
