"""Learning to optimize with normalized inputs (Shahid 2017, "Learning to Optimize with
Normalized Inputs" and "Algorithm Variants").

Per coordinate the meta-optimizer sees a history of ``k`` gradient values normalised by
their largest magnitude (so the inputs lie in [-1, 1] and are invariant to the scale of
the gradient: with equal magnitudes they are the gradient signs), and outputs
``dx = tanh(MLP(inputs) + skip . inputs)`` in [-1, 1].  The iterate then moves inside (or
just past) the range of its recent values::

    x_ref  = (x_max + x_min) / 2,   x_diff = x_max - x_min
    x_next = x_ref + dx * (x_diff + eta_min)

``variant="steps"`` (*k timesteps*): the inputs are the last ``k`` gradients and
``x_max``/``x_min`` range over the last ``k`` iterates.  ``variant="momentums"`` (*k
momentums*): the inputs are gradient momentums at ``k`` timescales (``betas``, default
log-spaced from 0.5 to 0.99), the range is over exponential averages of the iterates at
the same timescales, and ``x_ref = x_t`` (the slides' fix: the middle of a long history
can be far behind).

``eta_min`` is the reward protocol's lr (the initial step-size scale): the model runs in
units of it, ``z = (x - x_0) / eta_min``, where the rule above reads
``z_next = z_ref + dx * (z_diff + 1)``; the direction returned is ``u = z - z_next``
(``x <- x - eta_min * u``), the same trajectory as the formula in ``x``.  The sign of
``dx`` is the slides' formula as written (a positive ``dx`` moves up); the skip weights
start at ``-2`` on the newest input, so an untrained model steps against the gradient.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor, nn

from .base import MODELS, LearnedModel, State

__all__ = ["NormalizedInput", "default_betas"]


def default_betas(k: int, low: float = 0.5, high: float = 0.99) -> list[float]:
    """``k`` momentums with time constants log-spaced from ``1/(1-low)`` to ``1/(1-high)``."""
    if k == 1:
        return [high]
    a, b = 1 - low, 1 - high
    return [1 - a * (b / a) ** (i / (k - 1)) for i in range(k)]


class NormalizedInput(LearnedModel):
    """Options: ``k`` (5), ``hidden`` (32: the MLP's width), ``betas`` (momentums only)."""

    kind: ClassVar[str] = ""
    variant: ClassVar[str] = "steps"

    def __init__(self, k: int = 5, hidden: int = 32, betas: Sequence[float] | None = None,
                 **extra: Any) -> None:
        if extra:
            raise TypeError(f"unknown {self.kind} option(s): {sorted(extra)}")
        k = int(k)
        cfg: dict[str, Any] = dict(k=k, hidden=int(hidden))
        if self.variant == "momentums":
            betas = [float(b) for b in (betas if betas is not None else default_betas(k))]
            if len(betas) != k:
                raise ValueError(f"betas needs {k} values, got {len(betas)}")
            cfg["betas"] = betas
        elif betas is not None:
            raise TypeError("betas apply to ni-momentums only")
        super().__init__(**cfg)
        if self.variant == "momentums":
            self.register_buffer("betas", torch.tensor(cfg["betas"], dtype=torch.float64))
        self.k = k
        self.l1 = nn.Linear(k, int(hidden))
        self.l2 = nn.Linear(int(hidden), 1)
        nn.init.zeros_(self.l2.weight)
        nn.init.zeros_(self.l2.bias)
        skip = torch.zeros(k)
        skip[-1 if self.variant == "steps" else 0] = -2.0
        self.skip = nn.Parameter(skip)

    def init_state(self, params: Sequence[Tensor]) -> State:
        z = lambda: [torch.zeros(p.shape + (self.k,), dtype=p.dtype) for p in params]  # noqa: E731
        state: State = {"ghist": z(), "zhist": z(), "z": [torch.zeros_like(p) for p in params]}
        if self.variant == "momentums":
            state["wsum"] = [torch.zeros(p.shape[0], self.k, dtype=p.dtype) for p in params]
        return state

    def direction(self, inputs: Tensor) -> Tensor:
        """``dx`` in [-1, 1] for normalised inputs ``[..., k]``."""
        dt = inputs.dtype
        h = torch.relu(inputs @ self.l1.weight.to(dt).T + self.l1.bias.to(dt))
        out = (h @ self.l2.weight.to(dt).T).squeeze(-1) + self.l2.bias.to(dt)[0]
        return torch.tanh(out + inputs @ self.skip.to(dt))

    def update(self, grads: Sequence[Tensor], state: State) -> tuple[list[Tensor], State]:
        new: State = {k: [] for k in state}
        us = []
        for i, g in enumerate(grads):
            z = state["z"][i]
            gl = g.unsqueeze(-1)
            if self.variant == "steps":
                ghist = torch.cat((state["ghist"][i][..., 1:], gl), -1)      # oldest first
                zh = state["zhist"][i]
                hist_now = torch.cat((zh[..., 1:], z.unsqueeze(-1)), -1)     # last k iterates
                inputs = ghist / ghist.abs().amax(-1, keepdim=True).clamp_min(1e-30)
                zmax, zmin = hist_now.amax(-1), hist_now.amin(-1)
                zref = (zmax + zmin) / 2
                znext = zref + self.direction(inputs) * (zmax - zmin + 1)
                new["zhist"].append(hist_now)
            else:
                beta = self.betas.to(g.dtype)
                wsum = beta * state["wsum"][i] + (1 - beta)                   # [B, k]
                wv = wsum.view(wsum.shape[0], *([1] * (g.dim() - 1)), self.k)
                ghist = beta * state["ghist"][i] + (1 - beta) * gl           # momentums
                zavg = beta * state["zhist"][i] + (1 - beta) * z.unsqueeze(-1)
                mom = ghist / wv
                inputs = mom / mom.abs().amax(-1, keepdim=True).clamp_min(1e-30)
                zs = torch.cat((zavg / wv, z.unsqueeze(-1)), -1)
                zmax, zmin = zs.amax(-1), zs.amin(-1)
                znext = z + self.direction(inputs) * (zmax - zmin + 1)
                new["zhist"].append(zavg)
                new["wsum"].append(wsum)
            new["ghist"].append(ghist)
            new["z"].append(znext)
            us.append(z - znext)
        return us, new


@MODELS.register("ni-steps")
class NormalizedSteps(NormalizedInput):
    """The *k timesteps* variant (module docstring)."""

    kind: ClassVar[str] = "ni-steps"
    variant: ClassVar[str] = "steps"


@MODELS.register("ni-momentums")
class NormalizedMomentums(NormalizedInput):
    """The *k momentums* variant (module docstring)."""

    kind: ClassVar[str] = "ni-momentums"
    variant: ClassVar[str] = "momentums"
