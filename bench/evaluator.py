"""Evaluator speed, side by side with a plain hand-written torch loop doing the same protocol.

    .venv/bin/python bench/evaluator.py [--tasks mnist1d,cifar10] [--repeats 5] [--threads 1]
        [--cifar-data path/to/cifar10-jpeg.tar.gz] [--cifar-examples 5000] [--rule adam]

For each task (``fast`` fidelity; CIFAR-10 on its first ``--cifar-examples`` images) the
script times, round-robin in one process (order shuffled every round, so machine noise
hits all alike):

* ``plain``: a plain torch loop a user would write for the paper's protocol (4.2): for
  every lr a fresh ``nn.Sequential`` (the same architecture and initial weights as the
  task's model) with ``RuleOptimizer``, batches sliced from a tensor shuffled once per
  epoch, a validation pass after each epoch; then the best lr retrained from scratch;
* ``plain+reuse``: the same loop, but the final run continues the best lr's sweep run
  when that replays it exactly (what the evaluator does) — the same work as the
  evaluator, so ``sequential / plain+reuse`` is the evaluator's own overhead;
* ``Evaluator(batched=False)``: the sequential path (one lr at a time);
* ``Evaluator(batched=True)``: the lr sweep as one batched pass (K = 7 stacked copies).

The allocator settings of :mod:`searchlab.allocator` are process-wide, so every variant
runs under the same ones: on by default (as in any process that creates an Evaluator),
off with ``SEARCHLAB_MALLOC_TUNING=0``; run both to see their effect.

Goals (issue 3): sequential <= 1.05x plain, batched <= 0.5x plain.  Rewards of all
variants are printed too (they should agree up to float rounding).  Two clocks: wall time
and the process's CPU time; with ``--threads 1`` CPU time is what an idle machine's wall
time would be, the robust clock on a shared machine.
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
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import searchlab  # noqa: E402,F401  (first: it pins torch's kernels and numpy's OpenBLAS, searchlab.kernels)

import torch
import torch.nn as nn
import torch.nn.functional as F


from searchlab.allocator import tune_malloc  # noqa: E402
from searchlab.evaluate import Evaluator  # noqa: E402
from searchlab.evaluation.protocol import DIVERGENCE_FACTOR, Seeds  # noqa: E402
from searchlab.optim import RuleOptimizer  # noqa: E402
from searchlab.tasks.cifar10 import CIFAR10ConvNet  # noqa: E402
from searchlab.tasks.mnist1d import MNIST1DConvNet  # noqa: E402


# --- the plain loop ------------------------------------------------------------------------
def mnist1d_net(seed: int) -> nn.Module:
    m = MNIST1DConvNet.create(1, torch.Generator().manual_seed(seed))
    w1, b1, g1, be1, w2, b2, g2, be2, wf, bf = [p.detach()[0] for p in m.params]
    c = b1.shape[0]
    net = nn.Sequential(nn.Unflatten(1, (1, 40)), nn.Conv1d(1, c, 5, 2, 2), nn.BatchNorm1d(c),
                        nn.ReLU(), nn.Conv1d(c, c, 3, 2, 1), nn.BatchNorm1d(c), nn.ReLU(),
                        nn.Flatten(), nn.Linear(c * 10, 10))
    with torch.no_grad():
        net[1].weight.copy_(w1.unsqueeze(1)); net[1].bias.copy_(b1)
        net[2].weight.copy_(g1); net[2].bias.copy_(be1)
        net[4].weight.copy_(w2.view(3, c, c).permute(2, 1, 0)); net[4].bias.copy_(b2)
        net[5].weight.copy_(g2); net[5].bias.copy_(be2)
        net[8].weight.copy_(wf.view(10, c, 10).permute(2, 1, 0).reshape(10, c * 10)); net[8].bias.copy_(bf)
    return net


def cifar_net(seed: int) -> nn.Module:
    m = CIFAR10ConvNet.create(1, torch.Generator().manual_seed(seed))
    w1, b1, g1, be1, w2, b2, g2, be2, wf, bf = [p.detach()[0] for p in m.params]
    c = b1.shape[0]
    net = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(c * 64, 10))
    with torch.no_grad():
        for mod, (w, b) in zip((net[0], net[1], net[4], net[5]), ((w1, b1), (g1, be1), (w2, b2), (g2, be2))):
            mod.weight.copy_(w); mod.bias.copy_(b)
        net[9].weight.copy_(wf.t()); net[9].bias.copy_(bf)
    return net.to(memory_format=torch.channels_last)


def plain_protocol(ev: Evaluator, make_net: Callable[[int], nn.Module], rule: str, seed: int,
                   reuse: bool) -> float:
    """The paper's protocol as a plain loop; returns the reward (final val accuracy)."""
    task, fid = ev.task, ev.fidelity
    s = task.load()
    n_train, n_val = len(s.train_y), len(s.val_y)
    n_sweep = min(fid.sweep_examples or n_train, n_train)
    n_final = min(fid.final_examples or n_train, n_train)
    n_val = min(fid.val_examples or n_val, n_val)
    bs = fid.batch_size
    seeds = Seeds.of(seed)
    xv = torch.cat([task.prepare(s.val_x[i:i + 1000]) for i in range(0, n_val, 1000)])
    yv = s.val_y[:n_val]

    def accuracy(net: nn.Module) -> tuple[float, float]:
        net.eval()
        with torch.no_grad():
            out = torch.cat([net(xv[i:i + 1000]) for i in range(0, n_val, 1000)])
        return float((out.argmax(1) == yv).float().mean()), float(F.cross_entropy(out, yv))

    def train(lr: float, n: int, epochs: int, state: Any = None) -> tuple[Any, list[float]]:
        if state is None:
            net = make_net(seeds.init)
            opt = RuleOptimizer(net.parameters(), rule, lr=lr, total_steps=epochs * (n // bs),
                                generator=torch.Generator().manual_seed(seeds.noise))
            order = torch.Generator().manual_seed(seeds.order)
            loss0 = None
        else:
            net, opt, order, loss0 = state
        accs = []
        for _ in range(epochs):
            perm = torch.randperm(n, generator=order)
            x, y = s.train_x[:n][perm], s.train_y[:n][perm]
            net.train()
            for i in range(n // bs):
                loss = F.cross_entropy(net(task.prepare(x[i * bs:(i + 1) * bs])), y[i * bs:(i + 1) * bs])
                value = loss.item()
                if loss0 is None:
                    loss0 = value
                if not math.isfinite(value) or value > DIVERGENCE_FACTOR * loss0:
                    return None, accs
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            a, l = accuracy(net)
            accs.append(a if math.isfinite(l) else math.nan)
        return (net, opt, order, loss0), accs

    best: tuple[float, float, Any] | None = None
    for lr in fid.lrs:
        state, accs = train(lr, n_sweep, fid.sweep_epochs)
        if state is not None and accs and math.isfinite(accs[-1]):
            if best is None or accs[-1] > best[0]:
                best = (accs[-1], lr, state if reuse else None)
    if best is None:
        return 0.0
    _, lr, state = best
    if reuse and state is not None and n_final == n_sweep and not ev_uses_decay(rule):
        _, accs = train(lr, n_final, fid.final_epochs - fid.sweep_epochs, state)
    else:
        _, accs = train(lr, n_final, fid.final_epochs)
    return accs[-1] if accs else 0.0


def ev_uses_decay(rule: str) -> bool:
    from searchlab.dsl import parse

    return parse(rule).uses_decay


# --- timing --------------------------------------------------------------------------------
def timed(fn: Callable[[], float]) -> tuple[float, float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    reward = fn()
    return time.perf_counter() - w0, time.process_time() - c0, reward


def bench_task(name: str, ev_seq: Evaluator, ev_bat: Evaluator, make_net: Callable[[int], nn.Module],
               rule: str, repeats: int, seed: int) -> None:
    variants: dict[str, Callable[[], float]] = {
        "plain": lambda: plain_protocol(ev_seq, make_net, rule, seed, reuse=False),
        "plain+reuse": lambda: plain_protocol(ev_seq, make_net, rule, seed, reuse=True),
        "Evaluator sequential": lambda: ev_seq.evaluate(rule, seed, use_cache=False).reward,
        "Evaluator batched": lambda: ev_bat.evaluate(rule, seed, use_cache=False).reward,
    }
    ev_seq.load()
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    rewards: dict[str, float] = {}
    rng = random.Random(0)
    for _ in range(repeats):
        order = list(variants)
        rng.shuffle(order)
        for k in order:
            w, c, r = timed(variants[k])
            times[k].append((w, c))
            rewards[k] = r
    f = ev_seq.fidelity
    print(f"\n### {name}: rule `{rule}`, fidelity `{f.key}`, task `{ev_seq.task.id}` "
          f"({repeats} rounds, median)\n")
    print("| variant | wall s | x plain (wall) | CPU s | x plain (CPU) | x plain+reuse (CPU) | reward |")
    print("|---|---|---|---|---|---|---|")
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}
    for k in variants:
        w, c = med[k]
        print(f"| {k} | {w:.2f} | {w / med['plain'][0]:.2f} | {c:.2f} | {c / med['plain'][1]:.2f} | "
              f"{c / med['plain+reuse'][1]:.2f} | {rewards[k]:.4f} |")
    seq, bat, plain, reuse = (med["Evaluator sequential"][1], med["Evaluator batched"][1],
                              med["plain"][1], med["plain+reuse"][1])
    print(f"\ngoals (CPU time): sequential / plain = {seq / plain:.2f} (<= 1.05: "
          f"{'met' if seq / plain <= 1.05 else 'NOT met'}); sequential / plain+reuse = "
          f"{seq / reuse:.2f} (overhead); batched / plain = {bat / plain:.2f} (<= 0.5: "
          f"{'met' if bat / plain <= 0.5 else 'NOT met'})")


def conv_floor(ev: Evaluator, rule: str, steps: int = 30, rounds: int = 3) -> None:
    """The convolutions' share of a plain CIFAR-10 training step: a lower bound on
    ``x plain`` for any path that runs every lr's convolutions (forward, input and weight
    gradients) with PyTorch's kernels; the rest of the step is what fusing and batching
    can remove."""
    s = ev.task.load()
    net = cifar_net(0)
    opt = RuleOptimizer(net.parameters(), rule, lr=1e-3)
    x, y = ev.task.prepare(s.train_x[:100]), s.train_y[:100]
    conv1, conv2 = net[0], net[4]
    h1 = net[:4](x).detach().requires_grad_(True)

    def full() -> None:
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()

    def convs() -> None:
        a = conv1(x)
        a.backward(torch.ones_like(a))
        b = conv2(h1)
        b.backward(torch.ones_like(b))

    def per_step(fn: Callable[[], None]) -> float:
        fn()
        c0 = time.process_time()
        for _ in range(steps):
            fn()
        return (time.process_time() - c0) / steps

    t_full, t_conv = [], []
    for _ in range(rounds):
        t_full.append(per_step(full))
        t_conv.append(per_step(convs))
    f, c = statistics.median(t_full), statistics.median(t_conv)
    print(f"\nconvolutions of one plain training step (batch 100): {c * 1e3:.1f} ms CPU of "
          f"{f * 1e3:.1f} ms = {c / f:.2f} (floor of x plain when every lr runs its own convolutions)")


def bench_problems(repeats: int) -> None:
    rules = ["g", "m", "adam", "exp(sign(g)*sign(m))*g", "(1+sign(g)*sign(m))*g"]
    print("\n### Problem tasks: milliseconds per evaluation (median over rules and rounds)\n")
    print("| task | fidelity | steps x lrs | wall ms | CPU ms |")
    print("|---|---|---|---|---|")
    for task in ("rosenbrock", "ensemble"):
        for fid in ("smoke", "fast"):
            ev = Evaluator(task, fid)
            ev.evaluate("g", use_cache=False)  # warm-up
            ws, cs = [], []
            for _ in range(repeats):
                for r in rules:
                    w, c, _ = timed(lambda: ev.evaluate(r, use_cache=False).reward)
                    ws.append(w); cs.append(c)
            print(f"| {task} | {fid} | {ev.fidelity.problem_steps} x {len(ev.fidelity.lrs)} | "
                  f"{1000 * statistics.median(ws):.0f} | {1000 * statistics.median(cs):.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="mnist1d,cifar10,problems")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cifar-repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rule", default="adam")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cifar-data", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))
    ap.add_argument("--cifar-examples", type=int, default=5000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tuned = tune_malloc()  # what every Evaluator does; process-wide, so all variants share it
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# torch {torch.__version__}, python {platform.python_version()}, threads {args.threads}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load:.1f} at start")
    print(f"# malloc tuning (searchlab.allocator) for every variant: {'on' if tuned else 'off'}")
    tasks = args.tasks.split(",")
    if "mnist1d" in tasks:
        bench_task("mnist1d", Evaluator("mnist1d", "fast", batched=False),
                   Evaluator("mnist1d", "fast", batched=True), mnist1d_net, args.rule, args.repeats, args.seed)
    if "cifar10" in tasks:
        opts = dict(data_dir=args.cifar_data, max_examples=args.cifar_examples)
        bench_task("cifar10", Evaluator("cifar10", "fast", batched=False, **opts),
                   Evaluator("cifar10", "fast", batched=True, **opts), cifar_net, args.rule,
                   args.cifar_repeats, args.seed)
        conv_floor(Evaluator("cifar10", "fast", **opts), args.rule)
    if "problems" in tasks:
        bench_problems(max(1, args.repeats // 2))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n# load average {load:.1f} at the end")


if __name__ == "__main__":
    main()
