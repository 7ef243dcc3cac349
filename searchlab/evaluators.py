"""The one evaluator factory: an evaluator from a task name, a fidelity and options.

Every task is built here -- the registered tasks of :mod:`searchlab.tasks` through
:class:`searchlab.evaluation.Evaluator`, ``toy``, the microsecond objective of
:mod:`searchlab.testing.toy`, and ``table``, the tabular benchmark's recorded rewards
(:class:`searchlab.tabular.TableEvaluator`) -- so the application layer (configs), the Gymnasium
environment and scripts all get the same evaluator for the same names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .evaluation import Fidelity
    from .interfaces import Evaluator

__all__ = ["LOOKUP_TASKS", "TABLE_TASK", "TOY_TASK", "default_space", "make_evaluator",
           "task_names"]

#: the task name of the microsecond toy objective (no Task object behind it)
TOY_TASK = "toy"
#: the task name of the tabular benchmark (rewards looked up, no training)
TABLE_TASK = "table"
#: tasks that train nothing: no fidelity, no reward cache
LOOKUP_TASKS = (TOY_TASK, TABLE_TASK)


def default_space(task: str) -> str:
    """The space searched on ``task`` when none is named: the table's space on ``table``
    (the only rules it can answer), ``scratch`` otherwise."""
    return "tabular" if task == TABLE_TASK else "scratch"


def task_names() -> list[str]:
    """Every task name an evaluator can be built for (registered tasks and ``toy``),
    without importing any task module."""
    from .tasks import TASKS

    return sorted(set(TASKS.names()) | set(LOOKUP_TASKS))


def make_evaluator(task: str, fidelity: "str | Fidelity" = "fast", *,
                   cache_dir: str | os.PathLike[str] | None = None,
                   **options: Any) -> "Evaluator":
    """The evaluator of ``task`` at ``fidelity``.

    ``toy``: :class:`~searchlab.testing.toy.ToyEvaluator` with ``options`` (its fidelity
    is its probe objective; ``fidelity`` and ``cache_dir`` are ignored).  ``table``:
    :class:`~searchlab.tabular.TableEvaluator` with ``options`` (``table=<name or
    path>``; the table fixes the fidelity, ``fidelity`` and ``cache_dir`` are ignored).
    Any other task:
    ``Evaluator(task, fidelity, cache_dir=cache_dir, **options)`` (task options such as
    ``data_dir`` and evaluator options such as ``batched`` or ``threads``).  Raises
    ``TypeError`` for an option the evaluator does not take and ``KeyError`` for an
    unknown task.
    """
    if task == TOY_TASK:
        from .testing.toy import ToyEvaluator

        return ToyEvaluator(**options)
    if task == TABLE_TASK:
        from .tabular import TableEvaluator

        return TableEvaluator(**options)
    from .evaluation import Evaluator

    if cache_dir is not None:
        options["cache_dir"] = Path(cache_dir)
    return Evaluator(task=task, fidelity=fidelity, **options)
