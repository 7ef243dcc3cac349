"""The ``ray`` executor: Ray tasks on a local cluster started for the search
(``ray.init()`` with ``num_cpus=workers``, no dashboard, bound to 127.0.0.1) or on an
existing cluster (``address="auto"`` or ``"host:port"``).

A task whose worker dies is submitted again as a new task up to ``retries`` times; an item
running longer than ``timeout`` seconds is cancelled with ``ray.cancel(force=True)``, which
kills its worker.  The scheduling (queue, retries, time limits) is
:class:`~.base.PooledStream`'s; this module holds the cluster and the task protocol.
Ray is imported only when the executor is first used.
"""
# Named ray_backend, not ray: this module does `import ray`, and a file ray.py inside
# searchlab/executors/ would read as importing itself (it would not: imports are absolute),
# shadow the real package for anyone who puts this folder on sys.path, and make
# `searchlab.executors.ray` mean this module rather than Ray.

from __future__ import annotations

import collections
import logging
import os
import time
from typing import Any, Callable, Dict, Iterator, Optional

from .base import A, OnFailure, PooledExecutor, PooledStream, R, _call, _set_torch_threads, _Task

#: functions already deserialised in this Ray worker process, by id
_RAY_WORKER_FNS: "collections.OrderedDict[str, Any]" = collections.OrderedDict()
#: first value a Ray task yields: tells the driver the item started (its clock starts)
_STARTED = "searchlab-started"


def _ray_task(fn_id: str, fn_box: list, item: Any, seed: int,
              threads: Optional[int]) -> Iterator[Any]:
    """Body of a Ray task (a streaming generator): yield :data:`_STARTED`, then the
    outcome ``(ok, value)`` of ``fn(item)``.

    The first yield lets the driver start the item's time limit when ``fn`` starts, not
    when the task was queued (a fresh Ray worker takes seconds to start and import torch).
    ``fn_box`` wraps the function's ObjectRef in a list so Ray does not resolve it
    (deserialising the evaluator) for every task; each worker process keeps it by id.
    Ray workers import this function by module path: it must stay at module level.
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


class RayExecutor(PooledExecutor):
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
        super().__init__(workers, timeout, retries, threads)
        # the cluster: where it is, what its workers get, how its tasks run
        self.address, self.object_store_mb = address, object_store_mb
        self.runtime_env, self.log_to_driver = runtime_env, log_to_driver
        self.cpus_per_task = cpus_per_task
        # what this executor started, and the remote function and evaluator it holds
        self._started = self._patched_constant = False
        self._remote: Any = None
        self._fn_refs: Dict[str, Any] = {}

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

    def _open(self, fn: Callable[[A], R], fn_id: str, payload: bytes,
              on_failure: Optional[OnFailure]) -> "_RayStream[A, R]":
        ray = self._init()
        if fn_id not in self._fn_refs:
            self._fn_refs = {fn_id: ray.put(fn)}   # keep only the latest in the store
        return _RayStream(self, ray, fn_id, self._fn_refs[fn_id], on_failure)

    def close(self) -> None:
        super().close()
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


class _RayStream(PooledStream[A, R]):
    """A stream of Ray tasks; ``task.handle`` is the task's streaming generator."""

    #: a task's clock starts with its first yield: poll while none has started
    _idle_wait = 1.0
    _kill_note = "its Ray task was cancelled"

    def __init__(self, ex: RayExecutor, ray: Any, fn_id: str, fn_ref: Any,
                 on_failure: Optional[OnFailure]) -> None:
        super().__init__(ex, on_failure)
        self.ex: RayExecutor = ex
        self.ray = ray
        self.fn_id, self.fn_ref = fn_id, fn_ref
        # retries are ours, not Ray's: each attempt must report its own start
        self._options = ex._remote.options(num_cpus=ex.cpus_per_task,
                                           num_returns="streaming",
                                           max_retries=0, retry_exceptions=False)

    # -- primitives ------------------------------------------------------------------
    def _idle_workers(self) -> Iterator[None]:
        while len(self._running) < self.ex.workers:
            yield None

    def _start(self, task: _Task, slot: None) -> bool:
        task.handle = self._options.remote(self.fn_id, [self.fn_ref], task.item, task.seed,
                                           self.ex.threads)
        return True

    def _kill(self, task: _Task, closing: bool) -> None:
        try:
            self.ray.cancel(task.handle, force=True)   # kills the worker process
        except Exception:  # pragma: no cover - already finished
            if not closing:
                raise

    def _wait(self, timeout: Optional[float]) -> None:
        by_gen = {task.handle: task for task in self._running.values()}
        ready, _ = self.ray.wait(list(by_gen), num_returns=1, timeout=timeout)
        for gen in ready:
            self._advance(by_gen[gen])

    # -- events ----------------------------------------------------------------------
    def _advance(self, task: _Task) -> None:
        try:
            value = self.ray.get(next(task.handle))
        except StopIteration:  # pragma: no cover - the task always yields twice
            value = (False, "Ray task ended without a result")
        except Exception as e:   # worker crash, OOM kill, node death
            first = (str(e).strip().splitlines() or [""])[0]
            self._lost(task, f"Ray task failed ({type(e).__name__}: {first})")
            return
        if isinstance(value, str) and value == _STARTED:
            if task.started is None:
                task.started = time.monotonic()
            return
        ok, payload = value
        if ok:
            self._finish(task, payload)
        else:
            self._fail(task, "error", payload)
