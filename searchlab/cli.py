"""The ``searchlab`` command line.  Each sub-command lives in ``searchlab.commands.<name>``
and exposes ``add_parser(subparsers)`` (returning its parser) and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from . import __version__

#: sub-commands in the order ``--help`` lists them
COMMANDS: tuple[str, ...] = ("demo", "evaluate", "search", "compare", "list", "show", "ui",
                             "export", "meta-train")
#: commands whose module is not ``searchlab.commands.<command>`` (a module named ``list``
#: would shadow the builtin inside the package)
MODULES: dict[str, str] = {"list": "runs_list", "meta-train": "meta_train"}


def _quiet_third_parties() -> None:
    # no network at run time: MLflow telemetry and Ray usage stats off unless asked for
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="searchlab",
        description="Search, compare and use optimizer update rules (Neural Optimizer Search).")
    parser.add_argument("--version", action="version", version=f"searchlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"searchlab.commands.{MODULES.get(name, name)}")
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_third_parties()
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
