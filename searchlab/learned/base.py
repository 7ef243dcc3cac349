"""What every learned optimizer shares: the :class:`LearnedModel` interface, the GRU cell
and the registry of model kinds.

A learned model is a small ``torch.nn.Module`` (its parameters are the *meta-parameters*)
with a functional step over *stacked* tensors: every tensor has a leading copy dimension
``B`` (the lr sweep's copies of a child network, a meta-training batch of problem runs, or
``B = 1`` inside :class:`~searchlab.learned.optimizer.LearnedOptimizer`).  Copies never
interact; per-tensor and global averages are taken within a copy.

``u, state = model.update(grads, state)`` returns one direction per tensor such that
the parameters move by ``p <- p - lr * u``: the sign and the convention of a rule
(``searchlab.optim``).  ``lr`` is the learned optimizer's *initial step-size scale*: every
model here is built so that, for a given sequence of gradients, its trajectory relative
to the start is exactly proportional to ``lr`` (the hierarchical RNN's log step length is
kept relative to ``log lr``, the normalized-input optimizer works in units of
``eta_min = lr``, multiscale Adam multiplies a weighted average of Adam directions by
``lr``).  So the reward protocol's lr sweep is a sweep over that scale, and the protocol's
batched path (``p -= lr_k * u`` per copy) applies unchanged.

``state`` is ``{name: [tensor per parameter tensor, or one per copy group]}``, every
tensor with the copy dimension first (so the protocol can drop diverged copies by
indexing dimension 0).  ``update`` does not modify ``state``: it returns a new one, and
is differentiable in the meta-parameters (meta-training backpropagates through it).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor, nn

from ..registry import Registry

__all__ = ["EPS", "GRUCell", "LearnedModel", "MODELS", "State", "tensor_mean"]

State = dict[str, list[Tensor]]
EPS = 1e-12

#: kind -> LearnedModel subclass (built-ins named by module, imported on first use)
MODELS: "Registry[type[LearnedModel]]" = Registry("learned optimizer", builtins={
    "hrnn": "searchlab.learned.hrnn",
    "ni-steps": "searchlab.learned.normalized",
    "ni-momentums": "searchlab.learned.normalized",
    "lwa-a": "searchlab.learned.multiscale",
    "lwa-b": "searchlab.learned.multiscale",
    "lwa-c": "searchlab.learned.multiscale",
    "msadam-mlp": "searchlab.learned.multiscale",
    "msadam-rnn": "searchlab.learned.multiscale",
})


def tensor_mean(x: Tensor, keep: int = 1) -> Tensor:
    """Mean over every dimension after the first ``keep`` (per copy)."""
    return x.reshape(*x.shape[:keep], -1).mean(-1)


class LearnedModel(nn.Module):
    """A learned optimizer's meta-parameters and its functional step (module docstring).

    Subclasses set ``kind``, take JSON-able keyword options (kept in :attr:`config`, so a
    saved file rebuilds the model without pickled code) and implement ``init_state`` and
    ``update``."""

    kind: ClassVar[str] = ""

    def __init__(self, **config: Any) -> None:
        super().__init__()
        self.config: dict[str, Any] = dict(config)

    def init_state(self, params: Sequence[Tensor]) -> State:
        """The state before the first step, for stacked parameters ``[B, ...]``."""
        raise NotImplementedError

    def update(self, grads: Sequence[Tensor], state: State) -> tuple[list[Tensor], State]:
        """Directions ``u`` (``p <- p - lr * u``) and the next state."""
        raise NotImplementedError

    def project_(self) -> None:
        """Restore constraints on the meta-parameters after a meta-update (default: none;
        the models here keep theirs by parametrization)."""
        return None

    def describe(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.config.items()))
        return self.kind + (f"({opts})" if opts else "")


class GRUCell(nn.Module):
    """A gated recurrent unit (Cho et al. 2014), with an optional extra bias from a level
    above (Wichrowska et al. 2017, section 3.1: the tensor and global RNNs' outputs enter
    the level below as bias terms)::

        r  = sigmoid(x Wr + h Ur + br + cr)
        z  = sigmoid(x Wz + h Uz + bz + cz)
        n  = tanh(x Wn + (r * h) Un + bn + cn)
        h' = (1 - z) * h + z * n

    ``c = [cr, cz, cn]`` is the bias ``[..., 3H]`` from above (broadcast over the leading
    dimensions of ``x``).  Weights are used in the dtype of ``x``."""

    def __init__(self, inputs: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        bound = 1.0 / math.sqrt(hidden)
        self.W = nn.Parameter(torch.empty(inputs, 3 * hidden).uniform_(-bound, bound))
        self.U = nn.Parameter(torch.empty(hidden, 3 * hidden).uniform_(-bound, bound))
        self.b = nn.Parameter(torch.zeros(3 * hidden))

    def forward(self, x: Tensor, h: Tensor, c: Tensor | None = None) -> Tensor:
        H = self.hidden
        W, U, b = (t.to(x.dtype) for t in (self.W, self.U, self.b))
        xw = x @ W + b
        if c is not None:
            xw = xw + c
        hu = h @ U[:, :2 * H]
        r = torch.sigmoid(xw[..., :H] + hu[..., :H])
        z = torch.sigmoid(xw[..., H:2 * H] + hu[..., H:])
        n = torch.tanh(xw[..., 2 * H:] + (r * h) @ U[:, 2 * H:])
        return (1 - z) * h + z * n
