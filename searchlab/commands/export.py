"""``searchlab export``: a found rule as a short Python snippet for your own training code.

    searchlab export source=runs/<search folder>            # best rule, printed
    searchlab export source=runs/<compare folder> rank=2 out=my_rule.py
    searchlab export rule="exp(sign(g)*sign(m))*g" lr=0.01 out=powersign.py

The snippet defines ``RULE``, ``LR`` and ``make_optimizer(params, ...)`` returning a
``searchlab.optim.RuleOptimizer`` (a ``torch.optim.Optimizer``).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..config import ConfigError, parse_model
from ._common import fail, options_parser, say


class ExportOptions(BaseModel):
    """Options of ``searchlab export``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str | None = Field(None, description="a search or compare output folder, a results.json, or an MLflow experiment name")
    rule: str | None = Field(None, description="a rule's text instead of a source")
    rank: int = Field(1, ge=1, description="which of the best rules (1 = best)")
    lr: float | None = Field(None, gt=0, description="learning rate to suggest (default: the search's best lr, else 1e-3)")
    out: str | None = Field(None, description="write the snippet to this file (default: print it)")
    run_dir: str = Field("runs", description="run directory (to find a source by name, and its local MLflow store)")
    uri: str | None = Field(None, description="tracking URI, for a source given as an MLflow experiment name")


def _doc_text(value: Any) -> str:
    """``value`` as text that is safe inside the module's triple-quoted docstring and
    reads back as the same characters: backslashes, quotes, newlines, control and
    non-ASCII characters are escaped, so data from a results.json never becomes code."""
    return str(value).encode("unicode_escape").decode("ascii").replace('"', '\\"')


def usage_call(rule_text: str) -> str:
    """How to call the exported ``make_optimizer`` for ``rule_text`` (decay operands need
    ``total_steps``)."""
    from ..dsl import parse

    if parse(rule_text).uses_decay:
        return "make_optimizer(model.parameters(), total_steps=epochs * len(loader))"
    return "make_optimizer(model.parameters())"


def snippet(rule_text: str, lr: float, origin: str = "") -> str:
    """The Python source of an optimizer module for ``rule_text``.  Every value written
    into the code is a ``repr`` (``RULE``, ``LR``) or escaped (the docstring), so a crafted
    rule, task, fidelity or source name cannot add a statement to the module."""
    import math

    from ..dsl import parse

    rule = parse(rule_text)
    lr = float(lr)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"learning rate must be a positive number, got {lr!r}")
    decay = getattr(rule, "uses_decay", False)
    total = "total_steps: int | None = None" if not decay else "total_steps: int"
    note = ("\nThe rule reads a decay operand (ld, cd, rd, eps_t): pass total_steps = the number "
            "of\noptimizer steps of your training run.\n" if decay else "")
    call = usage_call(rule_text)
    text = _doc_text(rule)
    origin_line = f"\n{_doc_text(origin)}\n" if origin else "\n"
    return f'''"""Update rule {text} as a torch optimizer (exported by `searchlab export`).
{origin_line}
    w <- w - lr * ({text})
{note}
Usage:
    opt = {call}
    for x, y in loader:
        opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
"""

from searchlab.optim import RuleOptimizer

RULE = {str(rule)!r}
LR = {lr!r}  # the best learning rate of the search's sweep; tune it for your problem


def make_optimizer(params, lr: float = LR, *, {total}, **kwargs) -> RuleOptimizer:
    """A ``torch.optim.Optimizer`` applying ``w <- w - lr * RULE``."""
    return RuleOptimizer(params, RULE, lr=lr, total_steps=total_steps, **kwargs)
'''


def _pick(opts: ExportOptions) -> tuple[str, float | None, str]:
    """(rule text, best lr, origin description) from ``source`` and ``rank``."""
    from ..mlflow_tracker import check_tracking_uri, load_runs_from_mlflow, resolve_tracking_uri
    from ..runfiles import best_results, load_runs, reward_value

    assert opts.source is not None
    src = Path(opts.source)
    runs = []
    for cand in (src, Path(opts.run_dir) / opts.source):
        if cand.is_file() or cand.is_dir():
            runs = load_runs(cand) if cand.is_dir() else load_runs(cand.parent)
            if runs:
                break
    if not runs:
        if src.exists():
            raise ConfigError(f"source={opts.source!r}: no results.json found there")
        uri = resolve_tracking_uri(opts.uri, opts.run_dir)
        check_tracking_uri(uri)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                runs = load_runs_from_mlflow(opts.source, uri, tmp)
            except FileNotFoundError as e:
                raise ConfigError(f"source={opts.source!r}: {e}") from None
    results = [r for run in runs for r in run.results if r.ok]
    best = best_results(results, opts.rank)
    if len(best) < opts.rank:
        raise ConfigError(f"rank={opts.rank}: {opts.source!r} has only {len(best)} "
                          "successfully evaluated rule(s)")
    r = best[opts.rank - 1]
    best_lr = r.best_lr if isinstance(r.best_lr, (int, float)) and not isinstance(
        r.best_lr, bool) and math.isfinite(r.best_lr) and r.best_lr > 0 else None
    where = f"{r.task}/{r.fidelity}" if r.task else "the search"
    lr_text = f" at lr {best_lr:g}" if best_lr is not None else ""
    origin = (f"Rank {opts.rank} of {opts.source}: reward {reward_value(r.reward):.4f}{lr_text} "
              f"on {where}.")
    return str(r.rule), best_lr, origin


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = options_parser(sub, "export", ExportOptions,
                       help="write a found rule as a Python snippet (RuleOptimizer)",
                       description="Write a found rule as a short Python module defining "
                                   "make_optimizer(params) -> searchlab.optim.RuleOptimizer.",
                       examples=["searchlab export source=runs/<search or compare folder>",
                                 "searchlab export source=runs/<folder> rank=2 out=my_rule.py",
                                 "searchlab export rule='exp(sign(g)*sign(m))*g' lr=0.01"])
    p.add_argument("overrides", nargs="*", metavar="key=value", help="source=, rule=, rank=, out=")
    return p


def run(args: argparse.Namespace) -> int:
    from ..dsl import ParseError, parse
    from ..mlflow_tracker import TrackingError

    try:
        opts = parse_model(ExportOptions, args.overrides)
        if (opts.source is None) == (opts.rule is None):
            raise ConfigError("give exactly one of source=<folder, results.json or experiment> "
                              "or rule=<rule text>")
        if opts.rule is not None:
            try:
                parse(opts.rule)
            except ParseError as e:
                first = str(e).strip().splitlines()[0]
                raise ConfigError(f"bad value for 'rule': {opts.rule!r} ({first})") from None
            text, best_lr, origin = opts.rule, None, ""
        else:
            text, best_lr, origin = _pick(opts)
        try:
            code = snippet(text, opts.lr or best_lr or 1e-3, origin)
        except ValueError as e:     # ParseError: a results.json with a rule that does not parse
            first = str(e).strip().splitlines()[0]
            raise ConfigError(f"cannot export rule {text!r} ({first})") from None
    except (ConfigError, TrackingError) as e:
        return fail("export", str(e))
    if opts.out:
        path = Path(opts.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(code)
        module = path.stem
        print(f"wrote {path}: rule {text}")
        print(f"use it:  from {module} import make_optimizer   # with {path.parent or '.'} on sys.path")
        print(f"         opt = {usage_call(text)}")
    else:
        sys.stdout.write(code)
        say("(save it with out=FILE.py; then `from FILE import make_optimizer`)")
    return 0
