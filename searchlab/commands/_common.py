"""What every command shares: config arguments, the one-line error, status lines."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, Sequence

from ..app import say
from ..config import COMPARE_KEYS, Config, ConfigError, config_reference, load_config

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ..tracking import Tracker

__all__ = ["add_config_arguments", "fail", "load_or_fail", "options_parser", "print_tracking",
           "reference_text", "say"]


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


def options_parser(sub: Any, name: str, model: "type[BaseModel]", *, help: str,
                   description: str, examples: Sequence[str], width: int = 8,
                   defaults: bool = False) -> argparse.ArgumentParser:
    """The parser of a command whose options are a pydantic ``model`` of ``key=value``
    words: the options table (each field's description, optionally its default) and
    ``examples`` go into the epilog.  The command adds its own positional arguments."""
    rows = "\n".join(f"  {k:<{width}} {f.description}"
                     + (f" [default: {f.default}]" if defaults else "")
                     for k, f in model.model_fields.items())
    return sub.add_parser(name, help=help, description=description,
                          epilog="options (key=value):\n" + rows + "\n\nexamples:\n"
                                 + "".join(f"  {e}\n" for e in examples),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


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
