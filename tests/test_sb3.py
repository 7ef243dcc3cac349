"""The ``sb3`` strategy (strategies/sb3.py): SB3 / sb3-contrib agents on the env, run
through the runner's evaluation path, stopped by the budget, with the documented
invalid-token policies of algorithms without mask support."""

from __future__ import annotations

import random

import gymnasium as gym
import numpy as np
import pytest
import torch

import searchlab.envs as envs
from searchlab.dsl import Rule, check_tokens, get_space, valid_next_tokens
from searchlab.result import FLOOR_REWARD, Result
from searchlab.runner import build_strategy, run_search
from searchlab.strategy import STRATEGIES
from searchlab.testing.toy import ToyEvaluator
from searchlab.tracking import MemoryTracker
from searchlab.strategies.sb3 import SB3Strategy, _TrainingReward, algorithm_class

SMALL = get_space("small")


class CountingEvaluator:
    """The toy evaluator, recording every rule it is asked to evaluate."""

    task_name, protocol = "toy", "probe"   # the searchlab.interfaces.Evaluator contract

    def __init__(self) -> None:
        self.inner = ToyEvaluator()
        self.calls: list[str] = []

    def evaluate(self, rule: Rule, seed: int) -> Result:
        self.calls.append(rule.key)
        return self.inner.evaluate(rule, seed)


def search(budget: int, seed: int = 0, evaluator=None, tracker=None, **options):
    strat = build_strategy("sb3", "small", seed, **options)
    res = run_search(strat, evaluator or ToyEvaluator(), budget=budget, seed=seed,
                     tracker=tracker)
    return strat, res


def test_registered_and_owns_its_loop():
    assert STRATEGIES.get("sb3") is SB3Strategy and SB3Strategy.owns_loop
    s = build_strategy("sb3", "small", 0)
    with pytest.raises(NotImplementedError):
        s.ask(1)
    with pytest.raises(NotImplementedError):
        s.tell([])
    with pytest.raises(KeyError, match="MaskablePPO"):
        build_strategy("sb3", "small", 0, algo="NoSuchAlgo")
    from sb3_contrib import MaskablePPO, RecurrentPPO
    from stable_baselines3 import A2C, DQN, PPO

    assert [algorithm_class(n) for n in ("MaskablePPO", "RecurrentPPO", "PPO", "A2C", "DQN")] \
        == [MaskablePPO, RecurrentPPO, PPO, A2C, DQN]


def test_maskable_ppo_search_spends_exactly_the_budget_with_no_invalid_token():
    ev, tracker = CountingEvaluator(), MemoryTracker()
    strat, res = search(40, evaluator=ev, tracker=tracker)
    assert res.stopped == "budget" and res.unique == 40 == len(set(res.keys))
    assert strat.stats["invalid"] == 0                    # masks honoured
    for r in res.results:
        check_tokens(SMALL, r.tokens)
        assert r.status == "ok"
    # every terminal reward came through the runner's path: one evaluate call per
    # episode, the evaluator ran once per unique key, the tracker logged each once
    assert res.asked == strat.stats["episodes"]
    assert sorted(ev.calls) == sorted(res.keys)
    assert [r.key for _, r in tracker.samples] == res.keys
    assert [i for i, _ in tracker.samples] == list(range(40))
    # learn() stopped at the budget: no episode after the last evaluation
    assert strat.stats["steps"] == strat.stats["episodes"] * SMALL.length
    # sample-limited defaults reached the model
    assert strat.model.n_steps == 64 and strat.model.batch_size == 32
    assert strat.model.gamma == 1.0


def test_hyperparameters_and_policy_kwargs_reach_the_model():
    strat, res = search(5, n_steps=16, batch_size=8, learning_rate=5e-4,
                        policy_kwargs={"net_arch": [17]})
    m = strat.model
    assert m.n_steps == 16 and m.batch_size == 8 and m.learning_rate == 5e-4
    assert any(isinstance(l, torch.nn.Linear) and l.out_features == 17
               for l in m.policy.mlp_extractor.modules())
    assert strat.name == "sb3[MaskablePPO,batch_size=8,learning_rate=0.0005,n_steps=16,policy_kwargs={'net_arch': [17]}]"


def test_deterministic_for_a_seed_and_leaves_global_rngs_alone():
    state = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    a = search(15, seed=3)[1].keys
    assert random.getstate() == state[0]
    assert np.array_equal(np.random.get_state()[1], state[1])
    assert torch.equal(torch.get_rng_state(), state[2])
    b = search(15, seed=3)[1].keys
    c = search(15, seed=4)[1].keys
    assert a == b and a != c


def test_recurrent_ppo_with_remapped_actions_writes_only_rules():
    """Default invalid-token policy of maskless agents: actions index the valid tokens."""
    strat, res = search(12, algo="RecurrentPPO")
    assert strat.policy == "MlpLstmPolicy" and strat.name == "sb3[RecurrentPPO]"
    assert res.stopped == "budget" and res.unique == 12
    assert strat.stats["invalid"] == 0
    assert all(r.status == "ok" for r in res.results)


def test_recurrent_ppo_with_ended_episodes_spends_no_budget_on_invalid_tokens():
    """``invalid="end"``: a masked-out token ends the episode, nothing is evaluated, no
    budget is spent; only complete rules reach the runner."""
    ev = CountingEvaluator()
    strat, res = search(50, evaluator=ev, algo="RecurrentPPO", invalid="end", max_steps=150)
    st = strat.stats
    assert strat.name == "sb3[RecurrentPPO,invalid=end]"
    assert st["invalid"] > 0
    assert res.stopped in ("exhausted", "budget")
    assert res.unique < 50 or res.stopped == "budget"
    # every valid episode (and only those) went through the runner's path
    assert res.asked == st["episodes"] - st["invalid"]
    assert len(ev.calls) == res.unique
    assert not any(r.status == "invalid" for r in res.results)


@pytest.mark.parametrize("algo", ["PPO", "A2C", "DQN"])
def test_other_algorithms_run(algo):
    strat, res = search(6, algo=algo)
    assert res.stopped == "budget" and res.unique == 6
    assert strat.stats["invalid"] == 0                    # remapped actions


# --- the training reward (unit level) --------------------------------------------------
def make_wrapped(invalid_reward="progress", repeats="floor", cached=False, repeat=False,
                 reward=0.7):
    calls: list[Rule] = []

    def evaluate(rules):
        calls.extend(rules)
        return [Result(rule=r.text, key=r.key, reward=reward, cached=cached, repeat=repeat)
                for r in rules]

    env = gym.make(envs.ENV_ID, space=SMALL, evaluate=evaluate, disable_env_checker=True)
    stats = {"steps": 0, "episodes": 0, "invalid": 0, "invalid_streak": 0, "repeats": 0}
    return _TrainingReward(env, invalid_reward, repeats, stats), calls, stats


def invalid_action(prefix) -> int:
    return int(np.flatnonzero(~valid_next_tokens(SMALL, prefix))[0])


@pytest.mark.parametrize("policy,expected", [("progress", FLOOR_REWARD - 1 + 2 / 10),
                                             ("floor", FLOOR_REWARD), (-3.0, -3.0)])
def test_invalid_token_reward_policy(policy, expected):
    env, calls, stats = make_wrapped(invalid_reward=policy)
    env.reset(seed=0)
    prefix = []
    for _ in range(2):                                     # two valid tokens, then a bad one
        a = int(np.flatnonzero(valid_next_tokens(SMALL, prefix))[0])
        env.step(a)
        prefix.append(SMALL.vocab[a])
    _, reward, terminated, _, info = env.step(invalid_action(prefix))
    assert terminated and info["status"] == "invalid" and reward == pytest.approx(expected)
    assert calls == []                                     # nothing evaluated, no budget
    assert stats["invalid"] == 1 and stats["episodes"] == 1


# a repeat is marked cached and repeat by the runner; a reward-cache hit only cached
@pytest.mark.parametrize("repeats,cached,repeat,expected", [
    ("floor", True, True, FLOOR_REWARD), ("floor", False, False, 0.7),
    ("floor", True, False, 0.7), ("learn", True, True, 0.7)])
def test_repeats_policy(repeats, cached, repeat, expected):
    env, calls, stats = make_wrapped(repeats=repeats, cached=cached, repeat=repeat)
    env.reset(seed=0)
    prefix: list[str] = []
    reward, terminated = 0.0, False
    while not terminated:
        a = int(np.flatnonzero(valid_next_tokens(SMALL, prefix))[0])
        _, reward, terminated, _, _ = env.step(a)
        prefix.append(SMALL.vocab[a])
    assert len(calls) == 1 and reward == pytest.approx(expected)
    assert stats["repeats"] == int(repeat)
