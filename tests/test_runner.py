"""The one search loop (searchlab.runner): budget in unique keys, repeats, stall limit,
tracker and executor use, owns_loop strategies, SearchResult helpers."""

from __future__ import annotations

import pickle
from typing import Any, Sequence

import numpy as np
import pytest

from searchlab.dsl import Rule, get_space, parse
from searchlab.executors import Executor
from searchlab.result import FLOOR_REWARD, Result
from searchlab.runner import (EvaluateTask, SearchResult, build_strategy, run_search,
                              strategy_name)
from searchlab.strategy import Strategy
from searchlab.testing.toy import ToyEvaluator
from searchlab.tracking import MemoryTracker

SPACE1 = get_space("scratch", depth=1)   # 5-token rules: easy to write by hand


def r1(*tokens: str) -> Rule:
    return Rule.from_tokens(tokens)


class CountingEvaluator:
    """Wraps the toy evaluator and records every (rule text, seed) it evaluates."""

    task_name, protocol = "toy", "probe"   # the searchlab.interfaces.Evaluator contract

    def __init__(self, inner: Any = None) -> None:
        self.inner = inner or ToyEvaluator()
        self.calls: list[tuple[str, int]] = []

    def evaluate(self, rule: Rule, seed: int) -> Result:
        self.calls.append((rule.text, seed))
        return self.inner.evaluate(rule, seed)


class Scripted(Strategy):
    """Asks a fixed list of rules, ``per_ask`` at a time; records what it is told."""

    def __init__(self, space: Any, seed: int, script: Sequence[Rule] = (), per_ask: int | None = None,
                 **_: Any) -> None:
        super().__init__(space, seed)
        self.script = list(script)
        self.per_ask = per_ask
        self.asked: list[list[Rule]] = []
        self.told: list[list[Result]] = []

    def ask(self, n: int) -> list[Rule]:
        k = n if self.per_ask is None else self.per_ask
        out, self.script = self.script[:k], self.script[k:]
        self.asked.append(out)
        return out

    def tell(self, results: Sequence[Result]) -> None:
        self.told.append(list(results))


class Forever(Strategy):
    """Always proposes the same rule."""

    def ask(self, n: int) -> list[Rule]:
        return [r1("g", "1", "id", "id", "mul")] * n

    def tell(self, results: Sequence[Result]) -> None:
        pass


class Looping(Strategy):
    """owns_loop: evaluates rules one at a time until done(), then a few more."""

    owns_loop = True

    def __init__(self, space: Any, seed: int, rules: Sequence[Rule] = (), extra: int = 2) -> None:
        super().__init__(space, seed)
        self.rules, self.extra = list(rules), extra
        self.results: list[Result] = []

    def ask(self, n: int) -> list[Rule]:  # pragma: no cover - owns its loop
        raise AssertionError

    def tell(self, results: Sequence[Result]) -> None:  # pragma: no cover
        raise AssertionError

    def run(self, evaluate, done) -> None:
        it = iter(self.rules)
        while not done():
            self.results += evaluate([next(it)])
        for _ in range(self.extra):   # a VecEnv may finish episodes after the budget
            self.results += evaluate([next(it)])


class RecordingExecutor(Executor):
    def __init__(self) -> None:
        self.batches: list[int] = []

    def map(self, fn, items, *, on_failure=None):
        items = list(items)
        self.batches.append(len(items))
        # round-trip through pickle, as a process pool would
        fn = pickle.loads(pickle.dumps(fn))
        return [fn(pickle.loads(pickle.dumps(x))) for x in items]


DISTINCT = [r1("g", "1", "id", "id", "mul"), r1("m", "1", "id", "id", "mul"),
            r1("g", "m", "id", "id", "mul"), r1("sign_g", "sign_m", "id", "id", "mul"),
            r1("g", "m", "id", "id", "sub"), r1("v", "1", "id", "id", "mul"),
            r1("g", "2", "id", "id", "mul"), r1("g", "v", "id", "id", "div")]


def test_keys_of_script_are_distinct():
    assert len({r.key for r in DISTINCT}) == len(DISTINCT)


def test_repeats_cost_no_budget_and_are_answered_from_memory():
    # "1*g" and "g*1" share the key "g"; "g*1" asked twice; then new rules
    same = r1("1", "g", "id", "id", "mul")
    script = [DISTINCT[0], same, DISTINCT[0], DISTINCT[1], DISTINCT[1], DISTINCT[2], DISTINCT[3]]
    ev = CountingEvaluator()
    strat = Scripted(SPACE1, 0, script, per_ask=3)
    res = run_search(strat, ev, budget=4, batch_size=3, seed=0)
    assert res.unique == 4 and len(res.results) == 4
    assert res.asked == 7 and res.repeats == 3 and res.stopped == "budget"
    assert [t for t, _ in ev.calls] == ["g*1", "m*1", "g*m", "sign_g*sign_m"]
    # tell gets one result per asked rule, in order, with the asked rule's text
    told = [r for batch in strat.told for r in batch]
    asked = [r for batch in strat.asked for r in batch]
    assert [r.rule for r in told] == [r.text for r in asked]
    assert [r.key for r in told] == [r.key for r in asked]
    assert [r.cached for r in told] == [False, True, True, False, True, False, False]
    assert [r.repeat for r in told] == [False, True, True, False, True, False, False]
    assert told[1].reward == told[0].reward and told[1].extra["repeat_of"] == 0


def test_budget_exact_when_batch_does_not_divide_it():
    strat = Scripted(SPACE1, 0, DISTINCT)
    ex = RecordingExecutor()
    res = run_search(strat, ToyEvaluator(), budget=7, batch_size=3, seed=0, executor=ex)
    assert res.unique == 7 and ex.batches == [3, 3, 1]
    assert [len(a) for a in strat.asked] == [3, 3, 1]   # ask(n) with n <= remaining budget


def test_eval_seed_is_separate_from_strategy_seed():
    ev = CountingEvaluator()
    run_search(Scripted(SPACE1, 5, DISTINCT[:3]), ev, budget=3, batch_size=2, seed=5, eval_seed=11)
    assert {s for _, s in ev.calls} == {11}


def test_stall_limit_stops_a_strategy_that_only_repeats():
    res = run_search(Forever(SPACE1, 0), ToyEvaluator(), budget=10, batch_size=4, seed=0,
                     stall_limit=50)
    assert res.stopped == "stalled" and res.unique == 1
    # the count is per rule: 3 repeats after the first fresh one, then 12 asks of 4
    assert res.repeats == 51 and res.asked == 52


def test_empty_ask_ends_the_search_as_exhausted():
    res = run_search(Scripted(SPACE1, 0, DISTINCT[:2]), ToyEvaluator(), budget=10, seed=0)
    assert res.stopped == "exhausted" and res.unique == 2


def test_rules_outside_the_space_are_invalid_samples_not_evaluated():
    outside = parse("exp(sign(g)*sign(m))*g")          # depth 2: not in the depth-1 space
    not_tokens = parse("m*(1+eps)*sigmoid(1e-4*w)")    # outside the token grammar
    ev = CountingEvaluator()
    res = run_search(Scripted(SPACE1, 0, [outside, DISTINCT[0], not_tokens]), ev,
                     budget=3, seed=0)
    assert [r.status for r in res.results] == ["invalid", "ok", "invalid"]
    assert res.results[0].reward == FLOOR_REWARD and "outside space" in res.results[0].message
    assert [t for t, _ in ev.calls] == ["g*1"]


def test_tracker_gets_start_fresh_samples_with_indices_and_finish():
    tr = MemoryTracker()
    script = [DISTINCT[0], DISTINCT[0], DISTINCT[1], DISTINCT[2], DISTINCT[1], DISTINCT[3]]
    res = run_search(Scripted(SPACE1, 3, script), ToyEvaluator(), budget=4, batch_size=2,
                     seed=3, tracker=tr, params={"extra": 1}, tags={"who": "test"})
    assert tr.started == 1 and tr.finished == 1
    assert tr.params["budget"] == 4 and tr.params["extra"] == 1 and tr.tags["who"] == "test"
    assert tr.tags["strategy"] == "Scripted" and tr.tags["seed"] == "3"
    assert [i for i, _ in tr.samples] == [0, 1, 2, 3]
    assert [r.key for _, r in tr.samples] == [r.key for r in DISTINCT[:4]]
    assert [r.extra["sample"] for r in res.results] == [0, 1, 2, 3]
    assert tr.summary["unique"] == 4 and tr.summary["best_reward"] == res.best_reward


def test_evaluator_exceptions_become_error_results():
    class Boom:
        task_name, protocol = "toy", "probe"

        def evaluate(self, rule, seed):
            if rule.text == "m*1":
                raise RuntimeError("boom")
            return ToyEvaluator().evaluate(rule, seed)

    res = run_search(Scripted(SPACE1, 0, DISTINCT[:3]), Boom(), budget=3, seed=0)
    assert [r.status for r in res.results] == ["ok", "error", "ok"]
    assert "boom" in res.results[1].message and res.results[1].reward == FLOOR_REWARD


def test_evaluate_task_is_picklable():
    task = pickle.loads(pickle.dumps(EvaluateTask(ToyEvaluator(), 3)))
    assert task(DISTINCT[0]).reward == ToyEvaluator().evaluate(DISTINCT[0], 3).reward


def test_owns_loop_uses_the_same_path_and_budget_is_exact():
    tr = MemoryTracker()
    rules = [DISTINCT[0], DISTINCT[0]] + DISTINCT[1:]
    strat = Looping(SPACE1, 0, rules, extra=2)
    res = run_search(strat, ToyEvaluator(), budget=4, seed=0, tracker=tr)
    assert res.unique == 4 and len(tr.samples) == 4 and res.repeats == 1
    over = strat.results[-2:]
    assert all(r.status == "error" and r.extra.get("over_budget") for r in over)
    assert all(r.reward == FLOOR_REWARD for r in over)
    assert res.asked == 7 and res.stopped == "budget"


def test_search_result_helpers_match_a_hand_computation():
    script = DISTINCT[:6]
    res = run_search(Scripted(SPACE1, 0, script), ToyEvaluator(), budget=6, seed=0, top_k=3)
    rewards = [ToyEvaluator().evaluate(r, 0).reward for r in script]
    assert np.allclose(res.rewards(), rewards)
    assert np.allclose(res.best_so_far(), np.maximum.accumulate(rewards))
    order = sorted(range(6), key=lambda i: -rewards[i])[:3]
    assert [r.key for r in res.best] == [script[i].key for i in order]
    assert res.best_rule == parse(script[order[0]].text)
    thr = sorted(rewards)[-2]
    first = next(i for i, x in enumerate(rewards) if x >= thr)
    assert res.samples_to_reach(thr) == first + 1
    assert res.samples_to_reach(2.0) is None
    assert isinstance(res, SearchResult) and res.keys == [r.key for r in script]


def test_strategy_by_name_and_seed_checks():
    res = run_search("random", ToyEvaluator(), budget=5, batch_size=2, seed=1, space="small")
    assert res.strategy == "random" and res.unique == 5 and res.seed == 1
    assert strategy_name(build_strategy("random", "small", 0)) == "random"
    with pytest.raises(ValueError, match="seed"):
        run_search(build_strategy("random", "small", 0), ToyEvaluator(), budget=2, seed=1)
    with pytest.raises(ValueError, match="seed is required"):
        run_search("random", ToyEvaluator(), budget=2)
    with pytest.raises(ValueError):
        run_search("random", ToyEvaluator(), budget=0, seed=0)


def test_progress_callback_sees_unique_counts():
    seen: list[tuple[int, int, float]] = []
    run_search(Scripted(SPACE1, 0, DISTINCT[:5]), ToyEvaluator(), budget=5, batch_size=2,
               seed=0, progress=lambda u, b, best: seen.append((u, b, best)))
    assert [u for u, _, _ in seen] == [2, 4, 5] and all(b == 5 for _, b, _ in seen)
    assert all(x <= y for (_, _, x), (_, _, y) in zip(seen, seen[1:]))


@pytest.mark.slow
def test_process_executor_gives_the_same_results_as_serial():
    from searchlab.executors import EXECUTORS

    assert "process" in EXECUTORS
    serial = run_search("random", ToyEvaluator(), budget=12, batch_size=6, seed=2)
    with EXECUTORS.get("process")(workers=2) as ex:
        pooled = run_search("random", ToyEvaluator(), budget=12, batch_size=6, seed=2,
                            executor=ex)
    assert pooled.keys == serial.keys
    assert np.allclose(pooled.rewards(), serial.rewards())
