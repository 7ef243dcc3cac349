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
    .venv/bin/python bench/verdict.py report                        # the seeds finished so far
    .venv/bin/python bench/verdict.py export                        # before the session ends
    .venv/bin/python bench/verdict.py restore                       # on a new checkout
    .venv/bin/python bench/verdict.py run --seeds 10 --budget 300   # the full verdict
    .venv/bin/python bench/verdict.py run --redo nos-ppo sb3        # make these searches again

``run`` refuses (exit 2) when the reward cache holds another CPU vendor's rewards than
this machine's, since a verdict should not mix them (``--mixed-vendors`` overrides).

``--fidelity averaged`` (before the command) does the same for the verdict at today's
default fidelity (``configs/experiment/verdict-averaged.yaml``, ``runs/verdict-averaged``,
``results/verdict-averaged``); the default, ``compare``, is the verdict that finished at
the fidelity that was the default then.
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

#: fidelity -> (experiment config, run name): the verdict at ``compare`` (finished, the
#: default when it ran) and at ``averaged`` (today's default)
PROTOCOLS = {"compare": ("experiment/verdict", "verdict"),
             "averaged": ("experiment/verdict-averaged", "verdict-averaged")}
CONFIG, _NAME = PROTOCOLS["compare"]
OUT = ROOT / "runs" / _NAME
STORE = ROOT / "runs" / f"{_NAME}-store"
EXPORT = ROOT / "results" / _NAME
CACHE = STORE / "cache" / "rewards.sqlite"


def use(fidelity: str) -> None:
    """Point the commands at the verdict of ``fidelity`` (its config, run and export
    folders)."""
    global CONFIG, OUT, STORE, EXPORT, CACHE
    CONFIG, name = PROTOCOLS[fidelity]
    OUT, STORE, EXPORT = ROOT / "runs" / name, ROOT / "runs" / f"{name}-store", ROOT / "results" / name
    CACHE = STORE / "cache" / "rewards.sqlite"


def redo(strategies: list[str]) -> None:
    """Delete the searches of ``strategies`` (their folders under ``runs/``) so that ``run``
    makes them again; the reward cache stays, so only rules never evaluated train.  Their
    old MLflow runs stay in the store, beside the new ones."""
    for name in strategies:
        for d in sorted((OUT / "runs").glob(f"{name}-s*")):
            if d.is_dir() and d.name[len(name) + 2:].isdigit():
                print(f"redo: removing {d}", flush=True)
                shutil.rmtree(d)


def vendor_mismatch() -> str | None:
    """Why this machine should not add to the verdict's reward cache, or None.

    Rewards round differently between CPU vendors (BENCHMARKS.md, "Intel CPUs"): new
    searches here would mix this machine's rewards with the cache's in one comparison."""
    if not CACHE.is_file():
        return None
    from searchlab.cache import RewardCache
    from searchlab.kernels import cpu_vendor

    cache = RewardCache(CACHE)
    try:
        theirs = sorted(cache.other_vendors())
    finally:
        cache.close()
    if theirs:
        return (f"{CACHE} holds rewards computed on {', '.join(theirs)} CPUs and this "
                f"machine is {cpu_vendor() or 'unknown'}'s: new searches would mix two "
                "vendors' rewards in one verdict (BENCHMARKS.md, 'Intel CPUs'). Run it on a "
                "machine of the cache's vendor, or pass --mixed-vendors to do it anyway")
    return None


def run(seeds: int, budget: int, workers: int) -> int:
    cmd = [str(ROOT / ".venv" / "bin" / "searchlab"), "compare", f"config={CONFIG}",
           f"out={OUT}", f"run_dir={STORE}", "resume=true", f"seeds={seeds}",
           f"budget={budget}", f"workers={workers}", "quiet=true"]
    print("$", " ".join(cmd), flush=True)
    print(f"load average {os.getloadavg()}", flush=True)
    t0 = time.time()
    rc = subprocess.call(cmd, cwd=ROOT)
    print(f"wall time {time.time() - t0:.0f} s, exit {rc}", flush=True)
    return rc


def report(seeds: int) -> int:
    """The report of the searches finished so far, for the seeds every strategy has
    finished (the comparison writes its own report only when all searches are done):
    reference rows re-scored (or read back), statistics, ``report.html``."""
    from searchlab.app import reference_section
    from searchlab.config import load_config
    from searchlab.report.comparison import write_report
    from searchlab.runfiles import load_runs

    cfg = load_config([f"config={CONFIG}", f"run_dir={STORE}", f"out={OUT}",
                       f"seeds={seeds}"])
    runs = load_runs(OUT)
    labels = list(dict.fromkeys(r.label for r in runs))
    by = {lab: {r.seed for r in runs if r.label == lab} for lab in labels}
    common = set.intersection(*by.values()) if by else set()
    runs = [r for r in runs if r.seed in common]
    if not runs:
        print("no seed is finished for every strategy yet", file=sys.stderr)
        return 1
    budget = min(r.unique for r in runs)
    print(f"report: {len(labels)} strategies x seeds {sorted(common)}, {budget} unique "
          "evaluations each", flush=True)
    # reference rows: re-scored once, then read back from references.json
    targets, extra = reference_section(cfg, OUT, runs, print,
                                       compute=not (OUT / "references.json").is_file())
    files = write_report(runs, OUT, cfg.threshold, targets=targets, extra_markdown=extra,
                         title=f"mnist1d / {cfg.fidelity_name} / scratch "
                               f"(seeds {sorted(common)}, partial)", reps=cfg.reps)
    print(files["summary.md"].read_text())
    return 0


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
    from searchlab.kernels import cpu_vendor

    finished = sorted(p.parent.name for p in OUT.glob("runs/*/results.json"))
    (EXPORT / "VERSIONS.json").write_text(json.dumps({
        "searchlab": searchlab.__version__, "torch": torch.__version__,
        "python": platform.python_version(), "machine": platform.machine(),
        "cpu_vendor": cpu_vendor(),
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
    from searchlab.cache import RewardCache
    from searchlab.kernels import REFERENCE_VENDOR

    cache = RewardCache(CACHE)
    if CONFIG == PROTOCOLS["compare"][0]:
        # made on AMD EPYC machines before caches recorded vendors (BENCHMARKS.md)
        cache.note_vendor(REFERENCE_VENDOR)
    print(f"restored {CACHE} (rewards computed on {', '.join(sorted(cache.vendors()))} CPUs)")
    cache.close()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fidelity", choices=sorted(PROTOCOLS), default="compare",
                   help="which verdict: at compare (finished) or at averaged (the default "
                        "fidelity now)")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--seeds", type=int, default=10)
    r.add_argument("--budget", type=int, default=300)
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--redo", nargs="+", default=[], metavar="STRATEGY",
                   help="make these strategies' searches again (e.g. after a fix)")
    r.add_argument("--mixed-vendors", action="store_true",
                   help="run even when the reward cache holds another CPU vendor's rewards")
    rp = sub.add_parser("report")
    rp.add_argument("--seeds", type=int, default=10)
    sub.add_parser("export")
    sub.add_parser("restore")
    a = p.parse_args()
    use(a.fidelity)
    if a.cmd == "run":
        why = None if a.mixed_vendors else vendor_mismatch()
        if why:
            print(f"verdict.py: {why}", file=sys.stderr)
            return 2
        redo(a.redo)
        return run(a.seeds, a.budget, a.workers)
    if a.cmd == "report":
        return report(a.seeds)
    return export() if a.cmd == "export" else restore()


if __name__ == "__main__":
    sys.exit(main())
