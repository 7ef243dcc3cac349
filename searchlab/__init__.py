"""searchlab: Neural Optimizer Search as a lab for comparing search strategies."""

from . import kernels as _kernels

_kernels.pin()  # before torch's first op: the same CPU kernels, so the same rewards, on every x86-64 machine

__version__ = "0.1.0"

#: the Gymnasium id of the search environment (registered by ``import searchlab``)
ENV_ID = "searchlab/OptimizerSearch-v0"


def register_envs() -> None:
    """Register ``searchlab/OptimizerSearch-v0`` with Gymnasium (by entry-point string:
    the environment's module is imported only by ``gymnasium.make``).  Idempotent."""
    try:
        import gymnasium
    except ImportError:  # pragma: no cover - gymnasium is a dependency
        return
    if ENV_ID not in gymnasium.registry:
        gymnasium.register(id=ENV_ID,
                           entry_point="searchlab.envs.optimizer_search:OptimizerSearchEnv")


register_envs()


def search(config=None, **overrides):  # type: ignore[no-untyped-def]
    """Run one search from a config and return its ``SearchResult`` (best rules, all
    results in order, counters).

    ``config``: a ``searchlab.config.Config``, a mapping of config keys, a list of
    ``key=value`` strings, a YAML file or ready config name (``"experiment/quick"``), or
    None for the defaults; keyword arguments are more overrides::

        import searchlab
        res = searchlab.search(strategy="gp", task="mnist1d", budget=50, seed=3)
        res.best_rule, res.best_reward
    """
    from .app import search as _search  # lazy: keeps `import searchlab` cheap

    return _search(config, **overrides)
