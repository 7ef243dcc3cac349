"""Checkpoint and resume (searchlab.checkpoint + the runner), faults inside a search, and
same-seed determinism across executors.

The reference for "resumed correctly" is always an uninterrupted search with the same
seed run in this process: a resumed search must end with exactly the same samples (keys,
rewards, statuses, in order) and the same best rules, and the journal of evaluations must
hold each key exactly once (nothing evaluated twice) and exactly ``budget`` of them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from searchlab.testing import faults
from searchlab.checkpoint import (CHECKPOINT_FILE, JOURNAL_FILE, Journal, ResumeError,
                                  atomic_write_bytes)
from searchlab.executors import ProcessExecutor
from searchlab.result import Result
from searchlab.runner import run_search
from searchlab.testing.toy import ToyEvaluator
from searchlab.tracking import MemoryTracker

ROOT = Path(__file__).resolve().parent.parent


def fingerprint(res):
    """What must be equal between two runs (``seconds`` is wall time, not compared)."""
    return [(r.key, r.rule, r.reward, r.status, r.best_lr, r.extra.get("sample"))
            for r in res.results]


def journal_keys(run_dir: Path) -> list[str]:
    return [r.key for r in Journal.read(run_dir / JOURNAL_FILE)]


# --- files ---------------------------------------------------------------------------
def test_atomic_write_never_leaves_a_torn_file(tmp_path):
    p = tmp_path / "x.bin"
    atomic_write_bytes(p, b"old")

    class Unpicklable:
        def __bytes__(self):
            raise RuntimeError("boom")

    with pytest.raises(TypeError):
        atomic_write_bytes(p, Unpicklable())   # fails mid-write: the old file stays
    assert p.read_bytes() == b"old"
    assert [f.name for f in tmp_path.iterdir()] == ["x.bin"]   # no temporary left behind
    atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"new"


def test_journal_skips_a_torn_last_line(tmp_path):
    r = Result(rule="g", key="g", reward=0.5, sweep=((0.1, 0.4),), curve=(0.3, 0.5),
               tokens=("g", "g", "identity", "identity", "left"))
    j = Journal(tmp_path / JOURNAL_FILE)
    j.append(r)
    j.close()
    with open(tmp_path / JOURNAL_FILE, "a") as f:
        f.write('{"rule": "m", "key": "m", "rew')          # killed mid-write
    j = Journal(tmp_path / JOURNAL_FILE)                   # reopening starts a new line
    j.append(r.with_(rule="m", key="m"))
    j.close()
    back = Journal.read(tmp_path / JOURNAL_FILE)
    assert [x.key for x in back] == ["g", "m"]
    assert back[0] == r                                    # exact round trip


# --- resume in process (interrupted by an exception mid-batch) ----------------------
class Interrupt(BaseException):
    """Stands for the process dying: not an Exception, so nothing catches it."""


class DiesAfter:
    """An evaluator that raises Interrupt on its (n+1)-th evaluation (counts in-process)."""

    def __init__(self, inner, n):
        self.inner, self.n, self.calls = inner, n, 0
        self.task_name, self.protocol = inner.task_name, inner.protocol

    def evaluate(self, rule, seed=0):
        self.calls += 1
        if self.calls > self.n:
            raise Interrupt()
        return self.inner.evaluate(rule, seed)


def build(strategy, seed, stateless=False):
    from searchlab.dsl import get_space
    from searchlab.runner import build_strategy
    from searchlab.strategy import Strategy

    s = build_strategy(strategy, get_space("scratch"), seed)
    if stateless:
        cls = type(f"Stateless{type(s).__name__}", (type(s),),
                   {"state_dict": Strategy.state_dict, "load_state_dict": Strategy.load_state_dict})
        s.__class__ = cls
    return s


@pytest.mark.parametrize("strategy,stateless", [
    ("random", False), ("evolution", False), ("gp", False), ("nos-ppo", False),
    ("reinforce", False), ("evolution", True), ("sb3", False),
])
def test_interrupted_search_resumes_to_the_same_end(tmp_path, strategy, stateless):
    budget, batch = 30, 4
    ev = ToyEvaluator()
    ref = run_search(build(strategy, 7, stateless), ev, budget, batch)
    assert ref.unique == budget
    with pytest.raises(Interrupt):                         # dies in the middle of batch 4
        run_search(build(strategy, 7, stateless), DiesAfter(ev, 13), budget, batch,
                   checkpoint_dir=tmp_path)
    assert (tmp_path / CHECKPOINT_FILE).exists()
    done_before = journal_keys(tmp_path)
    assert 12 <= len(done_before) <= 13                    # finished evaluations survive
    counter = DiesAfter(ev, 10**9)
    tracker = MemoryTracker()
    res = run_search(build(strategy, 7, stateless), counter, budget, batch,
                     checkpoint_dir=tmp_path, resume=True, tracker=tracker)
    assert fingerprint(res) == fingerprint(ref)
    assert res.best_rule == ref.best_rule and res.stopped == "budget"
    assert (res.asked, res.repeats) == (ref.asked, ref.repeats)   # no detour through repeats
    keys = journal_keys(tmp_path)
    assert len(keys) == budget == len(set(keys))           # nothing evaluated twice
    assert counter.calls == budget - len(done_before)
    assert sorted(i for i, _ in tracker.samples) == list(range(budget))  # every sample logged once


def test_resume_refuses_other_searches(tmp_path):
    ev = ToyEvaluator()
    run_search(build("random", 1), ev, 8, 4, checkpoint_dir=tmp_path)
    with pytest.raises(ResumeError, match="seed"):
        run_search(build("random", 2), ev, 8, 4, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ResumeError, match="already holds"):
        run_search(build("random", 1), ev, 8, 4, checkpoint_dir=tmp_path)
    with pytest.raises(ResumeError, match="nothing to resume"):
        run_search(build("random", 1), ev, 8, 4, checkpoint_dir=tmp_path / "empty", resume=True)
    # a finished search resumed with a larger budget continues where it ended
    more = run_search(build("random", 1), ev, 12, 4, checkpoint_dir=tmp_path, resume=True)
    ref = run_search(build("random", 1), ev, 12, 4)
    assert fingerprint(more) == fingerprint(ref) and more.asked == ref.asked


# --- a real kill -9 of `searchlab search`, resumed from the shell ----------------------
@pytest.mark.slow
def test_cli_search_killed_with_sigkill_resumes_into_the_same_mlflow_run(tmp_path):
    """nos-ppo (controller weights, Adam state, RNG in the checkpoint), MLflow tracking
    with the background writer; killed mid-run, resumed with ``resume=<run dir>``."""
    from mlflow import MlflowClient

    from searchlab.app import build_strategy as make_strategy
    from searchlab.runfiles import load_search
    from searchlab.config import load_config

    budget, run = 30, tmp_path / "run"
    common = ["task=toy", "strategy=nos-ppo", f"budget={budget}", "batch_size=4", "seed=2",
              f"run_dir={tmp_path / 'runs'}", "quiet=true"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [sys.executable, "-m", "searchlab.cli", "search"]
    proc = subprocess.Popen(cmd + common + ["task.options.sleep=0.05", f"out={run}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while len(journal_keys(run)) < 10:                     # well into the search
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "search subprocess made no progress"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    err = proc.communicate()[1]
    assert f"run directory: {run}" in err and f"resume={run}" in err
    done_before = len(journal_keys(run))
    assert done_before < budget

    out = subprocess.run(cmd + [f"resume={run}"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    keys = journal_keys(run)
    assert len(keys) == budget == len(set(keys))           # exactly the budget, none twice
    got = load_search(run).results
    cfg = load_config(common + ["tracking=none"])
    ref = run_search(make_strategy(cfg), ToyEvaluator(), budget, cfg.batch_size, cfg.seed,
                     eval_seed=cfg.eval_seed)
    assert [(r.key, r.reward, r.status) for r in got] == \
        [(r.key, r.reward, r.status) for r in ref.results]

    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name != "Default"]
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("searchlab.role") == "search"]
    samples = sorted(int(r.data.tags["sample"]) for r in runs
                     if r.data.tags.get("searchlab.role") == "sample")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"   # the same parent run
    assert samples == list(range(budget))                  # every sample once
    steps = [m.step for m in client.get_metric_history(parents[0].info.run_id, "search/reward")]
    assert sorted(steps) == list(range(budget))


@pytest.fixture(scope="module")
def pool():
    ex = ProcessExecutor(workers=2, retries=1)
    yield ex
    ex.close()


# --- faults inside a search ------------------------------------------------------------
@pytest.mark.slow
def test_crash_and_hang_inside_a_search_are_marked_not_fatal(pool):
    ev = ToyEvaluator()
    ref = run_search("random", ev, 12, 4, seed=5)
    crash, hang = ref.results[2].key, ref.results[6].key
    faulty = faults.FaultyEvaluator(ev, crash=frozenset({crash}), hang=frozenset({hang}),
                                    hang_seconds=600)
    pool.timeout = 2.0
    try:
        t0 = time.perf_counter()
        res = run_search("random", faulty, 12, 4, seed=5, executor=pool)
        assert time.perf_counter() - t0 < 120
    finally:
        pool.timeout = None
    assert res.unique == 12 and res.keys == ref.keys        # random ignores rewards
    by_key = {r.key: r for r in res.results}
    assert by_key[crash].status == "error" and "worker process" in by_key[crash].message
    assert by_key[hang].status == "timeout"
    assert by_key[crash].reward == by_key[hang].reward == 0.0
    for a, b in zip(res.results, ref.results):
        if a.key not in (crash, hang):
            assert (a.status, a.reward) == (b.status, b.reward)


# --- determinism ----------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["evolution", "nos-ppo"])
def test_same_seed_same_search_serial_and_process(strategy, pool):
    ev = ToyEvaluator()
    a = run_search(strategy, ev, 24, 6, seed=11)
    b = run_search(strategy, ev, 24, 6, seed=11)
    c = run_search(strategy, ev, 24, 6, seed=11, executor=pool)
    d = run_search(strategy, ev, 24, 6, seed=11, executor=pool)
    assert fingerprint(a) == fingerprint(b) == fingerprint(c) == fingerprint(d)
    e = run_search(strategy, ev, 24, 6, seed=12)
    assert fingerprint(e) != fingerprint(a)                # the seed matters
