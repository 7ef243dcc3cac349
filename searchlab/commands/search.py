"""``searchlab search``: one search from a config, every sample logged to MLflow.

The work is :func:`searchlab.app.run_one_search`; this module parses arguments and
prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import add_config_arguments, fail, load_or_fail, print_tracking, reference_text

EXAMPLES = """\
examples:
  searchlab search                                   # defaults: random on mnist1d
  searchlab search strategy=gp task=mnist1d budget=200 seed=3
  searchlab search strategy=nos-ppo task=ensemble fidelity=smoke budget=50 quiet=true
  searchlab search config=experiment/paper executor.options.address=auto
  searchlab search tracking.uri=http://127.0.0.1:5000  # log to a running MLflow server
  searchlab search workers=2                         # a local process pool of 2 workers
  searchlab search executor=ray ray.address=auto workers=16   # an existing Ray cluster
  searchlab search resume=runs/<experiment>          # continue a killed search (run directory)
"""


def components_text() -> str:
    """The strategies, tasks, fidelities and spaces by name, for ``--help``: from the
    registries' ``names()``, which import no strategy, task or training module (so
    ``searchlab search --help`` stays fast: bench/startup.py)."""
    from ..config import CONFIG_DIR
    from ..dsl import SPACES
    from ..evaluation.fidelity import FIDELITIES
    from ..evaluators import task_names
    from ..strategy import STRATEGIES

    names = STRATEGIES.names()
    variants = sorted(p.stem for p in (Path(CONFIG_DIR) / "strategy").glob("*.yaml")
                      if p.stem not in names)
    lines = ["components (by name: strategy=NAME task=NAME fidelity=NAME space=NAME):",
             f"  strategies  {', '.join(sorted(names))}"]
    if variants:
        lines.append(f"              presets in configs/strategy/: {', '.join(variants)}")
    lines += [f"  tasks       {', '.join(task_names())}  (toy: a microsecond test objective)",
              f"  fidelities  {', '.join(sorted(FIDELITIES.names()))}  (or overrides: "
              "fidelity.options.final_epochs=5)",
              f"  spaces      {', '.join(sorted(SPACES))}"]
    return "\n".join(lines)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("search", help="run one search (strategy x task), logged to MLflow",
                       description="Run one search: the strategy asks for rules, the evaluator "
                                   "scores them, every sample is logged to MLflow and the "
                                   "results are written to the output folder.",
                       epilog=EXAMPLES + "\n" + components_text() + "\n\n" + reference_text(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ..app import resume_config, run_one_search
    from ..checkpoint import ResumeError
    from ..config import ConfigError
    from ..mlflow_tracker import TrackingError
    from ..runfiles import best_results, md_rules

    cfg = load_or_fail("search", args, allow_compare_keys=False)
    if isinstance(cfg, int):
        return cfg
    if cfg.resume is True:
        return fail("search", "resume= takes the run directory of the search to continue "
                              "(printed when it started), e.g. resume=runs/<experiment>")
    try:
        if isinstance(cfg.resume, str):
            cfg = resume_config(cfg.resume, args.overrides)
        result, folder, tracker = run_one_search(cfg)
    except (TrackingError, ConfigError, ResumeError) as e:
        return fail("search", str(e))
    print(f"\nbest rules ({result.unique} unique evaluations, {result.seconds:.1f} s, "
          f"stopped: {result.stopped}):")
    print(md_rules(best_results(result.results, cfg.top_k)))
    print(f"results:  {folder}")
    print_tracking(tracker)
    print(f"use rule: searchlab export source={folder}")
    if tracker.error:
        return fail("search", f"{tracker.error}; results were saved in {folder}", code=1)
    return 0
