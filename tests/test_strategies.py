"""Strategy conformance suite (Optuna ``pytest_samplers`` pattern), parametrised over the
``STRATEGIES`` registry, so strategies added later are covered automatically; plus
tests of the random, evolution and GP internals.

Every registered strategy must: spend exactly the budget in unique evaluations, propose
only valid rules of the space, be deterministic for a seed, survive ``diverged`` and
``invalid`` results, and -- if it learns (every strategy but ``random``) -- beat random
search's median best reward at a fixed budget over several seeds on the toy objective.

A strategy class may define ``conformance_options: dict`` (e.g. a small-budget preset);
the suite builds it with those options.  Runs go through ``run_search`` (owns_loop
strategies through ``Strategy.run``), on the millisecond :class:`ToyEvaluator`.
"""

from __future__ import annotations

import os
import pickle
import random as pyrandom
import subprocess
import sys
from collections import Counter
from typing import Any

import numpy as np
import pytest

from searchlab.dsl import (Rule, Space, TokenGrammarError, check_tokens, count_rules,
                           get_space, valid_next_tokens)
from searchlab.dsl.tokens import operand_node, unary_node
from searchlab.dsl.nodes import Bin
from searchlab.executors import Executor
from searchlab.runner import build_strategy, run_search
from searchlab.strategy import STRATEGIES, Strategy
from searchlab.testing.toy import ToyEvaluator

NAMES = STRATEGIES.names()
LEARNING = [n for n in NAMES if n != "random"]


class Plain(Executor):
    """map without the serial executor's per-item global reseeding (faster here)."""

    def map(self, fn, items, *, on_failure=None):
        return [fn(x) for x in items]


def make(name: str, seed: int, space: Space | str = "scratch") -> Strategy:
    opts = dict(getattr(STRATEGIES.get(name), "conformance_options", {}) or {})
    return build_strategy(name, space, seed, **opts)


def spy(strategy: Strategy) -> tuple[list[Rule], list[Any], list[int]]:
    """Record every rule the strategy proposes, every result it is told, and every n."""
    asked: list[Rule] = []
    told: list[Any] = []
    ns: list[int] = []
    if strategy.owns_loop:
        run = strategy.run

        def run_spy(evaluate, done):
            def ev(rules):
                asked.extend(rules)
                out = evaluate(rules)
                told.extend(out)
                return out
            return run(ev, done)
        strategy.run = run_spy  # type: ignore[method-assign]
    else:
        ask, tell = strategy.ask, strategy.tell

        def ask_spy(n):
            ns.append(n)
            out = ask(n)
            asked.extend(out)
            return out

        def tell_spy(results):
            told.extend(results)
            return tell(results)
        strategy.ask, strategy.tell = ask_spy, tell_spy  # type: ignore[method-assign]
    return asked, told, ns


def search(name: str, seed: int, budget: int, space: Space | str = "scratch",
           evaluator: Any = None, batch_size: int = 5):
    strat = make(name, seed, space)
    asked, told, ns = spy(strat)
    res = run_search(strat, evaluator or ToyEvaluator(), budget=budget, batch_size=batch_size,
                     seed=seed, executor=Plain())
    return res, asked, told, ns


# --- conformance ---------------------------------------------------------------------
def test_registry_holds_the_builtin_strategies():
    assert {"random", "evolution", "gp"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_budget_is_respected_exactly(name):
    res, asked, told, ns = search(name, 0, budget=23, batch_size=4)
    assert res.stopped == "budget" and res.unique == 23 == len(res.results)
    assert len(set(res.keys)) == 23
    assert res.asked == len(asked) and res.repeats == len(asked) - 23 - sum(
        1 for r in told if r.extra.get("over_budget"))
    if not STRATEGIES.get(name).owns_loop:
        assert len(told) == len(asked)
        assert [r.key for r in told] == [r.key for r in asked]   # tell in the order asked
        assert all(1 <= n <= 4 for n in ns)


@pytest.mark.parametrize("space", [get_space("scratch"), get_space("small", depth=1),
                                   get_space("paper", depth=3)], ids=lambda s: f"{s.name}-d{s.depth}")
@pytest.mark.parametrize("name", NAMES)
def test_only_valid_rules_of_the_space(name, space):
    res, asked, _, _ = search(name, 1, budget=20, space=space)
    assert asked
    for rule in asked:
        check_tokens(space, rule.to_tokens())        # raises TokenGrammarError if not
    assert all(len(r.tokens) == space.length for r in res.results)
    assert not any(r.status == "invalid" for r in res.results)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_for_a_seed(name):
    a = search(name, 7, budget=25)[0].keys
    b = search(name, 7, budget=25)[0].keys
    c = search(name, 8, budget=25)[0].keys
    assert a == b
    assert a != c


@pytest.mark.parametrize("status", ["diverged", "invalid"])
@pytest.mark.parametrize("name", NAMES)
def test_survives_failed_evaluations(name, status):
    ev = ToyEvaluator(fail_rate=0.4, fail_status=status)
    res, asked, told, _ = search(name, 2, budget=30, evaluator=ev)
    assert res.unique == 30 and res.stopped == "budget"
    counts = Counter(r.status for r in res.results)
    assert counts[status] >= 5 and counts["ok"] >= 5


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_is_picklable(name):
    strat = make(name, 0)
    run_search(strat, ToyEvaluator(), budget=10, batch_size=5, seed=0, executor=Plain())
    pickle.dumps(strat.state_dict())


# "learning strategies beat random": the toy objective on the `small` space (the space
# made for tests and demos), a budget of 200 unique evaluations, seeds 0..6.  The
# comparison is of medians of the best reward; with the default target PowerSign the
# toy gives partial credit for building blocks (see searchlab.testing.toy), so learning pays.
LEARN_BUDGET, LEARN_SEEDS, LEARN_SPACE = 200, range(7), "small"


def _median_best(name: str) -> float:
    return float(np.median([search(name, s, LEARN_BUDGET, LEARN_SPACE, batch_size=10)[0].best_reward
                            for s in LEARN_SEEDS]))


@pytest.fixture(scope="module")
def random_median() -> float:
    return _median_best("random")


@pytest.mark.slow
@pytest.mark.parametrize("name", LEARNING)
def test_learning_strategy_beats_random(name, random_median):
    assert _median_best(name) > random_median


# --- random search -------------------------------------------------------------------
SPACES_FOR_COUNTS = [get_space("scratch", depth=d) for d in (1, 2, 3, 4)] + [
    get_space("paper"), get_space("small", depth=3),
    get_space("small", reuse_output=False, distinct_operands=False, depth=3),
    get_space("small", no_final_add=False)]


def _sid(s: Space) -> str:
    return f"{s.name}-d{s.depth}-{int(s.distinct_operands)}{int(s.no_final_add)}{int(s.reuse_output)}"


@pytest.mark.parametrize("space", SPACES_FOR_COUNTS, ids=_sid)
def test_completion_counts_match_count_rules(space):
    from searchlab.strategies.random import TokenSampler

    assert TokenSampler(space).completions([]) == count_rules(space)


TINY = Space("tiny", ("g", "m"), ("id", "neg"), ("add", "mul"), depth=2)   # 256 strings


def _all_strings(space: Space) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []

    def rec(prefix):
        if len(prefix) == space.length:
            out.append(tuple(prefix))
            return
        for i in np.flatnonzero(valid_next_tokens(space, prefix)):
            rec(prefix + [space.vocab[i]])
    rec([])
    return out


def _chi2_pvalue(counts: list[int]) -> float:
    from scipy.stats import chisquare

    return float(chisquare(counts).pvalue)


def test_random_samples_are_uniform_over_token_strings():
    from searchlab.strategies.random import TokenSampler

    strings = _all_strings(TINY)
    assert len(strings) == count_rules(TINY)
    rng = np.random.default_rng(0)
    n = 20 * len(strings)
    sampler = TokenSampler(TINY)
    counts = Counter(tuple(sampler.sample(rng)) for _ in range(n))
    assert set(counts) <= set(strings)
    assert _chi2_pvalue([counts[s] for s in strings]) > 1e-3
    # the test has power: per-token uniform choices are rejected
    naive = Counter()
    for _ in range(n):
        toks: list[str] = []
        while len(toks) < TINY.length:
            toks.append(TINY.vocab[rng.choice(np.flatnonzero(valid_next_tokens(TINY, toks)))])
        naive[tuple(toks)] += 1
    assert _chi2_pvalue([naive[s] for s in strings]) < 1e-6


# --- evolution -----------------------------------------------------------------------
def test_mutation_changes_a_token_keeps_valid_ones_and_repairs_the_rest():
    from searchlab.strategies.evolution import mutate_tokens
    from searchlab.strategies.random import TokenSampler

    space = get_space("scratch", depth=3)
    sampler = TokenSampler(space)
    rng = np.random.default_rng(0)
    for _ in range(300):
        parent = sampler.sample(rng)
        child = mutate_tokens(parent, sampler, rng, 1)
        check_tokens(space, child)
        diff = [j for j in range(len(child)) if child[j] != parent[j]]
        assert diff, "a mutation changes at least one token"
        i = diff[0]
        for j in diff[1:]:   # later changes only where the parent's token became invalid
            assert not valid_next_tokens(space, child[:j])[space.index[parent[j]]]


def test_aging_evolution_kills_the_oldest_and_breeds_from_the_tournament_winner():
    from searchlab.strategies.evolution import RegularizedEvolution

    space = get_space("small")
    ev = RegularizedEvolution(space, 0, population=4, sample_size=4, mutations=1)
    first = ev.ask(4)
    rewards = [0.1, 0.9, 0.2, 0.3]
    ev.tell([ToyEvaluator().evaluate(r, 0).with_(reward=x) for r, x in zip(first, rewards)])
    best = first[1].to_tokens()
    child = ev.ask(1)[0].to_tokens()     # sample_size == population: parent is the best
    diff = [j for j in range(len(child)) if child[j] != best[j]]
    assert diff
    for j in diff[1:]:
        assert not valid_next_tokens(space, list(child[:j]))[space.index[best[j]]]
    ev.tell([ToyEvaluator().evaluate(Rule.from_tokens(child), 0).with_(reward=0.5)])
    assert [t for t, _ in ev.population] == [r.to_tokens() for r in first[1:]] + [child]


# --- GP ------------------------------------------------------------------------------
def _tree_node(tree, i=0):
    """Independent tree -> expression conversion (for comparing with tree_tokens)."""
    from deap import gp

    node = tree[i]
    if isinstance(node, gp.Terminal):
        return operand_node(node.value), i + 1
    name = node.name.split("@")[0]
    if node.arity == 1:
        arg, j = _tree_node(tree, i + 1)
        return unary_node(name, arg), j
    left, j = _tree_node(tree, i + 1)
    right, j = _tree_node(tree, j)
    return Bin(name, left, right), j


@pytest.mark.parametrize("space", [get_space("scratch", depth=d) for d in (1, 2, 3, 4)] +
                         [get_space("small", no_final_add=False)], ids=_sid)
def test_gp_trees_are_rules_of_the_space(space):
    from searchlab.strategies.gp import GeneticProgramming, _seeded, build_pset, tree_tokens

    pset = build_pset(space)
    terms = {t.value for ts in pset.terminals.values() for t in ts}
    assert terms == set(space.operands)
    unary = {p.name.split("@")[0] for ps in pset.primitives.values() for p in ps if p.arity == 1}
    assert unary == set(space.unary)
    root_ops = {p.name.split("@")[0] for p in pset.primitives[pset.ret]}
    assert ("add" in root_ops) == (not space.no_final_add)
    gp_ = GeneticProgramming(space, 0)
    rng = pyrandom.Random(0)
    seen_eq = 0
    with _seeded(rng):
        for _ in range(200):
            tree = gp_._new_individual()
            assert tree.height == 2 * space.depth
            tokens = tree_tokens(tree)
            assert len(tokens) == space.length
            assert Rule.from_tokens(tokens) == Rule(_tree_node(tree)[0])
            try:
                check_tokens(space, tokens)
            except TokenGrammarError:
                seen_eq += 1   # equal operands in group 1: repaired below
            ind, rule = gp_._repair(tree)
            check_tokens(space, rule.to_tokens())
    assert seen_eq < 200


def test_gp_leaves_global_random_state_and_creator_alone():
    from deap import creator

    ind_cls = creator.SearchlabGPIndividual
    state = pyrandom.getstate()
    run_search(make("gp", 0), ToyEvaluator(), budget=40, batch_size=10, seed=0, executor=Plain())
    run_search(make("gp", 1), ToyEvaluator(), budget=40, batch_size=10, seed=1, executor=Plain())
    assert pyrandom.getstate() == state
    assert creator.SearchlabGPIndividual is ind_cls


@pytest.mark.slow
def test_gp_is_deterministic_across_processes():
    code = ("from searchlab.runner import run_search\n"
            "from searchlab.testing.toy import ToyEvaluator\n"
            "r = run_search('gp', ToyEvaluator(), budget=40, batch_size=10, seed=3)\n"
            "print(' '.join(r.keys))\n")
    outs = []
    for hashseed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        outs.append(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                   text=True, check=True).stdout)
    assert outs[0] == outs[1] and outs[0].strip()


# --- the real evaluator ----------------------------------------------------------------
_ENSEMBLE_SCRIPT = """
import json, sys, torch
torch.set_num_threads(1)
from searchlab.evaluate import Evaluator
from searchlab.runner import build_strategy, run_search
from searchlab.strategy import STRATEGIES
ev = Evaluator("ensemble", "smoke+problem_steps=20", cache=sys.argv[1])
out = {}
for name in sys.argv[2:]:
    opts = dict(getattr(STRATEGIES.get(name), "conformance_options", {}) or {})
    res = run_search(build_strategy(name, "scratch", 0, **opts), ev, budget=50,
                     batch_size=10, seed=0)
    out[name] = {"stopped": res.stopped, "unique": res.unique, "keys": res.keys,
                 "tasks": sorted({r.task for r in res.results if r.status == "ok"}),
                 "statuses": [r.status for r in res.results],
                 "rewards": [r.reward for r in res.results]}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def ensemble_searches(tmp_path_factory) -> dict[str, Any]:
    """One search of 50 unique evaluations per registered strategy on the problem
    ensemble (Wichrowska et al. 2017) at the ``smoke`` fidelity cut to 20 steps per lr,
    sharing one reward cache.  Run in a subprocess with one torch thread for the whole
    process: changing torch's thread count back and forth (as ``Evaluator(threads=1)``
    does per evaluation) made later foreach ops ~10x slower on the loaded 2-core test
    machine, and must not leak into other tests."""
    cache = tmp_path_factory.mktemp("cache") / "rewards.sqlite"
    out = subprocess.run([sys.executable, "-c", _ENSEMBLE_SCRIPT, str(cache), *NAMES],
                         capture_output=True, text=True, check=True)
    import json

    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_search_of_50_unique_evaluations_on_the_problem_ensemble(name, ensemble_searches):
    res = ensemble_searches[name]
    assert res["stopped"] == "budget" and res["unique"] == 50
    assert len(res["keys"]) == 50 and len(set(res["keys"])) == 50
    assert res["tasks"] == ["ensemble"]
    assert any(s == "ok" and r > 0 for s, r in zip(res["statuses"], res["rewards"]))
