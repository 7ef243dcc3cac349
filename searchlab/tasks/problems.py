"""``rosenbrock`` (paper section 6.1) and the problem ``ensemble`` of Wichrowska et al. 2017.

Each problem is a small deterministic objective ``f`` with a known minimum ``f*`` (exact
for the textbook functions, computed once by Newton's method in float64 for the convex
``log_sum_exp`` and ``logistic_regression``).  A run starts from a seeded random point
``x0`` in the problem's box and takes ``steps`` steps ``x <- x - lr * rule``; its score
is the fraction of ``ORDERS`` (6) orders of magnitude by which it shrank the gap::

    score = clip(log10((f(x0) - f*) / (f(x_T) - f*)) / 6, 0, 1)

so 0 means no progress (or worse), 1 means the gap shrank a million-fold, whatever the
problem's scale; a run whose value becomes NaN/inf scores 0.  The ensemble's score is the
mean over its problems, so rewards of all problem tasks are comparable values in [0, 1].
Problem instances (matrices, data) are fixed (instance seed 0); the evaluation seed
draws the starting points.

Problems (dimension): ``quadratic`` (10; a rotated bowl, eigenvalues 0.01..1),
``rosenbrock`` (2), ``beale`` (2), ``booth`` (2), ``matyas`` (2), ``styblinski_tang``
(2; global minimum -39.166*2, local minima score partially), ``log_sum_exp`` (5;
``log sum_j exp(a_j.x + b_j)`` over 20 centred ``a_j``), ``logistic_regression`` (10;
mean logistic loss on 100 fixed examples + 0.005*|w|^2 so the minimum is finite).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, ClassVar, Sequence

import numpy as np
import torch
from torch import Tensor

from .base import TASKS, ProblemTask, derive_seed

__all__ = ["ORDERS", "Problem", "ProblemEnsemble", "Rosenbrock", "build_problems",
           "normalised_score"]

#: orders of magnitude of gap reduction that score 1.0
ORDERS: float = 6.0
INSTANCE_SEED = 0
_ST_MIN = -39.16616570377142  # Styblinski-Tang minimum per coordinate, at x = -2.903534


@dataclass(frozen=True)
class Problem:
    """An objective over ``x [..., dim]`` (batched over leading dims) with minimum ``f_star``
    and a box ``[low, high]`` that starting points are drawn from.

    ``f`` is the plain definition (differentiable by autograd); ``value_and_grad(x)`` for
    ``x [K, dim]`` returns ``(f [K], grad [K, dim])`` in closed form, which is what the
    evaluator runs (several times faster than autograd on such tiny tensors)."""

    name: str
    dim: int
    f: Callable[[Tensor], Tensor]
    value_and_grad: Callable[[Tensor], tuple[Tensor, Tensor]]
    f_star: float
    low: tuple[float, ...]
    high: tuple[float, ...]
    #: optional minibatch/noisy ``(x [K, dim], generator) -> (f, grad)`` (meta-training)
    stochastic: Callable[[Tensor, torch.Generator], tuple[Tensor, Tensor]] | None = None
    #: optional ``x [K, dim] -> (upper [K], grad [K, dim])``: the exact gradient and a
    #: cheap bound ``upper >= f`` (including rounding; NaN/inf where ``f`` may be), for
    #: the steps on which the evaluator only asks whether a run is still below its
    #: divergence limit (``evaluation.protocol``): it then computes ``f`` only for runs
    #: whose bound is above the limit, so rewards are exactly those of ``value_and_grad``
    upper_and_grad: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None

    def initial_point(self, seed: int, stream: str = "val") -> Tensor:
        rng = np.random.default_rng(derive_seed(seed, f"{stream}:{self.name}"))
        x = rng.uniform(self.low, self.high)
        return torch.tensor(x, dtype=torch.float64)


def normalised_score(f0: Tensor, f_final: Tensor, f_star: float) -> Tensor:
    """The score of the module docstring (elementwise; non-finite ``f_final`` -> 0)."""
    gap0 = (f0 - f_star).clamp_min(1e-300)
    gap = (f_final - f_star).clamp_min(1e-300)
    score = (torch.log10(gap0) - torch.log10(gap)) / ORDERS
    score = score.clamp(0.0, 1.0)
    return torch.where(torch.isfinite(f_final), score, torch.zeros_like(score))


# --- textbook functions: plain definitions and closed-form gradients ---------------------
def _rosenbrock(x: Tensor) -> Tensor:
    a, b = x[..., 0], x[..., 1]
    return (1 - a) ** 2 + 100 * (b - a * a) ** 2


def _rosenbrock_vg(x: Tensor) -> tuple[Tensor, Tensor]:
    a, b = x[:, 0], x[:, 1]
    d = b - a * a
    one_a = 1 - a
    f = one_a * one_a + 100 * d * d
    return f, torch.stack((-2 * one_a - 400 * a * d, 200 * d), 1)


_BEALE_C = torch.tensor([1.5, 2.25, 2.625], dtype=torch.float64)
_BEALE_K = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)


def _beale(x: Tensor) -> Tensor:
    a, b = x[..., 0], x[..., 1]
    return (1.5 - a + a * b) ** 2 + (2.25 - a + a * b * b) ** 2 + (2.625 - a + a * b ** 3) ** 2


def _beale_vg(x: Tensor) -> tuple[Tensor, Tensor]:
    a, b = x[:, :1], x[:, 1:]
    b2 = b * b
    low = torch.cat((torch.ones_like(b), b, b2), 1)      # b^(k-1), k = 1, 2, 3
    bp = low * b                                         # b^k
    t = _BEALE_C - a + a * bp                            # the three residuals [K, 3]
    t2 = 2 * t
    return ((t * t).sum(1),
            torch.stack(((t2 * (bp - 1)).sum(1), (t2 * a * _BEALE_K * low).sum(1)), 1))


def _booth(x: Tensor) -> Tensor:
    a, b = x[..., 0], x[..., 1]
    return (a + 2 * b - 7) ** 2 + (2 * a + b - 5) ** 2


def _booth_vg(x: Tensor) -> tuple[Tensor, Tensor]:
    a, b = x[:, 0], x[:, 1]
    r1, r2 = a + 2 * b - 7, 2 * a + b - 5
    return r1 * r1 + r2 * r2, torch.stack((2 * r1 + 4 * r2, 4 * r1 + 2 * r2), 1)


def _matyas(x: Tensor) -> Tensor:
    a, b = x[..., 0], x[..., 1]
    return 0.26 * (a * a + b * b) - 0.48 * a * b


def _matyas_vg(x: Tensor) -> tuple[Tensor, Tensor]:
    a, b = x[:, 0], x[:, 1]
    return (0.26 * (a * a + b * b) - 0.48 * a * b,
            torch.stack((0.52 * a - 0.48 * b, 0.52 * b - 0.48 * a), 1))


def _styblinski_tang(x: Tensor) -> Tensor:
    return 0.5 * (x ** 4 - 16 * x ** 2 + 5 * x).sum(-1)


def _styblinski_tang_vg(x: Tensor) -> tuple[Tensor, Tensor]:
    x2 = x * x
    return 0.5 * (x2 * x2 - 16 * x2 + 5 * x).sum(1), 2 * x2 * x - 16 * x + 2.5


def _newton_min(f: Callable[[Tensor], Tensor], dim: int, iters: int = 100) -> float:
    """Minimum of a smooth strictly convex ``f`` by damped Newton steps (float64)."""
    x = torch.zeros(dim, dtype=torch.float64)
    fx = float(f(x))
    for _ in range(iters):
        g = torch.autograd.functional.jacobian(f, x)
        h = torch.autograd.functional.hessian(f, x)
        step = torch.linalg.solve(h + 1e-12 * torch.eye(dim, dtype=torch.float64), g)
        t = 1.0
        while t > 1e-10:
            cand = x - t * step
            fc = float(f(cand))
            if fc <= fx - 1e-4 * t * float(g @ step):
                break
            t *= 0.5
        else:
            break
        x, fx = cand, fc
        if float(g.norm()) < 1e-13:
            break
    return fx


@lru_cache(maxsize=None)
def build_problems() -> tuple[Problem, ...]:
    """The ensemble's problems (fixed instances, built once per process)."""
    rng = np.random.default_rng(INSTANCE_SEED)
    dt = torch.float64
    # quadratic bowl: 0.5 * sum_i lam_i * (q_i . (x - c))^2
    q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    lam = np.logspace(-2, 0, 10)
    Q, L, C = torch.tensor(q, dtype=dt), torch.tensor(lam, dtype=dt), torch.tensor(rng.normal(size=10), dtype=dt)
    QT = Q.T.contiguous()

    def quadratic(x: Tensor) -> Tensor:
        z = (x - C) @ Q
        return 0.5 * (L * z * z).sum(-1)

    def quadratic_vg(x: Tensor) -> tuple[Tensor, Tensor]:
        z = (x - C) @ Q
        lz = L * z
        return 0.5 * (lz * z).sum(1), lz @ QT

    # log-sum-exp: log sum_j exp(a_j . x + b_j), a_j centred so that the minimum is finite
    a = rng.normal(size=(20, 5))
    a -= a.mean(0, keepdims=True)
    A, B = torch.tensor(a, dtype=dt), torch.tensor(rng.normal(size=20), dtype=dt)
    AT = A.T.contiguous()

    def log_sum_exp(x: Tensor) -> Tensor:
        return torch.logsumexp(x @ A.T + B, dim=-1)

    def log_sum_exp_vg(x: Tensor) -> tuple[Tensor, Tensor]:
        s = torch.addmm(B, x, AT)
        f = torch.logsumexp(s, dim=1)
        return f, torch.exp(s - f.unsqueeze(1)) @ A

    # logistic regression on 100 fixed examples, labels +-1 from a noisy linear model
    xs = rng.normal(size=(100, 10))
    w_true = rng.normal(size=10)
    ys = np.sign(xs @ w_true + 0.5 * rng.normal(size=100))
    X, Y = torch.tensor(xs, dtype=dt), torch.tensor(ys, dtype=dt)
    XYT = (X * Y.unsqueeze(1)).T.contiguous()           # [10, 100]: columns y_i * x_i
    XY = XYT.T.contiguous() / len(ys)
    NXYT = -XYT      # w @ NXYT == -(w @ XYT) bit for bit (rounding is symmetric in sign)
    LOG2 = float(np.log(2.0))

    def logistic_regression(w: Tensor) -> Tensor:
        margins = (w @ X.T) * Y
        return torch.nn.functional.softplus(-margins).mean(-1) + 0.005 * (w * w).sum(-1)

    def logistic_regression_grad(w: Tensor, neg_margins: Tensor) -> Tensor:
        return torch.addmm(0.01 * w, torch.sigmoid(neg_margins), XY, alpha=-1.0)

    def logistic_regression_vg(w: Tensor) -> tuple[Tensor, Tensor]:
        neg_margins = w @ NXYT                           # [K, 100]
        f = torch.nn.functional.softplus(neg_margins).mean(1) + 0.005 * (w * w).sum(1)
        return f, logistic_regression_grad(w, neg_margins)

    def logistic_regression_upper(w: Tensor) -> tuple[Tensor, Tensor]:
        # softplus(z) <= max(z, 0) + log 2; the factor 1 + 1e-6 covers rounding (every
        # term is >= 0).  softplus in float64 is most of this problem's cost per step.
        neg_margins = w @ NXYT
        upper = neg_margins.clamp_min(0.0).mean(1) + 0.005 * (w * w).sum(1) + LOG2
        return upper * (1.0 + 1e-6), logistic_regression_grad(w, neg_margins)

    box2 = lambda lo, hi: ((lo, lo), (hi, hi))  # noqa: E731
    return (
        Problem("quadratic", 10, quadratic, quadratic_vg, 0.0, (-3.0,) * 10, (3.0,) * 10),
        Problem("rosenbrock", 2, _rosenbrock, _rosenbrock_vg, 0.0, (-2.0, -1.0), (2.0, 3.0)),
        Problem("beale", 2, _beale, _beale_vg, 0.0, *box2(-1.5, 1.5)),
        Problem("booth", 2, _booth, _booth_vg, 0.0, *box2(-5.0, 5.0)),
        Problem("matyas", 2, _matyas, _matyas_vg, 0.0, *box2(-5.0, 5.0)),
        Problem("styblinski_tang", 2, _styblinski_tang, _styblinski_tang_vg, 2 * _ST_MIN,
                *box2(-5.0, 5.0)),
        Problem("log_sum_exp", 5, log_sum_exp, log_sum_exp_vg, _newton_min(log_sum_exp, 5),
                (-3.0,) * 5, (3.0,) * 5),
        Problem("logistic_regression", 10, logistic_regression, logistic_regression_vg,
                _newton_min(logistic_regression, 10), (-3.0,) * 10, (3.0,) * 10,
                upper_and_grad=logistic_regression_upper),
    )


class _Problems(ProblemTask):
    names: ClassVar[tuple[str, ...]] = ()

    def problems(self) -> tuple[Problem, ...]:
        by_name = {p.name: p for p in build_problems()}
        if any(n not in by_name for n in self.names):
            by_name = all_problems()
        return tuple(by_name[n] for n in self.names)

    def initial_points(self, seed: int, stream: str = "val") -> list[Tensor]:
        """One starting point per problem (``stream="test"`` for held-out starts)."""
        return [p.initial_point(seed, stream) for p in self.problems()]


@TASKS.register("rosenbrock")
class Rosenbrock(_Problems):
    """The 2-D Rosenbrock function (paper 6.1), scored as in the module docstring."""

    name: ClassVar[str] = "rosenbrock"
    names: ClassVar[tuple[str, ...]] = ("rosenbrock",)


@TASKS.register("ensemble")
class ProblemEnsemble(_Problems):
    """The problem ensemble (Wichrowska et al. 2017); reward = mean normalised score."""

    name: ClassVar[str] = "ensemble"
    names: ClassVar[tuple[str, ...]] = (
        "quadratic", "rosenbrock", "beale", "booth", "matyas", "styblinski_tang",
        "log_sum_exp", "logistic_regression")

    def __init__(self, problems: Sequence[str] | None = None, suite: str = "base") -> None:
        if suite not in ("base", "extended"):
            raise ValueError(f"unknown suite {suite!r}; valid: base, extended")
        if suite == "extended" and problems is None:
            self.names = EXTENDED_NAMES  # type: ignore[misc]
        if problems is not None:
            known = {p.name for p in build_problems()}
            if any(p not in known for p in problems):
                known = set(all_problems())
            bad = [p for p in problems if p not in known]
            if bad:
                raise ValueError(f"unknown problem(s) {bad}; known: {sorted(known)}")
            self.names = tuple(problems)  # type: ignore[misc]

    def result_options(self):  # type: ignore[override]
        default = ProblemEnsemble.names
        if self.names == default:
            return {}
        if self.names == EXTENDED_NAMES:
            return {"suite": "extended"}
        return {"problems": "/".join(self.names)}


# --------------------------------------------------------------------------------------
# The rest of the meta-training ensemble of Wichrowska et al. 2017 (section 4): more
# textbook functions, problems where optimization is slow or gradients are sparse, and
# the transformations of problems (rescaled parameters, sparse gradients, a monotonic
# loss transform, multi-task sums).  They live in their own suite, so the ``ensemble``
# task (its eight problems, instances and scores) is exactly what it was; ask for them
# with ``ensemble`` + ``suite="extended"`` or by name in ``problems=``.
#
# ``Problem.stochastic`` (optional) is a minibatch/noisy version ``(x [K, dim], generator)
# -> (f [K], grad [K, dim])`` of ``value_and_grad`` for meta-training; the reward protocol
# always runs the deterministic ``value_and_grad`` (so rewards stay reproducible).
# --------------------------------------------------------------------------------------
_BRANIN = dict(a=1.0, b=5.1 / (4 * np.pi ** 2), c=5 / np.pi, r=6.0, s=10.0, t=1 / (8 * np.pi))
#: Branin's value at its three global minima (-pi, 12.275), (pi, 2.275), (9.42478, 2.475)
BRANIN_MIN = 0.39788735772973816


def _ackley(x: Tensor) -> Tensor:
    d = x.shape[-1]
    s = torch.sqrt((x * x).sum(-1) / d)
    return (-20 * torch.exp(-0.2 * s) - torch.exp(torch.cos(2 * np.pi * x).sum(-1) / d)
            + np.e + 20)


def _ackley_vg(x: Tensor) -> tuple[Tensor, Tensor]:
    d = x.shape[-1]
    s = torch.sqrt((x * x).sum(1) / d)
    e1 = torch.exp(-0.2 * s)
    e2 = torch.exp(torch.cos(2 * np.pi * x).sum(1) / d)
    f = -20 * e1 - e2 + np.e + 20
    # d/dx of -20 exp(-0.2 s) = 4 e1 x / (d s); at s = 0 the gradient is taken as 0
    coef = torch.where(s > 0, 4 * e1 / (d * s.clamp_min(1e-300)), torch.zeros_like(s))
    g = coef.unsqueeze(1) * x + (2 * np.pi / d) * e2.unsqueeze(1) * torch.sin(2 * np.pi * x)
    return f, g


def _branin(x: Tensor) -> Tensor:
    k = _BRANIN
    a, b = x[..., 0], x[..., 1]
    return (k["a"] * (b - k["b"] * a * a + k["c"] * a - k["r"]) ** 2
            + k["s"] * (1 - k["t"]) * torch.cos(a) + k["s"])


def _branin_vg(x: Tensor) -> tuple[Tensor, Tensor]:
    k = _BRANIN
    a, b = x[:, 0], x[:, 1]
    q = b - k["b"] * a * a + k["c"] * a - k["r"]
    f = k["a"] * q * q + k["s"] * (1 - k["t"]) * torch.cos(a) + k["s"]
    ga = 2 * k["a"] * q * (-2 * k["b"] * a + k["c"]) - k["s"] * (1 - k["t"]) * torch.sin(a)
    return f, torch.stack((ga, 2 * k["a"] * q), 1)


_MICHALEWICZ_M = 10


def _michalewicz(x: Tensor) -> Tensor:
    i = torch.arange(1, x.shape[-1] + 1, dtype=x.dtype)
    return -(torch.sin(x) * torch.sin(i * x * x / np.pi) ** (2 * _MICHALEWICZ_M)).sum(-1)


def _michalewicz_vg(x: Tensor) -> tuple[Tensor, Tensor]:
    m2 = 2 * _MICHALEWICZ_M
    i = torch.arange(1, x.shape[-1] + 1, dtype=x.dtype)
    arg = i * x * x / np.pi
    s = torch.sin(arg)
    sm1 = s ** (m2 - 1)
    f = -(torch.sin(x) * sm1 * s).sum(1)
    g = -(torch.cos(x) * sm1 * s + torch.sin(x) * m2 * sm1 * torch.cos(arg) * (2 * i * x / np.pi))
    return f, g


def _michalewicz_min() -> float:
    """2-D minimum (about -1.8013 at (2.2029, pi/2)) refined by 1-D Newton steps on x1
    (x2 = pi/2 gives exactly -1)."""
    x = torch.tensor([2.20290552, np.pi / 2], dtype=torch.float64)
    for _ in range(50):
        xx = x.clone().requires_grad_(True)
        g = torch.autograd.grad(_michalewicz(xx), xx, create_graph=True)[0]
        h = torch.autograd.grad(g[0], xx)[0][0]
        x = x - torch.tensor([float(g[0].detach() / h), 0.0], dtype=torch.float64)
    return float(_michalewicz(x))


def _oscillating_valley(x: Tensor) -> Tensor:
    """A valley along ``x[i+1] = sin(x[i])``, descending forever as ``x[0]`` grows:
    ``10 * sum_i (x[i+1] - sin x[i])^2 + softplus(-x[0])``, infimum 0 at infinity."""
    r = x[..., 1:] - torch.sin(x[..., :-1])
    return 10 * (r * r).sum(-1) + torch.nn.functional.softplus(-x[..., 0])


def _oscillating_valley_vg(x: Tensor) -> tuple[Tensor, Tensor]:
    r = x[:, 1:] - torch.sin(x[:, :-1])
    f = 10 * (r * r).sum(1) + torch.nn.functional.softplus(-x[:, 0])
    g = torch.zeros_like(x)
    g[:, 1:] += 20 * r
    g[:, :-1] -= 20 * r * torch.cos(x[:, :-1])
    g[:, 0] -= torch.sigmoid(-x[:, 0])
    return f, g


def _min_max(x: Tensor) -> Tensor:
    """``max(x) - min(x)``: only two gradient entries are non-zero, and they jump."""
    return x.amax(-1) - x.amin(-1)


def _min_max_vg(x: Tensor) -> tuple[Tensor, Tensor]:
    hi, ih = x.max(1)
    lo, il = x.min(1)
    g = torch.zeros_like(x)
    rows = torch.arange(x.shape[0])
    g[rows, ih] += 1.0
    g[rows, il] -= 1.0
    return hi - lo, g


def rescaled(p: Problem, scales: Sequence[float], name: str | None = None) -> Problem:
    """``p`` after the change of variables ``x = scales * z`` (parameters of very
    different scale; the same minimum value)."""
    s = torch.tensor(list(scales), dtype=torch.float64)

    def vg(z: Tensor) -> tuple[Tensor, Tensor]:
        f, g = p.value_and_grad(z * s)
        return f, g * s

    stoch = None
    if p.stochastic is not None:
        def stoch(z: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
            f, g = p.stochastic(z * s, gen)  # type: ignore[misc]
            return f, g * s
    lo = tuple(min(a / c, b / c) for a, b, c in zip(p.low, p.high, s.tolist()))
    hi = tuple(max(a / c, b / c) for a, b, c in zip(p.low, p.high, s.tolist()))
    return Problem(name or f"{p.name}_rescaled", p.dim, lambda z: p.f(z * s), vg, p.f_star,
                   lo, hi, stochastic=stoch)


def power_loss(p: Problem, power: float, name: str | None = None) -> Problem:
    """The monotonic loss transform ``(f - f*)^power`` (another steepness profile; the
    same minimizers, minimum 0)."""
    def f(x: Tensor) -> Tensor:
        return (p.f(x) - p.f_star).clamp_min(0) ** power

    def vg(x: Tensor) -> tuple[Tensor, Tensor]:
        v, g = p.value_and_grad(x)
        gap = (v - p.f_star).clamp_min(1e-300)
        return gap ** power, (power * gap ** (power - 1)).unsqueeze(1) * g

    return Problem(name or f"{p.name}_pow{power:g}", p.dim, f, vg, 0.0, p.low, p.high)


def sparse_gradients(p: Problem, fraction: float, name: str | None = None) -> Problem:
    """``p`` whose stochastic gradient has each entry zeroed with probability
    ``fraction`` at every step (the deterministic gradient is ``p``'s)."""
    def stoch(x: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        f, g = (p.stochastic(x, gen) if p.stochastic is not None else p.value_and_grad(x))
        keep = (torch.rand(g.shape, generator=gen, dtype=g.dtype) >= fraction).to(g.dtype)
        return f, g * keep

    return Problem(name or f"{p.name}_sparse", p.dim, p.f, p.value_and_grad, p.f_star,
                   p.low, p.high, stochastic=stoch, upper_and_grad=p.upper_and_grad)


def summed(parts: Sequence[Problem], name: str | None = None) -> Problem:
    """The multi-task sum: concatenated parameters, summed losses (minimum: the sum)."""
    parts = tuple(parts)
    cuts = np.cumsum([0] + [q.dim for q in parts]).tolist()

    def f(x: Tensor) -> Tensor:
        return sum(q.f(x[..., a:b]) for q, a, b in zip(parts, cuts, cuts[1:]))  # type: ignore[return-value]

    def vg(x: Tensor) -> tuple[Tensor, Tensor]:
        out = [q.value_and_grad(x[:, a:b]) for q, a, b in zip(parts, cuts, cuts[1:])]
        return sum(o[0] for o in out), torch.cat([o[1] for o in out], 1)  # type: ignore[return-value]

    return Problem(name or "+".join(q.name for q in parts), cuts[-1], f, vg,
                   float(sum(q.f_star for q in parts)),
                   sum((q.low for q in parts), ()), sum((q.high for q in parts), ()))


def minibatch_quadratic(dim: int, examples: int, batch: int, rng: np.random.Generator,
                        name: str = "minibatch_quadratic") -> Problem:
    """``mean_i (a_i . x)^2`` over ``examples`` random vectors ``a_i`` (minimum 0 at 0);
    the stochastic version averages a random minibatch of ``batch`` of them."""
    A = torch.tensor(rng.normal(size=(examples, dim)) / np.sqrt(dim), dtype=torch.float64)

    def f(x: Tensor) -> Tensor:
        z = x @ A.T
        return (z * z).mean(-1)

    def vg(x: Tensor) -> tuple[Tensor, Tensor]:
        z = x @ A.T
        return (z * z).mean(1), (2.0 / examples) * z @ A

    def stoch(x: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        idx = torch.randint(0, examples, (batch,), generator=gen)
        a = A[idx]
        z = x @ a.T
        return (z * z).mean(1), (2.0 / batch) * z @ a

    return Problem(name, dim, f, vg, 0.0, (-3.0,) * dim, (3.0,) * dim, stochastic=stoch)


@lru_cache(maxsize=None)
def build_extended_problems() -> tuple[Problem, ...]:
    """The problems the ``extended`` suite adds to the ensemble's eight (fixed instances,
    their own instance seed stream: the original eight are untouched)."""
    rng = np.random.default_rng(derive_seed(INSTANCE_SEED, "extended-problems"))
    base = {p.name: p for p in build_problems()}
    box2 = lambda lo, hi: ((lo, lo), (hi, hi))  # noqa: E731
    ackley = Problem("ackley", 2, _ackley, _ackley_vg, 0.0, *box2(-3.0, 3.0))
    branin = Problem("branin", 2, _branin, _branin_vg, BRANIN_MIN, (-5.0, 0.0), (10.0, 15.0))
    michalewicz = Problem("michalewicz", 2, _michalewicz, _michalewicz_vg, _michalewicz_min(),
                          *box2(0.5, 3.0))
    valley = Problem("oscillating_valley", 10, _oscillating_valley, _oscillating_valley_vg,
                     0.0, (-2.0,) * 10, (2.0,) * 10)
    min_max = Problem("min_max", 10, _min_max, _min_max_vg, 0.0, (-3.0,) * 10, (3.0,) * 10)
    mbq = minibatch_quadratic(10, 100, 10, rng)
    scales = np.exp(rng.uniform(np.log(0.1), np.log(10.0), size=10)).tolist()
    return (
        ackley, branin, michalewicz, valley, min_max, mbq,
        rescaled(base["quadratic"], scales, "quadratic_rescaled"),
        rescaled(base["rosenbrock"], (0.1, 10.0), "rosenbrock_rescaled"),
        sparse_gradients(base["logistic_regression"], 0.8, "logistic_regression_sparse"),
        power_loss(base["booth"], 0.5, "booth_sqrt"),
        summed((base["beale"], branin, base["log_sum_exp"]), "multitask"),
    )


#: the problems of ``ensemble`` with ``suite="extended"``: the eight and the additions
EXTENDED_NAMES: tuple[str, ...] = (
    "quadratic", "rosenbrock", "beale", "booth", "matyas", "styblinski_tang", "log_sum_exp",
    "logistic_regression", "ackley", "branin", "michalewicz", "oscillating_valley",
    "min_max", "minibatch_quadratic", "quadratic_rescaled", "rosenbrock_rescaled",
    "logistic_regression_sparse", "booth_sqrt", "multitask")


def all_problems() -> dict[str, Problem]:
    """Every named problem instance: the ensemble's eight and the extended suite's."""
    return {p.name: p for p in build_problems() + build_extended_problems()}


__all__ += ["BRANIN_MIN", "EXTENDED_NAMES", "all_problems", "build_extended_problems",
            "minibatch_quadratic", "power_loss", "rescaled", "sparse_gradients", "summed"]
