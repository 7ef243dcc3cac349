"""Building a table: every function of a space evaluated on a task, journaled, resumable.

``searchlab table build`` (:func:`build`) runs, in a build directory (default
``runs/table``):

1. **enumerate**: every token string of the space probed once (``probes.jsonl``,
   :func:`~searchlab.tabular.functions.probe_space`), grouped into rows by fingerprint;
2. **evaluate**: every row's rule (and the reference optimizers outside the space, the
   table's *extras*) on each evaluation seed of ``seeds`` with the held-out test split
   scored (``Evaluator.evaluate(rule, seed, test=True)``, the re-scoring call), then the
   best ``top_fraction`` of rows by mean reward on ``top_seed`` too.  Rows go in a fixed
   pseudo-random order (by fingerprint hash), so a partial table is a uniform sample of
   the space.  Every result is committed to the build's reward cache
   (``cache/rewards.sqlite``: ``ok``/``diverged``) or to ``failures.jsonl``
   (``timeout``/``error``) the moment it arrives, so a killed build loses at most the
   evaluations in flight and ``build`` again continues with what is missing;
3. ``searchlab table export`` (:func:`export_table`) writes the table file and its
   checksum from the journals (partial tables say so: ``complete: false``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .. import kernels
from ..dsl import get_space
from ..dsl.tokens import Space
from ..result import Result
from .functions import Functions, probe_space
from .table import DEFAULT_TABLE, TABLE_DIR, Record, Row, Table

__all__ = ["BuildSpec", "BuildState", "build", "export_table", "status", "string_rows"]

#: the default build directory
BUILD_DIR = Path("runs") / "table"


@dataclass(frozen=True)
class BuildSpec:
    """What a table holds: the space, the task and fidelity of its rewards, the seeds."""

    space: str = "tabular"
    task: str = "mnist1d"
    fidelity: str = "compare"
    seeds: tuple[int, ...] = (0, 1)
    top_seed: int | None = 2
    top_fraction: float = 0.05
    name: str = DEFAULT_TABLE

    def space_obj(self) -> Space:
        return get_space(self.space)


def _order(fp: str) -> bytes:
    return hashlib.blake2b(fp.encode(), digest_size=8, person=b"searchlab-tab").digest()


class BuildState:
    """The state of one build directory: functions, evaluator, journals."""

    def __init__(self, out: Path, spec: BuildSpec,
                 progress: Callable[[int, int], None] | None = None) -> None:
        from ..evaluation import Evaluator
        from ..rescore import REFERENCE_RULES

        self.out, self.spec = out, spec
        out.mkdir(parents=True, exist_ok=True)
        spec_file = out / "spec.json"
        mine = {"space": spec.space, "task": spec.task, "fidelity": spec.fidelity,
                "seeds": list(spec.seeds), "top_seed": spec.top_seed,
                "top_fraction": spec.top_fraction, "name": spec.name}
        if spec_file.is_file():
            theirs = json.loads(spec_file.read_text())
            if theirs != mine:
                raise ValueError(f"{out} holds a build of {theirs}, not {mine}: use another "
                                 "build directory (dir=...)")
        else:
            spec_file.write_text(json.dumps(mine, indent=1) + "\n")
        self.functions: Functions = probe_space(spec.space_obj(), out / "probes.jsonl",
                                                progress=progress)
        rows = self.functions.rows
        self.rows = sorted(((fp, self.functions.representative(idx)) for fp, idx in rows.items()),
                           key=lambda x: _order(x[0]))
        self.evaluator = Evaluator(spec.task, spec.fidelity, cache_dir=out / "cache")
        known = {fp for fp, _ in self.rows}
        self.extras = []
        for name, rule in REFERENCE_RULES.items():
            pr = self.evaluator.probe(rule)
            if pr.digest not in known:
                self.extras.append((pr.digest, rule))
        self.failures_path = out / "failures.jsonl"

    # --- journals --------------------------------------------------------------------
    def failures(self) -> dict[tuple[str, int], dict[str, Any]]:
        out: dict[tuple[str, int], dict[str, Any]] = {}
        if self.failures_path.is_file():
            for line in self.failures_path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                out[(rec["fingerprint"], int(rec["seed"]))] = rec
        return out

    def cached(self, fp: str, seed: int) -> Result | None:
        ev = self.evaluator
        assert ev.cache is not None
        hit = ev.cache.get(fp, ev.task.id, ev.protocol, seed)
        return hit if hit is not None and "test_reward" in hit.extra else None

    def record(self, fp: str, seed: int, fails: dict[tuple[str, int], dict[str, Any]]
               ) -> Record | None:
        hit = self.cached(fp, seed)
        if hit is not None:
            return _record(hit)
        f = fails.get((fp, seed))
        if f is not None:
            return Record(seed, float("-inf"), None, None, f["status"],
                          float(f.get("cpu_seconds", 0.0)), float(f.get("seconds", 0.0)))
        return None

    def todo(self, seed: int, fps: Iterable[tuple[str, str]], retry: bool
             ) -> list[tuple[str, str, int]]:
        fails = {} if retry else self.failures()
        return [(fp, rule, seed) for fp, rule in fps
                if (fp, seed) not in fails and self.cached(fp, seed) is None]

    def top(self) -> list[tuple[str, str]]:
        """The best ``top_fraction`` of the rows by mean reward over ``seeds`` (rows with
        every seed recorded)."""
        fails = self.failures()
        scored = []
        for fp, rule in self.rows:
            recs = [self.record(fp, s, fails) for s in self.spec.seeds]
            if all(r is not None for r in recs):
                rw = [r.reward if r.status == "ok" else 0.0 for r in recs]  # type: ignore[union-attr]
                scored.append((sum(rw) / len(rw), fp, rule))
        scored.sort(key=lambda x: (-x[0], _order(x[1])))
        n = math.ceil(self.spec.top_fraction * len(self.rows))
        return [(fp, rule) for _, fp, rule in scored[:n]]


def _record(r: Result) -> Record:
    test = r.extra.get("test_reward")
    return Record(int(r.seed), float(r.reward), None if test is None else float(test),
                  r.best_lr, r.status, float(r.extra.get("cpu_seconds", 0.0) or 0.0),
                  float(r.seconds or 0.0))


@dataclass(frozen=True)
class _Evaluate:
    """The picklable callable of a build: one evaluation with the test split."""

    evaluator: Any

    def __call__(self, item: tuple[str, str, int]) -> Result:
        _, rule, seed = item
        return self.evaluator.evaluate(rule, seed, test=True)


def build(out: str | os.PathLike[str] = BUILD_DIR, spec: BuildSpec = BuildSpec(), *,
          workers: int = 2, limit: int | None = None, retry_failed: bool = False,
          say: Callable[[str], None] = print, bar: bool = True) -> dict[str, int]:
    """Evaluate what the table in ``out`` still misses (see the module docstring); at most
    ``limit`` evaluations this call.  Returns counts of what was done."""
    from ..executors import EXECUTORS

    out = Path(out)
    t0 = time.time()
    state = BuildState(out, spec, progress=lambda d, n: say(f"probed {d}/{n} token strings")
                   if d % 10000 == 0 else None)
    say(f"space {spec.space!r}: {len(state.functions.strings)} token strings, "
        f"{len(state.rows)} distinct valid functions (+{len(state.extras)} reference rows); "
        f"probed in {time.time() - t0:.0f} s")
    done = {"evaluated": 0, "failed": 0}
    phases: list[tuple[str, int, list[tuple[str, str]]]] = [
        (f"seed {s}", s, state.extras + state.rows) for s in spec.seeds]
    name = "process" if workers > 1 else "serial"
    executor = EXECUTORS.get(name)(workers=workers)
    try:
        for label, seed, fps in phases + [("top", -1, [])]:
            if label == "top":
                if spec.top_seed is None:
                    break
                if any(state.todo(s, state.rows, retry_failed) for s in spec.seeds):
                    say("top rows: waiting for every row's first seeds")
                    break
                seed, fps = spec.top_seed, state.extras + state.top()
                label = f"top {len(fps) - len(state.extras)} rows, seed {seed}"
            items = state.todo(seed, fps, retry_failed)
            if limit is not None:
                items = items[:max(0, limit - done["evaluated"] - done["failed"])]
            if not items:
                continue
            say(f"{label}: {len(items)} evaluations to go")
            _run(executor, state, items, done, label, bar)
            if limit is not None and done["evaluated"] + done["failed"] >= limit:
                break
    finally:
        executor.close()
    say(f"build: {done['evaluated']} evaluated, {done['failed']} failed in "
        f"{time.time() - t0:.0f} s")
    return done


def _run(executor: Any, state: BuildState, items: list[tuple[str, str, int]],
         done: dict[str, int], label: str, bar: bool) -> None:
    from ..executors import failure_result

    progress = None
    if bar:
        from tqdm import tqdm

        progress = tqdm(total=len(items), desc=label, unit="eval", dynamic_ncols=True)

    def on_failure(item: tuple[str, str, int], f: Any) -> Result:
        return failure_result(item[1], f, seed=item[2])

    with open(state.failures_path, "a", encoding="utf-8") as fails:
        for i, res in executor.imap_unordered(_Evaluate(state.evaluator), items,
                                              on_failure=on_failure):
            fp, rule, seed = items[i]
            if res.status in ("ok", "diverged") and "test_reward" in res.extra:
                done["evaluated"] += 1      # the worker's evaluator committed it to the cache
            else:
                fails.write(json.dumps({"fingerprint": fp, "rule": rule, "seed": seed,
                                        "status": res.status, "message": res.message[-500:],
                                        "cpu_seconds": res.extra.get("cpu_seconds", 0.0),
                                        "seconds": res.seconds}) + "\n")
                fails.flush()
                done["failed"] += 1
            if progress is not None:
                progress.update(1)
    if progress is not None:
        progress.close()


def string_rows(functions: Functions, row_fingerprints: Sequence[str]
                ) -> tuple[list[int], list[str]]:
    """The table's string index: per token string its row (by fingerprint), or ``-1 - i``
    for the ``i``-th distinct probe problem; and the list of problems."""
    index = {fp: i for i, fp in enumerate(row_fingerprints)}
    problems: list[str] = []
    pidx: dict[str, int] = {}
    out = []
    for d, p in zip(functions.digests, functions.problems):
        if p is None:
            out.append(index[d])
        else:
            if p not in pidx:
                pidx[p] = len(problems)
                problems.append(p)
            out.append(-1 - pidx[p])
    return out, problems


def _versions() -> dict[str, str]:
    import numpy
    import torch

    import searchlab

    cap = ""
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # pragma: no cover - older torch
        pass
    return {"searchlab": searchlab.__version__, "torch": torch.__version__,
            "numpy": numpy.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "cpu_capability": cap,
            "cpu_vendor": kernels.cpu_vendor(),
            "torch_threads": str(torch.get_num_threads())}


def export_table(out: str | os.PathLike[str] = BUILD_DIR, path: str | os.PathLike[str] | None = None,
                 spec: BuildSpec = BuildSpec()) -> tuple[Path, dict[str, int]]:
    """Write the table of build directory ``out`` (default file: the shipped table of
    ``spec.name`` in :data:`~searchlab.tabular.table.TABLE_DIR`).  Rows without records
    yet are kept with none (``complete: false``)."""
    state = BuildState(Path(out), spec)
    fails = state.failures()
    string_row, problems = string_rows(state.functions, [fp for fp, _ in state.rows])

    def rows_of(pairs: Sequence[tuple[str, str]], seeds: Sequence[int]) -> list[Row]:
        out_rows = []
        for fp, rule in pairs:
            recs = [state.record(fp, s, fails) for s in seeds]
            out_rows.append(Row(fp, rule, tuple(r for r in recs if r is not None)))
        return out_rows

    all_seeds = list(spec.seeds) + ([spec.top_seed] if spec.top_seed is not None else [])
    rows = rows_of(state.rows, all_seeds)
    extras = rows_of(state.extras, all_seeds)
    n_top = math.ceil(spec.top_fraction * len(rows))
    full = [r for r in rows if len(r.records) >= len(spec.seeds)]
    counts = {"strings": len(state.functions.strings),
              "valid_strings": sum(p is None for p in state.functions.problems),
              "rows": len(rows), "rows_with_all_seeds": len(full),
              "records": sum(len(r.records) for r in rows),
              "top_rows": n_top,
              "top_rows_done": sum(len(r.records) > len(spec.seeds) for r in rows),
              "failed_records": sum(r.status not in ("ok", "diverged")
                                    for row in rows for r in row.records)}
    complete = (counts["rows_with_all_seeds"] == len(rows)
                and (spec.top_seed is None or counts["top_rows_done"] >= n_top))
    ev = state.evaluator
    meta = {"name": spec.name, "task": spec.task, "task_id": ev.task.id,
            "protocol": ev.protocol, "fidelity": spec.fidelity, "seeds": all_seeds,
            "top_fraction": spec.top_fraction, "complete": complete, "counts": counts,
            "versions": _versions(), "built": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": "searchlab table build && searchlab table export"}
    table = Table(meta, state.functions.space, list(state.functions.strings), string_row,
                  problems, rows, extras)
    target = Path(path) if path is not None else TABLE_DIR / f"{spec.name}.json.gz"
    return table.write(target), counts


def status(out: str | os.PathLike[str] = BUILD_DIR, spec: BuildSpec = BuildSpec()) -> dict[str, int]:
    """Counts of a build directory: rows, records per seed, failures."""
    state = BuildState(Path(out), spec)
    fails = state.failures()
    got = {f"seed {s}": sum(state.cached(fp, s) is not None for fp, _ in state.rows)
           for s in spec.seeds}
    return {"strings": len(state.functions.strings), "rows": len(state.rows),
            "extras": len(state.extras), **got, "failures": len(fails)}
