"""Update rules as torch optimizers (Bello et al. 2017, sections 3-5).

Public API::

    from searchlab.optim import compile_rule, RuleOptimizer
    opt = RuleOptimizer(model.parameters(), "exp(sign(g)*sign(m))*g", lr=0.1)

    from searchlab.optim import PowerSign, AddSign, linear_decay, cosine_decay, restart_decay
    from searchlab.optim import LinearCosineLR, NoisyLinearCosineLR
"""

from .compiler import CompiledRule, compile_rule
from .rule_optimizer import RuleOptimizer
from .schedules import LinearCosineLR, NoisyLinearCosineLR, linear_cosine_factor
from .workspace import Workspace
from .sign import (
    AddSign,
    CosineDecay,
    LinearDecay,
    PowerSign,
    RestartDecay,
    cosine_decay,
    linear_decay,
    restart_decay,
)

__all__ = [
    "AddSign", "CompiledRule", "CosineDecay", "LinearCosineLR", "LinearDecay",
    "NoisyLinearCosineLR", "PowerSign", "RestartDecay", "RuleOptimizer", "compile_rule",
    "Workspace", "cosine_decay", "linear_cosine_factor", "linear_decay", "restart_decay",
]
