"""Statistics of a strategy comparison: pure functions over numpy arrays.

Issue 10 (item 4) asks a comparison report for: per strategy the interquartile mean (IQM)
of best-so-far reward with 95 % stratified-bootstrap confidence intervals at several
budgets, a matrix of pairwise probabilities of improvement with CIs, performance
profiles, COCO-style fixed-target statistics (evaluations needed to reach a reward level,
success rate, average running time, ECDF), curves against unique evaluations and against
compute, and a plain statement when fewer than 5 seeds make the intervals meaningless.

Inputs
------
*curves*: ``{strategy: array (seeds, budget)}``; ``curves[s][i, j]`` is the best reward
that seed ``i`` of strategy ``s`` had after ``j + 1`` unique evaluations.  Runs of unequal
length are brought to one width with :func:`pad_curves`.  NaN means "no value yet" (a run
that has not produced a finite reward so far, or an empty run).

*compute*: ``{strategy: array (seeds, budget)}`` of the cumulative CPU-seconds spent when
each of those evaluations completed (same shapes as *curves*; :func:`pad_curves` pads it
too, since a cumulative sum is already its own running maximum).

*finals*: ``{strategy: array (seeds,)}`` of one score per run (usually the best reward at
the budget, :func:`final_scores`).

NaN policy: a statistic at a budget (or compute level) where any seed of a strategy has no
value is NaN for that strategy there -- not computed from the seeds that happen to have
one, which would favour the lucky ones.  Finals must be finite (a ``ValueError`` says so).

Bootstraps
----------
The IQM, probabilities of improvement and performance profiles, with their percentile
bootstrap intervals, come from ``rliable`` (``get_interval_estimates``,
``create_performance_profile``, ``metrics``); with one task its stratified bootstrap
resamples seeds.  Every bootstrap takes explicit ``reps`` and ``seed``.  rliable 1.2 draws
its resampling indices from numpy's *global* random state (``np.random.choice``; the
``random_state`` argument is ignored by its bootstrap classes and only triggers a
deprecation warning in ``arch``), so each bootstrap here runs inside a block that seeds the
global state and restores it afterwards.  The seed of each bootstrap is derived from
``seed`` and the strategy (or pair) name, so a strategy's interval does not change when
another strategy is added to the comparison.  Not thread-safe (global state).

The fixed-target statistics follow COCO's definitions (expected running time as the
evaluations spent by all runs divided by the number of successes) and are computed
directly: they are counts.
"""

from __future__ import annotations

import contextlib
import math
import zlib
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "MIN_SEEDS", "ComputeCurves", "FixedTarget", "IQMEstimates", "IntervalEstimate",
    "PerformanceProfile", "ProbabilityOfImprovement", "TargetResult",
    "average_running_time", "common_compute_grid", "curves_vs_compute",
    "evaluations_to_target", "few_seeds_warning", "final_scores", "fixed_target",
    "iqm_at_budgets", "iqm_curve", "iqm_curve_vs_compute", "pad_curves",
    "performance_profile", "probability_of_improvement", "strategies_beating",
]

#: Fewer seeds than this per strategy and the bootstrap intervals say little.
MIN_SEEDS: int = 5


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class IntervalEstimate:
    """A point estimate and its confidence interval."""

    point: float
    lower: float
    upper: float


@dataclass(frozen=True)
class IQMEstimates:
    """IQM over seeds, per strategy, at each x (a budget or a compute level).

    ``point[s]``, ``lower[s]`` and ``upper[s]`` are arrays aligned with ``x``; NaN where a
    seed of ``s`` had no value yet.
    """

    x: np.ndarray
    x_label: str
    point: dict[str, np.ndarray]
    lower: dict[str, np.ndarray]
    upper: dict[str, np.ndarray]
    n_seeds: dict[str, int]
    confidence: float
    reps: int
    seed: int

    @property
    def strategies(self) -> tuple[str, ...]:
        return tuple(self.point)

    def at(self, strategy: str, i: int) -> IntervalEstimate:
        """The estimate of ``strategy`` at ``x[i]``."""
        return IntervalEstimate(float(self.point[strategy][i]), float(self.lower[strategy][i]),
                                float(self.upper[strategy][i]))

    def rows(self) -> list[dict[str, Any]]:
        """One row per strategy and x, for tables (CSV, Markdown)."""
        return [{"strategy": s, self.x_label: _scalar(self.x[i]), "iqm": float(self.point[s][i]),
                 "lower": float(self.lower[s][i]), "upper": float(self.upper[s][i]),
                 "seeds": self.n_seeds[s]}
                for s in self.point for i in range(len(self.x))]


@dataclass(frozen=True)
class ProbabilityOfImprovement:
    """Pairwise probabilities of improvement: ``point[i, j]`` = P(``names[i]`` > ``names[j]``).

    P(X > Y) is the probability that a run of X scores higher than a run of Y, ties counted
    one half (the Mann-Whitney U statistic over ``n_x * n_y``).  The diagonal is NaN.
    """

    names: tuple[str, ...]
    point: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    n_seeds: dict[str, int]
    confidence: float
    reps: int
    seed: int

    def get(self, x: str, y: str) -> IntervalEstimate:
        """P(``x`` > ``y``) and its interval."""
        i, j = self.names.index(x), self.names.index(y)
        return IntervalEstimate(float(self.point[i, j]), float(self.lower[i, j]),
                                float(self.upper[i, j]))


@dataclass(frozen=True)
class PerformanceProfile:
    """Score distributions: ``point[s][k]`` = fraction of runs of ``s`` scoring above ``taus[k]``."""

    taus: np.ndarray
    point: dict[str, np.ndarray]
    lower: dict[str, np.ndarray]
    upper: dict[str, np.ndarray]
    n_seeds: dict[str, int]
    confidence: float
    reps: int
    seed: int


@dataclass(frozen=True)
class TargetResult:
    """How one strategy's runs did against one target reward.

    ``evaluations[i]``: unique evaluations run ``i`` needed until its best-so-far reward
    reached (>=) the target, ``inf`` if it never did.  ``art``: average running time,
    (evaluations of the successful runs until success + all evaluations of the unsuccessful
    runs) / successes; ``inf`` with no success.
    """

    target: float
    evaluations: np.ndarray
    successes: int
    runs: int
    success_rate: float
    art: float


@dataclass(frozen=True)
class FixedTarget:
    """COCO-style fixed-target view of a comparison.

    ``results[strategy][target_name]`` is a :class:`TargetResult`; ``ecdf[strategy][k]`` is
    the fraction of (run, target) pairs whose target was reached within ``grid[k]`` unique
    evaluations.
    """

    targets: dict[str, float]
    results: dict[str, dict[str, TargetResult]]
    grid: np.ndarray
    ecdf: dict[str, np.ndarray]

    def rows(self) -> list[dict[str, Any]]:
        """One row per strategy and target, for tables."""
        return [{"strategy": s, "target": t, "level": r.target, "successes": r.successes,
                 "runs": r.runs, "success_rate": r.success_rate, "aRT": r.art,
                 "median_evaluations": float(np.median(r.evaluations))}
                for s, per in self.results.items() for t, r in per.items()]


@dataclass(frozen=True)
class ComputeCurves:
    """Best-so-far reward resampled onto a common compute grid (CPU-seconds).

    ``curves[s][i, k]`` is the best reward seed ``i`` of ``s`` had once it had spent
    ``grid[k]`` CPU-seconds; NaN before its first evaluation completed.
    """

    grid: np.ndarray
    curves: dict[str, np.ndarray]


# --------------------------------------------------------------------------- helpers
def _scalar(x: Any) -> Any:
    return np.asarray(x).item()


def _check_bootstrap(reps: int, seed: int, confidence: float) -> None:
    if not isinstance(reps, (int, np.integer)) or reps < 1:
        raise ValueError(f"reps must be a positive integer, got {reps!r}")
    if not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def _as_curves(curves: Mapping[str, ArrayLike], what: str = "curves") -> dict[str, np.ndarray]:
    if not curves:
        raise ValueError(f"{what}: no strategies")
    out: dict[str, np.ndarray] = {}
    for name, arr in curves.items():
        a = np.asarray(arr, dtype=float)
        if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
            raise ValueError(f"{what}[{name!r}] must be a non-empty 2-D array (seeds, budget), "
                             f"got shape {a.shape}")
        out[str(name)] = a
    return out


def _as_finals(finals: Mapping[str, ArrayLike]) -> dict[str, np.ndarray]:
    if not finals:
        raise ValueError("finals: no strategies")
    out: dict[str, np.ndarray] = {}
    for name, arr in finals.items():
        a = np.asarray(arr, dtype=float)
        if a.ndim == 2 and a.shape[1] == 1:
            a = a[:, 0]
        if a.ndim != 1 or a.size < 1:
            raise ValueError(f"finals[{name!r}] must be a non-empty 1-D array (seeds,), "
                             f"got shape {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"finals[{name!r}] has non-finite values; drop or score the runs "
                             f"that produced no reward before comparing")
        out[str(name)] = a
    return out


def _stream_seed(seed: int, name: str) -> int:
    """A 32-bit seed for the bootstrap of one strategy (or pair), stable across runs."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode("utf-8"))) % (2**32)


@contextlib.contextmanager
def _seeded_global_numpy(seed: int) -> Iterator[None]:
    """Seed numpy's global random state (which rliable's bootstrap draws from), then restore it."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _rliable() -> tuple[Any, Any]:
    # imported lazily: rliable imports arch (and pandas), ~1-3 s
    from rliable import library, metrics
    return library, metrics


def _iqm_by_column(scores: np.ndarray) -> np.ndarray:
    """IQM over seeds of each trailing column of ``scores`` (seeds, 1, k).

    This is ``rliable.metrics.aggregate_iqm`` (scipy's ``trim_mean`` cutting 25 % at each
    end, i.e. ``int(0.25 * n)`` sorted values from each end) applied to every column, done
    in one vectorized call: ``aggregate_iqm`` flattens its input, so it would have to be
    called once per column and bootstrap replicate, at ~0.3 ms a call.  The partition and
    mean are ``trim_mean``'s own two steps, without its ~2 ms of argument checking per
    call (it runs once per bootstrap replicate).  The tests check the two agree.
    """
    x = scores.reshape(scores.shape[0], -1)
    n = x.shape[0]
    lo = int(0.25 * n)
    hi = n - lo
    part = np.partition(x, (lo, hi - 1), axis=0)
    return np.atleast_1d(part[lo:hi].mean(axis=0))


def _probability_of_improvement(scores_x: np.ndarray, scores_y: np.ndarray) -> float:
    """``rliable.metrics.probability_of_improvement`` (P(X > Y) per task, ties one half,
    averaged over tasks), with the Mann-Whitney U statistic counted directly: U = #{x > y}
    + 0.5 #{x = y} is what ``scipy.stats.mannwhitneyu(x, y, alternative="greater")``
    returns, at ~3 ms of overhead a call, and this runs once per pair and bootstrap
    replicate.  The tests check the two agree."""
    probs = []
    for task in range(scores_x.shape[1]):
        x, y = scores_x[:, task], scores_y[:, task]
        if np.array_equal(x, y):
            probs.append(0.5)
            continue
        d = x[:, None] - y[None, :]
        probs.append((np.count_nonzero(d > 0) + 0.5 * np.count_nonzero(d == 0))
                     / (x.size * y.size))
    return float(np.mean(probs))


def _iqm_columns(curves: dict[str, np.ndarray], cols: Mapping[str, np.ndarray], x: np.ndarray,
                 x_label: str, reps: int, seed: int, confidence: float) -> IQMEstimates:
    library, _ = _rliable()
    point, lower, upper, n = {}, {}, {}, {}
    for name, arr in curves.items():
        sub = arr[:, cols[name]]
        k = sub.shape[1]
        p, lo, hi = np.full(k, np.nan), np.full(k, np.nan), np.full(k, np.nan)
        ok = np.isfinite(sub).all(axis=0)
        if ok.any():
            scores = sub[:, ok][:, None, :]          # (seeds, one task, columns)
            with _seeded_global_numpy(_stream_seed(seed, name)):
                pe, ie = library.get_interval_estimates(
                    {name: scores}, _iqm_by_column, reps=int(reps),
                    confidence_interval_size=confidence)
            p[ok] = pe[name]
            lo[ok], hi[ok] = ie[name][0], ie[name][1]
        point[name], lower[name], upper[name], n[name] = p, lo, hi, arr.shape[0]
    return IQMEstimates(x=np.asarray(x), x_label=x_label, point=point, lower=lower,
                        upper=upper, n_seeds=n, confidence=float(confidence), reps=int(reps),
                        seed=int(seed))


# --------------------------------------------------------------------------- inputs
def pad_curves(runs: Sequence[ArrayLike], budget: int) -> np.ndarray:
    """Stack runs of unequal length into one ``(len(runs), budget)`` array of best-so-far.

    Each run is a 1-D sequence of best-so-far values after each unique evaluation (raw
    per-evaluation rewards work too: the running maximum is taken, ignoring NaN).  A run
    shorter than ``budget`` is carried forward at its last value (its best does not change
    after it stopped); a longer one is cut at ``budget``.  Values before the run's first
    finite one are NaN, and an empty run is a row of NaN.

    The same padding suits cumulative compute (CPU-seconds per evaluation): it is already
    its own running maximum, and a stopped run spends no more.
    """
    if not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ValueError(f"budget must be a positive integer, got {budget!r}")
    out = np.full((len(runs), int(budget)), np.nan)
    for i, run in enumerate(runs):
        a = np.asarray(run, dtype=float).ravel()[:budget]
        if a.size == 0:
            continue
        best = np.fmax.accumulate(a)                 # NaN until the first finite value
        out[i, :a.size] = best
        out[i, a.size:] = best[-1]
    return out


def final_scores(curves: Mapping[str, ArrayLike]) -> dict[str, np.ndarray]:
    """The last column of each strategy's curves: best reward at the budget, per seed."""
    return {name: arr[:, -1].copy() for name, arr in _as_curves(curves).items()}


def few_seeds_warning(n_seeds: int) -> str | None:
    """A plain-English warning when ``n_seeds`` < 5, else None.

    With so few runs a bootstrap interval is mostly the spread of the runs themselves, and
    a probability of improvement cannot be told apart from chance.
    """
    if n_seeds >= MIN_SEEDS:
        return None
    runs = "no seed" if n_seeds <= 0 else ("1 seed" if n_seeds == 1 else f"{n_seeds} seeds")
    return (f"Warning: only {runs} per strategy. Confidence intervals and probabilities of "
            f"improvement from fewer than {MIN_SEEDS} seeds are not meaningful: do not read "
            f"a difference between strategies into them; run at least {MIN_SEEDS} (better 10) "
            f"seeds.")


# --------------------------------------------------------------------------- IQM
def iqm_at_budgets(curves: Mapping[str, ArrayLike], budgets: Sequence[int], reps: int,
                   seed: int, confidence: float = 0.95) -> IQMEstimates:
    """IQM of best-so-far over seeds at each budget (unique evaluations), with bootstrap CIs.

    ``budgets`` are evaluation counts, 1-based: budget ``b`` reads column ``b - 1``.  The
    interval is rliable's percentile stratified bootstrap (over seeds, one task) of
    ``confidence`` coverage with ``reps`` resamples.  NaN where a seed has no value yet.
    """
    _check_bootstrap(reps, seed, confidence)
    c = _as_curves(curves)
    b = np.asarray(list(budgets), dtype=int)
    if b.ndim != 1 or b.size == 0:
        raise ValueError("budgets: give at least one budget")
    cols = {}
    for name, arr in c.items():
        if b.min() < 1 or b.max() > arr.shape[1]:
            raise ValueError(f"budgets must be in 1..{arr.shape[1]} for {name!r}, got {b.tolist()}")
        cols[name] = b - 1
    return _iqm_columns(c, cols, b, "unique evaluations", reps, seed, confidence)


def iqm_curve(curves: Mapping[str, ArrayLike], reps: int, seed: int, *,
              x: ArrayLike | None = None, x_label: str | None = None, max_points: int = 50,
              confidence: float = 0.95) -> IQMEstimates:
    """IQM curve with a bootstrap band, for plotting.

    All strategies must have the same width.  ``x`` gives the x value of each column
    (default: unique evaluations 1..budget); at most ``max_points`` evenly spread columns
    are kept (always the first and the last), since each column costs a bootstrap.
    """
    _check_bootstrap(reps, seed, confidence)
    c = _as_curves(curves)
    widths = {arr.shape[1] for arr in c.values()}
    if len(widths) != 1:
        raise ValueError(f"iqm_curve: strategies have different widths {sorted(widths)}; "
                         f"pad them to one budget with pad_curves")
    width = widths.pop()
    if x is None:
        xs = np.arange(1, width + 1)
        label = x_label or "unique evaluations"
    else:
        xs = np.asarray(x)
        if xs.shape != (width,):
            raise ValueError(f"x must have one value per column ({width}), got shape {xs.shape}")
        label = x_label or "x"
    if max_points < 2:
        raise ValueError("max_points must be at least 2")
    idx = (np.arange(width) if width <= max_points
           else np.unique(np.round(np.linspace(0, width - 1, max_points)).astype(int)))
    return _iqm_columns(c, {name: idx for name in c}, xs[idx], label, reps, seed, confidence)


def iqm_curve_vs_compute(compute_curves: ComputeCurves, reps: int, seed: int, *,
                         max_points: int = 50, confidence: float = 0.95) -> IQMEstimates:
    """:func:`iqm_curve` of :func:`curves_vs_compute` output, x in CPU-seconds."""
    return iqm_curve(compute_curves.curves, reps, seed, x=compute_curves.grid,
                     x_label="CPU-seconds", max_points=max_points, confidence=confidence)


# --------------------------------------------------------------------------- pairs
def probability_of_improvement(finals: Mapping[str, ArrayLike], reps: int, seed: int,
                               confidence: float = 0.95) -> ProbabilityOfImprovement:
    """P(X > Y) for every ordered pair of strategies, with bootstrap CIs.

    Point and interval come from rliable (``metrics.probability_of_improvement``, computed
    by :func:`_probability_of_improvement`, under ``get_interval_estimates`` with each
    strategy's runs resampled independently).  Each
    unordered pair is bootstrapped once and its mirror filled in: in every resample
    P(Y > X) = 1 - P(X > Y) (ties count one half either way), so its percentile interval
    is (1 - upper, 1 - lower).  Cost: about 1 ms per pair and resample.
    """
    _check_bootstrap(reps, seed, confidence)
    f = _as_finals(finals)
    library, metrics = _rliable()
    names = tuple(f)
    k = len(names)
    point, lower, upper = (np.full((k, k), np.nan) for _ in range(3))
    for i in range(k):
        for j in range(i + 1, k):
            key = f"{names[i]}>{names[j]}"
            pair = [f[names[i]][:, None], f[names[j]][:, None]]
            with _seeded_global_numpy(_stream_seed(seed, key)):
                pe, ie = library.get_interval_estimates(
                    {key: pair}, _probability_of_improvement, reps=int(reps),
                    confidence_interval_size=confidence)
            p = float(np.asarray(pe[key]).ravel()[0])
            lo, hi = (float(v) for v in np.asarray(ie[key]).ravel()[:2])
            point[i, j], lower[i, j], upper[i, j] = p, lo, hi
            point[j, i], lower[j, i], upper[j, i] = 1.0 - p, 1.0 - hi, 1.0 - lo
    return ProbabilityOfImprovement(names=names, point=point, lower=lower, upper=upper,
                                    n_seeds={n: int(a.size) for n, a in f.items()},
                                    confidence=float(confidence), reps=int(reps),
                                    seed=int(seed))


def strategies_beating(poi: ProbabilityOfImprovement, reference: str) -> tuple[str, ...]:
    """The strategies X whose P(X > ``reference``) has its CI lower bound above 0.5."""
    if reference not in poi.names:
        raise KeyError(f"{reference!r} is not in the comparison {poi.names}")
    j = poi.names.index(reference)
    return tuple(n for i, n in enumerate(poi.names) if i != j and poi.lower[i, j] > 0.5)


# --------------------------------------------------------------------------- profiles
def _score_distribution(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """rliable's ``score_distributions(scores, taus)`` (``np.mean(scores > tau)`` per
    tau, over all runs and tasks) in one comparison: the same counts over the same
    number of runs; a test checks it against rliable's own."""
    t = np.asarray(taus, dtype=float)
    return (np.asarray(scores)[..., None] > t).reshape(-1, t.size).mean(axis=0)


def performance_profile(finals: Mapping[str, ArrayLike], taus: ArrayLike, reps: int,
                        seed: int, confidence: float = 0.95) -> PerformanceProfile:
    """Score distribution of each strategy: fraction of runs scoring above (>) each tau.

    rliable's ``create_performance_profile`` (run score distributions, percentile
    stratified-bootstrap bands over seeds), given its score distribution as one array
    comparison (:func:`_score_distribution`) instead of ``np.vectorize`` over the taus.
    """
    _check_bootstrap(reps, seed, confidence)
    f = _as_finals(finals)
    t = np.asarray(taus, dtype=float).ravel()
    if t.size == 0:
        raise ValueError("taus: give at least one threshold")
    library, _ = _rliable()
    point, lower, upper = {}, {}, {}
    for name, a in f.items():
        with _seeded_global_numpy(_stream_seed(seed, name)):
            prof, cis = library.create_performance_profile(
                {name: a[:, None]}, t, custom_profile_func=_score_distribution,
                reps=int(reps), confidence_interval_size=confidence)
        point[name] = np.asarray(prof[name], dtype=float)
        lower[name] = np.asarray(cis[name][0], dtype=float)
        upper[name] = np.asarray(cis[name][1], dtype=float)
    return PerformanceProfile(taus=t, point=point, lower=lower, upper=upper,
                              n_seeds={n: int(a.size) for n, a in f.items()},
                              confidence=float(confidence), reps=int(reps), seed=int(seed))


# --------------------------------------------------------------------------- fixed target
def evaluations_to_target(curves: ArrayLike, target: float) -> np.ndarray:
    """Per run (row), the unique evaluations until best-so-far first reached ``target``.

    1-based: reaching it with the first evaluation counts 1.  ``inf`` if never (NaN never
    reaches anything).
    """
    a = np.asarray(curves, dtype=float)
    if a.ndim != 2:
        raise ValueError(f"curves must be 2-D (seeds, budget), got shape {a.shape}")
    with np.errstate(invalid="ignore"):
        hit = a >= target
    first = np.argmax(hit, axis=1).astype(float) + 1.0
    first[~hit.any(axis=1)] = math.inf
    return first


def average_running_time(evaluations: ArrayLike, lengths: ArrayLike) -> float:
    """COCO's average running time: evaluations spent by all runs / number of successes.

    A successful run counts its evaluations until success, an unsuccessful one its whole
    length (``lengths[i]``, the evaluations it actually ran).  ``inf`` with no success.
    """
    ev = np.asarray(evaluations, dtype=float).ravel()
    ln = np.asarray(lengths, dtype=float).ravel()
    if ev.shape != ln.shape:
        raise ValueError("evaluations and lengths must have one value per run")
    ok = np.isfinite(ev)
    if not ok.any():
        return math.inf
    return float(np.where(ok, ev, ln).sum() / ok.sum())


def fixed_target(curves: Mapping[str, ArrayLike], targets: Mapping[str, float],
                 grid: ArrayLike | None = None,
                 lengths: Mapping[str, ArrayLike] | None = None) -> FixedTarget:
    """Fixed-target statistics of every strategy for every named target reward.

    ``targets``: name -> reward level (e.g. the re-scored rewards of SGD and Adam); a level
    is reached when best-so-far >= it.  ``grid``: evaluation counts at which the ECDF is
    read (default 1..widest budget).  ``lengths``: per strategy, the unique evaluations each
    run actually ran (default: the full width); an unsuccessful run that stopped early
    spends only its own length in the aRT.
    """
    c = _as_curves(curves)
    if not targets:
        raise ValueError("targets: give at least one target")
    tg = {str(k): float(v) for k, v in targets.items()}
    width = max(arr.shape[1] for arr in c.values())
    xs = np.arange(1, width + 1) if grid is None else np.asarray(grid, dtype=float).ravel()
    results: dict[str, dict[str, TargetResult]] = {}
    ecdf: dict[str, np.ndarray] = {}
    for name, arr in c.items():
        seeds, budget = arr.shape
        if lengths is not None and name in lengths:
            ln = np.asarray(lengths[name], dtype=float).ravel()
            if ln.shape != (seeds,) or (ln < 0).any() or (ln > budget).any():
                raise ValueError(f"lengths[{name!r}] must give 0..{budget} per seed ({seeds})")
        else:
            ln = np.full(seeds, float(budget))
        per: dict[str, TargetResult] = {}
        needed = []
        for tname, level in tg.items():
            ev = evaluations_to_target(arr, level)
            succ = int(np.isfinite(ev).sum())
            per[tname] = TargetResult(target=level, evaluations=ev, successes=succ, runs=seeds,
                                      success_rate=succ / seeds,
                                      art=average_running_time(ev, ln))
            needed.append(ev)
        allev = np.concatenate(needed)                # (targets * seeds,) (run, target) pairs
        ecdf[name] = (allev[None, :] <= xs[:, None]).mean(axis=1)
        results[name] = per
    return FixedTarget(targets=tg, results=results, grid=xs, ecdf=ecdf)


# --------------------------------------------------------------------------- compute axis
def common_compute_grid(compute: Mapping[str, ArrayLike], points: int = 50) -> np.ndarray:
    """``points`` evenly spaced CPU-second levels from 0 to the most any run spent."""
    c = _as_curves(compute, "compute")
    finite = [a[np.isfinite(a)] for a in c.values()]
    top = max((float(f.max()) for f in finite if f.size), default=0.0)
    if points < 2:
        raise ValueError("points must be at least 2")
    return np.linspace(0.0, top, points)


def curves_vs_compute(curves: Mapping[str, ArrayLike], compute: Mapping[str, ArrayLike],
                      grid: ArrayLike) -> ComputeCurves:
    """Resample each run's best-so-far onto a common compute grid (CPU-seconds).

    Step function: at level ``t`` a run has the best reward of the evaluations that had
    completed by ``t`` CPU-seconds (``compute <= t``); NaN before its first one completed.
    ``compute[s]`` must have the shape of ``curves[s]`` and be cumulative (non-decreasing);
    NaN only after a run's last evaluation (as :func:`pad_curves` leaves an empty run).
    """
    c = _as_curves(curves)
    k = _as_curves(compute, "compute")
    if set(c) != set(k):
        raise ValueError(f"curves and compute name different strategies: {sorted(c)} vs {sorted(k)}")
    g = np.asarray(grid, dtype=float).ravel()
    if g.size == 0 or not np.isfinite(g).all():
        raise ValueError("grid: give at least one finite compute level")
    out: dict[str, np.ndarray] = {}
    for name, arr in c.items():
        comp = k[name]
        if comp.shape != arr.shape:
            raise ValueError(f"compute[{name!r}] has shape {comp.shape}, curves {arr.shape}")
        res = np.full((arr.shape[0], g.size), np.nan)
        for i in range(arr.shape[0]):
            fin = np.isfinite(comp[i])
            n = int(fin.sum())
            if n == 0:
                continue
            if not fin[:n].all():
                raise ValueError(f"compute[{name!r}] seed {i}: NaN before a finite value")
            done = comp[i, :n]
            if (np.diff(done) < 0).any():
                raise ValueError(f"compute[{name!r}] seed {i} is not cumulative (it decreases)")
            last = np.searchsorted(done, g, side="right") - 1   # last evaluation done by t
            reached = last >= 0
            res[i, reached] = arr[i, last[reached]]
        out[name] = res
    return ComputeCurves(grid=g, curves=out)
