"""PowerSign and AddSign (Bello et al. 2017, section 5) and their internal sign decays.

These match TensorFlow's released ``tf.contrib.opt.PowerSignOptimizer`` /
``AddSignOptimizer`` and ``tf.contrib.opt.sign_decay``::

    m <- beta*m + (1-beta)*g                        # updated before it is used
    PowerSign: w <- w - lr * base**(sd*sign(g)*sign(m)) * g
    AddSign:   w <- w - lr * (alpha + sd*sign(g)*sign(m)) * g

with ``sd = sign_decay(t)``, ``t`` the 0-based count of steps taken before this one, and
``sd = 1`` when ``sign_decay`` is None.  ``m`` is not bias-corrected (its sign is the
same either way).  State per parameter: ``step`` (int) and ``m`` -- half of Adam's.
Both take torch's ``maximize``/``foreach`` flags and a Tensor ``lr``, and optimize complex
parameters as ``torch.view_as_real`` (see :mod:`searchlab.optim._common`).

Both run as a handful of foreach passes over all parameters, with one scratch buffer
kept between steps: ``m.lerp_(g)``; ``s = g*m``; ``sign_`` (``sign(g)*sign(m) =
sign(g*m)``, exact unless ``|g*m|`` underflows, see :mod:`searchlab.optim.compiler`);
PowerSign ``exp(k*s)`` with ``k = sd*ln(base)`` (for ``|k| <= 1.1`` as the quadratic
``1 + sinh(k)*(s + tanh(k/2)*s^2)``, exact for s in {-1, 0, 1} up to ~2 ulp, with the
factor ``sinh(k)`` folded into the last op), AddSign ``s*sd + alpha``; one
``addcmul_`` into the parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from ._common import Bucket, BucketedOptimizer
from .compiler import TERNARY_EXP_MAX, exp_of_ternary_

__all__ = [
    "AddSign", "CosineDecay", "LinearDecay", "PowerSign", "RestartDecay", "cosine_decay",
    "linear_decay", "restart_decay",
]

SignDecay = Callable[[int], float]


# --- sign decays (tf.contrib.opt.sign_decay; paper 4.1 decay operands) -------------------
@dataclass(frozen=True)
class LinearDecay:
    """``max(0, (T - min(t, T)) / T)``: the paper's ``ld``."""

    decay_steps: int

    def __call__(self, step: int) -> float:
        s = min(step, self.decay_steps)
        return max(0.0, (self.decay_steps - s) / self.decay_steps)


@dataclass(frozen=True)
class CosineDecay:
    """``0.5*(1 + cos(2*pi*num_periods*min(t, T)/T))``; 0 once ``fraction >= 2*zero_after``
    where ``fraction = 2*num_periods*min(t, T)/T``.  ``num_periods=0.5`` is ``cd``."""

    decay_steps: int
    num_periods: float = 0.5
    zero_after: float | None = None

    def __call__(self, step: int) -> float:
        s = min(step, self.decay_steps)
        fraction = 2.0 * self.num_periods * s / self.decay_steps
        if self.zero_after is not None and fraction >= 2 * self.zero_after:
            return 0.0
        return 0.5 * (1.0 + math.cos(math.pi * fraction))


@dataclass(frozen=True)
class RestartDecay:
    """``0.5*(1 + cos(pi*((num_periods*min(t, T)) % T)/T))``; 0 once
    ``num_periods*min(t, T)/T >= zero_after``.  The paper's ``rd_n``."""

    decay_steps: int
    num_periods: float = 1
    zero_after: float | None = None

    def __call__(self, step: int) -> float:
        s = min(step, self.decay_steps)
        fraction = ((self.num_periods * s) % self.decay_steps) / self.decay_steps
        if self.zero_after is not None and self.num_periods * s / self.decay_steps >= self.zero_after:
            return 0.0
        return 0.5 * (1.0 + math.cos(math.pi * fraction))


def _check_steps(decay_steps: int) -> None:
    if not decay_steps > 0:
        raise ValueError(f"decay_steps must be > 0, got {decay_steps}")


def linear_decay(decay_steps: int) -> LinearDecay:
    """Linear sign decay over ``decay_steps`` steps (TF ``get_linear_decay_fn``)."""
    _check_steps(decay_steps)
    return LinearDecay(decay_steps)


def cosine_decay(decay_steps: int, num_periods: float = 0.5,
                 zero_after: float | None = None) -> CosineDecay:
    """Cosine sign decay (TF ``get_cosine_decay_fn``)."""
    _check_steps(decay_steps)
    return CosineDecay(decay_steps, num_periods, zero_after)


def restart_decay(decay_steps: int, num_periods: float = 1,
                  zero_after: float | None = None) -> RestartDecay:
    """Restart (SGDR-like) sign decay (TF ``get_restart_decay_fn``)."""
    _check_steps(decay_steps)
    return RestartDecay(decay_steps, num_periods, zero_after)


# --- the optimizers ---------------------------------------------------------------------
class _SignOptimizer(BucketedOptimizer):
    """The step shared by PowerSign and AddSign; torch's flags and conventions (Tensor
    lr, ``maximize``, ``foreach``, complex parameters as ``torch.view_as_real``) come
    from :class:`~searchlab.optim._common.BucketedOptimizer`."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], defaults: dict,
                 sign_decay: SignDecay | None, *, foreach: bool | None, maximize: bool,
                 differentiable: bool, capturable: bool) -> None:
        if not 0.0 <= defaults["beta"] < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {defaults['beta']}")
        if sign_decay is not None and not callable(sign_decay):
            raise TypeError("sign_decay must be a callable step -> float (e.g. linear_decay(T))")
        self.sign_decay = sign_decay
        super().__init__(params, defaults, foreach=foreach, maximize=maximize,
                         differentiable=differentiable, capturable=capturable)

    def __getstate__(self) -> dict[str, Any]:
        # torch's Optimizer pickles defaults, state and param_groups only; the sign decay
        # is part of the algorithm, so copies, pickles and torch.save(opt) keep it
        st = super().__getstate__()
        st["sign_decay"] = self.sign_decay
        return st

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        # unpickling brings the decay; load_state_dict brings none (keep ours); a pickle
        # from before the decay was kept has none either (None: no decay)
        decay = (state.pop("sign_decay") if "sign_decay" in state
                 else self.__dict__.get("sign_decay"))
        super().__setstate__(state)
        self.sign_decay = decay

    def _state_keys(self) -> tuple[str, ...]:
        return ("m",)

    def _init_state(self, p: Tensor) -> dict[str, Any]:
        return {"step": 0, "m": torch.zeros_like(p, memory_format=torch.preserve_format)}

    def _decay(self, step: int) -> float:
        return 1.0 if self.sign_decay is None else float(self.sign_decay(step))

    def _multiplier_(self, s: list[Tensor], group: dict[str, Any], sd: float) -> float:
        """Turn ``s = sign(g)*sign(m)`` into the multiplier of ``g``, up to the returned
        scalar factor."""
        raise NotImplementedError

    def _update(self, bucket: Bucket, group: dict[str, Any], lr: float) -> None:
        sd = self._decay(bucket.step)
        for b in (bucket.split() if group["foreach"] is False else [bucket]):
            ps, gs, ms = b.params, b.grads, b.buffers["m"]
            torch._foreach_lerp_(ms, gs, 1.0 - group["beta"])  # m = beta*m + (1-beta)*g
            ws = self.workspace.session(gs)
            s = ws.take()
            torch._foreach_copy_(s, gs)
            torch._foreach_mul_(s, ms)
            torch._foreach_sign_(s)  # sign(g)*sign(m) = sign(g*m)
            factor = self._multiplier_(s, group, sd)
            torch._foreach_addcmul_(ps, s, gs, value=-lr * factor)
            ws.give(s)


class PowerSign(_SignOptimizer):
    """PowerSign: ``w <- w - lr * base**(sd*sign(g)*sign(m)) * g`` (paper section 5).

    ``PowerSign(params)`` is the paper's ``e^(sign(g)*sign(m))*g``; with
    ``sign_decay=cosine_decay(T)`` it is PowerSign-cd.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]],
                 lr: float | Tensor = 0.1, base: float = math.e, beta: float = 0.9,
                 sign_decay: SignDecay | None = None, *, maximize: bool = False,
                 foreach: bool | None = None, differentiable: bool = False,
                 capturable: bool = False) -> None:
        if not base > 0:
            raise ValueError(f"base must be > 0, got {base}")
        super().__init__(params, dict(lr=lr, base=base, beta=beta), sign_decay,
                         foreach=foreach, maximize=maximize, differentiable=differentiable,
                         capturable=capturable)

    def _multiplier_(self, s: list[Tensor], group: dict[str, Any], sd: float) -> float:
        # base**(sd*s) = exp(k*s), k = sd*ln(base); the same ops as the rule compiler's exp
        k = sd * math.log(group["base"])
        if abs(k) <= TERNARY_EXP_MAX:
            return exp_of_ternary_(s, k)  # s in {-1, 0, 1}: a quadratic in s, no exp pass
        if k != 1.0:
            torch._foreach_mul_(s, k)
        if abs(k) > 80.0:
            torch._foreach_clamp_max_(s, 80.0)
        torch._foreach_exp_(s)
        return 1.0


class AddSign(_SignOptimizer):
    """AddSign: ``w <- w - lr * (alpha + sd*sign(g)*sign(m)) * g`` (paper section 5).

    ``AddSign(params)`` is the paper's ``(1+sign(g)*sign(m))*g``; with
    ``sign_decay=linear_decay(T)`` it is AddSign-ld.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]],
                 lr: float | Tensor = 0.1, alpha: float = 1.0, beta: float = 0.9,
                 sign_decay: SignDecay | None = None, *, maximize: bool = False,
                 foreach: bool | None = None, differentiable: bool = False,
                 capturable: bool = False) -> None:
        super().__init__(params, dict(lr=lr, alpha=alpha, beta=beta), sign_decay,
                         foreach=foreach, maximize=maximize, differentiable=differentiable,
                         capturable=capturable)

    def _multiplier_(self, s: list[Tensor], group: dict[str, Any], sd: float) -> float:
        if sd != 1.0:
            torch._foreach_mul_(s, sd)
        torch._foreach_add_(s, group["alpha"])
        return 1.0
