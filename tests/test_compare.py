"""Comparison reports: statistics on hand-made runs, files, re-reporting."""

from __future__ import annotations

import csv
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from searchlab.report.comparison import (best_so_far, bootstrap_ci, evals_to_reach,  # noqa: E402
                                         summarize, write_report)
from searchlab.runfiles import (RunRecord, best_results, load_runs, load_search,  # noqa: E402
                                write_search_files)
from searchlab.result import Result, dumps_result, loads_result  # noqa: E402


def res(i: int, reward: float, key: str | None = None, **kw) -> Result:
    k = key or f"r{i}"
    return Result(rule=k, key=k, reward=reward, extra={"sample": i}, **kw)


def run(label: str, seed: int, rewards, asked=None, seconds=None, keys=None) -> RunRecord:
    keys = keys or [None] * len(rewards)
    results = tuple(res(i, r, k) for i, (r, k) in enumerate(zip(rewards, keys)))
    summary = {"asked": asked or len(rewards), "seconds": seconds or float(len(rewards))}
    return RunRecord(label=label, seed=seed, results=results, summary=summary)


# --- statistics --------------------------------------------------------------------------
def test_best_so_far_and_evals_to_reach():
    r = run("a", 0, [0.1, 0.05, 0.4, 0.3, 0.9])
    assert best_so_far(r.rewards).tolist() == [0.1, 0.1, 0.4, 0.4, 0.9]
    assert evals_to_reach(r, 0.4) == 3 and evals_to_reach(r, 0.95) == math.inf
    nan_first = best_so_far(np.array([np.nan, 0.2]))
    assert nan_first[0] == -np.inf and nan_first[1] == 0.2


def test_repeated_keys_are_not_counted_twice():
    r = run("a", 0, [0.1, 0.5, 0.5, 0.7], keys=["x", "y", "y", "z"])
    assert r.unique == 3 and r.rewards.tolist() == [0.1, 0.5, 0.7]


def test_bootstrap_ci_agrees_with_the_normal_interval_for_many_seeds():
    rng = np.random.default_rng(123)
    x = rng.normal(0.7, 0.1, size=400)
    mean, low, high = bootstrap_ci(x, n_boot=4000, seed=1)
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x))     # textbook 95 % interval of the mean
    assert mean == pytest.approx(x.mean())
    assert low == pytest.approx(x.mean() - half, abs=0.15 * half)
    assert high == pytest.approx(x.mean() + half, abs=0.15 * half)


def test_bootstrap_ci_degenerate_cases():
    m, lo, hi = bootstrap_ci(np.array([0.3]))
    assert m == lo == hi == 0.3
    m, lo, hi = bootstrap_ci(np.array([0.5, 0.5, 0.5]))
    assert m == lo == hi == pytest.approx(0.5)
    curves = np.array([[0.0, 1.0], [2.0, 3.0]])
    m, lo, hi = bootstrap_ci(curves)
    assert m.tolist() == [1.0, 2.0] and (lo >= [0.0, 1.0]).all() and (hi <= [2.0, 3.0]).all()


def test_summary_rows_from_hand_computed_runs():
    runs = [run("A", 0, [0.1, 0.5, 0.9], asked=6, seconds=3.0),
            run("A", 1, [0.2, 0.3, 0.4], asked=3, seconds=6.0),
            run("B", 0, [0.6, 0.6, 0.6], asked=3, seconds=30.0)]
    rows, per_run, thr = summarize(runs, threshold=0.5)
    assert thr == 0.5
    a, b = rows
    assert (a["strategy"], a["runs"], b["runs"]) == ("A", 2, 1)
    assert a["best_reward_mean"] == pytest.approx((0.9 + 0.4) / 2)
    assert 0.4 <= a["best_reward_ci_low"] <= a["best_reward_mean"] <= a["best_reward_ci_high"] <= 0.9
    # A: seed 0 reaches 0.5 at evaluation 2, seed 1 never -> median of {2, inf} = inf
    assert a["median_evals_to_threshold"] == math.inf and a["reached"] == "1/2"
    assert b["median_evals_to_threshold"] == 1 and b["reached"] == "1/1"
    assert a["unique_ratio"] == pytest.approx((3 / 6 + 3 / 3) / 2)
    assert a["wall_s_per_sample"] == pytest.approx((3.0 / 3 + 6.0 / 3) / 2)
    assert b["wall_s_per_sample"] == pytest.approx(10.0)
    assert a["best_rule"] == "r2" and a["best_rule_reward"] == 0.9
    assert a["cache_hit_ratio"] == 0.0
    assert [p["seed"] for p in per_run] == [0, 1, 0]
    # default threshold: the median of the final best rewards (0.9, 0.4, 0.6)
    assert summarize(runs)[2] == pytest.approx(0.6)


def test_best_results_distinct_keys_then_earliest():
    rs = [res(0, 0.5, "a"), res(1, 0.9, "b"), res(2, 0.9, "c"), res(3, 0.9, "b")]
    assert [r.key for r in best_results(rs, 3)] == ["b", "c", "a"]



_REWARDS = st.one_of(st.sampled_from([0.0, 0.5, 0.9, math.nan, math.inf, -math.inf]),
                     st.floats(0, 1))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_REWARDS, st.sampled_from("abc"), st.one_of(st.none(), st.integers(0, 5))),
                max_size=12))
def test_the_best_result_is_the_first_of_the_ranking(rows):
    # best_results(.., 1) takes a shortcut (min instead of a sort): the same result as
    # the first of the full ranking, ties, non-finite rewards and missing samples included
    rs = [Result(rule=k, key=k, reward=r, extra={} if s is None else {"sample": s})
          for r, k, s in rows]
    fast, ranked = best_results(rs, 1), best_results(rs, len(rs) + 1)
    assert fast == ranked[:1] and (not fast or fast[0] is ranked[0])


_JSON_FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3))


@settings(max_examples=200, deadline=None)
@given(rule=st.sampled_from(["nan", "inf", "g", "-inf"]), reward=_JSON_FLOATS,
       sweep=st.lists(st.tuples(st.sampled_from([1e-3, 0.1, 1.0]), _JSON_FLOATS), max_size=3),
       curve=st.lists(_JSON_FLOATS, max_size=3),
       extra=st.dictionaries(st.sampled_from(["a", "b", "sample"]),
                             st.one_of(_JSON_FLOATS, st.text(max_size=4), st.booleans(), st.none(),
                                       st.lists(_JSON_FLOATS, max_size=2)), max_size=3))
def test_results_survive_their_json_codec(rule, reward, sweep, curve, extra):
    # through real JSON text: texts stay texts ("nan" is a rule here), numbers (non-finite
    # ones as "nan"/"inf" strings) come back as the same floats, nested ones included
    r = Result(rule=rule, key=rule, reward=float(reward), sweep=tuple(sweep), curve=tuple(curve),
               tokens=(rule, "id"), message="inf", extra=extra)
    back = loads_result(dumps_result(r))
    same = lambda a, b: a == b or (isinstance(a, float) and isinstance(b, float)  # noqa: E731
                                   and math.isnan(a) and math.isnan(b))
    assert back.rule == rule and back.key == rule and back.message == "inf"
    assert back.tokens == (rule, "id") and type(back.sweep) is tuple and type(back.curve) is tuple
    assert same(back.reward, float(reward))
    assert all(same(a, b) for a, b in zip(back.curve, curve)) and len(back.curve) == len(curve)
    assert [x[0] for x in back.sweep] == [x[0] for x in sweep]
    assert all(same(a[1], b[1]) for a, b in zip(back.sweep, sweep))
    assert back.extra.keys() == extra.keys()
    for k, v in extra.items():
        w = back.extra[k]
        if isinstance(v, list):
            assert len(w) == len(v) and all(same(a, b) for a, b in zip(w, v))
        elif isinstance(v, str):
            # a text that spells a non-finite number comes back as the number: the one
            # convention of the codec for values whose type the file does not record
            assert w == v or (v in ("nan", "inf", "-inf") and isinstance(w, float))
        else:
            assert same(w, v)


def test_a_records_reward_views_are_read_only():
    r = run("a", 0, [0.1, 0.5, 0.5, 0.7], keys=["x", "y", "y", "z"])
    assert r.rewards is r.rewards          # computed once
    with pytest.raises(ValueError):
        r.rewards[0] = 1.0
    r.unique_results().clear()             # a copy: the record keeps its results
    assert r.unique == 3


# --- files -------------------------------------------------------------------------------
def test_search_files_round_trip(tmp_path):
    rs = [res(0, 0.25, best_lr=0.1, seconds=1.0, tokens=("g", "m", "id", "id", "mul")),
          res(1, float("nan"), status="error", message="boom\nline 2"),
          res(2, 0.75, cached=True)]
    write_search_files(tmp_path, rs, {"asked": 4, "seconds": 2.5, "strategy": "random", "seed": 3})
    rec = load_search(tmp_path)
    assert rec.label == "random" and rec.seed == 3 and rec.asked == 4 and rec.wall_seconds == 2.5
    assert [r.rule for r in rec.results] == ["r0", "r1", "r2"]
    assert rec.results[0].tokens == ("g", "m", "id", "id", "mul") and rec.results[0].best_lr == 0.1
    assert math.isnan(rec.results[1].reward) and rec.results[2].cached
    assert summarize([rec])[0][0]["cache_hit_ratio"] == pytest.approx(1 / 3)
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and rows[1]["message"] == "boom" and rows[2]["cached"] == "True"
    assert "r2" in (tmp_path / "best_rules.md").read_text().splitlines()[2]


def test_report_files_one_row_per_strategy_and_rereport_is_identical(tmp_path):
    runs = [run(lab, s, list(np.random.default_rng(10 * s + k).random(12)))
            for k, lab in enumerate(["random", "gp", "evolution"]) for s in (0, 1)]
    for r in runs:
        write_search_files(tmp_path / "runs" / f"{r.label}-s{r.seed}", r.results,
                           {**r.summary, "label": r.label, "seed": r.seed})
    files = write_report(load_runs(tmp_path), tmp_path, title="t", reps=100)
    for name in ("best_so_far.png", "rewards.png", "iqm_best_so_far.png",
                 "probability_of_improvement.png", "performance_profile.png",
                 "fixed_target_ecdf.png"):
        data = files[name].read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with open(files["summary.csv"]) as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["strategy"] for r in rows) == ["evolution", "gp", "random"]
    md = files["summary.md"].read_text()
    head, _, stats = md.partition("## Statistics")
    table = [ln for ln in head.splitlines() if ln.startswith("| ") and "strategy" not in ln
             and "---" not in ln]
    assert len(table) == 2 * 3           # the summary table and the best-rule table
    # 2 seeds: the report says plainly that the intervals mean little
    assert "fewer than 5" in stats.lower() or "2 seeds" in stats
    with open(files["runs.csv"]) as f:
        assert len(list(csv.DictReader(f))) == 6
    before = files["summary.csv"].read_text()
    files["summary.csv"].unlink()
    write_report(load_runs(tmp_path), tmp_path, title="t", reps=100)
    assert (tmp_path / "summary.csv").read_text() == before


def test_empty_report_is_an_error(tmp_path):
    with pytest.raises(ValueError):
        write_report([], tmp_path)


@pytest.mark.parametrize("v2, v1, quota, cores", [
    ("150000 100000\n", None, 1.5, 2), ("max 100000\n", None, None, 4), ("50000 100000", None, 0.5, 1),
    (None, ("200000", "100000"), 2.0, 2), (None, ("-1", "100000"), None, 4),
    ("garbage", None, None, 4), (None, None, None, 4), ("800000 100000", None, 8.0, 4)])
def test_usable_cores_follow_the_cgroup_cpu_quota(monkeypatch, tmp_path, v2, v1, quota, cores):
    """A container's CPU quota (cgroup v2 ``cpu.max``, or v1's quota / period) caps the
    cores a table comparison counts as usable, rounded up, never above the affinity mask
    (4 CPUs here); no quota, ``max``, v1's -1 or an unreadable file leave the mask's 4."""
    import os

    from searchlab import app

    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2)
    if v1 is not None:
        (tmp_path / "q").write_text(v1[0])
        (tmp_path / "p").write_text(v1[1])
    monkeypatch.setattr(app, "CGROUP_CPU_FILES", ((str(tmp_path / "cpu.max"),),
                                                  (str(tmp_path / "q"), str(tmp_path / "p"))))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert app.cgroup_cpu_quota() == quota
    assert app.usable_cores() == cores


def test_table_comparisons_run_one_search_per_core_by_default(monkeypatch):
    """How many searches a comparison runs at once: on the table task one per core (at
    most MAX_DEFAULT_SEARCHES), on toy one, unless searches= or workers=N > 1 says
    otherwise; on a training task always one (its workers evaluate one search's rules)."""
    import os

    from searchlab import app
    from searchlab.config import load_config

    if hasattr(os, "sched_getaffinity") and app.cgroup_cpu_quota() is None:
        assert app.usable_cores() == len(os.sched_getaffinity(0))
    assert app.usable_cores() >= 1
    for cores, want in ((1, 1), (2, 2), (64, app.MAX_DEFAULT_SEARCHES)):
        monkeypatch.setattr(app, "usable_cores", lambda c=cores: c)
        for task, default in (["task=table"], want), (["task=toy", "space=small"], 1):
            assert app.parallel_searches(load_config(task)) == default
            assert app.parallel_searches(load_config(task + ["searches=1"])) == 1
            assert app.parallel_searches(load_config(task + ["workers=3"])) == 3
            assert app.parallel_searches(load_config(task + ["workers=3", "searches=2"])) == 2
        assert app.parallel_searches(load_config(["task=mnist1d", "workers=2"])) == 1
