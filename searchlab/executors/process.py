"""The ``process`` executor: a local pool of ``spawn``-ed worker processes that searchlab
manages itself, one duplex pipe per worker (the default when ``workers > 1``).

A worker that dies (``os._exit``, segfault, OOM kill) is replaced alone and costs only its
item, which is started again on another worker up to ``retries`` times; an item running
longer than ``timeout`` seconds gets its worker killed with SIGKILL.  Workers are daemonic
processes: an evaluation cannot start processes of its own there (in-memory data needs
none).  The scheduling (queue, retries, time limits) is :class:`~.base.PooledStream`'s;
this module holds the workers and the pipe protocol.

:func:`_worker_main` is the target of every worker: it must stay a module-level function
of an importable module, since ``spawn`` pickles it by reference.
"""

from __future__ import annotations

import collections
import os
import pickle
import signal
import time
import traceback
from typing import Any, Callable, Iterator, Optional

from .base import (A, OnFailure, PooledExecutor, PooledStream, R, _call, _set_torch_threads,
                   _Task)

#: environment variables that cap native thread pools in workers (set before torch loads)
_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


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
        #: the ticket of the item it is evaluating (None: idle)
        self.ticket: Optional[int] = None

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


class ProcessExecutor(PooledExecutor):
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
        import multiprocessing

        super().__init__(workers, timeout, retries, threads)
        self._ctx = multiprocessing.get_context(start_method)
        self._pool: list[_Worker] = []
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

    def _open(self, fn: Callable[[A], R], fn_id: str, payload: bytes,
              on_failure: Optional[OnFailure]) -> "_ProcessStream[A, R]":
        self._ensure_pool()
        return _ProcessStream(self, fn_id, payload, on_failure)

    def close(self) -> None:
        super().close()
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


class _ProcessStream(PooledStream[A, R]):
    """A stream over the executor's worker pool; ``task.handle`` is the :class:`_Worker`."""

    def __init__(self, ex: ProcessExecutor, fn_id: str, payload: bytes,
                 on_failure: Optional[OnFailure]) -> None:
        super().__init__(ex, on_failure)
        self.ex: ProcessExecutor = ex
        self.fn_id, self.payload = fn_id, payload

    # -- primitives ------------------------------------------------------------------
    def _idle_workers(self) -> Iterator[_Worker]:
        for w in list(self.ex._pool):
            # wait for "ready": start-up time must not count against the time limit
            if w.ticket is None and w.ready:
                yield w

    def _start(self, task: _Task, w: _Worker) -> bool:
        try:
            if self.fn_id not in w.fn_ids:
                w.conn.send(("fn", self.fn_id, self.payload))
                w.fn_ids.add(self.fn_id)
            w.conn.send(("task", task.ticket, self.fn_id, task.item, task.seed))
        except (BrokenPipeError, EOFError, OSError):
            self.ex._replace(w)
            return False
        w.ticket, task.handle, task.started = task.ticket, w, time.monotonic()
        return True

    def _kill(self, task: _Task, closing: bool) -> None:
        w: _Worker = task.handle
        w.ticket = None
        if closing:      # replacements start with the next stream
            w.kill()
            self.ex._pool.remove(w)
        else:
            self.ex._replace(w, killed=True)

    def _wait(self, timeout: Optional[float]) -> None:
        from multiprocessing.connection import wait

        conns = {w.conn: w for w in self.ex._pool}
        sentinels = {w.proc.sentinel: w for w in self.ex._pool}
        ready = wait(list(conns) + list(sentinels), timeout=timeout)
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

    # -- events ----------------------------------------------------------------------
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

    def _on_death(self, w: _Worker) -> None:
        ticket = w.ticket
        w.proc.join(timeout=1)
        why = _describe_exit(w.proc.exitcode)
        w.ticket = None
        self.ex._replace(w)
        if ticket is None:
            return
        # a worker that died while starting did not die of the item: do not charge it
        self._lost(self._running[ticket], f"{why} while evaluating this item",
                   charge=w.ready)
