"""Persistent reward cache: a rule is never trained twice for the same protocol.

:class:`RewardCache` stores :class:`~searchlab.result.Result` objects in one sqlite file,
keyed by ``(fingerprint, task, fidelity, seed)``:

* ``fingerprint`` — the rule's functional fingerprint (:mod:`searchlab.fingerprint`), so
  differently written but identical rules (``g*2``, ``2*g``, ``g+g``) share one entry;
  the canonical key is stored too (``get_by_key``);
* ``task`` — the task id, which names its result-changing options
  (``cifar10+max_examples=2000``);
* ``fidelity`` — the protocol name, which names non-default fidelity fields and the
  sweep path (``fast``, ``fast+final_epochs=5``, ``fast+sequential``);
* ``seed`` — the evaluation seed;
* plus :data:`PROTOCOL_VERSION`, bumped whenever the training protocol changes so stale
  rewards are never served.

Only deterministic outcomes are stored (status ``ok`` and ``diverged``); ``timeout`` and
``error`` depend on the machine and are retried, ``invalid`` costs milliseconds.

How to use it.  Usually through the evaluator, which looks up, trains on a miss, and
stores (``Evaluator(task, fidelity, cache=RewardCache(path))`` or ``cache_dir=...``)::

    cache = RewardCache("runs/cache/rewards.sqlite")
    hit = cache.get(fingerprint, "mnist1d", "fast", seed)      # Result or None
    cache.put(result)                                          # uses result's own fields
    cache.hits, cache.misses, cache.puts                       # counters (this process)

The file is safe to share between processes (WAL journal, busy timeout): the runner's
worker processes each open their own connection (a cache pickles as its path).
``RewardCache(None)`` is an in-memory cache for one process (a pickled copy starts empty).

Rewards round differently on CPUs of different vendors (:mod:`searchlab.kernels`): every
write records the writing machine's vendor in the file (table ``meta``), and
:meth:`RewardCache.check` warns when a cache holds rewards computed on another vendor's
CPUs than this one's (or on several), since its hits are then that machine's numbers.
Files written only before the record existed name no vendor and are not warned about;
once such a file gets new rows, its old ones are marked :data:`UNRECORDED`.

A corrupt file (not a sqlite database, a damaged page) would make every lookup fail, and
every sample an ``error``; :meth:`RewardCache.check`, called when a search starts
(``searchlab.app``), raises :class:`CacheError` instead: one line naming the file and
saying to delete it or move it aside (the cache only saves re-training; a new one is
built on the next run).  The file is not moved automatically: searches started together
share it, and a rename racing another search's fresh cache would lose that one.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from .kernels import cpu_vendor
from .result import Result, dumps_result, loads_result

__all__ = ["CACHEABLE_STATUSES", "CacheError", "PROTOCOL_VERSION", "RewardCache", "UNRECORDED",
           "default_cache_path"]

#: bump when the reward protocol (training, splits, scoring) changes
PROTOCOL_VERSION = 1
#: statuses whose results are deterministic given (rule, task, fidelity, seed)
CACHEABLE_STATUSES = frozenset({"ok", "diverged"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    fingerprint TEXT NOT NULL,
    task        TEXT NOT NULL,
    fidelity    TEXT NOT NULL,
    seed        INTEGER NOT NULL,
    protocol    INTEGER NOT NULL,
    key         TEXT NOT NULL,
    rule        TEXT NOT NULL,
    status      TEXT NOT NULL,
    reward      REAL,
    created     REAL NOT NULL,
    data        TEXT NOT NULL,
    PRIMARY KEY (fingerprint, task, fidelity, seed, protocol)
);
CREATE INDEX IF NOT EXISTS results_by_key ON results (key, task, fidelity, seed, protocol);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


_VENDOR_PREFIX = "cpu_vendor:"
#: the vendor of rows written before the cache recorded vendors
UNRECORDED = "unrecorded"
_WARNED_VENDORS: set[tuple[Path | None, str]] = set()


def _vendor() -> str:
    return cpu_vendor() or "unknown"


class CacheError(RuntimeError):
    """The reward cache file cannot be used (corrupt, not a sqlite database)."""


def default_cache_path() -> Path:
    """``<data cache dir>/rewards.sqlite`` (``$SEARCHLAB_CACHE`` or ``~/.cache/searchlab``)."""
    from .tasks.base import data_cache_dir

    return data_cache_dir() / "rewards.sqlite"


class RewardCache:
    """sqlite-backed store of results (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path: Path | None = Path(path).expanduser() if path is not None else None
        self.hits = 0
        self.misses = 0
        self.puts = 0
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._noted_pid = -1          # the process that recorded its vendor in this file
        self._lock = threading.Lock()

    # --- connection (one per process; a pickled cache reopens its file) ---------------
    def __getstate__(self) -> dict[str, Any]:
        # a file cache is shared by path; an in-memory one arrives empty in the other process
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]

    def _db(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            if self.path is None:
                conn = sqlite3.connect(":memory:", check_same_thread=False)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(str(self.path), timeout=60.0, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def check(self, attempts: int = 3, pause: float = 1.0) -> None:
        """Raise :class:`CacheError` (one line: the file and what to do) when the cache
        file exists but is not a usable sqlite database; a missing file is created.

        A database that other processes are writing can fail one check spuriously (seen
        with "database disk image is malformed" while a comparison's workers had just
        stopped): the check is repeated ``attempts`` times on a fresh connection,
        ``pause`` seconds apart, and only a file that fails every time is reported."""
        if self.path is None:
            return
        for attempt in range(attempts):
            try:
                self._check_once()
                return
            except CacheError:
                if attempt == attempts - 1:
                    raise
                time.sleep(pause)

    def _check_once(self) -> None:
        assert self.path is not None
        try:
            # no open()/close() of the file here: closing any descriptor of a sqlite file
            # drops every POSIX lock this process holds on it (other connections' too),
            # which let workers write under a reader and made the cache look malformed;
            # sqlite itself says "file is not a database" for a garbage file
            with self._lock:
                db = self._db()
                db.execute("SELECT COUNT(*) FROM results").fetchone()
                # a full-page scan can report "malformed" for a sound WAL database whose
                # last writer was killed mid-checkpoint (seen between the searches of a
                # comparison; the next connection recovers it): warn, do not stop
                try:
                    row = db.execute("PRAGMA quick_check(1)").fetchone()
                    problem = None if row is not None and row[0] == "ok" else (row or ["?"])[0]
                except sqlite3.DatabaseError as e:
                    problem = str(e)
                if problem is not None:
                    import warnings

                    warnings.warn(f"reward cache {self.path}: integrity check says {problem!r}; "
                                  "its rows are readable, so the search goes on (a damaged "
                                  "row is re-trained)", RuntimeWarning, stacklevel=3)
            self._warn_other_vendors()
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                return              # in use by another search: not corrupt
            self._fail(e)
        except (sqlite3.DatabaseError, OSError) as e:
            self._fail(e)

    def _fail(self, e: BaseException) -> None:
        self.close()
        raise CacheError(
            f"reward cache {str(self.path)!r} is not a usable sqlite database ({e}); it "
            f"only saves re-training: delete it (rm {self.path}) or move it aside "
            f"(mv {self.path} {self.path}.bad) and run again") from None

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    def __enter__(self) -> "RewardCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- API ---------------------------------------------------------------------------
    def get(self, fingerprint: str, task: str, fidelity: str, seed: int) -> Result | None:
        """The stored result of this rule function under this protocol, or None.

        Counts a hit or a miss.  The result comes back as stored (its ``rule`` text is the
        one that was trained); the evaluator relabels it for the asking rule."""
        with self._lock:
            row = self._db().execute(
                "SELECT data FROM results WHERE fingerprint=? AND task=? AND fidelity=? "
                "AND seed=? AND protocol=?",
                (fingerprint, str(task), str(fidelity), int(seed), PROTOCOL_VERSION)).fetchone()
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
        return loads_result(row[0])

    def get_by_key(self, key: str, task: str, fidelity: str, seed: int) -> Result | None:
        """Lookup by canonical key instead of fingerprint (does not count)."""
        with self._lock:
            row = self._db().execute(
                "SELECT data FROM results WHERE key=? AND task=? AND fidelity=? AND seed=? "
                "AND protocol=? ORDER BY created LIMIT 1",
                (key, str(task), str(fidelity), int(seed), PROTOCOL_VERSION)).fetchone()
        return None if row is None else loads_result(row[0])

    def put(self, result: Result) -> bool:
        """Store ``result`` under its own fingerprint/task/fidelity/seed.  Returns False
        (and stores nothing) for statuses that are not cached or results without a
        fingerprint."""
        if result.status not in CACHEABLE_STATUSES or not result.fingerprint:
            return False
        data = dumps_result(result.with_(cached=False))
        with self._lock:
            db = self._db()
            note = self._noted_pid != os.getpid()    # once per process: the vendor's row
            if note:
                # the first put into a file written before vendors were recorded marks its
                # rows as of an unrecorded vendor, so that they are not taken for this one's
                db.execute("INSERT OR IGNORE INTO meta SELECT ?, '1' WHERE NOT EXISTS (SELECT "
                           "1 FROM meta WHERE name LIKE ?) AND EXISTS (SELECT 1 FROM results)",
                           (_VENDOR_PREFIX + UNRECORDED, _VENDOR_PREFIX + "%"))
            db.execute(
                "INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (result.fingerprint, result.task, result.fidelity, int(result.seed),
                 PROTOCOL_VERSION, result.key, result.rule, result.status,
                 float(result.reward), time.time(), data))
            if note:
                db.execute("INSERT OR IGNORE INTO meta VALUES (?, '1')",
                           (_VENDOR_PREFIX + _vendor(),))
            db.commit()
            self._noted_pid = os.getpid()
            self.puts += 1
        return True

    def vendors(self) -> set[str]:
        """The CPU vendors of the machines that wrote this cache's rewards: empty for a
        file written only before searchlab recorded them, :data:`UNRECORDED` among them
        once such a file gets new rows."""
        with self._lock:
            rows = self._db().execute("SELECT name FROM meta WHERE name LIKE ?",
                                      (_VENDOR_PREFIX + "%",)).fetchall()
        return {r[0][len(_VENDOR_PREFIX):] for r in rows}

    def note_vendor(self, vendor: str) -> None:
        """Record that this cache's rows were computed on ``vendor``'s CPUs (for a file
        restored from elsewhere, e.g. ``bench/verdict.py restore``)."""
        with self._lock:
            db = self._db()
            db.execute("INSERT OR IGNORE INTO meta VALUES (?, '1')", (_VENDOR_PREFIX + vendor,))
            db.commit()

    def other_vendors(self) -> set[str]:
        """The vendors among :meth:`vendors` other than this machine's (:data:`UNRECORDED`
        included when the file also has rows of an unrecorded vendor besides this
        machine's): empty when every recorded reward is this machine's kind."""
        return self.vendors() - {_vendor()}

    def _warn_other_vendors(self) -> None:
        mine, theirs = _vendor(), self.vendors()
        if not theirs - {mine} or (self.path, mine) in _WARNED_VENDORS:
            return
        _WARNED_VENDORS.add((self.path, mine))
        import warnings

        names = sorted(theirs - {UNRECORDED}) + (
            ["unrecorded ones (rows from before searchlab recorded vendors)"]
            if UNRECORDED in theirs else [])
        warnings.warn(
            f"reward cache {self.path} holds rewards computed on {' and '.join(names)} "
            f"CPUs, and this machine is {mine}'s: rewards round differently between CPU "
            "vendors (BENCHMARKS.md, 'Intel CPUs'), so its hits may be other machines' "
            "numbers and new entries are this one's; give this machine a cache of its own "
            "(another run_dir) to keep them apart", RuntimeWarning, stacklevel=4)

    def __len__(self) -> int:
        with self._lock:
            return int(self._db().execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def __repr__(self) -> str:
        where = str(self.path) if self.path is not None else ":memory:"
        return f"RewardCache({where!r}, hits={self.hits}, misses={self.misses}, puts={self.puts})"
