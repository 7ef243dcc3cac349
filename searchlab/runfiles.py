"""The run-folder format: what one search or one comparison leaves on disk.

A search's output folder holds::

    results.json      {"summary": {...}, "results": [Result, ...]}  (lossless)
    results.csv       one row per sample (RESULT_COLUMNS)
    best_rules.md     the top-k rules as a Markdown table
    best_rules.json   the same rows as JSON
    summary.json      the search's counters and settings
    config.yaml       the config it ran with (written by searchlab.app)
    evaluations.jsonl / checkpoint.pkl   the journal and checkpoint (searchlab.checkpoint)

A comparison's folder holds ``comparison.json`` (strategy order, seeds, experiment) and
``runs/<label>-s<seed>/`` (one search folder each), plus the report files
(:mod:`searchlab.report.comparison`).  Results are written with the one codec of
:mod:`searchlab.result`.  This module only reads and writes files; running searches is
:mod:`searchlab.app`'s job.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .result import Result, result_from_json, result_to_json, to_jsonable

__all__ = [
    "MANIFEST", "RESULT_COLUMNS", "RunRecord", "best_results", "dump_json", "load_runs",
    "load_search", "md_rules", "read_manifest", "reward_value", "sample_index",
    "write_manifest", "write_search_files",
]

#: columns of ``results.csv`` (one row per sample)
RESULT_COLUMNS: tuple[str, ...] = (
    "sample", "asked", "rule", "key", "reward", "status", "best_lr", "seconds", "cpu_seconds",
    "train_examples", "cached", "tokens", "seed", "task", "fidelity", "val_loss", "val_acc",
    "message")
#: a comparison folder's manifest
MANIFEST = "comparison.json"


def reward_value(x: Any) -> float:
    """A reward as a float for ranking: NaN, inf and non-numbers count as ``-inf``."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return -math.inf
    return v if math.isfinite(v) else -math.inf


def sample_index(r: Result, default: int) -> int:
    """The sample index the runner stored in ``r.extra["sample"]`` (else ``default``)."""
    s = r.extra.get("sample") if isinstance(r.extra, dict) else None
    return int(s) if isinstance(s, (int, float)) else default


def _rank(p: tuple[int, Result]) -> tuple[float, int]:
    return -reward_value(p[1].reward), sample_index(p[1], p[0])


def best_results(results: Iterable[Result], k: int) -> list[Result]:
    """The ``k`` best results with distinct keys (reward desc, then earliest sample)."""
    if k == 1:      # the first of the sorted order below, without sorting (a report asks ~10^3 times)
        first = min(enumerate(results), key=_rank, default=None)
        return [] if first is None else [first[1]]
    seen: set[str] = set()
    ranked = sorted(enumerate(results), key=_rank)
    out = []
    for _, r in ranked:
        if r.key in seen:
            continue
        seen.add(r.key)
        out.append(r)
        if len(out) == k:
            break
    return out


def dump_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented strict JSON (non-finite floats as strings)."""
    Path(path).write_text(json.dumps(to_jsonable(data), indent=1, allow_nan=False) + "\n")


def _dump_results(path: Path, summary: Mapping[str, Any], results: Sequence[Result]) -> None:
    """``results.json``: ``{"summary": ..., "results": [...]}`` with one result per line.

    ``json.dumps`` with ``indent`` runs Python's own encoder; one compact line per result
    runs the C encoder and was 5x faster (a search on a table writes 1,000 results twice:
    its folder and its MLflow artifacts).  Same JSON, same strictness."""
    rows = ",\n".join(json.dumps(to_jsonable(result_to_json(r)), allow_nan=False)
                      for r in results)
    head = json.dumps(to_jsonable(dict(summary)), indent=1, allow_nan=False)
    Path(path).write_text(f'{{"summary": {head},\n "results": [\n{rows}\n ]}}\n'
                          if rows else f'{{"summary": {head},\n "results": []}}\n')


def _result_row(i: int, r: Result) -> dict[str, Any]:
    extra = r.extra if isinstance(r.extra, dict) else {}
    return {"sample": sample_index(r, i), "asked": extra.get("asked", ""), "rule": r.rule,
            "key": r.key, "reward": r.reward, "status": r.status, "best_lr": r.best_lr,
            "seconds": round(float(r.seconds), 6),
            "cpu_seconds": extra.get("cpu_seconds", ""),
            "train_examples": extra.get("train_examples", ""),
            "cached": bool(r.cached), "tokens": " ".join(r.tokens), "seed": r.seed,
            "task": r.task, "fidelity": r.fidelity, "val_loss": r.val_loss,
            "val_acc": r.val_acc, "message": (r.message or "").strip().splitlines()[0][:200]
            if r.message else ""}


def md_rules(best: Sequence[Result]) -> str:
    """The top rules as a Markdown table (rank, reward, best lr, status, sample, rule)."""
    lines = ["| rank | reward | best lr | status | sample | rule |",
             "|---:|---:|---:|---|---:|---|"]
    for k, r in enumerate(best, 1):
        lr = f"{r.best_lr:.0e}" if r.best_lr is not None else "-"
        lines.append(f"| {k} | {reward_value(r.reward):.4f} | {lr} | {r.status} | "
                     f"{sample_index(r, -1)} | `{r.rule}` |")
    return "\n".join(lines) + "\n"


def write_search_files(folder: str | os.PathLike[str], results: Sequence[Result],
                       summary: Mapping[str, Any], top_k: int = 5) -> dict[str, Path]:
    """Write one search's ``results.json`` (lossless), ``results.csv`` (one row per
    sample), ``best_rules.md`` / ``best_rules.json`` and ``summary.json`` into ``folder``."""
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    paths = {name: d / name for name in ("results.json", "results.csv", "best_rules.md",
                                         "best_rules.json", "summary.json")}
    _dump_results(paths["results.json"], summary, results)
    with paths["results.csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        w.writeheader()
        for i, r in enumerate(results):
            w.writerow(_result_row(i, r))
    best = best_results(results, top_k)
    paths["best_rules.md"].write_text(md_rules(best))
    dump_json(paths["best_rules.json"], [_result_row(sample_index(r, -1), r) for r in best])
    dump_json(paths["summary.json"], dict(summary))
    return paths


@dataclass(frozen=True)
class RunRecord:
    """One finished search, as a report needs it."""

    label: str                       # strategy choice (e.g. "gp", "nos-ppo-paper")
    seed: int
    results: tuple[Result, ...]
    summary: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""                 # where it was read from

    # the views below are computed once (the record is frozen and its results a tuple);
    # a 30-seed report reads them ~20 times per run
    @cached_property
    def _unique(self) -> tuple[Result, ...]:
        seen: set[str] = set()
        out = []
        for r in self.results:
            if r.key not in seen:
                seen.add(r.key)
                out.append(r)
        return tuple(out)

    def unique_results(self) -> list[Result]:
        """One result per unique key, in evaluation order (repeated keys dropped)."""
        return list(self._unique)

    @cached_property
    def rewards(self) -> np.ndarray:
        """Reward per unique evaluation, in order (non-finite rewards as NaN); read-only."""
        a = np.array([reward_value(r.reward) for r in self._unique], dtype=float)
        a = np.where(np.isfinite(a), a, np.nan)
        a.flags.writeable = False
        return a

    @property
    def unique(self) -> int:
        return int(len(self.rewards))

    @property
    def asked(self) -> int:
        a = self.summary.get("asked")
        return int(a) if isinstance(a, (int, float)) and a > 0 else len(self.results)

    @property
    def wall_seconds(self) -> float:
        s = self.summary.get("seconds")
        if isinstance(s, (int, float)) and math.isfinite(s):
            return float(s)
        return float(sum(float(r.seconds or 0.0) for r in self.results))


def load_search(folder: str | os.PathLike[str], label: str | None = None,
                seed: int | None = None) -> RunRecord:
    """Read a search's ``results.json`` (written by :func:`write_search_files`)."""
    p = Path(folder)
    f = p if p.is_file() else p / "results.json"
    data = json.loads(f.read_text())
    summary = data.get("summary", {}) or {}
    results = tuple(result_from_json(d) for d in data.get("results", []))
    lab = label or summary.get("label") or summary.get("strategy") or p.name
    sd = seed if seed is not None else int(summary.get("seed", 0) or 0)
    return RunRecord(label=str(lab), seed=sd, results=results, summary=summary, source=str(f))


def write_manifest(folder: str | os.PathLike[str], data: Mapping[str, Any]) -> Path:
    """Write a comparison's ``comparison.json`` (strategies in order, seeds, experiment)."""
    path = Path(folder) / MANIFEST
    dump_json(path, dict(data))
    return path


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """A comparison's ``comparison.json`` ({} if there is none)."""
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def load_runs(folder: str | os.PathLike[str]) -> list[RunRecord]:
    """All searches under ``folder`` (``runs/*/results.json``, or any ``*/results.json``),
    in the comparison's strategy order (``comparison.json``) when known, then by seed."""
    d = Path(folder)
    files = sorted(d.glob("runs/*/results.json")) or sorted(d.glob("*/results.json"))
    if not files and (d / "results.json").is_file():
        files = [d / "results.json"]
    runs = [load_search(f) for f in files]
    order = list(read_manifest(d).get("strategies", []))
    rank = {lab: i for i, lab in enumerate(order)}
    return sorted(runs, key=lambda r: (rank.get(r.label, len(rank)), r.label, r.seed))
