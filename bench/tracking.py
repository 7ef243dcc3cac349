"""Tracking overhead: what logging every sample to MLflow costs a search (goal <= 5 %).

Runs, side by side in one process, the same search (random strategy, same seeds, hence
the same samples) with the null tracker and with the MLflow tracker on a local sqlite
store (the default: ``sqlite:///<run_dir>/mlflow.db``, one nested run per sample):

1. **tracking alone** -- ``--samples`` (1,000) samples with an evaluator that costs
   nothing (the toy objective, ~0.1 ms): the difference in wall time is the whole cost of
   logging them, paid on the critical path (``background=False``) or waited for at the
   end (``background=True``); also through the client API one nested run at a time (the
   fallback path, ``bulk=False``) and without nested runs (``tracking.child_runs=false``).
2. **side by side with evaluation work** -- ``--work-samples`` samples, each first doing a
   fixed amount of CPU work (torch matmuls on ``--threads`` threads, calibrated to
   ``--cost`` seconds on this machine, or to the measured mnist1d cost with
   ``--cost real``), so the background writer competes with "training" for the CPU as in
   a real search; overhead = (wall with MLflow - wall without) / wall without.
3. ``--real K``: the measured cost of one ``mnist1d``/``fast`` evaluation (K rules), and
   what the part-1 tracking cost is relative to a search at that cost.

The per-sample tracking cost does not depend on how many samples a search has (part 1
shows it for 1,000), so part 2 can use fewer, realistically slow samples.  The store is
created before timing (MLflow's first-time table creation, printed separately, happens
once per run directory).  Other processes share the cores: compare the lines of one run.

    python bench/tracking.py --real 3 --cost 1.0 --work-samples 120 --rounds 4   # BENCHMARKS.md
    python bench/tracking.py --samples 200 --work-samples 50 --cost 0.5   # quicker
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# run as a script, sys.path[0] is bench/: put the repository first instead, so that the
# top-level packages (searchlab, strategies) are the project's, not files in bench/
sys.path[0] = str(Path(__file__).resolve().parent.parent)
import searchlab  # noqa: E402,F401  (first: it pins torch's kernels and numpy's OpenBLAS, searchlab.kernels)

import torch  # noqa: E402

from searchlab.mlflow_tracker import MlflowTracker, local_store_uri  # noqa: E402
from searchlab.result import Result  # noqa: E402
from searchlab.runner import run_search  # noqa: E402
from searchlab.testing.toy import ToyEvaluator  # noqa: E402
from searchlab.tracking import NullTracker  # noqa: E402


_W = torch.randn(96, 96, generator=torch.Generator().manual_seed(0)) / 96 ** 0.5


def _work(iters: int) -> float:
    """Fixed CPU work: small matmuls + tanh (values stay O(1): no denormal slow paths)."""
    a = torch.ones(96, 96)
    for _ in range(iters):
        a = torch.tanh(a @ _W + 0.1)
    return float(a[0, 0])


def calibrate(seconds: float = 1.0) -> float:
    """Iterations of :func:`_work` per second on this machine, now."""
    _work(50)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        _work(200)
        n += 200
    return n / (time.perf_counter() - t0)


class WorkEvaluator:
    """The toy objective plus a fixed amount of CPU work per sample (not a fixed time:
    when the tracker steals CPU, evaluations really get slower)."""

    task_name = "toy"      # the searchlab.interfaces.Evaluator contract
    protocol = "probe"

    def __init__(self, iters: int) -> None:
        self.toy = ToyEvaluator()
        self.iters = iters

    def evaluate(self, rule, seed: int) -> Result:
        t0 = time.perf_counter()
        r = self.toy.evaluate(rule, seed)
        if self.iters:
            _work(self.iters)
        return r.with_(seconds=time.perf_counter() - t0)


def timed_search(evaluator, n: int, batch: int, tracker, seed: int = 0
                 ) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process incl. all threads, SearchResult)."""
    t0, c0 = time.perf_counter(), time.process_time()
    res = run_search("random", evaluator, n, batch_size=batch, seed=seed, tracker=tracker,
                     space="scratch", params={"bench": "tracking"}, tags={"task": "toy"})
    return time.perf_counter() - t0, time.process_time() - c0, res


def mlflow_tracker(run_dir: Path, name: str, background: bool) -> MlflowTracker:
    return MlflowTracker(uri=local_store_uri(run_dir), experiment=name, run_name=name,
                         run_dir=run_dir, background=background)


def real_cost(k: int) -> float:
    """Seconds per ``mnist1d``/``fast`` evaluation (K hand-written rules, data loaded first)."""
    from searchlab.dsl import parse
    try:
        from searchlab.evaluate import Evaluator
    except ImportError:
        from searchlab.evaluation import Evaluator
    ev = Evaluator(task="mnist1d", fidelity="fast")
    ev.load()
    rules = ["g", "m", "exp(sign(g)*sign(m))*g", "(1+sign(g)*sign(m))*g", "sign(m)*sqrt(g)",
             "adam", "rmsprop", "m*exp(v)"]
    rules = (rules * (k // len(rules) + 1))[:k]
    t0 = time.perf_counter()
    for i, text in enumerate(rules):
        ev.evaluate(parse(text), i)
    return (time.perf_counter() - t0) / k


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=1000, help="samples of the tracking-alone searches (part 1)")
    ap.add_argument("--work-samples", type=int, default=100, help="samples of the searches with work (part 2)")
    ap.add_argument("--cost", default="1.0",
                    help="seconds of CPU work per sample in part 2, or 'real' for the measured "
                         "mnist1d/fast cost (needs --real)")
    ap.add_argument("--batch", type=int, default=10, help="batch size of the searches")
    ap.add_argument("--rounds", type=int, default=4, help="alternating null/MLflow rounds in part 2")
    ap.add_argument("--real", type=int, default=0, help="time K mnist1d/fast evaluations (part 3)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary run directory")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1, as the evaluator uses for mnist1d; with 2 on a busy "
                         "2-core machine, OpenMP barriers make the work's duration erratic)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = args.samples
    run_dir = Path(tempfile.mkdtemp(prefix="searchlab-bench-tracking-"))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"searchlab tracking overhead; batch {args.batch}; torch threads "
          f"{torch.get_num_threads()}; {os.cpu_count()} cores, load average {load}")
    print(f"  store {local_store_uri(run_dir)}")
    try:
        t0 = time.perf_counter()
        mlflow_tracker(run_dir, "warmup", False).ensure_experiment()
        print(f"  store creation (once per run directory): {time.perf_counter() - t0:.1f} s")

        per = None
        if n > 0:
            print(f"1. tracking alone: {n} samples, toy evaluator (~0.1 ms per sample)")
            free = ToyEvaluator()
            w_null, _, _ = timed_search(free, n, args.batch, NullTracker())
            tr = mlflow_tracker(run_dir, "alone-inline", background=False)
            w_sync, _, _ = timed_search(free, n, args.batch, tr)
            tb = mlflow_tracker(run_dir, "alone-background", background=True)
            w_bg, _, _ = timed_search(free, n, args.batch, tb)
            ta = MlflowTracker(uri=local_store_uri(run_dir), experiment="alone-api",
                               run_dir=run_dir, background=False, bulk=False)
            w_api, _, _ = timed_search(free, n, args.batch, ta)
            tc = MlflowTracker(uri=local_store_uri(run_dir), experiment="alone-parent-only",
                               run_dir=run_dir, background=False, child_runs=False)
            w_parent, _, _ = timed_search(free, n, args.batch, tc)
            per = (w_sync - w_null) / n
            print(f"   null tracker             {w_null:8.1f} s")
            print(f"   mlflow, inline writes    {w_sync:8.1f} s   tracking = {w_sync - w_null:.1f} s "
                  f"for {n} samples = {1000 * per:.1f} ms per sample")
            print(f"   mlflow, background       {w_bg:8.1f} s   (writer busy {tb.seconds_writer:.1f} s, "
                  f"{tb.cpu_seconds_writer:.1f} s CPU)")
            print(f"   mlflow, client API       {w_api:8.1f} s   ({1000 * (w_api - w_null) / n:.1f} ms per "
                  "sample: create_run + log_batch + set_terminated per nested run, inline)")
            print(f"   mlflow, no child runs    {w_parent:8.1f} s   (tracking.child_runs=false: parent "
                  f"metrics + results table only, inline)")

        cost_per_real = real_cost(args.real) if args.real else None
        if cost_per_real is not None:
            print(f"3. realistic cost: mnist1d/fast = {cost_per_real:.2f} s per evaluation "
                  f"({args.real} evaluations); {n} samples ~ {n * cost_per_real / 60:.0f} min of "
                  f"search" + (f"; inline tracking adds {100 * per / cost_per_real:.1f} % of that"
                               if per is not None else ""))
        if args.cost == "real":
            if cost_per_real is None:
                ap.error("--cost real needs --real K")
            cost = cost_per_real
        else:
            cost = float(args.cost)
        m = args.work_samples
        if m > 0:
            rounds = max(1, args.rounds)
            print(f"2. side by side: {rounds} rounds x {m // rounds} samples with {cost:.2f} s of "
                  "CPU work each (calibrated now), null and MLflow tracker alternating")
            iters = max(1, int(round(cost * calibrate())))
            work = WorkEvaluator(iters)
            timed_search(work, min(5, m), args.batch, NullTracker(), seed=99)   # warm-up, not counted
            tot = {"null": [0.0, 0.0], "mlflow": [0.0, 0.0]}
            writer = writer_cpu = main_thread = 0.0
            for k in range(rounds):
                order = ("null", "mlflow") if k % 2 == 0 else ("mlflow", "null")
                keys = {}
                for which in order:
                    if which == "null":
                        tracker = NullTracker()
                    else:
                        tracker = mlflow_tracker(run_dir, f"work-{k}", background=True)
                    w, c, res = timed_search(work, m // rounds, args.batch, tracker, seed=k)
                    print(f"   round {k} {which:<7} {w:8.1f} s wall {c:8.1f} s CPU", flush=True)
                    keys[which] = [r.key for r in res.results]
                    tot[which][0] += w
                    tot[which][1] += c
                    if which == "mlflow":
                        writer += tracker.seconds_writer
                        writer_cpu += tracker.cpu_seconds_writer
                        main_thread += tracker.seconds_main
                assert keys["null"] == keys["mlflow"]  # the same samples
            (w0, c0), (w1, c1) = tot["null"], tot["mlflow"]
            done = rounds * (m // rounds)
            print(f"   null tracker             {w0:8.1f} s wall  {c0:8.1f} s CPU   "
                  f"({w0 / done:.3f} s wall per sample)")
            print(f"   mlflow, background       {w1:8.1f} s wall  {c1:8.1f} s CPU   "
                  f"(writer busy {writer:.1f} s, {writer_cpu:.1f} s CPU; main thread in "
                  f"tracker {main_thread:.2f} s)")
            print(f"   side by side: wall {100 * (w1 - w0) / w0:+.1f} %, process CPU "
                  f"{100 * (c1 - c0) / c0:+.1f} % (differences include the machine's noise)")
            print(f"   accounted: (writer CPU + main thread in tracker) / wall = "
                  f"{100 * (writer_cpu + main_thread) / w1:.2f} %")
    finally:
        if args.keep:
            print(f"kept {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
