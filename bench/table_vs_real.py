"""Does the table rank the strategies as real training does?  (issue 12, "check the
table against reality")

    .venv/bin/python bench/table_vs_real.py TABLE_COMPARE_FOLDER [--real results/verdict] [--budget 300]

``TABLE_COMPARE_FOLDER`` is the output of a comparison on ``task=table`` (e.g.
``bench/table_compare.py --keep DIR``: ``runs/<strategy>-s<seed>/results.json``).  The
real side is the mnist1d verdict's committed statistics (``results/verdict``: ``iqm.csv``
and ``probability_of_improvement.csv``, 10 seeds x 300 unique evaluations, space
``scratch``).  At the same budget, printed side by side per strategy:
- the IQM of the best reward so far (95 % stratified-bootstrap CI) and its rank;
- P(strategy > random) with its CI.
Then Kendall's tau between the two rankings.

The two sides search different spaces: the table's `tabular` space (depth 1, 17 operands)
and the verdict's `scratch` (depth 2). An agreement says that the strategies' order
carries over to a related space with real rewards. It does not say that the numbers carry
over.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _real(folder: Path, budget: int) -> tuple[dict[str, tuple[float, float, float]],
                                              dict[str, tuple[float, float, float]]]:
    iqm, poi = {}, {}
    with open(folder / "iqm.csv") as f:
        for row in csv.DictReader(f):
            if int(row["unique evaluations"]) == budget:
                iqm[row["strategy"]] = (float(row["iqm"]), float(row["lower"]), float(row["upper"]))
    with open(folder / "probability_of_improvement.csv") as f:
        for row in csv.DictReader(f):
            if row["y"] == "random":
                poi[row["x"]] = (float(row["p"]), float(row["lower"]), float(row["upper"]))
    if not iqm:
        raise SystemExit(f"{folder / 'iqm.csv'}: no row at {budget} unique evaluations")
    return iqm, poi


def _table(folder: Path, budget: int, reps: int) -> tuple[dict[str, tuple[float, float, float]],
                                                         dict[str, tuple[float, float, float]],
                                                         dict[str, int]]:
    from searchlab.report import statistics as st
    from searchlab.report.comparison import best_so_far
    from searchlab.runfiles import load_runs

    runs = load_runs(folder)
    if not runs:
        raise SystemExit(f"{folder}: no runs (expected runs/<strategy>-s<seed>/results.json)")
    groups: dict[str, list[np.ndarray]] = {}
    for r in runs:
        groups.setdefault(r.label, []).append(best_so_far(r.rewards))
    curves = {lab: st.pad_curves(c, max(budget, max(len(x) for x in c))) for lab, c in groups.items()}
    est = st.iqm_at_budgets(curves, [budget], reps=reps, seed=0)
    iqm = {lab: (float(est.point[lab][0]), float(est.lower[lab][0]), float(est.upper[lab][0]))
           for lab in curves}
    finals = {lab: c[:, budget - 1] for lab, c in curves.items()}
    p = st.probability_of_improvement(finals, reps=reps, seed=0)
    poi = {}
    if "random" in finals:
        for lab in finals:
            if lab != "random":
                e = p.get(lab, "random")
                poi[lab] = (e.point, e.lower, e.upper)
    return iqm, poi, {lab: len(c) for lab, c in groups.items()}


def _ranks(values: dict[str, float]) -> dict[str, int]:
    order = sorted(values, key=lambda k: -values[k])
    return {k: i + 1 for i, k in enumerate(order)}


def main() -> int:
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("table_compare", type=Path)
    a.add_argument("--real", type=Path, default=ROOT / "results" / "verdict")
    a.add_argument("--budget", type=int, default=300)
    a.add_argument("--reps", type=int, default=2000)
    args = a.parse_args()
    from scipy.stats import kendalltau

    real_iqm, real_poi = _real(args.real, args.budget)
    tab_iqm, tab_poi, seeds = _table(args.table_compare, args.budget, args.reps)
    both = [s for s in real_iqm if s in tab_iqm]
    if len(both) < 2:
        raise SystemExit(f"fewer than 2 strategies on both sides: real {sorted(real_iqm)}, "
                         f"table {sorted(tab_iqm)}")
    rr = _ranks({s: real_iqm[s][0] for s in both})
    tr = _ranks({s: tab_iqm[s][0] for s in both})
    f = lambda t: f"{t[0]:.3f} [{t[1]:.3f}, {t[2]:.3f}]"  # noqa: E731
    print(f"IQM of the best reward after {args.budget} unique evaluations; P(> random) at the same budget")
    print(f"real: {args.real} (mnist1d, space scratch); table: {args.table_compare} "
          f"(seeds per strategy: {sorted(set(seeds.values()))})\n")
    print("| strategy | real IQM | real rank | table IQM | table rank | real P(> random) | table P(> random) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for s in sorted(both, key=lambda k: rr[k]):
        rp = f(real_poi[s]) if s in real_poi else "-"
        tp = f(tab_poi[s]) if s in tab_poi else "-"
        print(f"| {s} | {f(real_iqm[s])} | {rr[s]} | {f(tab_iqm[s])} | {tr[s]} | {rp} | {tp} |")
    tau = kendalltau([rr[s] for s in both], [tr[s] for s in both])
    print(f"\nKendall's tau between the rankings: {tau.statistic:.2f} (p = {tau.pvalue:.2f}, "
          f"{len(both)} strategies)")
    beat_real = sorted(s for s, t in real_poi.items() if t[1] > 0.5)
    beat_tab = sorted(s for s, t in tab_poi.items() if t[1] > 0.5)
    print(f"beat random (CI of P above 0.5): real {beat_real or 'none'}; table {beat_tab or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
