"""The checks every strategy and every task must pass, as plain functions.

searchlab's own suite runs them over every registered strategy
(``tests/test_strategies.py``) and task (``tests/test_tasks.py``).  An outside author
calls the same functions from their own tests.  Each check raises ``AssertionError`` with
a message that names the strategy or task and what went wrong, and returns None when it
passes.  A strategy's or task's own exception is wrapped in such an ``AssertionError``
too.  The checks run on :class:`~searchlab.testing.toy.ToyEvaluator` (strategies) and on
a tiny fidelity (tasks), so each takes seconds::

    # tests/test_my_components.py, in your own package
    import pytest
    from searchlab.testing.conformance import check_strategy, check_task

    import my_package.search   # registers "my-strategy" (@STRATEGIES.register)
                               # and "my-task" (@TASKS.register)

    def test_my_strategy_conforms():
        check_strategy("my-strategy", population=8)     # keyword options go to the strategy

    def test_my_task_conforms():
        check_task("my-task", num_examples=300)         # keyword options go to the task

    # or one pytest test per check, like searchlab's suite
    @pytest.mark.parametrize("status", ["diverged", "invalid"])
    def test_my_strategy_survives_failures(status):
        check_survives_failures("my-strategy", status=status)

Strategies (a registered name or a :class:`~searchlab.strategy.Strategy` subclass; keyword
options are passed to the constructor, over the class's ``conformance_options``, a dict a
class may define, e.g. a small-budget preset):

* :func:`check_name` -- ``Strategy.name`` is the registered name (set by
  ``STRATEGIES.register``), optionally followed by options in brackets (``sb3[DQN]``);
* :func:`check_budget` -- a search spends exactly its budget in unique evaluations and
  stops for that reason; the runner's counters add up; ``ask(n)`` returns 1 to ``n``
  rules and ``tell`` gets their results in the order asked;
* :func:`check_rules_in_space` -- every proposed rule is a valid rule of the strategy's
  space;
* :func:`check_deterministic` -- the same seed gives the same rules, whatever the
  global RNGs (``random``, NumPy, torch) hold; a search leaves those RNGs as it found
  them; different seeds give different rules.  Resuming a search of a strategy
  without state hooks replays it from its seed (``searchlab.checkpoint``), which relies
  on this;
* :func:`check_survives_failures` -- ``diverged`` or ``invalid`` results (40 % of them)
  do not stop the search;
* :func:`check_state` -- ``state_dict()`` pickles; for an ask/tell strategy with state
  hooks, a fresh instance given that state continues exactly like the original (what a
  resumed search does);
* :func:`check_strategy` -- all of the above.

Tasks (a registered name, a :class:`~searchlab.tasks.Task` subclass or instance): see
:func:`check_task`.

Helpers for writing further checks: :func:`make_strategy` (build like the checks do)
and :func:`record_search` (one search with every asked rule, told result and ``ask``
size recorded).  What is *not* checked here is how good a strategy is (searchlab's suite
also checks that every learning strategy beats random search on the toy objective, a
slower test of its own) or anything specific to one strategy or task.
"""

from __future__ import annotations

import math
import pickle
import random
import sys
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..dsl import Rule, Space, TokenGrammarError, check_tokens, get_space
from ..executors import Executor
from ..runner import SearchResult, run_search
from ..strategy import STRATEGIES, Strategy
from .toy import ToyEvaluator

if TYPE_CHECKING:
    from ..result import Result
    from ..tasks.base import Task

__all__ = [
    "FIDELITY", "Recording", "check_budget", "check_deterministic", "check_name",
    "check_rules_in_space", "check_state", "check_strategy", "check_survives_failures",
    "check_task", "make_strategy", "record_search",
]


# --------------------------------------------------------------------------------------
# building and recording a strategy's search
# --------------------------------------------------------------------------------------
def _strategy_class(strategy: str | type[Strategy]) -> type[Strategy]:
    if isinstance(strategy, str):
        return STRATEGIES.get(strategy)
    if isinstance(strategy, type) and issubclass(strategy, Strategy):
        return strategy
    raise TypeError(f"expected a registered strategy name or a Strategy subclass, "
                    f"got {strategy!r}")


def _label(strategy: str | type[Strategy]) -> str:
    return f"strategy {strategy!r}" if isinstance(strategy, str) else f"strategy class {strategy.__name__}"


def make_strategy(strategy: str | type[Strategy], space: Space | str = "scratch",
                  seed: int = 0, **options: Any) -> Strategy:
    """Build ``strategy`` (a registered name or a class) on ``space`` with ``seed``; the
    class's ``conformance_options`` apply, and ``options`` override them."""
    cls = _strategy_class(strategy)
    opts = {**dict(getattr(cls, "conformance_options", None) or {}), **options}
    return cls(get_space(space) if isinstance(space, str) else space, seed, **opts)


class _Inline(Executor):
    """Evaluations in the calling thread, in order, without the serial executor's
    per-item reseeding of the global RNGs (so the RNG checks see the strategy alone)."""

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], *,
            on_failure: Any = None) -> list[Any]:
        return [fn(x) for x in items]


@dataclass(frozen=True)
class Recording:
    """One search (:func:`record_search`) and what passed between runner and strategy.

    Attributes:
        result: what ``run_search`` returned.
        asked: every rule the strategy proposed, in order (repeats included).
        told: every result the strategy was told, in order.
        ns: the ``n`` of every ``ask(n)`` (empty for strategies that own their loop).
        sizes: how many rules each ``ask`` returned (idem).
    """

    result: SearchResult
    asked: list[Rule]
    told: list["Result"]
    ns: list[int]
    sizes: list[int]


def _spy(strategy: Strategy) -> tuple[list[Rule], list["Result"], list[int], list[int]]:
    """Wrap ``strategy``'s ask/tell (or run) to record the rules asked, the results told,
    the ``n`` of every ``ask(n)`` and the number of rules it returned."""
    asked: list[Rule] = []
    told: list["Result"] = []
    ns: list[int] = []
    sizes: list[int] = []
    if strategy.owns_loop:
        run = strategy.run

        def run_spy(evaluate: Callable[[list[Rule]], list["Result"]],
                    done: Callable[[], bool]) -> None:
            def ev(rules: list[Rule]) -> list["Result"]:
                asked.extend(rules)
                out = evaluate(rules)
                told.extend(out)
                return out
            return run(ev, done)
        strategy.run = run_spy  # type: ignore[method-assign]
    else:
        ask, tell = strategy.ask, strategy.tell

        def ask_spy(n: int) -> list[Rule]:
            ns.append(n)
            out = ask(n)
            sizes.append(len(out))
            asked.extend(out)
            return out

        def tell_spy(results: Sequence["Result"]) -> None:
            told.extend(results)
            return tell(results)
        strategy.ask, strategy.tell = ask_spy, tell_spy  # type: ignore[method-assign]
    return asked, told, ns, sizes


def _run(label: str, strategy: Strategy, evaluator: Any, budget: int,
         batch_size: int) -> SearchResult:
    try:
        return run_search(strategy, evaluator, budget=budget, batch_size=batch_size,
                          seed=strategy.seed, executor=_Inline())
    except Exception as e:  # the strategy's own error: a failed check, with its cause
        raise AssertionError(f"{label}: the search raised {type(e).__name__}: {e}") from e


def record_search(strategy: str | type[Strategy], *, seed: int, budget: int,
                  batch_size: int = 5, space: Space | str = "scratch",
                  evaluator: Any = None, **options: Any) -> Recording:
    """Run one search of ``strategy`` (built by :func:`make_strategy`) with
    ``run_search`` on ``evaluator`` (default :class:`ToyEvaluator`), evaluating in the
    calling thread, and return it with every asked rule, told result and ``ask`` size."""
    strat = make_strategy(strategy, space, seed, **options)
    trace = _spy(strat)
    res = _run(_label(strategy), strat, evaluator or ToyEvaluator(), budget, batch_size)
    return Recording(res, *trace)


# --------------------------------------------------------------------------------------
# strategy checks
# --------------------------------------------------------------------------------------
def check_name(strategy: str | type[Strategy], **options: Any) -> None:
    """``Strategy.name`` (what run names, logs and ``SearchResult.strategy`` show) is the
    name the class is registered under -- ``STRATEGIES.register`` sets it -- optionally
    followed by the options that differ from the defaults in brackets (``sb3[DQN]``).

    Given a class, it must be the one registered under its name."""
    label = _label(strategy)
    cls = _strategy_class(strategy)
    name = make_strategy(strategy, "scratch", 0, **options).name
    assert isinstance(name, str) and name, (
        f"{label}: Strategy.name is {name!r}; register the class with "
        f"@STRATEGIES.register('<name>') (which sets it)")
    registered = strategy if isinstance(strategy, str) else name.partition("[")[0]
    assert name == registered or name.startswith(registered + "["), (
        f"{label}: Strategy.name {name!r} is not the registered name {registered!r} "
        f"(optionally followed by '[options]')")
    assert registered in STRATEGIES and STRATEGIES.get(registered) is cls, (
        f"{label}: the class is not registered as {registered!r} in STRATEGIES")


def check_budget(strategy: str | type[Strategy], *, space: Space | str = "scratch",
                 seed: int = 0, budget: int = 23, batch_size: int = 4, **options: Any) -> None:
    """A search of ``budget`` unique evaluations (in batches of ``batch_size``) stops
    because the budget is spent, with exactly ``budget`` distinct keys evaluated; the
    runner's ``asked``/``repeats`` counters account for every proposal; an ask/tell
    strategy returns 1 to ``n`` rules from ``ask(n)`` and is told one result per asked
    rule, in the order asked."""
    label = _label(strategy)
    rec = record_search(strategy, seed=seed, budget=budget, batch_size=batch_size,
                        space=space, **options)
    res, asked, told = rec.result, rec.asked, rec.told
    assert res.stopped == "budget", (
        f"{label}: the search stopped {res.stopped!r} after {res.unique} of {budget} unique "
        f"evaluations ({res.asked} rules asked, {res.repeats} repeats)")
    assert res.unique == budget == len(res.results) == len(set(res.keys)), (
        f"{label}: {res.unique} unique evaluations, {len(res.results)} results with "
        f"{len(set(res.keys))} distinct keys, for a budget of {budget}")
    over = sum(1 for r in told if r.extra.get("over_budget"))
    assert res.asked == len(asked) and res.repeats == len(asked) - budget - over, (
        f"{label}: the runner counted {res.asked} asked and {res.repeats} repeats; the "
        f"strategy proposed {len(asked)} rules ({over} after the budget was spent)")
    if not rec.ns:  # a strategy that owns its loop
        return
    bad = [(n, k) for n, k in zip(rec.ns, rec.sizes) if not 1 <= k <= n]
    assert not bad, f"{label}: ask(n) returned k rules outside 1..n, (n, k) = {bad[:5]}"
    assert all(1 <= n <= batch_size for n in rec.ns), (
        f"{label}: the runner asked for {rec.ns} rules with batch_size={batch_size}")
    assert len(told) == len(asked), f"{label}: told {len(told)} results for {len(asked)} asked rules"
    for i, (r, a) in enumerate(zip(told, asked)):
        if r.key != a.key:
            raise AssertionError(f"{label}: result {i} told was for {r.rule!r}, the rule asked "
                                 f"there was {a.text!r} (tell gets results in the order asked)")


def check_rules_in_space(strategy: str | type[Strategy], *, space: Space | str = "scratch",
                         seed: int = 1, budget: int = 20, batch_size: int = 5,
                         **options: Any) -> None:
    """Every rule the strategy proposes is a valid token string of its space
    (:func:`searchlab.dsl.check_tokens`), so none is recorded ``invalid`` by the runner."""
    label = _label(strategy)
    sp = get_space(space) if isinstance(space, str) else space
    rec = record_search(strategy, seed=seed, budget=budget, batch_size=batch_size,
                        space=sp, **options)
    assert rec.asked, f"{label}: proposed no rule"
    for rule in rec.asked:
        try:
            check_tokens(sp, rule.to_tokens())
        except (TokenGrammarError, ValueError) as e:
            raise AssertionError(f"{label}: proposed {rule.text!r}, not a rule of space "
                                 f"{sp.name!r} (depth {sp.depth}): {e}") from None
    lengths = {len(r.tokens) for r in rec.result.results}
    assert lengths <= {sp.length}, f"{label}: results with token lengths {sorted(lengths)}, space length {sp.length}"
    invalid = [r.rule for r in rec.result.results if r.status == "invalid"]
    assert not invalid, f"{label}: results recorded invalid: {invalid[:3]}"


def _global_states() -> dict[str, Any]:
    states: dict[str, Any] = {"random": random.getstate(), "numpy": np.random.get_state()}
    torch = sys.modules.get("torch")   # not imported here: a strategy without torch cannot use it
    if torch is not None:
        states["torch"] = torch.get_rng_state()
    return states


def _set_global_states(states: Mapping[str, Any]) -> None:
    random.setstate(states["random"])
    np.random.set_state(states["numpy"])
    if "torch" in states:
        sys.modules["torch"].set_rng_state(states["torch"])


def _seed_globals(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


def _changed(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    out = []
    for name, a in before.items():
        b = after[name]
        if name == "numpy":
            same = a[0] == b[0] and np.array_equal(a[1], b[1]) and tuple(a[2:]) == tuple(b[2:])
        elif name == "torch":
            same = bool((a == b).all())
        else:
            same = a == b
        if not same:
            out.append(name)
    return out


def check_deterministic(strategy: str | type[Strategy], *, space: Space | str = "scratch",
                        seeds: Sequence[int] = (7, 8), budget: int = 25, batch_size: int = 5,
                        **options: Any) -> None:
    """Two searches with ``seeds[0]`` evaluate the same rules in the same order although
    the global RNGs (``random``, NumPy, and torch when loaded) are seeded differently
    before each; no search changes those global RNGs; a search with ``seeds[1]``
    evaluates different rules.  The caller's global RNG states are restored afterwards."""
    label = _label(strategy)
    saved = _global_states()
    try:
        keys = []
        for i, seed in enumerate((seeds[0], seeds[0], seeds[1])):
            strat = make_strategy(strategy, space, seed, **options)
            _seed_globals(1000 + i)
            before = _global_states()
            keys.append(_run(label, strat, ToyEvaluator(), budget, batch_size).keys)
            after = _global_states()
            changed = _changed(before, after)
            assert not changed, (
                f"{label}: the search with seed {seed} changed the global RNG state of "
                f"{', '.join(changed)} (draw from generators seeded with Strategy.seed)")
    finally:
        _set_global_states(saved)
    a, b, c = keys
    if a != b:
        i = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        raise AssertionError(f"{label}: two searches with seed {seeds[0]} differ from "
                             f"evaluation {i} on (ignores its seed or reads global RNG state)")
    assert a != c, f"{label}: seeds {seeds[0]} and {seeds[1]} evaluated the same rules (seed unused)"


def check_survives_failures(strategy: str | type[Strategy], *, status: str = "diverged",
                            space: Space | str = "scratch", seed: int = 2, budget: int = 30,
                            batch_size: int = 5, fail_rate: float = 0.4,
                            **options: Any) -> None:
    """A search where a ``fail_rate`` fraction of rules score ``status`` (``diverged``,
    ``invalid``, ``timeout`` or ``error``, with the floor reward) still spends its
    budget; at least 5 of each of ``status`` and ``ok`` are seen."""
    label = _label(strategy)
    ev = ToyEvaluator(fail_rate=fail_rate, fail_status=status)
    res = _run(label, make_strategy(strategy, space, seed, **options), ev, budget, batch_size)
    assert res.unique == budget and res.stopped == "budget", (
        f"{label}: with {fail_rate:.0%} {status} results the search stopped "
        f"{res.stopped!r} after {res.unique} of {budget} unique evaluations")
    counts = Counter(r.status for r in res.results)
    assert counts[status] >= 5 and counts["ok"] >= 5, (
        f"{label}: statuses {dict(counts)}: too few {status} or ok results to tell "
        f"(a strategy that avoids failing rules needs a larger budget here)")


def _drive(strategy: Strategy, rounds: int, batch_size: int, ev: ToyEvaluator) -> list[str]:
    keys: list[str] = []
    for _ in range(rounds):
        rules = strategy.ask(batch_size)
        keys.extend(r.key for r in rules)
        strategy.tell([ev.evaluate(r, 0) for r in rules])
    return keys


def check_state(strategy: str | type[Strategy], *, space: Space | str = "scratch",
                seed: int = 0, budget: int = 10, batch_size: int = 5,
                **options: Any) -> None:
    """After a search of ``budget`` evaluations ``state_dict()`` is a dict that pickles
    (checkpoints are pickles).  An ask/tell strategy that overrides both ``state_dict``
    and ``load_state_dict`` (``searchlab.checkpoint.strategy_has_state``) must continue
    identically from its state: after two rounds of ``ask``/``tell``, a fresh instance
    with the same seed that loads the (pickled) state proposes the same rules over two
    more rounds as the original."""
    from ..checkpoint import strategy_has_state

    label = _label(strategy)
    strat = make_strategy(strategy, space, seed, **options)
    _run(label, strat, ToyEvaluator(), budget, batch_size)
    state = strat.state_dict()
    assert isinstance(state, dict), f"{label}: state_dict() returned {type(state).__name__}, not a dict"
    try:
        pickle.dumps(state)
    except Exception as e:  # any pickling error fails the check
        raise AssertionError(f"{label}: state_dict() does not pickle: {type(e).__name__}: {e}") from e
    if not strategy_has_state(strat):
        return   # resumed by replaying it from its seed: check_deterministic
    ev = ToyEvaluator()
    try:
        a = make_strategy(strategy, space, seed, **options)
        _drive(a, 2, batch_size, ev)
        saved = pickle.loads(pickle.dumps(a.state_dict()))
        want = _drive(a, 2, batch_size, ev)
        b = make_strategy(strategy, space, seed, **options)
        b.load_state_dict(saved)
        got = _drive(b, 2, batch_size, ev)
    except Exception as e:
        raise AssertionError(f"{label}: state round trip raised {type(e).__name__}: {e}") from e
    assert got == want, (
        f"{label}: a fresh instance given state_dict() proposed different rules than the "
        f"original (load_state_dict must restore everything, RNG states included)")


def check_strategy(strategy: str | type[Strategy], *, space: Space | str = "scratch",
                   seeds: Sequence[int] = (0, 1), budget: int = 25, batch_size: int = 4,
                   **options: Any) -> None:
    """Every strategy check of this module: :func:`check_name`, :func:`check_budget`,
    :func:`check_rules_in_space`, :func:`check_deterministic`,
    :func:`check_survives_failures` (``diverged`` and ``invalid``) and
    :func:`check_state`, on ``space`` with ``seeds``, ``budget`` and ``batch_size``.

    ``options`` go to the strategy (over its ``conformance_options``); a space much
    larger than ``budget`` rules is assumed (every built-in space is)."""
    run = dict(space=space, budget=budget, batch_size=batch_size, **options)
    check_name(strategy, **options)
    check_budget(strategy, seed=seeds[0], **run)
    check_rules_in_space(strategy, seed=seeds[1], **run)
    check_deterministic(strategy, seeds=seeds, **run)
    for status in ("diverged", "invalid"):
        check_survives_failures(strategy, status=status, seed=seeds[0], **run)
    check_state(strategy, seed=seeds[0], **run)


# --------------------------------------------------------------------------------------
# task checks
# --------------------------------------------------------------------------------------
#: the protocol of :func:`check_task`'s evaluations: 3 lrs, 60 examples, batches of 10,
#: one final epoch, 50 problem steps (milliseconds to a second per rule)
FIDELITY = ("smoke+sweep_examples=60,final_examples=60,final_epochs=1,val_examples=60,"
            "batch_size=10,problem_steps=50")


def _task_factory(task: "str | type[Task] | Task",
                  options: Mapping[str, Any]) -> tuple[str, Callable[[], "Task"]]:
    from ..tasks.base import Task, get_task

    if isinstance(task, str):
        return f"task {task!r}", lambda: get_task(task, **options)
    if isinstance(task, type) and issubclass(task, Task):
        return f"task class {task.__name__}", lambda: task(**options)
    if isinstance(task, Task):
        if options:
            raise TypeError("options are only accepted with a task name or class")
        return f"task {task.id!r}", lambda: pickle.loads(pickle.dumps(task))
    raise TypeError(f"expected a task name, Task subclass or Task, got {task!r}")


def _close(label: str, what: str, a: Any, b: Any, rtol: float, atol: float) -> None:
    import torch

    try:
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    except AssertionError as e:
        raise AssertionError(f"{label}: {what}: {e}") from None


def _check_task_identity(label: str, task: "Task", registered: str | None) -> None:
    from ..tasks.base import ClassificationTask, ProblemTask

    assert isinstance(task.name, str) and task.name, f"{label}: Task.name is {task.name!r}"
    if registered is not None:
        assert task.name == registered, (
            f"{label}: Task.name {task.name!r} is not the registered name {registered!r} "
            f"(results record the evaluator's task_name, which is Task.name)")
    kinds = {"classification": ClassificationTask, "problems": ProblemTask}
    assert task.kind in kinds and isinstance(task, kinds[task.kind]), (
        f"{label}: kind {task.kind!r} with base classes {[c.__name__ for c in type(task).__mro__[1:3]]}: "
        f"subclass ClassificationTask or ProblemTask (the evaluator runs one of the two)")
    opts = dict(task.result_options())
    if not opts:
        assert task.id == task.name, f"{label}: id {task.id!r} with no result options (expected {task.name!r})"
    else:
        assert task.id.startswith(task.name + "+"), f"{label}: id {task.id!r} does not start with {task.name + '+'!r}"
        missing = [k for k in opts if f"{k}=" not in task.id]
        assert not missing, f"{label}: id {task.id!r} does not encode the result options {missing}"
    try:
        copy = pickle.loads(pickle.dumps(task))
    except Exception as e:
        raise AssertionError(f"{label}: the task does not pickle (process and Ray executors "
                             f"ship it to workers): {type(e).__name__}: {e}") from e
    assert copy.id == task.id, f"{label}: id {task.id!r} becomes {copy.id!r} through pickle"


def _row_keys(x: Any) -> set[bytes]:
    """Hashable rows of a batch (float rows rounded to 5 decimals, -0.0 as 0.0)."""
    a = x.detach().cpu().numpy().reshape(len(x), -1)
    if np.issubdtype(a.dtype, np.floating):
        a = np.round(a.astype(np.float64), 5) + 0.0
    return {row.tobytes() for row in a}


def _check_classification(label: str, task: Any, fresh: Any, seed: int, copies: int) -> None:
    import torch

    from ..tasks.base import Splits

    s = task.load()
    assert isinstance(s, Splits), f"{label}: load() returned {type(s).__name__}, not Splits"
    shape = None
    for split in ("train", "val", "test"):
        x, y = getattr(s, f"{split}_x"), getattr(s, f"{split}_y")
        assert len(x) == len(y) > 0, f"{label}: {split} split has {len(x)} inputs, {len(y)} labels"
        assert y.dtype == torch.int64, f"{label}: {split} labels are {y.dtype}, not int64"
        lo, hi = int(y.min()), int(y.max())
        assert 0 <= lo and hi < task.num_classes, (
            f"{label}: {split} labels span {lo}..{hi}, outside 0..{task.num_classes - 1}")
        assert shape is None or tuple(x.shape[1:]) == shape, (
            f"{label}: {split} inputs have shape {tuple(x.shape[1:])}, train {shape}")
        shape = tuple(x.shape[1:])
    again = fresh.load()
    for f in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(s, f), getattr(again, f)), (
            f"{label}: {f} differs between two loads (splits must be fixed)")
    train = _row_keys(s.train_x)
    for split in ("val", "test"):
        shared = len(_row_keys(getattr(s, f"{split}_x")) & train)
        assert not shared, f"{label}: {shared} {split} inputs also appear in the training split"
    n = min(4, len(s.train_y))
    x, y = task.prepare(s.train_x[:n]), s.train_y[:n]
    assert isinstance(x, torch.Tensor) and x.is_floating_point() and len(x) == n, (
        f"{label}: prepare() of {n} inputs gave {type(x).__name__} "
        f"{getattr(x, 'dtype', '')} {tuple(getattr(x, 'shape', ()))}")

    def model(s_: int) -> Any:
        return task.build_model(copies, torch.Generator().manual_seed(s_))

    m, m2, other = model(seed), model(seed), model(seed + 1)
    assert m.k == copies and all(p.shape[0] == copies for p in [*m.params, *m.buffers]), (
        f"{label}: build_model({copies}) has leading dimensions "
        f"{[p.shape[0] for p in m.params]} (params) {[b.shape[0] for b in m.buffers]} (buffers)")
    assert all(p.is_leaf and p.requires_grad for p in m.params), (
        f"{label}: model params must be leaf tensors with requires_grad")
    for i, (p, q) in enumerate(zip(m.params, m2.params)):
        assert torch.equal(p, q), f"{label}: param {i} differs between two models from one seed"
        assert all(torch.equal(p[0], p[j]) for j in range(copies)), (
            f"{label}: the {copies} copies of param {i} do not start equal")
    assert any(not torch.equal(p, q) for p, q in zip(m.params, other.params)), (
        f"{label}: build_model ignores its generator (seeds {seed} and {seed + 1} give the same weights)")
    with torch.no_grad():
        out = m.forward(x, train=False)
    assert tuple(out.shape) == (copies, n, task.num_classes) and bool(out.isfinite().all()), (
        f"{label}: forward gave shape {tuple(out.shape)} (expected "
        f"{(copies, n, task.num_classes)}), finite: {bool(out.isfinite().all())}")
    losses = m.losses(x, y)
    assert tuple(losses.shape) == (copies,) and bool(losses.isfinite().all()), (
        f"{label}: losses gave {losses.detach()} (expected {copies} finite values)")
    grads = torch.autograd.grad(losses.sum(), m.params, allow_unused=True)
    none = [i for i, g in enumerate(grads) if g is None or not bool(g.isfinite().all())]
    assert not none, f"{label}: params {none} get no or non-finite gradients"


def _check_problems(label: str, task: Any, fresh: Any, seed: int) -> None:
    import torch

    for attr in ("problems", "initial_points"):
        assert callable(getattr(task, attr, None)), (
            f"{label}: a ProblemTask provides problems() and initial_points(seed, stream) "
            f"(the evaluator runs them; see searchlab.tasks.problems)")
    problems = tuple(task.problems())
    assert problems, f"{label}: problems() is empty"
    x0 = list(task.initial_points(seed, "val"))
    assert len(x0) == len(problems), f"{label}: {len(x0)} initial points for {len(problems)} problems"
    gen = torch.Generator().manual_seed(seed)
    for p, x in zip(problems, x0):
        what = f"{label}: problem {p.name!r}"
        assert len(p.low) == len(p.high) == p.dim >= 1 and math.isfinite(p.f_star), (
            f"{what}: dim {p.dim}, box {p.low}..{p.high}, f_star {p.f_star}")
        assert tuple(x.shape) == (p.dim,) and x.dtype == torch.float64, (
            f"{what}: initial point of shape {tuple(x.shape)} {x.dtype} (expected ({p.dim},) float64)")
        inside = all(lo <= v <= hi for lo, v, hi in zip(p.low, x.tolist(), p.high))
        assert inside, f"{what}: initial point {x.tolist()} outside the box {p.low}..{p.high}"
        assert float(p.f(x)) >= p.f_star - 1e-9, f"{what}: f(x0) = {float(p.f(x))} < f_star = {p.f_star}"
        xs = (torch.randn(5, p.dim, generator=gen, dtype=torch.float64) * 1.5).requires_grad_()
        f = p.f(xs)
        (g,) = torch.autograd.grad(f.sum(), xs)
        f2, g2 = p.value_and_grad(xs.detach())
        _close(label, f"{p.name}: value_and_grad's value vs f", f2, f.detach(), 1e-12, 1e-12)
        _close(label, f"{p.name}: value_and_grad's gradient vs autograd", g2, g, 1e-10, 1e-10)
        if p.upper_and_grad is not None:
            # the bound holds where runs go (ordinary, huge and non-finite points), and the
            # gradient is value_and_grad's bit for bit (rewards must not move)
            big = torch.cat([xs.detach(), xs.detach() * 1e3, xs.detach() * 1e150,
                             torch.full((1, p.dim), math.inf, dtype=torch.float64),
                             torch.full((1, p.dim), math.nan, dtype=torch.float64)])
            up, g3 = p.upper_and_grad(big)
            fb, gb = p.value_and_grad(big)
            finite = torch.isfinite(fb)
            assert bool((up[finite] >= fb[finite]).all()), (
                f"{label}: {p.name}: upper_and_grad's bound below the value: "
                f"{up[finite].tolist()} vs {fb[finite].tolist()}")
            assert not bool((up[~finite] <= 1e300).any()), (
                f"{label}: {p.name}: upper_and_grad's bound is finite where the value is not")
            assert torch.equal(torch.nan_to_num(g3, nan=7.0), torch.nan_to_num(gb, nan=7.0)), (
                f"{label}: {p.name}: upper_and_grad's gradient differs from value_and_grad's")
    same = fresh.initial_points(seed, "val")
    assert all(torch.equal(a, b) for a, b in zip(x0, same)), f"{label}: initial points differ for one seed"
    for other, stream in ((seed + 1, "val"), (seed, "test")):
        pts = task.initial_points(other, stream)
        assert any(not torch.equal(a, b) for a, b in zip(x0, pts)), (
            f"{label}: initial points of (seed {seed}, 'val') and (seed {other}, {stream!r}) are equal")


def _check_evaluation(label: str, task: "Task", fresh: "Task", seed: int,
                      fidelity: str) -> None:
    from ..evaluate import Evaluator

    rewards = []
    for t in (task, fresh):
        r = Evaluator(t, fidelity).evaluate("adam", seed=seed)
        assert r.status == "ok", f"{label}: adam scored {r.status!r} at {fidelity}: {r.message[-600:]}"
        assert 0.0 <= r.reward <= 1.0, f"{label}: reward {r.reward} outside [0, 1]"
        assert r.task == task.id, f"{label}: result of task {r.task!r}, expected {task.id!r}"
        rewards.append(r.reward)
    assert rewards[0] == rewards[1], f"{label}: rewards {rewards} for one rule and seed (not deterministic)"


def check_task(task: "str | type[Task] | Task", *, seed: int = 0, copies: int = 2,
               evaluate: bool = True, fidelity: str = FIDELITY, missing_data: str = "skip",
               **options: Any) -> None:
    """The Task interface checks (``searchlab.tasks.base``) for one task: a registered
    name (with ``options``), a Task subclass (built with ``options``) or an instance.

    Every task: ``name`` is the registered name; ``kind`` matches its base class; ``id``
    is the name plus every result option (``mnist1d+num_samples=1200``) and survives
    pickling.  Classification tasks: ``load()`` gives non-empty splits with int64 labels
    in ``0..num_classes-1`` and one input shape; the same splits on every load; no
    validation or test input also in the training split; ``prepare`` gives float inputs;
    ``build_model(copies, generator)`` gives ``copies`` equal copies, the same weights
    for the same generator seed and others for another; ``forward`` logits of shape
    ``[copies, batch, num_classes]``, finite losses and gradients.  Problem tasks:
    ``problems()`` with boxes and finite minima, ``value_and_grad`` equal to ``f`` and
    autograd, seeded initial points inside the boxes at or above the minimum, the same
    for the same seed and stream, others for another seed or the ``test`` stream.  With
    ``evaluate``: the evaluator at ``fidelity`` (default :data:`FIDELITY`, tiny) scores
    ``adam`` ``ok`` with a reward in [0, 1] (problem tasks: the normalised score),
    twice the same.  None of it may change the global RNGs.

    A data set that is absent (``DataNotFoundError``) skips the calling pytest test
    (``missing_data="skip"``) or raises (``"raise"``).
    """
    import torch  # noqa: F401 - loaded first, so that its global RNG is watched too

    from ..tasks.base import DataNotFoundError

    label, build = _task_factory(task, options)
    saved = _global_states()
    try:
        try:
            t, fresh = build(), build()
            _check_task_identity(label, t, task if isinstance(task, str) else None)
            if t.kind == "classification":
                _check_classification(label, t, fresh, seed, copies)
            else:
                _check_problems(label, t, fresh, seed)
            if evaluate:
                _check_evaluation(label, t, fresh, seed, fidelity)
        except DataNotFoundError as e:
            if missing_data != "skip":
                raise
            import pytest

            pytest.skip(f"{label}: data not available: {str(e).splitlines()[0]}")
        except AssertionError:
            raise
        except Exception as e:  # the task's own error: a failed check, with its cause
            raise AssertionError(f"{label}: raised {type(e).__name__}: {e}") from e
        changed = _changed(saved, _global_states())
        assert not changed, f"{label}: changed the global RNG state of {', '.join(changed)}"
    finally:
        _set_global_states(saved)
