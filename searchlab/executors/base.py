"""The executor contract and what every backend shares.

* :class:`Executor` (``map`` / ``stream`` / ``imap_unordered`` / ``close``) and
  :class:`Stream` (``submit`` / ``next_completed`` / ``pending`` / ``close``): the interface
  the runner and the strategies see;
* :class:`Failure`, :class:`TaskFailed`, :func:`failure_result`: faults as values;
* :func:`item_seed` and the per-item reseeding of the global RNGs (determinism);
* :class:`PooledExecutor` and :class:`PooledStream`: the machinery of the parallel
  backends (``process``, ``ray``), written once -- tickets, the queue of items waiting
  for a worker, retries of items whose worker died, per-item time limits, results handed
  over as they complete, closing.  A backend supplies only its primitives: start an item
  on an idle worker, wait for whatever happens next, kill one item's worker.

Nothing here imports NumPy, torch or Ray at module level: they load when an item runs.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import hashlib
import itertools
import logging
import pickle
import random
import time
import traceback
from dataclasses import dataclass
from typing import (TYPE_CHECKING, Any, Callable, Deque, Dict, Generic, Iterable, Iterator,
                    Literal, Optional, TypeVar)

if TYPE_CHECKING:
    from ..result import Result

A = TypeVar("A")
R = TypeVar("R")

log = logging.getLogger("searchlab.executors")


# ----------------------------------------------------------------------------------------
# failures
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Failure:
    """Why an item produced no value: ``timeout`` or ``error`` (exception or dead worker).

    ``message`` holds the traceback of an exception, or what happened to the worker;
    ``attempts`` counts how many times the item was started.
    """

    status: Literal["timeout", "error"]
    message: str
    attempts: int = 1


class TaskFailed(RuntimeError):
    """Raised by :meth:`Executor.map` for a failed item when no ``on_failure`` is given."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(f"{failure.status}: {failure.message}")
        self.failure = failure


OnFailure = Callable[[Any, Failure], Any]


def failure_result(rule: Any, failure: Failure, **fields: Any) -> "Result":
    """A floor-reward :class:`~searchlab.result.Result` for a rule whose evaluation failed.

    ``rule`` is a :class:`~searchlab.dsl.Rule` (or anything with ``key``/``str``);
    ``fields`` fill in the rest (``seed``, ``task``, ``fidelity``...).  Suits
    ``on_failure=functools.partial(failure_result, seed=..., task=...)``.
    """
    from ..result import FLOOR_REWARD, Result

    tokens: tuple[str, ...] = ()
    try:
        tokens = tuple(rule.to_tokens())
    except Exception:  # rules outside the token grammar have no tokens
        pass
    return Result(rule=str(rule), key=str(getattr(rule, "key", rule)), reward=FLOOR_REWARD,
                  status=failure.status, message=failure.message, tokens=tokens,
                  extra={"attempts": failure.attempts}, **fields)


def _resolve(item: Any, failure: Failure, on_failure: Optional[OnFailure]) -> Any:
    if on_failure is None:
        raise TaskFailed(failure)
    return on_failure(item, failure)


# ----------------------------------------------------------------------------------------
# seeding and threads (shared by all executors and their workers)
# ----------------------------------------------------------------------------------------
def item_seed(item: Any) -> int:
    """A 63-bit seed derived from an item's pickle (or repr), the same in every process.

    Rules pickle by their text, so a rule's seed depends only on the rule.
    """
    try:
        data = pickle.dumps(item, protocol=4)
    except Exception:
        data = repr(item).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


def _seed_globals(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    # the CPU generator: what torch.manual_seed seeds on a CPU-only machine, without the
    # lazily queued CUDA seeding (a stack trace per call, ~0.2 ms: per item, that is the
    # main cost of looking rewards up in a table)
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


@contextlib.contextmanager
def _seeded(seed: int, restore: bool) -> Iterator[None]:
    """Seed the global RNGs for one item; with ``restore`` put the caller's state back."""
    if not restore:
        _seed_globals(seed)
        yield
        return
    import numpy as np
    import torch

    py_state = random.getstate()
    np_state = np.random.get_state()
    torch_state = torch.random.get_rng_state()
    try:
        _seed_globals(seed)
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)


def _set_torch_threads(threads: Optional[int]) -> None:
    if not threads:
        return
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _call(fn: Callable[[Any], Any], item: Any, seed: int) -> tuple[bool, Any]:
    """Run ``fn(item)`` in a worker: ``(True, value)`` or ``(False, traceback text)``."""
    try:
        with _seeded(seed, restore=False):
            return True, fn(item)
    except Exception:
        return False, traceback.format_exc()


# ----------------------------------------------------------------------------------------
# the interface
# ----------------------------------------------------------------------------------------
class Stream(abc.ABC, Generic[A, R]):
    """An open evaluation session of one function: submit items, take completed results.

    Use it to keep every worker busy (asynchronous strategies: submit one new item as soon
    as one completes).  ``capacity`` is how many items should be in flight for that.
    Closing a stream abandons unfinished items (their workers are killed).
    """

    capacity: int = 1

    @abc.abstractmethod
    def submit(self, item: A) -> int:
        """Queue ``item``; returns its ticket (0, 1, 2 ... in submission order)."""

    @abc.abstractmethod
    def next_completed(self) -> tuple[int, R]:
        """Block until some submitted item is done; ``(ticket, result)``."""

    @property
    @abc.abstractmethod
    def pending(self) -> int:
        """Items submitted and not yet returned by :meth:`next_completed`."""

    def close(self) -> None:
        """Abandon unfinished items."""

    def __enter__(self) -> "Stream[A, R]":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Executor(abc.ABC):
    """Runs ``fn`` over ``items`` and returns the results in the order of ``items``.

    ``fn`` and the items must be picklable for the parallel executors (module-level
    functions, ``functools.partial`` of them, or objects with a ``__call__``);
    spawned workers import them by module path.
    """

    workers: int = 1
    #: per-item wall-clock limit in seconds (None: no limit)
    timeout: Optional[float] = None
    #: how many times an item whose worker died is started again
    retries: int = 1

    @abc.abstractmethod
    def map(self, fn: Callable[[A], R], items: Iterable[A], *,
            on_failure: Optional[Callable[[A, Failure], R]] = None) -> list[R]:
        """``[fn(x) for x in items]``, with failures turned into values by ``on_failure``."""

    def stream(self, fn: Callable[[A], R], *,
               on_failure: Optional[Callable[[A, Failure], R]] = None) -> Stream[A, R]:
        """An asynchronous session (see :class:`Stream`).  The default evaluates one item
        per :meth:`next_completed` call through :meth:`map`."""
        return _MapStream(self, fn, on_failure)

    def imap_unordered(self, fn: Callable[[A], R], items: Iterable[A], *,
                       on_failure: Optional[Callable[[A, Failure], R]] = None
                       ) -> Iterator[tuple[int, R]]:
        """Yield ``(index, result)`` as items complete, keeping all workers busy.

        An executor that implements only ``map`` gets all items in one ``map`` call."""
        if type(self).stream is Executor.stream:
            yield from enumerate(self.map(fn, items, on_failure=on_failure))
            return
        it = iter(items)
        with self.stream(fn, on_failure=on_failure) as s:
            exhausted = False
            while True:
                while not exhausted and s.pending < 2 * s.capacity:
                    try:
                        s.submit(next(it))
                    except StopIteration:
                        exhausted = True
                if not s.pending:
                    return
                yield s.next_completed()

    def _map_via_stream(self, fn: Callable[[A], R], items: Iterable[A],
                        on_failure: Optional[Callable[[A, Failure], R]]) -> list[R]:
        """``map`` for executors with a real :meth:`stream`: submit all, collect in order."""
        items = list(items)
        if not items:
            return []
        with self.stream(fn, on_failure=on_failure) as s:
            for x in items:
                s.submit(x)
            return _ordered(len(items), (s.next_completed() for _ in items))

    def close(self) -> None:
        """Release workers (no-op by default)."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _MapStream(Stream[A, R]):
    """Fallback stream over any executor's ``map``: when a result is wanted, all queued
    items go through one ``map`` call (so a map-only executor keeps its parallelism)."""

    def __init__(self, executor: Executor, fn: Callable[[A], R],
                 on_failure: Optional[Callable[[A, Failure], R]], one_at_a_time: bool = False
                 ) -> None:
        self.executor, self.fn, self.on_failure = executor, fn, on_failure
        self.one_at_a_time = one_at_a_time
        self.capacity = max(1, executor.workers)
        self._queue: Deque[tuple[int, A]] = collections.deque()
        self._done: Deque[tuple[int, R]] = collections.deque()
        self._tickets = itertools.count()

    def submit(self, item: A) -> int:
        ticket = next(self._tickets)
        self._queue.append((ticket, item))
        return ticket

    def next_completed(self) -> tuple[int, R]:
        if not self._done:
            if not self._queue:
                raise RuntimeError("next_completed() with nothing pending")
            batch = [self._queue.popleft()] if self.one_at_a_time else list(self._queue)
            if not self.one_at_a_time:
                self._queue.clear()
            values = self.executor.map(self.fn, [x for _, x in batch],
                                       on_failure=self.on_failure)
            self._done.extend(zip((t for t, _ in batch), values))
        return self._done.popleft()

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._done)

    def close(self) -> None:
        self._queue.clear()
        self._done.clear()


def _ordered(n: int, pairs: Iterable[tuple[int, R]]) -> list[R]:
    out: list[Any] = [None] * n
    for i, r in pairs:
        out[i] = r
    return out


# ----------------------------------------------------------------------------------------
# the parallel backends' shared machinery
# ----------------------------------------------------------------------------------------
@dataclass
class _Task:
    """One submitted item on its way through a :class:`PooledStream`."""

    ticket: int
    item: Any
    seed: int
    #: how many times it was started (a dead worker's item is started again)
    attempts: int = 0
    #: when ``fn`` started on it (``time.monotonic()``; None: not yet), for the time limit
    started: Optional[float] = None
    #: the backend's handle on the running attempt (its worker, its Ray task...)
    handle: Any = None


@dataclass
class _Deferred:
    """A failure whose conversion (``on_failure``) happens when the caller takes it."""

    item: Any
    failure: Failure


class PooledStream(Stream[A, R]):
    """A stream over a pool of workers that may die, hang or raise.

    Written once here: tickets in submission order, the queue of items waiting for an
    idle worker, the items in flight (by ticket), the completed results waiting to be
    taken, retries of an item whose worker died (``executor.retries``), the per-item time
    limit (``executor.timeout``, counted from :attr:`_Task.started`), and closing.  Failures
    are stored as :class:`_Deferred` and turned into values (``on_failure``) only when the
    caller takes them, so an ``on_failure`` that raises does so in ``next_completed``.

    A backend provides the primitives:

    * :meth:`_idle_workers` -- yield a slot each time one more item can start now;
    * :meth:`_start` -- start a task's attempt on that slot (False: the slot turned out to
      be dead; the task goes back to the front of the queue);
    * :meth:`_wait` -- block at most ``timeout`` seconds (None: until something happens)
      and report what happened through :meth:`_finish`, :meth:`_fail`, :meth:`_lost`
      (the worker died) and by setting ``task.started``;
    * :meth:`_kill` -- stop one task's attempt and the worker it runs on (its time ran
      out: the pool carries on; or the stream is closing).
    """

    #: how long :meth:`_wait` may block when a time limit is set but no item in flight
    #: has started its clock yet (None: until something happens)
    _idle_wait: Optional[float] = None
    #: ends the message of a timed-out item: what was done to its worker
    _kill_note: str = "its worker was killed"

    def __init__(self, ex: Executor, on_failure: Optional[OnFailure]) -> None:
        self.ex = ex
        self.on_failure = on_failure
        self.capacity = ex.workers
        self.closed = False
        self._tickets = itertools.count()
        self._queue: Deque[_Task] = collections.deque()
        self._running: Dict[int, _Task] = {}
        self._done: Deque[tuple[int, Any]] = collections.deque()
        self._n_pending = 0

    # -- the backend's primitives ----------------------------------------------------
    @abc.abstractmethod
    def _idle_workers(self) -> Iterator[Any]:
        """Yield a slot (e.g. an idle worker) for every item that could start now."""

    @abc.abstractmethod
    def _start(self, task: _Task, slot: Any) -> bool:
        """Start one attempt of ``task`` on ``slot``; False if the slot is unusable."""

    @abc.abstractmethod
    def _wait(self, timeout: Optional[float]) -> None:
        """Wait for events (at most ``timeout`` s) and report them (see the class doc)."""

    @abc.abstractmethod
    def _kill(self, task: _Task, closing: bool) -> None:
        """Stop the running attempt of ``task`` and the worker it runs on; ``closing``:
        the stream is being closed (no replacement is needed for this stream)."""

    # -- the stream ------------------------------------------------------------------
    @property
    def pending(self) -> int:
        return self._n_pending

    def submit(self, item: A) -> int:
        if self.closed:
            raise RuntimeError("stream is closed")
        ticket = next(self._tickets)
        self._queue.append(_Task(ticket, item, item_seed(item)))
        self._n_pending += 1
        self._dispatch()
        return ticket

    def next_completed(self) -> tuple[int, R]:
        if not self._n_pending:
            raise RuntimeError("next_completed() with nothing pending")
        while not self._done:
            self._dispatch()
            self._wait(self._wait_timeout())
            self._check_timeouts()
        ticket, value = self._done.popleft()
        self._n_pending -= 1
        self._dispatch()
        if isinstance(value, _Deferred):
            value = _resolve(value.item, value.failure, self.on_failure)
        return ticket, value

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._queue.clear()
        for task in list(self._running.values()):   # abandon unfinished items
            self._kill(task, closing=True)
        self._running.clear()
        self._done.clear()
        self._n_pending = 0

    # -- bookkeeping the backends report to ------------------------------------------
    def _dispatch(self) -> None:
        for slot in self._idle_workers():
            if not self._queue:
                return
            task = self._queue.popleft()
            if not self._start(task, slot):
                self._queue.appendleft(task)   # the worker died before taking it
                continue
            task.attempts += 1
            self._running[task.ticket] = task

    def _finish(self, task: _Task, value: Any) -> None:
        self._running.pop(task.ticket, None)
        self._done.append((task.ticket, value))

    def _fail(self, task: _Task, status: Literal["timeout", "error"], message: str) -> None:
        self._running.pop(task.ticket, None)
        self._done.append((task.ticket, _Deferred(task.item, Failure(status, message,
                                                                       task.attempts))))

    def _lost(self, task: _Task, why: str, charge: bool = True) -> None:
        """The worker running ``task`` died (``why``): start the item again while it has
        retries left, else it fails with ``error``.  ``charge=False``: the death was not
        the item's doing (the worker was still starting); the attempt does not count."""
        self._running.pop(task.ticket, None)
        if not charge:
            task.attempts -= 1
        elif task.attempts > self.ex.retries:
            self._fail(task, "error", f"{why} ({task.attempts} attempt(s))")
            return
        else:
            log.warning("%s; retrying (attempt %d of %d)",
                        why, task.attempts + 1, self.ex.retries + 1)
        task.started = task.handle = None
        self._queue.appendleft(task)

    def _wait_timeout(self) -> Optional[float]:
        if self.ex.timeout is None:
            return None
        now = time.monotonic()
        left = [t.started + self.ex.timeout - now for t in self._running.values()
                if t.started is not None]
        return max(0.0, min(left)) + 0.01 if left else self._idle_wait

    def _check_timeouts(self) -> None:
        if self.ex.timeout is None:
            return
        now = time.monotonic()
        for task in list(self._running.values()):
            if task.started is not None and now - task.started > self.ex.timeout:
                self._kill(task, closing=False)
                self._fail(task, "timeout",
                           f"exceeded the per-evaluation time limit of {self.ex.timeout:g} s "
                           f"(ran {now - task.started:.1f} s); {self._kill_note}")


class PooledExecutor(Executor):
    """An executor whose ``map`` and ``stream`` go through a :class:`PooledStream`: one
    open stream at a time; ``fn`` is pickled once per stream and known by a hash of its
    pickle, so workers keep an evaluator's lazily built state across streams."""

    _active: Optional[PooledStream[Any, Any]] = None

    def __init__(self, workers: int, timeout: Optional[float], retries: int,
                 threads: Optional[int]) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.timeout = timeout
        self.retries = retries
        #: torch threads per worker
        self.threads = threads

    @abc.abstractmethod
    def _open(self, fn: Callable[[A], R], fn_id: str, payload: bytes,
              on_failure: Optional[OnFailure]) -> PooledStream[A, R]:
        """A new stream of ``fn`` (``payload``: its pickle, ``fn_id``: the pickle's hash)."""

    def stream(self, fn: Callable[[A], R], *,
               on_failure: Optional[Callable[[A, Failure], R]] = None) -> Stream[A, R]:
        if self._active is not None and not self._active.closed:
            raise RuntimeError("one stream at a time per executor; close the previous one")
        payload = pickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
        fn_id = hashlib.blake2b(payload, digest_size=16).hexdigest()
        self._active = self._open(fn, fn_id, payload, on_failure)
        return self._active

    def map(self, fn: Callable[[A], R], items: Iterable[A], *,
            on_failure: Optional[Callable[[A, Failure], R]] = None) -> list[R]:
        return self._map_via_stream(fn, items, on_failure)

    def close(self) -> None:
        if self._active is not None:
            self._active.close()
