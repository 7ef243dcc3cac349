"""The evaluator contract: what the runner, the executors and the reports need of an
evaluator (the other interfaces live with their bases: :class:`searchlab.strategy.Strategy`,
:class:`searchlab.tracking.Tracker`, :class:`searchlab.executors.Executor`).

Implementations: :class:`searchlab.evaluation.Evaluator` (the reward protocol),
:class:`searchlab.testing.toy.ToyEvaluator` (a microsecond objective) and
:class:`searchlab.testing.faults.FaultyEvaluator` (faults injected for tests).  Build one
from names with :func:`searchlab.evaluators.make_evaluator`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .dsl import Rule
    from .result import Result

__all__ = ["BatchEvaluator", "Evaluator"]


@runtime_checkable
class Evaluator(Protocol):
    """Scores rules.  ``evaluate`` never raises for a bad rule: it returns a
    :class:`~searchlab.result.Result` whose status says what happened.  Evaluators that
    run in executor workers must be picklable."""

    @property
    def task_name(self) -> str:
        """The task's name as logged (``mnist1d``, ``toy``)."""
        ...

    @property
    def protocol(self) -> str:
        """The evaluation protocol's name as recorded in results, caches and MLflow
        (a fidelity's key, e.g. ``fast`` or ``fast+final_epochs=5``)."""
        ...

    def evaluate(self, rule: "Rule | str", seed: int) -> "Result":
        """The reward of ``rule`` with every random choice seeded by ``seed``."""
        ...


@runtime_checkable
class BatchEvaluator(Evaluator, Protocol):
    """An evaluator that can score several rules in one pass (population training).

    ``evaluate_many(rules, seed)`` returns one result per rule, in order, equal to
    ``[evaluate(r, seed) for r in rules]`` up to float rounding: each rule keeps its own
    protocol (its own lr sweep, final run, divergence, time limit and noise).  The runner
    sends chunks of at most ``max_batch`` fresh rules to it (``max_batch <= 1``: one rule
    at a time, through ``evaluate``)."""

    @property
    def max_batch(self) -> int:
        ...

    def evaluate_many(self, rules: "Sequence[Rule | str]", seed: int) -> "list[Result]":
        ...
