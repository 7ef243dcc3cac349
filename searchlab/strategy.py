"""The Strategy interface: ``ask(n)`` rules, ``tell(results)``.

Strategies never see MLflow, executors or caches: the runner asks them for rules, has
them evaluated (through the cache) and tells them the results in the order asked.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

from .registry import Registry

if TYPE_CHECKING:
    from .dsl import Rule, Space
    from .result import Result


class Strategy(abc.ABC):
    """Base class of search strategies.

    Subclasses get ``space`` (the search space), ``seed`` (explicit; never read global RNG
    state) and their own keyword options.  ``ask`` may return rules already evaluated:
    the runner serves them from the cache without spending budget.
    """

    #: the registered name (set by ``STRATEGIES.register``; used in run names and logs)
    name: ClassVar[str] = ""

    def __init__(self, space: "Space", seed: int, **options: Any) -> None:
        self.space = space
        self.seed = seed

    @abc.abstractmethod
    def ask(self, n: int) -> list["Rule"]:
        """Propose ``n`` rules (inside ``self.space``)."""

    @abc.abstractmethod
    def tell(self, results: Sequence["Result"]) -> None:
        """Receive the results of the last ``ask``, in the same order."""

    #: Strategies that drive their own loop (e.g. SB3 agents) override ``run``; it gets an
    #: ``evaluate(rules) -> results`` callable (the runner's path: cache, budget,
    #: tracking) and a ``done()`` predicate (budget spent).
    owns_loop: bool = False

    def run(self, evaluate: Callable[[list["Rule"]], list["Result"]],
            done: Callable[[], bool]) -> None:  # pragma: no cover - default is ask/tell
        raise NotImplementedError

    @property
    def warmup(self) -> int:
        """Samples this strategy proposes before any feedback changes what it proposes
        (e.g. evolution's initial random population); a budget at or below it makes the
        strategy indistinguishable from random search, and the application warns."""
        return 0

    # checkpoint/resume hooks (optional): default is "no extra state"
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


#: built-in strategies: name -> the module that registers it (imported when selected)
BUILTIN_STRATEGIES: dict[str, str] = {
    "random": "searchlab.strategies.random",          # uniform over valid token strings
    "evolution": "searchlab.strategies.evolution",    # regularized (aging) evolution
    "gp": "searchlab.strategies.gp",                  # DEAP strongly typed GP
    "nos-ppo": "searchlab.strategies.controller",     # the paper's LSTM controller + PPO
    "reinforce": "searchlab.strategies.controller",   # the same controller, REINFORCE
    "sb3": "searchlab.strategies.sb3",                # stable-baselines3 agents
}


def _set_name(name: str, cls: "type[Strategy]") -> None:
    """Give a registered class its name, unless it computes its own (a ``name`` property
    that encodes its options, e.g. ``nos-ppo[paper]``)."""
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        return
    owner = next(c for c in cls.__mro__ if "name" in c.__dict__)
    if not isinstance(owner.__dict__["name"], property):
        cls.name = name


STRATEGIES: Registry[type[Strategy]] = Registry("strategy", builtins=BUILTIN_STRATEGIES,
                                                on_register=_set_name)
