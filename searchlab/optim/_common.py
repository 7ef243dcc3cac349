"""What the optimizers of :mod:`searchlab.optim` share: torch.optim's conventions.

* ``lr``: a number or a 1-element Tensor, ``>= 0`` (torch's ``ValueError("Tensor lr must
  be 1-element")`` for a larger one), in ``defaults`` and every param group.  A Tensor lr
  is kept as given and read at every step, so changing it in place (as torch's LR
  schedulers do with a Tensor lr) takes effect on the next step.
* torch's flags, per param group and in the state_dict as torch keeps them:

  - ``maximize``: step along the gradient.  As in torch's optimizers the rule sees
    ``-g`` everywhere, its moving averages included (they average ``-g``), so it is
    exactly minimizing the negated loss.  The gradients themselves are not modified.
  - ``foreach``: None (the default) or True run each operation as one foreach pass over
    all parameters of a device and dtype; False runs the same arithmetic one parameter
    at a time (torch's "for-loop" implementation), with the same results and, for a
    stochastic rule, the same random numbers.
  - ``differentiable`` and ``capturable`` must be False (torch's default): a step
    updates scratch buffers and the parameters in place under ``torch.no_grad``, so
    autograd cannot run through it, and step counts are Python ints read on the host,
    so it cannot be captured in a CUDA graph.  True is a ``ValueError`` saying so.

  Param groups loaded from older state dicts or pickles without these keys get
  torch's defaults.
* Complex parameters are optimized as real ones: ``p`` as ``torch.view_as_real(p)``
  (real and imaginary parts as independent real coordinates), its gradient and state
  buffers likewise, exactly as torch's optimizers handle them.  The state buffers are
  complex tensors shaped like ``p`` (torch's layout).  Every operation of the rule
  language is elementwise on real numbers, so every rule, PowerSign and AddSign have a
  meaning under this view and none is refused.
"""

from __future__ import annotations

import numbers
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .workspace import Workspace

#: torch's implementation flags and the values a param group gets when it has none
FLAG_DEFAULTS: dict[str, Any] = {"foreach": None, "maximize": False, "differentiable": False,
                                 "capturable": False}


def check_lr(lr: float | Tensor) -> float | Tensor:
    """torch's rules for a learning rate; returns it unchanged."""
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        value = float(lr)
    elif isinstance(lr, numbers.Real):
        value = float(lr)
    else:
        raise TypeError(f"lr must be a number or a 1-element Tensor, got {type(lr).__name__}")
    if not value >= 0.0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    return lr


def check_flags(flags: dict[str, Any], owner: str) -> None:
    """Refuse the flag values that cannot be honoured (see the module docstring)."""
    if flags["foreach"] not in (None, True, False):
        raise TypeError(f"foreach must be None, True or False, got {flags['foreach']!r}")
    if flags["differentiable"]:
        raise ValueError(f"{owner}: differentiable=True is not supported (a step updates "
                         "scratch buffers and the parameters in place under torch.no_grad)")
    if flags["capturable"]:
        raise ValueError(f"{owner}: capturable=True is not supported (step counts are "
                         "Python ints and lr is read on the host: no CUDA-graph capture)")


def _real(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


@dataclass(frozen=True)
class Bucket:
    """Parameters of one param group that step together: same device, dtype and step
    count.  Every tensor is a real view (complex ones through ``torch.view_as_real``)."""

    step: int
    params: list[Tensor]
    grads: list[Tensor]
    buffers: dict[str, list[Tensor]]  # state buffers by name, one per parameter
    states: list[dict[str, Any]]  # the per-parameter state dicts (their step advances)

    def with_grads(self, grads: list[Tensor]) -> Bucket:
        return replace(self, grads=grads)

    def split(self) -> list[Bucket]:
        """One bucket per parameter (the for-loop implementation)."""
        return [Bucket(self.step, [p], [g], {k: [v[i]] for k, v in self.buffers.items()}, [s])
                for i, (p, g, s) in enumerate(zip(self.params, self.grads, self.states))]


def grouped(params: Iterable[Tensor], state: dict[Tensor, dict[str, Any]],
            init: Callable[[Tensor], dict[str, Any]], keys: Sequence[str]) -> Iterator[Bucket]:
    """The params that have a gradient, bucketed by (device, dtype, step count).

    ``init(p)`` builds the state of a parameter seen for the first time; ``keys`` are
    its buffers.  Parameters share a step count unless some of them had no gradient on
    some steps; the buckets keep each one's own count exact.  The dtype is the real
    view's, so complex64 and float32 parameters share a bucket (and one noise draw).
    """
    raw: dict[tuple, tuple[list, list, list, list]] = defaultdict(lambda: ([], [], [], []))
    for p in params:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise RuntimeError("searchlab optimizers do not support sparse gradients")
        st = state[p]
        if len(st) == 0:
            st.update(init(p))
        pv = _real(p)
        b = raw[(pv.device, pv.dtype, int(st["step"]))]
        b[0].append(pv)
        b[1].append(_real(p.grad))
        b[2].append([_real(st[k]) for k in keys])
        b[3].append(st)
    for (_, _, step), (ps, gs, bufs, sts) in raw.items():
        yield Bucket(step, ps, gs, {k: [b[i] for b in bufs] for i, k in enumerate(keys)}, sts)


def negated(grads: list[Tensor], workspace: Workspace) -> list[Tensor]:
    """``-g`` in scratch buffers of their own (the gradients are never written to)."""
    out = workspace.session(grads, tag="neg_grad").take()
    torch._foreach_copy_(out, grads)
    torch._foreach_neg_(out)
    return out


def advance(states: list[dict[str, Any]]) -> None:
    for st in states:
        st["step"] = int(st["step"]) + 1


class BucketedOptimizer(Optimizer):
    """A ``torch.optim.Optimizer`` that steps :class:`Bucket` by bucket, with torch's
    ``lr``, ``maximize``, ``foreach``, ``differentiable`` and ``capturable`` handled here
    (module docstring).  Subclasses say what state a parameter has and how a bucket is
    updated; ``workspace`` holds scratch buffers reused across steps (not state: a copy
    or an unpickled optimizer starts with an empty one)."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]],
                 defaults: dict[str, Any], *, foreach: bool | None, maximize: bool,
                 differentiable: bool, capturable: bool) -> None:
        flags = {"foreach": foreach, "maximize": maximize, "differentiable": differentiable,
                 "capturable": capturable}
        # checked before the params are looked at, as torch does (clear errors first)
        check_lr(defaults["lr"])
        check_flags(flags, type(self).__name__)
        self.workspace = Workspace()
        super().__init__(params, {**defaults, **flags})

    def _state_keys(self) -> tuple[str, ...]:
        """Names of the per-parameter state buffers (besides ``step``)."""
        raise NotImplementedError

    def _init_state(self, p: Tensor) -> dict[str, Any]:
        """The state of a parameter before its first step."""
        raise NotImplementedError

    def _update(self, bucket: Bucket, group: dict[str, Any], lr: float) -> None:
        """Update ``bucket.params`` (and the state buffers) in place; ``bucket.grads`` are
        already negated under ``maximize``.  Honour ``group['foreach'] is False``."""
        raise NotImplementedError

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_lr(group["lr"])
        check_flags(group, type(self).__name__)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One optimizer step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        keys = self._state_keys()
        for group in self.param_groups:
            lr = float(group["lr"])  # a Tensor lr: its value now
            for bucket in grouped(group["params"], self.state, self._init_state, keys):
                if group["maximize"]:
                    bucket = bucket.with_grads(negated(bucket.grads, self.workspace))
                self._update(bucket, group, lr)
                advance(bucket.states)
        return loss

    def __setstate__(self, state: dict[str, Any]) -> None:
        # also the last act of load_state_dict (with state and param_groups only)
        super().__setstate__(state)
        for name, value in FLAG_DEFAULTS.items():
            self.defaults.setdefault(name, value)
            for group in self.param_groups:
                group.setdefault(name, value)
        self.workspace = Workspace()
