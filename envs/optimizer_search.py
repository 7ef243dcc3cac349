"""The search as a Gymnasium environment.

One episode writes one update rule token by token (Bello et al. 2017, section 3.1: the
controller emits ``op1, op2, u1, u2, b`` per group); the terminal reward is the
evaluator's reward for the finished rule (section 4.2: validation accuracy of the child
network).  The env is a thin adapter over :mod:`searchlab.dsl` and an evaluation path:

* actions: ``Discrete(len(space.vocab))``, token ``i`` is ``space.vocab[i]``;
* ``action_masks()``: the DSL's single mask function
  (:func:`searchlab.dsl.valid_next_tokens`), ``True`` = allowed (sb3-contrib's
  ``MaskablePPO`` convention);
* observation: a float32 ``Box`` in ``[0, 1]`` of size ``L * V + L + 1`` (``L`` tokens
  per rule, ``V`` vocabulary size): the one-hot tokens written so far (``L`` blocks of
  ``V``; zeros for positions not yet written) followed by the one-hot position
  ``0..L``.  Flat and fixed-size, so MLP policies see the whole prefix and recurrent
  policies get the position; not ``MultiDiscrete``, which crashes ``RecurrentPPO`` on
  torch 2.13;
* reward ``0.0`` until the last token, then the evaluator's reward (a Python ``float``);
* ``info`` of ``reset`` and of every step: ``position``, ``tokens`` so far and
  ``action_mask`` (the mask of the next token as a list of bools, Gymnasium's
  ``info["action_mask"]`` convention; all ``False`` once the rule is complete;
  ``env.action_space.sample(np.array(info["action_mask"], dtype=np.int8))`` samples a
  valid token); of the terminal step also ``rule`` (text), ``key`` (canonical),
  ``status``, ``best_lr``, ``cost`` (seconds of evaluation) and ``result``: the
  :class:`~searchlab.result.Result` as a :class:`ResultInfo`, a JSON dict
  (:func:`~searchlab.result.result_to_json`) that also reads as the Result
  (``info["result"].reward``, ``.cached``; ``.result`` is the object itself).  Every
  info dict is plain JSON data: ``json.dumps(info)`` works (no numpy types, no objects);
* ``render()`` (``render_mode="ansi"``): the tokens written so far and the rule they
  decode to (its complete groups), and, after the last token, the evaluation's status
  and reward.

Masked-out actions (documented policy).  SB3's ``check_env`` and agents without mask
support (``RecurrentPPO``) pick actions the mask forbids.  Such an action does not raise:
it ends the episode at once (``terminated=True``) with reward ``FLOOR_REWARD`` and
``info["status"] == "invalid"``; nothing is evaluated and no budget is spent.  An action
outside ``Discrete(V)`` raises ``ValueError`` (a programming error, not a search outcome).

Evaluation path.  Pass ``evaluate`` (a callable ``list[Rule] -> list[Result]``, e.g. the
runner's path handed to ``Strategy.run``: dedup, budget, executor, tracker) to make
episodes part of a search; otherwise the env builds its own evaluator from ``task`` and
``fidelity`` with :func:`searchlab.evaluators.make_evaluator` (``task="toy"``: the
microsecond toy objective; any other task: the reward protocol), or uses the
``evaluator`` object given.

Determinism.  With its own evaluator the terminal evaluation is seeded with
``eval_seed`` (default 0: every episode faces the same reward function, like the
runner's ``eval_seed``); with ``eval_seed=None`` each episode's evaluation seed is drawn
from the env's ``np_random``, i.e. from ``reset(seed=...)``.  Either way the same seed
and actions give the same rewards (required by Gymnasium's ``check_env``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

import math

from searchlab.dsl import Rule, Space, get_space, valid_next_tokens
from searchlab.dsl.tokens import GROUP
from searchlab.interfaces import Evaluator
from searchlab.result import FLOOR_REWARD, Result, result_to_json

EvaluateFn = Callable[[list[Rule]], list[Result]]


class ResultInfo(dict):
    """``info["result"]`` of a terminal step: the :class:`~searchlab.result.Result` as a
    JSON dict (:func:`~searchlab.result.result_to_json`, so ``json.dumps(info)`` works)
    that also reads as the Result: attributes are the Result's (``.reward``, ``.cached``,
    ``.ok``), ``.result`` is the Result object."""

    def __init__(self, result: Result) -> None:
        super().__init__(result_to_json(result))
        self.result = result

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "result":   # pickling/copying probe dunders
            raise AttributeError(name)
        return getattr(self.result, name)


def _number(x: Any) -> float | None:
    """A finite float, or None (JSON has no NaN)."""
    if x is None:
        return None
    v = float(x)
    return v if math.isfinite(v) else None


class OptimizerSearchEnv(gym.Env):
    """Write one update rule per episode; the terminal reward is its evaluation.

    Args:
        task: child task of the env's own evaluator (``"toy"`` for the millisecond toy
            objective; ``"rosenbrock"``, ``"ensemble"``, ``"mnist1d"`` ... for
            ``searchlab.evaluate.Evaluator``).  Ignored when ``evaluate`` or
            ``evaluator`` is given.
        fidelity: fidelity of the env's own evaluator (``"fast"``, ``"smoke"``, ``"paper"``).
        The defaults (``mnist1d``, ``fast``) are searchlab's config defaults.
        space: search space (a :class:`~searchlab.dsl.Space` or a name in ``SPACES``;
            None: the task's, ``tabular`` for ``task="table"``, else ``scratch``).
        depth: overrides the space's depth (number of token groups, 1..4).
        evaluate: the runner's evaluation path, ``list[Rule] -> list[Result]``.
        evaluator: an object with ``evaluate(rule, seed) -> Result`` to use as is.
        eval_seed: seed of the env's own evaluations (None: drawn from ``reset(seed)``).
        task_options: extra keyword arguments of the env's own evaluator.
        render_mode: ``None`` or ``"ansi"`` (the tokens written so far and the decoded rule).
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, task: str = "mnist1d", fidelity: str = "fast",
                 space: Space | str | None = None, depth: int | None = None,
                 evaluate: EvaluateFn | None = None, evaluator: Any = None,
                 eval_seed: int | None = 0, task_options: dict[str, Any] | None = None,
                 render_mode: str | None = None) -> None:
        super().__init__()
        if space is None:
            from searchlab.evaluators import default_space

            space = default_space(task)
        sp = get_space(space) if isinstance(space, str) else space
        if depth is not None and depth != sp.depth:
            sp = sp.with_(depth=depth)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}")
        self.space = sp
        self.task, self.fidelity = task, fidelity
        self.eval_seed = eval_seed
        self.render_mode = render_mode
        self._evaluate = evaluate
        self._evaluator = evaluator
        self._task_options = dict(task_options or {})
        if evaluate is None and evaluator is None:
            self._evaluator = self._build_evaluator()
        self.vocab_size = len(sp.vocab)
        self.length = sp.length
        self.action_space = spaces.Discrete(self.vocab_size)
        self.observation_space = spaces.Box(
            0.0, 1.0, shape=(self.length * self.vocab_size + self.length + 1,), dtype=np.float32)
        self._tokens: list[str] = []
        self._done = True
        self._episode_seed = 0 if eval_seed is None else eval_seed
        self._last: Result | None = None      # the finished episode's result (render)
        self._last_status: str | None = None

    def _build_evaluator(self) -> Evaluator:
        from searchlab.evaluators import make_evaluator

        return make_evaluator(self.task, self.fidelity, **self._task_options)

    # --- observation and masks ---------------------------------------------------------
    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.observation_space.shape, dtype=np.float32)
        for pos, tok in enumerate(self._tokens):
            obs[pos * self.vocab_size + self.space.index[tok]] = 1.0
        obs[self.length * self.vocab_size + len(self._tokens)] = 1.0
        return obs

    def action_masks(self) -> np.ndarray:
        """Valid next tokens (``True`` = allowed); all ``False`` once the rule is complete."""
        return valid_next_tokens(self.space, self._tokens)

    def _info(self) -> dict[str, Any]:
        """``position``, ``tokens`` and ``action_mask`` (JSON types)."""
        mask = self.action_masks() if not self._done else np.zeros(self.vocab_size, bool)
        return {"position": len(self._tokens), "tokens": tuple(self._tokens),
                "action_mask": [bool(x) for x in mask]}

    @property
    def tokens(self) -> tuple[str, ...]:
        """Tokens written so far in this episode."""
        return tuple(self._tokens)

    # --- Gymnasium API -----------------------------------------------------------------
    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._tokens = []
        self._done = False
        self._last, self._last_status = None, None
        if self.eval_seed is None:
            self._episode_seed = int(self.np_random.integers(0, 2**31 - 1))
        return self._obs(), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._done:
            raise RuntimeError("the episode is over: call reset()")
        a = int(action)
        if not 0 <= a < self.vocab_size or a != action:
            raise ValueError(f"action {action!r} is not in Discrete({self.vocab_size})")
        if not self.action_masks()[a]:
            # documented policy: a masked-out token ends the episode as invalid
            self._done = True
            self._last_status = "invalid"
            bad = self.space.vocab[a]
            info = {**self._info(),
                    "rule": " ".join(self._tokens + [bad]), "key": "", "status": "invalid",
                    "best_lr": None, "cost": 0.0, "result": None,
                    "message": f"token {bad!r} is masked out at position {len(self._tokens)}"}
            return self._obs(), float(FLOOR_REWARD), True, False, info
        self._tokens.append(self.space.vocab[a])
        if len(self._tokens) < self.length:
            return self._obs(), 0.0, False, False, self._info()
        self._done = True
        result = self._run(Rule.from_tokens(self._tokens))
        self._last, self._last_status = result, result.status
        info: dict[str, Any] = self._info()
        info.update(rule=str(result.rule), key=str(result.key), status=str(result.status),
                    best_lr=_number(result.best_lr), cost=_number(result.seconds) or 0.0,
                    result=ResultInfo(result))
        return self._obs(), float(result.reward), True, False, info

    def _run(self, rule: Rule) -> Result:
        if self._evaluate is not None:
            return self._evaluate([rule])[0]
        return self._evaluator.evaluate(rule, self._episode_seed)

    def render(self) -> str | None:
        """``render_mode="ansi"``: the tokens so far, the rule they decode to (the complete
        groups; the whole rule after the last token) and, at the end, status and reward."""
        if self.render_mode != "ansi":
            return None
        n = len(self._tokens)
        lines = [f"tokens ({n}/{self.length}): {' '.join(self._tokens) or '-'}"]
        group = GROUP
        done = (n // group) * group
        if done:
            try:
                text = Rule.from_tokens(self._tokens[:done]).text
            except ValueError:
                text = "(not decodable)"
            k = done // group
            lines.append(f"rule: {text}" if done == self.length else
                         f"rule so far ({k} complete group{'s' if k > 1 else ''}): {text}")
        if self._last is not None:
            lines.append(f"status {self._last.status}, reward {float(self._last.reward):.4f}")
        elif self._last_status == "invalid":
            lines.append("status invalid (a masked-out token ended the episode)")
        return "\n".join(lines) + "\n"

    # --- helpers for agents ------------------------------------------------------------
    def set_evaluate(self, evaluate: EvaluateFn | None) -> None:
        """Route terminal evaluations through ``evaluate`` (e.g. the runner's path given
        to ``Strategy.run``); ``None`` goes back to the env's own evaluator."""
        if evaluate is None and self._evaluator is None:
            self._evaluator = self._build_evaluator()
        self._evaluate = evaluate

    @staticmethod
    def rule_of(tokens: Sequence[str]) -> Rule:
        return Rule.from_tokens(list(tokens))
