"""Progress bars for searches and comparisons (tqdm, on stderr).

The runner calls ``progress(unique, budget, best_reward)`` after every batch
(:data:`searchlab.runner.ProgressFn`).  :class:`SearchProgress` is such a callable; a
:class:`CompareProgress` hands one out per strategy x seed and shows the whole
comparison on one bar.  Both show samples done / total, the best reward so far,
evaluations per minute and the ETA; ``quiet=True`` (config ``quiet``, for CI) disables
them.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable

from tqdm.auto import tqdm

__all__ = ["CompareProgress", "SearchProgress", "eta_text"]

#: tqdm's own ``{remaining}`` is left out: the postfix carries the ETA (from the clock
#: restarted when the search loop begins), so the bar shows one ETA, not two
_FORMAT = "{desc}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} samples [{elapsed}{postfix}]"


def eta_text(done: int, total: int, seconds: float) -> str:
    """``"3.2 evals/min, ETA 0:05:12"`` from counts and elapsed seconds."""
    if done <= 0 or seconds <= 0:
        return "-- evals/min"
    rate = done / seconds
    left = max(0, total - done) / rate
    h, rem = divmod(int(round(left)), 3600)
    m, s = divmod(rem, 60)
    return f"{60 * rate:.1f} evals/min, ETA {h}:{m:02d}:{s:02d}"


def _best(x: float) -> str:
    return f"{x:.4f}" if isinstance(x, (int, float)) and math.isfinite(x) else "-"


class SearchProgress:
    """A progress bar for one search: ``SearchProgress(budget)(unique, budget, best)``."""

    def __init__(self, total: int, desc: str = "search", quiet: bool = False,
                 file: Any = None) -> None:
        self.total = total
        self.t0 = time.perf_counter()
        self.done = 0
        self.best = -math.inf
        self.bar = tqdm(total=total, desc=f"{desc} ", disable=quiet, bar_format=_FORMAT,
                        file=file or sys.stderr, dynamic_ncols=True, leave=True)

    def __call__(self, unique: int, budget: int, best: float) -> None:
        if budget != self.total:
            self.total = self.bar.total = budget
        self.bar.update(max(0, unique - self.done))
        self.done = unique
        self.best = max(self.best, best) if math.isfinite(best) else self.best
        self.bar.set_postfix_str(f"best {_best(self.best)}, "
                                 f"{eta_text(self.done, self.total, time.perf_counter() - self.t0)}",
                                 refresh=True)

    def restart(self) -> None:
        """Restart the clock (call when the search loop really starts, after setup such
        as creating the MLflow store, so evals/min and ETA measure evaluations only)."""
        self.t0 = time.perf_counter()
        if not self.bar.disable:
            self.bar.start_t = self.bar.last_print_t = self.bar._time()

    def close(self) -> None:
        self.bar.close()


class CompareProgress:
    """One bar over all searches of a comparison (``runs x budget`` samples)."""

    def __init__(self, runs: int, budget: int, quiet: bool = False, file: Any = None) -> None:
        self.runs, self.budget = runs, budget
        self.total = runs * budget
        self.k = 0
        self.base = 0             # samples of finished runs
        self.current = 0          # samples of the current run
        self.label = ""
        self.best: dict[str, float] = {}
        self.t0 = time.perf_counter()
        self.bar = tqdm(total=self.total, desc="compare ", disable=quiet or runs == 0,
                        bar_format=_FORMAT, file=file or sys.stderr, dynamic_ncols=True)

    def start_run(self, label: str, seed: int) -> Callable[[int, int, float], None]:
        """The progress callable of the next search."""
        self.k += 1
        self.current = 0
        self.label = label
        self.bar.set_description_str(f"compare [{self.k}/{self.runs} {label} s{seed}] ")

        def update(unique: int, budget: int, best: float) -> None:
            self.bar.update(max(0, unique - self.current))
            self.current = unique
            if math.isfinite(best):
                self.best[label] = max(self.best.get(label, -math.inf), best)
            done = self.base + self.current
            self.bar.set_postfix_str(
                f"best {label} {_best(self.best.get(label, -math.inf))}, "
                f"{eta_text(done, self.total, time.perf_counter() - self.t0)}", refresh=True)

        return update

    def restart(self) -> None:
        """Restart the clock if no sample is done yet (see :meth:`SearchProgress.restart`)."""
        if self.base + self.current == 0:
            self.t0 = time.perf_counter()
            if not self.bar.disable:
                self.bar.start_t = self.bar.last_print_t = self.bar._time()

    def end_run(self) -> None:
        """Account for a search that stopped before its budget (stalled/exhausted)."""
        self.base += self.budget
        if self.current < self.budget:
            self.bar.update(self.budget - self.current)
        self.current = 0

    def close(self) -> None:
        self.bar.close()
