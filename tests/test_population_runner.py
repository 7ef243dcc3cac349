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
