"""The Gymnasium environment ``searchlab/OptimizerSearch-v0`` (envs/)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import gymnasium
import numpy as np
import pytest

import searchlab.envs as envs
from searchlab.envs import ENV_ID, OptimizerSearchEnv
from searchlab.dsl import Rule, get_space, parse, valid_next_tokens
from searchlab.result import FLOOR_REWARD
from searchlab.runner import run_search
from searchlab.strategy import Strategy
from searchlab.testing.toy import ToyEvaluator

POWERSIGN = parse("exp(sign(g)*sign(m))*g")


def toy_env(**kw) -> OptimizerSearchEnv:
    return OptimizerSearchEnv(task="toy", **kw)


def write(env: OptimizerSearchEnv, tokens, seed: int | None = 0):
    obs, info = env.reset(seed=seed)
    out = []
    for t in tokens:
        out.append(env.step(env.space.index[t]))
    return out


def test_make_works_in_a_fresh_interpreter():
    code = ("import gymnasium, searchlab  # import searchlab registers the env\n"
            "env = gymnasium.make('searchlab/OptimizerSearch-v0', task='toy', space='small', depth=1)\n"
            "obs, info = env.reset(seed=0)\n"
            "print(env.action_space.n, obs.shape, env.unwrapped.space.length)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    words = out.stdout.split()
    assert int(words[0]) == len(get_space("small", depth=1).vocab) and int(words[-1]) == 5


@pytest.mark.parametrize("eval_seed", [0, None])
def test_gymnasium_check_env(eval_seed):
    from gymnasium.utils.env_checker import check_env

    with warnings.catch_warnings():
        warnings.simplefilter("error")   # the checker's warnings are failures too
        check_env(toy_env(eval_seed=eval_seed), skip_render_check=True)
    check_env(gymnasium.make(ENV_ID, task="toy").unwrapped, skip_render_check=True)


def test_sb3_check_env():
    from stable_baselines3.common.env_checker import check_env

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(toy_env(), warn=True)


def test_episode_writes_a_rule_and_the_terminal_reward_is_the_evaluators():
    env = toy_env()
    steps = write(env, POWERSIGN.to_tokens())
    assert all(r == 0.0 and not term for _, r, term, _, _ in steps[:-1])
    obs, reward, term, trunc, info = steps[-1]
    expected = ToyEvaluator().evaluate(POWERSIGN, 0)
    assert term and not trunc and type(reward) is float
    assert reward == pytest.approx(expected.reward) and reward == pytest.approx(1.0)
    assert info["rule"] == POWERSIGN.text and info["key"] == POWERSIGN.key
    assert info["status"] == "ok" and info["best_lr"] == pytest.approx(expected.best_lr)
    assert info["cost"] >= 0.0 and info["result"].reward == reward
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)


def test_masked_out_action_ends_the_episode_as_invalid():
    env = toy_env()
    env.reset(seed=0)
    env.step(env.space.index["g"])
    bad = env.space.index["g"]                  # distinct operands: g after g is masked
    assert not env.action_masks()[bad]
    obs, reward, term, trunc, info = env.step(bad)
    assert term and not trunc and reward == FLOOR_REWARD and type(reward) is float
    assert info["status"] == "invalid" and info["key"] == "" and "masked" in info["message"]
    with pytest.raises(ValueError):
        env.reset(seed=0)
        env.step(len(env.space.vocab))          # outside Discrete(V): a programming error


def test_masks_come_from_the_dsl_and_observation_encodes_prefix_and_position():
    env = toy_env(space="scratch", depth=3)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=1)
    V, L = len(env.space.vocab), env.space.length
    assert env.observation_space.shape == (L * V + L + 1,) and L == 15
    tokens: list[str] = []
    while True:
        mask = env.action_masks()
        assert np.array_equal(mask, valid_next_tokens(env.space, tokens)) and mask.any()
        # decode the observation independently
        assert obs.dtype == np.float32 and obs.shape == env.observation_space.shape
        onehot = obs[: L * V].reshape(L, V)
        assert [env.space.vocab[i] for i in onehot[: len(tokens)].argmax(1)] == tokens
        assert onehot[len(tokens):].sum() == 0 and onehot.sum() == len(tokens)
        assert obs[L * V:].argmax() == len(tokens) and obs[L * V:].sum() == 1
        a = int(rng.choice(np.flatnonzero(mask)))
        tokens.append(env.space.vocab[a])
        obs, reward, term, _, info = env.step(a)
        if term:
            break
    assert len(tokens) == L and info["status"] in ("ok", "diverged")
    assert not env.action_masks().any()
    assert info["key"] == Rule.from_tokens(tokens).key


def test_eval_seed_none_seeds_evaluation_from_reset():
    # a stochastic rule (eps): same reset seed -> same reward; other seeds differ
    tokens = ("g", "eps", "id", "id", "add", "o1", "1", "id", "id", "mul")   # (g + eps)*1
    assert Rule.from_tokens(tokens).is_stochastic
    env = toy_env(eval_seed=None)
    r = [write(env, tokens, seed=s)[-1][1] for s in (3, 3, 4, 5)]
    assert r[0] == r[1] and len({r[0], r[2], r[3]}) > 1
    fixed = toy_env(eval_seed=7)
    assert len({write(fixed, tokens, seed=s)[-1][1] for s in (3, 4, 5)}) == 1


def test_evaluate_callable_routes_episodes_through_the_runner_path():
    seen = []

    def evaluate(rules):
        seen.extend(r.text for r in rules)
        return [ToyEvaluator(target="g*1").evaluate(r, 0) for r in rules]

    env = toy_env(evaluate=evaluate)
    reward = write(env, POWERSIGN.to_tokens())[-1][1]
    assert seen == [POWERSIGN.text]
    assert reward == pytest.approx(ToyEvaluator(target="g*1").evaluate(POWERSIGN, 0).reward)


class EnvRandom(Strategy):
    """owns_loop test strategy: plays masked random episodes on the env."""

    owns_loop = True

    def ask(self, n):  # pragma: no cover
        raise AssertionError

    def tell(self, results):  # pragma: no cover
        raise AssertionError

    def run(self, evaluate, done):
        env = OptimizerSearchEnv(space=self.space, evaluate=evaluate)
        rng = np.random.default_rng(self.seed)
        self.rewards = []
        while not done():
            env.reset(seed=int(rng.integers(1 << 30)))
            term = False
            while not term:
                a = int(rng.choice(np.flatnonzero(env.action_masks())))
                _, r, term, _, info = env.step(a)
            self.rewards.append((info["key"], r))


def test_env_inside_run_search_shares_dedup_budget_and_tracking():
    from searchlab.tracking import MemoryTracker

    tr = MemoryTracker()
    strat = EnvRandom(get_space("small", depth=1), 0)
    res = run_search(strat, ToyEvaluator(), budget=30, seed=0, tracker=tr)
    assert res.unique == 30 and len(tr.samples) == 30 and len(set(res.keys)) == 30
    assert res.asked == len(strat.rewards)
    first = {r.key: r.reward for r in res.results}
    assert all(first[k] == r for k, r in strat.rewards)


@pytest.mark.slow
def test_maskable_ppo_never_plays_a_masked_token():
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.callbacks import BaseCallback

    class Count(BaseCallback):
        statuses: list = []

        def _on_step(self) -> bool:
            for info, d in zip(self.locals["infos"], self.locals["dones"]):
                if d:
                    self.statuses.append(info["status"])
            return True

    env = toy_env(space="small")
    cb = Count()
    MaskablePPO("MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=1, seed=0,
                device="cpu").learn(320, callback=cb)
    assert len(cb.statuses) >= 30 and "invalid" not in cb.statuses


@pytest.mark.slow
def test_recurrent_ppo_runs_on_the_box_observation():
    from sb3_contrib import RecurrentPPO

    env = toy_env(space="small", depth=1)
    RecurrentPPO("MlpLstmPolicy", env, n_steps=32, batch_size=16, n_epochs=1, seed=0,
                 device="cpu", policy_kwargs={"lstm_hidden_size": 16}).learn(64)
