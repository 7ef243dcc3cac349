"""``searchlab evaluate``: the reward of one rule on a task at a fidelity.

    searchlab evaluate "exp(sign(g)*sign(m))*g"                      # mnist1d, fast, seed 0
    searchlab evaluate adam --task cifar10 --fidelity paper --data-dir path/to/cifar10-jpeg.tar.gz
    searchlab evaluate "(1+sign(g)*sign(m))*g" --task ensemble --seed 3 --json

Prints the result as a table (``--json``: the whole :class:`~searchlab.result.Result` as
JSON).  Rewards are cached in ``<cache dir>/rewards.sqlite`` (``$SEARCHLAB_CACHE`` or
``~/.cache/searchlab``), so asking again is instant; ``--no-cache`` retrains.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

EPILOG = """examples:
  searchlab evaluate "exp(sign(g)*sign(m))*g"
  searchlab evaluate adam --task cifar10 --fidelity paper --data-dir cifar10-jpeg.tar.gz
  searchlab evaluate "(1+sign(g)*sign(m))*g" --task ensemble --json
  searchlab evaluate "(1+sign(g)*sign(m))*g" task=ensemble seed=3 json=true

argument style: every option is a --flag here and may also be written key=value, the
style of the other commands (search, compare, export, ui): task=ensemble is --task
ensemble, data_dir=DIR is --data-dir DIR, json=true is --json.  An unparsable rule stops
with one error line and exit code 2.

tasks: mnist1d (default), cifar10, rosenbrock, ensemble; fidelities: fast (default),
paper, smoke, or overrides such as "fast+final_epochs=5,lrs=0.001/0.01/0.1"."""


class _IntermixedParser(argparse.ArgumentParser):
    """Accepts ``key=value`` words between the flags (``RULE --task t seed=3``):
    ``argparse`` would otherwise reject positionals after an optional."""

    _inner = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self._inner:        # parse_known_intermixed_args calls parse_known_args itself
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


#: the flags that ``key=value`` words may set: dest -> argparse action
_ACTIONS: dict[str, argparse.Action] = {}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate", help="score one update rule (train the child, print the reward)",
        description="Score one update rule with the paper's reward protocol: an lr sweep, "
                    "the best lr's final run, validation accuracy (or a normalised score "
                    "on problem tasks).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rule", metavar="RULE", help='rule text, e.g. "exp(sign(g)*sign(m))*g", "adam", "g"')
    p.add_argument("--task", default="mnist1d", help="task name (default: mnist1d)")
    p.add_argument("--fidelity", default="fast", help="paper, fast (default), smoke or name+field=value,...")
    p.add_argument("--seed", type=int, default=0, help="evaluation seed (default: 0)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--data-dir", default=None, help="cifar10: python batches folder, ImageFolder tree or .tar.gz")
    p.add_argument("--download", action="store_true", help="cifar10: download the official archive into --data-dir if missing")
    p.add_argument("--max-examples", type=int, default=None, help="cifar10: use only the first N/10 images per class")
    p.add_argument("--test", action="store_true", help="also report accuracy on the held-out test split")
    path = p.add_mutually_exclusive_group()
    path.add_argument("--batched", dest="batched", action="store_true", default=None,
                      help="train the lr sweep as one batched pass")
    path.add_argument("--sequential", dest="batched", action="store_false",
                      help="train one lr at a time")
    p.add_argument("--time-limit", type=float, default=None, help="seconds per evaluation (default: the fidelity's)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: 1 for mnist1d and the problem tasks, whose tiny "
                        "ops only lose from threads; torch's setting for cifar10)")
    p.add_argument("--cache", default=None, help="reward cache file (default: <cache dir>/rewards.sqlite)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the reward cache")
    p.add_argument("--keep-invalid", action="store_true",
                   help="train rules that fail the probe (NaN/zero/ascent updates) instead of scoring them invalid")
    p.add_argument("options", nargs="*", metavar="key=value",
                   help="the flags above as key=value words (task=ensemble seed=3 json=true)")
    p.__class__ = _IntermixedParser
    _ACTIONS.clear()
    _ACTIONS.update({a.dest: a for a in p._actions
                     if a.option_strings and a.dest not in ("help",)})
    return p


_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def apply_words(args: argparse.Namespace) -> None:
    """Set the flags named by ``args.options`` (``key=value`` words); raises
    ``ValueError`` naming the key for an unknown key or a bad value."""
    for word in getattr(args, "options", None) or ():
        key, sep, value = word.partition("=")
        dest = key.strip().lstrip("-").replace("-", "_")
        if dest == "sequential":                 # --sequential is batched=false
            dest, value = "batched", ("false" if value.strip().lower() in _TRUE else "true")
        action = _ACTIONS.get(dest)
        if not sep or action is None:
            names = ", ".join(sorted(_ACTIONS))
            raise ValueError(f"unknown option {word!r}; key=value options: {names} "
                             "(or the --flags of `searchlab evaluate --help`)")
        value = value.strip()
        if action.nargs == 0:                    # store_true / store_false flags
            low = value.lower()
            if low not in _TRUE + _FALSE:
                raise ValueError(f"bad value for {dest!r}: {value!r} (true or false)")
            setattr(args, dest, low in _TRUE)
            continue
        try:
            setattr(args, dest, action.type(value) if action.type else value)
        except (TypeError, ValueError):
            kind = getattr(action.type, "__name__", "value")
            raise ValueError(f"bad value for {dest!r}: {value!r} (expected {kind})") from None


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if math.isnan(x):
            return "diverged"
        return f"{x:.{digits}f}" if abs(x) >= 1e-3 or x == 0 else f"{x:.3g}"
    return str(x)


def format_result(r: Any) -> str:
    """A human-readable table of a :class:`~searchlab.result.Result`."""
    rows = [
        ("rule", r.rule), ("key", r.key), ("task", r.task), ("fidelity", r.fidelity),
        ("seed", r.seed), ("status", r.status), ("reward", _fmt(r.reward)),
        ("best lr", f"{r.best_lr:g}" if r.best_lr is not None else "-"),
        ("val acc", _fmt(r.val_acc)), ("val loss", _fmt(r.val_loss)),
        ("seconds", f"{r.seconds:.2f}" + (" (cached)" if r.cached else "")),
        ("fingerprint", r.fingerprint or "-"),
    ]
    if "test_reward" in r.extra:
        rows.append(("test", _fmt(r.extra["test_reward"])))
    if r.message:
        lines_ = r.message.strip().splitlines()
        rows.append(("message", lines_[-1] if r.status == "error" else lines_[0]))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    if r.sweep:
        metric = "val acc" if r.val_acc is not None or "examples" in r.extra else "score"
        lines.append("")
        lines.append(f"{'lr':>8}  {metric}")
        for lr, v in r.sweep:
            mark = "  <- best" if r.best_lr is not None and lr == r.best_lr else ""
            lines.append(f"{lr:>8g}  {_fmt(v)}{mark}")
    if r.curve:
        lines.append("")
        lines.append("curve   " + " ".join(_fmt(c, 3) for c in r.curve))
    if "scores" in r.extra:
        lines.append("")
        for name, s in r.extra["scores"].items():
            lines.append(f"{name:<20}  {_fmt(s, 3)}")
    return "\n".join(lines)


def _load_with_notice(ev: Any) -> None:
    """Load the task's data; say so on stderr if that takes a while (first run only)."""
    import threading

    timer = threading.Timer(1.0, lambda: print(
        f"preparing {ev.task.id} data (first run only; cached afterwards) ...",
        file=sys.stderr, flush=True))
    timer.start()
    try:
        ev.load()
    finally:
        timer.cancel()


def run(args: argparse.Namespace) -> int:
    from ..cache import RewardCache, default_cache_path
    from ..dsl import ParseError, parse
    from ..result import result_to_json
    from ..evaluate import Evaluator
    from ..tasks import DataNotFoundError
    from ._common import fail

    try:
        apply_words(args)
    except ValueError as exc:
        return fail("evaluate", str(exc))
    if args.rule.startswith("learned:"):   # a saved learned optimizer: searchlab.learned
        from ..learned.command import evaluate_learned

        return evaluate_learned(args, format_result)
    try:
        parse(args.rule)
    except ParseError as exc:   # an unparsable rule is the user's mistake: no reward table
        first = str(exc).strip().splitlines()[0]
        return fail("evaluate", f"bad rule {args.rule!r}: {first}")
    options: dict[str, Any] = {}
    if args.task == "cifar10":
        if args.data_dir is not None:
            options["data_dir"] = args.data_dir
        if args.download:
            options["download"] = True
        if args.max_examples is not None:
            options["max_examples"] = args.max_examples
    elif args.data_dir or args.download or args.max_examples:
        return fail("evaluate", f"--data-dir/--download/--max-examples apply to cifar10, "
                                f"not {args.task}")
    cache = None if args.no_cache else RewardCache(args.cache or default_cache_path())
    try:
        from ..tasks import TASKS

        threads = args.threads
        if threads is None and args.task in TASKS:
            threads = TASKS.get(args.task).preferred_threads
        ev = Evaluator(args.task, args.fidelity, cache=cache, batched=args.batched,
                       time_limit=args.time_limit, reject_invalid=not args.keep_invalid,
                       threads=threads, **options)
        if ev.lookup(args.rule, args.seed) is None:
            _load_with_notice(ev)
        result = ev.evaluate(args.rule, args.seed, test=args.test)
    except DataNotFoundError as exc:
        return fail("evaluate", str(exc))
    except (KeyError, ValueError, TypeError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        return fail("evaluate", str(msg))
    if args.json:
        print(json.dumps(result_to_json(result), indent=2))
    else:
        print(format_result(result))
    return 1 if result.status == "error" else 0
