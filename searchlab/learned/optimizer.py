"""``LearnedOptimizer``: any learned model as an ordinary ``torch.optim.Optimizer``.

::

    from searchlab.learned import LearnedOptimizer
    opt = LearnedOptimizer(model.parameters(), "hrnn.pt", lr=1e-3)   # or a LearnedModel
    for x, y in loader:
        opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()

Every parameter with a gradient, over all param groups, is one tensor of the learned
optimizer's problem (the hierarchical RNN's tensor level runs per parameter, its global
level over all of them).  ``lr`` (per group, a float or a 1-element Tensor read every
step) is the initial step-size scale of the models (``searchlab.learned.base``): a
parameter moves by ``-lr * u``.  ``maximize=True`` feeds the negated gradient.

``state_dict()`` holds the per-parameter state (as torch optimizers do) plus the model's
global state under ``"learned"``; ``load_state_dict`` into an optimizer built with the
same meta-parameters continues bit for bit.  The meta-parameters themselves are not in
the state dict: they come from the file (:func:`~searchlab.learned.files.load_learned`).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from .base import LearnedModel
from .files import Learned, load_learned

__all__ = ["LearnedOptimizer"]

#: state entries with one tensor per copy group instead of one per parameter
_GLOBAL = frozenset({"global_h"})


class LearnedOptimizer(torch.optim.Optimizer):
    """See the module docstring.  ``model``: a :class:`LearnedModel`, a
    :class:`~searchlab.learned.files.Learned` or the path of a saved file."""

    def __init__(self, params: Iterable[Any], model: LearnedModel | Learned | str | os.PathLike[str],
                 lr: float | Tensor | None = None, *, maximize: bool = False) -> None:
        if isinstance(model, (str, os.PathLike)):
            model = load_learned(model)
        default_lr = 1e-3
        if isinstance(model, Learned):
            default_lr = model.default_lr
            model = model.model
        if lr is None:
            lr = default_lr
        if not isinstance(lr, Tensor) and not float(lr) > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        super().__init__(params, dict(lr=lr, maximize=bool(maximize)))
        self.model: LearnedModel = model
        self.learned: dict[str, Any] = {"steps": 0}

    def _active(self) -> list[tuple[Tensor, dict[str, Any]]]:
        return [(p, g) for g in self.param_groups for p in g["params"] if p.grad is not None]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        active = self._active()
        if not active:
            return loss
        params = [p for p, _ in active]
        grads = []
        for p, g in active:
            if p.grad.is_sparse:
                raise RuntimeError("LearnedOptimizer does not support sparse gradients")
            gr = p.grad.detach()
            grads.append((-gr if g["maximize"] else gr).unsqueeze(0))
        if any(not self.state[p] for p in params):
            fresh = self.model.init_state([p.detach().unsqueeze(0) for p in params])
            for j, p in enumerate(params):
                if not self.state[p]:
                    self.state[p].update({k: v[j] for k, v in fresh.items() if k not in _GLOBAL})
            for k, v in fresh.items():
                if k in _GLOBAL and k not in self.learned:
                    self.learned[k] = [t.clone() for t in v]
        names = [k for k in self.state[params[0]]]
        state = {k: [self.state[p][k] for p in params] for k in names}
        for k in _GLOBAL:
            if k in self.learned:
                state[k] = self.learned[k]
        us, new = self.model.update(grads, state)
        for j, ((p, g), u) in enumerate(zip(active, us)):
            lr = g["lr"]
            lr = lr.to(p.dtype) if isinstance(lr, Tensor) else float(lr)
            p.sub_(u.squeeze(0).to(p.dtype) * lr)
            for k in names:
                self.state[p][k] = new[k][j]
        for k in _GLOBAL:
            if k in new:
                self.learned[k] = new[k]
        self.learned["steps"] = int(self.learned["steps"]) + 1
        return loss

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["learned"] = {k: ([t.clone() for t in v] if isinstance(v, list) else v)
                         for k, v in self.learned.items()}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        learned = state_dict.pop("learned", {"steps": 0})
        super().load_state_dict(state_dict)
        self.learned = {k: ([t.clone() for t in v] if isinstance(v, list) else v)
                        for k, v in learned.items()}
