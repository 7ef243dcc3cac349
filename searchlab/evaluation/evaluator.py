"""``Evaluator``: the reward of a rule on a task at a fidelity.

::

    from searchlab.evaluate import Evaluator, RewardCache
    ev = Evaluator("mnist1d", "fast", cache=RewardCache("runs/cache/rewards.sqlite"))
    # or cache_dir="runs/cache" (the file rewards.sqlite in it); no cache by default
    result = ev.evaluate("exp(sign(g)*sign(m))*g", seed=0)   # a searchlab.result.Result
    result.reward, result.status, result.best_lr, result.sweep, result.curve

``evaluate(rule, seed)`` never raises for a bad rule; it returns a
:class:`~searchlab.result.Result` whose ``status`` says what happened:

``ok``        trained; ``reward`` = final validation accuracy (classification tasks) or
              the mean normalised score (problem tasks), in [0, 1];
``diverged``  NaN/inf loss, a loss above 1000x the first step's (an exploded run,
              e.g. ``g/0 = 1e8*g``) or a weight above 1e6 in magnitude at a
              validation: every lr of the sweep diverged or the final run did
              (``FLOOR_REWARD``, the same for all strategies);
``invalid``   unparsable text, a rule that does not compile, or (``reject_invalid``,
              default on) a rule whose probe update is NaN/inf, all zero or never a
              descent direction (:mod:`searchlab.fingerprint`) — no training happens;
``timeout``   the per-evaluation time limit passed (``time_limit``, default the
              fidelity's), checked between training steps;
``error``     anything else that went wrong while training the rule (message = traceback).

Configuration errors are raised, not scored: an unknown task/fidelity, or missing data
(:class:`~searchlab.tasks.DataNotFoundError`, raised by ``evaluate`` or ``load()``).

Steps of ``evaluate``: parse -> probe (fingerprint + validity) -> cache lookup (by
fingerprint, task id, protocol name, seed) -> train (:mod:`searchlab.evaluation.protocol`)
-> cache store (``ok``/``diverged`` only).  A cache hit comes back with ``cached=True``
and the asking rule's text and key.  :attr:`Evaluator.trainings` counts trainings run by
this evaluator object in this process (tests assert cache hits with it).

For the search runner: the evaluator pickles without its data (workers reload it from the
on-disk array cache) and with its cache as a path (each worker opens the sqlite file), so
``executor.map(EvaluateTask(evaluator, seed), rules)`` shares one persistent cache.
:meth:`Evaluator.lookup` answers from the cache only (never trains);
:meth:`Evaluator.evaluate` with ``use_cache=False`` always trains and stores nothing.
"""

from __future__ import annotations

import math
import os
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

import torch

from .. import kernels
from ..allocator import tune_malloc
from ..cache import RewardCache
from ..dsl import Rule, as_rule
from ..fingerprint import Probe, probe
from ..result import FLOOR_REWARD, Result
from ..tasks.base import ClassificationTask, ProblemTask, Task, get_task
from .fidelity import Fidelity, get_fidelity
from .protocol import TRAINING_ERRORS, Outcome, Timeout, run_classification, run_problems

__all__ = ["Evaluator", "TRAINING_ERRORS"]



class Evaluator:
    """Scores rules on one task at one fidelity (see the module docstring).

    Args:
        task: a registered task name (``mnist1d``, ``cifar10``, ``rosenbrock``,
            ``ensemble``) or a :class:`~searchlab.tasks.Task`.
        fidelity: ``paper``, ``fast``, ``smoke``, an override string
            (``"fast+final_epochs=5"``) or a :class:`Fidelity`.
        cache: a :class:`~searchlab.cache.RewardCache`, or a path to its sqlite file.
        cache_dir: a directory for the cache file ``rewards.sqlite`` (instead of ``cache``).
        batched: train the lr sweep as one batched pass (True) or one lr at a time
            (False); default: the task's measured preference.  The non-default path is
            part of the protocol name (``fast+sequential``): results agree only up to
            float rounding (and noise draws, for stochastic rules).
        time_limit: seconds per evaluation (default: the fidelity's); ``timeout`` after.
        reject_invalid: score rules failing the probe ``invalid`` without training.
        threads: torch threads of this process: ``"auto"`` (default) is the task's
            ``preferred_threads``, the policy of ``searchlab evaluate``: 1 for mnist1d and
            the problem tasks (their tiny ops only lose from intra-op threads, 10x or more
            on a busy machine), torch's own setting for cifar10; an int sets that many;
            None leaves torch's setting alone.
        population: the most rules :meth:`evaluate_many` trains in one stacked pass
            (:mod:`searchlab.evaluation.population`; 1: one rule at a time); default: the
            task's measured ``population_default`` (BENCHMARKS.md, "Population-batched
            evaluation").  Rewards equal one-rule evaluation up to float rounding, so the
            protocol name (and the reward cache) is the same.
        **task_options: passed to the task (e.g. ``data_dir=`` for ``cifar10``).

    Threads are set once, when the evaluator is created (``torch.set_num_threads``,
    process-wide, like the allocator settings below), and never switched back and forth
    around evaluations: toggling the thread count per evaluation made later small ops
    ~10x slower on a loaded 2-core machine.  An explicit ``torch.set_num_threads`` after
    creating the evaluator wins.  Unpickling (a worker process of an executor) leaves
    threads alone: workers run the executor's ``threads`` (default 1).

    Creating (or unpickling) an evaluator applies :func:`searchlab.allocator.tune_malloc`
    (glibc malloc settings that stop large activations from page-faulting on every step;
    environment ``SEARCHLAB_MALLOC_TUNING=0`` leaves the allocator alone).
    """

    def __init__(self, task: str | Task = "mnist1d", fidelity: str | Fidelity = "fast", *,
                 cache: RewardCache | str | os.PathLike[str] | None = None,
                 cache_dir: str | os.PathLike[str] | None = None,
                 batched: bool | None = None, time_limit: float | None = None,
                 reject_invalid: bool = True, threads: int | str | None = "auto",
                 population: int | None = None, **task_options: Any) -> None:
        self.task: Task = get_task(task, **task_options)
        self.fidelity: Fidelity = get_fidelity(fidelity)
        if cache is not None and cache_dir is not None:
            raise ValueError("pass cache or cache_dir, not both")
        if cache_dir is not None:
            cache = Path(cache_dir).expanduser() / "rewards.sqlite"
        self.cache: RewardCache | None = (cache if isinstance(cache, RewardCache) or cache is None
                                          else RewardCache(cache))
        self.batched = self.task.batched_default if batched is None else bool(batched)
        self.time_limit = self.fidelity.time_limit if time_limit is None else float(time_limit)
        self.reject_invalid = bool(reject_invalid)
        if isinstance(threads, str) and threads != "auto":
            raise ValueError(f"threads must be 'auto', an int or None, got {threads!r}")
        self.threads = threads
        pop = self.task.population_default if population is None else population
        if isinstance(pop, bool) or not isinstance(pop, int) or pop < 1:
            raise ValueError(f"population must be a positive int, got {population!r}")
        self.population = int(pop)
        self.trainings = 0
        tune_malloc()
        self._set_threads()
        self._check_kernels()

    def _check_kernels(self) -> None:
        # a problem task's instance goes through numpy's OpenBLAS (its kernels matter)
        kernels.check(openblas=isinstance(self.task, ProblemTask))

    def _set_threads(self) -> None:
        n = self.task_threads
        if n is not None and torch.get_num_threads() != n:
            torch.set_num_threads(n)
        if n is not None:
            kernels.check_threads(n)

    @property
    def task_threads(self) -> int | None:
        """The torch thread count this evaluator sets (None: torch's setting is kept)."""
        if self.threads == "auto":
            return getattr(self.task, "preferred_threads", None)
        return None if self.threads is None else int(self.threads)

    # --- names -----------------------------------------------------------------------
    @property
    def task_name(self) -> str:
        """The task's registered name (``mnist1d``)."""
        return self.task.name

    @property
    def protocol(self) -> str:
        """The fidelity's key plus the sweep path when it is not the task's default;
        recorded as ``Result.fidelity`` and used in cache keys."""
        key = self.fidelity.key
        if self.batched == self.task.batched_default:
            return key
        path = "batched" if self.batched else "sequential"
        return f"{key}{',' if '+' in key else '+'}{path}"

    def __repr__(self) -> str:
        return f"Evaluator(task={self.task.id!r}, fidelity={self.protocol!r})"

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)  # the task drops its data, the cache pickles as a path

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        tune_malloc()  # a worker process's own allocator
        self._check_kernels()  # and its own CPU kernels

    # --- steps -----------------------------------------------------------------------
    def load(self) -> None:
        """Load (or generate/decode) the task's data now; raises if it is missing."""
        if isinstance(self.task, ClassificationTask):
            self.task.load()

    def probe(self, rule: Rule | str) -> Probe:
        """Fingerprint and validity probe of ``rule`` (:mod:`searchlab.fingerprint`)."""
        return probe(rule)

    def lookup(self, rule: Rule | str, seed: int = 0) -> Result | None:
        """The cached result of ``rule`` under this protocol (``cached=True``), or None.
        Never trains; None without a cache or for rules that fail the probe."""
        if self.cache is None:
            return None
        try:
            r = _as_rule(rule)
        except ValueError:
            return None
        pr = probe(r)
        if not pr.digest:
            return None
        hit = self.cache.get(pr.digest, self.task.id, self.protocol, seed)
        return None if hit is None else self._relabel(hit, r)

    def evaluate(self, rule: Rule | str | Sequence[str], seed: int = 0, *, use_cache: bool = True,
                 test: bool = False) -> Result:
        """Score ``rule`` (a Rule, its text or its token sequence) with evaluation seed
        ``seed`` (see the module docstring).

        ``test=True`` also scores the final model on the held-out test split
        (``extra["test_reward"]``; never the search signal).  ``Result.seconds`` is the
        time of this evaluation without the one-off loading of the task's data."""
        t0 = time.perf_counter()
        pre = self._admit(rule, int(seed), use_cache, test, t0)
        if isinstance(pre, Result):
            return pre
        r, base = pre
        t_load = time.perf_counter()
        self.load()  # missing data is a configuration error: raised, not scored
        t0 += time.perf_counter() - t_load
        result = self._train(r, int(seed), test, base, t0)
        if use_cache and self.cache is not None:
            self.cache.put(result)
        return result

    @property
    def max_batch(self) -> int:
        """The most rules :meth:`evaluate_many` trains in one pass (the runner's chunk size
        limit; :class:`~searchlab.interfaces.BatchEvaluator`); 1 when the sweep is not
        batched."""
        return self.population if self.batched else 1

    def evaluate_many(self, rules: Sequence[Rule | str | Sequence[str]], seed: int = 0, *,
                      use_cache: bool = True, test: bool = False) -> list[Result]:
        """:meth:`evaluate` for every rule of ``rules`` (one result each, in order), the
        ones that need training trained together in populations of at most
        :attr:`max_batch` rules (:mod:`searchlab.evaluation.population`).  Each rule keeps
        its own protocol, divergence, noise and time limit; rewards equal those of
        :meth:`evaluate` up to float rounding.  Rules with the same fingerprint are
        trained once (the others come back as cache hits).  ``Result.seconds`` and
        ``extra["cpu_seconds"]`` are each rule's share of the population's time (its own
        updates and validations, plus the shared forward/backward split by rows)."""
        seed = int(seed)
        out: list[Result | None] = [None] * len(rules)
        todo: dict[str, list[tuple[int, Rule, dict[str, Any]]]] = {}
        for i, rule in enumerate(rules):
            pre = self._admit(rule, seed, use_cache, test, time.perf_counter())
            if isinstance(pre, Result):
                out[i] = pre
            else:
                todo.setdefault(pre[1]["fingerprint"], []).append((i, *pre))
        if todo:
            self.load()
        firsts = [group[0] for group in todo.values()]
        size = self.max_batch
        for lo in range(0, len(firsts), size):
            chunk = firsts[lo:lo + size]
            if len(chunk) == 1:
                i, r, base = chunk[0]
                results = [self._train(r, seed, test, base, time.perf_counter())]
            else:
                results = self._train_population([c[1] for c in chunk], seed, test,
                                                 [c[2] for c in chunk])
            for (i, _, _), res in zip(chunk, results):
                out[i] = res
                if use_cache and self.cache is not None:
                    self.cache.put(res)
        for group in todo.values():
            first = out[group[0][0]]
            assert first is not None
            for i, r, _ in group[1:]:
                out[i] = self._relabel(first, r)
        return [o for o in out if o is not None]

    def _admit(self, rule: Rule | str | Sequence[str], seed: int, use_cache: bool, test: bool,
               t0: float) -> Result | tuple[Rule, dict[str, Any]]:
        """Parse, probe and look up ``rule``: its final result (invalid, cache hit), or the
        parsed rule and its result fields for training."""
        base: dict[str, Any] = dict(seed=seed, task=self.task.id, fidelity=self.protocol)
        try:
            r = _as_rule(rule)
        except ValueError as exc:  # ParseError, TokenGrammarError
            return Result(rule=_text(rule), key="", reward=FLOOR_REWARD, status="invalid",
                          message=f"cannot parse: {exc}", seconds=time.perf_counter() - t0, **base)
        base.update(rule=r.text, key=r.key, tokens=_tokens(r))
        pr = probe(r)
        base["fingerprint"] = pr.digest
        if pr.problem is not None and (self.reject_invalid or not pr.digest):
            return Result(reward=FLOOR_REWARD, status="invalid", message=pr.problem,
                          seconds=time.perf_counter() - t0, **base)
        if use_cache and self.cache is not None:
            hit = self.cache.get(pr.digest, self.task.id, self.protocol, seed)
            if hit is not None and (not test or "test_reward" in hit.extra):
                return self._relabel(hit, r)
        return r, base

    # --- training ----------------------------------------------------------------------
    def _train(self, r: Rule, seed: int, test: bool, base: dict[str, Any], t0: float) -> Result:
        from ..optim import compile_rule

        self.trainings += 1
        cpu0 = time.process_time()
        deadline = time.perf_counter() + self.time_limit if self.time_limit is not None else None
        try:
            compiled = compile_rule(r)
            if isinstance(self.task, ClassificationTask):
                out = run_classification(self.task, self.task.load(), compiled, self.fidelity,
                                         seed, self.batched, deadline, test)
            elif isinstance(self.task, ProblemTask):
                out = run_problems(self.task, compiled, self.fidelity, seed, self.batched,
                                   deadline, test)
            else:  # pragma: no cover - a Task subclass of an unknown kind
                raise TypeError(f"task {self.task.id} is of unknown kind {self.task.kind!r}")
        except Timeout:
            out = Outcome("timeout", message=f"time limit of {self.time_limit:g} s reached")
        except TRAINING_ERRORS:
            out = Outcome("error", message=traceback.format_exc())
        except Exception:  # noqa: BLE001 - evaluate never raises for a bad rule
            out = Outcome("error", message="unexpected error:\n" + traceback.format_exc())
        return self._result(out, base, time.perf_counter() - t0, time.process_time() - cpu0)

    def _train_population(self, rules: Sequence[Rule], seed: int, test: bool,
                          bases: Sequence[dict[str, Any]]) -> list[Result]:
        """Train ``rules`` as one population; a failure of the population pass itself
        (not of a rule) falls back to training them one at a time."""
        from ..optim import compile_rule
        from .population import run_population
        from .protocol import run_problems_population

        t0, cpu0 = time.perf_counter(), time.process_time()
        outs: list[Outcome | None] = [None] * len(rules)
        compiled: list[tuple[int, Any]] = []
        for i, r in enumerate(rules):
            try:
                compiled.append((i, compile_rule(r)))
            except TRAINING_ERRORS:
                outs[i] = Outcome("error", message=traceback.format_exc())
        try:
            comp = [c for _, c in compiled]
            if not comp:                      # every rule failed to compile
                got = []
            elif isinstance(self.task, ClassificationTask):
                got = run_population(self.task, self.task.load(), comp, self.fidelity, seed,
                                     self.time_limit, test)
            elif isinstance(self.task, ProblemTask):
                got = run_problems_population(self.task, comp, self.fidelity, seed,
                                              self.time_limit, test)
            else:  # pragma: no cover - a Task subclass of an unknown kind
                raise TypeError(f"task {self.task.id} is of unknown kind {self.task.kind!r}")
        except Exception:  # noqa: BLE001 - never lose the rules: one at a time instead
            return [self._train(r, seed, test, b, time.perf_counter())
                    for r, b in zip(rules, bases)]
        for (i, _), o in zip(compiled, got):
            outs[i] = o
        self.trainings += len(rules)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        shares = [float(o.extra.pop("clock_seconds", 0.0)) if o is not None else 0.0
                  for o in outs]
        total = sum(shares) or 1.0
        return [self._result(o, b, wall * sh / total, cpu * sh / total, len(rules))
                for o, b, sh in zip(outs, bases, shares)]  # type: ignore[arg-type]

    def _result(self, out: Outcome, base: dict[str, Any], seconds: float, cpu: float,
                population: int = 1) -> Result:
        reward = out.reward if out.status == "ok" and out.reward is not None else FLOOR_REWARD
        if not math.isfinite(reward):
            reward = FLOOR_REWARD
        # the compute clock (docs/ARCHITECTURE.md, "Three clocks"): CPU-seconds of this
        # process for the training (a cache hit keeps its original cost; a rule of a
        # population its share) and the examples the protocol schedules (nominal: copies
        # that diverge stop earlier)
        extra = {**out.extra, "cpu_seconds": cpu, "train_examples": self._nominal_examples()}
        if population > 1:
            extra["population"] = population
        return Result(reward=float(reward), status=out.status,  # type: ignore[arg-type]
                      best_lr=out.best_lr, seconds=seconds,
                      sweep=out.sweep, curve=out.curve, val_loss=out.val_loss,
                      val_acc=out.val_acc, message=out.message, extra=extra, **base)

    def _nominal_examples(self) -> int:
        """Training examples (problem tasks: steps) the protocol schedules for one rule."""
        fid = self.fidelity
        if isinstance(self.task, ClassificationTask):
            n = self.task.load().sizes()["train"]
            cap = lambda want: n if want is None else min(int(want), n)  # noqa: E731
            return (len(fid.lrs) * cap(fid.sweep_examples) * fid.sweep_epochs
                    + cap(fid.final_examples) * fid.final_epochs)
        return len(fid.lrs) * fid.problem_steps

    @staticmethod
    def _relabel(hit: Result, r: Rule) -> Result:
        extra = dict(hit.extra)
        if hit.rule != r.text:
            extra["evaluated_as"] = hit.rule
        return hit.with_(rule=r.text, key=r.key, tokens=_tokens(r), cached=True, seconds=0.0,
                         extra=extra)


def _as_rule(rule: Any) -> Rule:
    if isinstance(rule, (list, tuple)):
        return Rule.from_tokens(rule)
    return as_rule(rule)


def _text(rule: Any) -> str:
    return " ".join(map(str, rule)) if isinstance(rule, (list, tuple)) else str(rule)


def _tokens(rule: Rule) -> tuple[str, ...]:
    try:
        return tuple(rule.to_tokens())
    except ValueError:
        return ()
