"""Checkpoint and resume of a search (a killed search continues where it stopped).

A search with a run directory keeps two files there:

``evaluations.jsonl``  a journal: one JSON line per *completed* evaluation, appended and
                       flushed to the operating system the moment the executor returns it,
                       in completion order.  A search killed mid-batch (even ``kill -9``)
                       loses no finished evaluation; after a power cut the journal may lack
                       its last lines (those evaluations are then run again), while the
                       checkpoint is always whole.
``checkpoint.pkl``     the search state after every batch (at most every 2 s:
                       ``runner.CHECKPOINT_SECONDS``), replaced atomically (written to
                       a temporary file, fsynced, then ``os.replace``): the numbered
                       samples, the runner's counters, ``strategy.state_dict()`` (controller
                       weights, optimizer state, populations, RNG states), the tracker's
                       state (the MLflow parent run id) and the search's identity.

Resuming (``run_search(..., checkpoint_dir=d, resume=True)``, ``searchlab search
resume=<run dir>``) restores the last checkpoint and answers every rule whose evaluation
is in the journal from the journal instead of evaluating it again.  Two modes:

* ``state``: the strategy implements ``state_dict``/``load_state_dict``; it is restored
  as of the last completed batch, the runner's samples and counters too.  The batch that
  was running when the search died is asked again (the restored RNG gives the same rules)
  and its finished evaluations come from the journal.
* ``replay``: strategies without state hooks, and strategies that own their loop (SB3
  agents), are rebuilt from their seed and re-run from the start; every rule they propose
  that the journal holds is answered from it (same sample numbers, no training), so only
  the strategy's own computation is repeated.  This relies on the strategy being
  deterministic for its seed, which the conformance suite checks.

Without a readable checkpoint -- the search was killed before writing its first one
(during start-up), or ``checkpoint.pkl`` is truncated or damaged -- :meth:`Checkpointer.load`
falls back to the journal: the search restarts in ``replay`` mode, the strategy from its
seed, fed every journaled evaluation (nothing evaluated twice), and
:attr:`Resumed.note` says so.  This needs the run folder's ``config.yaml`` or journal;
with neither there is nothing to resume.

Either way no completed sample is lost, none is evaluated twice, and with a serial
executor the resumed search ends exactly as an uninterrupted one with the same seed.
The tracker is told to continue its run (``Tracker.resume``): the MLflow tracker reopens
the same parent run and does not log a sample twice.

Checkpoints are pickles: load only run directories you trust (your own).
"""

from __future__ import annotations

import math
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, Mapping

from .result import Result, dumps_result, loads_result

if TYPE_CHECKING:
    from .strategy import Strategy

CHECKPOINT_FILE = "checkpoint.pkl"
JOURNAL_FILE = "evaluations.jsonl"
FORMAT_VERSION = 1

#: identity fields that must match between a checkpoint and the search resuming it
IDENTITY_KEYS: tuple[str, ...] = ("strategy", "seed", "eval_seed", "batch_size", "space",
                                  "depth", "task", "fidelity")


class ResumeError(RuntimeError):
    """A run directory cannot be resumed (no checkpoint, or a different search)."""


# --------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------
def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a
    torn one, even if the process is killed (temporary file + fsync + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - some filesystems refuse directory fsync
        pass


class Journal:
    """Append-only file of completed evaluations, one JSON line each, fsynced per line
    (``fsync=False``: flushed only, enough to survive the process being killed)."""

    def __init__(self, path: str | os.PathLike[str], fsync: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        # a torn last line (killed mid-write) must not glue onto the next one
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
            if torn:
                with open(self.path, "ab") as f:
                    f.write(b"\n")
        self._f = open(self.path, "a", encoding="utf-8")

    def append(self, result: Result) -> None:
        self._f.write(dumps_result(result) + "\n")
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    @staticmethod
    def read(path: str | os.PathLike[str]) -> list[Result]:
        """Every complete line of the journal (a torn or garbled line is skipped)."""
        out: list[Result] = []
        p = Path(path)
        if not p.exists():
            return out
        with open(p, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    out.append(loads_result(line))
                except (ValueError, TypeError, KeyError):
                    continue
        return out


# --------------------------------------------------------------------------------------
# search state
# --------------------------------------------------------------------------------------
def strategy_has_state(strategy: "Strategy") -> bool:
    """True when ``strategy`` can be checkpointed directly (``state`` mode): it drives the
    ask/tell loop and overrides both ``state_dict`` and ``load_state_dict``; otherwise
    resume replays it."""
    from .strategy import Strategy

    cls = type(strategy)
    return (not getattr(strategy, "owns_loop", False)
            and cls.state_dict is not Strategy.state_dict
            and cls.load_state_dict is not Strategy.load_state_dict)


@dataclass
class SearchState:
    """What a checkpoint holds (see the module docstring)."""

    identity: dict[str, Any]
    mode: Literal["state", "replay"]
    budget: int
    results: list[Result] = field(default_factory=list)
    counters: dict[str, Any] = field(default_factory=dict)
    strategy: dict[str, Any] | None = None
    tracker: dict[str, Any] = field(default_factory=dict)
    batches: int = 0
    seconds: float = 0.0
    version: int = FORMAT_VERSION


@dataclass
class Resumed:
    """A loaded checkpoint plus the journal's evaluations it does not hold yet.

    ``note`` is None for a checkpoint; otherwise it says why the search resumes from the
    journal only (``state`` is then an empty ``replay`` state without an identity)."""

    state: SearchState
    replay: dict[str, Result]
    note: str | None = None

    def check_identity(self, identity: Mapping[str, Any]) -> None:
        """Raise :class:`ResumeError` when ``identity`` is not the checkpointed search's
        (without a checkpoint: when the journal's evaluations have another task,
        fidelity or evaluation seed)."""
        if self.note is not None:
            want = {"task": identity.get("task"), "fidelity": identity.get("fidelity"),
                    "seed": identity.get("eval_seed")}
            for r in self.replay.values():
                for k, v in want.items():
                    got = getattr(r, k, None)
                    if v is not None and got not in (None, "") and str(got) != str(v):
                        raise ResumeError(f"the journal of evaluations holds another search "
                                          f"({'eval_seed' if k == 'seed' else k}: {got!r} "
                                          f"-> {v!r})")
            return
        diffs = [f"{k}: {self.state.identity.get(k)!r} -> {identity.get(k)!r}"
                 for k in IDENTITY_KEYS
                 if k in identity and str(self.state.identity.get(k)) != str(identity.get(k))]
        if diffs:
            raise ResumeError("the run directory holds a different search ("
                              + "; ".join(diffs) + ")")


class Checkpointer:
    """A search's run directory: the journal of evaluations and the atomic checkpoint.

    The runner calls :meth:`record` for every completed evaluation, :meth:`save` after
    a batch (at most every ``runner.CHECKPOINT_SECONDS``), and :meth:`load` when
    resuming.  ``fsync=True`` also forces every journal line to the disk (about 3 ms
    each here: costly for millisecond evaluations, negligible for trainings); the
    checkpoint is always fsynced.
    """

    def __init__(self, run_dir: str | os.PathLike[str], fsync: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.fsync = fsync
        self._journal: Journal | None = None

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_FILE

    @property
    def journal_path(self) -> Path:
        return self.run_dir / JOURNAL_FILE

    def exists(self) -> bool:
        return self.checkpoint_path.exists()

    def resumable(self) -> bool:
        """A checkpoint, or at least a non-empty journal, is there to continue from."""
        return self.exists() or (self.journal_path.is_file()
                                 and self.journal_path.stat().st_size > 0)

    # -- writing ---------------------------------------------------------------------
    def record(self, result: Result) -> None:
        """Journal one completed evaluation (before anything else happens with it)."""
        if self._journal is None:
            self._journal = Journal(self.journal_path, fsync=self.fsync)
        self._journal.append(result)

    def save(self, state: SearchState) -> None:
        atomic_write_bytes(self.checkpoint_path,
                           pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))

    def start_fresh(self) -> None:
        """A new search in this directory: refuse to overwrite another search's state."""
        if self.exists():
            raise ResumeError(f"{self.run_dir} already holds a search checkpoint; resume it "
                              f"(resume={self.run_dir}) or use another directory")
        self.journal_path.unlink(missing_ok=True)

    def clear(self) -> None:
        """Delete this directory's checkpoint and journal (a new search replaces them)."""
        self.close()
        self.checkpoint_path.unlink(missing_ok=True)
        self.journal_path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    # -- reading ---------------------------------------------------------------------
    def load(self) -> Resumed:
        """The last checkpoint and the journal's evaluations not in it; without a
        readable checkpoint, the journal alone (see the module docstring)."""
        why = None
        state = None
        if not self.exists():
            why = f"no {CHECKPOINT_FILE} (killed before its first checkpoint?)"
        else:
            try:
                state = pickle.loads(self.checkpoint_path.read_bytes())
            except Exception as e:  # noqa: BLE001 - any unpickling problem
                why = f"cannot read {self.checkpoint_path} ({_first_line(e)})"
            else:
                if not isinstance(state, SearchState) or state.version != FORMAT_VERSION:
                    why = (f"{self.checkpoint_path} is not a searchlab checkpoint of "
                           f"format {FORMAT_VERSION}")
        if why is not None:
            return self._from_journal(why)
        # replay mode re-runs the strategy from the start: every journaled evaluation is
        # needed again; state mode restores the samples and needs only the newer ones
        done = {r.key for r in state.results} if state.mode == "state" else set()
        replay: dict[str, Result] = {}
        for r in Journal.read(self.journal_path):
            if r.key not in done:
                replay.setdefault(r.key, r)
        return Resumed(state, replay)

    def _from_journal(self, why: str) -> Resumed:
        """Resume without a checkpoint: a ``replay`` state fed the whole journal."""
        has_config = (self.run_dir / "config.yaml").is_file()
        if not has_config and not self.journal_path.is_file():
            raise ResumeError(f"nothing to resume in {self.run_dir}: {why.split(' (')[0]} "
                              f"and no {JOURNAL_FILE} (was the search started with this "
                              "run directory?)")
        replay: dict[str, Result] = {}
        for r in Journal.read(self.journal_path):
            replay.setdefault(r.key, r)
        state = SearchState(identity={}, mode="replay", budget=0)
        note = (f"{why}; the strategy restarts from its seed and is fed the "
                f"{len(replay)} evaluations of {self.journal_path} (none is run again)")
        return Resumed(state, replay, note=note)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def best_of(results: Iterable[Result]) -> float:
    """Largest finite reward (``-inf`` for none)."""
    best = -math.inf
    for r in results:
        if r.reward == r.reward:
            best = max(best, r.reward)
    return best
