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
                             "export", "relog", "meta-train", "table")
#: commands whose module is not ``searchlab.commands.<command>`` (a module named ``list``
#: would shadow the builtin inside the package)
MODULES: dict[str, str] = {"list": "runs_list", "meta-train": "meta_train"}


def _quiet_third_parties() -> None:
    # no network at run time: MLflow telemetry and Ray usage stats off unless the user
    # set the variables (the rule of searchlab.mlflow_tracker.disable_telemetry, which
    # also runs wherever searchlab imports MLflow; not imported here: --help stays fast)
    if "MLFLOW_DISABLE_TELEMETRY" not in os.environ and "DO_NOT_TRACK" not in os.environ:
        os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
        os.environ["DO_NOT_TRACK"] = "true"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


#: errors of a store or run folder that every command reports as its one-line error
_STORE_ERRORS = (("searchlab.mlflow_tracker", "TrackingError"), ("searchlab.cache", "CacheError"),
                 ("searchlab.checkpoint", "ResumeError"))


def _store_error(e: BaseException) -> bool:
    # an instance's class is loaded: look it up without importing anything
    return any(isinstance(e, getattr(sys.modules[m], name)) for m, name in _STORE_ERRORS
               if m in sys.modules)


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
    except Exception as e:
        if not _store_error(e):
            raise
        print(f"searchlab {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
