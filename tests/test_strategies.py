"""Strategy conformance suite (Optuna ``pytest_samplers`` pattern), parametrised over the
``STRATEGIES`` registry, so strategies added later are covered automatically; plus
tests of the random, evolution and GP internals.

The conformance checks are the functions of :mod:`searchlab.testing.conformance` (which
outside authors call from their own tests): every registered strategy must carry its
registered name, spend exactly the budget in unique evaluations, propose only valid rules
of the space, be deterministic for a seed without touching the global RNGs, survive
``diverged`` and ``invalid`` results and checkpoint its state.  Each check is also shown
to fail for a strategy broken on purpose.  Here only: every learning strategy (all but
``random``) must beat random search's median best reward at a fixed budget over several
seeds on the toy objective.

A strategy class may define ``conformance_options: dict`` (e.g. a small-budget preset);
the checks build it with those options.  Runs go through ``run_search`` (owns_loop
strategies through ``Strategy.run``), on the millisecond :class:`ToyEvaluator`.
"""

from __future__ import annotations

import os
import random as pyrandom
import subprocess
import sys
from collections import Counter
from typing import Any, Sequence

import numpy as np
import pytest

from searchlab.dsl import (Rule, Space, TokenGrammarError, check_tokens, count_rules,
                           get_space, valid_next_tokens)
from searchlab.dsl.tokens import operand_node, unary_node
from searchlab.dsl.nodes import Bin
from searchlab.strategy import STRATEGIES, Strategy
from searchlab.testing.conformance import (check_budget, check_deterministic, check_name,
                                           check_rules_in_space, check_state,
                                           check_strategy, check_survives_failures,
                                           record_search)
from searchlab.testing.toy import ToyEvaluator

NAMES = STRATEGIES.names()
LEARNING = [n for n in NAMES if n != "random"]


# --- conformance ---------------------------------------------------------------------
def test_registry_holds_the_builtin_strategies():
    assert {"random", "evolution", "gp"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_name_is_the_registered_name(name):
    check_name(name)


@pytest.mark.parametrize("name", NAMES)
def test_budget_is_respected_exactly(name):
    check_budget(name, seed=0, budget=23, batch_size=4)


@pytest.mark.parametrize("space", [get_space("scratch"), get_space("small", depth=1),
                                   get_space("paper", depth=3)], ids=lambda s: f"{s.name}-d{s.depth}")
@pytest.mark.parametrize("name", NAMES)
def test_only_valid_rules_of_the_space(name, space):
    check_rules_in_space(name, space=space, seed=1, budget=20)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_for_a_seed(name):
    check_deterministic(name, seeds=(7, 8), budget=25)


@pytest.mark.parametrize("status", ["diverged", "invalid"])
@pytest.mark.parametrize("name", NAMES)
def test_survives_failed_evaluations(name, status):
    check_survives_failures(name, status=status, seed=2, budget=30, fail_rate=0.4)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_pickles_and_continues_identically(name):
    check_state(name, seed=0, budget=10)


def test_check_strategy_runs_every_check():
    check_strategy("random", space="small", seeds=(3, 4), budget=20)
    with pytest.raises(AssertionError, match="Strategy.name is ''"):
        check_strategy(Sampler)           # starts with check_name: not registered


# --- the checks fail for strategies broken on purpose ----------------------------------
class Sampler(Strategy):
    """A correct random search, except that it is not registered (no name)."""

    def __init__(self, space: Space, seed: int, **options: Any) -> None:
        from searchlab.strategies.random import TokenSampler

        super().__init__(space, seed)
        self.rng: Any = np.random.default_rng(seed)
        self.sampler = TokenSampler(space)

    def ask(self, n: int) -> list[Rule]:
        return [Rule.from_tokens(self.sampler.sample(self.rng)) for _ in range(n)]

    def tell(self, results: Sequence[Any]) -> None:
        return None


def _subclass(cls_name: str, **attrs: Any) -> type[Strategy]:
    return type(cls_name, (Sampler,), attrs)


def _stuck_ask(self, n):
    return [Rule.from_tokens(self.sampler.sample(np.random.default_rng(0)))] * n


def _outside_init(self, space, seed, **options):
    Sampler.__init__(self, get_space("paper", depth=3), seed)
    self.space = space                       # proposes rules of another space


def _global_init(self, space, seed, **options):
    Sampler.__init__(self, space, seed)
    np.random.seed(seed)
    self.rng = np.random                     # draws from (and moves) NumPy's global RNG


def _fragile_tell(self, results):
    bad = [r.status for r in results if r.status != "ok"]
    if bad:
        raise ValueError(f"cannot learn from {bad[0]} results")


def _unseeded_init(self, space, seed, **options):
    Sampler.__init__(self, space, seed)
    self.rng = np.random.default_rng()       # fresh entropy: not reproducible


def _fixed_init(self, space, seed, **options):
    Sampler.__init__(self, space, 0)         # ignores its seed


Fragile = _subclass("Fragile", tell=_fragile_tell)
Forgetful = _subclass("Forgetful", state_dict=lambda self: {"rng": self.rng.bit_generator.state},
                      load_state_dict=lambda self, state: None)


BROKEN = [
    (check_name, Sampler, "Strategy.name is ''"),
    (check_name, _subclass("Impostor", name="random"), "not registered as 'random'"),
    (check_budget, _subclass("Stuck", ask=_stuck_ask), "stopped 'stalled' after 1 of 23"),
    (check_budget, _subclass("TooMany", ask=lambda self, n: Sampler.ask(self, n + 1)),
     r"ask\(n\) returned k rules outside 1..n"),
    (check_rules_in_space, _subclass("Outside", __init__=_outside_init), "not a rule of space 'scratch'"),
    (check_deterministic, _subclass("Unseeded", __init__=_unseeded_init), "two searches with seed 7 differ"),
    (check_deterministic, _subclass("SeedIgnored", __init__=_fixed_init), "evaluated the same rules"),
    (check_deterministic, _subclass("GlobalRng", __init__=_global_init), "global RNG state of numpy"),
    (check_survives_failures, Fragile, "ValueError: cannot learn from diverged"),
    (check_state, Forgetful, "proposed different rules than the original"),
    (check_state, _subclass("Unpicklable", state_dict=lambda self: {"f": lambda: 0}), "does not pickle"),
]


@pytest.mark.parametrize("check,broken,message", BROKEN,
                         ids=[f"{c.__name__}-{b.__name__}" for c, b, _ in BROKEN])
def test_checks_fail_for_broken_strategies(check, broken, message):
    with pytest.raises(AssertionError, match=message):
        check(broken)


def test_checks_pass_for_the_unbroken_strategy():
    for check in {c for c, _, _ in BROKEN} - {check_name}:   # Sampler is not registered
        check(Sampler)


# "learning strategies beat random": the toy objective on the `small` space (the space
# made for tests and demos), a budget of 200 unique evaluations, seeds 0..6.  The
# comparison is of medians of the best reward; with the default target PowerSign the
# toy gives partial credit for building blocks (see searchlab.testing.toy), so learning pays.
LEARN_BUDGET, LEARN_SEEDS, LEARN_SPACE = 200, range(7), "small"


def _median_best(name: str) -> float:
    return float(np.median([record_search(name, seed=s, budget=LEARN_BUDGET, space=LEARN_SPACE,
                                          batch_size=10).result.best_reward
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


def test_random_draws_are_numpys_weighted_choice():
    """TokenSampler.choose draws with a cached cdf; the same generator state must give
    what numpy's own ``Generator.choice(k, p=...)`` gives (weights from the independent
    enumeration of complete strings), so replayed searches keep their rules."""
    from searchlab.strategies.random import TokenSampler

    strings = _all_strings(TINY)
    sampler = TokenSampler(TINY)
    ours, ref = np.random.default_rng(7), np.random.default_rng(7)
    for _ in range(300):
        prefix: list[str] = []
        while len(prefix) < TINY.length:
            cands = [TINY.vocab[i] for i in np.flatnonzero(valid_next_tokens(TINY, prefix))]
            w = np.array([sum(s[:len(prefix) + 1] == (*prefix, c) for s in strings)
                          for c in cands], dtype=float)
            expect = cands[int(ref.choice(len(cands), p=w / w.sum()))]
            got = sampler.choose(prefix, ours)
            assert got == expect
            prefix.append(got)


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
    record_search("gp", seed=0, budget=40, batch_size=10)
    record_search("gp", seed=1, budget=40, batch_size=10)
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
