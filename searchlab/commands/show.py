"""``searchlab show``: one search or comparison folder in detail.

    searchlab show runs/<search folder>       # summary, statuses, best rules, re-scores
    searchlab show runs/<compare folder>      # the comparison's summary.md
    searchlab show <folder name>              # looked up in run_dir= (default runs)
    searchlab show                            # the newest folder of run_dir

Files are only read (``searchlab.runfiles``; an interrupted search's journal); a
checkpoint is never unpickled.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..config import ConfigError, parse_model
from ._common import fail, options_parser


class ShowOptions(BaseModel):
    """Options of ``searchlab show``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    folder: str | None = Field(None, description="the folder (also as the first word); default: the newest of run_dir")
    run_dir: str = Field("runs", description="run directory to look the folder up in")
    top_k: int = Field(5, ge=1, description="how many best rules to show")


def _resolve(opts: ShowOptions) -> Path:
    from .runs_list import describe, entries

    if opts.folder is None:
        if not Path(opts.run_dir).is_dir():
            raise ConfigError(f"run_dir {opts.run_dir!r} does not exist; give a folder")
        rows = entries(opts.run_dir)
        if not rows:
            raise ConfigError(f"no searches or comparisons in {opts.run_dir} yet")
        return Path(rows[-1].folder)
    for cand in (Path(opts.folder), Path(opts.run_dir) / opts.folder):
        if describe(cand) is not None:
            return cand
    raise ConfigError(f"{opts.folder!r} is not a search or comparison folder (nor one in "
                      f"{opts.run_dir}/); `searchlab list` shows them")


def _fmt(x: Any, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) else "-"


def show_search(folder: Path, top_k: int = 5) -> str:
    """The text ``searchlab show`` prints for a search folder."""
    from ..runfiles import best_results, load_search, md_rules
    from .runs_list import _counted, describe, journal_results

    e = describe(folder)
    assert e is not None
    lines = [f"search {folder}  ({e.status})",
             f"  strategy {e.strategy or '?'}   task {e.task or '?'}   "
             f"fidelity {e.fidelity or '?'}"]
    if e.status == "finished":
        run = load_search(folder)
        s = run.summary
        results = run.results
        lines.append(f"  space {s.get('space', '?')}   seed {s.get('seed', '?')}   "
                     f"eval_seed {s.get('eval_seed', '?')}")
        lines.append(f"  budget {s.get('budget', '?')}: {s.get('unique', '?')} unique "
                     f"evaluations, {s.get('asked', '?')} asked, {s.get('repeats', 0)} "
                     f"repeats, stopped: {s.get('stopped', '?')}, "
                     f"{_fmt(s.get('seconds'), 1)} s")
    elif e.status == "interrupted":
        results = tuple(_counted(journal_results(folder)))
        lines.append(f"  {len(results)} of {e.budget if e.budget is not None else '?'} unique "
                     "evaluations journaled; continue it with: "
                     f"searchlab search resume={folder}")
    else:
        return "\n".join(lines + ["  results.json cannot be read"]) + "\n"
    statuses = Counter(r.status for r in results)
    if statuses:
        lines.append("  statuses: " + ", ".join(f"{k} {v}" for k, v in statuses.most_common()))
    best = best_results([r for r in results if r.ok], top_k)
    if best:
        lines.append(f"  best reward {_fmt(best[0].reward)}: {best[0].rule}")
        lines += ["", "best rules:", md_rules(best).rstrip()]
    else:
        lines.append("  no rule evaluated successfully")
    rescored = folder / "rescored.md"
    if rescored.is_file():
        lines += ["", rescored.read_text().rstrip()]
    if best:
        lines += ["", f"use rule: searchlab export source={folder}"]
    return "\n".join(lines) + "\n"


def show_compare(folder: Path) -> str:
    """The text ``searchlab show`` prints for a comparison folder."""
    from .runs_list import describe

    e = describe(folder)
    assert e is not None
    lines = [f"comparison {folder}  ({e.status})",
             f"  strategies {e.strategy or '?'}   task {e.task or '?'}   fidelity "
             f"{e.fidelity or '?'}   budget {e.budget if e.budget is not None else '?'}",
             f"  searches finished: {e.done} of {e.total if e.total is not None else '?'}"]
    summary = folder / "summary.md"
    if summary.is_file():
        lines += ["", summary.read_text().rstrip(), ""]
        for name in ("report.html", "best_so_far.png", "summary.csv"):
            if (folder / name).is_file():
                lines.append(f"report:   {folder / name}")
        lines.append(f"re-report without re-running: searchlab compare report={folder}")
    else:
        done = sorted(p.parent.name for p in folder.glob("runs/*/results.json"))
        lines.append(f"  finished: {', '.join(done) or 'none'}")
        lines.append("  continue it: the same `searchlab compare ...` command with "
                     f"resume=true out={folder}")
    return "\n".join(lines) + "\n"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = options_parser(sub, "show", ShowOptions,
                       help="show one search or comparison folder (summary, best rules)",
                       description="Show a search's summary, statuses and best rules, or a "
                                   "comparison's summary (summary.md).",
                       examples=["searchlab show runs/<search or compare folder>",
                                 "searchlab show <folder name> run_dir=elsewhere",
                                 "searchlab show                 # the newest folder"])
    p.add_argument("overrides", nargs="*", metavar="FOLDER|key=value",
                   help="the folder, then run_dir=, top_k=")
    return p


def _is_option(word: str) -> bool:
    # folder names may hold '=' (fidelity keys such as fast+final_epochs=5): a word is an
    # option only when it starts with an option's name
    return word.partition("=")[0].strip() in ShowOptions.model_fields and "=" in word


def run(args: argparse.Namespace) -> int:
    words = list(args.overrides)
    plain = [w for w in words if not _is_option(w)]
    if len(plain) > 1:
        return fail("show", f"give one folder, got {len(plain)}: {' '.join(plain)}")
    try:
        opts = parse_model(ShowOptions, [w for w in words if _is_option(w)])
        if plain:
            opts = opts.model_copy(update={"folder": plain[0]})
        folder = _resolve(opts)
    except ConfigError as e:
        return fail("show", str(e))
    from ..runfiles import MANIFEST

    text = show_compare(folder) if (folder / MANIFEST).is_file() else show_search(folder, opts.top_k)
    print(text, end="")
    return 0
