"""The ``Task`` interface and what the tasks share.

A task builds data and a model for a seed and knows its loss and metric.  Two kinds:

* :class:`ClassificationTask` (``mnist1d``, ``cifar10``): fixed train / validation / test
  splits (:class:`Splits`) and a :class:`StackedModel`, i.e. ``K`` independent copies of
  one network whose parameters carry a leading stack dimension ``[K, ...]``, so the
  evaluator can train the learning-rate sweep of one rule in one pass (``K`` lrs) or one
  copy at a time (``K = 1``).  The search only ever sees the validation split.
* :class:`ProblemTask` (``rosenbrock``, ``ensemble``): small analytic objectives scored by
  a normalised value in [0, 1] (see :mod:`searchlab.tasks.problems`).

Data sets that cost seconds to build are cached as arrays on disk under
:func:`data_cache_dir` (``$SEARCHLAB_CACHE``, else ``$XDG_CACHE_HOME/searchlab``, else
``~/.cache/searchlab``) and in memory per process.
"""

from __future__ import annotations

import abc
import copy
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import TASKS

__all__ = [
    "ClassificationTask", "DataNotFoundError", "ProblemTask", "Splits", "StackedModel",
    "TASKS", "Task", "data_cache_dir", "derive_seed", "get_task",
]


class DataNotFoundError(FileNotFoundError):
    """A task's data set is not where it was looked for (the message says where and which
    formats are accepted)."""


def data_cache_dir() -> Path:
    """Where decoded/generated data arrays are cached (created on first use):
    ``$SEARCHLAB_CACHE``, else ``$XDG_CACHE_HOME/searchlab``, else ``~/.cache/searchlab``."""
    env = os.environ.get("SEARCHLAB_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "searchlab"


def derive_seed(seed: int, tag: str) -> int:
    """A 63-bit seed for the stream ``tag`` of evaluation ``seed`` (independent streams
    for model init, data order and the rule's noise; seeds are explicit: ARCHITECTURE.md,
    rule 8)."""
    h = hashlib.blake2b(f"{int(seed)}:{tag}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & (2**63 - 1)


def _format_option(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class Task(abc.ABC):
    """A child task.  Subclasses set ``name`` and ``kind`` and take keyword options.

    ``id`` is the name plus the options that change results (ARCHITECTURE.md, rule 4), e.g.
    ``cifar10+max_examples=2000``; it is what results and cache keys record.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""  # "classification" | "problems"
    #: whether the evaluator trains the lr sweep batched (K copies at once) by default;
    #: set per task from measurements (bench/evaluator.py)
    batched_default: ClassVar[bool] = True
    #: torch threads that suit the task's small ops (the CLI's default; None: torch's
    #: setting).  Tiny children gain nothing from intra-op threads and lose 10x or more
    #: when the machine is busy (OpenMP threads spin at every op's barrier).
    preferred_threads: ClassVar[int | None] = 1
    #: the most rules the evaluator trains as one stacked population by default (1: one
    #: at a time); set per task from measurements (bench/throughput.py, BENCHMARKS.md)
    population_default: ClassVar[int] = 1

    def result_options(self) -> Mapping[str, Any]:
        """Non-default options that change results (they go into :attr:`id`)."""
        return {}

    @property
    def id(self) -> str:
        opts = self.result_options()
        if not opts:
            return self.name
        return self.name + "+" + ",".join(f"{k}={_format_option(v)}" for k, v in sorted(opts.items()))

    def __str__(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"<task {self.id}>"


# --------------------------------------------------------------------------------------
# classification tasks
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Splits:
    """Fixed train / validation / test splits (inputs as stored, labels int64).

    Inputs may be stored compactly (e.g. uint8 images); :meth:`ClassificationTask.prepare`
    turns a batch of them into model inputs.
    """

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train_y), "val": len(self.val_y), "test": len(self.test_y)}


class StackedModel(abc.ABC):
    """``k`` independent copies of one network, parameters stacked on dimension 0.

    ``params`` are leaf tensors ``[k, ...]`` (``requires_grad``) that the evaluator
    updates in place; ``buffers`` (batch-norm running statistics) are ``[k, ...]`` too.
    ``forward(x, train)`` returns logits ``[k, batch, classes]``: every copy sees the same
    batch, copies never interact, so the summed loss gives each copy its own gradient.
    """

    param_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: Sequence[Tensor], buffers: Sequence[Tensor]) -> None:
        self.params: list[Tensor] = list(params)
        self.buffers: list[Tensor] = list(buffers)

    @property
    def k(self) -> int:
        return int(self.params[0].shape[0])

    @abc.abstractmethod
    def forward(self, x: Tensor, train: bool) -> Tensor:
        """Logits ``[k, batch, classes]`` (``train``: batch statistics, running stats updated)."""

    def losses(self, x: Tensor, y: Tensor) -> Tensor:
        """Mean cross-entropy of each copy on the batch: ``[k]`` (training mode)."""
        logits = self.forward(x, train=True)
        k, b, c = logits.shape
        return F.cross_entropy(logits.reshape(k * b, c), y.repeat(k),
                               reduction="none").view(k, b).mean(1)

    def select(self, index: Sequence[int]) -> None:
        """Keep only the copies ``index`` (in that order)."""
        idx = torch.as_tensor(list(index), dtype=torch.long)
        self.params = [p.detach()[idx].requires_grad_(True) for p in self.params]
        self.buffers = [b[idx] for b in self.buffers]

    def rows(self, lo: int, hi: int) -> "StackedModel":
        """The copies ``lo:hi`` as a model of their own whose parameters and buffers are
        *views* of this model's (writes go through: validation and batch-norm refreshes
        of one rule's rows of a population, :mod:`searchlab.evaluation.population`)."""
        view = copy.copy(self)
        view.params = [p.detach()[lo:hi] for p in self.params]
        view.buffers = [b[lo:hi] for b in self.buffers]
        return view

    @classmethod
    def replicate(cls, one: Sequence[Tensor], k: int) -> list[Tensor]:
        """``k`` identical copies (leaf tensors) of the single-copy tensors ``one``."""
        return [t.unsqueeze(0).repeat((k,) + (1,) * t.dim()).requires_grad_(t.is_floating_point())
                for t in one]

    @staticmethod
    def uniform(shape: tuple[int, ...], fan_in: int, generator: torch.Generator) -> Tensor:
        """torch.nn's default init for conv/linear layers: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        bound = 1.0 / fan_in ** 0.5
        return (torch.rand(shape, generator=generator) * 2 - 1) * bound

    @staticmethod
    def bn_buffers(c: int, k: int) -> list[Tensor]:
        """Running mean/variance of two batch-norm layers of ``c`` channels, ``k`` copies."""
        buffers = [torch.zeros(c), torch.ones(c), torch.zeros(c), torch.ones(c)]
        return [b.unsqueeze(0).repeat(k, 1) for b in buffers]


class ClassificationTask(Task):
    """A supervised child task: data splits, an input transform and a stacked model."""

    kind: ClassVar[str] = "classification"
    num_classes: ClassVar[int] = 10
    #: examples x copies per validation forward pass: larger chunks fall out of the CPU
    #: caches (MNIST-1D, 7 copies: 3.6 us per example-copy in chunks of 100, 7.6 in 1000)
    eval_rows: ClassVar[int] = 1000

    @abc.abstractmethod
    def load(self) -> Splits:
        """The fixed splits (built once per process and cached; may raise
        :class:`DataNotFoundError`)."""

    def prepare(self, x: Tensor) -> Tensor:
        """Model inputs of a batch of stored inputs (identity by default)."""
        return x

    @abc.abstractmethod
    def build_model(self, k: int, generator: torch.Generator) -> StackedModel:
        """``k`` copies of the network, all with the same initial weights drawn from
        ``generator``."""


class ProblemTask(Task):
    """A set of analytic objectives; see :mod:`searchlab.tasks.problems`."""

    kind: ClassVar[str] = "problems"
    #: problem runs are a few elementwise ops on [K, D] per step: per-op overhead, which
    #: one [R*K, D] pass shares between R rules (3.65x serially, BENCHMARKS.md)
    population_default: ClassVar[int] = 32


def get_task(task: "str | Task", **options: Any) -> Task:
    """A task instance by registered name (with options), or ``task`` itself."""
    if isinstance(task, Task):
        if options:
            raise TypeError("options are only accepted with a task name")
        return task
    return TASKS.get(task)(**options)
