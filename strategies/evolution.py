"""Regularized (aging) evolution (Real, Aggarwal, Huang, Le, AAAI 2019), on token strings.

The method behind the searches of AutoML-Zero and Lion (Chen et al. 2023).  Algorithm 1
of Real et al.:

1. fill a population of ``population`` individuals with uniformly random rules;
2. for every new sample: draw ``sample_size`` individuals uniformly from the population,
   take the one with the highest reward as parent, mutate it into a child, evaluate the
   child, append it to the population and remove the *oldest* individual (aging: every
   individual dies young, so lucky evaluations do not dominate for ever).

Mutation works on the token string and respects the DSL's masks: ``mutations`` times
(default 2), a position whose mask allows an alternative is drawn uniformly, its token is re-sampled among the other valid
tokens, and every later token that the change made invalid is re-drawn from the masks
(the suffix is *repaired*; tokens that are still valid are kept).  Children whose
canonical key this strategy has already seen are re-mutated (up to ``retries`` times) so
the budget goes to new rules.

Batches: ``ask(n)`` breeds ``n`` children from the current population (one tournament
each); ``tell`` ages them in, in order.  Failed evaluations (``diverged``, ``invalid``)
enter the population with the floor reward and are never picked as parents unless the
whole sample failed.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Sequence

import numpy as np

from searchlab.dsl import Rule, Space, valid_next_tokens
from searchlab.result import Result
from searchlab.strategy import STRATEGIES, Strategy

from .random import TokenSampler


def mutate_tokens(tokens: Sequence[str], sampler: TokenSampler, rng: np.random.Generator,
                  n_mutations: int = 1) -> list[str]:
    """Token-level mutation respecting masks: re-sample ``n_mutations`` positions (each
    among the other valid tokens there) and repair the suffix after each one."""
    space = sampler.space
    toks = list(tokens)
    for _ in range(n_mutations):
        # positions where the mask leaves at least one alternative
        movable = [i for i in range(len(toks))
                   if int(valid_next_tokens(space, toks[:i]).sum()) > 1]
        if not movable:
            break
        i = movable[int(rng.integers(len(movable)))]
        new = sampler.choose(toks[:i], rng, exclude=toks[i])
        assert new is not None
        toks[i] = new
        for j in range(i + 1, len(toks)):   # repair: keep what is still valid
            if not valid_next_tokens(space, toks[:j])[space.index[toks[j]]]:
                toks[j] = sampler.choose(toks[:j], rng)  # type: ignore[assignment]
    return toks


@STRATEGIES.register("evolution")
class RegularizedEvolution(Strategy):
    """Aging evolution with mask-respecting token mutations.

    Options:
        population: population size P (Real et al. used 100 for 20k samples; the default
            suits budgets of a few hundred).
        sample_size: tournament sample size S.
        mutations: token positions changed per child.  Real et al. change one operation
            per child; one token is often a neutral step here (``clip_1e-4`` ->
            ``clip_1e-3``), and two tokens beat one on the toy objective at 200-300
            samples (fewer runs stuck on a plateau), so the default is 2.
        retries: re-mutations allowed to avoid a child whose key was already seen.
    """

    def __init__(self, space: Space, seed: int, population: int = 20, sample_size: int = 5,
                 mutations: int = 2, retries: int = 20, **options: Any) -> None:
        if options:
            raise TypeError(f"unknown evolution options {sorted(options)}")
        if population < 1 or not 1 <= sample_size:
            raise ValueError("population and sample_size must be >= 1")
        super().__init__(space, seed)
        self.population_size = population
        self.sample_size = sample_size
        self.mutations = mutations
        self.retries = retries
        self.rng = np.random.default_rng(seed)
        self.sampler = TokenSampler(space)
        self.population: deque[tuple[tuple[str, ...], float]] = deque()
        self.seen: set[str] = set()          # keys proposed so far (told or pending)
        self.pending: list[tuple[str, ...]] = []
        self.initial_asked = 0

    def _novel(self, make: Any) -> list[str]:
        toks = make()
        for _ in range(self.retries):
            if Rule.from_tokens(toks).key not in self.seen:
                break
            toks = make()
        return toks

    def _child(self) -> list[str]:
        pop = list(self.population)
        k = min(self.sample_size, len(pop))
        idx = self.rng.choice(len(pop), size=k, replace=False)
        # highest reward wins; ties go to the youngest (largest index = most recent)
        best = max(idx, key=lambda i: (pop[i][1], i))
        parent = pop[best][0]
        return self._novel(lambda: mutate_tokens(parent, self.sampler, self.rng, self.mutations))

    def ask(self, n: int) -> list[Rule]:
        rules = []
        for _ in range(n):
            if self.initial_asked < self.population_size or not self.population:
                toks = self._novel(lambda: self.sampler.sample(self.rng))
                self.initial_asked += 1
            else:
                toks = self._child()
            rule = Rule.from_tokens(toks)
            self.seen.add(rule.key)
            self.pending.append(tuple(toks))
            rules.append(rule)
        return rules

    def tell(self, results: Sequence[Result]) -> None:
        if len(results) != len(self.pending):
            raise ValueError(f"told {len(results)} results for {len(self.pending)} asked rules")
        for toks, res in zip(self.pending, results):
            self.population.append((toks, float(res.reward)))
            while len(self.population) > self.population_size:
                self.population.popleft()          # aging: the oldest dies
        self.pending = []

    @property
    def warmup(self) -> int:
        return self.population_size      # the initial population is uniformly random

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "population": list(self.population),
                "seen": sorted(self.seen), "initial_asked": self.initial_asked}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.population = deque((tuple(t), float(r)) for t, r in state["population"])
        self.seen = set(state["seen"])
        self.initial_asked = int(state["initial_asked"])
