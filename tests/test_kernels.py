"""searchlab.kernels: ``import searchlab`` pins torch's CPU kernels to AVX2 on x86-64 Linux,
so the same rule and seed give the same reward on machines with and without AVX-512.

Each case runs in a fresh interpreter: torch fixes its kernels at the first op of a
process, and this test process has long made that choice."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from searchlab import kernels

pytestmark = pytest.mark.skipif(not kernels.can_pin(), reason="pins only on x86-64 Linux with AVX2")


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    drop = {kernels.ENV, kernels.OPT_OUT, *kernels.LIBRARY_CAPS}
    base = {k: v for k, v in os.environ.items() if k not in drop}
    return subprocess.run([sys.executable, "-c", code], env={**base, **env}, text=True,
                          capture_output=True, timeout=120)


def _out(code: str, **env: str) -> str:
    r = _run(code, **env)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


CAPABILITY = "import torch; print(torch.backends.cpu.get_cpu_capability())"


def test_import_pins_avx2_for_this_process_and_its_children() -> None:
    out = _out("import searchlab, torch, subprocess, sys\n"
               "print(torch.backends.cpu.get_cpu_capability())\n"
               f"subprocess.run([sys.executable, '-c', {CAPABILITY!r}])")
    assert out.split() == ["AVX2", "AVX2"]


def test_the_users_choice_wins() -> None:
    native = _out(CAPABILITY)                      # torch alone: its own choice
    assert _out("import searchlab; " + CAPABILITY, ATEN_CPU_CAPABILITY="default") == "DEFAULT"
    assert _out("import searchlab; " + CAPABILITY, SEARCHLAB_CPU_KERNELS="native") == native


LIBS = ("import os, searchlab; print(*(os.environ.get(v) for v in ('MKL_ENABLE_INSTRUCTIONS', "
        "'ONEDNN_MAX_CPU_ISA', 'OPENBLAS_CORETYPE')))")


def test_mkl_onednn_and_openblas_are_capped_too_unless_set_or_opted_out() -> None:
    assert _out(LIBS) == "AVX2 AVX2 Haswell"
    assert _out(LIBS, MKL_ENABLE_INSTRUCTIONS="SSE4_2") == "SSE4_2 AVX2 Haswell"
    assert _out(LIBS, SEARCHLAB_CPU_KERNELS="native") == "None None None"


# numpy's own code paths as on a machine without AVX-512: its AVX-512 SIMD loops off and
# OpenBLAS's AVX2 kernels (on machines without AVX-512 these change nothing)
AVX2_ONLY_NUMPY = {"NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
                   "OPENBLAS_CORETYPE": "Haswell"}

ENSEMBLE = ("import searchlab, hashlib, torch\n"
            "from searchlab.tasks.problems import build_problems\n"
            "h = hashlib.sha256()\n"
            "for p in build_problems():\n"
            "    x = torch.rand(8, p.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1\n"
            "    f, g = p.value_and_grad(x)\n"
            "    h.update(f.numpy().tobytes() + g.numpy().tobytes() + repr(p.f_star).encode())\n"
            "print(h.hexdigest())")


def test_the_problem_ensemble_is_the_same_instance_as_on_an_avx2_machine() -> None:
    """Its quadratic bowl's rotation is numpy's QR, which OpenBLAS rounds differently with
    its AVX-512 kernels (measured: SkylakeX vs Haswell kernels give other values)."""
    assert _out(ENSEMBLE) == _out(ENSEMBLE, **AVX2_ONLY_NUMPY)


PROBES = ("import searchlab\n"
          "from searchlab.fingerprint import probe\n"
          "print(*(probe(r).digest for r in ('exp(v) - exp(g2)', 'adam - rmsprop', "
          "'log(g3) - log(gamma)', 'sqrt(g3) - sqrt(gamma)', 'log(rmsprop)^sqrt(g)')))")


def test_fingerprints_are_the_same_as_on_an_avx2_machine() -> None:
    """Functions with cancellations amplify the last bit of the probe's input stream;
    numpy's vectorised power rounded it differently on AVX-512 machines and moved these
    functions' fingerprints (and so their reward-cache and table keys)."""
    assert _out(PROBES) == _out(PROBES, **AVX2_ONLY_NUMPY)


def test_process_pool_workers_run_the_pinned_kernels() -> None:
    code = ("import searchlab\n"
            "from searchlab.executors import make_executor\n"
            "from searchlab.kernels import current\n"
            "def f(i): return current()\n"
            "if __name__ == '__main__':\n"
            "    with make_executor('process', workers=2) as ex:\n"
            "        print(' '.join(ex.map(f, range(4))), current())\n")
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"searchlab_kernels_{os.getpid()}.py")
    with open(path, "w") as fh:
        fh.write(code)
    try:
        assert _out(f"import runpy; runpy.run_path({path!r}, run_name='__main__')").split() == ["AVX2"] * 5
    finally:
        os.unlink(path)


def test_a_torch_op_before_the_import_is_reported_when_it_changed_the_kernels() -> None:
    """Too late to pin: the Evaluator warns, unless torch's own choice is AVX2 anyway."""
    native = _out(CAPABILITY)
    r = _run("import warnings, torch\n"
             "torch.ones(2) + 1\n"
             "import searchlab\n"
             "from searchlab.evaluation import Evaluator\n"
             "with warnings.catch_warnings(record=True) as w:\n"
             "    warnings.simplefilter('always')\n"
             "    Evaluator('rosenbrock', 'smoke')\n"
             "print([str(x.message) for x in w if 'CPU kernels' in str(x.message)])")
    assert r.returncode == 0, r.stderr
    if native == "AVX2":
        assert r.stdout.strip() == "[]"
    else:
        assert f"torch runs {native} CPU kernels" in r.stdout and "not the AVX2" in r.stdout
        assert "a torch op ran before searchlab" in r.stdout


# `import torch` imports numpy and so loads OpenBLAS before searchlab can set
# OPENBLAS_CORETYPE: the ensemble's instance (numpy's QR) then comes from OpenBLAS's own
# kernels, AVX-512 ones on a CPU with AVX-512
ORDER = ("import warnings; warnings.simplefilter('always')\n"
         "{first}\n"
         "from searchlab.evaluation import Evaluator\n"
         "ev = Evaluator('ensemble', 'fast')\n"
         "print(repr(ev.evaluate('exp(g) - sign(clip(cd_2, 1e-5) + log(1e-3*w))', seed=0, "
         "use_cache=False).reward))")


def test_importing_torch_first_leaves_openblas_uncapped_and_warns_where_that_matters() -> None:
    capped = _run(ORDER.format(first="import searchlab, torch"))
    late = _run(ORDER.format(first="import torch, searchlab"))
    preset = _run(ORDER.format(first="import torch, searchlab"), OPENBLAS_CORETYPE="Haswell")
    assert capped.returncode == late.returncode == preset.returncode == 0, late.stderr
    matters = "avx512f" in kernels._cpu_flags()
    assert "OPENBLAS_CORETYPE" not in capped.stderr + preset.stderr
    assert ("numpy was imported before searchlab" in late.stderr) == matters, late.stderr
    assert preset.stdout == capped.stdout          # set before Python: the same reward
    mnist = _run("import warnings; warnings.simplefilter('always')\nimport torch, searchlab\n"
                 "from searchlab.evaluation import Evaluator\nEvaluator('mnist1d', 'fast')")
    assert mnist.returncode == 0 and "numpy was imported" not in mnist.stderr  # no OpenBLAS there
    if matters and kernels.cpu_vendor() == "GenuineIntel":
        # measured on an Intel Xeon with AVX-512: ...853 capped against ...847
        assert late.stdout != capped.stdout
