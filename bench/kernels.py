"""Rewards and CPU time with torch's CPU kernels pinned to AVX2 (searchlab's default) and
with torch's own choice, side by side on the 8 reference rules.

    .venv/bin/python bench/kernels.py                       # compare, seeds 0 1, 1 thread
    .venv/bin/python bench/kernels.py --fidelity fast --seeds 3

Each setting runs in its own subprocess (the kernels are chosen once per process):
``pinned`` leaves ``import searchlab`` to set ``ATEN_CPU_CAPABILITY=avx2``, ``native``
sets ``SEARCHLAB_CPU_KERNELS=native`` (torch picks AVX-512 where the CPU has it).  The
two subprocesses alternate rule by rule, so their CPU times are measured under the same
load.  On a machine without AVX-512 both run AVX2 and every reward must agree; on one
with AVX-512 the table shows how far the rounding moves a reward.  Reward cache off.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from noise import RULES  # noqa: E402  (the 8 reference rules of issue 10)

WORKER = """
import json, sys, time
import searchlab, searchlab.kernels as k
from searchlab.evaluation import Evaluator
ev = Evaluator("mnist1d", sys.argv[1], threads=1)
ev.load()
print(json.dumps({"kernels": k.current()}), flush=True)
for line in sys.stdin:
    rule, seed = json.loads(line)
    c0 = time.process_time()
    r = ev.evaluate(rule, seed, use_cache=False)
    print(json.dumps({"reward": r.reward, "status": r.status, "lr": r.best_lr,
                      "cpu": time.process_time() - c0}), flush=True)
"""


def start(setting: str, fidelity: str) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ATEN_CPU_CAPABILITY", "SEARCHLAB_CPU_KERNELS")}
    env["OMP_NUM_THREADS"] = "1"
    if setting == "native":
        env["SEARCHLAB_CPU_KERNELS"] = "native"
    p = subprocess.Popen([sys.executable, "-c", WORKER, fidelity], cwd=ROOT, env=env, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdout is not None
    return p, json.loads(p.stdout.readline())["kernels"]


def ask(p: subprocess.Popen[str], rule: str, seed: int) -> dict:
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(json.dumps([rule, seed]) + "\n")
    p.stdin.flush()
    return json.loads(p.stdout.readline())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fidelity", default="compare")
    ap.add_argument("--seeds", type=int, default=2)
    a = ap.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    procs = {s: start(s, a.fidelity) for s in ("pinned", "native")}
    kinds = {s: k for s, (_, k) in procs.items()}
    print(f"fidelity {a.fidelity}, 1 torch thread; pinned runs {kinds['pinned']} kernels, "
          f"native runs {kinds['native']}\n")
    print("| rule | seed | pinned | native | abs diff |\n|---|---:|---:|---:|---:|")
    diffs, cpu = [], {"pinned": 0.0, "native": 0.0}
    for label, rule in RULES:
        for seed in range(a.seeds):
            out = {s: ask(p, rule, seed) for s, (p, _) in procs.items()}
            for s in cpu:
                cpu[s] += out[s]["cpu"]
            d = abs(out["pinned"]["reward"] - out["native"]["reward"])
            diffs.append(d)
            print(f"| {label} | {seed} | {out['pinned']['reward']:.4f} | "
                  f"{out['native']['reward']:.4f} | {d:.4f} |", flush=True)
    for p, _ in procs.values():
        assert p.stdin is not None
        p.stdin.close()
        p.wait()
    n = len(diffs)
    print(f"\n{sum(d > 0 for d in diffs)} of {n} rewards differ; largest {max(diffs):.4f}, "
          f"median {statistics.median(diffs):.4f}")
    print(f"CPU s / eval: pinned {cpu['pinned'] / n:.2f}, native {cpu['native'] / n:.2f} "
          f"(native / pinned {cpu['native'] / cpu['pinned']:.2f}x)")
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
