"""The one search loop and its result (docs/ARCHITECTURE.md, "One sample's path").

::

    while unique evaluations < budget:
        rules   = strategy.ask(n)
        fresh   = rules whose canonical key was not seen in this search
        results = executor.map(evaluate, fresh) + remembered results for the repeats
        tracker.log(fresh results)                    # main process only
        strategy.tell(results)                        # in the order asked

Budget.  The budget counts *unique canonical keys evaluated in this search*.  A rule whose
key was already seen in this search (a *repeat*) is answered from an in-memory dict,
costs no budget and is not logged again; every strategy therefore gets exactly
``budget`` distinct samples, whatever its taste for repeats, and comparisons between
strategies are fair.  (A persistent cache inside the evaluator may still make a fresh
key cheap; it is counted all the same, so results do not depend on what earlier
searches happened to evaluate.)

Stall limit.  A strategy that keeps proposing only repeats would loop forever; the
search stops (``SearchResult.stopped == "stalled"``) after ``stall_limit`` consecutive
asked rules that were all repeats (default :data:`DEFAULT_STALL_LIMIT`), and
(``"exhausted"``) when ``ask`` returns no rule at all.

Seeds.  ``seed`` is the strategy's seed; ``eval_seed`` is passed to every
``evaluator.evaluate(rule, eval_seed)``, the same for all strategies and strategy seeds,
so they all face the same reward function.

Rules outside the space.  Every asked rule is checked against the strategy's space
(``check_tokens``); one that is outside is not evaluated but recorded as a sample with
status ``invalid`` and ``FLOOR_REWARD`` (it spends budget: a strategy cannot loop on
garbage for free).

Strategies that own their loop (``Strategy.owns_loop``, e.g. SB3 agents) get
``strategy.run(evaluate, done)``: ``evaluate(rules) -> results`` is this same path (dedup,
budget, executor, tracker) and ``done()`` is true once the budget is spent or the search
stalled.  Fresh rules proposed after the budget is spent are not evaluated: they come
back with status ``error``, ``FLOOR_REWARD``, ``extra["over_budget"] = True``, and are
neither counted nor logged.
"""

from __future__ import annotations

import functools
import math
import os
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .dsl import Rule, Space, TokenGrammarError, check_tokens, get_space
from .executors import Executor, SerialExecutor, failure_result
from .interfaces import BatchEvaluator, Evaluator
from .result import FLOOR_REWARD, Result
from .strategy import STRATEGIES, Strategy
from .tracking import NullTracker, Tracker

#: Consecutive repeated proposals after which a search stops as ``"stalled"``.
DEFAULT_STALL_LIMIT: int = 1000

#: Progress callback: ``progress(unique, budget, best_reward)`` after each batch.
ProgressFn = Callable[[int, int, float], None]


@dataclass(frozen=True)
class EvaluateTask:
    """The picklable callable the executor maps over fresh rules (runs in workers).

    Catches everything an evaluator might raise despite its contract and turns it into an
    ``error`` result with the traceback, so one bad worker never kills a search.
    """

    evaluator: Evaluator
    seed: int

    def __call__(self, rule: Rule) -> Result:
        try:
            return self.evaluator.evaluate(rule, self.seed)
        except Exception as e:  # noqa: BLE001 - contract violation, keep the search alive
            return Result(rule=rule.text, key=rule.key, reward=FLOOR_REWARD, status="error",
                          seed=self.seed, message=f"{type(e).__name__}: {e}\n"
                          + traceback.format_exc())


@dataclass(frozen=True)
class EvaluateChunk:
    """The picklable callable the executor maps over *chunks* of fresh rules when the
    evaluator trains several rules in one pass (:class:`~searchlab.interfaces.BatchEvaluator`).
    A chunk is one executor item: it succeeds, fails or times out as a whole; an exception
    inside ``evaluate_many`` falls back to evaluating the chunk's rules one by one, so a
    bad rule costs only itself."""

    evaluator: BatchEvaluator
    seed: int

    def __call__(self, rules: tuple[Rule, ...]) -> list[Result]:
        try:
            out = self.evaluator.evaluate_many(list(rules), self.seed)
            if len(out) == len(rules):
                return list(out)
        except Exception:  # noqa: BLE001 - fall back to one at a time, below
            pass
        single = EvaluateTask(self.evaluator, self.seed)
        return [single(r) for r in rules]


def chunk_sizes(n: int, workers: int, max_batch: int) -> list[int]:
    """How ``n`` fresh rules are split for ``workers`` workers: at least one chunk per
    worker (so all of them are busy), no chunk above ``max_batch``, sizes as equal as
    possible, larger chunks first."""
    if n <= 0:
        return []
    k = max(min(n, max(1, workers)), -(-n // max(1, max_batch)))
    base, extra = divmod(n, k)
    return [base + 1] * extra + [base] * (k - extra)


@dataclass(frozen=True)
class SearchResult:
    """What :func:`run_search` returns.

    Attributes:
        results: one result per unique evaluation, in evaluation order;
            ``results[i].extra["sample"] == i`` (the sample index, also the tracker's step).
        best: the top-k results by reward (unique keys, ties broken by sample index).
        strategy, seed, eval_seed, budget, batch_size: the search's settings.
        asked: rules the strategy proposed (including repeats and over-budget ones).
        unique: unique canonical keys evaluated (``len(results)``; == budget unless stopped).
        repeats: asked rules answered from the in-memory dict (key seen before).
        stopped: ``"budget"``, ``"stalled"`` (only repeats for ``stall_limit`` asks) or
            ``"exhausted"`` (``ask`` returned nothing).
        seconds: wall-clock time of the whole search.
    """

    results: tuple[Result, ...]
    best: tuple[Result, ...]
    strategy: str
    seed: int
    eval_seed: int
    budget: int
    batch_size: int
    asked: int
    unique: int
    repeats: int
    stopped: str
    seconds: float

    @property
    def best_rule(self) -> Rule | None:
        """The best rule found (None if nothing was evaluated)."""
        from .dsl import parse

        return parse(self.best[0].rule) if self.best else None

    @property
    def best_reward(self) -> float:
        return self.best[0].reward if self.best else FLOOR_REWARD

    @property
    def cpu_seconds(self) -> float:
        """Compute spent on child training, summed over the samples (``extra["cpu_seconds"]``;
        a persistent-cache hit counts its original training)."""
        return float(sum(float(r.extra.get("cpu_seconds", 0.0) or 0.0) for r in self.results))

    @property
    def keys(self) -> list[str]:
        """Canonical keys in evaluation order."""
        return [r.key for r in self.results]

    def rewards(self) -> np.ndarray:
        """Reward per sample index."""
        return np.array([r.reward for r in self.results], dtype=float)

    def best_so_far(self) -> np.ndarray:
        """Running best reward per sample index (the sample-efficiency curve)."""
        r = self.rewards()
        return np.maximum.accumulate(r) if len(r) else r

    def samples_to_reach(self, threshold: float) -> int | None:
        """Number of unique evaluations until a reward >= ``threshold`` (None if never)."""
        hit = np.flatnonzero(self.rewards() >= threshold)
        return int(hit[0]) + 1 if len(hit) else None

    def summary(self) -> dict[str, Any]:
        """Flat dict of counters and the best result (what the tracker's ``finish`` gets)."""
        return {"strategy": self.strategy, "seed": self.seed, "eval_seed": self.eval_seed,
                "budget": self.budget, "asked": self.asked, "unique": self.unique,
                "repeats": self.repeats, "stopped": self.stopped, "seconds": self.seconds,
                "cpu_seconds": self.cpu_seconds,
                "best_reward": self.best_reward,
                "best_rule": self.best[0].rule if self.best else None,
                "best_key": self.best[0].key if self.best else None}


def build_strategy(name: str, space: Space | str = "scratch", seed: int = 0,
                   **options: Any) -> Strategy:
    """Build a registered strategy by name (``STRATEGIES``) on a space (object or name)."""
    cls = STRATEGIES.get(name)
    return cls(get_space(space) if isinstance(space, str) else space, seed, **options)


def strategy_name(strategy: Strategy) -> str:
    """Registered name of a strategy instance (``Strategy.name``; the class name for an
    unregistered strategy)."""
    return strategy.name or type(strategy).__name__


class _Search:
    """State of one search: the in-memory key -> result dict, counters, tracker calls.

    ``evaluate(rules)`` is the single evaluation path, used by the ask/tell loop and
    handed to strategies that own their loop.
    """

    def __init__(self, space: Space, evaluator: Evaluator, budget: int, eval_seed: int,
                 executor: Executor, tracker: Tracker, stall_limit: int,
                 progress: ProgressFn | None) -> None:
        self.space = space
        self.task = EvaluateTask(evaluator, eval_seed)
        #: population training: chunks of fresh rules per executor item (None: one rule each)
        self.batch_task = (EvaluateChunk(evaluator, eval_seed)
                           if isinstance(evaluator, BatchEvaluator) and evaluator.max_batch > 1
                           else None)
        # a dead worker or a timeout becomes a floor-reward result (executors docstring)
        self.on_failure = functools.partial(
            failure_result, seed=eval_seed, task=evaluator.task_name,
            fidelity=evaluator.protocol)
        self.budget = budget
        self.eval_seed = eval_seed
        self.executor = executor
        self.tracker = tracker
        self.stall_limit = stall_limit
        self.progress = progress
        self.seen: dict[str, Result] = {}
        self.results: list[Result] = []
        self.asked = 0
        self.repeats = 0
        self.stall = 0
        self.best = -math.inf
        #: resume: evaluations from the run directory's journal, by key (used, not re-run)
        self.replay: dict[str, Result] = {}
        #: called with every completed evaluation at once (the checkpoint's journal)
        self.on_evaluated: Callable[[Result], None] | None = None

    @property
    def remaining(self) -> int:
        return self.budget - len(self.results)

    @property
    def stalled(self) -> bool:
        return self.stall >= self.stall_limit

    def done(self) -> bool:
        """True once the budget is spent or the search stalled."""
        return self.remaining <= 0 or self.stalled

    def _outside(self, rule: Rule) -> str | None:
        """Why ``rule`` is not a rule of the space (None if it is)."""
        try:
            check_tokens(self.space, rule.to_tokens())
        except TokenGrammarError as e:
            return str(e)
        return None

    def evaluate(self, rules: Sequence[Rule]) -> list[Result]:
        """Evaluate ``rules`` (dedup, budget, executor, tracker); results in order."""
        rules = list(rules)
        asked_before = self.asked
        self.asked += len(rules)
        out: list[Result | None] = [None] * len(rules)
        fresh: list[tuple[int, Rule]] = []       # (position, rule) to run through the executor
        invalid: dict[int, Result] = {}          # position -> result for rules outside space
        batch_keys: dict[str, int] = {}          # key -> position of its first occurrence
        repeat_of: dict[int, int] = {}           # position -> position of first occurrence
        new = 0
        for i, rule in enumerate(rules):
            key = rule.key
            if key in self.seen:
                out[i] = self._repeat(self.seen[key], rule)
                self.repeats += 1
                self.stall += 1
                continue
            if key in batch_keys:
                repeat_of[i] = batch_keys[key]
                self.repeats += 1
                self.stall += 1
                continue
            if new >= self.remaining:
                out[i] = Result(rule=rule.text, key=key, reward=FLOOR_REWARD, status="error",
                                seed=self.eval_seed, message="not evaluated: search budget spent",
                                extra={"over_budget": True})
                continue
            batch_keys[key] = i
            new += 1
            self.stall = 0
            why = self._outside(rule)
            if why is not None:
                invalid[i] = Result(rule=rule.text, key=key, reward=FLOOR_REWARD,
                                    status="invalid", seed=self.eval_seed,
                                    message=f"outside space {self.space.name!r}: {why}")
            else:
                fresh.append((i, rule))
        evaluated = self._run_fresh(fresh)
        evaluated.update(invalid)
        # number the new samples in the order asked; log them in the main process only
        first = len(self.results)
        logged: list[Result] = []
        for i in sorted(evaluated):
            res = evaluated[i]
            rule = rules[i]
            tokens = res.tokens or _tokens(rule)
            # the three clocks of a sample: rules asked so far (this one included), unique
            # evaluations (the sample index + 1) and compute (extra["cpu_seconds"])
            res = res.with_(key=rule.key, tokens=tokens,
                            extra={**res.extra, "sample": first + len(logged),
                                   "asked": asked_before + i + 1})
            self.seen[rule.key] = res
            logged.append(res)
            out[i] = res
        for i, j in repeat_of.items():
            out[i] = self._repeat(out[j], rules[i])  # type: ignore[arg-type]
        if logged:
            self.results.extend(logged)
            self.tracker.log(logged, first)
            self.best = max(self.best, max(r.reward for r in logged))
        if self.progress is not None and logged:
            self.progress(len(self.results), self.budget, self.best)
        return out  # type: ignore[return-value]

    def _run_fresh(self, fresh: list[tuple[int, Rule]]) -> dict[int, Result]:
        """Evaluate ``(position, rule)`` pairs: rules whose evaluation the journal holds
        (resume) are answered from it; the rest go through the executor, which keeps its
        workers busy and turns a dead or hung worker into an ``error``/``timeout``
        result; each completed evaluation is handed to ``on_evaluated`` at once."""
        out: dict[int, Result] = {}
        todo: list[tuple[int, Rule]] = []
        for i, rule in fresh:
            hit = self.replay.pop(rule.key, None)
            if hit is not None:
                out[i] = hit
            else:
                todo.append((i, rule))
        if not todo:
            return out
        batch = self.batch_task
        if batch is not None and len(todo) > 1:
            sizes = chunk_sizes(len(todo), self.executor.workers, batch.evaluator.max_batch)
            bounds = np.cumsum([0] + sizes)
            chunks = [tuple(r for _, r in todo[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]

            def failed(chunk: tuple[Rule, ...], failure: Any) -> list[Result]:
                return [self.on_failure(rule, failure) for rule in chunk]

            for c, results in self.executor.imap_unordered(batch, chunks, on_failure=failed):
                for k, res in enumerate(results):
                    if self.on_evaluated is not None:
                        self.on_evaluated(res)
                    out[todo[int(bounds[c]) + k][0]] = res
            return out
        for j, res in self.executor.imap_unordered(self.task, [r for _, r in todo],
                                                   on_failure=self.on_failure):
            if self.on_evaluated is not None:
                self.on_evaluated(res)
            out[todo[j][0]] = res
        return out

    # -- checkpoint/resume (searchlab.checkpoint) ---------------------------------------
    def counters(self) -> dict[str, Any]:
        return {"asked": self.asked, "repeats": self.repeats, "stall": self.stall,
                "best": self.best}

    def restore(self, results: Sequence[Result], counters: Mapping[str, Any]) -> None:
        """Continue from checkpointed samples and counters."""
        self.results = list(results)
        self.seen = {r.key: r for r in self.results}
        self.asked = int(counters.get("asked", 0))
        self.repeats = int(counters.get("repeats", 0))
        self.stall = int(counters.get("stall", 0))
        self.best = float(counters.get("best", -math.inf))

    @staticmethod
    def _repeat(first: Result, rule: Rule) -> Result:
        """A repeat is answered with the first result of its key, marked ``repeat`` (and
        ``cached``: nothing trained)."""
        return first.with_(rule=rule.text, tokens=_tokens(rule) or first.tokens, cached=True,
                           repeat=True,
                           extra={**first.extra, "repeat_of": first.extra.get("sample")})


def _tokens(rule: Rule) -> tuple[str, ...]:
    try:
        return rule.to_tokens()
    except ValueError:
        return ()


def _tqdm_progress(budget: int) -> tuple[ProgressFn, Callable[[], None]]:
    from tqdm.auto import tqdm

    bar = tqdm(total=budget, unit="eval")

    def update(unique: int, total: int, best: float) -> None:
        bar.update(unique - bar.n)
        bar.set_postfix(best=f"{best:.4f}")

    return update, bar.close


def run_search(strategy: Strategy | str, evaluator: Evaluator, budget: int, batch_size: int = 1,
               seed: int | None = None, eval_seed: int = 0, executor: Executor | None = None,
               tracker: Tracker | None = None, progress: ProgressFn | bool | None = None, *,
               space: Space | str = "scratch", options: Mapping[str, Any] | None = None,
               stall_limit: int = DEFAULT_STALL_LIMIT, top_k: int = 5,
               params: Mapping[str, Any] | None = None,
               tags: Mapping[str, str] | None = None,
               checkpoint_dir: str | os.PathLike[str] | None = None,
               resume: bool = False) -> SearchResult:
    """Run one search and return its :class:`SearchResult` (see the module docstring).

    Args:
        strategy: a :class:`Strategy` instance, or a registered name built with
            :func:`build_strategy` from ``space``, ``seed`` and ``options``.
        evaluator: an :class:`~searchlab.interfaces.Evaluator` (``task_name``,
            ``protocol``, ``evaluate(rule, seed) -> Result``; picklable for process/Ray
            executors).
        budget: number of unique canonical keys to evaluate.
        batch_size: rules asked per round (at most the remaining budget); the executor
            evaluates a round's fresh rules in parallel.
        seed: the strategy's seed; required with a strategy name, and must equal
            ``strategy.seed`` if given with an instance.
        eval_seed: seed of every evaluation (the same for all strategies and seeds).
        executor: ``executor.map`` runs the evaluations (serial by default).
        tracker: receives ``start`` / ``log`` (each fresh batch, main process) / ``finish``.
        progress: ``progress(unique, budget, best_reward)`` after each batch, or True for a
            tqdm bar.
        space: the search space, for a strategy given by name.
        options: strategy options, for a strategy given by name.
        stall_limit: stop after this many consecutive repeated proposals.
        top_k: size of ``SearchResult.best``.
        params, tags: extra tracker ``start`` params/tags (e.g. the flattened config).
        checkpoint_dir: run directory for the evaluation journal and the checkpoint
            written after every batch (:mod:`searchlab.checkpoint`); None: none.
        resume: continue the search checkpointed in ``checkpoint_dir`` (same strategy,
            seed, eval seed, batch size, space and task; the budget may grow): no
            completed evaluation is repeated and the tracker continues its run.
    """
    if budget < 1 or batch_size < 1:
        raise ValueError(f"budget and batch_size must be >= 1, got {budget}, {batch_size}")
    if isinstance(strategy, str):
        if seed is None:
            raise ValueError("seed is required when the strategy is given by name")
        strategy = build_strategy(strategy, space, seed, **dict(options or {}))
    elif options:
        raise ValueError("options apply to a strategy given by name only")
    if seed is None:
        seed = strategy.seed
    elif seed != strategy.seed:
        raise ValueError(f"seed={seed} differs from strategy.seed={strategy.seed}")
    name = strategy_name(strategy)
    executor = executor or SerialExecutor()
    tracker = tracker or NullTracker()
    close_bar: Callable[[], None] | None = None
    if progress is True:
        progress, close_bar = _tqdm_progress(budget)
    elif progress is False:
        progress = None
    search = _Search(strategy.space, evaluator, budget, eval_seed, executor, tracker,
                     stall_limit, progress)  # type: ignore[arg-type]
    start_params = {"strategy": name, "seed": seed, "eval_seed": eval_seed, "budget": budget,
                    "batch_size": batch_size, "space": strategy.space.name,
                    "depth": strategy.space.depth, **dict(params or {})}
    start_tags = {"strategy": name, "seed": str(seed),
                  "task": evaluator.task_name, "fidelity": evaluator.protocol,
                  **dict(tags or {})}
    ckpt = None
    if checkpoint_dir is not None:   # journal + checkpoint after every batch; maybe resume
        ckpt = _Checkpointing(checkpoint_dir, search, strategy, tracker, budget, resume,
                              {**start_params, "task": start_tags["task"],
                               "fidelity": start_tags["fidelity"]})
        ckpt.begin(start_params, start_tags)
    elif resume:
        raise ValueError("resume=True needs the checkpoint_dir of the search to continue")
    else:
        tracker.start(start_params, start_tags)
    start = time.perf_counter()
    stopped = "budget"
    try:
        if strategy.owns_loop:
            strategy.run(search.evaluate, search.done)
        else:
            while not search.done():
                rules = strategy.ask(min(batch_size, search.remaining))
                if not rules:
                    stopped = "exhausted"
                    break
                strategy.tell(search.evaluate(rules))
                if ckpt is not None:
                    ckpt.save_if_due()
    finally:
        if close_bar is not None:
            close_bar()
        if ckpt is not None:
            ckpt.close()
    if ckpt is not None:
        ckpt.save()
    if stopped != "exhausted":
        stopped = "budget" if search.remaining <= 0 else ("stalled" if search.stalled
                                                          else "exhausted")
    ranked = sorted(search.results, key=lambda r: (-r.reward, r.extra["sample"]))
    result = SearchResult(results=tuple(search.results), best=tuple(ranked[:top_k]),
                          strategy=name, seed=seed, eval_seed=eval_seed, budget=budget,
                          batch_size=batch_size, asked=search.asked,
                          unique=len(search.results), repeats=search.repeats,
                          stopped=stopped, seconds=time.perf_counter() - start)
    tracker.finish(result.summary())
    return result


#: seconds between two checkpoints of a search's state (every batch of a search whose
#: batches take longer; the journal records every evaluation at once either way)
CHECKPOINT_SECONDS = 2.0


class _Checkpointing:
    """Connects a search to its run directory (:mod:`searchlab.checkpoint`): journals
    every evaluation, checkpoints after a batch when :data:`CHECKPOINT_SECONDS` have
    passed since the last checkpoint (after every batch when evaluations train: a
    checkpoint costs a pickle of the strategy and two fsyncs, milliseconds that a lookup
    task would pay per batch), restores on resume.  A checkpoint older than the journal
    loses nothing: on resume the strategy continues from it and the rules it asks again
    are answered from the journal."""

    def __init__(self, run_dir: str | os.PathLike[str], search: _Search, strategy: Strategy,
                 tracker: Tracker, budget: int, resume: bool, identity: dict[str, Any]) -> None:
        from .checkpoint import Checkpointer, strategy_has_state

        self.files = Checkpointer(run_dir)
        self.search, self.strategy, self.tracker = search, strategy, tracker
        self.budget, self.resume, self.identity = budget, resume, identity
        self.mode = "state" if strategy_has_state(strategy) else "replay"
        self.batches = 0
        self.saved_at = -math.inf

    def begin(self, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        """Start the tracker (or continue its run), restore state, write checkpoint 0."""
        if not self.resume:
            self.files.start_fresh()
            self.tracker.start(params, tags)
        else:
            resumed = self.files.load()
            resumed.check_identity(self.identity)
            st = resumed.state
            restored: list[Result] = []
            if st.mode == "state" and self.mode == "state":
                self.search.restore(st.results, st.counters)
                self.strategy.load_state_dict(st.strategy or {})
                restored = list(st.results)
                self.batches = st.batches
                self.search.replay = dict(resumed.replay)
            else:  # replay the strategy from its seed against every journaled evaluation
                self.search.replay = {**{r.key: r for r in st.results}, **resumed.replay}
            self.tracker.resume(st.tracker, params, tags, restored)
        self.search.on_evaluated = self.files.record
        self.save()

    def save_if_due(self) -> None:
        """:meth:`save` when :data:`CHECKPOINT_SECONDS` have passed since the last one."""
        if time.perf_counter() - self.saved_at >= CHECKPOINT_SECONDS:
            self.save()

    def save(self) -> None:
        from .checkpoint import SearchState

        state = SearchState(identity=self.identity, mode=self.mode,  # type: ignore[arg-type]
                            budget=self.budget, results=list(self.search.results),
                            counters=self.search.counters(),
                            strategy=self.strategy.state_dict() if self.mode == "state" else None,
                            tracker=self.tracker.state_dict(), batches=self.batches)
        self.batches += 1
        self.files.save(state)
        self.saved_at = time.perf_counter()

    def close(self) -> None:
        self.files.close()
