"""``searchlab evaluate learned:FILE``: score a saved learned optimizer from the command
line with the rule protocol (:func:`searchlab.learned.scoring.score_learned`).

``FILE`` is a file written by ``searchlab meta-train``, a name under
``runs/learned/`` or a model kind (untrained).  The task, fidelity, seed, ``--test``,
``--json``, ``--batched/--sequential``, ``--time-limit`` and ``--threads`` options apply
as for a rule; the reward cache does not (learned optimizers are not cached).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

__all__ = ["evaluate_learned"]


def evaluate_learned(args: argparse.Namespace, format_result: Callable[[Any], str]) -> int:
    from ..result import result_to_json
    from ..tasks import TASKS, DataNotFoundError
    from .scoring import score_learned

    options: dict[str, Any] = {}
    if args.task == "cifar10":
        for key in ("data_dir", "download", "max_examples"):
            value = getattr(args, key, None)
            if value:
                options[key] = value
    threads = args.threads
    if threads is None and args.task in TASKS:
        threads = TASKS.get(args.task).preferred_threads
    try:
        result = score_learned(args.rule, args.task, args.fidelity, args.seed, test=args.test,
                               batched=args.batched, time_limit=args.time_limit,
                               threads=threads, **options)
    except (FileNotFoundError, DataNotFoundError, KeyError, ValueError, TypeError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"searchlab evaluate: error: {msg}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result_to_json(result), indent=2))
    else:
        print(format_result(result))
        meta = result.extra.get("meta_cpu_seconds")
        if meta is not None:
            print(f"meta-training CPU-seconds  {meta:.1f}")
    return 1 if result.status == "error" else 0
