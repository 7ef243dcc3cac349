"""``searchlab list``: the searches and comparisons of a run directory.

    searchlab list                      # what runs/ holds, oldest first
    searchlab list run_dir=DIR format=json

One row per search or comparison folder: when it last wrote, kind, status (``finished``:
its results are written; ``interrupted``: killed before the end, or still running),
strategy, task/fidelity, budget (unique evaluations done / budget; for a comparison,
searches done / searches), best reward and the folder (give it to ``searchlab show``).
The files are only read (``searchlab.runfiles`` and the journal's JSON lines); checkpoints
are never unpickled.  (The module is ``runs_list``, registered as the command ``list``:
a module named ``list`` would shadow the builtin inside the package.)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..config import ConfigError, parse_model
from ._common import fail, options_parser

__all__ = ["Entry", "ListOptions", "describe", "entries", "journal_results"]

#: files that mark a folder as a search's (any one of them)
SEARCH_FILES = ("results.json", "config.yaml", "evaluations.jsonl", "checkpoint.pkl")


class ListOptions(BaseModel):
    """Options of ``searchlab list``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_dir: str = Field("runs", description="run directory to list")
    format: Literal["table", "json"] = Field("table", description="table or json")


@dataclass(frozen=True)
class Entry:
    """One search or comparison folder, as ``searchlab list`` shows it."""

    kind: str            # "search" | "compare"
    status: str          # "finished" | "interrupted" | "unreadable"
    strategy: str        # a comparison: its strategies, comma-separated
    task: str
    fidelity: str
    budget: int | None   # unique evaluations per search
    done: int            # unique evaluations done (a comparison: searches finished)
    total: int | None    # budget (a comparison: strategies x seeds)
    best_reward: float | None
    best_rule: str
    folder: str
    updated: float       # newest modification time of its files (seconds since epoch)


def _mtime(folder: Path, names: tuple[str, ...]) -> float:
    times = [(folder / n).stat().st_mtime for n in names if (folder / n).exists()]
    return max(times) if times else folder.stat().st_mtime


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else {}
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _name(section: Any) -> str:
    return str(section.get("name", "")) if isinstance(section, dict) else str(section or "")


def journal_results(folder: Path) -> list[Any]:
    """The results of a search's ``evaluations.jsonl`` (unreadable lines skipped:
    the last one of a killed search may be cut)."""
    from ..checkpoint import JOURNAL_FILE
    from ..result import loads_result

    path = folder / JOURNAL_FILE
    out = []
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            try:
                out.append(loads_result(line))
            except (ValueError, TypeError, KeyError):
                continue
    return out


def _counted(results: list[Any]) -> list[Any]:
    """One result per key, over-budget answers left out (what the budget counts)."""
    seen: set[str] = set()
    out = []
    for r in results:
        extra = r.extra if isinstance(r.extra, dict) else {}
        if extra.get("over_budget") or r.key in seen:
            continue
        seen.add(r.key)
        out.append(r)
    return out


def _search_entry(folder: Path) -> Entry:
    from ..runfiles import best_results, load_search

    updated = _mtime(folder, SEARCH_FILES)
    cfg = _read_yaml(folder / "config.yaml")
    if (folder / "results.json").is_file():
        try:
            run = load_search(folder)
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return Entry("search", "unreadable", _name(cfg.get("strategy")),
                         _name(cfg.get("task")), _name(cfg.get("fidelity")), None, 0, None,
                         None, "", str(folder), updated)
        s = run.summary
        config = s.get("config") if isinstance(s.get("config"), dict) else cfg
        best = best_results([r for r in run.results if r.ok], 1)
        budget = s.get("budget", config.get("budget"))
        return Entry("search", "finished", str(s.get("label") or s.get("strategy") or run.label),
                     str(s.get("task") or _name(config.get("task"))),
                     str(s.get("fidelity") or _name(config.get("fidelity"))),
                     int(budget) if isinstance(budget, (int, float)) else None,
                     int(s.get("unique", run.unique) or 0),
                     int(budget) if isinstance(budget, (int, float)) else None,
                     _finite(best[0].reward) if best else None,
                     best[0].rule if best else "", str(folder), updated)
    # no results.json yet: killed (or still running); what the journal holds
    results = _counted(journal_results(folder))
    best = best_results([r for r in results if r.ok], 1)
    budget = cfg.get("budget")
    return Entry("search", "interrupted", _name(cfg.get("strategy")), _name(cfg.get("task")),
                 _name(cfg.get("fidelity")),
                 int(budget) if isinstance(budget, (int, float)) else None, len(results),
                 int(budget) if isinstance(budget, (int, float)) else None,
                 _finite(best[0].reward) if best else None, best[0].rule if best else "",
                 str(folder), updated)


def _compare_entry(folder: Path) -> Entry:
    from ..runfiles import MANIFEST, read_manifest

    try:
        manifest = read_manifest(folder)
    except (OSError, ValueError):
        manifest = {}
    cfg = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    strategies = [str(s) for s in manifest.get("strategies", []) or []]
    seeds = manifest.get("seeds", []) or []
    total = len(strategies) * len(seeds) if strategies and seeds else None
    runs = [_search_entry(p.parent) for p in sorted(folder.glob("runs/*/results.json"))]
    finished = [r for r in runs if r.status == "finished"]
    rewards = [(r.best_reward, r.best_rule) for r in finished if r.best_reward is not None]
    best = max(rewards, key=lambda x: x[0]) if rewards else (None, "")
    complete = (folder / "summary.md").is_file() and (total is None or len(finished) >= total)
    budget = cfg.get("budget")
    updated = max([_mtime(folder, (MANIFEST, "summary.md"))] + [r.updated for r in runs])
    return Entry("compare", "finished" if complete else "interrupted", ",".join(strategies),
                 _name(cfg.get("task")), _name(cfg.get("fidelity")),
                 int(budget) if isinstance(budget, (int, float)) else None, len(finished),
                 total, best[0], best[1], str(folder), updated)


def describe(folder: str | Path) -> Entry | None:
    """The :class:`Entry` of a search or comparison folder (None for anything else)."""
    from ..runfiles import MANIFEST

    d = Path(folder)
    if not d.is_dir():
        return None
    if (d / MANIFEST).is_file():
        return _compare_entry(d)
    if any((d / n).is_file() for n in SEARCH_FILES):
        return _search_entry(d)
    return None


def entries(run_dir: str | Path) -> list[Entry]:
    """Every search and comparison directly inside ``run_dir``, oldest first (the
    searches of a comparison are part of its entry)."""
    out = [e for d in sorted(Path(run_dir).iterdir()) if d.is_dir()
           for e in [describe(d)] if e is not None]
    return sorted(out, key=lambda e: (e.updated, e.folder))


def _progress(e: Entry) -> str:
    if e.kind == "compare":
        return f"{e.done}/{e.total if e.total is not None else '?'} searches x {e.budget or '?'}"
    if e.status == "finished" and e.done == e.total:
        return str(e.total)
    return f"{e.done}/{e.total if e.total is not None else '?'}"


def table(rows: list[Entry]) -> str:
    """The rows as an aligned text table."""
    head = ("updated", "kind", "status", "strategy", "task/fidelity", "budget", "best",
            "folder")
    body = [(time.strftime("%Y-%m-%d %H:%M", time.localtime(e.updated)), e.kind, e.status,
             e.strategy or "-", f"{e.task or '?'}/{e.fidelity or '?'}", _progress(e),
             f"{e.best_reward:.4f}" if e.best_reward is not None else "-", e.folder)
            for e in rows]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                     for r in [head, *body])


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = options_parser(sub, "list", ListOptions, defaults=True,
                       help="list the searches and comparisons of a run directory",
                       description="List the searches and comparisons in a run directory: "
                                   "status (finished, or interrupted: killed or still "
                                   "running), strategy, task, budget, best reward, folder.",
                       examples=["searchlab list",
                                 "searchlab list run_dir=elsewhere format=json",
                                 "searchlab show <folder>        # one of them in detail"])
    p.add_argument("overrides", nargs="*", metavar="key=value", help="run_dir=, format=")
    return p


def run(args: argparse.Namespace) -> int:
    try:
        opts = parse_model(ListOptions, args.overrides)
    except ConfigError as e:
        return fail("list", str(e))
    run_dir = Path(opts.run_dir)
    if not run_dir.is_dir():
        return fail("list", f"run_dir {opts.run_dir!r} does not exist (searches write into "
                            "run_dir=, default runs)")
    rows = entries(run_dir)
    if opts.format == "json":
        print(json.dumps([asdict(e) for e in rows], indent=1))
        return 0
    if not rows:
        print(f"no searches or comparisons in {run_dir} yet (searchlab search, searchlab compare)")
        return 0
    print(table(rows))
    print(f"\n{len(rows)} folder(s); details: searchlab show <folder>")
    return 0
