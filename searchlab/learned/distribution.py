"""The meta-training distribution: random problem runs from the problem ensemble
(Wichrowska et al. 2017, section 4 and appendix).

A *run* is one problem (or a multi-task sum of several, each its own parameter tensor, so
the hierarchical RNN's tensor level has something to do), ``copies`` random starting
points drawn uniformly from the problems' boxes, and one initial step-size scale per copy
drawn log-uniformly from ``lr_range`` (the model must adapt its step length: it never
sees the absolute value).  A part is rescaled by a random change of variables with
probability ``rescale_prob``.  Minibatch and sparse-gradient problems give stochastic
gradients (``Problem.stochastic``).  Every draw comes from one ``torch.Generator``, so a
checkpointed meta-training continues with the same runs.

Suites: ``base`` (the eight problems of the ``ensemble`` task: fixed instances, random
starts) and ``extended`` (the ``ensemble`` task's ``suite="extended"``: nineteen).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from ..tasks.problems import EXTENDED_NAMES, Problem, ProblemEnsemble, all_problems, rescaled

__all__ = ["ProblemRun", "RunSampler", "suite_names"]


def suite_names(suite: str) -> tuple[str, ...]:
    if suite == "base":
        return ProblemEnsemble.names
    if suite == "extended":
        return EXTENDED_NAMES
    raise ValueError(f"unknown suite {suite!r}; valid: base, extended")


@dataclass
class ProblemRun:
    """One meta-training run: its parts (one tensor each), starts and step scales."""

    spec: dict[str, Any]            # plain data that rebuilds the parts (checkpoints)
    parts: tuple[Problem, ...]
    x0: list[Tensor]                # one [B, dim] tensor per part
    lrs: Tensor                     # [B]

    @property
    def f_star(self) -> float:
        return float(sum(p.f_star for p in self.parts))

    def value_and_grad(self, xs: Sequence[Tensor], gen: torch.Generator | None,
                       stochastic: bool = True) -> tuple[Tensor, list[Tensor]]:
        """Summed loss ``[B]`` and one gradient per part (differentiable in ``xs``)."""
        total: Tensor | None = None
        grads = []
        for p, x in zip(self.parts, xs):
            if stochastic and p.stochastic is not None and gen is not None:
                f, g = p.stochastic(x, gen)
            else:
                f, g = p.value_and_grad(x)
            total = f if total is None else total + f
            grads.append(g)
        assert total is not None
        return total, grads

    def value(self, xs: Sequence[Tensor]) -> Tensor:
        return sum(p.value_and_grad(x)[0] for p, x in zip(self.parts, xs))  # type: ignore[return-value]


def parts_of(spec: dict[str, Any]) -> tuple[Problem, ...]:
    by_name = all_problems()
    out = []
    for name, scales in zip(spec["names"], spec["scales"]):
        p = by_name[name]
        out.append(rescaled(p, scales) if scales is not None else p)
    return tuple(out)


class RunSampler:
    """Draws :class:`ProblemRun` s (module docstring)."""

    def __init__(self, suite: str = "base", copies: int = 4,
                 lr_range: tuple[float, float] = (1e-4, 1.0), multitask_prob: float = 0.2,
                 rescale_prob: float = 0.2, max_parts: int = 3) -> None:
        self.names = suite_names(suite)
        self.copies = int(copies)
        self.lr_range = (float(lr_range[0]), float(lr_range[1]))
        self.multitask_prob = float(multitask_prob)
        self.rescale_prob = float(rescale_prob)
        self.max_parts = int(max_parts)

    def _uniform(self, gen: torch.Generator, *shape: int) -> Tensor:
        return torch.rand(shape, generator=gen, dtype=torch.float64)

    def sample(self, gen: torch.Generator) -> ProblemRun:
        n_parts = 1
        if float(self._uniform(gen, 1)) < self.multitask_prob:
            n_parts = int(torch.randint(2, self.max_parts + 1, (1,), generator=gen))
        idx = torch.randint(0, len(self.names), (n_parts,), generator=gen).tolist()
        names = [self.names[i] for i in idx]
        by_name = all_problems()
        scales: list[list[float] | None] = []
        for n in names:
            if float(self._uniform(gen, 1)) < self.rescale_prob:
                d = by_name[n].dim
                s = torch.exp(math.log(0.1) + math.log(100.0) * self._uniform(gen, d))
                scales.append([float(v) for v in s])
            else:
                scales.append(None)
        spec = {"names": names, "scales": scales}
        parts = parts_of(spec)
        x0 = []
        for p in parts:
            lo = torch.tensor(p.low, dtype=torch.float64)
            hi = torch.tensor(p.high, dtype=torch.float64)
            x0.append(lo + (hi - lo) * self._uniform(gen, self.copies, p.dim))
        a, b = math.log(self.lr_range[0]), math.log(self.lr_range[1])
        lrs = torch.exp(a + (b - a) * self._uniform(gen, self.copies))
        return ProblemRun(spec, parts, x0, lrs)

    @staticmethod
    def rebuild(spec: dict[str, Any], x0: Sequence[Tensor], lrs: Tensor) -> ProblemRun:
        return ProblemRun(spec, parts_of(spec), list(x0), lrs)
