"""Strategy comparison: every strategy x seeds x a budget of unique evaluations, one task.

Prints, per strategy, the mean (and sd) of the best reward over seeds, the number of
unique evaluations needed to reach a reward threshold (median over the seeds that reached
it, and how many did), and how many seeds found a rule containing ``sign(g)*sign(m)``
(the core of PowerSign and AddSign, Bello et al. 2017 section 5) among their top-k rules
and among all rules with reward >= the threshold.

All searches share one evaluator with a persistent reward cache (``--cache``), so a rule
evaluated by one search is not retrained by the next (the budget is still counted per
search in unique keys: the comparison is fair).  Every strategy uses its default options.

Usage (the BENCHMARKS.md numbers)::

    .venv/bin/python bench/strategy_comparison.py --task ensemble --fidelity fast \
        --budget 300 --seeds 0 1 2 3 4 --threshold 0.5 --json runs/bench/strategies.json
    .venv/bin/python bench/strategy_comparison.py --task toy --budget 300 --threshold 0.9
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import searchlab  # noqa: E402,F401  (first: it pins torch's kernels and numpy's OpenBLAS, searchlab.kernels)

import numpy as np


os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from searchlab.dsl import parse  # noqa: E402
from searchlab.dsl.nodes import Bin, Call, Leaf, walk  # noqa: E402
from searchlab.runner import SearchResult, run_search  # noqa: E402
from searchlab.strategy import STRATEGIES  # noqa: E402

SIGN_G, SIGN_M = Call("sign", Leaf("g")), Call("sign", Leaf("m"))


def _factors(node: Any) -> list[Any]:
    if isinstance(node, Bin) and node.op == "mul":
        return _factors(node.left) + _factors(node.right)
    return [node]


def has_sign_product(rule_text: str) -> bool:
    """True if the rule's canonical form multiplies ``sign(g)`` by ``sign(m)`` (aliases
    ``sign_g``/``sign_m`` included; other factors may sit in the same product)."""
    try:
        node = parse(rule_text).canonical.node
    except Exception:   # noqa: BLE001 - an unparsable result text is simply "no"
        return False
    for n in walk(node):
        if isinstance(n, Bin) and n.op == "mul":
            f = _factors(n)
            if SIGN_G in f and SIGN_M in f:
                return True
    return False


def build_evaluator(task: str, fidelity: str, cache: str | None, threads: int | None) -> Any:
    from searchlab.evaluators import TOY_TASK, make_evaluator

    if task == TOY_TASK:
        return make_evaluator(task)
    return make_evaluator(task, fidelity, cache=cache, threads=threads)


def summarise(name: str, runs: list[SearchResult], threshold: float, top_k: int) -> dict[str, Any]:
    best = np.array([r.best_reward for r in runs])
    reach = [r.samples_to_reach(threshold) for r in runs]
    reached = [x for x in reach if x is not None]
    top_sign = sum(any(has_sign_product(b.rule) for b in r.best[:top_k]) for r in runs)
    good_sign = sum(any(has_sign_product(x.rule) for x in r.results if x.reward >= threshold)
                    for r in runs)
    examples = sorted({b.rule for r in runs for b in r.best[:top_k] if has_sign_product(b.rule)})
    return {
        "strategy": name, "seeds": [r.seed for r in runs],
        "best_mean": float(best.mean()), "best_sd": float(best.std(ddof=1)) if len(best) > 1 else 0.0,
        "best_median": float(np.median(best)), "best_per_seed": best.tolist(),
        "reach_median": float(np.median(reached)) if reached else None,
        "reached": len(reached), "sign_in_top": top_sign, "sign_above_threshold": good_sign,
        "sign_examples": examples[:3],
        "best_rules": [r.best[0].rule for r in runs],
        "repeats_mean": float(np.mean([r.repeats for r in runs])),
        "seconds_mean": float(np.mean([r.seconds for r in runs])),
        "stopped": sorted({r.stopped for r in runs}),
        # everything needed to recompute any statistic later
        "samples": [[[x.rule, x.reward, x.status] for x in r.results] for r in runs],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="ensemble")
    ap.add_argument("--fidelity", default="fast")
    ap.add_argument("--space", default="scratch")
    ap.add_argument("--budget", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--strategies", nargs="+", default=None)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--eval-seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per evaluation (1 is ~20x faster than the default "
                         "on the problem ensemble on a loaded 2-core machine)")
    ap.add_argument("--cache", default="runs/bench/strategies-rewards.sqlite")
    ap.add_argument("--json", default=None, help="write all numbers here")
    args = ap.parse_args(argv)

    names = args.strategies or STRATEGIES.names()
    if args.threads:
        # set once for the whole process: toggling torch's thread count per evaluation
        # (1 inside, back to 2 outside) left every later foreach op ~10x slower here
        import torch

        torch.set_num_threads(args.threads)
    if args.cache and args.task != "toy":
        Path(args.cache).parent.mkdir(parents=True, exist_ok=True)
    evaluator = build_evaluator(args.task, args.fidelity, args.cache, args.threads)
    executor = None
    if args.workers > 1:
        from searchlab.executors import EXECUTORS

        executor = EXECUTORS.get("process")(workers=args.workers)
    print(f"task={args.task} fidelity={args.fidelity} space={args.space} budget={args.budget} "
          f"seeds={args.seeds} batch={args.batch_size} threshold={args.threshold}", flush=True)
    rows, t0 = [], time.perf_counter()
    try:
        for name in names:
            runs = []
            for seed in args.seeds:
                res = run_search(name, evaluator, budget=args.budget, batch_size=args.batch_size,
                                 seed=seed, eval_seed=args.eval_seed, executor=executor,
                                 space=args.space)
                runs.append(res)
                print(f"  {name:10s} seed={seed} best={res.best_reward:.4f} "
                      f"reach@{args.threshold}={res.samples_to_reach(args.threshold)} "
                      f"{res.seconds:.0f}s  {res.best[0].rule}", flush=True)
            rows.append(summarise(name, runs, args.threshold, args.top_k))
            if args.json:   # after every strategy: a long run keeps what it finished
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}))
    finally:
        if executor is not None:
            executor.close()
    n = len(args.seeds)
    print(f"\n| strategy | best reward, mean ± sd | median | samples to {args.threshold} "
          f"(median; seeds reaching) | sign(g)*sign(m) in top-{args.top_k} | s/search |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        reach = "-" if r["reach_median"] is None else f"{r['reach_median']:.0f}"
        print(f"| {r['strategy']} | {r['best_mean']:.4f} ± {r['best_sd']:.4f} | "
              f"{r['best_median']:.4f} | {reach} ({r['reached']}/{n}) | "
              f"{r['sign_in_top']}/{n} | {r['seconds_mean']:.0f} |")
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")
    for r in rows:
        if r["sign_examples"]:
            print(f"{r['strategy']}: e.g. {'; '.join(r['sign_examples'])}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}))


if __name__ == "__main__":
    main()
