"""The report of a comparison: per-strategy tables and plots from finished searches.

Input: the :class:`~searchlab.runfiles.RunRecord` of every strategy x seed (read from a
comparison folder by :func:`searchlab.runfiles.load_runs`).  Output, in one folder:

* ``best_so_far.png`` -- best reward so far vs number of unique evaluations, the mean over
  seeds and a 95 % bootstrap band (of the mean, resampling seeds) per strategy;
* ``rewards.png`` -- the reward of every sample vs its index, per strategy;
* ``summary.csv`` / ``summary.md`` -- one row per strategy: best reward at the budget
  (mean and 95 % bootstrap CI), median unique evaluations to reach a reward threshold,
  unique-evaluation ratio (unique rules / rules asked), wall time per sample;
* ``runs.csv`` -- one row per strategy x seed; ``report.json`` -- everything above;
* the statistics of :func:`write_statistics` (rliable IQM, probability of improvement,
  performance profiles, fixed targets);
* ``report.html`` -- all of it on one self-contained page (:mod:`searchlab.report.html`).

Every sample counted here is a unique evaluation: the runner logs only fresh canonical
keys (repeats are free), and :meth:`RunRecord.rewards` de-duplicates keys again for
results that come from elsewhere.  Nothing here runs a search or talks to MLflow.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..runfiles import RunRecord, best_results, dump_json, reward_value

__all__ = ["DEFAULT_REPS", "best_so_far", "bootstrap_ci", "compute_curve", "default_threshold",
           "evals_to_reach", "summarize", "write_report", "write_statistics"]


# --- statistics -------------------------------------------------------------------------
def best_so_far(rewards: np.ndarray) -> np.ndarray:
    """Running maximum, NaN (failed) samples counting as -inf until a finite one."""
    r = np.where(np.isnan(rewards), -np.inf, rewards)
    return np.maximum.accumulate(r) if len(r) else r


def bootstrap_ci(values: np.ndarray, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and percentile-bootstrap CI of the mean over axis 0 (rows = seeds).

    ``values`` is (seeds,) or (seeds, points); returns (mean, low, high) of the
    trailing shape.  With one seed the interval is the value itself.
    """
    v = np.asarray(values, dtype=float)
    mean = v.mean(axis=0)
    if v.shape[0] < 2:
        return mean, mean.copy(), mean.copy()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.shape[0], size=(n_boot, v.shape[0]))
    boots = v[idx].mean(axis=1)
    a = (1.0 - level) / 2
    low, high = np.quantile(boots, [a, 1 - a], axis=0)
    return mean, low, high


def _curves(runs: Sequence[RunRecord]) -> np.ndarray:
    """Best-so-far curves of ``runs`` padded (with their last value) to a common length."""
    curves = [best_so_far(r.rewards) for r in runs]
    n = max((len(c) for c in curves), default=0)
    out = np.full((len(curves), n), np.nan)
    for i, c in enumerate(curves):
        if len(c):
            out[i, :len(c)] = c
            out[i, len(c):] = c[-1]
    return out


def _groups(runs: Sequence[RunRecord]) -> dict[str, list[RunRecord]]:
    groups: dict[str, list[RunRecord]] = {}
    for r in runs:
        groups.setdefault(r.label, []).append(r)
    for g in groups.values():
        g.sort(key=lambda r: r.seed)
    return groups


def _final_best(r: RunRecord) -> float:
    c = best_so_far(r.rewards)
    return float(c[-1]) if len(c) and np.isfinite(c[-1]) else float("nan")


def evals_to_reach(r: RunRecord, threshold: float) -> float:
    """Unique evaluations until the best reward is >= ``threshold`` (inf if never)."""
    hit = np.flatnonzero(best_so_far(r.rewards) >= threshold)
    return float(hit[0] + 1) if len(hit) else math.inf


def default_threshold(runs: Sequence[RunRecord]) -> float:
    """The median over all runs of their final best reward (about half the runs reach it)."""
    finals = [v for v in (_final_best(r) for r in runs) if math.isfinite(v)]
    return float(np.median(finals)) if finals else 0.0


def summarize(runs: Sequence[RunRecord], threshold: float | None = None,
              seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float]:
    """Per-strategy rows, per-run rows and the threshold used."""
    thr = default_threshold(runs) if threshold is None else float(threshold)
    per_run = []
    for r in runs:
        fb = _final_best(r)
        best = best_results(r.results, 1)
        per_run.append({
            "strategy": r.label, "seed": r.seed, "unique": r.unique, "asked": r.asked,
            "best_reward": fb, "evals_to_threshold": evals_to_reach(r, thr),
            "unique_ratio": r.unique / r.asked if r.asked else float("nan"),
            "wall_s": r.wall_seconds,
            "wall_s_per_sample": r.wall_seconds / r.unique if r.unique else float("nan"),
            "cache_hit_ratio": (sum(bool(x.cached) for x in r.results) / len(r.results)
                                if r.results else float("nan")),
            "best_rule": best[0].rule if best else "",
            "stopped": r.summary.get("stopped", ""), "source": r.source})
    rows = []
    for label, group in _groups(runs).items():
        mine = [p for p in per_run if p["strategy"] == label]
        finals = np.array([p["best_reward"] for p in mine], dtype=float)
        finals = finals[np.isfinite(finals)]
        if len(finals):
            mean, low, high = (float(x) for x in bootstrap_ci(finals, seed=seed))
        else:
            mean = low = high = float("nan")
        reach = np.array([p["evals_to_threshold"] for p in mine], dtype=float)
        top = best_results([x for r in group for x in r.results], 1)
        rows.append({
            "strategy": label, "runs": len(group),
            "budget": int(max(r.unique for r in group)) if group else 0,
            "best_reward_mean": mean, "best_reward_ci_low": low, "best_reward_ci_high": high,
            "threshold": thr,
            "median_evals_to_threshold": float(np.median(reach)) if len(reach) else math.inf,
            "reached": f"{int(np.isfinite(reach).sum())}/{len(reach)}",
            "unique_ratio": float(np.mean([p["unique_ratio"] for p in mine])),
            "wall_s_per_sample": float(np.mean([p["wall_s_per_sample"] for p in mine])),
            "cache_hit_ratio": float(np.mean([p["cache_hit_ratio"] for p in mine])),
            "best_rule": top[0].rule if top else "",
            "best_rule_reward": reward_value(top[0].reward) if top else float("nan")})
    return rows, per_run, thr


# --- report files -----------------------------------------------------------------------
_SUMMARY_COLUMNS = ("strategy", "runs", "budget", "best_reward_mean", "best_reward_ci_low",
                    "best_reward_ci_high", "threshold", "median_evals_to_threshold",
                    "reached", "unique_ratio", "wall_s_per_sample", "cache_hit_ratio",
                    "best_rule", "best_rule_reward")
_RUN_COLUMNS = ("strategy", "seed", "unique", "asked", "best_reward", "evals_to_threshold",
                "unique_ratio", "wall_s", "wall_s_per_sample", "cache_hit_ratio", "best_rule",
                "stopped", "source")


def _fmt(x: Any, digits: int = 4) -> str:
    if isinstance(x, float):
        if math.isnan(x):
            return "-"
        if math.isinf(x):
            return "never" if x > 0 else "-inf"
        return f"{x:.{digits}f}"
    return str(x)


def _markdown(rows: Sequence[Mapping[str, Any]], thr: float, title: str) -> str:
    lines = [f"# {title}", "",
             f"Best reward at the budget: mean over seeds and 95 % bootstrap CI. "
             f"Threshold for 'evaluations to reach': reward >= {thr:.4f}. Wall time per "
             "sample is lower where the persistent reward cache already held a rule "
             "(cache hits: rewards identical, no training).", "",
             "| strategy | runs | budget | best reward (mean [95% CI]) | median evals to "
             f"reach {thr:.4f} (reached) | unique-eval ratio | wall s / sample | cache hits |",
             "|---|---:|---:|---|---|---:|---:|---:|"]
    for r in rows:
        reach = r["median_evals_to_threshold"]
        reach_s = f">{r['budget']}" if math.isinf(reach) else f"{reach:.0f}"
        lines.append(
            f"| {r['strategy']} | {r['runs']} | {r['budget']} | "
            f"{_fmt(r['best_reward_mean'])} [{_fmt(r['best_reward_ci_low'])}, "
            f"{_fmt(r['best_reward_ci_high'])}] | {reach_s} ({r['reached']}) | "
            f"{_fmt(r['unique_ratio'], 3)} | {_fmt(r['wall_s_per_sample'], 3)} | "
            f"{_fmt(r['cache_hit_ratio'], 2)} |")
    lines += ["", "Best rule per strategy (over all seeds):", "",
              "| strategy | reward | rule |", "|---|---:|---|"]
    for r in rows:
        lines.append(f"| {r['strategy']} | {_fmt(r['best_rule_reward'])} | `{r['best_rule']}` |")
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (_fmt(v, 6) if isinstance(v, float) and not math.isfinite(v) else v)
                        for k, v in r.items()})


def _plots(runs: Sequence[RunRecord], folder: Path, thr: float, title: str) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    groups = _groups(runs)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    out = {"best_so_far.png": folder / "best_so_far.png", "rewards.png": folder / "rewards.png"}

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, (label, group) in enumerate(groups.items()):
        c = colors[k % len(colors)]
        curves = _curves(group)
        if curves.shape[1] == 0:
            continue
        finite = np.where(np.isfinite(curves), curves, np.nan)
        # a curve still at -inf (only NaN rewards so far) counts as the lowest finite value
        # of the group there, so the mean and band stay finite
        fill = np.where(np.isnan(finite), np.nanmin(finite) if np.isfinite(finite).any() else 0.0, finite)
        mean, low, high = bootstrap_ci(fill)
        x = np.arange(1, curves.shape[1] + 1)
        ax.plot(x, mean, color=c, label=f"{label} (n={len(group)})")
        ax.fill_between(x, low, high, color=c, alpha=0.2, linewidth=0)
    ax.axhline(thr, color="0.5", linestyle=":", linewidth=1, label=f"threshold {thr:.3f}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("unique evaluations")
    ax.set_ylabel("best reward so far")
    ax.set_title(f"{title}: mean and 95% bootstrap band over seeds", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out["best_so_far.png"], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, (label, group) in enumerate(groups.items()):
        c = colors[k % len(colors)]
        first = True
        for r in group:
            y = r.rewards
            ax.scatter(np.arange(1, len(y) + 1), y, s=6, color=c, alpha=0.35,
                       label=label if first else None)
            first = False
        # running mean over a window, averaged over seeds, as a trend line
        curves = [r.rewards for r in group if len(r.rewards)]
        if curves:
            n = min(len(c_) for c_ in curves)
            avg = np.nanmean(np.stack([c_[:n] for c_ in curves]), axis=0)
            w = max(1, n // 10)
            kernel = np.ones(w) / w
            valid = np.convolve(np.nan_to_num(avg, nan=0.0), kernel, mode="valid")
            ax.plot(np.arange(w, n + 1), valid, color=c, linewidth=1.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("sample (unique evaluation)")
    ax.set_ylabel("reward")
    ax.set_title(f"{title}: reward per sample (dots) and running mean", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, markerscale=2)
    fig.tight_layout()
    fig.savefig(out["rewards.png"], dpi=120)
    plt.close(fig)
    return out


#: bootstrap resamples of the report's statistics (rliable); 1,000 keeps a 6 x 10 report
#: under a minute on 2 cores
DEFAULT_REPS = 1000


def compute_curve(r: RunRecord) -> tuple[np.ndarray, str]:
    """Cumulative compute per unique evaluation of ``r`` and its unit: CPU-seconds of child
    training (``Result.extra["cpu_seconds"]``; a reward-cache hit counts what its original
    training cost, so strategies are charged alike whatever an earlier search cached), or
    wall seconds for results recorded before CPU time was."""
    res = r.unique_results()
    cpu = [x.extra.get("cpu_seconds") if isinstance(x.extra, dict) else None for x in res]
    if res and all(isinstance(c, (int, float)) for c in cpu):
        return np.cumsum(np.array(cpu, dtype=float)), "CPU-seconds of child training"
    return np.cumsum(np.array([float(x.seconds or 0.0) for x in res])), "wall seconds"


def _budgets(budget: int) -> list[int]:
    return sorted({b for b in (max(1, budget // 10), max(1, budget // 4), max(1, budget // 2),
                               budget) if b >= 1})


def _fmt_ci(point: float, lo: float, hi: float) -> str:
    if not math.isfinite(point):
        return "-"
    return f"{point:.4f} [{lo:.4f}, {hi:.4f}]"


def write_statistics(runs: Sequence[RunRecord], folder: str | os.PathLike[str],
                     targets: Mapping[str, float], *, title: str = "searchlab comparison",
                     reps: int = DEFAULT_REPS, seed: int = 0) -> tuple[dict[str, Path], str]:
    """The rliable / COCO statistics of a comparison (:mod:`searchlab.report.statistics`):

    * ``iqm.csv`` and ``iqm_best_so_far.png``: interquartile mean over seeds of the best
      reward so far at several budgets (unique evaluations), 95 % stratified-bootstrap CI;
    * ``iqm_vs_compute.png``: the same against cumulative compute;
    * ``probability_of_improvement.csv/.png``: P(row > column) of the final best reward;
    * ``performance_profile.png``: fraction of runs above each reward level;
    * ``fixed_target.csv`` and ``fixed_target_ecdf.png``: for each target reward, the
      unique evaluations each run needed, success rate and average running time.

    Returns the files and a Markdown section (with the few-seeds warning when it applies).
    """
    from . import figures
    from . import statistics as st

    d = Path(folder)
    groups = _groups(runs)
    budget = max(r.unique for r in runs)
    curves = {lab: st.pad_curves([best_so_far(r.rewards) for r in g], budget)
              for lab, g in groups.items()}
    curves = {lab: np.where(np.isinf(c), np.nan, c) for lab, c in curves.items()}
    complete = {lab: c for lab, c in curves.items() if np.isfinite(c[:, -1]).all()}
    comp, unit = {}, "wall seconds"
    for lab, g in groups.items():
        if lab in complete:
            cc = [compute_curve(r) for r in g]
            unit = cc[0][1]
            comp[lab] = st.pad_curves([c for c, _ in cc], budget)
    n_seeds = min(len(g) for g in groups.values())
    files: dict[str, Path] = {}
    lines = ["", "## Statistics (rliable, COCO)", ""]
    warn = st.few_seeds_warning(n_seeds)
    if warn:
        lines += [f"**{warn}**", ""]
    if not complete:
        lines.append("No strategy has a finite best reward in every run: no statistics.")
        return files, "\n".join(lines) + "\n"
    bs = _budgets(budget)
    iqm = st.iqm_at_budgets(complete, bs, reps, seed)
    files["iqm.csv"] = d / "iqm.csv"
    _write_csv(files["iqm.csv"], iqm.rows(), ("strategy", "unique evaluations", "iqm", "lower",
                                              "upper", "seeds"))
    lines += [f"Interquartile mean over seeds of the best reward so far, 95 % stratified-"
              f"bootstrap CI ({reps} resamples):", "",
              "| strategy | " + " | ".join(f"{b} evals" for b in bs) + " |",
              "|---|" + "---|" * len(bs)]
    for lab in complete:
        cells = [_fmt_ci(*(lambda e: (e.point, e.lower, e.upper))(iqm.at(lab, i)))
                 for i in range(len(bs))]
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    curve = st.iqm_curve(complete, reps, seed)
    files["iqm_best_so_far.png"] = figures.plot_iqm_curves(
        curve, d / "iqm_best_so_far.png", title=f"{title}: IQM of best-so-far",
        targets=targets)
    if comp:
        grid = st.common_compute_grid(comp)
        vs = st.iqm_curve_vs_compute(st.curves_vs_compute(
            {k: complete[k] for k in comp}, comp, grid), reps, seed)
        files["iqm_vs_compute.png"] = figures.plot_iqm_curves(
            vs, d / "iqm_vs_compute.png", title=f"{title}: IQM vs compute ({unit})",
            targets=targets)
    finals = st.final_scores(complete)
    if len(finals) >= 2:
        poi = st.probability_of_improvement(finals, reps, seed)
        files["probability_of_improvement.csv"] = d / "probability_of_improvement.csv"
        _write_csv(files["probability_of_improvement.csv"],
                   [{"x": a, "y": b, "p": poi.get(a, b).point, "lower": poi.get(a, b).lower,
                     "upper": poi.get(a, b).upper} for a in poi.names for b in poi.names if a != b],
                   ("x", "y", "p", "lower", "upper"))
        files["probability_of_improvement.png"] = figures.plot_probability_of_improvement(
            poi, d / "probability_of_improvement.png", title=f"{title}: P(row > column)")
        lines += ["", "Probability of improvement P(row > column) of the final best reward "
                  "(95 % CI); a CI above 0.5 means the row beats the column:", "",
                  "| | " + " | ".join(poi.names) + " |", "|---|" + "---|" * len(poi.names)]
        for a in poi.names:
            cells = ["-" if a == b else _fmt_ci(*(lambda e: (e.point, e.lower, e.upper))(
                poi.get(a, b))) for b in poi.names]
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
        ref = "random" if "random" in poi.names else None
        if ref is not None:
            beat = st.strategies_beating(poi, ref)
            lines += ["", f"Beat random (CI of P(X > random) above 0.5): "
                      f"{', '.join(beat) if beat else 'none'}."]
    allf = np.concatenate(list(finals.values()))
    taus = np.linspace(float(allf.min()), float(allf.max()), 41) if allf.size else np.zeros(1)
    prof = st.performance_profile(finals, taus, reps, seed)
    files["performance_profile.png"] = figures.plot_performance_profile(
        prof, d / "performance_profile.png", title=f"{title}: performance profile")
    if targets:
        ft = st.fixed_target(complete, targets)
        files["fixed_target.csv"] = d / "fixed_target.csv"
        _write_csv(files["fixed_target.csv"], ft.rows(),
                   ("strategy", "target", "level", "successes", "runs", "success_rate", "aRT",
                    "median_evaluations"))
        files["fixed_target_ecdf.png"] = figures.plot_fixed_target_ecdf(
            ft, d / "fixed_target_ecdf.png", title=f"{title}: evaluations to reach the targets")
        lines += ["", "Fixed targets: unique evaluations to reach each target reward "
                  "(success rate; aRT = evaluations spent / successes):", "",
                  "| strategy | " + " | ".join(f"{t} ({v:.4f})" for t, v in ft.targets.items())
                  + " |", "|---|" + "---|" * len(ft.targets)]
        for lab, per in ft.results.items():
            cells = [f"{r.successes}/{r.runs}, aRT {'never' if math.isinf(r.art) else f'{r.art:.0f}'}"
                     for r in per.values()]
            lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    return files, "\n".join(lines) + "\n"


def write_report(runs: Sequence[RunRecord], folder: str | os.PathLike[str],
                 threshold: float | None = None, title: str = "searchlab comparison",
                 targets: Mapping[str, float] | None = None, reps: int = DEFAULT_REPS,
                 extra_markdown: str = "") -> dict[str, Path]:
    """Write the comparison report of ``runs`` into ``folder``; returns name -> path.

    ``targets`` (name -> reward) are the fixed targets of the COCO view (e.g. re-scored
    reference optimizers); by default the threshold.  ``extra_markdown`` (e.g. the
    re-scored incumbents and reference rows) is appended to ``summary.md``."""
    if not runs:
        raise ValueError("no finished runs to report")
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    rows, per_run, thr = summarize(runs, threshold)
    paths = {"summary.csv": d / "summary.csv", "summary.md": d / "summary.md",
             "runs.csv": d / "runs.csv", "report.json": d / "report.json"}
    _write_csv(paths["summary.csv"], rows, _SUMMARY_COLUMNS)
    _write_csv(paths["runs.csv"], per_run, _RUN_COLUMNS)
    tg = dict(targets) if targets else {"threshold": thr}
    stat_files, stat_md = write_statistics(runs, d, tg, title=title, reps=reps)
    paths["summary.md"].write_text(_markdown(rows, thr, title) + stat_md + extra_markdown)
    dump_json(paths["report.json"], {"title": title, "threshold": thr, "targets": tg,
                                     "strategies": rows, "runs": per_run})
    paths.update(_plots(runs, d, thr, title))
    paths.update(stat_files)
    from .html import write_html_report

    paths["report.html"] = write_html_report(runs, d, title, paths)
    return paths


