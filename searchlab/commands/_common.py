"""What every command shares: config arguments, the one-line error, status lines."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..app import say
from ..config import COMPARE_KEYS, Config, ConfigError, config_reference, load_config

if TYPE_CHECKING:
    from ..tracking import Tracker

__all__ = ["add_config_arguments", "fail", "load_or_fail", "print_tracking", "reference_text",
           "say"]


def reference_text(prefix: str = "") -> str:
    """The config keys, defaults and docs, for ``--help``."""
    rows = config_reference()
    width = max(len(k) for k, _, _ in rows)
    lines = ["config keys (key=value; groups load configs/<group>/<name>.yaml):"]
    for key, default, doc in rows:
        lines.append(f"  {key:<{width}}  {doc} [default: {default}]")
    return "\n".join(lines)


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. strategy=gp budget=200 seed=3; "
                        "config=experiment/quick loads a ready experiment")
    p.add_argument("--config", metavar="FILE", default=None,
                   help="a YAML config file (applied after configs/default.yaml)")


def print_tracking(tracker: "Tracker") -> None:
    """Where the tracker logged and how to open it (nothing for trackers that say none)."""
    where, hint = tracker.where(), tracker.open_hint()
    if where:
        print(f"MLflow:   {where}")
    if hint:
        print(f"open UI:  {hint}")


def fail(command: str, message: str, code: int = 2) -> int:
    """Print one clear error line and return the exit code."""
    print(f"searchlab {command}: error: {message}", file=sys.stderr)
    return code


def load_or_fail(command: str, args: argparse.Namespace, allow_compare_keys: bool
                 ) -> Config | int:
    """Load the config of ``args``; on a problem print it and return the exit code."""
    try:
        if not allow_compare_keys:
            for item in args.overrides:
                key = item.partition("=")[0].strip()
                if key in COMPARE_KEYS:
                    raise ConfigError(f"{key!r} is a `searchlab compare` option, not a "
                                      f"`searchlab {command}` one")
        return load_config(args.overrides, args.config)
    except ConfigError as e:
        return fail(command, str(e))
