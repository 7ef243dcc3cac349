"""``searchlab compare``: every strategy x seed, then a sample-efficiency report.

    searchlab compare strategies=[random,gp] seeds=[0,1] budget=100 task=mnist1d
    searchlab compare config=experiment/quick
    searchlab compare report=runs/compare-mnist1d-fast-20261123-170500   # re-report

Writes ``best_so_far.png``, ``rewards.png``, ``summary.csv``, ``summary.md``, ``runs.csv``
and ``report.json`` into the output folder (printed; ``out=DIR`` overrides it), each
search's files into ``<out>/runs/<strategy>-s<seed>/``, and logs all of it to MLflow (one
experiment per comparison: a parent run per search, a ``report`` run with the plots).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._common import (add_config_arguments, fail, load_or_fail, print_tracking, reference_text,
                      say)
from .search import components_text

EXAMPLES = """\
examples:
  searchlab compare strategies=[random,gp] seeds=[0,1] budget=50 task=mnist1d
  searchlab compare config=experiment/quick                 # ready laptop comparison
  searchlab compare strategies=[random,evolution] seeds=3 task=ensemble fidelity=smoke
  searchlab compare report=runs/compare-mnist1d-fast-...    # re-report, no re-running
  searchlab compare report=<MLflow experiment name> out=report/
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("compare", help="run strategies x seeds and report sample efficiency",
                       description="Run every strategy x seed on the same task, fidelity, space "
                                   "and budget, then write plots (best reward vs unique "
                                   "evaluations with 95% bootstrap bands; reward per sample) "
                                   "and tables (CSV, Markdown) and log them to MLflow.",
                       epilog=EXAMPLES + "\n" + components_text() + "\n\n" + reference_text(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ..app import (task_label, check_comparison, comparison_name, log_comparison,
                       reference_section, report_source, run_comparison)
    from ..config import ConfigError, strategy_choices
    from ..mlflow_tracker import TrackingError, check_tracking_uri, resolve_tracking_uri
    from ..report.comparison import write_report

    cfg = load_or_fail("compare", args, allow_compare_keys=True)
    if isinstance(cfg, int):
        return cfg
    given = [w.partition("=")[0].strip() for w in args.overrides]
    clash = [k for k in given if k == "strategy" or k.startswith("strategy.")]
    if cfg.strategies and clash:
        return fail("compare", f"{clash[0]!r} does not apply with strategies=[...]: each "
                               "strategy takes its options from configs/strategy/<name>.yaml "
                               "(add a file such as gp-big.yaml for a variant)")
    try:
        if cfg.report:
            runs, folder, experiment = report_source(cfg)
            targets, extra = reference_section(cfg, folder, runs, say, compute=False)
            files = write_report(runs, folder, cfg.threshold, targets=targets,
                                 extra_markdown=extra,
                                 title=f"{runs[0].summary.get('task', cfg.task.name)} / "
                                       f"{runs[0].summary.get('fidelity', cfg.fidelity_name)}",
                                 reps=cfg.reps)
        else:
            if cfg.tracking.name == "mlflow":  # fail before any search on an unreachable store
                check_tracking_uri(resolve_tracking_uri(cfg.tracking.uri, cfg.run_dir))
            check_comparison(cfg)               # bad strategy options fail before any search
            experiment = cfg.tracking.experiment or comparison_name(cfg)
            cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(
                update={"experiment": experiment})})
            n = len(strategy_choices(cfg)) * len(cfg.seeds or (cfg.seed,))
            say(f"compare: {n} searches of {cfg.budget} unique evaluations on "
                f"{task_label(cfg)} (experiment {experiment!r})")
            folder, files, runs = run_comparison(cfg, echo=say)
        tracker = log_comparison(cfg, experiment, files, runs)
    except (TrackingError, ConfigError) as e:
        return fail("compare", str(e))
    print()
    print(files["summary.md"].read_text())
    print(f"report:   {folder}")
    for name in ("best_so_far.png", "rewards.png", "summary.csv", "summary.md"):
        print(f"          {files[name]}")
    print_tracking(tracker)
    print(f"re-report without re-running: searchlab compare report={folder}")
    sys.stdout.flush()
    return 0
