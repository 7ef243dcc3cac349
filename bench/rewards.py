"""Rewards of known rules: SGD, momentum, Adam, RMSProp, PowerSign, AddSign, Table-6 rules.

    .venv/bin/python bench/rewards.py --part mnist1d --out rewards-mnist1d.jsonl   # fast, 3 seeds
    .venv/bin/python bench/rewards.py --part cifar10 --out rewards-cifar10.jsonl \\
        --data-dir path/to/cifar10-jpeg.tar.gz                                    # paper fidelity
    .venv/bin/python bench/rewards.py --report rewards-mnist1d.jsonl rewards-cifar10.jsonl

``--part`` evaluates and appends one JSON line per (rule, seed) as soon as it is done
(a long CIFAR-10 run can be interrupted and resumed: finished rules come from the
reward cache); ``--report`` prints the markdown tables for BENCHMARKS.md: the validation
reward (the search signal) as mean and spread over seeds, the best lr per seed, and the
held-out test accuracy (never seen by the search).

The question (Bello et al. 2017, section 5 and Table 6): are the sign(g)*sign(m) rules
(PowerSign, AddSign) competitive with SGD and momentum on the small ConvNet?
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import searchlab  # noqa: E402,F401  (first: it pins torch's kernels and numpy's OpenBLAS, searchlab.kernels)

import torch


from searchlab.cache import RewardCache, default_cache_path  # noqa: E402
from searchlab.result import result_to_json  # noqa: E402
from searchlab.evaluate import Evaluator  # noqa: E402

#: (label, rule text)
BASELINES = [("SGD", "g"), ("momentum", "m"), ("Adam", "adam"), ("RMSProp", "rmsprop")]
FOUND = [("PowerSign", "exp(sign(g)*sign(m))*g"), ("AddSign", "(1+sign(g)*sign(m))*g")]
TABLE6 = [
    ("T6 sign(m)*sqrt(g)", "sign(m)*sqrt(g)"),
    ("T6 clip(m,1e-4)*exp(v)", "clip(m, 1e-4)*exp(v)"),
    ("T6 g-clip(g2,1e-4)", "g - clip(g2, 1e-4)"),
    ("T6 exp(g)-exp(m)", "exp(g) - exp(m)"),
    ("T6 drop(m,0.3)*exp(1e-3*w)", "drop(m, 0.3)*exp(1e-3*w)"),
]
PARTS = {
    "mnist1d": dict(task="mnist1d", fidelity="fast", seeds=(0, 1, 2), rules=BASELINES + FOUND + TABLE6),
    "cifar10": dict(task="cifar10", fidelity="paper", seeds=(0,),
                    rules=[("SGD", "g"), ("Adam", "adam"), ("PowerSign", FOUND[0][1]),
                           ("AddSign", FOUND[1][1]), ("momentum", "m")]),
}


def run_part(part: str, out: Path, data_dir: str | None, threads: int, cache: str | None,
             seeds: list[int] | None = None, labels: list[str] | None = None) -> None:
    spec = dict(PARTS[part])
    if seeds:
        spec["seeds"] = tuple(seeds)
    if labels:
        spec["rules"] = [(l, r) for l, r in spec["rules"] if l in labels]
    torch.set_num_threads(threads)
    options = {"data_dir": data_dir} if part == "cifar10" and data_dir else {}
    ev = Evaluator(spec["task"], spec["fidelity"], cache=RewardCache(cache or default_cache_path()),
                   **options)
    ev.load()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {part}: task {ev.task.id}, fidelity {ev.protocol}, torch {torch.__version__}, "
          f"threads {threads}, load average {load:.1f}", flush=True)
    with out.open("a") as fh:
        for label, rule in spec["rules"]:
            for seed in spec["seeds"]:
                t0 = time.perf_counter()
                r = ev.evaluate(rule, seed, test=True)
                row = {"part": part, "label": label, **result_to_json(r),
                       "wall": time.perf_counter() - t0, "threads": threads}
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                print(f"{label:30s} seed {seed}  {r.status:8s} reward {r.reward:.4f}  "
                      f"lr {r.best_lr}  test {r.extra.get('test_reward', float('nan')):.4f}  "
                      f"{r.seconds:.1f} s{' (cached)' if r.cached else ''}", flush=True)


def _fmt_mean(xs: list[float]) -> str:
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}"


def report(paths: list[Path]) -> None:
    rows = [json.loads(line) for p in paths for line in p.read_text().splitlines() if line.strip()]
    by_part: dict[str, dict[str, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
    order: dict[str, list[str]] = defaultdict(list)
    for r in rows:  # the last line per (part, label, seed) wins
        by_part[r["part"]][r["label"]][r["seed"]] = r
        if r["label"] not in order[r["part"]]:
            order[r["part"]].append(r["label"])
    for part, labels in by_part.items():
        any_row = next(iter(next(iter(labels.values())).values()))
        print(f"\n### {part}: task `{any_row['task']}`, fidelity `{any_row['fidelity']}`, "
              f"seeds {sorted({s for l in labels.values() for s in l})}\n")
        print("| rule | text | val reward (mean ± sd) | per seed | best lr per seed | test acc | s / eval |")
        print("|---|---|---|---|---|---|---|")
        for label in order[part]:
            seeds = labels[label]
            rs = [seeds[s] for s in sorted(seeds)]
            rewards = [x["reward"] for x in rs]
            tests = [x["extra"].get("test_reward") for x in rs if x["extra"].get("test_reward") is not None]
            statuses = {x["status"] for x in rs}
            lrs = " ".join(f"{x['best_lr']:g}" if x["best_lr"] is not None else "-" for x in rs)
            secs = [x["seconds"] for x in rs if not x["cached"]] or [float("nan")]
            note = "" if statuses == {"ok"} else f" ({', '.join(sorted(statuses))})"
            print(f"| {label} | `{rs[0]['rule']}` | {_fmt_mean(rewards)}{note} | "
                  f"{' '.join(f'{x:.3f}' for x in rewards)} | {lrs} | {_fmt_mean(tests)} | "
                  f"{statistics.median(secs):.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=sorted(PARTS))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default=None, help="reward cache file (default: the user cache)")
    ap.add_argument("--seeds", type=int, nargs="*", help="override the part's seeds")
    ap.add_argument("--rules", nargs="*", help="only these labels (e.g. SGD PowerSign)")
    ap.add_argument("--report", nargs="*", type=Path)
    args = ap.parse_args()
    if args.report:
        report(args.report)
        return
    if not args.part or not args.out:
        ap.error("--part and --out, or --report FILES")
    run_part(args.part, args.out, args.data_dir, args.threads, args.cache, args.seeds, args.rules)


if __name__ == "__main__":
    main()
