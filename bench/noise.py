"""Reward noise: 8 reference rules x 6 evaluation seeds, 1 and 2 torch threads, per fidelity.

    .venv/bin/python bench/noise.py                                   # averaged, compare, fast; 1 and 2 threads
    .venv/bin/python bench/noise.py --fidelities "compare;fast" --out noise.jsonl
    .venv/bin/python bench/noise.py --report noise.jsonl              # the tables only

Every (thread setting, rule, seed, fidelity) is one evaluation on mnist1d with the reward
cache off (it really trains).  Each thread setting runs in its own subprocess, which sets
``torch.set_num_threads`` before anything else and passes the same count to the
``Evaluator``.  Within a subprocess the fidelities of one (rule, seed) run back to back,
so their CPU times (``time.process_time`` of the evaluation) are measured side by side
under the same machine load.  Results are appended to a JSONL journal as they finish; a
rerun with the same ``--out`` skips what the journal already holds (resumable).

The report, per fidelity and rule: mean, standard deviation (n - 1), min and max of the
reward over the seeds on 1 thread; the largest |reward(1 thread) - reward(2 threads)|
over the seeds; CPU seconds per evaluation (1 thread); then the median and max of the
standard deviations over the rules, the CPU-time ratio of each fidelity to the first
``--baseline`` (default ``fast``), and the load averages seen while measuring.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: (label, rule text): the eight reference rules of issue 10
RULES = [
    ("SGD", "g"), ("momentum", "m"), ("Adam", "adam"), ("RMSProp", "rmsprop"),
    ("PowerSign", "exp(sign(g)*sign(m))*g"), ("AddSign", "(1+sign(g)*sign(m))*g"),
    ("sign(m)", "sign(m)"), ("sign(m)*sqrt(g)", "sign(m)*sqrt(g)"),
]


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["fidelity_arg"], row["rule"], row["seed"], row["threads"])


def read_journal(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by an interrupted run
                continue
    return rows


def worker(args: argparse.Namespace) -> None:
    """One thread setting: evaluate what the journal does not hold yet."""
    sys.path.insert(0, str(ROOT))
    import searchlab  # noqa: F401  (first: it pins torch's kernels and numpy's OpenBLAS, searchlab.kernels)
    import torch

    torch.set_num_threads(args.threads)
    from searchlab.evaluate import Evaluator

    out = Path(args.out)
    done = {_key(r) for r in read_journal(out)}
    fids = _split(args.fidelities)
    evs = {f: Evaluator("mnist1d", f, threads=args.threads) for f in fids}
    next(iter(evs.values())).load()
    rules = [(l, r) for l, r in RULES if not args.rules or l in args.rules.split(",")]
    with out.open("a") as fh:
        for label, rule in rules:
            for seed in range(args.seeds):
                for f in fids:
                    key = (f, rule, seed, args.threads)
                    if key in done:
                        continue
                    ev = evs[f]
                    load0 = os.getloadavg()[0]
                    c0, t0 = time.process_time(), time.perf_counter()
                    r = ev.evaluate(rule, seed, use_cache=False)
                    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
                    row = {"fidelity_arg": f, "protocol": ev.protocol, "label": label,
                           "rule": rule, "seed": seed, "threads": torch.get_num_threads(),
                           "status": r.status, "reward": r.reward, "best_lr": r.best_lr,
                           "copies": r.extra.get("copies"), "cpu": cpu, "wall": wall,
                           "load": [load0, os.getloadavg()[0]], "torch": torch.__version__}
                    fh.write(json.dumps(row) + "\n")
                    fh.flush()
                    print(f"threads {args.threads}  {f:10s} {label:16s} seed {seed}  "
                          f"{r.status:8s} {r.reward:.4f}  lr {r.best_lr}  cpu {cpu:.2f} s",
                          flush=True)


def report(rows: list[dict[str, Any]], baseline: str) -> str:
    by: dict[tuple[str, str, int], dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        by[(r["fidelity_arg"], r["rule"], r["threads"])][r["seed"]] = r
    fids = list(dict.fromkeys(r["fidelity_arg"] for r in rows))
    rules = [(l, t) for l, t in RULES if any(r["rule"] == t for r in rows)]
    lines: list[str] = []
    summary: dict[str, dict[str, float]] = {}
    for f in fids:
        proto = next(r["protocol"] for r in rows if r["fidelity_arg"] == f)
        lines += [f"### fidelity `{f}` (protocol `{proto}`)", "",
                  "| rule | mean | std | min | max | best lrs | max abs(1t - 2t) | CPU s / eval |",
                  "|---|---|---|---|---|---|---|---|"]
        sds, diffs, cpus = [], [], []
        for label, rule in rules:
            one = by.get((f, rule, 1), {})
            two = by.get((f, rule, 2), {})
            vals = [one[s]["reward"] for s in sorted(one)]
            if len(vals) < 2:
                continue
            sd = statistics.stdev(vals)
            sds.append(sd)
            common = sorted(set(one) & set(two))
            d = max((abs(one[s]["reward"] - two[s]["reward"]) for s in common), default=float("nan"))
            if common:
                diffs.append(d)
            cpu = statistics.mean(one[s]["cpu"] for s in one)
            cpus.append(cpu)
            lrs = " ".join(f"{one[s]['best_lr']:g}" if one[s]["best_lr"] else "-" for s in sorted(one))
            lines.append(f"| {label} `{rule}` | {statistics.mean(vals):.4f} | {sd:.4f} | "
                         f"{min(vals):.4f} | {max(vals):.4f} | {lrs} | "
                         f"{d:.4f} ({len(common)} seeds) | {cpu:.2f} |")
        if not sds:
            continue
        summary[f] = {"median": statistics.median(sds), "max": max(sds),
                      "diff": max(diffs) if diffs else float("nan"), "cpu": statistics.mean(cpus)}
        lines += ["", f"median std {summary[f]['median']:.4f}, max std {summary[f]['max']:.4f}, "
                      f"max 1-vs-2-thread difference {summary[f]['diff']:.4f}, "
                      f"mean CPU {summary[f]['cpu']:.2f} s / eval", ""]
    lines += _side_by_side(by, fids, rules)
    if baseline in summary:
        lines.append("| fidelity | median std | max std | max abs(1t - 2t) | CPU s / eval | CPU x "
                     f"{baseline} |")
        lines.append("|---|---|---|---|---|---|")
        base_cpu = _paired_cpu(rows, baseline)
        for f, s in summary.items():
            ratio = _paired_cpu(rows, f) / base_cpu if base_cpu else float("nan")
            lines.append(f"| `{f}` | {s['median']:.4f} | {s['max']:.4f} | {s['diff']:.4f} | "
                         f"{s['cpu']:.2f} | {ratio:.2f} |")
    loads = [x for r in rows for x in r.get("load", [])]
    if loads:
        lines += ["", f"load average (1 min) while measuring: {min(loads):.1f} .. {max(loads):.1f} "
                      f"(median {statistics.median(loads):.1f}); {len(rows)} evaluations, "
                      f"torch {rows[0].get('torch', '?')}"]
    return "\n".join(lines)


def _side_by_side(by: dict[tuple[str, str, int], dict[int, dict[str, Any]]], fids: list[str],
                  rules: list[tuple[str, str]]) -> list[str]:
    """One row per rule, one column per fidelity: mean +- std [min, max] over the seeds
    (1 thread), the largest 1-vs-2-thread difference, CPU seconds per evaluation."""
    head = "| rule | " + " | ".join(f"`{f}`: mean ± std [min, max]; Δ1t/2t; CPU s" for f in fids) + " |"
    lines = ["### side by side", "", head, "|---|" + "---|" * len(fids)]
    for label, rule in rules:
        cells = []
        for f in fids:
            one, two = by.get((f, rule, 1), {}), by.get((f, rule, 2), {})
            vals = [one[k]["reward"] for k in sorted(one)]
            if len(vals) < 2:
                cells.append("-")
                continue
            common = sorted(set(one) & set(two))
            d = max((abs(one[k]["reward"] - two[k]["reward"]) for k in common), default=float("nan"))
            cpu = statistics.mean(one[k]["cpu"] for k in one)
            cells.append(f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f} "
                         f"[{min(vals):.3f}, {max(vals):.3f}]; {d:.3f}; {cpu:.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + [""]


def _split(text: str) -> list[str]:
    return [f.strip() for f in text.split(";") if f.strip()]


def _paired_cpu(rows: list[dict[str, Any]], f: str) -> float:
    """Total 1-thread CPU seconds of fidelity ``f`` over all (rule, seed)."""
    return sum(r["cpu"] for r in rows if r["fidelity_arg"] == f and r["threads"] == 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fidelities", default="averaged;compare;fast",
                    help="fidelities separated by ';' (names or overrides such as "
                         "'fast+final_epochs=5,final_copies=2'), default 'averaged;compare;fast'")
    ap.add_argument("--baseline", default="fast", help="the fidelity CPU ratios refer to")
    ap.add_argument("--seeds", type=int, default=6, help="evaluation seeds 0..N-1 (default 6)")
    ap.add_argument("--thread-counts", default="1,2", help="torch thread settings (default 1,2)")
    ap.add_argument("--rules", default="", help="only these labels (comma-separated)")
    ap.add_argument("--out", default="noise.jsonl", help="JSONL journal (appended, resumable)")
    ap.add_argument("--report", metavar="JSONL", help="print the tables of a journal and exit")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if args.report:
        print(report(read_journal(Path(args.report)), args.baseline))
        return
    print(f"# bench/noise.py: fidelities {args.fidelities}, seeds {args.seeds}, threads "
          f"{args.thread_counts}, load average {os.getloadavg()[0]:.1f}, out {args.out}", flush=True)
    t0 = time.perf_counter()
    for t in args.thread_counts.split(","):
        cmd = [sys.executable, __file__, "--worker", "--threads", t, "--out", args.out,
               "--fidelities", args.fidelities, "--seeds", str(args.seeds), "--rules", args.rules]
        subprocess.run(cmd, check=True)
    print(f"\n# wall time {time.perf_counter() - t0:.0f} s, load average {os.getloadavg()[0]:.1f}\n")
    print(report(read_journal(Path(args.out)), args.baseline))


if __name__ == "__main__":
    main()
