"""How much does a learned optimizer depend on its meta-training seed?

Meta-trains one learned optimizer (default the hierarchical RNN, ``hrnn``) with several
seeds and otherwise the settings of ``bench/learned.py`` (task ``ensemble``, 600
meta-iterations for the hrnn), then scores each on the problem ensemble and on mnist1d at
``fast`` with evaluation seeds 0 and 1 (validation reward and held-out test), through the
CLI a user would run:

    searchlab meta-train optimizer=hrnn task=ensemble steps=600 seed=S out=...
    searchlab evaluate learned:... --task ensemble --seed E --test --json --no-cache

Prints one row per meta-training seed and the mean, standard deviation and range over
seeds, with Adam's reward (the rule ``adam``, same protocol) for comparison.  A
meta-trained file already in ``--out`` (named by optimizer, steps, settings and seed) is reused, so
a stopped run continues.

    OMP_NUM_THREADS=1 .venv/bin/python bench/meta_seeds.py --seeds 5
    OMP_NUM_THREADS=1 .venv/bin/python bench/meta_seeds.py --seeds 5 --set validate_every=25 --set select=best

``--set KEY=VALUE`` passes more ``searchlab meta-train`` settings (here: keep the
meta-parameters of the best meta-validation score); the table's "saved iteration" is the
meta-iteration whose meta-parameters each file holds.  Each run writes its rows to
``<out>/<optimizer>-<steps><settings>.json``; ``--paired OTHER.json`` then prints, per
task, the per-seed differences of the validation rewards against that run and a 95 %
bootstrap CI of their mean:

    OMP_NUM_THREADS=1 .venv/bin/python bench/meta_seeds.py --seeds 5 --set validate_every=25 --set select=best --paired runs/meta-seeds/hrnn-600.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from searchlab.learned.files import load_learned  # noqa: E402
CLI = str(ROOT / ".venv" / "bin" / "searchlab")
TASKS = ("ensemble", "mnist1d")
EVAL_SEEDS = (0, 1)


def _evaluate(rule: str, task: str, seed: int) -> tuple[float, float]:
    p = subprocess.run([CLI, "evaluate", rule, "--task", task, "--seed", str(seed), "--test",
                        "--json", "--no-cache"], capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(f"evaluate {rule} on {task} failed:\n{p.stderr}")
    r = json.loads(p.stdout)
    return float(r["reward"]), float(r["extra"]["test_reward"])


def _scores(rule: str) -> dict[str, tuple[float, float]]:
    """task -> (mean validation reward, mean test accuracy) over the evaluation seeds."""
    out = {}
    for task in TASKS:
        vals = [_evaluate(rule, task, e) for e in EVAL_SEEDS]
        out[task] = (statistics.mean(v for v, _ in vals), statistics.mean(t for _, t in vals))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--optimizer", default="hrnn")
    ap.add_argument("--steps", type=int, default=600, help="meta-iterations")
    ap.add_argument("--seeds", type=int, default=5, help="meta-training seeds 0..N-1")
    ap.add_argument("--out", default=str(ROOT / "runs" / "meta-seeds"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="another meta-train setting, e.g. --set validate_every=25 "
                         "--set select=best (repeatable; part of the files' names)")
    ap.add_argument("--paired", metavar="RESULTS.json",
                    help="another run's results file (written by this script): print the "
                         "per-seed differences (this run minus that one) with a 95 %% "
                         "bootstrap CI of their mean")
    a = ap.parse_args(argv)
    for item in a.set:
        if "=" not in item:
            ap.error(f"--set {item!r}: expected KEY=VALUE")
    tag = "".join(f"-{item.replace('=', '_')}" for item in a.set)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"# {a.optimizer}, {a.steps} meta-iterations, task ensemble {' '.join(a.set)}; scored at fast, "
          f"evaluation seeds {list(EVAL_SEEDS)}; load average {os.getloadavg()}", flush=True)
    adam = _scores("adam")
    rows, chosen, cpu = [], [], []
    for s in range(a.seeds):
        path = out / f"{a.optimizer}-{a.steps}{tag}-s{s}.pt"
        t0 = time.time()
        if not path.is_file():
            p = subprocess.run([CLI, "meta-train", f"optimizer={a.optimizer}", "task=ensemble",
                                f"steps={a.steps}", f"seed={s}", f"out={path}", "tracking=none",
                                "quiet=true", *a.set], capture_output=True, text=True, cwd=ROOT)
            if p.returncode != 0:
                raise SystemExit(f"meta-train seed {s} failed:\n{p.stderr}")
        t1 = time.time()
        rows.append(_scores(f"learned:{path}"))
        meta = load_learned(path).meta
        chosen.append(meta.get("selected_iteration", meta.get("iterations")))
        cpu.append(float(meta.get("cpu_seconds", float("nan"))))
        print(f"seed {s}: meta-train {t1 - t0:.0f} s, scoring {time.time() - t1:.0f} s",
              file=sys.stderr, flush=True)
    head = " | ".join(f"{t} val | {t} test" for t in TASKS)
    print(f"\n| meta-training seed | saved iteration | meta-training CPU-s | {head} |")
    print("|---|---:|---:|" + "---:|" * (2 * len(TASKS)))
    for s, r in enumerate(rows):
        print(f"| {s} | {chosen[s]} | {cpu[s]:.0f} | "
              + " | ".join(f"{r[t][0]:.4f} | {r[t][1]:.4f}" for t in TASKS) + " |")
    def std(x: list[float]) -> float:
        return statistics.stdev(x) if len(x) > 1 else float("nan")

    for name, f in (("mean", statistics.mean), ("std", std), ("min", min), ("max", max)):
        cells = [f"{f([r[t][i] for r in rows]):.4f}" for t in TASKS for i in (0, 1)]
        print(f"| {name} | | | " + " | ".join(cells) + " |")
    print("| Adam (rule `adam`) | | | " + " | ".join(f"{adam[t][0]:.4f} | {adam[t][1]:.4f}"
                                                   for t in TASKS) + " |")
    better = {t: sum(r[t][0] > adam[t][0] for r in rows) for t in TASKS}
    print("\nseeds whose validation reward beats Adam's: "
          + ", ".join(f"{t} {better[t]} of {len(rows)}" for t in TASKS))
    results = out / f"{a.optimizer}-{a.steps}{tag}.json"
    results.write_text(json.dumps({
        "optimizer": a.optimizer, "steps": a.steps, "settings": a.set,
        "eval_seeds": list(EVAL_SEEDS), "adam": adam,
        "seeds": [{"seed": s, "saved_iteration": chosen[s], "cpu_seconds": cpu[s], **rows[s]}
                  for s in range(len(rows))]}, indent=1))
    print(f"results: {results}")
    if a.paired:
        _paired(json.loads(Path(a.paired).read_text()), rows, a.paired)
    return 0


def _paired(base: dict, rows: list[dict[str, tuple[float, float]]], name: str) -> None:
    """Per-seed differences of the validation rewards, this run minus ``base``, and a
    95 % percentile bootstrap CI of their mean (scipy.stats.bootstrap, 10,000 resamples)."""
    import numpy as np
    from scipy.stats import bootstrap

    by_seed = {int(r["seed"]): r for r in base["seeds"]}
    seeds = [s for s in range(len(rows)) if s in by_seed]
    print(f"\npaired by meta-training seed ({len(seeds)} seeds), this run minus {name} "
          f"({' '.join(base['settings']) or 'defaults'}, {base['steps']} iterations):")
    for t in TASKS:
        d = np.array([rows[s][t][0] - by_seed[s][t][0] for s in seeds])
        ci = (bootstrap((d,), np.mean, confidence_level=0.95, method="percentile",
                        n_resamples=10_000, random_state=0).confidence_interval
              if len(d) > 1 and np.ptp(d) > 0 else None)
        band = f"[{ci.low:+.3f}, {ci.high:+.3f}]" if ci is not None else "[n/a]"
        print(f"  {t} val: mean {d.mean():+.3f} {band}; per seed "
              + ", ".join(f"{x:+.3f}" for x in d))
    if len(seeds) < 5:
        print("  (fewer than 5 seeds: the interval means little)")


if __name__ == "__main__":
    raise SystemExit(main())
