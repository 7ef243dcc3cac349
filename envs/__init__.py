"""Gymnasium environments of searchlab, installed as ``searchlab.envs`` (pyproject.toml
maps this folder there).  ``import searchlab`` registers ``searchlab/OptimizerSearch-v0``
(see :mod:`searchlab.envs.optimizer_search`)::

    import gymnasium, searchlab
    env = gymnasium.make("searchlab/OptimizerSearch-v0", task="rosenbrock", fidelity="smoke")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from searchlab import ENV_ID, register_envs

if TYPE_CHECKING:
    from .optimizer_search import OptimizerSearchEnv

__all__ = ["ENV_ID", "OptimizerSearchEnv", "register_envs"]


def __getattr__(name: str) -> Any:
    if name == "OptimizerSearchEnv":   # imports gymnasium's spaces, the DSL: on first use
        from .optimizer_search import OptimizerSearchEnv

        return OptimizerSearchEnv
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
