"""Why a reward moves with the torch thread count: the ops whose results depend on it.

    .venv/bin/python bench/thread_ops.py                 # adam, mnist1d `fast`, seed 0
    .venv/bin/python bench/thread_ops.py --rule g --fidelity compare
    .venv/bin/python bench/thread_ops.py --timing        # also: one-thread sections, timed

Part 1 runs one evaluation under a ``TorchDispatchMode`` that executes every aten op
twice, on copies of its inputs with 1 torch thread and on the real inputs with 2, and
counts the ops whose floating-point outputs (or mutated inputs) differ bit for bit. Ops
that allocate without initialising (``empty``, ``new_empty_strided``) and random draws
(executed twice, so their generator advances twice: the run is not the real one, but
every op still sees identical inputs in both executions) are listed apart. An op listed
here splits a sum differently with 2 threads; everything else (elementwise ops, the
update rule, cross-entropy at these sizes) is thread-invariant.

Part 2 (``--timing``) measures the obvious remedy on the 8 reference rules at ``compare``,
seeds 0 and 3: run the network's forward and backward passes on 1 thread inside a
2-thread process (the update rule keeps 2 threads), against plain 1- and 2-thread
processes. Each setting runs in its own process; rewards and wall/CPU seconds per
evaluation are printed side by side.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import searchlab  # noqa: E402,F401  (first: it pins torch's kernels and numpy's OpenBLAS, searchlab.kernels)

RULES = ["g", "m", "adam", "rmsprop", "exp(sign(g)*sign(m))*g", "(1+sign(g)*sign(m))*g",
         "sign(m)", "sign(m)*sqrt(g)"]
_UNINITIALISED = {"aten.empty.memory_format", "aten.new_empty_strided.default",
                  "aten.empty_strided.default", "aten.new_empty.default"}


def scan(rule: str, fidelity: str, seed: int) -> None:
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_map

    from searchlab.evaluation import Evaluator

    differ: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    shapes: dict[str, list[tuple[int, ...]]] = {}

    def clone(x: object) -> object:
        return x.clone() if isinstance(x, torch.Tensor) else x

    def tensors(out: object, args: tuple) -> list[torch.Tensor]:
        outs = out if isinstance(out, (tuple, list)) else [out]
        return [t for t in list(outs) + list(args) if isinstance(t, torch.Tensor)]

    class TwoThreads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            kwargs = kwargs or {}
            a1, k1 = tree_map(clone, args), tree_map(clone, kwargs)
            torch.set_num_threads(1)
            o1 = func(*a1, **k1)
            torch.set_num_threads(2)
            o2 = func(*args, **kwargs)
            name = str(func)
            calls[name] += 1
            for x, y in zip(tensors(o1, a1), tensors(o2, args)):
                if (x.dtype.is_floating_point and x.shape == y.shape
                        and not torch.equal(x, y) and not bool(x.isnan().any())):
                    differ[name] += 1
                    shapes[name] = [tuple(t.shape) for t in args if isinstance(t, torch.Tensor)]
                    break
            return o2

    ev = Evaluator("mnist1d", fidelity, threads=2, population=1)
    ev.load()
    with TwoThreads():
        ev.evaluate(rule, seed=seed, use_cache=False)
    print(f"# {rule!r}, mnist1d {fidelity}, seed {seed}: aten ops whose result differs "
          "between 1 and 2 threads (calls that differed / calls, input shapes of one)")
    for name, n in differ.most_common():
        kind = ("  (uninitialised memory: not a difference)" if name in _UNINITIALISED
                else "  (a random draw, run twice: not a difference)" if "rand" in name
                or "normal" in name or "bernoulli" in name else "")
        print(f"{name:45s} {n:5d} / {calls[name]:5d}  {shapes[name]}{kind}")


_CHILD = r"""
import contextlib, json, sys, time
import searchlab, torch
from searchlab.evaluation import Evaluator
from searchlab.tasks.mnist1d import MNIST1DConvNet
mode, threads = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(threads)
if mode == "sections":      # forward/backward on 1 thread; the update rule on `threads`
    @contextlib.contextmanager
    def one():
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(n)
    forward = MNIST1DConvNet.forward
    def fwd(self, x, train):
        with one():
            return forward(self, x, train)
    MNIST1DConvNet.forward = fwd
    grad = torch.autograd.grad
    def g(*a, **k):
        with one():
            return grad(*a, **k)
    torch.autograd.grad = g
ev = Evaluator("mnist1d", "compare", threads=threads)
ev.load()
out = []
for rule in json.loads(sys.argv[3]):
    for seed in (0, 3):
        t, c = time.perf_counter(), time.process_time()
        r = ev.evaluate(rule, seed=seed, use_cache=False)
        out.append([rule, seed, r.reward, time.perf_counter() - t, time.process_time() - c])
print(json.dumps(out))
"""


def timing() -> None:
    runs = {}
    for label, mode, threads in (("1 thread", "plain", 1), ("2 threads", "plain", 2),
                                 ("2, passes on 1", "sections", 2)):
        p = subprocess.run([sys.executable, "-c", _CHILD, mode, str(threads), json.dumps(RULES)],
                           capture_output=True, text=True, check=True, cwd=ROOT)
        runs[label] = json.loads(p.stdout.strip().splitlines()[-1])
    labels = list(runs)
    print(f"\n# compare, seeds 0 and 3: reward (wall s, CPU s per evaluation); load average "
          f"{os.getloadavg()[0]:.1f}")
    print("| rule | seed | " + " | ".join(labels) + " |")
    print("|---|---|" + "---|" * len(labels))
    for i, (rule, seed, *_rest) in enumerate(runs[labels[0]]):
        cells = [f"{runs[k][i][2]:.4f} ({runs[k][i][3]:.2f}, {runs[k][i][4]:.2f})" for k in labels]
        print(f"| {rule} | {seed} | " + " | ".join(cells) + " |")
    base = runs[labels[0]]
    for k in labels[1:]:
        same = sum(a[2] == b[2] for a, b in zip(base, runs[k]))
        wall = sum(r[3] for r in runs[k]) / sum(r[3] for r in base)
        cpu = sum(r[4] for r in runs[k]) / sum(r[4] for r in base)
        print(f"{k}: {same} of {len(base)} rewards equal to 1 thread's; wall time "
              f"{wall:.2f}x, CPU time {cpu:.2f}x of 1 thread's")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rule", default="adam")
    ap.add_argument("--fidelity", default="fast")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timing", action="store_true", help="also time one-thread sections")
    args = ap.parse_args(argv)
    scan(args.rule, args.fidelity, args.seed)
    if args.timing:
        timing()
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        raise SystemExit(main())
