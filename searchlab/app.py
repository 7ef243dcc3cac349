"""The application layer: a search or a comparison from a config, run, written and logged.

This is where the pieces meet (docs/ARCHITECTURE.md)::

    cfg = load_config([...])                         # searchlab.config: typed, frozen
    strategy  = build_strategy(cfg)                  # registry lookups by name
    evaluator = build_evaluator(cfg)                 # searchlab.evaluators.make_evaluator
    executor  = build_executor(cfg)
    tracker   = build_tracker(cfg, experiment, run_name)
    result    = runner.run_search(strategy, evaluator, ..., executor, tracker)
    runfiles.write_search_files(folder, result.results, summary)

:func:`run_one_search` does exactly that (plus checkpoint/resume and the progress bar);
:func:`run_comparison` runs it for every strategy x seed and writes the report
(:mod:`searchlab.report.comparison`), which the comparison's tracker logs.  The CLI
commands (:mod:`searchlab.commands`) parse arguments, call these functions and print;
:func:`search` is the Python API (``searchlab.search``).
"""

from __future__ import annotations

import math
import os
import sys
import time

import numpy as np
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from . import kernels
from .config import Config, ConfigError, ExecutorConfig, flatten, load_config, strategy_choices
from .tracking import Tracker

if TYPE_CHECKING:
    from .dsl import Space
    from .evaluation import Fidelity
    from .executors import Executor
    from .interfaces import Evaluator
    from .runfiles import RunRecord
    from .rescore import Rescored
    from .runner import ProgressFn, SearchResult
    from .strategy import Strategy

__all__ = [
    "build_evaluator", "build_executor", "build_fidelity", "build_space", "build_strategy",
    "build_tracker", "comparison_name", "resume_config", "run_comparison", "run_one_search",
    "search", "search_name", "unique_folder",
]


# --- names ------------------------------------------------------------------------------
def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def search_name(cfg: Config, label: str | None = None) -> str:
    """A new experiment's name for one search: ``<run name>-<date>-<time>``."""
    return f"{cfg.run_name(label)}-{_stamp()}"


def comparison_name(cfg: Config) -> str:
    """A new experiment's name for one comparison."""
    return f"compare-{task_label(cfg, '-')}-{_stamp()}"


def task_label(cfg: Config, sep: str = "/") -> str:
    """``mnist1d/compare``; a lookup task (``table``, ``toy``) has no fidelity of its own."""
    from .evaluators import LOOKUP_TASKS

    if cfg.task.name in LOOKUP_TASKS:
        return cfg.task.name
    return f"{cfg.task.name}{sep}{cfg.fidelity_name}"


#: files that mark a folder as holding a search (finished, interrupted or starting)
_SEARCH_FILES = ("config.yaml", "results.json", "summary.md", "checkpoint.pkl",
                 "evaluations.jsonl")


def unique_folder(path: Path, config_text: str = "") -> Path:
    """Create and claim a new run folder: ``path``, or ``path-2``, ``path-3``... if it
    is taken, and return it.  Claiming is atomic, so searches started at once never
    share a folder: a new folder by ``os.mkdir`` (which fails if it exists), an existing
    folder holding no search (empty, say) by creating its ``config.yaml`` exclusively
    (written with ``config_text``); a folder with a search's files (results, a
    checkpoint or journal that ``resume=<path>`` continues) is never reused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    k = 1
    while True:
        cand = path if k == 1 else path.parent / f"{path.name}-{k}"
        k += 1
        try:
            os.mkdir(cand)
        except FileExistsError:
            if not cand.is_dir() or any((cand / f).exists() for f in _SEARCH_FILES):
                continue
        try:  # the claim: whoever creates config.yaml first owns the folder
            fd = os.open(cand / "config.yaml", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as f:
            f.write(config_text)
        return cand


# --- builders: config -> components (each a registry lookup by name) -----------------------
def build_space(cfg: Config) -> "Space":
    """The search space of ``cfg`` (named space with depth/constraint overrides)."""
    from .dsl import get_space

    return get_space(cfg.space_name, **cfg.space.overrides())


def build_fidelity(cfg: Config) -> "Fidelity":
    """The named fidelity, with ``fidelity.options`` overriding its fields."""
    from dataclasses import fields

    from .evaluation.fidelity import get_fidelity

    base = get_fidelity(cfg.fidelity.name)
    if not cfg.fidelity.options:
        return base
    valid = [f.name for f in fields(base) if f.name not in ("name", "base", "doc")]
    bad = [k for k in cfg.fidelity.options if k not in valid]
    if bad:
        raise ConfigError(f"unknown config key 'fidelity.options.{bad[0]}'; valid keys under "
                          f"'fidelity.options': {', '.join(valid)}")
    try:
        return base.with_(**cfg.fidelity.options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad value in 'fidelity.options': {e}") from None


def build_evaluator(cfg: Config) -> "Evaluator":
    """The evaluator of ``cfg`` (:func:`searchlab.evaluators.make_evaluator`); the reward
    cache persists across searches in ``<run_dir>/cache``."""
    from .evaluators import LOOKUP_TASKS, TABLE_TASK, make_evaluator

    lookup = cfg.task.name in LOOKUP_TASKS
    fidelity = "fast" if lookup else build_fidelity(cfg)
    try:
        evaluator = make_evaluator(cfg.task.name, fidelity,
                                   cache_dir=None if lookup else Path(cfg.run_dir) / "cache",
                                   **cfg.task.options)
    except (TypeError, ValueError) as e:   # an unknown option, or a bad value of one
        raise ConfigError(f"bad task.options for task {cfg.task.name!r}: {e}") from None
    if cfg.task.name == TABLE_TASK:
        _check_table(cfg, evaluator)
    return evaluator


def _check_table(cfg: Config, evaluator: Any) -> None:
    """A table's file (checksum) and space: a missing or corrupt table, or a space the
    table does not hold, is one :class:`ConfigError` line before any search starts."""
    from .tabular import TableError, TableEvaluator

    assert isinstance(evaluator, TableEvaluator)
    try:
        table = evaluator.data
    except TableError as e:
        raise ConfigError(str(e)) from None
    space = build_space(cfg)
    if space != table.space:
        raise ConfigError(f"table {table.name!r} holds the rules of space "
                          f"{table.space.name!r} (depth {table.space.depth}), not of "
                          f"space={space.name} (depth {space.depth}): use "
                          f"space={table.space.name}")


def build_strategy(cfg: Config, label: str | None = None) -> "Strategy":
    """The strategy of ``cfg``; bad options become one-line :class:`ConfigError`."""
    from .runner import build_strategy as build

    try:
        return build(cfg.strategy.name, build_space(cfg), cfg.seed, **cfg.strategy.options)
    except (TypeError, KeyError, ValueError) as e:
        text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        where = f" ({label})" if label and label != cfg.strategy.name else ""
        raise ConfigError(f"bad strategy.options for {cfg.strategy.name!r}{where}: "
                          f"{text.splitlines()[0] if text else type(e).__name__}"
                          f"{_options_hint(cfg.strategy.name, cfg.strategy.options, text)}"
                          ) from None


def _options_hint(name: str, options: Mapping[str, Any], message: str) -> str:
    """``"; valid options: a, b; did you mean 'population'?"`` for a strategy's bad
    options: the keyword parameters of its ``__init__`` (``inspect``), plus the names its
    error message lists (options a strategy takes through ``**options``)."""
    import difflib
    import inspect
    import re

    from .strategy import STRATEGIES

    try:
        params = inspect.signature(STRATEGIES.get(name).__init__).parameters.values()
    except (KeyError, TypeError, ValueError):
        return ""
    valid = [p.name for p in params if p.name not in ("self", "space", "seed")
             and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    listed = [w for w in re.findall(r"'([A-Za-z_]\w*)'", message)
              if w not in options and w not in valid]
    candidates = valid + listed
    hint = ""
    if valid and "valid" not in message:
        hint += f"; valid options: {', '.join(valid)}"
    elif not candidates and "no options" not in message:
        hint += f"; {name!r} takes no options"
    for bad in (k for k in options if k not in candidates):
        close = difflib.get_close_matches(bad, candidates, n=1, cutoff=0.6)
        if close:
            hint += f"; did you mean {close[0]!r} instead of {bad!r}?"
    return hint


def build_executor(cfg: Config) -> "Executor":
    """The executor of ``cfg``; ``serial`` with ``workers > 1`` means the process pool
    (the default for more than one worker).  On the table task the serial executor does
    not reseed the global RNGs per item (``seed_items=False``; its lookups draw none)."""
    from .evaluators import TABLE_TASK
    from .executors import EXECUTORS

    name = cfg.executor.name
    if name == "serial" and cfg.executor.workers > 1:
        name = "process"
    cls = EXECUTORS.get(name)
    options = dict(cfg.executor.options)
    if name == "serial" and cfg.task.name == TABLE_TASK:
        options.setdefault("seed_items", False)     # a table lookup draws no random numbers
    try:
        return cls(workers=cfg.executor.workers, **options)
    except TypeError as e:
        raise ConfigError(f"bad executor.options for executor {name!r}: {e}") from None


def build_tracker(cfg: Config, experiment: str, run_name: str) -> Tracker:
    """The tracker of ``cfg``; an MLflow tracker checks its store here (fails fast)."""
    from .tracking import TRACKERS

    cls = TRACKERS.get(cfg.tracking.name)
    return cls(uri=cfg.tracking.uri, experiment=experiment, run_name=run_name,
               run_dir=cfg.run_dir, child_runs=cfg.child_runs,
               background=cfg.tracking.background, top_k=cfg.top_k)


def resume_config(run_dir: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Config:
    """The config of the search in ``run_dir`` (its ``config.yaml``) for ``resume=``;
    ``overrides`` may change how it runs (``executor=ray``, ``workers=4``, a larger
    ``budget``); the search itself (strategy, seed, task...) must stay the same."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"resume={run_dir}: no config.yaml there; pass the run directory "
                          "printed when the search started")
    if not path.read_text().strip():
        raise ConfigError(f"resume={run_dir}: its config.yaml is empty (the search was "
                          "killed while starting, before it evaluated anything): start the "
                          "search again")
    rest = [o for o in overrides if o.partition("=")[0].strip() not in ("resume", "config")]
    return load_config(rest + [f"resume={run_dir}"], str(path))


def say(message: str) -> None:
    """A status line for the user (stderr, so stdout stays the command's output)."""
    print(message, file=sys.stderr, flush=True)


# --- one search -------------------------------------------------------------------------
def _config_text(cfg: Config) -> str:
    import yaml

    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def _write_config(folder: Path, cfg: Config) -> None:
    (folder / "config.yaml").write_text(_config_text(cfg))


def run_one_search(cfg: Config, *, label: str | None = None, out: str | os.PathLike[str] | None = None,
                   experiment: str | None = None, progress: "ProgressFn | None" = None,
                   on_start: Callable[[], None] | None = None,
                   quiet: bool | None = None, tracker: Tracker | None = None
                   ) -> tuple["SearchResult", Path, Tracker]:
    """Run the search ``cfg`` describes; write its files into ``out``; return
    ``(SearchResult, output folder, tracker)``.  Raises ``TrackingError`` (before
    searching) when the tracking store is unreachable.

    ``progress`` (default: a progress bar) is called after every batch; ``on_start``
    when the search loop begins (after the tracker's setup), to restart its clock."""
    from .checkpoint import Checkpointer
    from .progress import SearchProgress
    from .runfiles import write_search_files
    from .runner import run_search

    label = label or cfg.strategy.name
    # resume: ``resume=<run dir>`` (search), or ``resume: true`` with an interrupted run
    # in ``out`` (compare); the MLflow experiment is the checkpointed one
    resume_dir = Path(cfg.resume) if isinstance(cfg.resume, str) else (
        Path(out) if cfg.resume is True and out is not None
        and Checkpointer(out).resumable() else None)
    if resume_dir is not None:
        resumed = Checkpointer(resume_dir).load()
        if resumed.note:            # no readable checkpoint: resumed from the journal
            say(f"resume: {resumed.note}")
        tracked = resumed.state.tracker
        experiment = experiment or tracked.get("experiment") or cfg.tracking.experiment \
            or resume_dir.name
        folder = resume_dir
    else:
        auto_name = not (experiment or cfg.tracking.experiment)
        experiment = experiment or cfg.tracking.experiment or search_name(cfg, label)
        folder = Path(out) if out is not None else (
            Path(cfg.out) if cfg.out else Path(cfg.run_dir) / experiment)
    # everything that can fail on a bad config or store, before any side effect
    run_name = cfg.run_name(label)
    own_tracker = tracker is None
    if tracker is None:
        tracker = build_tracker(cfg, experiment, run_name)   # fails fast on a bad URI
    evaluator = build_evaluator(cfg)
    _check_task_data(evaluator)             # missing data stops here, not as N error samples
    cache = getattr(evaluator, "cache", None)
    if cache is not None and hasattr(cache, "check"):
        cache.check()                       # a corrupt reward cache stops here (CacheError)
    strategy = build_strategy(cfg, label)
    if strategy.warmup and cfg.budget <= strategy.warmup:
        say(f"warning: {label}: budget {cfg.budget} is at or below its warm-up of "
            f"{strategy.warmup} samples (proposed before any feedback): it will behave "
            "like random search; raise the budget or lower the warm-up")
    if resume_dir is None and out is None:
        claimed = unique_folder(folder, _config_text(cfg))   # atomically: never shared
        if claimed != folder and auto_name and not cfg.out:
            experiment = claimed.name       # and its own MLflow experiment
            if own_tracker:
                tracker = build_tracker(cfg, experiment, run_name)
        folder = claimed
    if resume_dir is None:
        Checkpointer(folder).clear()        # a new search replaces an old one's state
    folder.mkdir(parents=True, exist_ok=True)
    if resume_dir is None:
        _write_config(folder, cfg)
    if out is None:
        say(f"run directory: {folder}   (after a crash: searchlab search resume={folder})")
    bar: SearchProgress | None = None
    if progress is None:
        bar = SearchProgress(cfg.budget, desc=run_name, quiet=cfg.quiet if quiet is None else quiet)
        progress = bar
    params = flatten(cfg.model_dump(mode="json", exclude={"strategies", "seeds", "report",
                                                          "threshold", "resume", "quiet",
                                                          "reps"}))
    tags = {"searchlab.label": label, "task": cfg.task.name, "fidelity": evaluator.protocol,
            "space": cfg.space_name}
    restart = bar.restart if bar is not None else on_start
    executor = build_executor(cfg)
    try:
        result = run_search(strategy, evaluator, cfg.budget, cfg.batch_size, cfg.seed,
                            eval_seed=cfg.eval_seed, executor=executor,
                            tracker=_OnStart(tracker, restart), progress=progress,
                            top_k=cfg.top_k, params=params, tags=tags,
                            checkpoint_dir=folder, resume=resume_dir is not None)
        rescored = rescore_best(cfg, evaluator, result, executor, folder)
    except BaseException:
        # interrupted (Ctrl-C) or crashed: flush what was logged, mark the run KILLED /
        # FAILED (resume=<folder> reopens it)
        tracker.abort("KILLED" if sys.exc_info()[0] is KeyboardInterrupt else "FAILED")
        raise
    finally:
        executor.close()
        if bar is not None:
            bar.close()
    _warn_if_all_errored(label, result.results)
    summary = {**result.summary(), "label": label, "task": cfg.task.name,
               "fidelity": evaluator.protocol, "space": cfg.space_name,
               "experiment": experiment, "cpu_kernels": kernels.current(),
               "cpu_vendor": kernels.cpu_vendor(), "config": cfg.model_dump(mode="json")}
    if rescored:
        top = rescored[0]
        summary.update({"rescored_rule": top.rule, "rescored_val_mean": top.val_mean,
                        "rescored_val_std": top.val_std, "rescored_test_mean": top.test_mean,
                        "rescored_test_std": top.test_std})
        tracker.log_rescored([r.row() for r in rescored])
    write_search_files(folder, result.results, summary, top_k=cfg.top_k)
    if resume_dir is None:
        _write_config(folder, cfg)
    return result, folder, tracker


def _check_task_data(evaluator: "Evaluator") -> None:
    """Load the task's data before the search (as ``searchlab evaluate`` does): missing
    data (``DataNotFoundError``) becomes one :class:`ConfigError` line."""
    from .tasks import DataNotFoundError

    load = getattr(evaluator, "load", None)
    if load is None:           # e.g. the toy evaluator: no data
        return
    try:
        load()
    except DataNotFoundError as e:
        raise ConfigError(str(e)) from None


def _warn_if_all_errored(label: str, results: Sequence[Any]) -> None:
    """Say so when every counted sample of a search ended with status ``error``: the
    search measured nothing (a broken task, data or environment, not bad rules)."""
    counted = [r for r in results if not (isinstance(r.extra, dict)
                                          and r.extra.get("over_budget"))]
    if not counted or any(r.status != "error" for r in counted):
        return
    lines = (counted[0].message or "").strip().splitlines()
    cause = f"; the first one: {lines[-1][:300]}" if lines else ""
    say(f"warning: {label}: every one of the {len(counted)} samples ended with status "
        f"'error' (nothing was measured){cause}; see the message column of results.csv")


def rescore_best(cfg: Config, evaluator: "Evaluator", result: "SearchResult",
                 executor: "Executor", folder: Path) -> list["Rescored"]:
    """Re-score the search's ``cfg.rescore.top_k`` best ``ok`` rules on
    ``cfg.rescore_seeds`` fresh seeds (:mod:`searchlab.rescore`); writes ``rescored.json``
    and ``rescored.md`` into ``folder``.  Nothing for ``top_k: 0``."""
    from .rescore import fresh_seeds, rescore, rescored_markdown
    from .runfiles import best_results, dump_json

    k = cfg.rescore.top_k
    best = [r for r in best_results(result.results, len(result.results)) if r.ok][:k]
    if not best:
        return []
    names = {f"rank {i}": r.rule for i, r in enumerate(best, 1)}
    rows = rescore(evaluator, names, fresh_seeds(cfg.eval_seed, cfg.rescore_seeds),
                   executor=executor,
                   search_rewards={f"rank {i}": r.reward for i, r in enumerate(best, 1)})
    dump_json(folder / "rescored.json", [r.row() for r in rows])
    (folder / "rescored.md").write_text(rescored_markdown(rows, "Best rules, re-scored"))
    return rows


class _OnStart(Tracker):
    """Forwards to ``inner``; calls ``hook()`` right after ``start``/``resume`` (the search
    loop begins then: the progress clock restarts after the tracker's setup)."""

    def __init__(self, inner: Tracker, hook: Callable[[], None] | None) -> None:
        self.inner, self.hook = inner, hook

    def start(self, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        self.inner.start(params, tags)
        if self.hook is not None:
            self.hook()

    def log(self, results: Sequence[Any], first_index: int) -> None:
        self.inner.log(results, first_index)

    def finish(self, summary: Mapping[str, Any]) -> None:
        self.inner.finish(summary)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def resume(self, state: Mapping[str, Any], params: Mapping[str, Any],
               tags: Mapping[str, str], results: Sequence[Any]) -> None:
        self.inner.resume(state, params, tags, results)
        if self.hook is not None:
            self.hook()

    def abort(self, status: str = "KILLED") -> None:
        self.inner.abort(status)


def _yaml(v: Any) -> str:
    import yaml

    if isinstance(v, tuple):
        v = list(v)
    if isinstance(v, str):
        return v
    return yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def config_of(config: Config | Mapping[str, Any] | Sequence[str] | str | None = None,
              **overrides: Any) -> Config:
    """A :class:`Config` from what the Python API accepts (see :func:`search`)."""
    words = [f"{k}={_yaml(v)}" for k, v in overrides.items()]
    if isinstance(config, Config):
        return config if not words else load_config(words, data=config.model_dump(mode="json"))
    if isinstance(config, Mapping):
        return load_config(words, data=config)
    if isinstance(config, str):
        return load_config(words, config)
    return load_config(list(config or ()) + words)


def search(config: Config | Mapping[str, Any] | Sequence[str] | str | None = None,
           **overrides: Any) -> "SearchResult":
    """Run one search from a config and return its :class:`~searchlab.runner.SearchResult`.

    ``config`` is a :class:`Config`, a mapping of config keys, a list of ``key=value``
    strings, a YAML file or ready config name (``"experiment/quick"``), or None for the
    defaults; keyword arguments are further overrides (``budget=50, strategy="gp"``).
    Results are written to the output folder and logged as the config says (MLflow by
    default).
    """
    cfg = config_of(config, **overrides)
    if isinstance(cfg.resume, str):
        cfg = resume_config(cfg.resume, [f"{k}={_yaml(v)}" for k, v in overrides.items()])
    result, folder, tracker = run_one_search(cfg)
    if getattr(tracker, "error", None):
        import warnings

        warnings.warn(f"{tracker.error}; results were saved in {folder}", RuntimeWarning,
                      stacklevel=2)
    return result


# --- a comparison -------------------------------------------------------------------------
def check_comparison(cfg: Config) -> None:
    """Fail before any search: every strategy choice must build with its options (and a
    table task's file and space must fit)."""
    from .evaluators import TABLE_TASK

    if cfg.searches is not None and cfg.searches > 1 and not _lookup(cfg):
        raise ConfigError(f"searches={cfg.searches} applies to lookup tasks (table, toy); on "
                          f"task {cfg.task.name!r} the searches run one at a time and "
                          "workers=N evaluates each search's rules in N processes")
    for label, sc in strategy_choices(cfg):
        build_strategy(cfg.model_copy(update={"strategy": sc}), label)
    if cfg.task.name == TABLE_TASK:
        build_evaluator(cfg)


def run_comparison(cfg: Config, *, out: str | os.PathLike[str] | None = None,
                   echo: Callable[[str], None] | None = None
                   ) -> tuple[Path, dict[str, Path], list["RunRecord"]]:
    """Run every strategy x seed of ``cfg`` and write the report.  Returns (output
    folder, report files, runs).  See ``searchlab compare``."""
    from .progress import CompareProgress
    from .report.comparison import write_report
    from .runfiles import load_search, write_manifest

    tell = echo or (lambda msg: None)
    name = cfg.tracking.experiment or comparison_name(cfg)
    folder = Path(out or cfg.out or Path(cfg.run_dir) / name)
    choices = strategy_choices(cfg)
    seeds = list(cfg.seeds) or [cfg.seed]
    runs: list[RunRecord] = []
    todo = []
    # seed-major order: a comparison stopped half-way has the same seeds for every strategy
    for seed in seeds:
        for label, sc in choices:
            sub = folder / "runs" / f"{label}-s{seed}"
            if cfg.resume and (sub / "results.json").is_file():
                rec = load_search(sub, label=label, seed=seed)
                if rec.unique >= cfg.budget or rec.summary.get("stopped") != "budget":
                    runs.append(rec)
                    tell(f"resume: {label} seed {seed} already finished ({sub})")
                    continue
                # finished with a smaller budget: its checkpoint continues it to this one
                tell(f"resume: {label} seed {seed}: extending {rec.unique} -> {cfg.budget} "
                     "unique evaluations")
            todo.append((label, sc, seed, sub))
    total = len(seeds) * len(choices)
    if len(todo) < total:
        tell(f"resume: {total - len(todo)} of {total} searches done before, "
             f"{len(todo)} to run")
    at_once = min(parallel_searches(cfg), len(todo))
    if at_once > 1:
        tell(f"{len(todo)} searches, {at_once} at once (searches=1: one at a time)")
    folder.mkdir(parents=True, exist_ok=True)
    write_manifest(folder, {"strategies": [lab for lab, _ in choices], "seeds": seeds,
                            "experiment": name, "config": cfg.model_dump(mode="json")})
    bar = CompareProgress(len(todo), cfg.budget, quiet=cfg.quiet)
    try:
        if at_once > 1:
            _run_searches_in_parallel(cfg, todo, name, bar)
            runs.extend(load_search(sub, label=label, seed=seed) for label, _, seed, sub in todo)
        else:
            for label, sc, seed, sub in todo:
                run_cfg = cfg.model_copy(update={"strategy": sc, "seed": seed})
                if _lookup(cfg):    # searches=1 workers=N: no pool per search for lookups
                    run_cfg = run_cfg.model_copy(update={"executor": LOOKUP_SEARCH_EXECUTOR})
                run_one_search(run_cfg, label=label, out=sub, experiment=name,
                               progress=bar.start_run(label, seed), on_start=bar.restart,
                               quiet=True)
                bar.end_run()
                runs.append(load_search(sub, label=label, seed=seed))
    finally:
        bar.close()
    rank = {lab: i for i, (lab, _) in enumerate(choices)}
    runs.sort(key=lambda r: (rank.get(r.label, len(rank)), r.seed))
    targets, extra = reference_section(cfg, folder, runs, tell)
    files = write_report(runs, folder, cfg.threshold,
                         title=f"{task_label(cfg, ' / ')} / {cfg.space_name}",
                         reps=cfg.reps, targets=targets, extra_markdown=extra)
    return folder, files, runs


#: at most this many searches at once by default on the table task (each process holds
#: torch, the strategies and the table: ~0.57 GB at most after sb3, nos-ppo and gp searches)
MAX_DEFAULT_SEARCHES = 8


#: where Linux states the CPU quota of a container's own control group (the root of its
#: cgroup mount): (cgroup v2 file,) or (cgroup v1 quota file, its period file). Quotas of
#: a parent group outside the container's namespace (systemd slices) are not read.
CGROUP_CPU_FILES: tuple[tuple[str, ...], ...] = (
    ("/sys/fs/cgroup/cpu.max",),
    ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us"))


def cgroup_cpu_quota() -> float | None:
    """The CPU quota of this container in cores (``cpu.max`` of cgroup v2, or v1's
    ``cfs_quota_us / cfs_period_us`` at the root of the cgroup mount; a container started
    with ``--cpus=1.5`` gives 1.5), or None when there is none or it cannot be read."""
    for files in CGROUP_CPU_FILES:
        try:
            texts = [Path(f).read_text().split() for f in files]
            quota, period = ((texts[0][0], texts[0][1]) if len(files) == 1
                             else (texts[0][0], texts[1][0]))
            if quota == "max" or int(quota) <= 0:
                return None
            return int(quota) / int(period)
        except (OSError, ValueError, IndexError, ZeroDivisionError):
            continue
    return None


def usable_cores() -> int:
    """CPUs this process may use: its affinity mask where the OS has one, capped by its
    container's CPU quota (rounded up) where one is set."""
    n = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
         else os.cpu_count() or 1)
    quota = cgroup_cpu_quota()
    if quota is not None:
        n = min(n, math.ceil(quota))
    return max(1, n)


def parallel_searches(cfg: Config) -> int:
    """How many searches a comparison runs at once.  On a lookup task (``table``,
    ``toy``: an evaluation is a lookup, so the parallelism worth having is across
    searches, each evaluating in its own process): ``searches`` if given, else
    ``executor.workers`` when above 1, else on ``table`` one per core (at most
    :data:`MAX_DEFAULT_SEARCHES`) and on ``toy`` 1 (its searches take milliseconds,
    less than starting a process).  Other tasks: 1 (the workers evaluate one search's
    rules)."""
    from .evaluators import TABLE_TASK

    if not _lookup(cfg):
        return 1
    if cfg.searches is not None:
        return cfg.searches
    if cfg.executor.workers > 1:
        return cfg.executor.workers
    if cfg.task.name == TABLE_TASK:
        return min(usable_cores(), MAX_DEFAULT_SEARCHES)
    return 1


def _lookup(cfg: Config) -> bool:
    """Whether ``cfg``'s task answers from a table instead of training (``table``, ``toy``)."""
    from .evaluators import LOOKUP_TASKS

    return cfg.task.name in LOOKUP_TASKS


#: the executor of a lookup comparison's searches: serial, in the search's own process
#: (there ``workers`` sets how many searches run at once, not a pool per search)
LOOKUP_SEARCH_EXECUTOR = ExecutorConfig(name="serial", workers=1)


def _search_job(cfg: Config, label: str, sub: str, experiment: str) -> str:
    """One search of a parallel comparison, in a worker process: the same
    :func:`run_one_search` as a serial comparison's, evaluating serially (its own
    tracker logs it, from this process)."""
    run_cfg = cfg.model_copy(update={"executor": LOOKUP_SEARCH_EXECUTOR})
    run_one_search(run_cfg, label=label, out=Path(sub), experiment=experiment, quiet=True)
    return sub


def _search_worker_init() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    import torch

    torch.set_num_threads(1)


def _run_searches_in_parallel(cfg: Config, todo: Sequence[tuple[str, Any, int, Path]],
                              experiment: str, bar: Any) -> None:
    """Run the searches of ``todo`` in :func:`parallel_searches` spawned processes; the
    progress bar advances by whole searches.  A search that fails stops the comparison
    (the finished ones stay on disk: ``resume=true`` continues)."""
    import concurrent.futures as cf
    import multiprocessing as mp

    workers = min(parallel_searches(cfg), len(todo))
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                initializer=_search_worker_init) as pool:
        futures = {pool.submit(_search_job, cfg.model_copy(update={"strategy": sc, "seed": seed}),
                               label, str(sub), experiment): (label, seed)
                   for label, sc, seed, sub in todo}
        try:
            for fut in cf.as_completed(futures):
                label, seed = futures[fut]
                fut.result()
                bar.start_run(label, seed)
                bar.end_run()
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def reference_section(cfg: Config, folder: Path, runs: Sequence["RunRecord"],
                      tell: Callable[[str], None], *, compute: bool = True
                      ) -> tuple[dict[str, float], str]:
    """Reference rows of a comparison and what each strategy's incumbent gives.

    The hand-designed optimizers of :data:`searchlab.rescore.REFERENCE_RULES`, tuned by the
    same lr sweep and re-scored on the same fresh seeds as the searches' best rules
    (``references.json``); the fixed targets of the report are the validation rewards of
    SGD, momentum, Adam and the best reference.  Then, per strategy, the re-scored rank-1
    rule of each seed (``runs/*/rescored.json``): mean validation and held-out test over
    seeds, beside Adam's.  Returns (targets, Markdown)."""
    import json
    from .rescore import (REFERENCE_RULES, from_results, fresh_seeds, parse_reference, rescore,
                          rescored_markdown)
    from .result import from_jsonable
    from .runfiles import dump_json

    from .rescore import Rescored

    saved = folder / "references.json"
    if not compute:        # re-reporting: the references scored when the comparison ran
        if not saved.is_file():
            return {}, ""
        refs = [Rescored(name=d["name"], rule=d["rule"], search_reward=math.nan,
                         seeds=tuple(d["seeds"]), val=tuple(from_jsonable(d["val"])),
                         test=tuple(from_jsonable(d["test"])), statuses=tuple(d["statuses"]),
                         best_lrs=tuple(d["best_lrs"]), cpu_seconds=float(d["cpu_seconds"]),
                         discovery_cpu_seconds=float(d.get("discovery_cpu_seconds", 0.0)))
                for d in json.loads(saved.read_text())]
    elif cfg.rescore.top_k == 0:
        return {}, ""
    else:
        rules = dict(REFERENCE_RULES)
        learned = []
        for spec in cfg.references:
            name, what = parse_reference(spec)
            if what.startswith("learned:"):
                learned.append((name, what[len("learned:"):]))
            else:
                rules[name] = what
        seeds = fresh_seeds(cfg.eval_seed, cfg.rescore_seeds)
        tell(f"compare: re-scoring {len(rules) + len(learned)} reference optimizers on "
             f"{len(seeds)} fresh seeds")
        # a lookup task answers in microseconds: a process pool would only cost its start
        executor = build_executor(cfg.model_copy(update={"executor": LOOKUP_SEARCH_EXECUTOR})
                                  if _lookup(cfg) else cfg)
        try:
            refs = rescore(build_evaluator(cfg), rules, seeds, executor=executor)
        finally:
            executor.close()
        for name, target in learned:    # meta-trained optimizers (searchlab.learned)
            from .learned import reference_row

            res = reference_row(target, cfg.task.name, build_fidelity(cfg), seeds,
                                **cfg.task.options)
            meta = max((float(r.extra.get("meta_cpu_seconds", 0.0) or 0.0) for r in res),
                       default=0.0)
            refs.append(from_results(name, f"learned:{target}", res,
                                     discovery_cpu_seconds=meta))
        dump_json(saved, [r.row() for r in refs])
    targets = {r.name: r.val_mean for r in refs
               if r.name in ("SGD", "momentum", "Adam") and np.isfinite(r.val_mean)}
    finite = [r for r in refs if np.isfinite(r.val_mean)]
    if finite:
        best = max(finite, key=lambda r: r.val_mean)
        targets[f"best reference ({best.name})"] = best.val_mean
    md = ["", "## What a user gets: re-scored incumbents and reference optimizers", "",
          rescored_markdown(refs, "Reference optimizers (lr tuned by the same sweep)")]
    adam = next((r for r in refs if r.name == "Adam"), None)
    lines = ["### Each strategy's best rule, re-scored", "",
             "Rank-1 rule of each seed's search on the fresh seeds; mean over the seeds of "
             "the strategy (each seed's value is itself a mean over the fresh seeds).", "",
             "| strategy | seeds | val mean | test mean | test vs Adam | discovery CPU-s "
             "(mean per search) | best test rule |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for label in dict.fromkeys(r.label for r in runs):
        rows = []
        spent = [float(r.summary.get("cpu_seconds", math.nan) or math.nan)
                 for r in runs if r.label == label]
        for r in runs:
            f = Path(r.source).parent / "rescored.json"
            if r.label == label and f.is_file():
                data = json.loads(f.read_text())
                if data:
                    rows.append(data[0])
        vals = [float(x["val_mean"]) for x in rows if isinstance(x.get("val_mean"), (int, float))]
        tests = [float(x["test_mean"]) for x in rows if isinstance(x.get("test_mean"), (int, float))]
        if not rows:
            continue
        vm = float(np.nanmean(vals)) if vals else float("nan")
        tm = float(np.nanmean(tests)) if tests else float("nan")
        diff = (f"{tm - adam.test_mean:+.4f}" if adam is not None and np.isfinite(tm)
                and np.isfinite(adam.test_mean) else "-")
        top = max(rows, key=lambda x: float(x["test_mean"]) if isinstance(
            x.get("test_mean"), (int, float)) else -1.0)
        lines.append(f"| {label} | {len(rows)} | {vm:.4f} | {tm:.4f} | {diff} | "
                     f"{float(np.nanmean(spent)) if spent else math.nan:.0f} | "
                     f"`{top['rule']}` |")
    md.append("\n".join(lines) + "\n")
    return targets, "\n".join(md)


def report_source(cfg: Config) -> tuple[list["RunRecord"], Path, str]:
    """Runs, output folder and experiment name for ``report=<folder or experiment>``."""
    from .mlflow_tracker import check_tracking_uri, load_runs_from_mlflow, resolve_tracking_uri
    from .runfiles import load_runs

    assert cfg.report is not None
    src = Path(cfg.report)
    for cand in (src, Path(cfg.run_dir) / cfg.report):
        if cand.is_dir():
            runs = load_runs(cand)
            if not runs:
                raise ConfigError(f"report={cfg.report!r}: no finished runs in {str(cand)!r} "
                                  "(expected runs/<strategy>-s<seed>/results.json)")
            return runs, Path(cfg.out) if cfg.out else cand, cfg.tracking.experiment or cand.name
    uri = resolve_tracking_uri(cfg.tracking.uri, cfg.run_dir)
    check_tracking_uri(uri)
    dest = Path(cfg.out) if cfg.out else Path(cfg.run_dir) / cfg.report
    try:
        runs = load_runs_from_mlflow(cfg.report, uri, dest)
    except FileNotFoundError as e:
        raise ConfigError(f"report={cfg.report!r}: {e}") from None
    if not runs:
        raise ConfigError(f"report={cfg.report!r}: the MLflow experiment has no finished searches")
    return runs, dest, cfg.report


def log_comparison(cfg: Config, experiment: str, files: Mapping[str, Path],
                   runs: Sequence["RunRecord"]) -> Tracker:
    """Log a comparison's report with the config's tracker (an MLflow ``report`` run in
    the comparison's experiment); returns the tracker (for :meth:`Tracker.open_hint`)."""
    import json

    report = json.loads(Path(files["report.json"]).read_text())   # summarize()'s rows, once
    rows, thr = report["strategies"], report["threshold"]
    tracker = build_tracker(cfg, experiment, "report")
    tracker.log_report(files, rows, {
        "strategies": sorted({r.label for r in runs}), "seeds": sorted({r.seed for r in runs}),
        "budget": cfg.budget, "task": cfg.task.name, "fidelity": cfg.fidelity_name,
        "threshold": thr})
    return tracker
