"""Child tasks: each builds data and a model for a seed.

Registered tasks (``TASKS``)::

    mnist1d     MNIST-1D generated offline + a small 1-D ConvNet (the default)
    cifar10     the paper's child: CIFAR-10 + two 3x3 conv layers of 32 filters
    rosenbrock  the 2-D Rosenbrock function (paper 6.1), normalised score in [0, 1]
    ensemble    the problem ensemble of Wichrowska et al. 2017, mean normalised score

``get_task("cifar10", data_dir=...)`` builds one; :mod:`searchlab.evaluate` runs the
reward protocol on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..registry import Registry

if TYPE_CHECKING:
    from .base import Task

#: name -> Task subclass; the built-in tasks' modules are imported when one is selected
TASKS: "Registry[type[Task]]" = Registry("task", builtins={
    "mnist1d": "searchlab.tasks.mnist1d",
    "cifar10": "searchlab.tasks.cifar10",
    "rosenbrock": "searchlab.tasks.problems",
    "ensemble": "searchlab.tasks.problems",
})

_FROM_BASE = ("ClassificationTask", "DataNotFoundError", "ProblemTask", "Splits",
              "StackedModel", "Task", "data_cache_dir", "derive_seed", "get_task")

__all__ = ["TASKS", *_FROM_BASE]


def __getattr__(name: str) -> Any:
    # the task classes import torch: only when asked for (listing TASKS names does not)
    if name in _FROM_BASE:
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
