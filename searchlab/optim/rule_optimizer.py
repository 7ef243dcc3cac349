"""Any update rule as a ``torch.optim.Optimizer`` (paper section 3.1)."""

from __future__ import annotations

import warnings
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from searchlab.dsl import Rule, as_rule
from searchlab.dsl.primitives import DEFAULT_BETAS

from ._common import Bucket, BucketedOptimizer
from .compiler import CompiledRule, _check_betas, compile_rule

__all__ = ["RuleOptimizer"]

#: default seed of the noise generator when a stochastic rule gets neither generator nor seed
DEFAULT_NOISE_SEED = 0


class RuleOptimizer(BucketedOptimizer):
    """``w <- w - lr * rule`` for any rule of the NOS language.

    Args:
        params: parameters (or ``(name, parameter)`` pairs) or param-group dicts; each
            group may set its own ``lr``, ``betas``, ``total_steps`` and flags.
        rule: a :class:`~searchlab.dsl.Rule` or its text, e.g. ``"exp(sign(g)*sign(m))*g"``.
        lr: learning rate, a number or a 1-element Tensor (works with any
            ``torch.optim.lr_scheduler``).
        total_steps: ``T`` of the decay operands (``ld``, ``cd``, ``rd_n`` ...); required
            when the rule reads one (a clear ``ValueError`` otherwise).
        betas: EMA decay rates of ``m``, ``v``, ``gamma`` (paper 4.2: 0.9, 0.999, 0.999).
        generator: ``torch.Generator`` for the noise operands and ``drop``.
        seed: seed of a private generator (instead of ``generator``).  A stochastic rule
            with neither gets a private generator seeded with ``DEFAULT_NOISE_SEED`` (0):
            the global RNG is never read.
        maximize, foreach, differentiable, capturable: torch's flags, with torch's
            meaning; ``differentiable`` and ``capturable`` must stay False
            (:mod:`searchlab.optim._common` says why and what ``foreach=False`` does).

    Complex parameters are optimized as ``torch.view_as_real(p)``, as by torch's
    optimizers; every rule has that meaning (its operations are elementwise on reals).

    State per parameter: ``step`` (an int) and a buffer for each moving average the rule
    reads, nothing else (PowerSign's rule: one buffer ``m``).  ``state_dict()`` also holds
    the noise generator's state, so a saved-and-loaded optimizer continues bit-identically;
    so do ``copy.deepcopy``, pickling and ``torch.save(opt)``.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]],
                 rule: Rule | str, lr: float | Tensor = 1e-3, total_steps: int | None = None,
                 betas: Sequence[float] = DEFAULT_BETAS,
                 generator: torch.Generator | None = None, seed: int | None = None, *,
                 maximize: bool = False, foreach: bool | None = None,
                 differentiable: bool = False, capturable: bool = False) -> None:
        self.rule: Rule = as_rule(rule)
        self.compiled: CompiledRule = compile_rule(self.rule)
        if generator is not None and seed is not None:
            raise ValueError("pass either generator or seed, not both")
        if generator is None and (seed is not None or self.compiled.is_stochastic):
            generator = torch.Generator().manual_seed(
                DEFAULT_NOISE_SEED if seed is None else int(seed))
        self.generator = generator
        defaults = dict(lr=lr, betas=_check_betas(betas), total_steps=total_steps)
        super().__init__(params, defaults, foreach=foreach, maximize=maximize,
                         differentiable=differentiable, capturable=capturable)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group["betas"] = _check_betas(group["betas"])
        self.compiled.check_total_steps(group["total_steps"])

    def _state_keys(self) -> tuple[str, ...]:
        return self.compiled.state_keys

    def _init_state(self, p: Tensor) -> dict[str, Any]:
        st: dict[str, Any] = {"step": 0}
        for k in self.compiled.state_keys:
            st[k] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return st

    def _update(self, bucket: Bucket, group: dict[str, Any], lr: float) -> None:
        total = group["total_steps"]
        if (total is not None and bucket.step >= total and self.compiled.uses_decay
                and not getattr(self, "_warned_past_total", False)):
            self._warned_past_total = True   # once per optimizer
            warnings.warn(
                f"RuleOptimizer: step {bucket.step + 1} is past total_steps={total}; the "
                f"decay operands of {self.rule.text!r} stay at their final value (ld and cd "
                "are 0 there, so updates may be 0): pass the real number of steps as "
                "total_steps", RuntimeWarning, stacklevel=5)

        def apply(b: Bucket, noise: list[list[Tensor]] | None) -> None:
            self.compiled.apply_update(b.params, b.grads, b.buffers, b.step, lr,
                                       group["total_steps"], self.generator, group["betas"],
                                       self.workspace, noise)

        if group["foreach"] is not False:
            apply(bucket, None)
            return
        # the for-loop implementation: the noise of the whole bucket is drawn first, as
        # the foreach pass draws it, so both give the same numbers to the same elements
        draws = self.compiled.draw_noise(bucket.grads, bucket.step, self.generator,
                                         self.workspace) if self.compiled.is_stochastic else []
        for i, one in enumerate(bucket.split()):
            apply(one, [[d[i]] for d in draws] if draws else None)

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["rule"] = self.rule.text
        if self.generator is not None:
            sd["generator_state"] = self.generator.get_state()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        rule = state_dict.pop("rule", None)
        if rule is not None and as_rule(rule).key != self.rule.key:
            raise ValueError(f"state_dict is of rule {rule!r}, this optimizer runs "
                             f"{self.rule.text!r}")
        gen_state = state_dict.pop("generator_state", None)
        super().load_state_dict(state_dict)
        if gen_state is not None:
            if self.generator is None:
                self.generator = torch.Generator()
            self.generator.set_state(gen_state.clone())

    def __getstate__(self) -> dict[str, Any]:  # pickling keeps the rule and the RNG
        st = super().__getstate__()
        st["rule"] = self.rule.text
        st["generator_state"] = None if self.generator is None else self.generator.get_state()
        return st

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        rule = state.pop("rule", None)
        gen_state = state.pop("generator_state", None)
        super().__setstate__(state)
        if rule is not None:  # unpickling (load_state_dict passes no rule)
            self.rule = as_rule(rule)
            self.compiled = compile_rule(self.rule)
            self.generator = None
            if gen_state is not None:
                self.generator = torch.Generator()
                self.generator.set_state(gen_state)

    def __repr__(self) -> str:
        return f"RuleOptimizer({self.rule.text!r}, lr={self.defaults['lr']})"
