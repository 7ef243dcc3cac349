"""Unique evaluations per hour: serial vs the process pool vs Ray, side by side in one run.

    .venv/bin/python bench/throughput.py                      # mnist1d, fast fidelity
    .venv/bin/python bench/throughput.py --n 16 --rounds 8    # more, interleaved rounds

Every configuration evaluates the same ``n`` distinct rules (drawn once from the
``scratch`` space by the ``random`` strategy; by default only rules that pass the
evaluator's validity probe, i.e. that are trained -- ``--mix`` keeps random search's mix,
in which many rules are rejected in milliseconds and a few trainings dominate) with the same evaluation callable the runner
uses (:class:`searchlab.runner.EvaluateTask`), fed through ``Executor.imap_unordered`` so
that every worker stays busy.  All executors are started first (spawning workers,
``ray.init``, loading data: a warm-up map on other rules, reported as start-up, not
counted in the rate) and stay up, so that rounds can alternate between them quickly.
The reward cache is off: every round trains every rule again.

Configurations (each worker uses 1 torch thread):

    serial-1t   the calling process, torch.set_num_threads(1)
    serial-2t   the calling process, torch.set_num_threads(2)  (serial using both cores)
    process-2   ProcessExecutor(workers=2, threads=1)
    ray-2       RayExecutor(workers=2, threads=1), a local 2-CPU Ray cluster
    <name>+batched  the same executor, the lr sweep batched (stacked) for one rule at a
                time (the default on mnist1d and the problem tasks; not on CIFAR-10)
    <name>+pop  the same executor fed *chunks* of rules, each trained as one population
                (``--population N``: ``Evaluator(population=N)`` and the runner's
                ``EvaluateChunk``/``chunk_sizes``: one chunk per worker, none above N)

Population-batched evaluation (issue "Train many rules in one pass")::

    .venv/bin/python bench/throughput.py --population 8 --configs serial-1t,serial-1t+pop,process-2,process-2+pop
    .venv/bin/python bench/throughput.py --task ensemble --population 32 --n 32 --configs serial-1t,serial-1t+pop,process-2,process-2+pop

CIFAR-10 (JPEG copy, its first 5,000 images; ``--option`` passes task/evaluator options)::

    .venv/bin/python bench/throughput.py --task cifar10 --option data_dir=../shared/data/cifar10-jpeg.tar.gz --option max_examples=5000 --population 4 --n 4 --rounds 2 --configs serial-1t,serial-1t+batched,serial-1t+pop

``--flops`` first counts the FLOPs of one evaluation (``torch.utils.flop_counter``,
matrix products only: the elementwise ops are not counted), measures this machine's fp32
matrix-multiply rate on one thread, and prints the achieved GFLOP/s of each
configuration (FLOPs x evaluations / (elapsed x workers)).

Rounds interleave the configurations (s1, s2, p, r, s1, s2, ...) so that drifts in the
load of a shared machine hit all of them alike; rates are the median over rounds.  (While
Ray is up, its own daemons take a little CPU from every configuration.)  The
script also checks that every configuration got the same reward for every rule, and
prints how busy the workers were (sum of the evaluations' own wall times / (elapsed x
workers)): near 100 % means the executor keeps every worker evaluating, and the speed-up
is then whatever the free cores allow -- on a machine loaded by other work, two busy
workers simply get the same CPU share as one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import searchlab  # noqa: E402,F401  (first: it pins torch's kernels and numpy's OpenBLAS, searchlab.kernels)


def build_evaluator(task: str, fidelity: str, options: dict[str, Any] | None = None) -> Any:
    """The evaluator of ``task`` at ``fidelity`` without a reward cache (every rule trains);
    ``options``: task and evaluator options (``data_dir``, ``max_examples``, ``batched``)."""
    from searchlab.evaluators import TOY_TASK, make_evaluator

    return (make_evaluator(task, **(options or {})) if task == TOY_TASK
            else make_evaluator(task, fidelity, **(options or {})))


def distinct_rules(n: int, seed: int, trained_only: bool = False) -> list[Any]:
    """``n`` rules of distinct keys from random search; with ``trained_only`` only rules
    that pass the evaluator's validity probe (the others are scored without training)."""
    from searchlab.dsl import get_space
    from searchlab.runner import build_strategy

    probe = None
    if trained_only:
        from searchlab.fingerprint import probe
    strategy = build_strategy("random", get_space("scratch"), seed)
    seen: dict[str, Any] = {}
    while len(seen) < n:
        for rule in strategy.ask(n):
            if rule.key not in seen and (probe is None or probe(rule).ok):
                seen[rule.key] = rule
    return list(seen.values())[:n]


def make(name: str, workers: int) -> Any:
    from searchlab.executors import ProcessExecutor, RayExecutor, SerialExecutor

    name = name.split("+")[0]
    if name == "serial-1t":
        return SerialExecutor(threads=1)
    if name == "serial-2t":
        return SerialExecutor(threads=2)
    if name.startswith("process"):
        return ProcessExecutor(workers=workers, threads=1)
    if name.startswith("ray"):
        return RayExecutor(workers=workers, threads=1, object_store_mb=200)
    raise ValueError(name)


def measure(ex: Any, task: Callable[[Any], Any], rules: list[Any],
            chunk: int = 0) -> dict[str, Any]:
    from searchlab.runner import chunk_sizes

    t0 = time.perf_counter()
    if chunk:
        sizes = chunk_sizes(len(rules), getattr(ex, "workers", 1), chunk)
        bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        parts = [tuple(rules[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        results = {}
        for c, out in ex.imap_unordered(task, parts):
            for k, res in enumerate(out):
                results[bounds[c] + k] = res
    else:
        results = dict(ex.imap_unordered(task, rules))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rewards": [results[i].reward for i in range(len(rules))],
            "statuses": [results[i].status for i in range(len(rules))],
            "busy": sum(float(r.seconds or 0.0) for r in results.values()),
            "workers": getattr(ex, "workers", 1)}


def count_flops(task: str, fidelity: str, rule: Any) -> tuple[float, float]:
    """FLOPs of one evaluation of ``rule`` (matrix products counted by torch's
    FlopCounterMode) and this machine's fp32 matmul rate on one thread (GFLOP/s, the best
    of a few sizes)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ev = build_evaluator(task, fidelity)
    ev.load()
    counter = FlopCounterMode(display=False)
    with counter:
        ev.evaluate(rule, 0, use_cache=False)
    best = matmul_rate()
    torch.set_num_threads(threads)
    return float(counter.get_total_flops()), best


def matmul_rate() -> float:
    """This machine's fp32 matrix-multiply rate at the current thread count (GFLOP/s, the
    best of square sizes 256, 512 and 1024)."""
    import torch

    best = 0.0
    for n in (256, 512, 1024):
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        t0 = time.perf_counter()
        for _ in range(5):
            a @ b
        best = max(best, 2 * n ** 3 * 5 / (time.perf_counter() - t0) / 1e9)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="mnist1d")
    ap.add_argument("--fidelity", default="fast")
    ap.add_argument("--n", type=int, default=8, help="rules per configuration and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--configs", default="serial-1t,serial-2t,process-2,ray-2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mix", action="store_true",
                    help="random search's mix of rules (many are rejected by the validity "
                         "probe without training) instead of rules that all train")
    ap.add_argument("--population", type=int, default=8,
                    help="the most rules per population of the +pop configurations")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="an evaluator or task option for every configuration, e.g. "
                         "data_dir=../shared/data/cifar10-jpeg.tar.gz max_examples=5000")
    ap.add_argument("--flops", action="store_true",
                    help="count FLOPs per evaluation and measure the matmul rate first")
    args = ap.parse_args(argv)

    import torch

    from searchlab.runner import EvaluateChunk, EvaluateTask

    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    rules = distinct_rules(args.n + 2 * args.workers, args.seed,
                           trained_only=not args.mix and args.task != "toy")
    warm, rules = rules[:2 * args.workers], rules[2 * args.workers:]
    # one evaluator per configuration: an evaluator's counters change as it is used in
    # this process, and a changed pickle would make the pools ship it again
    tasks: dict[str, Any] = {}
    from searchlab.config import ConfigError, parse_overrides

    try:
        options = dict(parse_overrides(args.option))
    except ConfigError as e:
        print(f"throughput: --option: {e}", file=sys.stderr)
        return 2
    for c in configs:
        opts = dict(options)
        if c.endswith("+pop") or c.endswith("+batched"):
            opts["batched"] = True   # a population stacks the lrs too (CIFAR-10: not default)
        ev = build_evaluator(args.task, args.fidelity, opts)
        if c.endswith("+pop"):
            from searchlab.interfaces import BatchEvaluator

            if not isinstance(ev, BatchEvaluator):
                print(f"throughput: task {args.task!r} has no population evaluation "
                      f"(configuration {c})", file=sys.stderr)
                return 2
            ev.population = args.population
            if ev.max_batch < 2:
                print(f"throughput: {ev!r} trains one rule at a time at this fidelity "
                      f"(configuration {c})", file=sys.stderr)
                return 2
            tasks[c] = EvaluateChunk(ev, 0)
        else:
            tasks[c] = EvaluateTask(ev, 0)
    flops = matmul_rate = None
    if args.flops:
        flops, matmul_rate = count_flops(args.task, args.fidelity, rules[0])
    print(f"# throughput: task={args.task} fidelity={args.fidelity} n={args.n} "
          f"rounds={args.rounds} workers={args.workers} rules={'mix' if args.mix else 'trained'} "
          f"cores={os.cpu_count()} torch={torch.__version__} "
          f"load={os.getloadavg()[0]:.1f}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    threads0 = torch.get_num_threads()
    executors: dict[str, Any] = {}
    startup: dict[str, float] = {}
    try:
        for c in configs:                   # start everything first: workers, Ray, data
            t0 = time.perf_counter()
            executors[c] = make(c, args.workers)
            if c.endswith("+pop"):
                executors[c].map(tasks[c], [tuple(warm[i::executors[c].workers])
                                            for i in range(executors[c].workers)])
            else:
                executors[c].map(tasks[c], warm)
            torch.set_num_threads(threads0)
            startup[c] = time.perf_counter() - t0
        for r in range(args.rounds):
            for c in configs:
                m = measure(executors[c], tasks[c], rules,
                            args.population if c.endswith("+pop") else 0)
                torch.set_num_threads(threads0)
                runs[c].append(m)
                print(f"round {r}: {c:<10} {m['seconds']:7.1f} s for {len(rules)} evals "
                      f"({3600 * len(rules) / m['seconds']:7.0f}/h), workers busy "
                      f"{m['busy'] / (m['seconds'] * m['workers']):4.0%}, "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        for ex in executors.values():
            ex.close()

    rate = {c: statistics.median(3600 * len(rules) / m["seconds"] for m in runs[c])
            for c in configs}
    base = rate.get("serial-1t")
    print()
    print("| executor | unique evals/hour (median) | vs serial-1t | vs serial-2t | workers busy | "
          "start-up s |")
    print("|---|---:|---:|---:|---:|---:|")
    for c in configs:
        v1 = f"{rate[c] / base:.2f}x" if base else "-"
        v2 = f"{rate[c] / rate['serial-2t']:.2f}x" if "serial-2t" in rate else "-"
        busy = statistics.median(m["busy"] / (m["seconds"] * m["workers"]) for m in runs[c])
        print(f"| {c} | {rate[c]:.0f} | {v1} | {v2} | {busy:.0%} | {startup[c]:.1f} |")
    proc = next((c for c in configs if c.startswith("process")), None)
    ray_ = next((c for c in configs if c.startswith("ray")), None)
    if proc and ray_:
        print(f"\nray / process = {rate[ray_] / rate[proc]:.3f}")
    pops = [c for c in configs if c.endswith("+pop")]
    for c in pops:
        plain = c[:-4]
        if plain in rate:
            print(f"{c} / {plain} = {rate[c] / rate[plain]:.2f}x evaluations per hour")
    if pops and base:
        best = max(pops, key=lambda c: rate[c])
        print(f"best population configuration {best} / serial-1t = {rate[best] / base:.2f}x")
    if flops:
        print(f"\nFLOPs per evaluation (matrix products, one rule): {flops / 1e9:.2f} GFLOP; "
              f"fp32 matmul on one thread here: {matmul_rate:.1f} GFLOP/s")
        for c in configs:
            w = runs[c][0]["workers"]
            achieved = flops * rate[c] / 3600 / w / 1e9
            print(f"  {c:<16} {achieved:6.1f} GFLOP/s per worker = "
                  f"{achieved / matmul_rate:5.1%} of the matmul rate")
    ref = runs[configs[0]][0]["rewards"]
    for c in configs:
        same = all(m["rewards"] == ref for m in runs[c])
        worst = max(abs(a - b) for m in runs[c] for a, b in zip(m["rewards"], ref))
        print(f"rewards identical to {configs[0]} for every rule: {c}: {same} "
              f"(largest difference {worst:.4g})")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    bad = sum(s != "ok" for s in runs[configs[0]][0]["statuses"])
    print(f"(statuses other than ok: {bad} of {len(ref)}; serial-2t may differ in the last "
          f"digits: two torch threads sum in another order)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
