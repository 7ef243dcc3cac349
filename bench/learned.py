"""Learned optimizers: meta-training curves and cost, then rewards beside hand-designed
optimizers under the same reward protocol (BENCHMARKS.md, "Learned optimizers").

    OMP_NUM_THREADS=1 python bench/learned.py                        # everything
    OMP_NUM_THREADS=1 python bench/learned.py --skip-train           # reuse the files
    OMP_NUM_THREADS=1 python bench/learned.py --hrnn-steps 300 --seeds 0

1. Meta-trains (``searchlab.learned.meta_train``, tracking off) the hierarchical RNN, the
   three LWA variants, the k-momentums normalized-input optimizer and the multiscale-Adam
   MLP on the problem ensemble (``task=ensemble``, its training distribution), seed 0,
   into ``<out>/<kind>.pt``; prints each one's meta-loss curve (mean per tenth of the
   iterations) and CPU-seconds.
2. Scores on ``ensemble`` at ``fast`` (7 lrs x 400 steps, evaluation seeds ``--seeds``):
   the learned optimizers and the rules adam, rmsprop (their lr tuned by the same sweep).
3. Scores on ``mnist1d`` at ``fast``: the hierarchical RNN, the best LWA (by its ensemble
   reward), untrained LWA (uniform weights) beside g (SGD), adam, PowerSign.
4. ``--paper TASK [--data-dir PATH]`` (instead of 1-3, using the files of 1): scores the same
   rows plus the best searched rule of the mnist1d verdict (``--searched``) on ``TASK``
   (``mnist1d`` or ``cifar10``) at the ``paper`` fidelity.  CIFAR-10 rows take minutes to
   an hour each, so every (row, seed) is journaled to ``<out>/paper-<task>.jsonl`` as it
   finishes and a rerun skips the finished ones (``--report`` only prints the table).

       OMP_NUM_THREADS=1 python bench/learned.py --paper mnist1d --seeds 0 1
       OMP_NUM_THREADS=1 python bench/learned.py --paper cifar10 --seeds 0 \
           --data-dir ../shared/data/cifar10-jpeg.tar.gz

Results go to ``<out>/results.json``; the tables are printed as Markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import searchlab  # noqa: E402,F401  (first: it pins torch's kernels and numpy's OpenBLAS, searchlab.kernels)

import torch  # noqa: E402


from searchlab.evaluate import Evaluator  # noqa: E402
from searchlab.learned import load_learned, meta_train  # noqa: E402
from searchlab.learned.metatrain import MetaTrainConfig  # noqa: E402
from searchlab.learned.scoring import score_learned  # noqa: E402

RULES = {"SGD": "g", "Adam": "adam", "RMSProp": "rmsprop", "PowerSign": "exp(sign(g)*sign(m))*g"}
#: evolution's best re-scored rule of the mnist1d verdict (results/verdict/summary.md)
SEARCHED = "clip(0.01*w, 1e-5) - -(sign(g) + drop(sign_m, 0.3))"
#: its discovery compute: the mean summed child-training CPU-seconds of one evolution
#: search of that verdict (300 evaluations; results/verdict/summary.md)
SEARCHED_CPU = 407.0


def curve(losses: list[float], parts: int = 10) -> list[float]:
    n = len(losses)
    out = []
    for i in range(parts):
        chunk = [x for x in losses[i * n // parts:(i + 1) * n // parts] if math.isfinite(x)]
        out.append(sum(chunk) / len(chunk) if chunk else math.nan)
    return out


def mean(xs: list[float]) -> float:
    xs = [x for x in xs if isinstance(x, (int, float)) and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else math.nan


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-learned"))
    ap.add_argument("--hrnn-steps", type=int, default=600)
    ap.add_argument("--steps", type=int, default=300, help="meta-iterations of the others")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-mnist1d", action="store_true")
    ap.add_argument("--paper", choices=["mnist1d", "cifar10"], default=None,
                    help="part 4 only: score the rows at the paper fidelity on this task")
    ap.add_argument("--data-dir", default=None, help="cifar10: ImageFolder tree or .tar.gz")
    ap.add_argument("--searched", default=SEARCHED, help="the searched rule row of part 4")
    ap.add_argument("--searched-cpu", type=float, default=SEARCHED_CPU,
                    help="part 4: the CPU-seconds of the search that found --searched")
    ap.add_argument("--rows", nargs="+", default=None, help="part 4: only these rows")
    ap.add_argument("--report", action="store_true", help="part 4: print the journal only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.paper is not None:
        return paper_part(args, out)
    kinds = {"hrnn": args.hrnn_steps, "lwa-a": args.steps, "lwa-b": args.steps,
             "lwa-c": args.steps, "ni-momentums": args.steps, "msadam-mlp": args.steps}
    report: dict = {"meta": {}, "ensemble": {}, "mnist1d": {}}

    # 1. meta-training -------------------------------------------------------------------
    for kind, steps in kinds.items():
        f = out / f"{kind}.pt"
        if not (args.skip_train and f.is_file()):
            t0 = time.perf_counter()
            meta_train(MetaTrainConfig(optimizer=kind, task="ensemble", steps=steps, seed=0), f)
            print(f"meta-trained {kind} in {time.perf_counter() - t0:.0f} s wall", file=sys.stderr)
        lo = load_learned(f)
        report["meta"][kind] = {"iterations": lo.meta["iterations"],
                                "cpu_seconds": lo.cpu_seconds,
                                "curve": curve(lo.meta["losses"])}
    print("\n### Meta-training (task=ensemble, seed 0)\n")
    print("| optimizer | meta-iterations | CPU-s | meta-loss by tenth of the run (first -> last) |")
    print("|---|---:|---:|---|")
    for kind, m in report["meta"].items():
        c = " ".join(f"{x:.2f}" for x in m["curve"])
        print(f"| {kind} | {m['iterations']} | {m['cpu_seconds']:.0f} | {c} |")

    # 2. the problem ensemble --------------------------------------------------------------
    def score_all(task: str, learned: dict[str, str], rules: dict[str, str]) -> dict:
        rows: dict = {}
        for name, rule in rules.items():
            ev = Evaluator(task, "fast", threads=1)
            rs = [ev.evaluate(rule, s, test=True) for s in args.seeds]
            rows[name] = {"val": [r.reward for r in rs],
                          "test": [r.extra.get("test_reward", math.nan) for r in rs],
                          "lr": [r.best_lr for r in rs],
                          "cpu": sum(r.extra.get("cpu_seconds", 0.0) for r in rs),
                          "discovery_cpu": 0.0, "status": [r.status for r in rs]}
        for name, f in learned.items():
            rs = [score_learned(f, task, "fast", s, test=True, threads=1) for s in args.seeds]
            rows[name] = {"val": [r.reward for r in rs],
                          "test": [r.extra.get("test_reward", math.nan) for r in rs],
                          "lr": [r.best_lr for r in rs],
                          "cpu": sum(r.extra.get("cpu_seconds", 0.0) for r in rs),
                          "discovery_cpu": rs[0].extra.get("meta_cpu_seconds", 0.0),
                          "status": [r.status for r in rs]}
        return rows

    def table(title: str, rows: dict) -> None:
        print(f"\n### {title} (fast fidelity, evaluation seeds {args.seeds})\n")
        print("| optimizer | val reward (mean) | per seed | test (mean) | best lr | "
              "scoring CPU-s | discovery CPU-s |")
        print("|---|---:|---|---:|---|---:|---:|")
        for name, r in sorted(rows.items(), key=lambda kv: -mean(kv[1]["val"])):
            per = " / ".join(f"{v:.4f}" for v in r["val"])
            lrs = " / ".join(f"{x:g}" if x is not None else "-" for x in r["lr"])
            print(f"| {name} | {mean(r['val']):.4f} | {per} | {mean(r['test']):.4f} | {lrs} | "
                  f"{r['cpu']:.0f} | {r['discovery_cpu']:.0f} |")

    learned = {f"learned {k}": str(out / f"{k}.pt") for k in kinds}
    learned["lwa (untrained, uniform)"] = "lwa-a"
    ens = score_all("ensemble", learned, {"Adam": "adam", "RMSProp": "rmsprop"})
    report["ensemble"] = ens
    table("Problem ensemble (the meta-training distribution)", ens)
    best_lwa = max((k for k in ens if k.startswith("learned lwa")), key=lambda k: mean(ens[k]["val"]))

    # 3. mnist1d ---------------------------------------------------------------------------
    if not args.skip_mnist1d:
        chosen = {"learned hrnn": learned["learned hrnn"], best_lwa: learned[best_lwa],
                  "lwa (untrained, uniform)": "lwa-a"}
        mn = score_all("mnist1d", chosen, {k: RULES[k] for k in ("SGD", "Adam", "PowerSign")})
        report["mnist1d"] = mn
        table("MNIST-1D (never seen in meta-training)", mn)
    (out / "results.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"\nresults: {out / 'results.json'}", file=sys.stderr)
    return 0


def mean_sd(xs: list[float]) -> str:
    xs = [x for x in xs if isinstance(x, (int, float)) and math.isfinite(x)]
    if len(xs) < 2:
        return f"{mean(xs):.4f}"
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    return f"{m:.4f} +- {sd:.4f}"


def paper_part(args: argparse.Namespace, out: Path) -> int:
    """Part 4: the learned rows beside SGD, Adam, PowerSign and the best searched rule at the
    ``paper`` fidelity, journaled per (row, seed)."""
    task = args.paper
    options = {"data_dir": args.data_dir} if task == "cifar10" and args.data_dir else {}
    learned = {"learned hrnn": out / "hrnn.pt", "learned lwa-a": out / "lwa-a.pt",
               "lwa (untrained, uniform)": "lwa-a"}
    searched = "best searched rule (mnist1d verdict)"
    rules = {"SGD": "g", "Adam": "adam", "PowerSign": RULES["PowerSign"], searched: args.searched}
    found_cpu = {searched: args.searched_cpu}     # hand-designed rules: 0
    for f in learned.values():
        if isinstance(f, Path) and not f.is_file():
            print(f"error: {f} is missing: run `python bench/learned.py` first", file=sys.stderr)
            return 2
    journal = out / f"paper-{task}.jsonl"
    done: dict[tuple[str, int], dict] = {}
    if journal.is_file():
        for line in journal.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:    # a line cut by a kill: that row runs again
                continue
            done[(rec["row"], rec["seed"])] = rec
    names = list(rules) + list(learned)
    if args.rows:
        names = [n for n in names if n in args.rows]
    for name in ([] if args.report else names):
        for seed in args.seeds:
            if (name, seed) in done:
                continue
            t0 = time.perf_counter()
            if name in rules:
                ev = Evaluator(task, "paper", threads=1, **options)
                r = ev.evaluate(rules[name], seed, test=True)
                discovery = found_cpu.get(name, 0.0)
            else:
                r = score_learned(learned[name], task, "paper", seed, test=True, threads=1,
                                  **options)
                discovery = r.extra.get("meta_cpu_seconds", 0.0)
            rec = {"row": name, "seed": seed, "rule": r.rule, "status": r.status,
                   "val": r.reward, "test": r.extra.get("test_reward", math.nan),
                   "lr": r.best_lr, "cpu": r.extra.get("cpu_seconds", 0.0),
                   "wall": time.perf_counter() - t0, "discovery_cpu": discovery,
                   "load": os.getloadavg()[0]}
            with open(journal, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec) + "\n")
            done[(name, seed)] = rec
            print(f"{name} seed {seed}: {r.status} val {r.reward:.4f} in {rec['wall']:.0f} s",
                  file=sys.stderr)
    print(f"\n### {task} at the `paper` fidelity (load average {os.getloadavg()[0]:.1f})\n")
    print("| optimizer | val reward (mean +- sd) | per seed | test (mean +- sd) | best lr | "
          "scoring CPU-s per seed | discovery CPU-s |")
    print("|---|---:|---|---:|---|---:|---:|")
    rows: dict[str, list[dict]] = {}
    for (name, _seed), rec in sorted(done.items(), key=lambda kv: kv[0][1]):
        rows.setdefault(name, []).append(rec)
    for name, recs in sorted(rows.items(), key=lambda kv: -mean([r["val"] for r in kv[1]])):
        per = " / ".join(f"{r['val']:.4f}" + ("" if r["status"] == "ok" else f" ({r['status']})")
                         for r in recs)
        lrs = " / ".join(f"{r['lr']:g}" if r["lr"] is not None else "-" for r in recs)
        print(f"| {name} | {mean_sd([r['val'] for r in recs])} | {per} | "
              f"{mean_sd([r['test'] for r in recs])} | {lrs} | "
              f"{mean([r['cpu'] for r in recs]):.0f} | "
              f"{found_cpu.get(name, recs[0]['discovery_cpu']):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
