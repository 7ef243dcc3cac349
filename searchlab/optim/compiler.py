"""Compile an update rule into vectorised tensor code (paper 3.1, 4.1).

:func:`compile_rule` turns a rule tree (:mod:`searchlab.dsl.nodes`) into a straight-line
*plan* over LISTS of tensors: every step is one or a few ``torch._foreach_*`` calls, so
the Python cost per optimizer step is per node of the rule, never per tensor element.
Temporaries live in scratch buffers of a :class:`~searchlab.optim.workspace.Workspace`
that the caller keeps between steps (allocating them afresh costs more than the math
on CPU).  Per-tensor Python remains only where no foreach op exists: creating a scratch
buffer the first time, and random draws when the tensors mix dtypes or devices
(otherwise each noise operand is one flat ``normal_``/``uniform_`` call).

Semantics (the primitives table :mod:`searchlab.dsl.primitives` is the source of truth):

* ``t`` is the 0-based count of steps taken before this one; ``T = total_steps``.
* ``m``, ``v``, ``gamma`` are bias-corrected EMAs of ``g``, ``g^2``, ``g^3`` with
  ``betas`` (default ``DEFAULT_BETAS``): ``m_t = b1*m + (1-b1)*g`` (updated *before* it is
  read), read as ``m_t / (1 - b1^(t+1))``.  Only the raw EMAs are stored.
* ``adam = m / (sqrt(v) + 1e-8)`` and ``rmsprop = g / (sqrt(v) + 1e-8)``, with the
  bias-corrected ``m`` and ``v`` above (the same ``v`` buffer as the ``v`` operand).
  They are expanded into the rule language itself (see ``EXPANSIONS``): ``m/sqrt(v)``
  *is* Adam's update because the language's division is ``x/(y+1e-8)``.
* ``g2 = g*g``, ``g3 = g*g*g``; ``sign_g = sign(g)``, ``sign_m = sign(m)``.
* the multiscale operands ``m_5``, ``m_99`` are bias-corrected EMAs of ``g`` like ``m``
  with the fixed decay rates ``MULTISCALE_BETAS`` (0.5, 0.99; ``betas`` does not change
  them); ``adam_5 = m_5/sqrt(v)``, ``adam_99 = m_99/sqrt(v)`` (Adam with that beta1).
* ``eps ~ N(0, 0.01)`` (variance 0.01, std 0.1), ``eps_t ~ N(0, 1/(1+t)^0.55)``, fresh
  every step from the caller's ``torch.Generator`` (or drawn ahead for a whole list by
  :meth:`CompiledRule.draw_noise` and replayed one tensor at a time: the same numbers).
  ``w`` is the parameter (before the update).  Decay operands are ``primitives.decay_value(name, t, T)``.
* ``x/y = x/(y+1e-8)``; ``x^y = sign(x)*|x|^y`` with ``sign(0) = +1`` here, so
  ``0^negative = inf`` (the odd extension for negative x); ``exp(x) = exp(min(x, 80))``;
  ``log(x) = log(|x|+1e-8)``; ``sqrt(x) = sqrt|x|``; ``clip(x, b)`` clamps to ``[-b, b]``;
  ``drop(x, p)`` zeroes each element with probability ``p`` **without** rescaling the
  survivors by ``1/(1-p)`` (unlike ``torch.nn.Dropout``; it multiplies by a 0/1 mask,
  so a dropped inf becomes nan); ``sigmoid``; ``abs``;
  ``left(x, y) = x`` (``y`` is not evaluated and draws no noise); ``sign(0) = 0`` and,
  as in torch, ``sign(nan) = 0``.
* Identical sub-expressions are computed once per step.  This is the token grammar's
  meaning of reusing an output ``o_k``; for noise it means that ``eps - eps`` is 0 (one
  draw), and ``drop(g, 0.5)`` appearing twice drops the same elements.

Cheap exact algebra (identities of real numbers; float rounding may differ in the last
bits from a naive evaluation):

* every value carries a lazy scalar factor, so bias corrections, constants, decay
  operands and ``eps``'s standard deviation cost no tensor pass: ``m_hat = m / bc1`` is
  the ``m`` buffer with factor ``1/bc1``; ``sign(c*x) = sign(c)*sign(x)``;
  ``sqrt|c*x| = sqrt|c|*sqrt|x|``; ``c*x + d*y = c*(x + (d/c)*y)``;
* ``sign(a)*sign(b) -> sign(a*b)`` inside products (one pass fewer).  The only case where
  this differs is when ``|a*b|`` underflows the float format (e.g. ``|a|, |b| < ~1e-23``
  in float32): then the sign is 0 instead of +-1;
* ``exp(c*s)`` of a value ``s`` in {-1, 0, 1} (a sign or product of signs, as in
  PowerSign) with ``|c| <= 1.1`` is the quadratic ``1 + sinh(c)*(s + tanh(c/2)*s^2)``
  (two cheap passes and a lazy factor instead of an ``exp`` pass; within ~3e-7
  relative of ``exp``);
  ``exp`` skips its clamp when the input is provably bounded, and ``sqrt`` skips ``abs``
  on provably non-negative inputs (``v``, ``g*g``);
* the final multiplication or division is fused into the parameter update
  (``addcmul_``/``addcdiv_``) by :meth:`CompiledRule.apply_update`.

All ops are elementwise, so tensors with an extra leading "stack" dimension (K copies
of a parameter, as the evaluator's batched learning-rate sweep uses) work unchanged.
"""

from __future__ import annotations

import math
import numbers
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

from searchlab.dsl import Bin, Call, Const, Leaf, Node, Rule, as_rule
from searchlab.dsl.primitives import (
    BINARY,
    DEFAULT_BETAS,
    DIV_DELTA,
    EXTRA_FUNCTIONS,
    MULTISCALE_BETAS,
    OPERANDS,
    UNARY,
    decay_value,
    is_decay_name,
)
from searchlab.dsl.text import parse_node

from .workspace import Session, Workspace

__all__ = ["CompiledRule", "compile_rule", "EXPANSIONS", "AVERAGES"]

#: Operands defined by other operands, written in the rule language itself.
EXPANSIONS: Mapping[str, str] = {
    "g2": "g*g",
    "g3": "g*g*g",
    "sign_g": "sign(g)",
    "sign_m": "sign(m)",
    "adam": "m/sqrt(v)",  # m_hat / (sqrt(v_hat) + 1e-8): '/' supplies the 1e-8
    "rmsprop": "g/sqrt(v)",  # g / (sqrt(v_hat) + 1e-8)
    "adam_5": "m_5/sqrt(v)",    # the multiscale operands: Adam with beta1 0.5 / 0.99
    "adam_99": "m_99/sqrt(v)",
}
#: Moving averages: operand name -> (index into betas, power of g they average); the
#: multiscale averages (``m_5``, ``m_99``) have fixed decay rates, ``MULTISCALE_BETAS``.
AVERAGES: Mapping[str, tuple[int, int]] = {"m": (0, 1), "v": (1, 2), "gamma": (2, 3),
                                           **{k: (-1, 1) for k in MULTISCALE_BETAS}}


def _beta(name: str, betas: Sequence[float]) -> float:
    """The decay rate of moving average ``name`` given the rule's ``betas``."""
    index = AVERAGES[name][0]
    return MULTISCALE_BETAS[name] if index < 0 else betas[index]
#: Standard deviation of the noise operands at step t (paper 4.1; see primitives docs).
NOISE_STD: Mapping[str, Callable[[int], float]] = {
    "eps": lambda t: 0.1,  # variance 0.01
    "eps_t": lambda t: (1.0 + t) ** (-0.55 / 2.0),  # variance 1/(1+t)^0.55
}
#: Leaves the compiler reads directly (everything else is an expansion, constant or decay).
_DIRECT_LEAVES = frozenset({"g", "w"} | set(AVERAGES) | set(NOISE_STD))
_EXP_CLAMP = 80.0


# --------------------------------------------------------------------------------------
# values: a tensor list times a lazy scalar factor, or a plain scalar
# --------------------------------------------------------------------------------------
class _Val:
    """``c * t`` (``t`` a list of tensors) or the scalar ``c`` when ``t`` is None.

    ``own``: ``t`` is a temporary nobody else reads, so it may be modified in place.
    ``bound``: known bound on ``|t|`` elementwise (None if unknown).
    ``nonneg``: every element of ``t`` is >= 0 (or nan).
    ``tern``: every element of ``t`` is -1, 0 or +1 (a sign, or a product of signs).
    """

    __slots__ = ("t", "c", "own", "bound", "nonneg", "tern")

    def __init__(self, t: list[Tensor] | None, c: float, own: bool = False,
                 bound: float | None = None, nonneg: bool = False, tern: bool = False) -> None:
        self.t = t
        self.c = c
        self.own = own
        self.bound = bound
        self.nonneg = nonneg
        self.tern = tern

    def borrowed(self) -> "_Val":
        if not self.own:
            return self
        return _Val(self.t, self.c, False, self.bound, self.nonneg, self.tern)

    def scaled(self, c: float) -> "_Val":
        return _Val(self.t, c, self.own, self.bound, self.nonneg, self.tern)


class _Ctx:
    """One evaluation.  ``replay``: random numbers drawn ahead (by
    :meth:`CompiledRule.draw_noise`), handed out in plan order instead of drawing."""

    __slots__ = ("grads", "params", "state", "step", "total", "gen", "betas", "ws", "replay")

    def __init__(self, grads: list[Tensor], params: Sequence[Tensor] | None,
                 state: Mapping[str, list[Tensor]], step: int, total: int | None,
                 gen: torch.Generator | None, betas: tuple[float, float, float],
                 ws: Session, replay: deque[list[Tensor]] | None = None) -> None:
        self.grads = grads
        self.params = params
        self.state = state
        self.step = step
        self.total = total
        self.gen = gen
        self.betas = betas
        self.ws = ws
        self.replay = replay


def _inplace(ctx: _Ctx, v: _Val, op: Callable, *args: object) -> list[Tensor]:
    """``op(t, *args)`` on ``v``'s tensors, or on a scratch copy when ``v`` is borrowed."""
    if v.own:
        op(v.t, *args)
        return v.t  # type: ignore[return-value]
    t = ctx.ws.take()
    torch._foreach_copy_(t, v.t)
    op(t, *args)
    return t


def _fill(ctx: _Ctx, value: float) -> list[Tensor]:
    t = ctx.ws.take()
    torch._foreach_zero_(t)
    torch._foreach_add_(t, value)
    return t


def _mat(ctx: _Ctx, v: _Val) -> _Val:
    """The same value with factor 1 (tensors; scalars are filled into tensors)."""
    if v.t is None:
        return _Val(_fill(ctx, v.c), 1.0, True,
                    abs(v.c) if math.isfinite(v.c) else None, v.c >= 0)
    if v.c == 1.0:
        return v
    bound = v.bound * abs(v.c) if v.bound is not None else None
    return _Val(_inplace(ctx, v, torch._foreach_mul_, v.c), 1.0, True, bound,
                v.nonneg and v.c >= 0)


# --------------------------------------------------------------------------------------
# random draws: one flat draw per operand into a scratch buffer (torch has no foreach
# random ops; per-tensor Python only when the tensors mix dtypes or devices)
# --------------------------------------------------------------------------------------
def _need_gen(ctx: _Ctx) -> torch.Generator:
    if ctx.gen is None:
        raise ValueError("this rule draws random numbers (eps, eps_t or drop); pass a seeded "
                         "torch.Generator (searchlab never reads the global RNG)")
    return ctx.gen


def _draw(ctx: _Ctx, fill: Callable[[Tensor, torch.Generator], object]) -> list[Tensor]:
    gen = _need_gen(ctx)
    views = ctx.ws.take()
    flat = ctx.ws.flat(views)
    for target in ([flat] if flat is not None else views):
        if target.device == gen.device:
            fill(target, gen)
        else:
            tmp = torch.empty(target.shape, dtype=target.dtype, device=gen.device)
            fill(tmp, gen)
            target.copy_(tmp)
    return views


def _replayed(ctx: _Ctx) -> list[Tensor]:
    if not ctx.replay:
        raise ValueError("noise= holds fewer draws than the rule makes; build it with "
                         "draw_noise() for the same rule")
    return ctx.replay.popleft()


def _randn(ctx: _Ctx) -> list[Tensor]:
    if ctx.replay is not None:
        return _replayed(ctx)
    return _draw(ctx, lambda f, gen: f.normal_(0.0, 1.0, generator=gen))


def _keep_mask(ctx: _Ctx, p: float) -> list[Tensor]:
    """1.0 with probability ``1 - p``, else 0.0, elementwise (the mask of ``drop``)."""
    if ctx.replay is not None:
        return _replayed(ctx)
    gen = _need_gen(ctx)
    views = ctx.ws.take()
    flat = ctx.ws.flat(views)
    if (flat is not None and flat.dtype == torch.float32 and flat.device == gen.device
            and flat.numel() % 2 == 0):
        # 32 random bits per element, two per 64-bit draw (~1.5x faster than uniform_):
        # keep iff the bits, as an unsigned u in [0, 2^32), satisfy u >= p * 2^32
        bits = flat.view(torch.int64).random_(-2**63, None, generator=gen).view(torch.int32)
        torch.ge(bits, math.ceil(p * 2**32) - 2**31, out=flat)  # same memory, elementwise
        return views
    ctx.ws.give(views)
    # u ~ U[0, 1); keep where u >= p; ge_ writes 1.0/0.0 in place
    return _draw(ctx, lambda f, gen: f.uniform_(0.0, 1.0, generator=gen).ge_(p))


# --------------------------------------------------------------------------------------
# scalar semantics (the same protected meanings, in double precision)
# --------------------------------------------------------------------------------------
def _s_sign(x: float) -> float:
    return float((x > 0) - (x < 0))


def _s_sigmoid(x: float) -> float:
    if math.isnan(x):
        return x
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _s_clip(x: float, b: float) -> float:
    return x if math.isnan(x) else max(-b, min(b, x))


def _s_div(x: float, y: float) -> float:
    d = y + DIV_DELTA
    if d == 0.0:
        return math.nan if (x == 0 or math.isnan(x)) else math.copysign(math.inf, x)
    return x / d


def _s_pow(x: float, y: float) -> float:
    a = abs(x)
    try:
        r = a ** y
    except ZeroDivisionError:  # 0 ** negative
        r = math.inf
    except OverflowError:
        r = math.inf
    return -r if x < 0 else r


_SCALAR_UNARY: Mapping[str, Callable[[float, float | None], float]] = {
    "neg": lambda x, p: -x,
    "exp": lambda x, p: math.exp(min(x, _EXP_CLAMP)) if not math.isnan(x) else x,
    "log": lambda x, p: math.log(abs(x) + 1e-8),
    "sqrt": lambda x, p: math.sqrt(abs(x)),
    "sign": lambda x, p: _s_sign(x),
    "clip": lambda x, p: _s_clip(x, float(p)),  # type: ignore[arg-type]
    "sigmoid": lambda x, p: _s_sigmoid(x),
    "abs": lambda x, p: abs(x),
    # "drop" of a scalar is a random tensor: handled by the tensor implementation
}
_SCALAR_BINARY: Mapping[str, Callable[[float, float], float]] = {
    "add": lambda x, y: x + y,
    "sub": lambda x, y: x - y,
    "mul": lambda x, y: x * y,
    "div": _s_div,
    "pow": _s_pow,
}


# --------------------------------------------------------------------------------------
# tensor implementations of the unary functions (keyed by the tree's Call.fn)
# --------------------------------------------------------------------------------------
#: largest |c| for which exp(c*s), s in {-1, 0, 1}, is computed as a quadratic in s
#: (relative error <= ~3e-8 * e^(2|c|), i.e. <= 3e-7 here; beyond it: torch's exp)
TERNARY_EXP_MAX = 1.1


def exp_of_ternary_(t: list[Tensor], c: float) -> float:
    """``exp(c*t) = a * t'`` for ``t`` in {-1, 0, 1} and ``|c| <= TERNARY_EXP_MAX``:
    overwrites ``t`` with ``t'`` and returns the factor ``a``.

    ``exp(c*s) = 1 + sinh(c)*(s + tanh(c/2)*s^2)`` for s in {-1, 0, 1}, computed as
    ``a = sinh(c)`` times ``s + tanh(c/2)*s^2 + 1/a``: two cheap passes (``addcmul_``,
    ``add_``) instead of an ``exp`` pass that costs ~10 memory passes on CPU, and the
    factor ``a`` rides along as a lazy scalar (folded into the final ``addcmul_``).
    Shared by PowerSign and the compiler, so the two agree bit for bit.
    """
    if c == 0.0:  # exp(0) = 1
        torch._foreach_zero_(t)
        torch._foreach_add_(t, 1.0)
        return 1.0
    a = math.sinh(c)
    torch._foreach_addcmul_(t, t, t, value=math.tanh(c / 2.0))
    torch._foreach_add_(t, 1.0 / a)
    return a


def _u_neg(ctx: _Ctx, v: _Val, p: float | None) -> _Val:
    return _Val(v.t, -v.c, v.own, v.bound, v.nonneg, v.tern)


def _u_exp(ctx: _Ctx, v: _Val, p: float | None) -> _Val:
    if v.tern and abs(v.c) <= TERNARY_EXP_MAX:
        factor = [1.0]
        t = _inplace(ctx, v, lambda t: factor.__setitem__(0, exp_of_ternary_(t, v.c)))
        return _Val(t, factor[0], True, None, factor[0] > 0)
    safe = v.bound is not None and v.bound * abs(v.c) <= _EXP_CLAMP
    v = _mat(ctx, v)
    if safe:
        t = _inplace(ctx, v, torch._foreach_exp_)
    else:
        t = _inplace(ctx, v, torch._foreach_clamp_max_, _EXP_CLAMP)
        torch._foreach_exp_(t)
    return _Val(t, 1.0, True, None, True)


def _u_log(ctx: _Ctx, v: _Val, p: float | None) -> _Val:
    # log(|c*x| + 1e-8)
    c = abs(v.c)
    if v.nonneg and c == 1.0:
        t = _inplace(ctx, v, torch._foreach_add_, 1e-8)
    else:
        if v.nonneg:
            t = _inplace(ctx, v, torch._foreach_mul_, c)
        else:
            t = _inplace(ctx, v, torch._foreach_abs_)
            if c != 1.0:
                torch._foreach_mul_(t, c)
        torch._foreach_add_(t, 1e-8)
    torch._foreach_log_(t)
    return _Val(t, 1.0, True)


def _u_sqrt(ctx: _Ctx, v: _Val, p: float | None) -> _Val:
    # sqrt|c*x| = sqrt|c| * sqrt|x|
    if v.nonneg:
        t = _inplace(ctx, v, torch._foreach_sqrt_)
    else:
        t = _inplace(ctx, v, torch._foreach_abs_)
        torch._foreach_sqrt_(t)
    bound = math.sqrt(v.bound) if v.bound is not None else None
    return _Val(t, math.sqrt(abs(v.c)), True, bound, True, v.tern)


def _u_abs(ctx: _Ctx, v: _Val, p: float | None) -> _Val:
    if v.nonneg:
        return _Val(v.t, abs(v.c), v.own, v.bound, True, v.tern)
    t = _inplace(ctx, v, torch._foreach_abs_)
    return _Val(t, abs(v.c), True, v.bound, True, v.tern)


def _u_sign(ctx: _Ctx, v: _Val, p: float | None) -> _Val:
    # sign(c*x) = sign(c) * sign(x)
    if v.tern:
        return _Val(v.t, _s_sign(v.c), v.own, 1.0, v.nonneg, True)
    t = _inplace(ctx, v, torch._foreach_sign_)
    return _Val(t, _s_sign(v.c), True, 1.0, v.nonneg, True)


def _u_clip(ctx: _Ctx, v: _Val, p: float | None) -> _Val:
    b = float(p)  # type: ignore[arg-type]
    v = _mat(ctx, v)
    if v.nonneg:
        t = _inplace(ctx, v, torch._foreach_clamp_max_, b)
    else:
        t = _inplace(ctx, v, torch._foreach_clamp_min_, -b)
        torch._foreach_clamp_max_(t, b)
    return _Val(t, 1.0, True, b, v.nonneg)


def _u_drop(ctx: _Ctx, v: _Val, p: float | None) -> _Val:
    prob = float(p)  # type: ignore[arg-type]
    if v.t is None:
        v = _mat(ctx, v)
    if prob == 0.0:
        return v
    mask = _keep_mask(ctx, prob)  # no 1/(1-p) rescaling of the survivors
    if v.own:
        torch._foreach_mul_(v.t, mask)
        ctx.ws.give(mask)
        return _Val(v.t, v.c, True, v.bound, v.nonneg, v.tern)
    torch._foreach_mul_(mask, v.t)
    return _Val(mask, v.c, True, v.bound, v.nonneg, v.tern)


def _u_sigmoid(ctx: _Ctx, v: _Val, p: float | None) -> _Val:
    v = _mat(ctx, v)
    t = _inplace(ctx, v, torch._foreach_sigmoid_)
    return _Val(t, 1.0, True, 1.0, True)


_TENSOR_UNARY: Mapping[str, Callable[[_Ctx, _Val, float | None], _Val]] = {
    "neg": _u_neg, "exp": _u_exp, "log": _u_log, "sqrt": _u_sqrt, "abs": _u_abs,
    "sign": _u_sign, "clip": _u_clip, "drop": _u_drop, "sigmoid": _u_sigmoid,
}


# --------------------------------------------------------------------------------------
# tensor implementations of the binary functions (keyed by primitives.BINARY names)
# --------------------------------------------------------------------------------------
_RATIO_MAX = 1e30


def _b_add(ctx: _Ctx, x: _Val, y: _Val, same: bool) -> _Val:
    if x.t is None or y.t is None:  # tensor + scalar: c*t + k = c*(t + k/c)
        v, k = (y, x.c) if x.t is None else (x, y.c)
        if v.c == 0.0 or not math.isfinite(v.c):
            v = _mat(ctx, v)
        t = _inplace(ctx, v, torch._foreach_add_, k / v.c)
        return _Val(t, v.c, True, None, v.nonneg and v.c > 0 and k >= 0)
    nonneg = x.nonneg and y.nonneg and x.c >= 0 and y.c >= 0
    if x.c == 0.0 or y.c == 0.0 or not (1 / _RATIO_MAX < abs(y.c / x.c) < _RATIO_MAX):
        x, y = _mat(ctx, x), _mat(ctx, y)
    if y.own and not x.own:
        x, y = y, x
    alpha = y.c / x.c
    t = _inplace(ctx, x, lambda t: torch._foreach_add_(t, y.t, alpha=alpha))
    return _Val(t, x.c, True, None, nonneg)


def _b_sub(ctx: _Ctx, x: _Val, y: _Val, same: bool) -> _Val:
    return _b_add(ctx, x, y.scaled(-y.c), same)


def _b_mul(ctx: _Ctx, x: _Val, y: _Val, same: bool) -> _Val:
    if x.t is None or y.t is None:  # a scalar factor is free
        v, k = (y, x.c) if x.t is None else (x, y.c)
        return v.scaled(v.c * k)
    bound = x.bound * y.bound if x.bound is not None and y.bound is not None else None
    nonneg = same or (x.nonneg and y.nonneg)
    if y.own and not x.own:
        x, y = y, x
    t = _inplace(ctx, x, torch._foreach_mul_, y.t)
    return _Val(t, x.c * y.c, True, bound, nonneg, x.tern and y.tern)


def _denominator(ctx: _Ctx, y: _Val) -> _Val:
    """``y + 1e-8`` as ``c * d`` with ``d`` an owned tensor list."""
    if y.c == 0.0 or not math.isfinite(y.c):
        y = _mat(ctx, y)
    return _Val(_inplace(ctx, y, torch._foreach_add_, DIV_DELTA / y.c), y.c, True)


def _b_div(ctx: _Ctx, x: _Val, y: _Val, same: bool) -> _Val:
    if y.t is None:  # tensor / scalar: a factor (a zero denominator gives inf/nan)
        d = y.c + DIV_DELTA
        if d == 0.0 or not math.isfinite(d):
            x = _mat(ctx, x)
            return _Val(_inplace(ctx, x, torch._foreach_div_, d), 1.0, True)
        return _Val(x.t, x.c / d, x.own, x.bound, x.nonneg, x.tern)
    d = _denominator(ctx, y)
    if x.t is None:  # scalar / tensor: k / (c*d) = (k/c) * (1/d)
        torch._foreach_reciprocal_(d.t)
        return _Val(d.t, x.c / d.c, True)
    t = _inplace(ctx, x, torch._foreach_div_, d.t)
    ctx.ws.give(d.t)
    return _Val(t, x.c / d.c, True)


def _b_pow(ctx: _Ctx, x: _Val, y: _Val, same: bool) -> _Val:
    # sign(x) * |x|^y with sign(0) = +1, so 0^negative = +inf
    if x.t is None:  # scalar ^ tensor
        t = list(torch._foreach_pow(abs(x.c), _mat(ctx, y).t))  # no in-place variant
        if x.c < 0:
            torch._foreach_neg_(t)
        return _Val(t, 1.0, True)
    x = _mat(ctx, x)
    y_m = None if y.t is None else _mat(ctx, y)
    exponent: float | list[Tensor] = y.c if y_m is None else y_m.t  # type: ignore[assignment]
    if x.nonneg:
        t = _inplace(ctx, x, torch._foreach_pow_, exponent)
    else:
        s = _inplace(ctx, x.borrowed(), torch._foreach_sign_)  # sign'(x) = sign(sign(x)+0.5)
        torch._foreach_add_(s, 0.5)
        torch._foreach_sign_(s)
        t = _inplace(ctx, x, torch._foreach_abs_)
        torch._foreach_pow_(t, exponent)
        torch._foreach_mul_(t, s)
        ctx.ws.give(s)
    if y_m is not None and y_m.own and y_m.t is not t:
        ctx.ws.give(y_m.t)
    return _Val(t, 1.0, True, None, x.nonneg)


_TENSOR_BINARY: Mapping[str, Callable[[_Ctx, _Val, _Val, bool], _Val]] = {
    "add": _b_add, "sub": _b_sub, "mul": _b_mul, "div": _b_div, "pow": _b_pow,
    # "left" is removed at compile time: left(x, y) -> x
}


def _check_table() -> None:
    """Every entry of the primitives table must have an implementation here."""
    for name, op in OPERANDS.items():
        if op.kind == "constant":
            float(name)
        elif op.kind == "weight":
            float(name.split("*")[0])
        elif op.kind == "decay":
            if not is_decay_name(name):
                raise AssertionError(f"decay operand {name!r} has no decay_value")
        elif name not in EXPANSIONS and name not in _DIRECT_LEAVES:
            raise AssertionError(f"operand {name!r} of the primitives table is not compiled")
    fns = {("neg" if u.fn == "-" else u.fn) for u in UNARY.values() if u.fn is not None}
    missing = (fns | set(EXTRA_FUNCTIONS)) - set(_TENSOR_UNARY)
    missing |= set(BINARY) - set(_TENSOR_BINARY) - {"left"}
    if missing:
        raise AssertionError(f"functions of the primitives table not compiled: {missing}")


_check_table()


# --------------------------------------------------------------------------------------
# compile-time rewrites
# --------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _expansion(name: str) -> Node:
    return parse_node(EXPANSIONS[name])


def _factors(node: Node) -> list[Node]:
    if isinstance(node, Bin) and node.op == "mul":
        return _factors(node.left) + _factors(node.right)
    return [node]


def _is_sign(node: Node) -> bool:
    return isinstance(node, Call) and node.fn == "sign"


def _rewrite(node: Node) -> Node:
    """Exact rewrites applied bottom-up (see the module docstring)."""
    if isinstance(node, Leaf):
        return _rewrite(_expansion(node.name)) if node.name in EXPANSIONS else node
    if isinstance(node, Const):
        return node
    if isinstance(node, Call):
        arg = _rewrite(node.arg)
        if node.fn == "sign" and _is_sign(arg):  # sign(sign(x)) = sign(x)
            return arg
        return Call(node.fn, arg, node.param)
    if node.op == "left":  # keep-left: the right side is never evaluated
        return _rewrite(node.left)
    left, right = _rewrite(node.left), _rewrite(node.right)
    out = Bin(node.op, left, right)
    if node.op == "mul":
        factors = _factors(out)
        signs = [f for f in factors if _is_sign(f)]
        if len(signs) >= 2:  # sign(a)*sign(b) = sign(a*b)
            inner = signs[0].arg  # type: ignore[union-attr]
            for f in signs[1:]:
                inner = Bin("mul", inner, f.arg)  # type: ignore[union-attr]
            combined: Node = Call("sign", inner)
            rest = [f for f in factors if not _is_sign(f)]
            if rest:
                prod = rest[0]
                for f in rest[1:]:
                    prod = Bin("mul", prod, f)
                return Bin("mul", prod, combined)
            return combined
    return out


# --------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Step:
    kind: str  # leaf | const | decay | noise | unary | binary
    name: str  # leaf/operand name, function or binary op; "" for const
    value: float | None  # const value or function parameter
    children: tuple[int, ...]
    consume: tuple[bool, ...]  # child may be modified in place (this step is its last use)
    release: tuple[int, ...]  # values no longer needed after this step

    @property
    def scalar_only(self) -> bool:
        return self.kind in ("const", "decay")


def _g3_node() -> Node:
    return _rewrite(Leaf("g3"))


def _build_plan(root: Node, needs_g3: bool) -> tuple[tuple[_Step, ...], int, int]:
    """Post-order steps of the rewritten DAG; returns (steps, root index, g3 index)."""
    index: dict[Node, int] = {}
    raw: list[tuple[str, str, float | None, tuple[int, ...]]] = []

    def visit(node: Node) -> int:
        if node in index:
            return index[node]
        if isinstance(node, Leaf):
            if node.name in NOISE_STD:
                item = ("noise", node.name, None, ())
            elif node.name in _DIRECT_LEAVES:
                item = ("leaf", node.name, None, ())
            elif is_decay_name(node.name):
                item = ("decay", node.name, None, ())
            else:
                raise ValueError(f"operand {node.name!r} cannot be compiled")
        elif isinstance(node, Const):
            item = ("const", "", node.value, ())
        elif isinstance(node, Call):
            if node.fn not in _TENSOR_UNARY:
                raise ValueError(f"function {node.fn!r} cannot be compiled")
            item = ("unary", node.fn, node.param, (visit(node.arg),))
        else:
            item = ("binary", node.op, None, (visit(node.left), visit(node.right)))
        raw.append(item)
        index[node] = len(raw) - 1
        return index[node]

    g3 = visit(_g3_node()) if needs_g3 else -1
    root_i = visit(root)
    # last use of every value (the EMA update is g3's pseudo-consumer right after it)
    last: dict[int, int] = {}
    for i, (_, _, _, ch) in enumerate(raw):
        for c in ch:
            last[c] = i
    if g3 >= 0 and g3 not in last:
        last[g3] = g3
    # the root is the result: never released or overwritten in place, even when an
    # earlier step (e.g. g3 = g*g*g for gamma) also reads it, as in left(g, ...gamma...)
    last[root_i] = len(raw)
    steps = []
    for i, (kind, name, value, ch) in enumerate(raw):
        consume = tuple(last.get(c) == i and ch.count(c) == 1 for c in ch)
        release = tuple(sorted({c for c in ch if last.get(c) == i}))
        if i == g3 and last[g3] == g3:
            release = release + (g3,)
        steps.append(_Step(kind, name, value, ch, consume, release))
    return tuple(steps), root_i, g3


def _args(s: _Step, vals: list[_Val | None], live: dict[int, int]) -> list[_Val]:
    """The step's inputs; a child it is the last user of is handed over for in-place use,
    unless another live value shares its tensors (e.g. ``-x`` forwards ``x``'s tensors).
    ``live`` counts the entries of ``vals`` holding each tensor list (by ``id``)."""
    args = []
    for c, own in zip(s.children, s.consume):
        v = vals[c]
        assert v is not None
        if own and v.own and live[id(v.t)] > 1:
            own = False
        args.append(v if own else v.borrowed())
    return args


def _hold(live: dict[int, int], v: _Val) -> None:
    if v.t is not None:
        k = id(v.t)
        live[k] = live.get(k, 0) + 1


def _drop(live: dict[int, int], v: _Val | None) -> None:
    if v is not None and v.t is not None:
        k = id(v.t)
        n = live[k] - 1
        if n:
            live[k] = n
        else:
            del live[k]


def _check_betas(betas: Sequence[float]) -> tuple[float, float, float]:
    b = tuple(float(x) for x in betas)
    if len(b) != 3 or not all(0.0 <= x < 1.0 for x in b):
        raise ValueError(f"betas must be three numbers in [0, 1), got {tuple(betas)!r}")
    return b  # type: ignore[return-value]


class CompiledRule:
    """A rule compiled into foreach tensor code.  Build with :func:`compile_rule`.

    Stateless and picklable (by rule text): per-parameter state lives in the dict that
    :meth:`init_state` returns and the caller keeps.
    """

    def __init__(self, rule: Rule, betas: Sequence[float] = DEFAULT_BETAS) -> None:
        self.rule = rule
        self.betas = _check_betas(betas)
        self._reads = rule.reads
        self._averages = tuple(k for k in AVERAGES if k in self._reads)
        self._tree = _rewrite(rule.node)
        self._steps, self._root, self._g3 = _build_plan(self._tree, "gamma" in self._reads)

    def __reduce__(self):
        return (compile_rule, (self.rule, self.betas))

    def __repr__(self) -> str:
        return f"CompiledRule({self.rule.text!r})"

    # --- what the rule needs -----------------------------------------------------
    @property
    def reads(self) -> frozenset[str]:
        """Per-parameter inputs besides ``g``: a subset of ``{'m', 'v', 'gamma', 'w'}``."""
        return self._reads

    @property
    def uses_decay(self) -> bool:
        """True if a decay operand is read: ``total_steps`` is then required."""
        return self.rule.uses_decay

    @property
    def is_stochastic(self) -> bool:
        """True if the rule draws random numbers: a ``torch.Generator`` is then required."""
        return self.rule.is_stochastic

    @property
    def state_keys(self) -> tuple[str, ...]:
        """Names of the buffers :meth:`init_state` creates (``m``, ``v``, ``gamma``)."""
        return self._averages

    def describe(self) -> str:
        """The compiled plan, one step per line (for debugging and docs)."""
        lines = [f"rule: {self.rule.text}", f"rewritten: {Rule(self._tree).text}"]
        for i, s in enumerate(self._steps):
            arg = s.name if s.kind != "const" else repr(s.value)
            extra = f"({s.value})" if s.kind == "unary" and s.value is not None else ""
            lines.append(f"  %{i} = {s.kind} {arg}{extra} {list(s.children) or ''}".rstrip())
        return "\n".join(lines)

    def init_state(self, params: Sequence[Tensor]) -> dict[str, list[Tensor]]:
        """Zero buffers for exactly the moving averages the rule reads."""
        return {k: [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]
                for k in self._averages}

    # --- one step ---------------------------------------------------------------
    def check_total_steps(self, total_steps: int | None) -> None:
        """Raise a clear ``ValueError`` if the rule needs ``total_steps`` and has none."""
        if self.uses_decay and total_steps is None:
            names = sorted(n for n in self.rule.leaves if is_decay_name(n))
            raise ValueError(
                f"rule {self.rule.text!r} uses the decay operand(s) {', '.join(names)}, which "
                "need total_steps (the total number of training steps T); pass total_steps=...")
        if total_steps is not None and not (isinstance(total_steps, numbers.Integral)
                                           and total_steps > 0):
            raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")

    def _check(self, grads: Sequence[Tensor], params: Sequence[Tensor] | None,
               state: Mapping[str, list[Tensor]], total_steps: int | None) -> None:
        self.check_total_steps(total_steps)
        if any(g.is_complex() for g in grads):
            # the rule's operations are defined on real numbers: the caller decides how a
            # complex tensor maps to reals (RuleOptimizer: torch.view_as_real, as torch.optim)
            raise ValueError(f"rule {self.rule.text!r} got complex tensors; pass their "
                             "torch.view_as_real views")
        if "w" in self._reads and params is None:
            raise ValueError(f"rule {self.rule.text!r} reads the weights w; pass params")
        for k in self._averages:
            if k not in state or len(state[k]) != len(grads):
                raise ValueError(f"state[{k!r}] missing or of the wrong length; "
                                 "build it with init_state(params)")

    def _run(self, ctx: _Ctx, fuse_root: bool
             ) -> tuple[list[_Val | None], dict[int, int], _Step]:
        """Advance the averages and evaluate every step (all but the root if fused).
        Returns the values, how many of them hold each tensor list (see :func:`_args`)
        and the root step."""
        steps = self._steps
        vals: list[_Val | None] = [None] * len(steps)
        live: dict[int, int] = {}
        t = ctx.step
        ws = ctx.ws
        if self._g3 < 0:
            self._update_averages(ctx, None)
        stop = self._root if fuse_root else len(steps)
        for i in range(stop):
            s = steps[i]
            v = vals[i] = self._eval_step(ctx, s, vals, live, t)
            _hold(live, v)
            if i == self._g3:
                self._update_averages(ctx, v)
            if s.release:
                for r in s.release:
                    _drop(live, vals[r])
                    vals[r] = None
                # scratch buffers no live value references go back to the pool
                ws.collect(live)
        return vals, live, steps[self._root]

    def _update_averages(self, ctx: _Ctx, g3: _Val | None) -> None:
        # paper 4.2: m, v, gamma are EMAs of g, g^2, g^3; updated before they are read
        for k in self._averages:
            beta = _beta(k, ctx.betas)
            buf = ctx.state[k]
            power = AVERAGES[k][1]
            if power == 1:
                torch._foreach_lerp_(buf, ctx.grads, 1.0 - beta)
            elif power == 2:
                torch._foreach_mul_(buf, beta)
                torch._foreach_addcmul_(buf, ctx.grads, ctx.grads, value=1.0 - beta)
            else:
                assert g3 is not None and g3.t is not None
                torch._foreach_lerp_(buf, g3.t, 1.0 - beta)

    def _eval_step(self, ctx: _Ctx, s: _Step, vals: list[_Val | None], live: dict[int, int],
                   t: int) -> _Val:
        kind = s.kind
        if kind == "leaf":
            name = s.name
            if name == "g":
                return _Val(ctx.grads, 1.0)
            if name == "w":
                return _Val(list(ctx.params), 1.0)  # type: ignore[arg-type]
            beta = _beta(name, ctx.betas)
            bc = 1.0 - beta ** (t + 1)  # bias correction, t+1 EMA updates so far
            return _Val(ctx.state[name], 1.0 / bc, False, None, name == "v")
        if kind == "const":
            return _Val(None, float(s.value))  # type: ignore[arg-type]
        if kind == "decay":
            return _Val(None, decay_value(s.name, t, ctx.total))  # type: ignore[arg-type]
        if kind == "noise":
            return _Val(_randn(ctx), NOISE_STD[s.name](t), True)
        args = _args(s, vals, live)
        if kind == "unary":
            (x,) = args
            if x.t is None and s.name in _SCALAR_UNARY:
                return _Val(None, _SCALAR_UNARY[s.name](x.c, s.value))
            return _TENSOR_UNARY[s.name](ctx, x, s.value)
        x, y = args
        if x.t is None and y.t is None:
            return _Val(None, _SCALAR_BINARY[s.name](x.c, y.c))
        return _TENSOR_BINARY[s.name](ctx, x, y, s.children[0] == s.children[1])

    def _ctx(self, grads: list[Tensor], params: Sequence[Tensor] | None,
             state: Mapping[str, list[Tensor]], step: int, total_steps: int | None,
             generator: torch.Generator | None, betas: Sequence[float] | None,
             workspace: Workspace | None, noise: Sequence[list[Tensor]] | None) -> _Ctx:
        self._check(grads, params, state, total_steps)
        ws = (workspace if workspace is not None else Workspace()).session(grads)
        return _Ctx(grads, params, state, int(step), total_steps, generator,
                    self.betas if betas is None else _check_betas(betas), ws,
                    None if noise is None else deque(noise))

    def draw_noise(self, like: Sequence[Tensor], step: int,
                   generator: torch.Generator | None,
                   workspace: Workspace | None = None) -> list[list[Tensor]]:
        """This step's random numbers for tensors shaped like ``like``: one list (one
        tensor per element of ``like``) per draw, in the order :meth:`update` and
        :meth:`apply_update` draw them, consuming ``generator`` exactly as they would.

        Lets a caller update the tensors one at a time (``noise=[[d[i]] for d in
        draws]`` for tensor ``i``) and still get the numbers of one call on all of them
        (RuleOptimizer's ``foreach=False``).  Empty for a deterministic rule.  With a
        ``workspace`` the draws live in its buffers (tag ``"noise"``) until the next call.
        """
        like = list(like)
        ws = (workspace if workspace is not None else Workspace()).session(like, tag="noise")
        ctx = _Ctx(like, None, {}, int(step), None, generator, self.betas, ws)
        draws = []
        for s in self._steps:  # plan order is evaluation order
            if s.kind == "noise":
                draws.append(_randn(ctx))
            elif s.kind == "unary" and s.name == "drop" and float(s.value) != 0.0:  # type: ignore[arg-type]
                draws.append(_keep_mask(ctx, float(s.value)))  # type: ignore[arg-type]
        return draws

    def update(self, grads: Sequence[Tensor], params: Sequence[Tensor] | None,
               state: Mapping[str, list[Tensor]], step: int, total_steps: int | None = None,
               generator: torch.Generator | None = None,
               betas: Sequence[float] | None = None,
               workspace: Workspace | None = None,
               noise: Sequence[list[Tensor]] | None = None) -> list[Tensor]:
        """Advance the averages in ``state`` in place and return the update directions.

        The caller applies ``p -= lr * u``.  ``step`` is the 0-based count of steps taken
        before this one; ``betas`` overrides the compiled ones.  Works on tensors with
        any extra leading (stack) dimension.  The returned tensors never alias the
        inputs; with a ``workspace`` (reused across calls to avoid allocating
        temporaries) they are scratch buffers valid until the next call with it.
        ``noise``: the random numbers to use instead of drawing (see :meth:`draw_noise`;
        they are overwritten).
        """
        ctx = self._ctx(list(grads), params, state, step, total_steps, generator, betas,
                        workspace, noise)
        with torch.no_grad():
            vals, _, _ = self._run(ctx, fuse_root=False)
            out = _mat(ctx, vals[self._root])  # type: ignore[arg-type]
            if not out.own or not ctx.ws.owns(out.t):  # type: ignore[arg-type]
                out = _Val(_inplace(ctx, out.borrowed(), lambda t: None), 1.0, True)
        return out.t  # type: ignore[return-value]

    def apply_update(self, params: Sequence[Tensor], grads: Sequence[Tensor],
                     state: Mapping[str, list[Tensor]], step: int, lr: float,
                     total_steps: int | None = None,
                     generator: torch.Generator | None = None,
                     betas: Sequence[float] | None = None,
                     workspace: Workspace | None = None,
                     noise: Sequence[list[Tensor]] | None = None) -> None:
        """``p <- p - lr * rule`` in place, fusing the rule's last ``*`` or ``/`` into the
        parameter update (``addcmul_``/``addcdiv_``): one pass fewer than
        :meth:`update` followed by ``p.add_(u, alpha=-lr)``.  Pass the same
        ``workspace`` every step to reuse scratch buffers (as :class:`RuleOptimizer` does).
        ``noise`` as in :meth:`update`.
        """
        params = list(params)
        ctx = self._ctx(list(grads), params, state, step, total_steps, generator, betas,
                        workspace, noise)
        with torch.no_grad():
            vals, live, root = self._run(ctx, fuse_root=True)
            args = _args(root, vals, live)
            if root.kind == "binary" and root.name == "mul" and all(a.t is not None for a in args):
                x, y = args
                torch._foreach_addcmul_(params, x.t, y.t, value=-lr * x.c * y.c)
                return
            if (root.kind == "binary" and root.name == "div" and args[0].t is not None
                    and args[1].t is not None):
                x, y = args
                d = _denominator(ctx, y)
                torch._foreach_addcdiv_(params, x.t, d.t, value=-lr * x.c / d.c)
                return
            v = self._eval_step(ctx, root, vals, live, ctx.step)
            if v.t is None:
                torch._foreach_add_(params, -lr * v.c)
            else:
                torch._foreach_add_(params, v.t, alpha=-lr * v.c)


@lru_cache(maxsize=256)
def _compile_cached(rule: Rule, betas: tuple[float, float, float]) -> CompiledRule:
    return CompiledRule(rule, betas)


def compile_rule(rule: Rule | str, betas: Sequence[float] = DEFAULT_BETAS) -> CompiledRule:
    """Compile a rule (a :class:`~searchlab.dsl.Rule` or its text) into foreach code.

    ``betas`` are the default EMA decay rates of ``m``, ``v``, ``gamma`` (each call of
    :meth:`CompiledRule.update` may override them).  Raises ``ParseError`` for bad text.
    """
    return _compile_cached(as_rule(rule), _check_betas(betas))
