"""The runner's population path: fresh rules go to a BatchEvaluator in chunks."""

from __future__ import annotations

import pytest

from searchlab.executors import ProcessExecutor, SerialExecutor
from searchlab.interfaces import BatchEvaluator
from searchlab.runner import chunk_sizes, run_search
from searchlab.testing.toy import ToyEvaluator


class BatchToy:
    """The toy objective behind the batch interface; records the chunks it gets."""

    task_name, protocol = "toy", "probe"

    def __init__(self, max_batch: int, fail_first: bool = False) -> None:
        self.inner = ToyEvaluator()
        self.max_batch = max_batch
        self.fail_first = fail_first
        self.chunks: list[int] = []
        self.singles = 0

    def evaluate(self, rule, seed=0):
        self.singles += 1
        return self.inner.evaluate(rule, seed)

    def evaluate_many(self, rules, seed):
        self.chunks.append(len(rules))
        if self.fail_first and len(self.chunks) == 1:
            raise RuntimeError("population training failed")
        return [self.inner.evaluate(r, seed) for r in rules]


@pytest.mark.parametrize("n,workers,cap,expect", [
    (10, 2, 8, [5, 5]), (10, 1, 8, [5, 5]), (10, 1, 10, [10]), (7, 2, 8, [4, 3]),
    (3, 4, 8, [1, 1, 1]), (1, 2, 8, [1]), (0, 2, 8, []), (17, 2, 4, [4, 4, 3, 3, 3]),
])
def test_chunk_sizes(n, workers, cap, expect):
    sizes = chunk_sizes(n, workers, cap)
    assert sizes == expect and sum(sizes) == n and all(s <= cap for s in sizes)


def test_batch_evaluator_is_detected_and_gives_the_serial_results():
    assert isinstance(BatchToy(4), BatchEvaluator)
    assert not isinstance(ToyEvaluator(), BatchEvaluator)
    ev = BatchToy(4)
    batched = run_search("evolution", ev, budget=40, batch_size=10, seed=0, space="small")
    plain = run_search("evolution", ToyEvaluator(), budget=40, batch_size=10, seed=0,
                       space="small")
    assert [r.key for r in batched.results] == [r.key for r in plain.results]
    assert [r.reward for r in batched.results] == [r.reward for r in plain.results]
    assert ev.chunks and max(ev.chunks) <= 4 and sum(ev.chunks) <= 40


def test_a_failing_population_falls_back_to_one_rule_at_a_time():
    ev = BatchToy(10, fail_first=True)
    res = run_search("random", ev, budget=20, batch_size=10, seed=0, space="small")
    plain = run_search("random", ToyEvaluator(), budget=20, batch_size=10, seed=0,
                       space="small")
    assert [r.reward for r in res.results] == [r.reward for r in plain.results]
    assert ev.singles == ev.chunks[0] > 1     # only the failed chunk went one by one


def test_chunks_run_in_worker_processes_with_the_same_results():
    ex = ProcessExecutor(workers=2)
    try:
        a = run_search("random", BatchToy(8), budget=30, batch_size=10, seed=1, space="small",
                       executor=ex)
    finally:
        ex.close()
    b = run_search("random", BatchToy(8), budget=30, batch_size=10, seed=1, space="small",
                   executor=SerialExecutor())
    assert [(r.key, r.reward) for r in a.results] == [(r.key, r.reward) for r in b.results]


# --- the real evaluator's populations in a search ---------------------------------------
def _real(population: int):
    from searchlab.evaluation import Evaluator

    return Evaluator("ensemble", "fast", population=population)


def _close(a, b) -> None:
    assert [r.key for r in a.results] == [r.key for r in b.results]
    assert [r.status for r in a.results] == [r.status for r in b.results]
    for x, y in zip(a.results, b.results):
        assert abs(x.reward - y.reward) <= 1e-6, (x.rule, x.reward, y.reward)


def test_a_search_with_real_populations_equals_one_rule_at_a_time():
    pop = run_search("random", _real(10), budget=30, batch_size=10, seed=3, space="scratch")
    one = run_search("random", _real(1), budget=30, batch_size=10, seed=3, space="scratch")
    _close(pop, one)
    trained = [r for r in pop.results if r.status in ("ok", "diverged")]
    assert trained and all(r.extra.get("population", 1) > 1 for r in trained)
    again = run_search("random", _real(10), budget=30, batch_size=10, seed=3, space="scratch")
    assert [(r.key, r.reward) for r in again.results] == [(r.key, r.reward) for r in pop.results]


def test_real_populations_in_two_worker_processes():
    ex = ProcessExecutor(workers=2)
    try:
        a = run_search("random", _real(8), budget=20, batch_size=10, seed=4, space="scratch",
                       executor=ex)
    finally:
        ex.close()
    b = run_search("random", _real(1), budget=20, batch_size=10, seed=4, space="scratch")
    _close(a, b)
    assert max(r.extra.get("population", 1) for r in a.results) == 5   # 10 rules, 2 chunks


@pytest.mark.slow
def test_kill_9_inside_a_population_chunk_resumes_losing_and_repeating_nothing(tmp_path):
    """`searchlab search` on the problem ensemble with populations of 10: killed while a
    chunk trains, resumed from the shell; the journal holds every key once, exactly the
    budget, and the samples are those of an uninterrupted search."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from searchlab.checkpoint import JOURNAL_FILE, Journal
    from searchlab.runfiles import load_search

    root = Path(__file__).resolve().parent.parent
    budget, run = 60, tmp_path / "run"
    common = ["task=ensemble", "fidelity=fast", "strategy=random", f"budget={budget}",
              "batch_size=20", "seed=6", "task.options.population=10",
              f"run_dir={tmp_path / 'runs'}", "quiet=true", "tracking=none"]
    env = {**os.environ, "PYTHONPATH": str(root), "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [sys.executable, "-m", "searchlab.cli", "search"]
    proc = subprocess.Popen(cmd + common + [f"out={run}"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)

    def keys() -> list[str]:
        return [r.key for r in Journal.read(run / JOURNAL_FILE)]

    deadline = time.monotonic() + 240
    while len(keys()) < 10:                    # the first chunk is done, others train
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "search subprocess made no progress"
        time.sleep(0.01)
    time.sleep(0.3)                            # inside the next chunks
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    before = keys()
    assert 10 <= len(before) < budget
    out = subprocess.run(cmd + [f"resume={run}"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    after = keys()
    assert len(after) == budget == len(set(after)) and after[:len(before)] == before
    got = load_search(run).results
    ref = run_search("random", _real(10), budget=budget, batch_size=20, seed=6,
                     space="scratch")
    assert [r.key for r in got] == [r.key for r in ref.results]
    for x, y in zip(got, ref.results):
        assert x.status == y.status and abs(x.reward - y.reward) <= 1e-6, (x.rule, x.reward, y.reward)
