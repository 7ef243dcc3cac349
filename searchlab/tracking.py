"""Trackers: where the runner logs samples (main process only).

``Tracker`` is the interface; ``NullTracker`` and ``MemoryTracker`` (tests) live here;
the MLflow tracker (:mod:`searchlab.mlflow_tracker`) is a built-in of the same registry,
imported only when selected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .registry import Registry

if TYPE_CHECKING:
    from pathlib import Path

    from .result import Result


class Tracker:
    """Receives a search's configuration, every sample and the final summary.

    ``start`` is called once per search with the flattened config and tags; ``log`` with
    each batch of results and the sample index of the first; ``finish`` with a summary.
    All hooks default to no-ops.

    What the application reads after (or while) a search: :attr:`error` (one line when
    some writes failed), :meth:`abort` (the search was interrupted or crashed),
    :meth:`where` and :meth:`open_hint` (what to tell the user).
    """

    #: one line when some writes failed (set by ``finish``), else None
    error: str | None = None

    def start(self, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        return None

    def log(self, results: Sequence["Result"], first_index: int) -> None:
        return None

    def finish(self, summary: Mapping[str, Any]) -> None:
        return None

    # checkpoint/resume hooks (searchlab.checkpoint)
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to continue this tracker's run (e.g. an MLflow run id)."""
        return {}

    def resume(self, state: Mapping[str, Any], params: Mapping[str, Any],
               tags: Mapping[str, str], results: Sequence["Result"]) -> None:
        """Continue a checkpointed search instead of ``start``: ``state`` is what
        ``state_dict`` returned then, ``results`` the samples restored from the checkpoint
        (sample indices ``0..len-1``).  Later samples arrive through ``log`` as usual and
        may include indices logged before the search died: a tracker that reopens its
        old run must not record them twice.  The default starts anew and logs
        ``results``."""
        self.start(params, tags)
        if results:
            self.log(results, 0)

    def abort(self, status: str = "KILLED") -> None:
        """The search was interrupted (``KILLED``) or crashed (``FAILED``): flush what was
        logged and mark the run so; a later resume may reopen it."""
        return None

    def log_rescored(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """After ``finish``: the search's best rules re-scored on fresh seeds
        (:meth:`searchlab.rescore.Rescored.row`, best first)."""
        return None

    def log_report(self, files: Mapping[str, "Path"], rows: Sequence[Mapping[str, Any]],
                   params: Mapping[str, Any]) -> None:
        """Log a comparison's report: its files, one row of numbers per strategy
        (:func:`searchlab.report.comparison.summarize`) and the comparison's settings."""
        return None

    def where(self) -> str | None:
        """Where this tracker logs, for the user (None: nowhere worth saying)."""
        return None

    def open_hint(self) -> str | None:
        """How to look at what was logged: a command or a URL (None: nothing to open)."""
        return None


TRACKERS: Registry[type[Tracker]] = Registry(
    "tracker", builtins={"mlflow": "searchlab.mlflow_tracker"})


@TRACKERS.register("none")
class NullTracker(Tracker):
    """Logs nothing."""

    def __init__(self, **_: Any) -> None:
        pass


@TRACKERS.register("memory")
class MemoryTracker(Tracker):
    """Keeps everything in memory (for tests)."""

    def __init__(self, **_: Any) -> None:
        self.params: dict[str, Any] = {}
        self.tags: dict[str, str] = {}
        self.samples: list[tuple[int, "Result"]] = []
        self.summary: dict[str, Any] = {}
        self.started = 0
        self.finished = 0

    def start(self, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        self.started += 1
        self.params, self.tags = dict(params), dict(tags)

    def log(self, results: Sequence["Result"], first_index: int) -> None:
        self.samples.extend((first_index + i, r) for i, r in enumerate(results))

    def finish(self, summary: Mapping[str, Any]) -> None:
        self.finished += 1
        self.summary = dict(summary)
