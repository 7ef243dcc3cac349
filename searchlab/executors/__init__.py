"""Executors: a swappable ``map``.  Results come back in submission order.

Three executors share one contract (:class:`Executor`, see ``docs/ARCHITECTURE.md``):

* ``serial``  -- evaluates in the calling process, one item after another
  (:mod:`.serial`);
* ``process`` -- a local pool of ``spawn``-ed worker processes that searchlab manages
  itself, the default when ``workers > 1`` (:mod:`.process`);
* ``ray``     -- Ray tasks on a local cluster started for the search or on an existing
  one (:mod:`.ray_backend`).

The contract, the fault values, the seeding helpers and the scheduling machinery that
``process`` and ``ray`` share live in :mod:`.base`; a new backend subclasses
:class:`Executor` (or :class:`~.base.PooledExecutor` with a :class:`~.base.PooledStream`
supplying four primitives) and is registered below with
``EXECUTORS.register(name)(cls)`` (an outside backend does the same from its own module).

Faults become values, never crashes of the search:

* an exception raised by ``fn`` -> status ``error`` with the worker's traceback;
* a worker that dies (``os._exit``, segfault, OOM kill) -> the item is retried up to
  ``retries`` times on a fresh worker, then status ``error``; other items are unaffected;
* an item running longer than ``timeout`` seconds -> its worker is killed (``process``:
  SIGKILL; ``ray``: ``ray.cancel(force=True)``) and the item gets status ``timeout``.
  The ``serial`` executor cannot kill the calling process: there the evaluator's own
  in-process time check (its per-evaluation time limit) is the mechanism, and
  ``timeout`` is ignored.

Executors know nothing about rules or :class:`~searchlab.result.Result`: a failure is
reported as a :class:`Failure` and turned into the caller's result type by the
``on_failure(item, failure)`` callback passed to :meth:`Executor.map` (the runner builds a
floor-reward ``Result`` there, see :func:`failure_result`).  Without a callback a failure
raises :class:`TaskFailed`.

Streaming (:meth:`Executor.stream`, :meth:`Executor.imap_unordered`): results as they
complete, so a caller (the runner, an asynchronous strategy) can act on each one and
keep every worker busy; ``map`` is built on it.

Threads: ``process`` and ``ray`` workers run ``threads`` torch threads (default 1: one
evaluation per core, no oversubscription).

Determinism: before each item the worker reseeds Python's, NumPy's and torch's *global*
generators from a hash of the item (:func:`item_seed`), so code that (wrongly) reads
global RNG state still gives the same numbers on every executor, in any worker, in any
order.  The serial executor restores the caller's global RNG state after each item;
``SerialExecutor(seed_items=False)`` does neither (the table task uses it: a lookup
draws no random numbers).  Evaluators should still take their seed explicitly.

Importing this package is cheap: NumPy, torch and Ray load only when an item runs or a
Ray executor is first used.
"""

from __future__ import annotations

from typing import Any, Optional

from ..registry import Registry
from .base import (Executor, Failure, OnFailure, Stream, TaskFailed, failure_result,
                   item_seed)
from .process import ProcessExecutor
from .ray_backend import RayExecutor
from .serial import SerialExecutor

__all__ = ["EXECUTORS", "Executor", "Failure", "OnFailure", "ProcessExecutor", "RayExecutor",
           "SerialExecutor", "Stream", "TaskFailed", "failure_result", "item_seed",
           "make_executor"]

EXECUTORS: Registry[type[Executor]] = Registry("executor")
EXECUTORS.register("serial")(SerialExecutor)
EXECUTORS.register("process")(ProcessExecutor)
EXECUTORS.register("ray")(RayExecutor)


def make_executor(name: Optional[str] = None, workers: int = 1, **options: Any) -> Executor:
    """Build an executor by name; ``None`` picks ``serial`` for one worker, else ``process``."""
    if name is None:
        name = "process" if workers > 1 else "serial"
    return EXECUTORS.get(name)(workers=workers, **options)
