"""The tabular benchmark's speed goal (issue 12): every strategy x 30 seeds x 1,000 unique
evaluations on ``task=table`` in under 5 minutes on 2 cores, full report included.

    .venv/bin/python bench/table_compare.py                       # the judged command
    .venv/bin/python bench/table_compare.py --seeds 5 --budget 200   # a quick look
    .venv/bin/python bench/table_compare.py --table path/to/other.json.gz

Runs, as a new user would, ``searchlab compare task=table strategies=[random,evolution,
gp,nos-ppo,reinforce,sb3] seeds=30 budget=1000`` in a fresh run directory (the MLflow
store included, as by default), and prints the wall time of the whole command, the load
average before and after (the machine is shared), the per-search time and whether the
report was written.  Extra ``key=value`` words are passed to ``searchlab compare``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STRATEGIES = "[random,evolution,gp,nos-ppo,reinforce,sb3]"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=30)
    p.add_argument("--budget", type=int, default=1000)
    p.add_argument("--strategies", default=STRATEGIES)
    p.add_argument("--table", default=None, help="a table file (default: the shipped one)")
    p.add_argument("--keep", default=None, help="keep the output in this folder")
    p.add_argument("extra", nargs="*", help="more key=value words for searchlab compare")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="table-compare-"))
    out = Path(a.keep) if a.keep else tmp / "out"
    cmd = [str(ROOT / ".venv" / "bin" / "searchlab"), "compare", "task=table",
           f"strategies={a.strategies}", f"seeds={a.seeds}", f"budget={a.budget}",
           f"out={out}", f"run_dir={tmp / 'runs'}", "quiet=true"]
    if a.table:
        cmd.append(f"task.options.table={a.table}")
    cmd += a.extra
    n = len(a.strategies.strip("[]").split(",")) * a.seeds
    print("$", " ".join(cmd), flush=True)
    print(f"load average before: {os.getloadavg()}", flush=True)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    print(f"load average after:  {os.getloadavg()}")
    print(f"exit {r.returncode}; wall {wall:.1f} s for {n} searches x {a.budget} "
          f"({wall / n:.2f} s per search); goal: < 300 s -> "
          f"{'met' if r.returncode == 0 and wall < 300 else 'NOT met'}")
    if r.returncode != 0:
        print(r.stderr[-3000:], file=sys.stderr)
    report = out / "report.html"
    print(f"report written: {report.is_file()} ({out})")
    if not a.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
