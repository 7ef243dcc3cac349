"""Rewards do not depend on the number of torch threads (issue 10: 1 and 2 threads agree).

The reference is the 1-thread computation: PyTorch's own ``F.batch_norm`` and a 1-thread
evaluation.  With 2 threads, PyTorch's CPU batch norm sums a ``[rows, channels]`` input in
per-thread parts and rounds otherwise (the mnist1d ``fast`` reward of SGD moved by up to
0.39 with it, BENCHMARKS.md); ``searchlab.tasks.serial.batch_norm`` must give the 1-thread
bits with any thread count, and with it every mnist1d and ensemble reward on the CPUs
where that was measured (``kernels.THREAD_INVARIANT_VENDORS``: AMD EPYC; on an Intel Xeon
MKL's matrix products split their sums by thread as well, and the evaluator warns).
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from searchlab import kernels
from searchlab.evaluation import Evaluator
from searchlab.tasks.serial import batch_norm
from searchlab.threads import one_thread

RULES = ["g", "(1+sign(g)*sign(m))*g", "adam"]


def _bn_run(fn, threads: int, training: bool) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(2000, 224, generator=gen) * 3 + 1).requires_grad_()  # mnist1d's layer-1 shape
    w = (torch.rand(224, generator=gen) + 0.5).requires_grad_()
    b = torch.randn(224, generator=gen).requires_grad_()
    rm, rv = torch.randn(224, generator=gen), torch.rand(224, generator=gen) + 0.5
    up = torch.randn(2000, 224, generator=gen)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = fn(x, rm, rv, w, b, training=training, momentum=0.1, eps=1e-5)
        (out * up).sum().backward()
    finally:
        torch.set_num_threads(before)
    return [out.detach(), rm, rv, x.grad, w.grad, b.grad]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_with_two_threads_is_the_one_thread_batch_norm(training):
    """Outputs, running statistics and the three gradients, bit for bit."""
    reference = _bn_run(F.batch_norm, 1, training)
    for got, want, name in zip(_bn_run(batch_norm, 2, training), reference,
                               ["out", "running_mean", "running_var", "grad x", "grad weight",
                                "grad bias"]):
        assert torch.equal(got, want), name


def test_one_thread_restores_the_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), one_thread():
            raise RuntimeError("inside")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


_TWO_THREADS = """
import json, sys
import searchlab
import torch
from searchlab.evaluation import Evaluator
rules = json.loads(sys.argv[1])
ev = Evaluator("mnist1d", "fast", threads=2)
assert torch.get_num_threads() == 2
alone = [ev.evaluate(r, seed=1, use_cache=False) for r in rules]
pop = Evaluator("mnist1d", "fast", threads=2, population=len(rules)).evaluate_many(
    rules, seed=1, use_cache=False)
ens = [Evaluator("ensemble", "smoke", threads=2).evaluate(r, seed=1, use_cache=False).reward
       for r in rules]
print(json.dumps({"alone": [[r.reward, r.curve] for r in alone],
                  "pop": [r.reward for r in pop], "ensemble": ens}))
"""


@pytest.mark.skipif(kernels.cpu_vendor() not in kernels.THREAD_INVARIANT_VENDORS,
                    reason="2-thread rewards were measured equal to 1-thread ones on "
                           f"{sorted(kernels.THREAD_INVARIANT_VENDORS)} CPUs only; this one is "
                           f"{kernels.cpu_vendor() or 'unknown'}'s (its MKL products may round "
                           "otherwise: BENCHMARKS.md)")
def test_two_thread_evaluations_give_the_one_thread_rewards():
    """mnist1d ``fast`` (the fidelity where threads moved SGD's reward most), one rule at a
    time and as one population, and the problem ensemble: a 2-thread process gives the
    rewards and curves of 1-thread evaluations."""
    proc = subprocess.run([sys.executable, "-c", _TWO_THREADS, json.dumps(RULES)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    two = json.loads(proc.stdout.strip().splitlines()[-1])
    before = torch.get_num_threads()
    try:
        ev = Evaluator("mnist1d", "fast", threads=1)
        one = [ev.evaluate(r, seed=1, use_cache=False) for r in RULES]
        ens = [Evaluator("ensemble", "smoke", threads=1).evaluate(r, seed=1, use_cache=False).reward
               for r in RULES]
    finally:
        torch.set_num_threads(before)
    assert [[r.reward, list(r.curve)] for r in one] == two["alone"]
    assert [r.reward for r in one] == two["pop"]
    assert ens == two["ensemble"]


def test_threads_above_one_warn_where_invariance_was_not_measured(monkeypatch):
    monkeypatch.setattr(kernels, "_warned_threads", [])
    monkeypatch.setattr(kernels, "cpu_vendor", lambda: "GenuineIntel")
    kernels.check_threads(1)                       # one thread: nothing to warn about
    with pytest.warns(RuntimeWarning, match="2 torch threads on a GenuineIntel"):
        kernels.check_threads(2)
    monkeypatch.setattr(kernels, "_warned_threads", [])
    monkeypatch.setattr(kernels, "cpu_vendor", lambda: "AuthenticAMD")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernels.check_threads(2)
