"""``searchlab table``: build, export and inspect the tabular benchmark.

    searchlab table info                              # the shipped table: checksum, counts
    searchlab table build workers=2                   # evaluate what runs/table still misses
    searchlab table build limit=500                   # at most 500 evaluations this time
    searchlab table status                            # how far the build in runs/table is
    searchlab table export                            # write searchlab/tabular/data/<name>.json.gz
    searchlab table describe out=runs/table-space     # reward histogram, share above Adam, top 20

A build takes hours on 2 cores (every function of the space on 2 seeds, the best 5 % on
a third); it journals every evaluation and continues where it stopped (README, "The
tabular benchmark").  ``task=table`` then answers any rule of the space from the table.
"""

from __future__ import annotations

import argparse
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..config import ConfigError, parse_model
from ._common import fail, options_parser, say


class TableOptions(BaseModel):
    """Options of ``searchlab table`` (after the action)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dir: str = Field("runs/table", description="build directory (probes, reward cache, failures)")
    space: str = Field("tabular", description="the space tabulated (a named space; every token string is probed, so keep it small)")
    task: str = Field("mnist1d", description="the task of the rewards")
    fidelity: str = Field("compare", description="the fidelity of the rewards")
    name: str = Field("mnist1d-tabular", description="the table's name (space, task, fidelity and name must match the build directory's for status and export)")
    workers: int = Field(2, ge=1, description="build: evaluation processes")
    limit: int | None = Field(None, ge=1, description="build: at most this many evaluations this call")
    retry_failed: bool = Field(False, description="build: evaluate timed-out or failed records again")
    out: str | None = Field(None, description="export: the table file (default: the shipped table); describe: a folder for space.md and the histogram")
    table: str = Field("mnist1d-tabular", description="info, describe: a table name or .json.gz path")
    top: int = Field(20, ge=1, description="describe: how many best rules to list")
    quiet: bool = Field(False, description="no progress bars")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = options_parser(sub, "table", TableOptions, width=12,
                       help="build, export and inspect the tabular benchmark",
                       description="Build the tabular benchmark (every function of the "
                                   "'tabular' space evaluated on mnist1d at the comparison "
                                   "fidelity), export it, or inspect a table file.",
                       examples=["searchlab table info", "searchlab table build workers=2",
                                 "searchlab table status", "searchlab table export",
                                 "searchlab table describe out=runs/table-space"])
    p.add_argument("action", choices=["info", "build", "status", "export", "describe"])
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dir=, workers=, limit=, out=")
    return p


def _info(table: str) -> int:
    from ..tabular.table import Table, TableError

    try:
        t = Table.load(table)
    except TableError as e:
        return fail("table", str(e))
    m = t.meta
    print(f"table {t.name}: {t.path} (SHA-256 verified)")
    print(f"  space {t.space.name}: depth {t.space.depth}; operands {' '.join(t.space.operands)}; "
          f"unary {' '.join(t.space.unary)}; binary {' '.join(t.space.binary)}")
    print(f"  rewards: task {m['task']} ({m['task_id']}), protocol {m['protocol']}, "
          f"seeds {m['seeds']}")
    for k, v in m.get("counts", {}).items():
        print(f"  {k}: {v}")
    print(f"  complete: {t.complete}; built {m.get('built')} with {m.get('versions')}")
    return 0


def _describe(table: str, out: str | None, top: int) -> int:
    from pathlib import Path

    from ..tabular.summary import plot_histogram, summarize_table, summary_markdown
    from ..tabular.table import Table, TableError

    try:
        t = Table.load(table)
    except TableError as e:
        return fail("table", str(e))
    summary = summarize_table(t, top=top)
    text = summary_markdown(summary)
    print(text, end="")
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "space.md").write_text(text)
        png = plot_histogram(summary, folder / "reward_histogram.png")
        print(f"wrote {folder / 'space.md'} and {png}")
    return 0


def run(args: argparse.Namespace) -> int:
    action: Literal["info", "build", "status", "export", "describe"] = args.action
    try:
        opts = parse_model(TableOptions, args.overrides)
    except ConfigError as e:
        return fail("table", str(e))
    if action == "info":
        return _info(opts.table)
    if action == "describe":
        return _describe(opts.table, opts.out, opts.top)
    from ..tabular import build as b

    try:
        spec = b.BuildSpec(space=opts.space, task=opts.task, fidelity=opts.fidelity,
                           name=opts.name)
        if action == "build":
            b.build(opts.dir, spec, workers=opts.workers, limit=opts.limit,
                    retry_failed=opts.retry_failed, say=say, bar=not opts.quiet)
        elif action == "status":
            for k, v in b.status(opts.dir, spec).items():
                print(f"{k}: {v}")
        else:
            path, counts = b.export_table(opts.dir, opts.out, spec)
            print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and {path.name}.sha256")
            for k, v in counts.items():
                print(f"  {k}: {v}")
    except (ValueError, KeyError) as e:     # a build directory of another spec, a bad name
        return fail("table", str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e))
    return 0
