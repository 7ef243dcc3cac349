"""The tabular benchmark's speed goal (issue 12): every strategy x 30 seeds x 1,000 unique
evaluations on ``task=table`` in under 5 minutes on 2 cores, full report included.

    .venv/bin/python bench/table_compare.py                       # the judged command
    .venv/bin/python bench/table_compare.py --seeds 5 --budget 200   # a quick look
    .venv/bin/python bench/table_compare.py --table path/to/other.json.gz
    .venv/bin/python bench/table_compare.py --synthetic runs/table   # speed only, see below

Runs, as a new user would, ``searchlab compare task=table strategies=[random,evolution,
gp,nos-ppo,reinforce,sb3] seeds=30 budget=1000`` in a fresh run directory (the MLflow
store included, as by default; on a lookup task a comparison runs one search per core,
``searches=N`` among the extra words changes that), and prints the wall time of the
whole command, the load average before and after (the machine is shared), the
per-search time and whether the report was written.  Extra ``key=value`` words are
passed to ``searchlab compare``.

``--synthetic BUILD_DIR`` measures the speed before the real table is finished: a table
with the real space, strings and rows of the build directory (its probes) but
*made-up* records (rewards drawn from a fixed generator, 2 seeds per row, the shipped
table's shape).  Its timings are the lookup machinery's; its rewards mean nothing.
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


def synthetic_table(build_dir: Path, path: Path) -> Path:
    """A table of the build directory's space with made-up records (speed tests only)."""
    import numpy as np

    from searchlab.tabular.build import BuildSpec, BuildState, string_rows
    from searchlab.tabular.table import Record, Row, Table

    state = BuildState(build_dir, BuildSpec())
    rng = np.random.default_rng(0)
    string_row, problems = string_rows(state.functions, [fp for fp, _ in state.rows])

    def rows(pairs):
        out = []
        for fp, rule in pairs:
            base = rng.uniform(0.1, 0.9)
            out.append(Row(fp, rule, tuple(
                Record(s, float(np.clip(base + rng.normal(0, 0.02), 0, 1)), float(base),
                       0.1, "ok", 1.2, 1.3) for s in (0, 1))))
        return out

    meta = {"name": "synthetic", "task": "mnist1d", "task_id": "mnist1d",
            "protocol": "synthetic", "seeds": [0, 1], "complete": False,
            "counts": {"rows": len(state.rows)}, "synthetic": True}
    return Table(meta, state.functions.space, list(state.functions.strings), string_row,
                 problems, rows(state.rows), rows(state.extras)).write(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=30)
    p.add_argument("--budget", type=int, default=1000)
    p.add_argument("--strategies", default=STRATEGIES)
    p.add_argument("--table", default=None, help="a table file (default: the shipped one)")
    p.add_argument("--keep", default=None, help="keep the output in this folder")
    p.add_argument("--synthetic", default=None, metavar="BUILD_DIR",
                   help="time a made-up table of this build directory's space (speed only)")
    p.add_argument("extra", nargs="*", help="more key=value words for searchlab compare")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="table-compare-"))
    out = Path(a.keep) if a.keep else tmp / "out"
    cmd = [str(ROOT / ".venv" / "bin" / "searchlab"), "compare", "task=table",
           f"strategies={a.strategies}", f"seeds={a.seeds}", f"budget={a.budget}",
           f"out={out}", f"run_dir={tmp / 'runs'}", "quiet=true"]
    table = a.table
    if a.synthetic:
        table = str(synthetic_table(Path(a.synthetic), tmp / "synthetic.json.gz"))
        print(f"SYNTHETIC table (made-up rewards, for timing only): {table}")
    if table:
        cmd.append(f"task.options.table={table}")
    cmd += a.extra
    n = len(a.strategies.strip("[]").split(",")) * a.seeds
    print("$", " ".join(cmd), flush=True)
    print(f"load average before: {os.getloadavg()}", flush=True)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    print(f"load average after:  {os.getloadavg()}")
    judged = (a.seeds, a.budget, a.strategies) == (30, 1000, STRATEGIES) and not a.synthetic
    verdict = ("met" if r.returncode == 0 and wall < 300 else "NOT met") if judged else \
        "not the judged configuration (30 seeds x 1000, 6 strategies, the real table)"
    print(f"exit {r.returncode}; wall {wall:.1f} s for {n} searches x {a.budget} "
          f"({wall / n:.2f} s per search); goal < 300 s: {verdict}")
    if r.returncode != 0:
        print(r.stderr[-3000:], file=sys.stderr)
    report = out / "report.html"
    print(f"report written: {report.is_file()} ({out})")
    if not a.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
