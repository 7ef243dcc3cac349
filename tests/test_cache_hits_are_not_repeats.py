"""A reward-cache hit is a unique evaluation, not a repeat.

The learning strategies (nos-ppo, reinforce, sb3) score a *repeat* (a rule the search has
already evaluated, answered from its own memory without spending budget) as
``FLOOR_REWARD`` in their tuned presets.  A rule another search already put in the shared
reward cache is new to this search and spends budget: the strategy must see its real
reward.  Before ``Result.repeat`` existed, both carried only ``cached=True``, so a warm
cache changed what the learners learned: the same config and seed gave other samples
(found when a verdict's learners did not replay from their own reward cache).  Checked
for every registered strategy: none may learn anything from the cache's state."""
from __future__ import annotations

import pytest

from searchlab.evaluate import Evaluator
from searchlab.runner import run_search
from searchlab.strategy import BUILTIN_STRATEGIES


def _search(strategy: str, cache_dir):
    ev = Evaluator("ensemble", "smoke", threads=1, cache_dir=cache_dir)
    return run_search(strategy, ev, budget=40, batch_size=10, seed=0, space="scratch")


@pytest.mark.parametrize("strategy", sorted(BUILTIN_STRATEGIES))
def test_a_warm_reward_cache_gives_the_same_samples(tmp_path, strategy):
    cold = _search(strategy, tmp_path / "cache")
    warm = _search(strategy, tmp_path / "cache")
    # the cold search has hits only where two keys share a functional fingerprint
    assert sum(r.cached for r in warm.results) > sum(r.cached for r in cold.results)
    assert [r.key for r in warm.results] == [r.key for r in cold.results]
    assert [r.reward for r in warm.results] == [r.reward for r in cold.results]
    assert not any(r.repeat for r in warm.results)           # unique evaluations only
