"""``sb3``: any stable-baselines3 / sb3-contrib algorithm on the Gymnasium env.

The agent drives its own loop (``owns_loop``): :meth:`SB3Strategy.run` builds
``searchlab/OptimizerSearch-v0`` (:mod:`envs`) on the strategy's space with the runner's
``evaluate`` path injected — so every terminal evaluation goes through the same cache,
budget and tracker as any other strategy — and calls ``learn()`` with a callback that
stops as soon as ``done()`` (budget spent or search stalled).

Options (everything not listed is passed to the algorithm's constructor)::

    algo            "MaskablePPO" (default) | "RecurrentPPO" | "PPO" | "A2C" | "DQN" | any
                    class name in sb3_contrib or stable_baselines3
    policy          policy name (default "MlpLstmPolicy" for RecurrentPPO, else "MlpPolicy")
    repeats         "floor" (default) | "learn": reward of rules the runner answered from
                    memory (see strategies.controller: a repeat spends no budget and
                    cannot improve the search; "floor" keeps the agent off repeats)
    invalid         "remap" (default) | "end": invalid-token policy of algorithms
                    without mask support (see below)
    invalid_reward  "progress" (default) | "floor" | a number: training reward of an
                    episode ended by a masked-out token (``invalid="end"`` only)
    max_steps       hard cap on env steps (default 1_000_000)
    max_invalid_streak  stop after this many consecutive invalid episodes (default 20_000)
    chunk_steps     ``total_timesteps`` of each ``learn()`` call (default 20_000)

Sample-limited defaults (PPO's default ``n_steps=2048`` trains nothing in a
300-evaluation budget of ~3,000 env steps; ARCHITECTURE.md, "Dependency facts"):
on-policy algorithms collect ``n_steps=64`` steps per update (``batch_size=32``, 4
epochs); ``gamma=1`` and ``gae_lambda=1`` (an episode is one rule with its reward at the
end, no discount, as in the paper); DQN gets a 10,000-step replay buffer (the default
10^6 would allocate gigabytes of one-hot observations) and explores over its first 2,000
steps.

Masks.  ``MaskablePPO`` reads the env's ``action_masks()`` (the DSL's single mask
function), so it only writes valid rules.  The other algorithms have no mask support
(``RecurrentPPO`` included: only ``MaskablePPO`` reads ``action_masks()``) and need an
invalid-token policy, option ``invalid``:

* ``"remap"`` (default): the agent's action ``a`` means the ``(a mod k)``-th of the
  ``k`` tokens the mask allows at this position (in vocabulary order).  Every action is
  valid, every episode is a rule of the space, nothing invalid is ever written.  It is
  a fixed function of the observation (which holds the prefix) and the action, so the
  agent still faces a proper MDP; the price is aliasing (with ``V`` actions and ``k``
  valid tokens some tokens have one more alias than others, so a uniform policy is not
  uniform over tokens).
* ``"end"``: the env's own policy.  The first masked-out token ends the episode with
  status ``invalid`` and ``FLOOR_REWARD``; nothing is evaluated, so **such an episode
  spends no budget**, is not a result and is not logged (the budget counts
  evaluations, the expensive part; a token string that is not a rule costs nothing).
  The reward the *agent* is trained on is ``invalid_reward``: ``"progress"`` (default,
  ``FLOOR_REWARD - 1 + p / L`` for a bad token at position ``p`` of ``L``: below every
  evaluated rule and higher the further the agent got), ``"floor"`` or a number.
  Measured: ``RecurrentPPO`` on ``small`` wrote no valid rule in 14,000 steps (~2,900
  episodes) this way, because random tokens almost never form a rule (about 1 in 10^4
  for ``small``, 10^6 for ``scratch``); hence ``"remap"`` is the default.

Because ``"end"`` episodes are free, the run is bounded by ``max_invalid_streak`` and
``max_steps``; when one of them stops it before the budget is spent, the runner reports
``stopped == "exhausted"``.  Counters are in :attr:`SB3Strategy.stats`.

Seeding.  The model gets ``seed`` (SB3 seeds its policy, the env and the action space
from it via ``set_random_seed``, which writes the *global* ``random``/NumPy/torch RNGs);
:meth:`run` saves those global states and restores them afterwards, so a search leaves
no trace on the caller's RNGs.  Same seed, same rules (CPU, one torch thread).  Resume
replays the search from the seed (no ``state_dict``).
"""

from __future__ import annotations

import contextlib
import random
from typing import Any, Callable, Iterator, Sequence

import gymnasium as gym
import numpy as np
import torch

from searchlab.dsl import Rule, Space
from searchlab.result import FLOOR_REWARD, Result
from searchlab.strategy import STRATEGIES, Strategy

from .controller import single_thread

__all__ = ["SB3Strategy", "algorithm_class", "default_hyperparameters"]

_ON_POLICY_PPO = {"PPO", "MaskablePPO", "RecurrentPPO", "TRPO"}


def algorithm_class(name: str) -> type:
    """The SB3 algorithm class called ``name`` (sb3-contrib first, then SB3)."""
    import sb3_contrib
    import stable_baselines3
    from stable_baselines3.common.base_class import BaseAlgorithm

    for module in (sb3_contrib, stable_baselines3):
        cls = getattr(module, name, None)
        if isinstance(cls, type) and issubclass(cls, BaseAlgorithm):
            return cls
    valid = sorted(n for m in (sb3_contrib, stable_baselines3) for n in dir(m)
                   if isinstance(getattr(m, n), type) and issubclass(getattr(m, n), BaseAlgorithm))
    raise KeyError(f"unknown stable-baselines3 algorithm {name!r}; valid: {valid}")


def default_hyperparameters(algo: str) -> dict[str, Any]:
    """Sample-limited defaults for ``algo`` (see the module docstring)."""
    if algo in _ON_POLICY_PPO:
        hp: dict[str, Any] = dict(n_steps=64, batch_size=32, gamma=1.0, gae_lambda=1.0,
                                  ent_coef=0.0015, learning_rate=1e-3)
        if algo != "TRPO":
            hp["n_epochs"] = 4
        return hp
    if algo == "A2C":
        return dict(n_steps=10, gamma=1.0, gae_lambda=1.0, ent_coef=0.0015, learning_rate=1e-3)
    if algo in ("DQN", "QRDQN"):
        return dict(buffer_size=10_000, learning_starts=200, train_freq=4, batch_size=32,
                    target_update_interval=250, gamma=1.0, exploration_fraction=0.1,
                    exploration_initial_eps=1.0, exploration_final_eps=0.05)
    return {}


@contextlib.contextmanager
def _global_rng_preserved() -> Iterator[None]:
    """Restore Python's, NumPy's and torch's global RNG states on exit (SB3 seeds them)."""
    py, npy, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(th)


#: what the agent's side keeps of the env's info: SB3 reads none of the env's own keys
#: (its Monitor adds ``episode``, DummyVecEnv ``terminal_observation``), and DummyVecEnv
#: deep-copies every step's info, which for the Result, the token tuple and the mask list
#: was ~7 % of a search on a table (the runner has the Result already)
_INFO_KEPT = ("position", "status", "rule")


def _slim(info: dict[str, Any]) -> dict[str, Any]:
    return {k: info[k] for k in _INFO_KEPT if k in info}


@contextlib.contextmanager
def _distribution_checks_off() -> Iterator[None]:
    """Skip ``torch.distributions`` argument validation (restored on exit).

    MaskablePPO builds two categorical distributions per env step and validates their
    logits each time (about a tenth of its rollout time on a table, in a profile); the
    values are the same with validation off, only the check is skipped (the logits
    come from the policy)."""
    from torch.distributions import Distribution

    before = Distribution._validate_args
    Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(before)


class _TrainingReward(gym.Wrapper):
    """What the agent is trained on: invalid-token episodes and repeats per the policy.

    Leaves the evaluation path alone (results, budget and logging are the runner's);
    only the reward the agent sees changes.  Counts episodes for :attr:`SB3Strategy.stats`.
    """

    def __init__(self, env: gym.Env, invalid_reward: str | float, repeats: str,
                 stats: dict[str, int]) -> None:
        super().__init__(env)
        self.invalid_reward = invalid_reward
        self.repeats = repeats
        self.stats = stats

    def action_masks(self) -> np.ndarray:       # MaskablePPO finds it on the outer wrapper
        return self.env.unwrapped.action_masks()  # type: ignore[attr-defined]

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.stats["steps"] += 1
        if terminated or truncated:
            self.stats["episodes"] += 1
            result = info.get("result")
            if result is None and info.get("status") == "invalid":   # masked-out token
                self.stats["invalid"] += 1
                self.stats["invalid_streak"] += 1
                reward = self._invalid(int(info["position"]))
            else:
                self.stats["invalid_streak"] = 0
                if result is not None and result.repeat:
                    self.stats["repeats"] += 1
                    if self.repeats == "floor":
                        reward = float(FLOOR_REWARD)
        return obs, float(reward), terminated, truncated, _slim(info)

    def _invalid(self, position: int) -> float:
        if self.invalid_reward == "progress":
            return float(FLOOR_REWARD - 1.0 + position / self.env.unwrapped.length)  # type: ignore[attr-defined]
        if self.invalid_reward == "floor":
            return float(FLOOR_REWARD)
        return float(self.invalid_reward)


class _ValidTokenActions(gym.ActionWrapper):
    """``invalid="remap"``: action ``a`` writes the ``(a mod k)``-th of the ``k`` valid tokens."""

    def action(self, action: Any) -> int:
        valid = np.flatnonzero(self.env.unwrapped.action_masks())  # type: ignore[attr-defined]
        return int(valid[int(action) % len(valid)])


@STRATEGIES.register("sb3")
class SB3Strategy(Strategy):
    """A stable-baselines3 / sb3-contrib agent writing rules in the Gymnasium env.

    See the module docstring for the options, the sample-limited defaults and the
    invalid-token policy of algorithms without mask support.
    """

    owns_loop = True

    def __init__(self, space: Space, seed: int, algo: str = "MaskablePPO",
                 policy: str | None = None, repeats: str = "floor", invalid: str = "remap",
                 invalid_reward: str | float = "progress", max_steps: int = 1_000_000,
                 max_invalid_streak: int = 20_000, chunk_steps: int = 20_000,
                 **hyperparameters: Any) -> None:
        super().__init__(space, seed)
        self.algo = algo
        self.algo_class = algorithm_class(algo)        # fail early on a bad name
        self.policy = policy or ("MlpLstmPolicy" if algo == "RecurrentPPO" else "MlpPolicy")
        if repeats not in ("floor", "learn"):
            raise ValueError(f"repeats must be 'floor' or 'learn', got {repeats!r}")
        if not (invalid_reward in ("progress", "floor") or isinstance(invalid_reward, (int, float))):
            raise ValueError("invalid_reward must be 'progress', 'floor' or a number, "
                             f"got {invalid_reward!r}")
        if invalid not in ("remap", "end"):
            raise ValueError(f"invalid must be 'remap' or 'end', got {invalid!r}")
        self.repeats = repeats
        self.invalid = invalid
        self.invalid_reward = invalid_reward
        self.max_steps = int(max_steps)
        self.max_invalid_streak = int(max_invalid_streak)
        self.chunk_steps = int(chunk_steps)
        self.hyperparameters = {**default_hyperparameters(algo), **hyperparameters}
        self.stats: dict[str, int] = {}
        self.model: Any = None

    @property
    def name(self) -> str:
        """``sb3[<algo>,<overridden options>]`` (ARCHITECTURE.md, rule 4)."""
        parts = [self.algo] + [f"{k}={v}" for k, v in sorted(self.hyperparameters.items())
                               if default_hyperparameters(self.algo).get(k, object()) != v]
        if self.repeats != "floor":
            parts.append(f"repeats={self.repeats}")
        if not self.uses_masks and self.invalid != "remap":
            parts.append(f"invalid={self.invalid}")
        return f"sb3[{','.join(parts)}]"

    @property
    def warmup(self) -> int:
        """Rules written before the first policy update (on-policy: one rollout of
        ``n_steps`` env steps; off-policy: ``learning_starts`` steps)."""
        steps = self.hyperparameters.get("n_steps") or self.hyperparameters.get("learning_starts", 0)
        return -(-int(steps) // self.space.length)

    @property
    def uses_masks(self) -> bool:
        from sb3_contrib import MaskablePPO

        return issubclass(self.algo_class, MaskablePPO)

    def ask(self, n: int) -> list[Rule]:
        raise NotImplementedError("the sb3 strategy owns its loop: run it with "
                                  "searchlab.runner.run_search (Strategy.run)")

    def tell(self, results: Sequence[Result]) -> None:
        raise NotImplementedError("the sb3 strategy owns its loop: run it with "
                                  "searchlab.runner.run_search (Strategy.run)")

    def make_env(self, evaluate: Callable[[list[Rule]], list[Result]]) -> gym.Env:
        """The env of this strategy: the registered id, its space, the runner's path."""
        from searchlab.envs import ENV_ID

        env = gym.make(ENV_ID, space=self.space, evaluate=evaluate,
                       disable_env_checker=True)
        self.stats = {"steps": 0, "episodes": 0, "invalid": 0, "invalid_streak": 0,
                      "repeats": 0}
        if not self.uses_masks and self.invalid == "remap":
            env = _ValidTokenActions(env)
        return _TrainingReward(env, self.invalid_reward, self.repeats, self.stats)

    def run(self, evaluate: Callable[[list[Rule]], list[Result]],
            done: Callable[[], bool]) -> None:
        """Train the agent on the env until ``done()`` (or a safety cap, see module doc)."""
        from stable_baselines3.common.callbacks import BaseCallback

        strategy = self

        class StopWhenDone(BaseCallback):
            def _on_step(self) -> bool:
                return not strategy._should_stop(done)

        with _global_rng_preserved(), single_thread(), _distribution_checks_off():
            env = self.make_env(evaluate)
            self.model = self.algo_class(self.policy, env, seed=int(self.seed), device="cpu",
                                         verbose=0, **self.hyperparameters)
            callback = StopWhenDone()
            first = True
            while not self._should_stop(done):
                before = self.stats["steps"]
                self.model.learn(total_timesteps=self.chunk_steps, callback=callback,
                                 reset_num_timesteps=first, progress_bar=False)
                first = False
                if self.stats["steps"] == before:      # learn() made no progress
                    break
            env.close()

    def _should_stop(self, done: Callable[[], bool]) -> bool:
        return (done() or self.stats["steps"] >= self.max_steps
                or self.stats["invalid_streak"] >= self.max_invalid_streak)
