"""The mnist1d verdict (issue 10, point 7), run in steps across sessions.

Every registered strategy x seeds x budget on mnist1d at the comparison fidelity, space
scratch, on the process pool (``configs/experiment/verdict.yaml``).  It takes hours on 2
cores, so it is resumable at every level:

* ``run``: ``searchlab compare config=experiment/verdict`` into ``runs/verdict`` with its
  own run directory ``runs/verdict-store`` (reward cache, MLflow store) and
  ``resume=true``: finished searches are skipped, interrupted ones continue from their
  checkpoints or journals, and finished ones are *extended* when ``--budget`` grows.
  Searches run seed by seed, so a stop half-way leaves the same seeds for every strategy.
* ``export``: copies the report (``summary.md``, the statistics CSVs, ``report.html``) and
  the compressed reward cache into ``results/verdict/`` for committing.  The cache holds
  every evaluation made; on a new machine ``restore`` puts it back, and ``run`` then
  replays every search already made from it in seconds (strategies are deterministic
  given their seed and the rewards) and continues where the last session stopped.

    .venv/bin/python bench/verdict.py run --seeds 5 --budget 100    # first step
    .venv/bin/python bench/verdict.py export                        # before the session ends
    .venv/bin/python bench/verdict.py restore                       # on a new checkout
    .venv/bin/python bench/verdict.py run --seeds 10 --budget 300   # the full verdict
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runs" / "verdict"
STORE = ROOT / "runs" / "verdict-store"
EXPORT = ROOT / "results" / "verdict"
CACHE = STORE / "cache" / "rewards.sqlite"


def run(seeds: int, budget: int, workers: int) -> int:
    cmd = [str(ROOT / ".venv" / "bin" / "searchlab"), "compare", "config=experiment/verdict",
           f"out={OUT}", f"run_dir={STORE}", "resume=true", f"seeds={seeds}",
           f"budget={budget}", f"workers={workers}", "quiet=true"]
    print("$", " ".join(cmd), flush=True)
    print(f"load average {os.getloadavg()}", flush=True)
    t0 = time.time()
    rc = subprocess.call(cmd, cwd=ROOT)
    print(f"wall time {time.time() - t0:.0f} s, exit {rc}", flush=True)
    return rc


def export() -> int:
    EXPORT.mkdir(parents=True, exist_ok=True)
    names = ["summary.md", "summary.csv", "runs.csv", "iqm.csv", "fixed_target.csv",
             "probability_of_improvement.csv", "report.html", "references.json"]
    for name in names:
        if (OUT / name).is_file():
            shutil.copy2(OUT / name, EXPORT / name)
    if CACHE.is_file():
        import sqlite3

        # a consistent copy of the live WAL database, then compressed
        tmp = EXPORT / "rewards.sqlite"
        src = sqlite3.connect(str(CACHE))
        dst = sqlite3.connect(str(tmp))
        src.backup(dst)
        dst.close()
        src.close()
        with open(tmp, "rb") as f, gzip.open(EXPORT / "rewards.sqlite.gz", "wb", 9) as g:
            shutil.copyfileobj(f, g)
        tmp.unlink()
    import torch

    import searchlab

    finished = sorted(p.parent.name for p in OUT.glob("runs/*/results.json"))
    (EXPORT / "VERSIONS.json").write_text(json.dumps({
        "searchlab": searchlab.__version__, "torch": torch.__version__,
        "python": platform.python_version(), "machine": platform.machine(),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True,
                                 capture_output=True).stdout.strip(),
        "exported": time.strftime("%Y-%m-%d %H:%M:%S"), "finished_searches": finished},
        indent=1) + "\n")
    print(f"exported to {EXPORT} ({len(finished)} finished searches)")
    return 0


def restore() -> int:
    src = EXPORT / "rewards.sqlite.gz"
    if not src.is_file():
        print(f"nothing to restore: no {src}", file=sys.stderr)
        return 1
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    if CACHE.exists():
        print(f"{CACHE} exists: not overwritten", file=sys.stderr)
        return 1
    with gzip.open(src, "rb") as f, open(CACHE, "wb") as g:
        shutil.copyfileobj(f, g)
    print(f"restored {CACHE}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--seeds", type=int, default=10)
    r.add_argument("--budget", type=int, default=300)
    r.add_argument("--workers", type=int, default=2)
    sub.add_parser("export")
    sub.add_parser("restore")
    a = p.parse_args()
    if a.cmd == "run":
        return run(a.seeds, a.budget, a.workers)
    return export() if a.cmd == "export" else restore()


if __name__ == "__main__":
    sys.exit(main())
