"""Comparison statistics (searchlab.report): checked against direct computations by hand.

Every expected number below is worked out in the comment beside it from the hand-made
input, not taken from the code under test.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from searchlab.report import statistics as st

REPS = 100          # small: these tests check definitions, not coverage


# --------------------------------------------------------------------------- padding
def test_pad_curves_ragged_runs():
    runs = [
        [0.3, 0.1, 0.5],            # raw rewards: running max 0.3 0.3 0.5, then carried
        [],                         # empty run: no value at all
        [math.nan, 0.2],            # first evaluation failed: NaN until the first value
        [1, 2, 3, 4, 5, 6],         # longer than the budget: cut
    ]
    got = st.pad_curves(runs, 4)
    want = np.array([
        [0.3, 0.3, 0.5, 0.5],
        [np.nan] * 4,
        [np.nan, 0.2, 0.2, 0.2],
        [1, 2, 3, 4],
    ])
    assert got.shape == (4, 4)
    np.testing.assert_array_equal(got, want)        # NaN compare equal here


def test_pad_curves_rejects_bad_budget():
    with pytest.raises(ValueError):
        st.pad_curves([[1.0]], 0)


def test_final_scores_is_last_column():
    c = {"a": np.array([[0.1, 0.4], [0.2, 0.3]])}
    np.testing.assert_array_equal(st.final_scores(c)["a"], [0.4, 0.3])


# --------------------------------------------------------------------------- IQM
def test_iqm_matches_hand_computation():
    # 8 seeds at budget 1: sorted 0.1 0.2 0.3 0.4 0.5 0.7 0.8 0.9; trim_mean cuts
    # int(0.25 * 8) = 2 from each end -> mean(0.3, 0.4, 0.5, 0.7) = 0.475.
    # Budget 2: 5 seeds values 5 1 4 2 3 (+ three 100s to make 8): sorted
    # 1 2 3 4 5 100 100 100 -> cut 2 each end -> mean(3, 4, 5, 100) = 28.
    col1 = [0.1, 0.9, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4]
    col2 = [5, 1, 4, 2, 3, 100, 100, 100]
    curves = {"a": np.array([col1, col2]).T}
    est = st.iqm_at_budgets(curves, [1, 2], reps=REPS, seed=0)
    np.testing.assert_allclose(est.point["a"], [0.475, 28.0])
    np.testing.assert_array_equal(est.x, [1, 2])
    assert est.n_seeds == {"a": 8}


def test_iqm_of_five_and_six_seeds_by_hand():
    # 5 seeds: int(1.25) = 1 cut each end -> mean(2, 3, 4) = 3;
    # 6 seeds: int(1.5) = 1 cut each end -> mean(2, 3, 4, 5) = 3.5.
    c5 = {"a": np.array([[5.0], [1.0], [4.0], [2.0], [3.0]])}
    c6 = {"a": np.array([[6.0], [1.0], [5.0], [2.0], [4.0], [3.0]])}
    assert st.iqm_at_budgets(c5, [1], reps=REPS, seed=0).point["a"][0] == pytest.approx(3.0)
    assert st.iqm_at_budgets(c6, [1], reps=REPS, seed=0).point["a"][0] == pytest.approx(3.5)


def test_columnwise_iqm_is_rliables_aggregate_iqm():
    from rliable import metrics

    rng = np.random.default_rng(3)
    for seeds in (3, 4, 7, 10):
        scores = rng.random((seeds, 1, 6))
        want = [metrics.aggregate_iqm(scores[..., j]) for j in range(6)]
        np.testing.assert_allclose(st._iqm_by_column(scores), want)


def test_iqm_ci_contains_point_and_narrows_with_more_seeds():
    # the same spread of values, once with 5 seeds and once repeated 12 times (60 seeds)
    values = np.array([0.3, 0.4, 0.5, 0.6, 0.7])
    few = {"a": values[:, None]}
    many = {"a": np.tile(values, 12)[:, None]}
    e_few = st.iqm_at_budgets(few, [1], reps=REPS, seed=1)
    e_many = st.iqm_at_budgets(many, [1], reps=REPS, seed=1)
    for e in (e_few, e_many):
        assert e.lower["a"][0] <= e.point["a"][0] <= e.upper["a"][0]
    width = lambda e: e.upper["a"][0] - e.lower["a"][0]  # noqa: E731
    assert width(e_many) < 0.6 * width(e_few)         # ~1/sqrt(12) in theory


def test_iqm_is_nan_where_a_seed_has_no_value_yet():
    # seed 1 had no finite reward after its first evaluation
    curves = {"a": np.array([[0.2, 0.4], [np.nan, 0.6], [0.3, 0.5]])}
    est = st.iqm_at_budgets(curves, [1, 2], reps=REPS, seed=0)
    assert math.isnan(est.point["a"][0]) and math.isnan(est.lower["a"][0])
    # 3 seeds: int(0.75) = 0 cut -> plain mean of 0.4 0.6 0.5 = 0.5
    assert est.point["a"][1] == pytest.approx(0.5)


def test_iqm_curve_subsamples_and_keeps_the_ends():
    rng = np.random.default_rng(1)
    arr = np.maximum.accumulate(rng.random((4, 300)), axis=1)
    est = st.iqm_curve({"a": arr}, reps=10, seed=0, max_points=25)
    assert 2 <= len(est.x) <= 25
    assert est.x[0] == 1 and est.x[-1] == 300
    # 4 seeds: int(1.0) = 1 cut each end -> mean of the middle two sorted values
    for i, b in enumerate(est.x):
        col = np.sort(arr[:, b - 1])
        assert est.point["a"][i] == pytest.approx(col[1:3].mean())


def test_bootstrap_reproducible_isolated_and_leaves_global_rng_alone():
    rng = np.random.default_rng(2)
    curves = {"a": rng.random((6, 3)), "b": rng.random((6, 3))}
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    e1 = st.iqm_at_budgets(curves, [1, 2, 3], reps=REPS, seed=7)
    after = np.random.random()
    assert after == before                       # global numpy state restored
    e2 = st.iqm_at_budgets(curves, [1, 2, 3], reps=REPS, seed=7)
    e3 = st.iqm_at_budgets(curves, [1, 2, 3], reps=REPS, seed=8)
    alone = st.iqm_at_budgets({"a": curves["a"]}, [1, 2, 3], reps=REPS, seed=7)
    for s in curves:
        np.testing.assert_array_equal(e1.lower[s], e2.lower[s])
        np.testing.assert_array_equal(e1.upper[s], e2.upper[s])
    assert not np.array_equal(e1.lower["a"], e3.lower["a"])
    # a strategy's interval does not depend on which others are compared with it
    np.testing.assert_array_equal(e1.lower["a"], alone.lower["a"])


def test_bootstrap_arguments_are_checked():
    c = {"a": np.ones((3, 2))}
    with pytest.raises(ValueError):
        st.iqm_at_budgets(c, [1], reps=0, seed=0)
    with pytest.raises(ValueError):
        st.iqm_at_budgets(c, [3], reps=10, seed=0)        # budget beyond the curves
    with pytest.raises(ValueError):
        st.probability_of_improvement({"a": [0.1, math.nan]}, reps=10, seed=0)


# --------------------------------------------------------------------------- P(X > Y)
def test_pairwise_probability_is_rliables():
    """The direct U count equals rliable's mannwhitneyu-based metric, ties included, and
    the bootstrapped matrix equals the one rliable's own metric gives."""
    from rliable import library, metrics

    rng = np.random.default_rng(3)
    for n, m in [(3, 3), (5, 7), (30, 30)]:
        for t in (1, 2):
            x = np.round(rng.random((n, t)), 1)      # rounding makes ties
            y = np.round(rng.random((m, t)), 1)
            assert st._probability_of_improvement(x, y) == pytest.approx(
                metrics.probability_of_improvement(x, y), abs=1e-12)
            assert st._probability_of_improvement(x, x.copy()) == 0.5
    x, y = np.round(rng.random((10, 1)), 1), np.round(rng.random((10, 1)), 1)
    for fn in (st._probability_of_improvement, metrics.probability_of_improvement):
        with st._seeded_global_numpy(5):
            pe, ie = library.get_interval_estimates({"k": [x, y]}, fn, reps=200)
        if fn is metrics.probability_of_improvement:
            np.testing.assert_allclose(np.ravel(pe["k"]), np.ravel(mine[0]), atol=1e-12)
            np.testing.assert_allclose(np.ravel(ie["k"]), np.ravel(mine[1]), atol=1e-12)
        mine = (pe["k"], ie["k"])


def test_probability_of_improvement_counts_pairs_by_hand():
    # x = 1 2 3, y = 2 2 0: x=1 beats only 0 -> 1; x=2 ties twice (1/2 each), beats 0 -> 2;
    # x=3 beats all three -> 3.  P(x > y) = 6/9, P(y > x) = 3/9.
    # z = 0.5 2.5 (2 seeds): x=1 -> 1, x=2 -> 1, x=3 -> 2: P(x > z) = 4/6.
    finals = {"x": np.array([1.0, 2.0, 3.0]), "y": np.array([2.0, 2.0, 0.0]),
              "z": np.array([0.5, 2.5])}
    poi = st.probability_of_improvement(finals, reps=REPS, seed=0)
    assert poi.names == ("x", "y", "z")
    assert poi.get("x", "y").point == pytest.approx(6 / 9)
    assert poi.get("y", "x").point == pytest.approx(3 / 9)
    assert poi.get("x", "z").point == pytest.approx(4 / 6)
    assert poi.get("z", "x").point == pytest.approx(2 / 6)
    assert all(math.isnan(poi.point[i, i]) for i in range(3))
    for a in finals:
        for b in finals:
            if a != b:
                e = poi.get(a, b)
                assert e.lower <= e.point <= e.upper
                assert poi.get(b, a).lower == pytest.approx(1 - e.upper)
    assert poi.n_seeds == {"x": 3, "y": 3, "z": 2}


def test_strategies_beating_a_reference():
    base = np.arange(10, dtype=float)
    finals = {"random": base, "good": base + 100.0, "same": base.copy()}
    poi = st.probability_of_improvement(finals, reps=REPS, seed=0)
    # good beats every random run: 100 pairs of 100 -> 1; "same" ties random: 1/2
    assert poi.get("good", "random").point == pytest.approx(1.0)
    assert poi.get("same", "random").point == pytest.approx(0.5)
    assert st.strategies_beating(poi, "random") == ("good",)
    assert st.strategies_beating(poi, "good") == ()
    with pytest.raises(KeyError):
        st.strategies_beating(poi, "adam")


# --------------------------------------------------------------------------- profiles
def test_performance_profile_by_hand():
    # runs 0.1 0.4 0.4 0.9; fraction strictly above tau:
    # tau 0 -> 4/4, 0.1 -> 3/4, 0.4 -> 1/4, 0.5 -> 1/4, 1.0 -> 0
    finals = {"a": np.array([0.1, 0.4, 0.4, 0.9])}
    prof = st.performance_profile(finals, [0.0, 0.1, 0.4, 0.5, 1.0], reps=REPS, seed=0)
    np.testing.assert_allclose(prof.point["a"], [1.0, 0.75, 0.25, 0.25, 0.0])
    assert (prof.lower["a"] <= prof.point["a"] + 1e-12).all()
    assert (prof.point["a"] <= prof.upper["a"] + 1e-12).all()
    again = st.performance_profile(finals, [0.0, 0.1, 0.4, 0.5, 1.0], reps=REPS, seed=0)
    np.testing.assert_array_equal(prof.lower["a"], again.lower["a"])


def test_score_distribution_is_rliables():
    """The one-comparison score distribution equals rliable's ``np.vectorize`` one bit for
    bit (ties at the thresholds included), and so do the bootstrapped profile bands."""
    from rliable import library

    rng = np.random.default_rng(4)
    for n, t in [(4, 1), (30, 1), (7, 3)]:
        scores = np.round(rng.random((n, t)), 1)          # rounding puts runs on the taus
        taus = np.linspace(0.0, 1.0, 11)
        np.testing.assert_array_equal(st._score_distribution(scores, taus),
                                      library.score_distributions(scores, taus))
    scores = np.round(rng.random((30, 1)), 2)
    taus = np.linspace(0.2, 0.9, 42)
    bands = []
    for custom in (None, st._score_distribution):
        with st._seeded_global_numpy(6):
            bands.append(library.create_performance_profile(
                {"a": scores}, taus, custom_profile_func=custom, reps=200))
    np.testing.assert_array_equal(bands[0][0]["a"], bands[1][0]["a"])
    np.testing.assert_array_equal(bands[0][1]["a"], bands[1][1]["a"])


# --------------------------------------------------------------------------- fixed target
CURVES_FT = np.array([
    [0.1, 0.5, 0.5, 0.8, 0.9],      # reaches 0.5 at eval 2, 0.9 at eval 5
    [0.2, 0.2, 0.3, 0.3, 0.3],      # never reaches 0.5
    [0.6, 0.7, 0.7, 0.7, 0.95],     # reaches 0.5 at eval 1, 0.9 at eval 5
])


def test_evaluations_to_target_by_hand():
    np.testing.assert_array_equal(st.evaluations_to_target(CURVES_FT, 0.5), [2, math.inf, 1])
    np.testing.assert_array_equal(st.evaluations_to_target(CURVES_FT, 0.9), [5, math.inf, 5])
    nan_run = np.array([[np.nan, np.nan]])
    np.testing.assert_array_equal(st.evaluations_to_target(nan_run, 0.0), [math.inf])


def test_fixed_target_success_rate_art_and_ecdf_by_hand():
    ft = st.fixed_target({"a": CURVES_FT}, {"sgd": 0.5, "adam": 0.9, "never": 0.99},
                         grid=[1, 2, 4, 5])
    sgd, adam, never = (ft.results["a"][t] for t in ("sgd", "adam", "never"))
    # 0.5: successes 2 of 3; aRT = (2 + 5 (whole budget of the failed run) + 1) / 2 = 4
    assert sgd.successes == 2 and sgd.runs == 3
    assert sgd.success_rate == pytest.approx(2 / 3)
    assert sgd.art == pytest.approx(4.0)
    # 0.9: aRT = (5 + 5 + 5) / 2 = 7.5
    assert adam.art == pytest.approx(7.5)
    assert never.success_rate == 0.0 and never.art == math.inf
    # ECDF over the 9 (run, target) pairs, evaluations 2 inf 1 | 5 inf 5 | inf inf inf:
    # within 1 -> 1/9, within 2 -> 2/9, within 4 -> 2/9, within 5 -> 4/9
    np.testing.assert_allclose(ft.ecdf["a"], [1 / 9, 2 / 9, 2 / 9, 4 / 9])
    np.testing.assert_array_equal(ft.grid, [1, 2, 4, 5])


def test_fixed_target_art_uses_actual_run_lengths():
    # the failed run stopped after 3 evaluations (padded to 5): aRT(0.5) = (2 + 3 + 1) / 2 = 3
    ft = st.fixed_target({"a": CURVES_FT}, {"sgd": 0.5}, lengths={"a": [5, 3, 5]})
    assert ft.results["a"]["sgd"].art == pytest.approx(3.0)
    assert st.average_running_time([2, math.inf, 1], [5, 3, 5]) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        st.fixed_target({"a": CURVES_FT}, {"sgd": 0.5}, lengths={"a": [5, 9, 5]})


def test_fixed_target_default_grid_and_rows():
    ft = st.fixed_target({"a": CURVES_FT}, {"sgd": 0.5})
    np.testing.assert_array_equal(ft.grid, [1, 2, 3, 4, 5])
    # pairs (runs) 2 inf 1 -> within 1: 1/3, 2..5: 2/3
    np.testing.assert_allclose(ft.ecdf["a"], [1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3])
    (row,) = ft.rows()
    assert row["strategy"] == "a" and row["target"] == "sgd" and row["aRT"] == pytest.approx(4)


# --------------------------------------------------------------------------- compute axis
def test_curves_vs_compute_by_hand():
    curves = {"a": np.array([[0.2, 0.5, 0.7],
                             [0.4, 0.4, 0.9],
                             [np.nan, np.nan, np.nan]])}      # an empty (padded) run
    compute = {"a": np.array([[1.0, 3.0, 6.0],
                              [2.0, 2.0, 4.0],                # a free (cached) evaluation
                              [np.nan, np.nan, np.nan]])}
    grid = [0.0, 0.5, 1.0, 2.9, 3.0, 5.99, 6.0, 100.0]
    cc = st.curves_vs_compute(curves, compute, grid)
    nan = np.nan
    want = np.array([
        # nothing done before 1 s; 0.2 from 1 s; 0.5 from 3 s; 0.7 from 6 s on
        [nan, nan, 0.2, 0.2, 0.5, 0.5, 0.7, 0.7],
        # first two evaluations both done at 2 s (best 0.4), third at 4 s (0.9)
        [nan, nan, nan, 0.4, 0.4, 0.9, 0.9, 0.9],
        [nan] * 8,
    ])
    np.testing.assert_array_equal(cc.curves["a"], want)
    np.testing.assert_array_equal(cc.grid, grid)


def test_curves_vs_compute_rejects_non_cumulative_compute():
    with pytest.raises(ValueError):
        st.curves_vs_compute({"a": np.array([[0.1, 0.2]])}, {"a": np.array([[2.0, 1.0]])}, [1.0])


def test_compute_grid_and_iqm_against_compute():
    compute = {"a": np.array([[1.0, 2.0], [3.0, 8.0]]), "b": np.array([[0.5, 4.0], [1.0, 2.0]])}
    grid = st.common_compute_grid(compute, points=5)
    np.testing.assert_allclose(grid, [0.0, 2.0, 4.0, 6.0, 8.0])     # 0 .. the most spent (8 s)
    curves = {"a": np.array([[0.1, 0.3], [0.2, 0.6]]), "b": np.array([[0.4, 0.5], [0.2, 0.7]])}
    cc = st.curves_vs_compute(curves, compute, grid)
    est = st.iqm_curve_vs_compute(cc, reps=10, seed=0)
    assert est.x_label == "CPU-seconds"
    # "a" at 4 s: seed 0 done both (0.3), seed 1 done the first (0.2): 2 seeds, no cut -> 0.25
    assert est.point["a"][2] == pytest.approx(0.25)
    # "b" at 2 s: seed 0 done its first (0.4), seed 1 both (0.7) -> 0.55
    assert est.point["b"][1] == pytest.approx(0.55)
    # at 0 s nothing is done: NaN, not a number made up from no run
    assert math.isnan(est.point["a"][0]) and math.isnan(est.point["b"][0])


# --------------------------------------------------------------------------- warning
def test_few_seeds_warning():
    w = st.few_seeds_warning(2)
    assert isinstance(w, str) and "2 seeds" in w and "not meaningful" in w
    assert st.few_seeds_warning(1) is not None
    assert st.few_seeds_warning(4) is not None
    assert st.few_seeds_warning(5) is None
    assert st.few_seeds_warning(10) is None


# --------------------------------------------------------------------------- package
def test_package_import_is_light():
    code = ("import sys, searchlab.report; "
            "print('matplotlib' in sys.modules, 'rliable' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]


def test_figures_write_png_files(tmp_path):
    from searchlab.report import figures

    rng = np.random.default_rng(0)
    curves = {n: np.maximum.accumulate(rng.random((3, 20)), axis=1) for n in ("random", "gp")}
    compute = {n: np.cumsum(rng.random((3, 20)), axis=1) for n in curves}
    finals = st.final_scores(curves)
    targets = {"sgd": 0.8, "adam": 0.9}
    cc = st.curves_vs_compute(curves, compute, st.common_compute_grid(compute, 10))
    paths = [
        figures.plot_iqm_curves(st.iqm_curve(curves, reps=10, seed=0),
                                tmp_path / "iqm.png", targets=targets),
        figures.plot_iqm_curves(st.iqm_curve_vs_compute(cc, reps=10, seed=0),
                                tmp_path / "sub" / "iqm_compute.png"),
        figures.plot_probability_of_improvement(
            st.probability_of_improvement(finals, reps=10, seed=0), tmp_path / "poi.png"),
        figures.plot_performance_profile(
            st.performance_profile(finals, np.linspace(0.5, 1.0, 11), reps=10, seed=0),
            tmp_path / "profile.png"),
        figures.plot_fixed_target_ecdf(st.fixed_target(curves, targets), tmp_path / "ecdf.png"),
    ]
    for p in paths:
        data = p.read_bytes()
        assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n", p
