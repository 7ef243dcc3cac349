"""Optimizer step time and state size, side by side with torch.optim.Adam(foreach=True).

    .venv/bin/python bench/optimizer_step.py [--sizes 1e6,1e7] [--threads 1] [--repeats 9]

For each parameter count, builds one set of parameters per optimizer (a few tensors of
transformer-MLP-like shapes: d x 4d, 4d x d, d x d and biases), attaches the same fixed
gradients, warms up, then times the optimizers round-robin (shuffled order every
repeat, so machine noise hits all of them alike) and reports the median step time, its
ratio to Adam's, the optimizer-state bytes and the scratch bytes kept between steps.
Goals (issue 2): PowerSign <= 1.0x Adam's step time and half Adam's state; any depth-2
rule <= 2x.

Two clocks: wall time (perf_counter) and the process's CPU time (process_time).  With
``--threads 1`` the CPU time is the wall time an idle machine would show; on a shared
machine it is the robust one (a descheduled process accrues wall time, not CPU time).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import statistics
import sys
import time
from typing import Callable

import searchlab  # noqa: F401  (first: it pins torch's kernels and numpy's OpenBLAS, searchlab.kernels)
import torch

from searchlab.dsl import parse
from searchlab.optim import AddSign, PowerSign, RuleOptimizer

#: (label, rule text) -- each run by RuleOptimizer
RULES: list[tuple[str, str]] = [
    ("rule g (SGD)", "g"),
    ("rule PowerSign", "exp(sign(g)*sign(m))*g"),
    ("rule AddSign", "(1+sign(g)*sign(m))*g"),
    ("rule adam", "adam"),
    ("rule PowerSign-cd", "exp(cd*sign(g)*sign(m))*g"),
    ("rule T6 adam*exp(sign(g)*sign(m))", "adam*exp(sign(g)*sign(m))"),
    ("rule T6 drop(g,0.3)*exp(sign(g)*sign(m))", "drop(g, 0.3)*exp(sign(g)*sign(m))"),
    ("rule T6 drop(m,0.1)/(exp(g2)+eps)", "drop(m, 0.1)/(exp(g2) + eps)"),
    ("rule d2 sqrt(exp(adam)*log(gamma))/exp(rmsprop)", "sqrt(exp(adam)*log(gamma))/exp(rmsprop)"),
    ("rule d2 log(gamma^adam)^drop(rmsprop,0.5)", "log(gamma^adam)^drop(rmsprop, 0.5)"),
    ("rule d3 (exp(sign(g)*sign(m))+clip(g,1e-4))*g", "(exp(sign(g)*sign(m)) + clip(g, 1e-4))*g"),
]

#: single foreach passes / random fills over all parameters, to explain the rule costs
PRIMITIVES: list[tuple[str, Callable[[list[torch.Tensor], torch.Generator], object]]] = [
    ("x.add_(1) (a memory pass)", lambda t, gen: torch._foreach_add_(t, 1.0)),
    ("x.exp_()", lambda t, gen: torch._foreach_exp_(t)),
    ("x.log_()", lambda t, gen: torch._foreach_log_(t)),
    ("x.sqrt_()", lambda t, gen: torch._foreach_sqrt_(t)),
    ("x.pow_(1.5)", lambda t, gen: torch._foreach_pow_(t, 1.5)),
    ("normal_ (eps, eps_t)", lambda t, gen: [x.normal_(generator=gen) for x in t]),
    ("uniform_ (for comparison)", lambda t, gen: [x.uniform_(generator=gen) for x in t]),
    ("random bits (drop's mask)", lambda t, gen: [x.view(-1)[: x.numel() // 2 * 2].view(torch.int64)
                                                  .random_(-2**63, None, generator=gen) for x in t]),
]


def shapes_for(n: int) -> list[tuple[int, ...]]:
    # 9 d^2 + 6 d parameters
    d = int((-6 + math.sqrt(36 + 36 * n)) / 18)
    return [(d, 4 * d), (4 * d,), (4 * d, d), (d,), (d, d), (d,)]


def factories(total_steps: int) -> list[tuple[str, int | None, Callable]]:
    out: list[tuple[str, int | None, Callable]] = [
        ("torch Adam(foreach)", None, lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True)),
        ("torch SGD(foreach)", None, lambda p: torch.optim.SGD(p, lr=1e-3, foreach=True)),
        ("PowerSign", 2, lambda p: PowerSign(p, lr=1e-3)),
        ("AddSign", 3, lambda p: AddSign(p, lr=1e-3)),
    ]
    for label, text in RULES:
        depth = parse(text).depth
        out.append((label, depth, lambda p, t=text: RuleOptimizer(p, t, lr=1e-3, total_steps=total_steps,
                                                                    seed=0)))
    return out


def primitive_costs(n: int, repeats: int, seed: int, adam_cpu: float) -> list[tuple[str, float, float]]:
    gen = torch.Generator().manual_seed(seed)
    base = [torch.rand(s, generator=gen) + 0.5 for s in shapes_for(n)]  # in [0.5, 1.5)
    out = []
    for name, fn in PRIMITIVES:
        times = []
        for _ in range(repeats):
            t = [x.clone() for x in base]
            c0 = time.process_time()
            fn(t, gen)
            times.append(time.process_time() - c0)
        med = statistics.median(times)
        out.append((name, med, med / adam_cpu))
    return out


def state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
               if isinstance(v, torch.Tensor))


def run_size(n: int, repeats: int, steps: int, warmup: int, seed: int) -> list[dict]:
    shapes = shapes_for(n)
    gen = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=gen) * 0.05 for s in shapes]
    grads = [torch.randn(s, generator=gen) * 1e-2 for s in shapes]
    nparams = sum(t.numel() for t in init)
    entries = []
    for name, depth, make in factories(total_steps=10 * (warmup + repeats * steps)):
        params = [t.clone().requires_grad_(True) for t in init]
        for p, g in zip(params, grads):
            p.grad = g  # shared, read-only for every optimizer
        opt = make(params)
        for _ in range(warmup):
            opt.step()
        entries.append(dict(name=name, depth=depth, opt=opt, times=[], cpu=[], n=nparams))
    order = list(range(len(entries)))
    rng = random.Random(seed)
    for _ in range(repeats):
        rng.shuffle(order)
        for i in order:
            opt = entries[i]["opt"]
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(steps):
                opt.step()
            entries[i]["times"].append((time.perf_counter() - t0) / steps)
            entries[i]["cpu"].append((time.process_time() - c0) / steps)
    adam = entries[0]
    adam_t = statistics.median(adam["times"])
    adam_c = statistics.median(adam["cpu"])
    adam_b = state_bytes(adam["opt"])
    for e in entries:
        e["median"] = statistics.median(e["times"])
        e["ratio"] = e["median"] / adam_t
        e["cpu_median"] = statistics.median(e["cpu"])
        e["cpu_ratio"] = e["cpu_median"] / adam_c
        e["state"] = state_bytes(e["opt"])
        e["state_ratio"] = e["state"] / adam_b
        ws = getattr(e["opt"], "workspace", None)
        e["scratch"] = ws.nbytes() if ws is not None else 0
        del e["opt"]
    return entries


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1e6,1e7", help="comma-separated parameter counts")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--repeats", type=int, default=9, help="timed rounds (median taken)")
    ap.add_argument("--steps", type=int, default=5, help="optimizer steps per timed round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, python {platform.python_version()}, "
          f"threads {torch.get_num_threads()}, repeats {args.repeats} x {args.steps} steps "
          f"(median), {platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    for size in (int(float(s)) for s in args.sizes.split(",")):
        rows = run_size(size, args.repeats, args.steps, args.warmup, args.seed)
        print(f"\n### {rows[0]['n']:,} parameters ({len(shapes_for(size))} tensors)\n")
        print("| optimizer | depth | CPU ms | x Adam (CPU) | wall ms | x Adam (wall) "
              "| state MB | state / Adam | scratch MB |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            depth = "-" if r["depth"] is None else str(r["depth"])
            print(f"| {r['name']} | {depth} | {1e3 * r['cpu_median']:.2f} | {r['cpu_ratio']:.2f} "
                  f"| {1e3 * r['median']:.2f} | {r['ratio']:.2f} | {r['state'] / 2**20:.1f} "
                  f"| {r['state_ratio']:.2f} | {r['scratch'] / 2**20:.1f} |")
        print("\nOne op over all parameters (CPU ms, and x one Adam step):\n")
        print("| op | CPU ms | x Adam step |")
        print("|---|---|---|")
        for name, med, ratio in primitive_costs(size, args.repeats, args.seed, rows[0]["cpu_median"]):
            print(f"| {name} | {1e3 * med:.2f} | {ratio:.2f} |")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
