"""Fault injection for tests and drills (not used by searches unless asked for).

Spawned workers import functions by module path, so injected crashes and hangs must live
in an importable module: this one.  :class:`FaultInjector` wraps any picklable
``fn(item)`` and misbehaves on chosen items:

* ``crash``  -- the worker process dies (``os._exit(13)``, or SIGKILL/SIGSEGV to itself
  with ``crash_how="sigkill"``/``"segv"``, which look like an OOM kill or a segfault);
* ``hang``   -- sleeps ``hang_seconds`` before calling ``fn`` (past any time limit);
* ``raise_on`` -- raises ``RuntimeError`` inside the task;
* ``crash_once_dir`` -- crash only on the first attempt per item (a marker file per item
  in that directory), to check that retries recover.

Items are matched by their canonical ``key`` when they have one (rules), else ``str``.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional


def item_name(item: Any) -> str:
    """The name an item is matched by: ``item.key`` for rules, else ``str(item)``."""
    return str(getattr(item, "key", item))


@dataclass(frozen=True)
class FaultInjector:
    """``fn`` wrapped with injected faults on selected items (picklable under spawn)."""

    fn: Callable[[Any], Any]
    crash: frozenset[str] = field(default_factory=frozenset)
    hang: frozenset[str] = field(default_factory=frozenset)
    raise_on: frozenset[str] = field(default_factory=frozenset)
    hang_seconds: float = 3600.0
    crash_how: str = "exit"
    crash_once_dir: Optional[str] = None

    def _matches(self, names: frozenset[str], item: Any) -> bool:
        return item_name(item) in names or str(item) in names

    def __call__(self, item: Any) -> Any:
        self._misbehave(item)
        return self.fn(item)

    def _misbehave(self, item: Any) -> None:
        if self._matches(self.crash, item):
            if self.crash_once_dir is None or self._first_time(item):
                _die(self.crash_how)
        if self._matches(self.hang, item):
            time.sleep(self.hang_seconds)
        if self._matches(self.raise_on, item):
            raise RuntimeError(f"injected failure on {item_name(item)!r}")

    def _first_time(self, item: Any) -> bool:
        import hashlib

        assert self.crash_once_dir is not None
        name = hashlib.sha1(item_name(item).encode()).hexdigest()
        marker = os.path.join(self.crash_once_dir, name)
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        os.close(fd)
        return True


@dataclass(frozen=True)
class FaultyEvaluator(FaultInjector):
    """An evaluator (``fn``: anything with ``evaluate(rule, seed)``) with injected faults:
    ``FaultyEvaluator(ToyEvaluator(), crash=frozenset({rule.key}))``."""

    @property
    def task_name(self) -> str:
        return self.fn.task_name

    @property
    def protocol(self) -> str:
        return self.fn.protocol

    def evaluate(self, rule: Any, seed: int = 0) -> Any:
        self._misbehave(rule)
        return self.fn.evaluate(rule, seed)


def _die(how: str) -> None:
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    os._exit(13)


def probe(item: Any) -> dict[str, Any]:
    """Report what a worker sees for ``item``: its pid, torch threads and one draw from
    each global RNG (used to test per-item reseeding and thread settings)."""
    import random

    import numpy as np
    import torch

    return {"item": item, "pid": os.getpid(), "threads": torch.get_num_threads(),
            "py": random.random(), "np": float(np.random.random()),
            "torch": float(torch.rand(()))}


def square(x: float) -> float:
    """A trivial task."""
    return x * x


def sleep_then_echo(seconds: float) -> float:
    """Sleep ``seconds``, then return it (ordering and parallelism tests)."""
    time.sleep(seconds)
    return seconds


def sleep_probe(item: Any, seconds: float = 0.3) -> dict[str, Any]:
    """:func:`probe` after sleeping (so that every worker gets an item)."""
    time.sleep(seconds)
    return probe(item)
