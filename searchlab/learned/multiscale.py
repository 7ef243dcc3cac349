"""Multiscale Adam (Shahid 2017, "Multiscale Adam"): Adam at ``k`` timescales, combined by
a meta-learned model.

Inputs per coordinate: the bias-corrected Adam directions at first-moment decays
``beta1_j`` (default 0.99, 0.9, 0.8, 0.7, 0.6, 0.5: the slides' k = 6) and one shared
second moment (``beta2`` = 0.999)::

    m_j <- beta1_j m_j + (1 - beta1_j) g,   v <- beta2 v + (1 - beta2) g^2
    a_j  = (m_j / (1 - beta1_j^t)) / (sqrt(v / (1 - beta2^t)) + eps)

The update is a weighted average ``u = sum_j w_j a_j`` (``p <- p - lr * u``):

``lwa-a``   linear weighted average, weights summing to one: ``w = theta - mean(theta) + 1/k``
``lwa-b``   positive weights summing to one: ``w = softmax(theta)``
``lwa-c``   unconstrained: ``w = theta``
``msadam-mlp``  per-coordinate weights from an MLP over the ``k`` inputs (one hidden
            layer, ``hidden`` units; the slides' MLP has 50)
``msadam-rnn``  per-coordinate weights from a GRU over the inputs (``layers`` of
            ``hidden`` units each; the slides' RNN_a is one layer of 50, RNN_b two)

Every model starts at the uniform average ``w_j = 1/k``.  The constraints of ``lwa-a``
and ``lwa-b`` hold by parametrization, i.e. after every meta-update exactly (up to
rounding); :meth:`MultiscaleAdam.weights` shows them.  The network heads output
``1/k + W h`` with ``W`` initialised at zero.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor, nn

from .base import MODELS, GRUCell, LearnedModel, State

__all__ = ["DEFAULT_BETA1", "MultiscaleAdam"]

DEFAULT_BETA1: tuple[float, ...] = (0.99, 0.9, 0.8, 0.7, 0.6, 0.5)


class MultiscaleAdam(LearnedModel):
    """Options: ``beta1`` (the timescales), ``beta2`` (0.999), ``eps`` (1e-8); the network
    heads also ``hidden`` (mlp: 32, rnn: 20) and ``layers`` (rnn: 1)."""

    kind: ClassVar[str] = ""
    head: ClassVar[str] = "lwa"
    constraint: ClassVar[str] = "none"

    def __init__(self, beta1: Sequence[float] = DEFAULT_BETA1, beta2: float = 0.999,
                 eps: float = 1e-8, hidden: int | None = None, layers: int | None = None,
                 **extra: Any) -> None:
        if extra:
            raise TypeError(f"unknown {self.kind} option(s): {sorted(extra)}")
        b1 = [float(b) for b in beta1]
        cfg: dict[str, Any] = dict(beta1=b1, beta2=float(beta2), eps=float(eps))
        if self.head == "mlp":
            cfg["hidden"] = int(hidden or 32)
        elif self.head == "rnn":
            cfg["hidden"], cfg["layers"] = int(hidden or 20), int(layers or 1)
        elif hidden is not None or layers is not None:
            raise TypeError("hidden/layers apply to msadam-mlp and msadam-rnn only")
        super().__init__(**cfg)
        self.k = k = len(b1)
        self.register_buffer("beta1", torch.tensor(b1, dtype=torch.float64))
        self.beta2, self.eps = float(beta2), float(eps)
        if self.head == "lwa":
            init = torch.full((k,), 1.0 / k) if self.constraint != "simplex" else torch.zeros(k)
            self.theta = nn.Parameter(init)
        elif self.head == "mlp":
            self.l1 = nn.Linear(k, cfg["hidden"])
            self.l2 = nn.Linear(cfg["hidden"], k)
            nn.init.zeros_(self.l2.weight)
            nn.init.zeros_(self.l2.bias)
        else:
            H = cfg["hidden"]
            self.cells = nn.ModuleList(GRUCell(k if i == 0 else H, H) for i in range(cfg["layers"]))
            self.out = nn.Parameter(torch.zeros(H, k))
            self.out_bias = nn.Parameter(torch.zeros(k))

    def weights(self) -> Tensor:
        """The linear weighted average's weights (``lwa-*`` only)."""
        t = self.theta
        if self.constraint == "sum":
            return t - t.mean() + 1.0 / self.k
        if self.constraint == "simplex":
            return torch.softmax(t, 0)
        return t

    def init_state(self, params: Sequence[Tensor]) -> State:
        state: State = {
            "m": [torch.zeros(p.shape + (self.k,), dtype=p.dtype) for p in params],
            "v": [torch.zeros_like(p) for p in params],
            "t": [torch.zeros(p.shape[0], dtype=p.dtype) for p in params],
        }
        if self.head == "rnn":
            for j in range(self.config["layers"]):
                state[f"h{j}"] = [torch.zeros(p.shape + (self.config["hidden"],), dtype=p.dtype)
                                  for p in params]
        return state

    def adam_inputs(self, g: Tensor, m: Tensor, v: Tensor, t: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(a [.., k], m, v, t)``: the Adam directions after one more step."""
        b1 = self.beta1.to(g.dtype)
        m = b1 * m + (1 - b1) * g.unsqueeze(-1)
        v = self.beta2 * v + (1 - self.beta2) * g * g
        t = t + 1
        tv = t.view(-1, *([1] * (g.dim() - 1)))
        mhat = m / (1 - b1 ** tv.unsqueeze(-1))
        vhat = v / (1 - self.beta2 ** tv)
        return mhat / (torch.sqrt(vhat) + self.eps).unsqueeze(-1), m, v, t

    def update(self, grads: Sequence[Tensor], state: State) -> tuple[list[Tensor], State]:
        new: State = {k: [] for k in state}
        us = []
        for i, g in enumerate(grads):
            a, m, v, t = self.adam_inputs(g, state["m"][i], state["v"][i], state["t"][i])
            dt = g.dtype
            if self.head == "lwa":
                w = self.weights().to(dt)
            elif self.head == "mlp":
                h = torch.tanh(a @ self.l1.weight.to(dt).T + self.l1.bias.to(dt))
                w = 1.0 / self.k + h @ self.l2.weight.to(dt).T + self.l2.bias.to(dt)
            else:
                x = a
                for j, cell in enumerate(self.cells):
                    x = cell(x, state[f"h{j}"][i])
                    new[f"h{j}"].append(x)
                w = 1.0 / self.k + x @ self.out.to(dt) + self.out_bias.to(dt)
            us.append((w * a).sum(-1))
            new["m"].append(m)
            new["v"].append(v)
            new["t"].append(t)
        return us, new


def _variant(name: str, head: str, constraint: str = "none", doc: str = "") -> type:
    cls = type(name.replace("-", "_").upper(), (MultiscaleAdam,),
               {"kind": name, "head": head, "constraint": constraint, "__doc__": doc})
    return MODELS.register(name)(cls)


LWA_A = _variant("lwa-a", "lwa", "sum", "Linear weighted average, weights sum to one.")
LWA_B = _variant("lwa-b", "lwa", "simplex", "Linear weighted average, positive weights "
                 "summing to one.")
LWA_C = _variant("lwa-c", "lwa", "none", "Linear weighted average, unconstrained weights.")
MSADAM_MLP = _variant("msadam-mlp", "mlp", doc="MLP over the multiscale Adam inputs.")
MSADAM_RNN = _variant("msadam-rnn", "rnn", doc="GRU over the multiscale Adam inputs.")
__all__ += ["LWA_A", "LWA_B", "LWA_C", "MSADAM_MLP", "MSADAM_RNN"]
