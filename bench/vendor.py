"""Does this machine reproduce the shipped table's rewards?  (CPU vendor check)

    .venv/bin/python bench/vendor.py                 # 20 sampled table rows, fresh here
    .venv/bin/python bench/vendor.py --rows 40 --seed 1

The shipped mnist1d table was computed on AMD EPYC machines (``Table.cpu_vendor``).
This script re-trains a seeded random sample of its measured rows (seed-0 records with
``ok`` status and reward > 0.5, plus SGD ``g*1``) with a fresh evaluator of the table's
task and fidelity, and prints per row the table's reward, the fresh one and whether they
are equal, then how many are equal and the median and largest difference. On AMD EPYC
machines, the table's vendor, every row checked so far re-evaluated exactly (14 of 14 in
BENCHMARKS.md, "The machine's CPU kernels"; ``tests/test_tabular.py`` checks 4 there).

It then shows where the rounding comes from: for each of a few torch functions, a hash
of its output on fixed inputs under three MKL settings (``MKL_ENABLE_INSTRUCTIONS=AVX2``,
searchlab's default cap; ``MKL_CBWR=COMPATIBLE`` on top of that cap;
``MKL_ENABLE_INSTRUCTIONS=AVX512``, no cap on a CPU with AVX-512), each in its own process. A
function whose hash changes with MKL's settings is computed by MKL here (its vector
math library or its matrix products), and MKL chooses its code by CPU vendor as well as
by instruction set.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import searchlab  # noqa: E402,F401  (first: it pins torch's kernels and numpy's OpenBLAS, searchlab.kernels)

_HASHES = r"""
import searchlab, hashlib, json, numpy as np, torch
torch.set_num_threads(1)
rng = np.random.default_rng(0)
x = np.abs(rng.normal(size=100_000)) + 1e-3
h = lambda t: hashlib.sha1(t.numpy().tobytes()).hexdigest()[:8]
t64, t32 = torch.from_numpy(x), torch.from_numpy(x).float()
a = torch.from_numpy(rng.normal(size=(700, 320))).float()
b = torch.from_numpy(rng.normal(size=(320, 10))).float()
out = {"float64 sqrt": h(torch.sqrt(t64)), "float32 sqrt": h(torch.sqrt(t32)),
       "float32 exp": h(torch.exp(t32.clamp(max=80))), "float32 log": h(torch.log(t32)),
       "float32 tanh": h(torch.tanh(t32)), "float32 sin": h(torch.sin(t32)),
       "float32 matmul": h(a @ b)}
print(json.dumps(out))
"""


def _hashes(env: dict[str, str]) -> dict[str, str]:
    full = {**os.environ, **env}
    out = subprocess.run([sys.executable, "-c", _HASHES], env=full, capture_output=True,
                         text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=20, help="sampled table rows (default 20)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    args = ap.parse_args(argv)

    import torch

    from searchlab import kernels
    from searchlab.evaluation import Evaluator
    from searchlab.tabular.table import Table

    torch.set_num_threads(1)
    table = Table.load()
    print(f"# this machine: {kernels.cpu_vendor() or 'unknown vendor'}, torch "
          f"{torch.__version__}, {kernels.current()} kernels; the table: computed on "
          f"{table.cpu_vendor}, {table.meta['fidelity']}, load average "
          f"{os.getloadavg()[0]:.1f}")
    by_rule = {r.rule: r for r in table.rows}
    ok = [r for r in table.rows if r.records and r.records[0].seed == 0 and r.rule != "g*1"
          and r.records[0].status == "ok" and (r.records[0].reward or 0) > 0.5]
    sample = [by_rule["g*1"]] + random.Random(args.seed).sample(ok, args.rows - 1)
    ev = Evaluator(table.meta["task"], table.meta["fidelity"])
    diffs = []
    for row in sample:
        rec = row.records[0]
        got = ev.evaluate(row.rule, rec.seed, use_cache=False)
        d = abs((got.reward or 0.0) - (rec.reward or 0.0))
        diffs.append(d)
        print(f"{row.rule:40s} table {rec.reward:.4f}  fresh {got.reward:.4f}  "
              f"{'equal' if d == 0 else f'differs by {d:.4f}'}", flush=True)
    diffs.sort()
    print(f"\n{sum(d == 0 for d in diffs)} of {len(diffs)} rewards equal; median difference "
          f"{diffs[len(diffs) // 2]:.4f}, largest {diffs[-1]:.4f}")

    print("\n# which torch functions MKL computes here: output hashes with MKL capped at AVX2 "
          "(searchlab's default), MKL_CBWR=COMPATIBLE with that cap, MKL_ENABLE_INSTRUCTIONS=AVX512")
    runs = [_hashes({"MKL_ENABLE_INSTRUCTIONS": "AVX2"}), _hashes({"MKL_CBWR": "COMPATIBLE"}),
            _hashes({"MKL_ENABLE_INSTRUCTIONS": "AVX512"})]
    for name in runs[0]:
        hs = [r[name] for r in runs]
        print(f"{name:15s} {'  '.join(hs)}  "
              f"{'MKL (moves with its settings)' if len(set(hs)) > 1 else 'same'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
