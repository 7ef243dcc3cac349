"""The paper's controller: an LSTM that writes rules token by token (Bello et al. 2017).

Strategies registered here:

* ``nos-ppo``   — the controller trained with PPO-clip (paper section 3.2);
* ``reinforce`` — the same controller trained with vanilla policy gradient (REINFORCE,
  Williams 1992) as in Zoph & Le (2017).

The controller (paper sections 3.2 and 4.2):

* a single-layer LSTM with hidden state size 150, every weight (LSTM, embedding, output
  layers, biases) initialised uniformly in [-0.08, 0.08];
* the token sampled at step ``t`` is fed back (through an embedding) as the input of step
  ``t + 1``; step 0 reads a dedicated start token;
* a separate softmax (its own output layer) for every token position, "since the operand
  bank grows as more iterations are computed";
* forbidden tokens get logit ``-inf`` (paper 4.1), computed by the DSL's single mask
  function :func:`searchlab.dsl.valid_next_tokens`, so every sample is a valid rule.

Training: an episode is one rule and its reward (the evaluator's reward; non-ok statuses
carry ``FLOOR_REWARD``) comes at the end, with no discount.  The baseline is an
exponential moving average (EMA) of previous rewards (paper 3.2); the advantage of every
token of a rule is ``reward - baseline``.  An entropy bonus (the paper's "entropy penalty"
0.0015, section 4.2) keeps exploration up.  Optimiser: Adam.

Episodes are buffered: ``tell`` appends the rules of the last ``ask`` and runs one update
whenever ``batch_size`` episodes are buffered, whatever ``n`` the runner asks for.

Repeats.  The runner answers a rule whose canonical key it has already evaluated from
memory, without spending budget (``Result.repeat``; a reward-cache hit is a unique
evaluation, not a repeat).  With ``repeats="learn"`` (paper preset) a repeat is an
ordinary sample with its remembered reward.  With ``repeats="floor"`` (tuned presets) it
scores ``FLOOR_REWARD``: a sample that spends no budget cannot improve the search, so the
controller is pushed towards rules it has not tried yet.  On the toy objective at 200
unique evaluations the "learn" setting with a useful learning rate collapsed onto a few
rules and stalled (the runner's stall limit) in 5-6 of 8 seeds; "floor" stalled in none.
It does not help once the policy is fully collapsed (all samples are the same repeat, all
advantages 0); a too-large ``lr`` can still get there.

Presets (``preset=`` option; any other option overrides one field):

* ``paper``: the published values — Adam lr 1e-5, minibatch 5 (paper 4.2), entropy
  0.0015, hidden 150, init U(-0.08, 0.08), raw rewards, repeats learned from.  The paper
  does not state PPO's clip range, epochs or the baseline decay; we use clip 0.2, 4
  epochs (Schulman et al. 2017) and decay 0.95.  With lr 1e-5 the controller barely
  moves in a few hundred samples; the paper's searches ran for about a day on 100
  workers at under 10 minutes per sample, i.e. on the order of 10^4 samples.
* ``tuned`` (default), for searches of a few hundred unique evaluations: batch 10 rules
  per update, lr 3e-3 with 4 PPO epochs (``nos-ppo``) or lr 1e-2 with one step
  (``reinforce``), advantages divided by a running reward std (so the entropy
  coefficient means the same on any reward scale), gradient-norm clip 1,
  ``repeats="floor"``; entropy 0.0015, hidden 150 and the init as in the paper.  Chosen
  on :class:`searchlab.testing.toy.ToyEvaluator` (PowerSign target) over 8 seeds at 200 unique
  evaluations on the ``small`` and ``scratch`` spaces.

Everything is seeded from ``seed`` through one explicit :class:`torch.Generator`
(initialisation, sampling, minibatch shuffling): same seed, same rules on CPU.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from searchlab.dsl import Rule, Space, valid_next_tokens
from searchlab.result import FLOOR_REWARD, Result
from searchlab.strategy import STRATEGIES, Strategy
from searchlab.threads import one_thread

__all__ = ["Controller", "ControllerConfig", "NosPPO", "PRESETS", "Reinforce", "make_config",
           "ppo_clip_loss", "single_thread"]


#: run torch ops on one intra-op thread (the controller is tiny: extra threads only add
#: synchronisation, ~10x slower on a loaded 2-core machine; results stop depending on the
#: machine's thread count)
single_thread = one_thread


# --- the network -------------------------------------------------------------------
class Controller(nn.Module):
    """Autoregressive LSTM policy over a space's token strings (paper 3.2, Figure 3).

    ``vocab_size`` tokens, ``length`` positions.  Input at step ``t`` is the embedding of
    the token chosen at step ``t - 1`` (index ``vocab_size`` is the start token).
    """

    def __init__(self, vocab_size: int, length: int, hidden: int = 150,
                 embed: int | None = None, init_range: float = 0.08,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.vocab_size = int(vocab_size)
        self.length = int(length)
        self.hidden = int(hidden)
        embed = self.hidden if embed is None else int(embed)
        # torch's default initialisers draw from the global RNG: fork it so that building
        # a controller leaves the caller's RNG state alone (all weights are redrawn below)
        with torch.random.fork_rng(devices=[]):
            self.embedding = nn.Embedding(self.vocab_size + 1, embed)
            self.lstm = nn.LSTM(embed, self.hidden, num_layers=1, batch_first=True)
            # one output layer (softmax) per token position (paper 3.2)
            self.heads = nn.ModuleList(nn.Linear(self.hidden, self.vocab_size)
                                       for _ in range(self.length))
        # paper 4.2: "weights are initialized uniformly at random between -0.08 and 0.08"
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-init_range, init_range, generator=generator)

    @property
    def start_token(self) -> int:
        return self.vocab_size

    def _logits(self, out: torch.Tensor, positions: Sequence[int]) -> torch.Tensor:
        """Stack each position's own output layer: ``out`` is (B, T, H) -> (B, T, V)."""
        return torch.stack([self.heads[p](out[:, i]) for i, p in enumerate(positions)], dim=1)

    @torch.no_grad()
    def sample(self, n: int, mask_fn: Any, generator: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``n`` token strings.

        ``mask_fn(prefix) -> bool array (V,)`` gives the valid next tokens of a prefix
        (list of vocabulary indices).  Returns ``tokens`` (n, L) long and ``masks``
        (n, L, V) bool (the mask used at each step, kept for training).
        """
        tokens = torch.empty(n, self.length, dtype=torch.long)
        masks = torch.zeros(n, self.length, self.vocab_size, dtype=torch.bool)
        inp = torch.full((n, 1), self.start_token, dtype=torch.long)
        state = None
        prefixes: list[list[int]] = [[] for _ in range(n)]
        for pos in range(self.length):
            out, state = self.lstm(self.embedding(inp), state)
            logits = self.heads[pos](out[:, 0])
            mask = torch.from_numpy(np.stack([np.asarray(mask_fn(p), dtype=bool)
                                              for p in prefixes]))
            if not bool(mask.any(dim=1).all()):
                raise RuntimeError(f"mask function allows no token at position {pos}")
            probs = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)
            choice = torch.multinomial(probs, 1, generator=generator)[:, 0]
            tokens[:, pos] = choice
            masks[:, pos] = mask
            for i, c in enumerate(choice.tolist()):
                prefixes[i].append(c)
            inp = choice[:, None]
        return tokens, masks

    def log_probs(self, tokens: torch.Tensor, masks: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced log-probabilities and entropies of given token strings.

        ``tokens`` (B, L) long, ``masks`` (B, L, V) bool.  Returns ``(logp, entropy)``,
        both (B, L); positions with a single valid token have logp 0 and entropy 0.
        """
        b = tokens.shape[0]
        start = torch.full((b, 1), self.start_token, dtype=torch.long)
        inp = torch.cat([start, tokens[:, :-1]], dim=1)
        out, _ = self.lstm(self.embedding(inp))
        logits = self._logits(out, range(self.length)).masked_fill(~masks, float("-inf"))
        logp_all = torch.log_softmax(logits, dim=-1)
        logp = logp_all.gather(-1, tokens[..., None])[..., 0]
        # masked entries: p = 0 and log p = -inf; zero the log first so neither the value
        # nor its gradient becomes 0 * inf = NaN
        entropy = -(logp_all.exp() * logp_all.masked_fill(~masks, 0.0)).sum(-1)
        return logp, entropy


# --- options -----------------------------------------------------------------------
@dataclass(frozen=True)
class ControllerConfig:
    """Options of the controller strategies (``nos-ppo``, ``reinforce``)."""

    lr: float = 3e-3                 #: Adam learning rate (paper: 1e-5)
    batch_size: int = 10             #: episodes (rules) per policy update
    minibatch_size: int = 10         #: episodes per gradient step inside an update (paper: 5)
    epochs: int = 4                  #: PPO epochs over each batch (REINFORCE: 1 step)
    clip: float = 0.2                #: PPO clip range epsilon
    entropy: float = 0.0015          #: entropy bonus coefficient (paper 4.2: 0.0015)
    baseline_decay: float = 0.9      #: EMA decay of the reward baseline (paper 3.2)
    normalize_advantages: bool = True  #: divide advantages by a running reward std
    max_grad_norm: float | None = 1.0  #: gradient-norm clip (None: off)
    hidden: int = 150                #: LSTM hidden size (paper 4.2: 150)
    embed: int | None = None         #: token embedding size (None: = hidden)
    init_range: float = 0.08         #: U(-r, r) weight init (paper 4.2: 0.08)
    repeats: str = "floor"           #: reward of repeats: "floor" or "learn" (see module doc)

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.batch_size < 1 or self.minibatch_size < 1 or self.epochs < 1:
            raise ValueError(f"invalid controller options: {self}")
        if self.repeats not in ("floor", "learn"):
            raise ValueError(f"repeats must be 'floor' or 'learn', got {self.repeats!r}")
        if not 0.0 <= self.baseline_decay < 1.0:
            raise ValueError(f"baseline_decay must be in [0, 1), got {self.baseline_decay}")


_PAPER = ControllerConfig(lr=1e-5, batch_size=5, minibatch_size=5, epochs=4, clip=0.2,
                          entropy=0.0015, baseline_decay=0.95, normalize_advantages=False,
                          max_grad_norm=None, hidden=150, embed=None, init_range=0.08,
                          repeats="learn")

#: Named presets per algorithm.  ``paper`` holds the values published in section 4.2;
#: ``tuned`` (the default) was chosen on the toy objective at 100-300 unique evaluations
#: (see the module docstring).
PRESETS: dict[str, dict[str, ControllerConfig]] = {
    "nos-ppo": {"tuned": ControllerConfig(lr=3e-3), "paper": _PAPER},
    "reinforce": {"tuned": ControllerConfig(lr=1e-2), "paper": _PAPER},
}


def make_config(algorithm: str, preset: str = "tuned", **options: Any) -> ControllerConfig:
    """``algorithm``'s preset with some fields overridden; unknown names are errors."""
    presets = PRESETS[algorithm]
    try:
        base = presets[preset]
    except KeyError:
        raise KeyError(f"unknown {algorithm} preset {preset!r}; valid: {sorted(presets)}") from None
    valid = {f.name for f in fields(ControllerConfig)}
    bad = sorted(set(options) - valid)
    if bad:
        raise TypeError(f"unknown {algorithm} option(s) {bad}; valid: {sorted(valid)} and 'preset'")
    return replace(base, **options)


# --- the strategies ----------------------------------------------------------------
class _ControllerStrategy(Strategy):
    """Shared sampling, buffering, baseline and checkpointing of the controller strategies."""

    algorithm: ClassVar[str] = ""

    def __init__(self, space: Space, seed: int, preset: str = "tuned", **options: Any) -> None:
        super().__init__(space, seed)
        self.preset = preset
        self.config = make_config(self.algorithm, preset, **options)
        cfg = self.config
        self.generator = torch.Generator().manual_seed(int(seed))
        self.policy = Controller(len(space.vocab), space.length, hidden=cfg.hidden,
                                 embed=cfg.embed, init_range=cfg.init_range,
                                 generator=self.generator)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr)
        self.baseline: float | None = None       # EMA of rewards; None until the first batch
        self.reward_var: float | None = None     # EMA of (reward - baseline)^2
        self.updates = 0
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self._buffer: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    @property
    def name(self) -> str:
        """Strategy name with its preset and overridden options (ARCHITECTURE.md, rule 4)."""
        base = asdict(PRESETS[self.algorithm][self.preset])
        parts = [self.preset] if self.preset != "tuned" else []
        parts += [f"{k}={v}" for k, v in asdict(self.config).items() if base[k] != v]
        return self.algorithm + (f"[{','.join(parts)}]" if parts else "")

    def _mask(self, prefix: Sequence[int]) -> np.ndarray:
        return valid_next_tokens(self.space, prefix)

    # -- ask/tell ---------------------------------------------------------------------
    def ask(self, n: int) -> list[Rule]:
        """Sample ``n`` rules from the controller (masked, so all are valid)."""
        with single_thread():
            tokens, masks = self.policy.sample(int(n), self._mask, self.generator)
        self._pending = (tokens, masks)
        vocab = self.space.vocab
        return [Rule.from_tokens([vocab[i] for i in row]) for row in tokens.tolist()]

    @property
    def warmup(self) -> int:
        return self.config.batch_size    # the first policy update comes after one batch

    def tell(self, results: Sequence[Result]) -> None:
        """Buffer the rewards of the last ``ask`` (same order); update every ``batch_size``."""
        if self._pending is None:
            raise RuntimeError("tell() without a preceding ask()")
        tokens, masks = self._pending
        if len(results) != tokens.shape[0]:
            raise ValueError(f"tell() got {len(results)} results for {tokens.shape[0]} asked rules")
        floor_repeats = self.config.repeats == "floor"
        rewards = torch.tensor([FLOOR_REWARD if (floor_repeats and r.repeat) else _reward(r)
                                for r in results], dtype=torch.float64)
        self._pending = None
        for i in range(tokens.shape[0]):
            self._buffer.append((tokens[i], masks[i], rewards[i]))
        if len(self._buffer) >= self.config.batch_size:
            batch, self._buffer = self._buffer, []
            with single_thread():
                self._update(torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch]),
                             torch.stack([b[2] for b in batch]))

    # -- the update -------------------------------------------------------------------
    def _advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        """``reward - EMA baseline`` (paper 3.2), then update the baseline with the batch.

        The baseline starts at the first batch's mean reward.  With
        ``normalize_advantages`` the advantages are divided by a running std of
        ``reward - baseline`` so the step size does not depend on the task's reward scale.
        """
        cfg = self.config
        if self.baseline is None:
            self.baseline = float(rewards.mean())
            self.reward_var = float(((rewards - self.baseline) ** 2).mean())
        adv = (rewards - self.baseline).to(torch.float32)
        d = cfg.baseline_decay
        for r in rewards.tolist():
            self.reward_var = d * self.reward_var + (1 - d) * (r - self.baseline) ** 2
            self.baseline = d * self.baseline + (1 - d) * r
        if cfg.normalize_advantages:
            adv = adv / (math.sqrt(self.reward_var) + 1e-3)
        return adv

    def _step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.policy.parameters(), self.config.max_grad_norm)
        self.optimizer.step()

    def _update(self, tokens: torch.Tensor, masks: torch.Tensor, rewards: torch.Tensor) -> None:
        raise NotImplementedError

    # -- checkpointing ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue identically: weights, Adam, baseline, RNG, buffer."""
        return {
            "algorithm": self.algorithm,
            "config": asdict(self.config),
            "policy": {k: v.clone() for k, v in self.policy.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "baseline": self.baseline,
            "reward_var": self.reward_var,
            "updates": self.updates,
            "generator": self.generator.get_state(),
            "pending": None if self._pending is None else tuple(t.clone() for t in self._pending),
            "buffer": [tuple(t.clone() for t in b) for b in self._buffer],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("algorithm") != self.algorithm:
            raise ValueError(f"checkpoint is for {state.get('algorithm')!r}, not {self.algorithm!r}")
        if state["config"] != asdict(self.config):
            raise ValueError("checkpoint was made with different controller options: "
                             f"{state['config']} vs {asdict(self.config)}")
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline = state["baseline"]
        self.reward_var = state["reward_var"]
        self.updates = state["updates"]
        self.generator.set_state(state["generator"])
        self._pending = None if state["pending"] is None else tuple(state["pending"])
        self._buffer = [tuple(b) for b in state["buffer"]]


def _reward(result: Result) -> float:
    """The training signal of a result: its reward, the floor for non-ok/NaN."""
    r = float(result.reward) if result.ok else FLOOR_REWARD
    return r if math.isfinite(r) else FLOOR_REWARD


def ppo_clip_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
                  clip: float) -> torch.Tensor:
    """Negative PPO-clip surrogate (Schulman et al. 2017, eq. 7) of token log-probs.

    ``logp``/``old_logp`` (B, L): per-token log-probabilities under the current and the
    sampling policy; ``adv`` (B, 1) or (B, L).  Summed over a rule's tokens, averaged
    over rules.
    """
    ratio = torch.exp(logp - old_logp)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    return -surrogate.sum(1).mean()


@STRATEGIES.register("nos-ppo")
class NosPPO(_ControllerStrategy):
    """The paper's controller trained with PPO-clip (Bello et al. 2017, section 3.2).

    Each token is an action whose advantage is the rule's ``reward - baseline``; the
    per-token probability ratio against the sampling policy is clipped to
    ``[1 - clip, 1 + clip]`` (Schulman et al. 2017).  ``epochs`` passes over the batch in
    shuffled minibatches of ``minibatch_size`` rules.
    """

    algorithm = "nos-ppo"

    def _update(self, tokens: torch.Tensor, masks: torch.Tensor, rewards: torch.Tensor) -> None:
        cfg = self.config
        adv = self._advantages(rewards)[:, None]               # (B, 1): same for every token
        with torch.no_grad():
            old_logp, _ = self.policy.log_probs(tokens, masks)
        n = tokens.shape[0]
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=self.generator)
            for start in range(0, n, cfg.minibatch_size):
                idx = order[start:start + cfg.minibatch_size]
                logp, ent = self.policy.log_probs(tokens[idx], masks[idx])
                loss = (ppo_clip_loss(logp, old_logp[idx], adv[idx], cfg.clip)
                        - cfg.entropy * ent.sum(1).mean())
                self._step(loss)
        self.updates += 1


@STRATEGIES.register("reinforce")
class Reinforce(_ControllerStrategy):
    """The same controller trained with REINFORCE and an EMA baseline (Zoph & Le 2017).

    One gradient step per batch on ``-(reward - baseline) * log p(rule)`` minus the
    entropy bonus (``epochs``, ``clip`` and ``minibatch_size`` are not used).
    """

    algorithm = "reinforce"

    def _update(self, tokens: torch.Tensor, masks: torch.Tensor, rewards: torch.Tensor) -> None:
        cfg = self.config
        adv = self._advantages(rewards)
        logp, ent = self.policy.log_probs(tokens, masks)
        loss = -((adv * logp.sum(1)).mean() + cfg.entropy * ent.sum(1).mean())
        self._step(loss)
        self.updates += 1
