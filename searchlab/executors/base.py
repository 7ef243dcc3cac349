"""Executors: a swappable ``map`` (DESIGN 8.10).  Results come back in submission order.

Three executors share one contract:

* ``serial``  -- evaluates in the calling process, one item after another;
* ``process`` -- a local pool of ``spawn``-ed worker processes that searchlab manages
  itself (one pipe per worker), the default when ``workers > 1``;
* ``ray``     -- Ray tasks on a local cluster started for the search (``ray.init()``
  with ``num_cpus=workers``, no dashboard, bound to 127.0.0.1) or on an existing
  cluster (``address="auto"`` or ``"host:port"``).

Faults become values, never crashes of the search (DESIGN 8.6):

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
evaluation per core, no oversubscription).  ``process`` workers are daemonic processes:
an evaluation cannot start processes of its own there (in-memory data needs none).

Determinism (DESIGN 8.9): before each item the worker reseeds Python's, NumPy's and
torch's *global* generators from a hash of the item (:func:`item_seed`), so code that
(wrongly) reads global RNG state still gives the same numbers on every executor, in any
worker, in any order.  The serial executor restores the caller's global RNG state after
each item.  Evaluators should still take their seed explicitly.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import hashlib
import itertools
import logging
import os
import pickle
import random
import signal
import time
import traceback
from dataclasses import dataclass
from typing import (TYPE_CHECKING, Any, Callable, Deque, Dict, Generic, Iterable, Iterator,
                    Literal, Optional, TypeVar)

from .registry import Registry

if TYPE_CHECKING:
    from .result import Result

A = TypeVar("A")
R = TypeVar("R")

log = logging.getLogger(__name__)

#: environment variables that cap native thread pools in workers (set before torch loads)
_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


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
    from .result import FLOOR_REWARD, Result

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
    torch.manual_seed(seed)


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


def _describe_exit(code: Optional[int]) -> str:
    if code is None:
        return "worker process died"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"worker process killed by {name}"
    return f"worker process exited with code {code}"


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


EXECUTORS: Registry[type[Executor]] = Registry("executor")


def make_executor(name: Optional[str] = None, workers: int = 1, **options: Any) -> Executor:
    """Build an executor by name; ``None`` picks ``serial`` for one worker, else ``process``."""
    if name is None:
        name = "process" if workers > 1 else "serial"
    return EXECUTORS.get(name)(workers=workers, **options)


# ----------------------------------------------------------------------------------------
# serial
# ----------------------------------------------------------------------------------------
@EXECUTORS.register("serial")
class SerialExecutor(Executor):
    """Evaluates in the calling process, one item after another.

    Exceptions become ``error`` failures (with traceback) when ``on_failure`` is given.
    ``timeout`` cannot be enforced from outside here: the evaluator's own time limit is
    the mechanism.  ``threads`` (optional) sets torch's thread count during ``map`` and
    restores it afterwards.
    """

    def __init__(self, workers: int = 1, timeout: Optional[float] = None, retries: int = 1,
                 threads: Optional[int] = None) -> None:
        if workers != 1:
            raise ValueError(f"the serial executor runs 1 worker, got workers={workers}")
        self.workers = 1
        self.timeout = timeout
        self.retries = retries
        self.threads = threads

    def stream(self, fn: Callable[[A], R], *,
               on_failure: Optional[Callable[[A, Failure], R]] = None) -> Stream[A, R]:
        """Items are evaluated one by one, in submission order, when results are taken."""
        return _MapStream(self, fn, on_failure, one_at_a_time=True)

    def map(self, fn: Callable[[A], R], items: Iterable[A], *,
            on_failure: Optional[Callable[[A, Failure], R]] = None) -> list[R]:
        prev_threads = None
        if self.threads:
            import torch
            prev_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        try:
            out: list[R] = []
            for item in items:
                try:
                    with _seeded(item_seed(item), restore=True):
                        value = fn(item)
                except Exception as e:
                    failure = Failure("error", traceback.format_exc())
                    if on_failure is None:
                        raise TaskFailed(failure) from e
                    value = on_failure(item, failure)
                out.append(value)
            return out
        finally:
            if prev_threads is not None:
                import torch
                torch.set_num_threads(prev_threads)


# ----------------------------------------------------------------------------------------
# process: our own spawn-ed workers, one duplex pipe each
# ----------------------------------------------------------------------------------------
def _worker_main(conn: Any, threads: Optional[int]) -> None:
    """Loop of a ``process`` worker: receive functions and items, send back outcomes.

    Messages in: ``("fn", fn_id, pickled_fn)``, ``("task", ticket, fn_id, item, seed)``,
    ``None`` (exit).  Out: ``("ready", pid)`` once, then ``(ticket, ok, value)``.
    Functions are kept by id (a small LRU), so an evaluator's lazily built state (data,
    compiled code) survives across batches.
    """
    if threads:
        for var in _THREAD_ENV:
            os.environ[var] = str(threads)
    # a parent killed with SIGKILL closes the pipe: recv raises EOFError and we exit.
    # Ctrl-C goes to the whole process group: let the parent decide, do not die mid-item.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _set_torch_threads(threads)
    fns: "collections.OrderedDict[str, tuple[bool, Any]]" = collections.OrderedDict()
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        if msg[0] == "fn":
            _, fn_id, payload = msg
            try:
                fns[fn_id] = (True, pickle.loads(payload))
            except Exception:
                fns[fn_id] = (False, "could not load the function in the worker:\n"
                              + traceback.format_exc())
            while len(fns) > 4:
                fns.popitem(last=False)
            continue
        _, ticket, fn_id, item, seed = msg
        loaded, fn = fns[fn_id]
        outcome = _call(fn, item, seed) if loaded else (False, fn)
        try:
            conn.send((ticket, *outcome))
        except (BrokenPipeError, EOFError, OSError):
            return
        except Exception:  # the value did not pickle
            conn.send((ticket, False, "could not send the result back:\n"
                       + traceback.format_exc()))


class _Worker:
    def __init__(self, ctx: Any, threads: Optional[int]) -> None:
        parent, child = ctx.Pipe(duplex=True)
        self.conn = parent
        self.proc = ctx.Process(target=_worker_main, args=(child, threads), daemon=True,
                                name="searchlab-worker")
        self.proc.start()
        child.close()
        self.ready = False
        self.fn_ids: set[str] = set()
        self.ticket: Optional[int] = None
        self.started = 0.0

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(timeout=2)
        if self.proc.is_alive():
            self.kill()
        self.conn.close()


@dataclass
class _Task:
    ticket: int
    item: Any
    seed: int
    attempts: int = 0


@EXECUTORS.register("process")
class ProcessExecutor(Executor):
    """A local pool of ``workers`` spawned processes, managed by searchlab.

    Unlike :class:`concurrent.futures.ProcessPoolExecutor` (which breaks entirely when
    one worker dies) each worker has its own pipe, so a dead or hung worker is replaced
    alone and costs only its item.  Workers start on first use and live until
    :meth:`close`; each runs ``threads`` torch threads (default 1) and is reseeded per
    item.  ``timeout`` is measured from the moment an item is handed to a started
    worker (a worker's first item also pays for loading ``fn``, e.g. an evaluator's data).
    """

    def __init__(self, workers: int = 2, timeout: Optional[float] = None, retries: int = 1,
                 threads: Optional[int] = 1, start_method: str = "spawn") -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        import multiprocessing

        self.workers = workers
        self.timeout = timeout
        self.retries = retries
        self.threads = threads
        self._ctx = multiprocessing.get_context(start_method)
        self._pool: list[_Worker] = []
        self._active: Optional["_ProcessStream[Any, Any]"] = None
        self._startup_failures = 0

    # -- pool management -------------------------------------------------------------
    def _spawn(self) -> _Worker:
        return _Worker(self._ctx, self.threads)

    def _ensure_pool(self) -> None:
        self._pool = [w for w in self._pool if w.proc.is_alive() or w.ticket is not None]
        while len(self._pool) < self.workers:
            self._pool.append(self._spawn())

    def _replace(self, worker: _Worker, killed: bool = False) -> None:
        worker.kill()
        self._pool.remove(worker)
        if not worker.ready and not killed:
            self._startup_failures += 1
            if self._startup_failures > 3 * self.workers:
                raise RuntimeError(
                    f"searchlab worker processes die while starting "
                    f"({_describe_exit(worker.proc.exitcode)}); is the calling module "
                    f"importable and guarded by `if __name__ == '__main__':`?")
        self._pool.append(self._spawn())

    def stream(self, fn: Callable[[A], R], *,
               on_failure: Optional[Callable[[A, Failure], R]] = None) -> Stream[A, R]:
        if self._active is not None and not self._active.closed:
            raise RuntimeError("one stream at a time per executor; close the previous one")
        payload = pickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
        fn_id = hashlib.blake2b(payload, digest_size=16).hexdigest()
        self._ensure_pool()
        self._active = _ProcessStream(self, fn_id, payload, on_failure)
        return self._active

    def map(self, fn: Callable[[A], R], items: Iterable[A], *,
            on_failure: Optional[Callable[[A, Failure], R]] = None) -> list[R]:
        return self._map_via_stream(fn, items, on_failure)

    def close(self) -> None:
        if self._active is not None:
            self._active.close()
        for w in self._pool:
            if w.ticket is None and w.ready and w.proc.is_alive():
                w.stop()
            else:
                w.kill()
        self._pool = []

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


class _ProcessStream(Stream[A, R]):
    def __init__(self, ex: ProcessExecutor, fn_id: str, payload: bytes,
                 on_failure: Optional[OnFailure]) -> None:
        self.ex = ex
        self.fn_id, self.payload = fn_id, payload
        self.on_failure = on_failure
        self.capacity = ex.workers
        self.closed = False
        self._tickets = itertools.count()
        self._queue: Deque[_Task] = collections.deque()
        self._running: Dict[int, _Task] = {}
        self._done: Deque[tuple[int, Any]] = collections.deque()
        self._n_pending = 0

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

    # -- scheduling ------------------------------------------------------------------
    def _dispatch(self) -> None:
        for w in list(self.ex._pool):
            if not self._queue:
                return
            if w.ticket is not None or not w.ready:   # wait for "ready": start-up time
                continue                              # must not count against timeout
            task = self._queue.popleft()
            try:
                if self.fn_id not in w.fn_ids:
                    w.conn.send(("fn", self.fn_id, self.payload))
                    w.fn_ids.add(self.fn_id)
                w.conn.send(("task", task.ticket, self.fn_id, task.item, task.seed))
            except (BrokenPipeError, EOFError, OSError):
                self._queue.appendleft(task)   # the worker died before taking it
                self.ex._replace(w)
                continue
            task.attempts += 1
            w.ticket, w.started = task.ticket, time.monotonic()
            self._running[task.ticket] = task

    def _finish(self, task: _Task, value: Any) -> None:
        self._running.pop(task.ticket, None)
        self._done.append((task.ticket, value))

    def _fail(self, task: _Task, status: Literal["timeout", "error"], message: str) -> None:
        self._running.pop(task.ticket, None)
        self._done.append((task.ticket, _Deferred(task.item, Failure(status, message,
                                                                       task.attempts))))

    def _on_death(self, w: _Worker) -> None:
        ticket = w.ticket
        w.proc.join(timeout=1)
        why = _describe_exit(w.proc.exitcode)
        w.ticket = None
        self.ex._replace(w)
        if ticket is None:
            return
        task = self._running.pop(ticket)
        if not w.ready:   # died while starting: not the item's fault, do not charge it
            task.attempts -= 1
            self._queue.appendleft(task)
        elif task.attempts <= self.ex.retries:
            log.warning("%s while evaluating an item; retrying (attempt %d of %d)",
                        why, task.attempts + 1, self.ex.retries + 1)
            self._queue.appendleft(task)
        else:
            self._fail(task, "error", f"{why} while evaluating this item "
                                      f"({task.attempts} attempt(s))")

    def _on_message(self, w: _Worker) -> None:
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):
            self._on_death(w)
            return
        if msg[0] == "ready":
            w.ready = True
            self.ex._startup_failures = 0
            self._dispatch()
            return
        ticket, ok, value = msg
        task = self._running.get(ticket)
        w.ticket = None
        if task is None:   # pragma: no cover - stale message
            return
        if ok:
            self._finish(task, value)
        else:
            self._fail(task, "error", value)

    def _check_timeouts(self) -> None:
        if self.ex.timeout is None:
            return
        now = time.monotonic()
        for w in list(self.ex._pool):
            if w.ticket is not None and now - w.started > self.ex.timeout:
                task = self._running[w.ticket]
                w.ticket = None
                self.ex._replace(w, killed=True)
                self._fail(task, "timeout",
                           f"exceeded the per-evaluation time limit of {self.ex.timeout:g} s "
                           f"(ran {now - w.started:.1f} s); its worker was killed")

    def _wait_timeout(self) -> Optional[float]:
        if self.ex.timeout is None:
            return None
        now = time.monotonic()
        left = [w.started + self.ex.timeout - now for w in self.ex._pool if w.ticket is not None]
        return max(0.0, min(left)) + 0.01 if left else None

    def next_completed(self) -> tuple[int, R]:
        from multiprocessing.connection import wait

        if not self._n_pending:
            raise RuntimeError("next_completed() with nothing pending")
        while not self._done:
            self._dispatch()
            conns = {w.conn: w for w in self.ex._pool}
            sentinels = {w.proc.sentinel: w for w in self.ex._pool}
            ready = wait(list(conns) + list(sentinels), timeout=self._wait_timeout())
            seen: set[int] = set()
            for obj in ready:   # messages first: a worker may answer and then exit
                w = conns.get(obj)
                if w is not None and w in self.ex._pool:
                    seen.add(id(w))
                    self._on_message(w)
            for obj in ready:
                w = sentinels.get(obj)
                if w is not None and w in self.ex._pool and id(w) not in seen:
                    if w.conn.poll():
                        self._on_message(w)
                    if w in self.ex._pool:
                        self._on_death(w)
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
        for w in list(self.ex._pool):   # abandon unfinished items: kill their workers
            if w.ticket is not None:       # (replacements start on the next stream)
                w.ticket = None
                w.kill()
                self.ex._pool.remove(w)
        self._running.clear()
        self._done.clear()
        self._n_pending = 0


@dataclass
class _Deferred:
    """A failure whose conversion (``on_failure``) happens when the caller takes it."""

    item: Any
    failure: Failure


# ----------------------------------------------------------------------------------------
# ray
# ----------------------------------------------------------------------------------------
#: functions already deserialised in this Ray worker process, by id
_RAY_WORKER_FNS: "collections.OrderedDict[str, Any]" = collections.OrderedDict()
#: first value a Ray task yields: tells the driver the item started (its clock starts)
_STARTED = "searchlab-started"


def _ray_task(fn_id: str, fn_box: list, item: Any, seed: int,
              threads: Optional[int]) -> Iterator[Any]:
    """Body of a Ray task (a streaming generator): yield :data:`_STARTED`, then the
    outcome ``(ok, value)`` of ``fn(item)``.

    The first yield lets the driver start the item's time limit when ``fn`` starts, not
    when the task was queued (a fresh Ray worker takes seconds to start and import torch).  ``fn_box`` wraps
    the function's ObjectRef in a list so Ray does not resolve it (deserialising the
    evaluator) for every task; each worker process keeps it by id.
    """
    _set_torch_threads(threads)          # a fresh worker imports torch here: seconds
    fn = _RAY_WORKER_FNS.get(fn_id)
    if fn is None:
        import ray

        fn = ray.get(fn_box[0])
        _RAY_WORKER_FNS[fn_id] = fn
        while len(_RAY_WORKER_FNS) > 4:
            _RAY_WORKER_FNS.popitem(last=False)
    yield _STARTED
    yield _call(fn, item, seed)


@EXECUTORS.register("ray")
class RayExecutor(Executor):
    """Ray tasks, at most ``workers`` in flight, each reserving ``cpus_per_task`` CPUs.

    Without ``address`` (and no Ray already initialised in this process) a local cluster
    is started on first use: ``num_cpus=workers``, no dashboard, usage stats off, every
    port bound to 127.0.0.1, an object store of ``object_store_mb``.  With ``address``
    (``"auto"``, ``"host:port"``) the driver connects to an existing cluster; its
    workers need searchlab importable (installed, or shipped with ``runtime_env``).
    :meth:`close` shuts down only what this executor started.  An item whose worker dies
    is resubmitted as a new task up to ``retries`` times; ``timeout`` counts from the
    moment ``fn`` starts in a worker (worker start-up excluded) and force-cancels the
    task, which kills its worker.
    """

    def __init__(self, workers: int = 2, timeout: Optional[float] = None, retries: int = 1,
                 threads: Optional[int] = 1, address: Optional[str] = None,
                 object_store_mb: int = 256, cpus_per_task: float = 1.0,
                 runtime_env: Optional[dict] = None, log_to_driver: bool = True) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.timeout = timeout
        self.retries = retries
        self.threads = threads
        self.address = address
        self.object_store_mb = object_store_mb
        self.cpus_per_task = cpus_per_task
        self.runtime_env = runtime_env
        self.log_to_driver = log_to_driver
        self._started = False
        self._remote: Any = None
        self._fn_refs: Dict[str, Any] = {}
        self._active: Optional[_RayStream[Any, Any]] = None
        self._patched_constant = False

    def _init(self) -> Any:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray

        if not ray.is_initialized():
            kwargs: dict[str, Any] = dict(logging_level=logging.WARNING,
                                          log_to_driver=self.log_to_driver,
                                          runtime_env=self.runtime_env)
            if self.address:
                ray.init(address=self.address, **kwargs)
            else:
                self._bind_localhost()
                ray.init(num_cpus=self.workers, include_dashboard=False,
                         object_store_memory=self.object_store_mb * 2**20, **kwargs)
            self._started = True
        if self._remote is None:
            self._remote = ray.remote(_ray_task)
        return ray

    def _bind_localhost(self) -> None:
        # Ray binds its servers to the node IP; on Linux that is the machine's reachable
        # address unless "cluster mode" is off, in which case it is the loopback address
        # (what Ray does on macOS/Windows).  Its agents read the variable at import time,
        # the driver reads the constant.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        from ray._private import ray_constants

        if ray_constants.ENABLE_RAY_CLUSTER:
            ray_constants.ENABLE_RAY_CLUSTER = False
            self._patched_constant = True

    def stream(self, fn: Callable[[A], R], *,
               on_failure: Optional[Callable[[A, Failure], R]] = None) -> Stream[A, R]:
        if self._active is not None and not self._active.closed:
            raise RuntimeError("one stream at a time per executor; close the previous one")
        ray = self._init()
        payload = pickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
        fn_id = hashlib.blake2b(payload, digest_size=16).hexdigest()
        if fn_id not in self._fn_refs:
            self._fn_refs = {fn_id: ray.put(fn)}   # keep only the latest in the store
        self._active = _RayStream(self, ray, fn_id, self._fn_refs[fn_id], on_failure)
        return self._active

    def map(self, fn: Callable[[A], R], items: Iterable[A], *,
            on_failure: Optional[Callable[[A, Failure], R]] = None) -> list[R]:
        return self._map_via_stream(fn, items, on_failure)

    def close(self) -> None:
        if self._active is not None:
            self._active.close()
        self._fn_refs = {}
        self._remote = None
        if self._started:
            import ray

            ray.shutdown()
            self._started = False
            if self._patched_constant:
                from ray._private import ray_constants

                ray_constants.ENABLE_RAY_CLUSTER = True
                os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
                self._patched_constant = False


class _RayStream(Stream[A, R]):
    def __init__(self, ex: RayExecutor, ray: Any, fn_id: str, fn_ref: Any,
                 on_failure: Optional[OnFailure]) -> None:
        self.ex, self.ray = ex, ray
        self.fn_id, self.fn_ref = fn_id, fn_ref
        self.on_failure = on_failure
        self.capacity = ex.workers
        self.closed = False
        self._tickets = itertools.count()
        self._queue: Deque[tuple[int, Any]] = collections.deque()
        # generator -> [ticket, item, time fn started (None: not yet), attempts]
        self._running: Dict[Any, list] = {}
        self._done: Deque[tuple[int, Any]] = collections.deque()
        self._n_pending = 0
        # retries are ours, not Ray's: each attempt must report its own start
        self._options = ex._remote.options(num_cpus=ex.cpus_per_task,
                                           num_returns="streaming",
                                           max_retries=0, retry_exceptions=False)
        self._retry: Deque[tuple[int, Any, int]] = collections.deque()

    @property
    def pending(self) -> int:
        return self._n_pending

    def submit(self, item: A) -> int:
        if self.closed:
            raise RuntimeError("stream is closed")
        ticket = next(self._tickets)
        self._queue.append((ticket, item))
        self._n_pending += 1
        self._dispatch()
        return ticket

    def _dispatch(self) -> None:
        while (self._retry or self._queue) and len(self._running) < self.ex.workers:
            if self._retry:
                ticket, item, attempts = self._retry.popleft()
            else:
                (ticket, item), attempts = self._queue.popleft(), 0
            gen = self._options.remote(self.fn_id, [self.fn_ref], item, item_seed(item),
                                       self.ex.threads)
            self._running[gen] = [ticket, item, None, attempts + 1]

    def _advance(self, gen: Any) -> None:
        ticket, item, _, attempts = entry = self._running[gen]
        try:
            value = self.ray.get(next(gen))
        except StopIteration:  # pragma: no cover - the task always yields twice
            value = (False, "Ray task ended without a result")
        except Exception as e:   # worker crash, OOM kill, node death
            del self._running[gen]
            first = (str(e).strip().splitlines() or [""])[0]
            if attempts <= self.ex.retries:
                log.warning("Ray task failed (%s); retrying (attempt %d of %d)",
                            type(e).__name__, attempts + 1, self.ex.retries + 1)
                self._retry.append((ticket, item, attempts))
                return
            self._done.append((ticket, _Deferred(item, Failure(
                "error", f"Ray task failed ({type(e).__name__}: {first}) on "
                         f"{attempts} attempt(s)", attempts))))
            return
        if isinstance(value, str) and value == _STARTED:
            if entry[2] is None:
                entry[2] = time.monotonic()
            return
        del self._running[gen]
        ok, payload = value
        self._done.append((ticket, payload if ok else _Deferred(item, Failure("error", payload))))

    def _wait_timeout(self) -> Optional[float]:
        if self.ex.timeout is None:
            return None
        now = time.monotonic()
        left = [t0 + self.ex.timeout - now for _, _, t0, _ in self._running.values()
                if t0 is not None]
        return max(0.0, min(left)) + 0.01 if left else 1.0

    def _check_timeouts(self) -> None:
        if self.ex.timeout is None:
            return
        now = time.monotonic()
        for gen, (ticket, item, t0, attempts) in list(self._running.items()):
            if t0 is not None and now - t0 > self.ex.timeout:
                self.ray.cancel(gen, force=True)   # kills the worker process
                del self._running[gen]
                self._done.append((ticket, _Deferred(item, Failure(
                    "timeout", f"exceeded the per-evaluation time limit of "
                               f"{self.ex.timeout:g} s (ran {now - t0:.1f} s); "
                               f"its Ray task was cancelled", attempts))))

    def next_completed(self) -> tuple[int, R]:
        if not self._n_pending:
            raise RuntimeError("next_completed() with nothing pending")
        while not self._done:
            self._dispatch()
            ready, _ = self.ray.wait(list(self._running), num_returns=1,
                                     timeout=self._wait_timeout())
            for gen in ready:
                self._advance(gen)
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
        for gen in list(self._running):
            try:
                self.ray.cancel(gen, force=True)
            except Exception:  # pragma: no cover - already finished
                pass
        self._running.clear()
        self._queue.clear()
        self._retry.clear()
        self._done.clear()
        self._n_pending = 0
