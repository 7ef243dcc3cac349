"""The MLflow tracker: one parent run per search, one nested run per sample; and the
MLflow side of comparison reports (:func:`log_report`, :func:`load_runs_from_mlflow`).

Layout::

    experiment  (one per search or comparison)
    └── parent run  <strategy>-<task>-<fidelity>-s<seed>
          params   the flattened config (strategy.name, budget, ...)
          tags     strategy, task, fidelity, seed, searchlab.version, searchlab.git_commit,
                   searchlab.cpu_kernels (torch's CPU kernels: searchlab.kernels)
          metrics  search/reward, search/best_reward (step = sample index),
                   summary numbers at the end (search/unique, time/search_s, ...)
          artifacts results.csv, results.json, best_rules.md, best_rules.json
          └── child run per sample  "0007 exp(sign(g)*sign(m))*g"
                params  rule, tokens, key, status, cached, seed, task, fidelity
                metrics reward, best_lr, seconds, sample (+ val_loss, val_acc)

Speed.  Through the client API a nested run costs three calls (``create_run``,
``log_batch``, ``set_terminated``), about thirty SQL statements and six commits.  So:

* the local sqlite store runs in WAL mode without an fsync per commit (:func:`_fast_sqlite`);
* for a SQL store, each batch's nested runs are written in ONE transaction with MLflow's
  own ORM models (:class:`_SqlBatch`), falling back to the client API on any failure
  and for tracking servers;
* the parent's metrics of the batches logged within ``FLUSH_SECONDS`` go in one
  transaction (a multi-row insert for a SQL store, :meth:`_SqlBatch.write_metrics`; one
  ``log_batch`` per 1,000 metrics otherwise);
* by default everything is written from one background thread of the main process, so
  the writes overlap the next evaluations; ``finish`` waits for the queue to drain.

``bench/tracking.py`` measures the overhead (BENCHMARKS.md).

Where.  ``uri`` (config ``tracking.uri``), else ``$MLFLOW_TRACKING_URI``, else a local
store ``sqlite:///<run_dir>/mlflow.db`` with artifacts in ``<run_dir>/artifacts/`` (no
server needed; ``searchlab ui`` opens it).  :func:`check_tracking_uri` fails fast with one
clear :class:`TrackingError` when the store cannot be reached, before a search starts.

Safety.  Searches started together may share one local store: every client opens it
under an exclusive file lock (:func:`store_lock`, ``<run_dir>/mlflow.db.lock``), so only
one process at a time creates or migrates its tables.  An existing ``mlflow.db`` that is
not a sqlite database stops the search before it starts (:func:`check_tracking_uri`);
any failure of the store is a one-line :class:`TrackingError`.  If the store is deleted
or replaced during a search, ``finish`` says so in :attr:`MlflowTracker.error` (the CLI
exits non-zero; ``searchlab relog <run folder>`` logs the run folder's files again).
Importing this module turns MLflow's telemetry and Ray's usage stats off unless the
user set the variables (:func:`disable_telemetry`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import re
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from . import kernels
from .result import to_jsonable
from .tracking import TRACKERS, Tracker

if TYPE_CHECKING:
    from .result import Result
    from .runfiles import RunRecord

__all__ = ["MlflowTracker", "REPORT_METRICS", "TrackingError", "check_tracking_uri",
           "disable_telemetry", "git_commit", "load_runs_from_mlflow", "log_report",
           "local_store_uri", "open_client", "resolve_tracking_uri", "store_lock"]

log = logging.getLogger(__name__)

#: MLflow limits (3.x): params per log_batch call, metrics per call, value lengths.
_MAX_PARAMS, _MAX_METRICS, _MAX_TAGS = 100, 1000, 100
_PARAM_LEN, _TAG_LEN, _RUN_NAME_LEN = 6000, 8000, 200


class TrackingError(RuntimeError):
    """The tracking store cannot be used (unreachable server, unwritable directory...)."""


# --- telemetry ------------------------------------------------------------------------
def disable_telemetry(env: "os._Environ[str] | dict[str, str] | None" = None) -> None:
    """Turn off MLflow's telemetry and Ray's usage stats in ``env`` (default
    ``os.environ``), unless the user chose: a variable already set wins.

    MLflow reads ``MLFLOW_DISABLE_TELEMETRY`` or ``DO_NOT_TRACK`` when ``mlflow`` is
    imported (it then looks up its telemetry host from a thread), so this runs when this
    module is imported, before searchlab imports MLflow; if ``mlflow`` was imported
    earlier, its telemetry client is re-initialised (off).  Either MLflow variable set by
    the user (``MLFLOW_DISABLE_TELEMETRY=false`` opts in) leaves both untouched.
    """
    target = os.environ if env is None else env
    changed = False
    if "MLFLOW_DISABLE_TELEMETRY" not in target and "DO_NOT_TRACK" not in target:
        target["MLFLOW_DISABLE_TELEMETRY"] = "true"
        target["DO_NOT_TRACK"] = "true"
        changed = True
    target.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if changed and env is None:
        import sys

        telemetry = sys.modules.get("mlflow.telemetry")
        if telemetry is not None:
            try:
                telemetry.set_telemetry_client()    # re-reads the variables: now off
            except Exception:  # noqa: BLE001 - best effort
                pass


disable_telemetry()


# --- where ----------------------------------------------------------------------------
def local_store_uri(run_dir: str | os.PathLike[str]) -> str:
    """The default local store: ``sqlite:///<absolute run_dir>/mlflow.db``."""
    return "sqlite:///" + str((Path(run_dir) / "mlflow.db").resolve())


def resolve_tracking_uri(uri: str | None, run_dir: str | os.PathLike[str]) -> str:
    """Config ``tracking.uri`` > ``$MLFLOW_TRACKING_URI`` > the local store in ``run_dir``."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or local_store_uri(run_dir)


def _sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):] or ".")
    return None


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`TrackingError` (one clear line) if the store at ``uri`` is unusable.

    ``sqlite:`` -- the database's directory must be creatable and writable; ``http(s):`` --
    the server must answer ``GET /health`` within ``timeout`` seconds; other schemes -- one
    cheap client call must succeed.
    """
    hint = ("set tracking.uri=... or MLFLOW_TRACKING_URI to a reachable store, "
            "or tracking=none to log nothing")
    db = _sqlite_path(uri)
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrackingError(f"MLflow store {uri!r}: cannot create directory "
                                f"{str(db.parent)!r} ({e.strerror}); {hint}") from None
        if not os.access(db.parent, os.W_OK):
            raise TrackingError(f"MLflow store {uri!r}: directory {str(db.parent)!r} is not "
                                f"writable; {hint}")
        _check_sqlite_file(db)
        return
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - user's URI
                if resp.status >= 400:
                    raise TrackingError(f"MLflow tracking server {uri} answered "
                                        f"HTTP {resp.status} on /health; {hint}")
        except urllib.error.HTTPError as e:
            raise TrackingError(f"MLflow tracking server {uri} answered HTTP {e.code} on "
                                f"/health; {hint}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise TrackingError(f"MLflow tracking server {uri} is unreachable ({reason}); "
                                f"{hint}") from None
        return
    try:
        open_client(uri).search_experiments(max_results=1)
    except TrackingError:
        raise
    except Exception as e:  # noqa: BLE001 - any backend failure means "unusable"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrackingError(f"MLflow store {uri!r} is not usable ({first}); {hint}") from None


def _check_sqlite_file(db: Path) -> None:
    """Raise :class:`TrackingError` when an existing ``db`` is not a readable sqlite
    database (garbage, a truncated copy): one line naming the file and what to do."""
    import sqlite3

    if not db.is_file() or db.stat().st_size == 0:
        return                      # created on first use
    try:
        with open(db, "rb") as f:
            header = f.read(16)
        if header != b"SQLite format 3\x00":
            raise sqlite3.DatabaseError("file is not a database")
        conn = sqlite3.connect(str(db), timeout=30.0)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return                      # busy or locked: not corrupt; MLflow will wait or say
    except (sqlite3.DatabaseError, OSError) as e:
        raise TrackingError(
            f"MLflow store {str(db)!r} is not a valid sqlite database ({e}); move it aside "
            f"(mv {db} {db}.bad) and run again to start a new store (run folders keep "
            "every search's files: `searchlab relog <run folder>` logs one again), or set "
            "tracking.uri=... or tracking=none") from None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock (``fcntl.flock`` on ``<db>.lock``, e.g. ``mlflow.db.lock``)
    around opening a local sqlite store: MLflow creates and migrates a new store's tables
    when it first opens it (alembic), and processes doing that at once corrupt it
    ("table ... already exists", "duplicate column name").  Other stores: no lock."""
    db = _sqlite_path(uri)
    if db is None:
        yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(str(db) + ".lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def open_client(uri: str) -> Any:
    """An ``MlflowClient`` for ``uri``: telemetry off (:func:`disable_telemetry`), quiet
    logs, a local sqlite store in WAL mode (:func:`_fast_sqlite`) and opened -- created
    and migrated if new -- under :func:`store_lock`.  Raises :class:`TrackingError`."""
    disable_telemetry()
    _quiet_mlflow_logs()
    db = _sqlite_path(uri)
    if db is not None:
        _fast_sqlite(db)
    try:
        from mlflow import MlflowClient

        with store_lock(uri):
            return MlflowClient(uri)
    except Exception as e:  # noqa: BLE001 - any backend failure: one line
        raise TrackingError(f"MLflow store {uri!r} cannot be opened ({_first_line(e)}); "
                            "set tracking.uri=... or MLFLOW_TRACKING_URI to a usable store, "
                            "or tracking=none to log nothing") from None


def git_commit(path: str | os.PathLike[str] | None = None) -> str | None:
    """The git commit of the searchlab checkout (None outside a git checkout)."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None


_FAST_SQLITE: set[str] = set()
_FAST_SQLITE_LOCK = threading.Lock()


def _fast_sqlite(db: Path) -> None:
    """Put searchlab's local MLflow store in WAL mode with ``synchronous=NORMAL``.

    MLflow commits about six times per nested run; with SQLite's default rollback journal
    and ``synchronous=FULL`` every commit waits for an fsync (~10-20 ms each on this kind
    of disk).  In WAL mode with ``synchronous=NORMAL`` commits do not fsync (the database
    stays consistent; a power cut can lose the last commits, which the run's local files
    still hold), and the UI can read while a search writes.  Only connections to stores
    registered here are touched (a SQLAlchemy ``connect`` listener checks the file).
    """
    path = str(db.resolve())
    with _FAST_SQLITE_LOCK:
        if not _FAST_SQLITE:
            from sqlalchemy import event
            from sqlalchemy.engine import Engine

            event.listen(Engine, "connect", _on_connect)
        _FAST_SQLITE.add(path)


def _on_connect(dbapi_conn: Any, _record: Any) -> None:
    import sqlite3

    if not isinstance(dbapi_conn, sqlite3.Connection):
        return
    try:
        files = [row[2] for row in dbapi_conn.execute("PRAGMA database_list").fetchall()]
        if not any(f and os.path.realpath(f) in _FAST_SQLITE for f in files):
            return
        dbapi_conn.execute("PRAGMA journal_mode=WAL").fetchall()
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.Error:
        pass  # e.g. a file system without WAL support: keep SQLite's defaults


def _quiet_mlflow_logs() -> None:
    # "Creating initial MLflow database tables..." and alembic chatter on a new store
    for name in ("mlflow.store.db.utils", "alembic", "alembic.runtime.migration",
                 "mlflow.tracking._tracking_service.client"):
        logging.getLogger(name).setLevel(logging.WARNING)


# --- the background writer --------------------------------------------------------------
class _Writer:
    """Runs MLflow calls in order, in one background thread (or inline).

    The first exception stops further writes; it is kept in ``error`` and reported by the
    tracker (once as a warning, then in ``MlflowTracker.error`` after ``finish``).
    """

    def __init__(self, background: bool) -> None:
        self.error: BaseException | None = None
        self.seconds = 0.0                      # time spent in MLflow calls
        self.cpu_seconds = 0.0                  # CPU time of the writing thread in them
        self._queue: queue.Queue[Callable[[], None] | None] | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._queue = queue.Queue()
            self._thread = threading.Thread(target=self._loop, name="searchlab-mlflow",
                                            daemon=True)
            self._thread.start()

    def _run(self, job: Callable[[], None]) -> None:
        if self.error is not None:
            return
        t, c = time.perf_counter(), time.thread_time()
        try:
            job()
        except Exception as e:  # noqa: BLE001 - reported by the tracker
            self.error = e
        finally:
            self.seconds += time.perf_counter() - t
            self.cpu_seconds += time.thread_time() - c

    def _loop(self) -> None:
        assert self._queue is not None
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self._run(job)
            finally:
                self._queue.task_done()

    def submit(self, job: Callable[[], None]) -> None:
        if self._queue is None:
            self._run(job)
        else:
            self._queue.put(job)

    def pending(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def drain(self) -> None:
        if self._queue is not None:
            self._queue.join()

    def close(self) -> None:
        if self._queue is not None and self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


# --- the tracker ----------------------------------------------------------------------
def _clip(text: Any, limit: int) -> str:
    s = "" if text is None else str(text)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _param_value(v: Any) -> str:
    if isinstance(v, (list, tuple, dict)):
        return _clip(json.dumps(v, default=str, separators=(",", ":")), _PARAM_LEN)
    return _clip(v, _PARAM_LEN)


_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")


def _key(k: str) -> str:
    """MLflow keys allow alphanumerics, ``_ - . space /``."""
    return _KEY_BAD.sub("_", str(k))[:250]


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


#: batches of samples logged faster than this are written to the store together: a search
#: on a table logs a 10-rule batch every few milliseconds, and one ``log_batch`` per batch
#: was most of its MLflow cost (100 transactions per 1,000 samples).  A batch with nested
#: runs, ``finish`` and ``abort`` write at once; metrics held when a process dies are
#: logged again by ``resume`` (it logs the checkpointed samples the store lacks).
FLUSH_SECONDS = 1.0


@TRACKERS.register("mlflow")
class MlflowTracker(Tracker):
    """Logs a search to MLflow (see the module docstring for the layout).

    Args:
        uri: tracking URI (None: ``$MLFLOW_TRACKING_URI``, else the local store in ``run_dir``).
        experiment: experiment name (created if missing).
        run_name: the parent run's name.
        run_dir: directory of the default local store and its artifacts.
        child_runs: one nested run per sample (False: only the parent's metrics and tables).
        background: write from a background thread (True) or inline (False).
        top_k: best rules written to ``best_rules.md``/``.json``.
        check: check the store is reachable when constructed (fail before the search).
        bulk: for a SQL store, write each batch's nested runs and metric rows in one
            transaction (:class:`_SqlBatch`); False: always through the client API.
    """

    def __init__(self, uri: str | None = None, experiment: str = "searchlab",
                 run_name: str | None = None, run_dir: str | os.PathLike[str] = "runs",
                 child_runs: bool = True, background: bool = True, top_k: int = 5,
                 check: bool = True, bulk: bool = True, **_: Any) -> None:
        self.run_dir = Path(run_dir)
        self.uri = resolve_tracking_uri(uri, self.run_dir)
        self.experiment = experiment
        self.run_name = run_name
        self.child_runs = child_runs
        self.top_k = top_k
        self.background = background
        #: write nested runs and metric rows of a SQL store in one transaction per batch
        #: (see _SqlBatch)
        self.bulk = bulk
        self._bulk: _SqlBatch | None = None
        if self.uri.startswith(("http://", "https://")):
            # fail within seconds, not minutes, when the server goes away mid-search
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
        if check:
            check_tracking_uri(self.uri)
        self.client: Any = None
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        self._writer: _Writer | None = None
        self._results: list[Result] = []
        self._indices: list[int] = []
        #: metrics of batches logged within FLUSH_SECONDS of the last write, not queued yet
        self._pending: list[Any] = []
        self._flushed = -math.inf
        self._best = -math.inf
        self._cpu = 0.0                # cumulative CPU-seconds of the samples logged
        self._warned = False
        #: seconds spent inside start/log/finish in the calling thread
        self.seconds_main = 0.0
        #: set by ``finish`` when some writes failed (one line), else None
        self.error: str | None = None
        #: (device, inode) of the local sqlite store when opened (see ``store_lost``)
        self._store_id: tuple[int, int] | None = None

    # -- helpers ---------------------------------------------------------------------
    def _artifact_location(self) -> str | None:
        db = _sqlite_path(self.uri)
        if db is None:
            return None                      # a server or other store decides
        safe = re.sub(r"[^A-Za-z0-9_.\-]+", "_", self.experiment).strip("_") or "experiment"
        return (db.resolve().parent / "artifacts" / safe).as_uri()

    def _client(self) -> Any:
        if self.client is None:
            self.client = open_client(self.uri)
            self._store_id = _file_id(_sqlite_path(self.uri))
        return self.client

    def ensure_experiment(self) -> str:
        """The experiment's id (created, with artifacts beside a local store, if missing)."""
        if self.experiment_id is None:
            client = self._client()
            try:
                exp = client.get_experiment_by_name(self.experiment)
                if exp is None:
                    try:
                        # "custom_model_development": a training-runs experiment, not GenAI
                        self.experiment_id = client.create_experiment(
                            self.experiment, artifact_location=self._artifact_location(),
                            tags={"mlflow.experimentKind": "custom_model_development"})
                    except Exception:  # noqa: BLE001 - created meanwhile by another search?
                        exp = client.get_experiment_by_name(self.experiment)
                        if exp is None:
                            raise
                        self.experiment_id = exp.experiment_id
                else:
                    self.experiment_id = exp.experiment_id
            except Exception as e:  # noqa: BLE001
                raise TrackingError(f"MLflow store {self.uri!r}: cannot open experiment "
                                    f"{self.experiment!r} ({_first_line(e)})") from None
        return self.experiment_id

    def store_lost(self) -> str | None:
        """Why the store no longer holds this search's run (None while it does): the
        local sqlite file was deleted or replaced since it was opened, or the parent run
        cannot be read back."""
        db = _sqlite_path(self.uri)
        if db is not None and self._store_id is not None:
            now = _file_id(db)
            if now is None:
                return f"the MLflow store {str(db)!r} was deleted during the search"
            if now != self._store_id:
                return f"the MLflow store {str(db)!r} was replaced during the search"
            return None
        if self.run_id is None or self.client is None:
            return None
        try:
            self.client.get_run(self.run_id)
        except Exception as e:  # noqa: BLE001
            return (f"the MLflow run {self.run_id} cannot be read back from {self.uri!r} "
                    f"({_first_line(e)})")
        return None

    def _check_writer(self) -> None:
        w = self._writer
        if w is not None and w.error is not None and not self._warned:
            self._warned = True
            warnings.warn(f"MLflow logging stopped ({_first_line(w.error)}); the search goes "
                          "on and its results are still written to the output folder",
                          RuntimeWarning, stacklevel=3)

    # -- Tracker interface -----------------------------------------------------------
    def start(self, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        """Create the experiment (if needed) and the parent run, synchronously."""
        t0 = time.perf_counter()
        from mlflow.entities import Param

        from . import __version__

        client = self._client()
        exp_id = self.ensure_experiment()
        all_tags = {str(k): _clip(v, _TAG_LEN) for k, v in tags.items()}
        all_tags.setdefault("searchlab.version", __version__)
        all_tags.setdefault("searchlab.cpu_kernels", kernels.current())
        all_tags.setdefault("searchlab.cpu_vendor", kernels.cpu_vendor())  # rounding: kernels
        commit = git_commit()
        if commit:
            all_tags.setdefault("searchlab.git_commit", commit)
            all_tags.setdefault("mlflow.source.git.commit", commit)
        all_tags.setdefault("searchlab.role", "search")
        try:
            run = client.create_run(exp_id, run_name=_clip(self.run_name, _RUN_NAME_LEN) or None,
                                    tags=all_tags)
        except Exception as e:  # noqa: BLE001
            raise TrackingError(f"MLflow store {self.uri!r}: cannot create a run "
                                f"({_first_line(e)})") from None
        self.run_id = run.info.run_id
        ps = [Param(_key(k), _param_value(v)) for k, v in params.items()]
        try:
            for i in range(0, len(ps), _MAX_PARAMS):
                client.log_batch(self.run_id, params=ps[i:i + _MAX_PARAMS])
        except Exception as e:  # noqa: BLE001
            raise TrackingError(f"MLflow store {self.uri!r}: cannot log the search's "
                                f"parameters ({_first_line(e)})") from None
        self._writer = _Writer(self.background)
        self._results, self._indices, self._best, self._cpu = [], [], -math.inf, 0.0
        self._pending, self._flushed = [], -math.inf
        self.seconds_main += time.perf_counter() - t0

    def log(self, results: Sequence["Result"], first_index: int) -> None:
        """Queue one batch of samples: parent metrics and one child run per sample."""
        if self.run_id is None:
            raise RuntimeError("MlflowTracker.log called before start")
        t0 = time.perf_counter()
        from mlflow.entities import Metric

        self._check_writer()
        now = int(time.time() * 1000)
        metrics = []
        for j, r in enumerate(results):
            i = first_index + j
            self._results.append(r)
            self._indices.append(i)
            reward = float(r.reward) if _finite(r.reward) else float("nan")
            if reward == reward:
                self._best = max(self._best, reward)
            cpu = r.extra.get("cpu_seconds") if isinstance(r.extra, dict) else None
            self._cpu += float(cpu) if _finite(cpu) else 0.0
            if i in self._present_steps:   # resumed: the store has it already
                continue
            metrics.append(Metric("search/reward", reward, now, i))
            if self._best > -math.inf:
                metrics.append(Metric("search/best_reward", self._best, now, i))
            # the three clocks (the step is the unique-evaluation index)
            asked = r.extra.get("asked") if isinstance(r.extra, dict) else None
            if _finite(asked):
                metrics.append(Metric("search/asked", float(asked), now, i))
            metrics.append(Metric("search/cpu_seconds", self._cpu, now, i))
        payload = ([(first_index + j, r) for j, r in enumerate(results)
                    if first_index + j not in self._present_children]
                   if self.child_runs else [])
        self._pending.extend(metrics)
        if payload or time.perf_counter() - self._flushed >= FLUSH_SECONDS:
            self._flush(payload, now)
        self.seconds_main += time.perf_counter() - t0

    def _flush(self, payload: Sequence[tuple[int, "Result"]] = (), now: int = 0) -> None:
        """Queue the held metrics (and ``payload``'s nested runs) as one writer job."""
        metrics, self._pending = self._pending, []
        self._flushed = time.perf_counter()
        if not metrics and not payload:
            return
        run_id = self.run_id

        def job() -> None:
            if metrics:
                self._write_metrics(run_id, metrics)
            if payload:
                self._write_children(run_id, payload, now)

        self._writer.submit(job)  # type: ignore[union-attr]

    def _sql(self) -> "_SqlBatch | None":
        """The bulk SQL writer of this store (built once), or None: not a SQL store,
        ``bulk=False``, or an earlier bulk write failed."""
        if self.bulk and self._bulk is None:
            try:
                self._bulk = _SqlBatch(self.client, self.experiment_id)  # type: ignore[arg-type]
            except Exception as e:  # noqa: BLE001 - any store or MLflow version without it
                log.debug("writing through the client API (%s)", _first_line(e))
                self.bulk = False
        return self._bulk

    def _bulk_failed(self, e: Exception) -> None:
        log.warning("MLflow bulk write failed (%s); using the client API", _first_line(e))
        self._bulk, self.bulk = None, False

    def _write_metrics(self, run_id: str, metrics: Sequence[Any]) -> None:
        """The parent run's metric rows (writer thread): one insert for a SQL store, else
        (or after a failure of that path) ``log_batch`` in chunks of ``_MAX_METRICS``."""
        bulk = self._sql()
        if bulk is not None:
            try:
                bulk.write_metrics(run_id, metrics)
                return
            except Exception as e:  # noqa: BLE001 - rolled back: log them the standard way
                self._bulk_failed(e)
        for k in range(0, len(metrics), _MAX_METRICS):
            self.client.log_batch(run_id, metrics=metrics[k:k + _MAX_METRICS])

    def _write_children(self, parent_id: str, items: Sequence[tuple[int, "Result"]],
                        now: int) -> None:
        """Nested runs for ``items`` (writer thread): one transaction for a SQL store,
        else (or after a failure of that path) the client API, one run at a time."""
        bulk = self._sql()
        if bulk is not None:
            try:
                bulk.write(parent_id, items, now)
                return
            except Exception as e:  # noqa: BLE001 - rolled back: log them the standard way
                self._bulk_failed(e)
        for i, r in items:
            _log_child(self.client, self.experiment_id, parent_id, i, r, now)  # type: ignore[arg-type]

    # -- checkpoint/resume (searchlab.checkpoint) -------------------------------------
    #: sample indices a resumed run already holds (child runs / search/reward steps)
    _present_children: frozenset[int] | set[int] = frozenset()
    _present_steps: frozenset[int] | set[int] = frozenset()

    def state_dict(self) -> dict[str, Any]:
        """The parent run to continue after a crash (kept in the search's checkpoint)."""
        return {"uri": self.uri, "experiment": self.experiment,
                "experiment_id": self.experiment_id, "run_id": self.run_id}

    def resume(self, state: Mapping[str, Any], params: Mapping[str, Any],
               tags: Mapping[str, str], results: Sequence["Result"]) -> None:
        """Reopen the parent run of a checkpointed search in the same store.

        Samples the store already holds are not logged again; checkpointed samples it
        lacks (writes still queued when the process died) are logged now.  Without a
        usable run (another store, run deleted) a new parent run is started instead.
        """
        run_id = state.get("run_id")
        if not run_id or state.get("uri") != self.uri:
            return super().resume(state, params, tags, results)
        t0 = time.perf_counter()
        client = self._client()
        try:
            run = client.get_run(run_id)
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"cannot reopen MLflow run {run_id} ({_first_line(e)}); logging "
                          "the resumed search to a new run", RuntimeWarning, stacklevel=2)
            return super().resume(state, params, tags, results)
        self.run_id, self.experiment_id = run_id, run.info.experiment_id
        children: set[int] = set()
        try:
            client.update_run(run_id, status="RUNNING")
            token = None
            while True:
                page = client.search_runs([self.experiment_id],
                                          f"tags.`mlflow.parentRunId` = '{run_id}'",
                                          max_results=1000, page_token=token)
                children.update(int(r.data.tags["sample"]) for r in page
                                if r.data.tags.get("sample", "").isdigit())
                token = page.token
                if not token:
                    break
            steps = {m.step for m in client.get_metric_history(run_id, "search/reward")}
        except Exception as e:  # noqa: BLE001
            raise TrackingError(f"MLflow store {self.uri!r}: cannot reopen run {run_id} "
                                f"({_first_line(e)})") from None
        self._present_children = children
        self._present_steps = steps
        self._writer = _Writer(self.background)
        self._results, self._indices, self._best, self._cpu = [], [], -math.inf, 0.0
        self._pending, self._flushed = [], -math.inf
        self.seconds_main += time.perf_counter() - t0
        if results:
            self.log(results, 0)

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Log summary metrics and artifacts, end the parent run, wait for all writes."""
        if self.run_id is None:
            return
        t0 = time.perf_counter()
        from mlflow.entities import Metric, RunTag

        from .runfiles import write_search_files

        self._flush()
        client, run_id = self.client, self.run_id
        now = int(time.time() * 1000)
        metrics = [Metric(_summary_metric(k), float(v), now, 0)
                   for k, v in summary.items() if _finite(v) and k not in _SETTINGS]
        # what tracking cost the search's main thread (the background writes overlap it)
        metrics.append(Metric("time/tracking_main_s", self.seconds_main + time.perf_counter() - t0,
                              now, 0))
        tags = [RunTag(f"summary.{_key(k)}", _clip(v, _TAG_LEN))
                for k, v in summary.items() if isinstance(v, str)]
        results, top_k = list(self._results), self.top_k
        note = _best_note(results, top_k)
        if note:
            tags.append(RunTag("mlflow.note.content", note))
        writer = self._writer
        assert writer is not None

        def job() -> None:
            client.log_batch(run_id, metrics=metrics, tags=tags[:_MAX_TAGS])
            with tempfile.TemporaryDirectory(prefix="searchlab-") as tmp:
                write_search_files(tmp, results, dict(summary), top_k=top_k)
                client.log_artifacts(run_id, tmp)
            failed = writer.error is not None
            client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")

        writer.submit(job)
        writer.drain()
        writer.close()
        self.seconds_main += time.perf_counter() - t0
        lost = self.store_lost()
        if lost is not None:
            # the writes "succeeded" into a deleted file (or a new, empty one): say so
            self.error = (f"{lost}: MLflow's record of this search is lost; the run "
                          "folder's files are intact: re-log them with `searchlab relog "
                          "<run folder>`")
            return
        self._check_writer()
        if writer.error is not None:
            # not raised: the runner must still return the search's results; the caller
            # checks ``tracker.error`` (the CLI exits non-zero after saving its files)
            self.error = f"MLflow logging to {self.uri!r} failed ({_first_line(writer.error)})"
            try:  # best effort: do not leave the parent RUNNING forever
                client.set_terminated(run_id, status="FAILED")
            except Exception:  # noqa: BLE001
                pass

    def abort(self, status: str = "KILLED", timeout: float = 30.0) -> None:
        """End an interrupted search's run: wait (up to ``timeout`` s) for queued writes,
        then mark the parent run ``status`` (``KILLED`` or ``FAILED``).  Best effort."""
        if self.run_id is None:
            return
        writer = self._writer
        if writer is not None:
            self._flush()
            done = threading.Event()
            writer.submit(done.set)
            done.wait(timeout)
        try:
            self._client().set_terminated(self.run_id, status=status)
        except Exception:  # noqa: BLE001 - the process is going down anyway
            pass

    # -- extras ----------------------------------------------------------------------
    @property
    def seconds_writer(self) -> float:
        """Seconds spent in MLflow calls by the writer (background or inline)."""
        return self._writer.seconds if self._writer is not None else 0.0

    @property
    def cpu_seconds_writer(self) -> float:
        """CPU seconds the writer's thread spent in MLflow calls."""
        return self._writer.cpu_seconds if self._writer is not None else 0.0

    def where(self) -> str:
        return f"{self.uri}  experiment {self.experiment!r}"

    def log_rescored(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Metrics ``rescore/<rank>/{val,test}_{mean,std}`` and ``rescored.json`` on the
        search's parent run (already finished: written directly, best effort with a
        warning)."""
        if self.run_id is None or not rows or self.store_lost() is not None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_key(f"rescore/{i}/{k}"), float(row[k]), now, 0)
                   for i, row in enumerate(rows, 1)
                   for k in ("val_mean", "val_std", "test_mean", "test_std", "search_reward")
                   if _finite(row.get(k))]
        try:
            client = self._client()
            client.log_batch(self.run_id, metrics=metrics)
            client.set_tag(self.run_id, "rescored_rule", _clip(rows[0].get("rule", ""), _TAG_LEN))
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "rescored.json"
                path.write_text(json.dumps(to_jsonable(list(rows)), indent=1))
                client.log_artifact(self.run_id, str(path))
        except Exception as e:  # noqa: BLE001 - the files in the run folder are the record
            msg = f"MLflow: could not log the re-scored rules ({_first_line(e)})"
            warnings.warn(msg, stacklevel=2)
            self.error = self.error or msg

    def log_report(self, files: Mapping[str, Path], rows: Sequence[Mapping[str, Any]],
                   params: Mapping[str, Any]) -> None:
        """One ``report`` run in this tracker's experiment (:func:`log_report`)."""
        log_report(files, rows, uri=self.uri, experiment=self.experiment, params=params,
                   run_dir=self.run_dir)

    def open_hint(self) -> str:
        """``searchlab ui`` for the local store, the experiment's page for a server."""
        if self.uri.startswith(("http://", "https://")):
            return f"open {self.experiment_url() or self.uri}"
        if self.uri == local_store_uri(self.run_dir):
            arg = "" if str(self.run_dir) == "runs" else f" run_dir={self.run_dir}"
            return f"searchlab ui{arg}   (then open http://127.0.0.1:5000)"
        return f"searchlab ui tracking.uri={self.uri}"

    def experiment_url(self) -> str | None:
        """The experiment's runs page, for a tracking server URI (None for local stores)."""
        if self.experiment_id and self.uri.startswith(("http://", "https://")):
            return (f"{self.uri.rstrip('/')}/#/experiments/{self.experiment_id}"
                    "?workflowType=machine_learning")
        return None


def _file_id(path: Path | None) -> tuple[int, int] | None:
    try:
        st = os.stat(path) if path is not None else None
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if st is not None else None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


#: summary entries that are settings (already params), not results
_SETTINGS = frozenset({"seed", "eval_seed", "budget", "batch_size", "top_k"})


def _summary_metric(k: str) -> str:
    if k in ("seconds",):
        return "time/search_s"
    return f"search/{_key(k)}" if k != "best_reward" else "search/final_best_reward"


def sample_run_name(i: int, r: "Result") -> str:
    """A sample's nested run name: index, reward, status and rule, so the runs table shows
    what matters without opening columns (``0007 0.7123 ok exp(sign(g)*sign(m))*g``)."""
    try:
        reward = f"{float(r.reward):.4f}"        # nan and inf print as such
    except (TypeError, ValueError):
        reward = "nan"
    return _clip(f"{i:04d} {reward} {r.status} {r.rule}", _RUN_NAME_LEN)


def _child_fields(i: int, r: "Result", parent_id: str, now: int
                  ) -> tuple[str, dict[str, str], list[tuple[str, str]], list[tuple[str, float]], int]:
    """A sample's nested run: (name, tags, params, metrics, end time in ms).  Its start
    time is ``now + i`` ms (:func:`_child_start`), so sorting by start time is sample order."""
    name = sample_run_name(i, r)
    tags = {"mlflow.parentRunId": parent_id, "searchlab.role": "sample",
            "sample": str(i), "status": r.status, "cached": str(bool(r.cached)).lower()}
    if r.message:
        tags["message"] = _clip(r.message, _TAG_LEN)
    params = [("rule", _clip(r.rule, _PARAM_LEN)), ("tokens", _clip(" ".join(r.tokens), _PARAM_LEN)),
              ("key", _clip(r.key, _PARAM_LEN)), ("status", r.status),
              ("cached", str(bool(r.cached)).lower()), ("seed", str(r.seed)),
              ("task", r.task or ""), ("fidelity", r.fidelity or "")]
    if r.fingerprint:
        params.append(("fingerprint", _clip(r.fingerprint, _PARAM_LEN)))
    metrics = [("sample", float(i)),
               ("reward", float(r.reward) if _finite(r.reward) else float("nan")),
               ("seconds", float(r.seconds) if _finite(r.seconds) else 0.0)]
    for key, v in (("best_lr", r.best_lr), ("val_loss", r.val_loss), ("val_acc", r.val_acc)):
        if v is not None and _finite(v):
            metrics.append((key, float(v)))
    extra = r.extra if isinstance(r.extra, dict) else {}
    for key in ("asked", "cpu_seconds", "train_examples"):
        if _finite(extra.get(key)):
            metrics.append((key, float(extra[key])))
    end = _child_start(i, now) + int(1000 * max(0.0, float(r.seconds) if _finite(r.seconds)
                                                else 0.0))
    return name, tags, params, metrics, end


def _child_start(i: int, now: int) -> int:
    """Start time of sample ``i``'s run logged at ``now`` ms: one ms apart per sample,
    so the UI's default ordering (by start time) lists samples in index order."""
    return now + i


def _log_child(client: Any, exp_id: str, parent_id: str, i: int, r: "Result", now: int) -> None:
    """One nested run through MLflow's client API (any store, including a server):
    create_run (with tags) + one log_batch + set_terminated."""
    from mlflow.entities import Metric, Param

    name, tags, params, metrics, end = _child_fields(i, r, parent_id, now)
    run = client.create_run(exp_id, run_name=name, tags=tags, start_time=_child_start(i, now))
    client.log_batch(run.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics],
                     params=[Param(k, v) for k, v in params])
    client.set_terminated(run.info.run_id, status="FINISHED", end_time=end)


class _SqlBatch:
    """Writes a whole batch of finished nested runs, or of a run's metric rows, in ONE
    transaction, for SQL stores.

    Through the client API each nested run costs three calls and about thirty SQL
    statements and six commits (~15-40 ms here); for a SQL store (the default local
    sqlite) this writes the same rows -- ``runs``, ``tags``, ``params``, ``metrics``,
    ``latest_metrics`` -- with MLflow's own ORM models and session factory, as its
    ``create_run``/``log_batch``/``set_terminated`` would, in one commit per batch.
    Metric rows (:meth:`write_metrics`) go in as one multi-row insert: ``log_batch``
    builds an ORM object per row and compares each with the latest value, ~0.2 ms a row,
    which was most of MLflow's cost in a search on a table (4,000 rows per 1,000 samples).
    Any failure rolls the batch back and the tracker falls back to the client API for
    good (e.g. a future MLflow whose schema needs more), so results never depend on this
    path; tests check both paths give identical runs.
    """

    def __init__(self, client: Any, experiment_id: str) -> None:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        store = client._tracking_client.store
        if not isinstance(store, SqlAlchemyStore):
            raise TypeError(f"not a SQL store: {type(store).__name__}")
        self.store = store
        self.experiment_id = int(experiment_id)
        self.artifact_root = client.get_experiment(experiment_id).artifact_location

    def write(self, parent_id: str, items: Sequence[tuple[int, "Result"]], now: int) -> None:
        import uuid

        from mlflow.store.tracking.dbmodels.models import (SqlLatestMetric, SqlMetric,
                                                           SqlParam, SqlRun, SqlTag)
        from mlflow.utils.uri import append_to_uri_path

        rows: list[Any] = []
        for i, r in items:
            name, tags, params, metrics, end = _child_fields(i, r, parent_id, now)
            run_id = uuid.uuid4().hex
            run = SqlRun(name=name, run_uuid=run_id, experiment_id=self.experiment_id,
                         artifact_uri=append_to_uri_path(self.artifact_root, run_id, "artifacts"),
                         source_type="UNKNOWN", source_name="", entry_point_name="",
                         user_id="unknown", status="FINISHED", start_time=_child_start(i, now),
                         end_time=end,
                         deleted_time=None, source_version="", lifecycle_stage="active")
            run.tags = [SqlTag(key=k, value=v) for k, v in {**tags, "mlflow.runName": name}.items()]
            rows.append(run)
            rows.extend(SqlParam(run_uuid=run_id, key=k, value=v) for k, v in params)
            for k, v in metrics:
                is_nan, value = self.store.sanitize_metric_value(v)
                for model in (SqlMetric, SqlLatestMetric):
                    rows.append(model(run_uuid=run_id, key=k, value=value, timestamp=now,
                                      step=0, is_nan=is_nan))
        with self.store.ManagedSessionMaker(read_only=False) as session:
            session.add_all(rows)

    def write_metrics(self, run_id: str, metrics: Sequence[Any]) -> None:
        """``metrics`` (MLflow ``Metric`` entities) of run ``run_id``: the history rows,
        and each key's ``latest_metrics`` row as MLflow's ``log_batch`` leaves it (the
        greatest ``(step, timestamp, value)`` wins, over the stored one too)."""
        from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric
        from sqlalchemy import insert

        rows: dict[tuple[str, int, int, float, bool], None] = {}   # MLflow's identity, once
        for m in metrics:
            is_nan, value = self.store.sanitize_metric_value(float(m.value))
            rows[(m.key, int(m.timestamp), int(m.step), value, is_nan)] = None
        if not rows:
            return
        latest: dict[str, tuple[int, int, float, bool]] = {}
        for key, ts, step, value, is_nan in rows:
            old = latest.get(key)
            if old is None or (step, ts, value) > (old[1], old[0], old[2]):
                latest[key] = (ts, step, value, is_nan)
        with self.store.ManagedSessionMaker(read_only=False) as session:
            session.execute(insert(SqlMetric.__table__), [
                {"run_uuid": run_id, "key": k, "timestamp": ts, "step": step, "value": v,
                 "is_nan": n} for k, ts, step, v, n in rows])
            stored = {m.key: m for m in session.query(SqlLatestMetric).filter(
                SqlLatestMetric.run_uuid == run_id, SqlLatestMetric.key.in_(sorted(latest)))}
            for key, (ts, step, value, is_nan) in latest.items():
                old = stored.get(key)
                if old is None:
                    session.add(SqlLatestMetric(run_uuid=run_id, key=key, value=value,
                                                timestamp=ts, step=step, is_nan=is_nan))
                elif (step, ts, value) > (old.step, old.timestamp, old.value):
                    old.value, old.timestamp, old.step, old.is_nan = value, ts, step, is_nan


def _best_note(results: Sequence["Result"], top_k: int) -> str:
    """Markdown for the parent run's description: the best rules."""
    from .runfiles import best_results

    best = best_results(results, top_k)
    if not best:
        return ""
    lines = ["**Best rules** (reward, best lr, rule)", ""]
    for r in best:
        lr = f"{r.best_lr:.0e}" if r.best_lr is not None else "-"
        lines.append(f"- {r.reward:.4f}  lr {lr}  `{r.rule}`")
    return "\n".join(lines)


# --- comparison reports ------------------------------------------------------------------
#: per-strategy numbers of a report row logged as ``compare/<strategy>/<name>`` metrics
REPORT_METRICS: tuple[str, ...] = (
    "best_reward_mean", "best_reward_ci_low", "best_reward_ci_high",
    "median_evals_to_threshold", "unique_ratio", "wall_s_per_sample")


def log_report(files: Mapping[str, Path], rows: Sequence[Mapping[str, Any]], *, uri: str,
               experiment: str, params: Mapping[str, Any] | None = None,
               run_dir: str | os.PathLike[str] = "runs",
               metrics: Mapping[str, float] | None = None) -> str:
    """Log a comparison report to MLflow: one ``report`` run in ``experiment`` with the
    report files as artifacts, per strategy the metrics ``compare/<strategy>/<name>``
    (:data:`REPORT_METRICS`), any further ``metrics`` given as flat ``name -> value``, and
    ``summary.md`` as the run's description.  Returns the run id."""
    from mlflow.entities import Metric, Param

    tracker = MlflowTracker(uri=uri, experiment=experiment, run_dir=run_dir, check=False)
    client = tracker._client()
    exp_id = tracker.ensure_experiment()
    md = files.get("summary.md")
    note = md.read_text() if md is not None and Path(md).is_file() else ""
    run = client.create_run(exp_id, run_name="report",
                            tags={"searchlab.role": "report", "mlflow.note.content": note})
    now = int(time.time() * 1000)
    out = []
    for r in rows:
        for k in REPORT_METRICS:
            v = r.get(k)
            if _finite(v):
                out.append(Metric(_key(f"compare/{r['strategy']}/{k}"), float(v), now, 0))
    for k, v in (metrics or {}).items():
        if _finite(v):
            out.append(Metric(_key(k), float(v), now, 0))
    ps = [Param(_key(k), _param_value(v)) for k, v in (params or {}).items()][:100]
    for i in range(0, len(out), 1000):          # MLflow's log_batch takes <= 1000 metrics
        client.log_batch(run.info.run_id, metrics=out[i:i + 1000], params=ps if i == 0 else [])
    if not out:
        client.log_batch(run.info.run_id, params=ps)
    for path in files.values():
        client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def load_runs_from_mlflow(experiment: str, uri: str, dest: str | os.PathLike[str]
                          ) -> list["RunRecord"]:
    """The searches of an MLflow experiment (parent runs' ``results.json`` artifacts),
    downloaded into ``dest/runs/<label>-s<seed>/``, in the order they started."""
    from .runfiles import load_search

    client = open_client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise FileNotFoundError(f"no folder and no MLflow experiment named {experiment!r} "
                                f"in {uri}")
    runs = client.search_runs([exp.experiment_id],
                              filter_string="tags.`searchlab.role` = 'search'",
                              max_results=10000)
    out = []
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):   # the comparison's order
        tags = run.data.tags
        label = tags.get("searchlab.label") or tags.get("strategy") or run.info.run_name
        seed = int(tags.get("seed", 0))
        target = Path(dest) / "runs" / f"{label}-s{seed}"
        target.mkdir(parents=True, exist_ok=True)
        try:
            local = client.download_artifacts(run.info.run_id, "results.json", str(target))
        except Exception:  # noqa: BLE001 - an unfinished run has no results.json
            continue
        out.append(load_search(local, label=label, seed=seed))
    return out
