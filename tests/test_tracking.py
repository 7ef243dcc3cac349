"""The MLflow tracker: what a search leaves in MLflow, read back through MLflow's client.

Expected values come from the runner's own SearchResult (the same samples, not read from
MLflow) and from running maxima computed here; one local sqlite store is shared by the
module (creating MLflow's tables costs seconds).
"""

from __future__ import annotations

import math
import os
import socket
import time
import warnings

import pytest
import torch

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow import MlflowClient  # noqa: E402

from searchlab import kernels  # noqa: E402
from searchlab import mlflow_tracker as mt  # noqa: E402
from searchlab.mlflow_tracker import (MlflowTracker, TrackingError, check_tracking_uri,  # noqa: E402
                                      local_store_uri, resolve_tracking_uri)
from searchlab.result import Result  # noqa: E402
from searchlab.runner import run_search  # noqa: E402
from searchlab.testing.toy import ToyEvaluator  # noqa: E402
from searchlab.tracking import TRACKERS  # noqa: E402

SAMPLE_PARAMS = {"rule", "tokens", "key", "status", "cached"}
SAMPLE_METRICS = {"reward", "seconds", "sample"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("mlflow-store")
    return run_dir, local_store_uri(run_dir)


def children(client, exp_id, parent_id):
    runs = client.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
                              max_results=5000)
    return sorted(runs, key=lambda r: int(r.data.metrics["sample"]))


def parent_of(client, exp_id):
    runs = client.search_runs([exp_id], filter_string="tags.`searchlab.role` = 'search'")
    assert len(runs) == 1
    return runs[0]


def test_registered():
    assert TRACKERS.get("mlflow") is MlflowTracker


@pytest.mark.parametrize("background,bulk", [(True, True), (False, False)])
def test_search_logs_parent_and_one_child_per_sample(store, background, bulk):
    run_dir, uri = store
    exp_name = f"search-bg{int(background)}-bulk{int(bulk)}"
    tracker = MlflowTracker(uri=uri, experiment=exp_name, run_name="random-toy-s1",
                            run_dir=run_dir, background=background, top_k=3, bulk=bulk)
    budget = 14
    res = run_search("random", ToyEvaluator(fail_rate=0.2), budget, batch_size=4, seed=1,
                     tracker=tracker, space="small",
                     params={"task.name": "toy", "budget": budget}, tags={"task": "toy"})
    assert tracker.error is None
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(exp_name)
    parent = parent_of(client, exp.experiment_id)
    tags, params = parent.data.tags, parent.data.params
    assert parent.info.status == "FINISHED" and parent.info.run_name == "random-toy-s1"
    assert tags["strategy"] == "random" and tags["seed"] == "1" and tags["task"] == "toy"
    assert tags["searchlab.version"]
    assert tags["searchlab.cpu_kernels"] == torch.backends.cpu.get_cpu_capability()
    assert tags["searchlab.cpu_vendor"] == kernels.cpu_vendor()
    if mt.git_commit():
        assert tags["searchlab.git_commit"] == mt.git_commit()
    assert params["task.name"] == "toy" and params["budget"] == str(budget)

    # every sample, exactly once, with all fields, equal to what the runner returned
    kids = children(client, exp.experiment_id, parent.info.run_id)
    assert len(kids) == budget == len(res.results)
    for i, (kid, r) in enumerate(zip(kids, res.results)):
        p, m = kid.data.params, kid.data.metrics
        assert SAMPLE_PARAMS <= set(p) and SAMPLE_METRICS <= set(m)
        assert kid.info.status == "FINISHED"
        assert int(m["sample"]) == i == r.extra["sample"]
        assert p["rule"] == r.rule and p["key"] == r.key and p["status"] == r.status
        assert p["tokens"] == " ".join(r.tokens) and p["tokens"]
        assert p["cached"] == str(r.cached).lower()
        assert math.isclose(m["reward"], r.reward, rel_tol=1e-12, abs_tol=1e-12)
        assert math.isclose(m["seconds"], r.seconds, rel_tol=1e-9, abs_tol=1e-9)
        if r.best_lr is not None:
            assert math.isclose(m["best_lr"], r.best_lr, rel_tol=1e-12)
        assert kid.info.run_name.startswith(f"{i:04d} ")
    assert {k.data.params["status"] for k in kids} >= {"ok"}

    # parent metrics by sample index; best_reward is the running maximum
    hist = sorted(client.get_metric_history(parent.info.run_id, "search/reward"), key=lambda x: x.step)
    assert [h.step for h in hist] == list(range(budget))
    assert [h.value for h in hist] == pytest.approx([r.reward for r in res.results])
    best = sorted(client.get_metric_history(parent.info.run_id, "search/best_reward"),
                  key=lambda x: x.step)
    running, expect = -math.inf, []
    for r in res.results:
        running = max(running, r.reward)
        expect.append(running)
    assert [h.value for h in best] == pytest.approx(expect)
    assert parent.data.metrics["search/unique"] == budget

    # artifacts: results table and best rules
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.csv", "results.json", "best_rules.md", "best_rules.json"} <= names
    local = client.download_artifacts(parent.info.run_id, "results.csv", str(run_dir / exp_name))
    lines = open(local).read().strip().splitlines()
    assert len(lines) == budget + 1
    md = open(client.download_artifacts(parent.info.run_id, "best_rules.md",
                                        str(run_dir / exp_name))).read()
    assert res.best[0].rule in md
    assert tracker.seconds_writer > 0
    assert (tracker._bulk is not None) == bulk          # the path under test was taken


@pytest.mark.parametrize("bulk", [True, False])
def test_unusual_samples_both_write_paths(store, bulk):
    """The bulk SQL path writes exactly what the client API writes (both read back here)."""
    run_dir, uri = store
    tracker = MlflowTracker(uri=uri, experiment=f"paths-{int(bulk)}", run_dir=run_dir,
                            background=False, bulk=bulk)
    tracker.start({"budget": 3}, {"strategy": "hand"})
    tracker.log([Result(rule="g", key="g", reward=0.5, best_lr=0.1, seconds=1.5, cached=True,
                        tokens=("g", "g", "id", "id", "left"), task="toy", fidelity="probe",
                        fingerprint="abc"),
                 Result(rule="m", key="m", reward=float("nan"), status="error", message="boom"),
                 Result(rule="v", key="v", reward=float("inf"), val_acc=0.25)], 0)
    tracker.finish({})
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(f"paths-{int(bulk)}")
    kids = children(client, exp.experiment_id, parent_of(client, exp.experiment_id).info.run_id)
    got = [(k.info.run_name, k.info.status, k.info.end_time - k.info.start_time,
            k.info.lifecycle_stage, k.info.artifact_uri.endswith(f"{k.info.run_id}/artifacts"),
            k.data.params, {m: (v if v == v else "nan") for m, v in k.data.metrics.items()},
            {t: v for t, v in k.data.tags.items() if t != "mlflow.parentRunId"}) for k in kids]
    assert got == [
        ("0000 0.5000 ok g", "FINISHED", 1500, "active", True,
         {"rule": "g", "tokens": "g g id id left", "key": "g", "status": "ok", "cached": "true",
          "seed": "0", "task": "toy", "fidelity": "probe", "fingerprint": "abc"},
         {"sample": 0.0, "reward": 0.5, "seconds": 1.5, "best_lr": 0.1},
         {"mlflow.runName": "0000 0.5000 ok g", "searchlab.role": "sample", "sample": "0", "status": "ok",
          "cached": "true"}),
        ("0001 nan error m", "FINISHED", 0, "active", True,
         {"rule": "m", "tokens": "", "key": "m", "status": "error", "cached": "false",
          "seed": "0", "task": "", "fidelity": ""},
         {"sample": 1.0, "reward": "nan", "seconds": 0.0},
         {"mlflow.runName": "0001 nan error m", "searchlab.role": "sample", "sample": "1",
          "status": "error", "cached": "false", "message": "boom"}),
        ("0002 inf ok v", "FINISHED", 0, "active", True,
         {"rule": "v", "tokens": "", "key": "v", "status": "ok", "cached": "false",
          "seed": "0", "task": "", "fidelity": ""},
         {"sample": 2.0, "reward": "nan", "seconds": 0.0, "val_acc": 0.25},
         {"mlflow.runName": "0002 inf ok v", "searchlab.role": "sample", "sample": "2", "status": "ok",
          "cached": "false"}),
    ]
    starts = [k.info.start_time for k in kids]     # the UI's start-time order = sample order
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    for k in kids:  # metric histories and search filters work on these runs
        assert len(client.get_metric_history(k.info.run_id, "reward")) == 1
    assert len(client.search_runs([exp.experiment_id], "metrics.reward > 0.4")) == 1


def _parent_metrics(client, run_id):
    """(latest value per key, history per key) of a parent run's ``search/`` metrics
    (the ``time/`` ones differ between any two runs), NaN as a string."""
    def v(x):
        return "nan" if x != x else x

    run = client.get_run(run_id)
    hist = {}
    keys = [k for k in run.data.metrics if k.startswith("search/")]
    for key in keys:
        ms = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        hist[key] = [(m.step, v(m.value)) for m in ms]
    return {k: v(run.data.metrics[k]) for k in keys}, hist


def test_parent_metrics_both_write_paths(store):
    """The bulk SQL path writes the parent's metric history and latest values exactly as
    MLflow's ``log_batch`` does: over two transactions (the second updates the stored
    latest rows), with NaN, infinite and falling rewards; expected values are the running
    maximum and sums computed here (a non-finite reward is logged as NaN)."""
    run_dir, uri = store
    rewards = [0.5, float("nan"), 0.25, float("inf"), 0.75, float("-inf"), 0.1]
    results = [Result(rule=f"g*{i}", key=f"k{i}", reward=x, seconds=0.1,
                      extra={"asked": 2 * i + 1, "cpu_seconds": 0.5 * (i + 1)})
               for i, x in enumerate(rewards)]
    got = {}
    for bulk in (True, False):
        tracker = MlflowTracker(uri=uri, experiment=f"metric-paths-{int(bulk)}",
                                run_dir=run_dir, child_runs=False, background=False, bulk=bulk)
        tracker.start({"budget": 7}, {"task": "toy"})
        tracker.log(results[:3], 0)     # written at once (the first batch)
        tracker.log(results[3:], 3)     # held (within FLUSH_SECONDS), written by finish
        tracker.finish({"unique": 7})
        assert tracker.error is None
        assert (tracker._bulk is not None) == bulk      # the path under test was taken
        client = MlflowClient(uri)
        got[bulk] = _parent_metrics(client, tracker.run_id)
    assert got[True] == got[False]
    latest, hist = got[True]
    assert hist["search/reward"] == [(0, 0.5), (1, "nan"), (2, 0.25), (3, "nan"), (4, 0.75),
                                     (5, "nan"), (6, 0.1)]
    assert hist["search/best_reward"] == [(0, 0.5), (1, 0.5), (2, 0.5), (3, 0.5), (4, 0.75),
                                          (5, 0.75), (6, 0.75)]
    assert hist["search/asked"] == [(i, 2.0 * i + 1) for i in range(7)]
    assert hist["search/cpu_seconds"] == [(i, sum(0.5 * (j + 1) for j in range(i + 1)))
                                          for i in range(7)]
    for key in ("search/reward", "search/best_reward", "search/asked", "search/cpu_seconds"):
        assert latest[key] == hist[key][-1][1]          # the latest row is the last step's


def test_latest_metric_rules_both_write_paths(store):
    """Metric rows written straight through each path, MLflow's own ``log_batch`` being the
    reference: a later transaction with an older step keeps the stored latest row, a tie
    on the step goes to the later timestamp and then to the larger value, and +-inf and
    NaN are stored as MLflow stores them."""
    from mlflow.entities import Metric

    run_dir, uri = store
    inf = float("inf")
    batches = [
        [Metric("a", 0.1, 1000, 0), Metric("a", 0.2, 1000, 5), Metric("b", 1.0, 1000, 3),
         Metric("c", 0.5, 1000, 3), Metric("d", inf, 1000, 1), Metric("e", -inf, 1000, 1)],
        [Metric("a", 0.9, 2000, 2),                      # older step: latest stays step 5
         Metric("b", 0.25, 1500, 3),                     # same step, later time: wins
         Metric("c", 0.75, 1000, 3), Metric("c", 0.6, 1000, 3),   # same step and time
         Metric("d", float("nan"), 500, 1), Metric("e", 2.0, 900, 1)],
    ]
    got = {}
    for bulk in (True, False):
        tracker = MlflowTracker(uri=uri, experiment=f"latest-{int(bulk)}", run_dir=run_dir,
                                child_runs=False, background=False, bulk=bulk)
        tracker.start({}, {})
        for b in batches:
            tracker._write_metrics(tracker.run_id, b)
        assert (tracker._bulk is not None) == bulk
        client = MlflowClient(uri)
        run = client.get_run(tracker.run_id)
        hist = {k: sorted((m.step, m.timestamp, m.value if m.value == m.value else "nan")
                          for m in client.get_metric_history(tracker.run_id, k))
                for k in "abcde"}
        got[bulk] = ({k: run.data.metrics[k] for k in "abcde"}, hist)
        tracker.finish({})
    assert got[True] == got[False]
    latest, hist = got[True]
    big = 1.7976931348623157e308
    assert latest == {"a": 0.2, "b": 0.25, "c": 0.75, "d": big, "e": -big}
    assert len(hist["c"]) == 3 and len(hist["a"]) == 3


def test_fields_of_unusual_samples(store):
    """Direct start/log/finish: a cache hit, a failure with no lr, a NaN reward."""
    run_dir, uri = store
    tracker = MlflowTracker(uri=uri, experiment="unusual", run_dir=run_dir, background=False)
    tracker.start({"budget": 3, "nested": {"a": [1, 2]}}, {"strategy": "hand", "seed": "0"})
    rs = [Result(rule="g", key="g", reward=0.5, best_lr=0.1, seconds=1.5, cached=True,
                 tokens=("g", "g", "id", "id", "left")),
          Result(rule="exp(exp(g))", key="exp(exp(g))", reward=0.0, status="diverged",
                 message="loss became nan at step 3"),
          Result(rule="m", key="m", reward=float("nan"), status="error", message="boom\ntrace")]
    tracker.log(rs[:1], 0)
    tracker.log(rs[1:], 1)
    tracker.finish({"best_reward": 0.5, "seconds": 2.0, "stopped": "budget", "seed": 0})
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("unusual")
    parent = parent_of(client, exp.experiment_id)
    kids = children(client, exp.experiment_id, parent.info.run_id)
    assert [k.data.params["status"] for k in kids] == ["ok", "diverged", "error"]
    assert kids[0].data.params["cached"] == "true" and kids[1].data.params["cached"] == "false"
    assert kids[0].data.metrics["best_lr"] == 0.1 and "best_lr" not in kids[1].data.metrics
    assert math.isnan(kids[2].data.metrics["reward"])
    assert kids[1].data.tags["message"] == "loss became nan at step 3"
    assert parent.data.params["nested"] == '{"a":[1,2]}'
    assert parent.data.metrics["time/search_s"] == 2.0 and "search/seed" not in parent.data.metrics
    assert 0 < parent.data.metrics["time/tracking_main_s"] < 60
    assert parent.data.tags["summary.stopped"] == "budget"
    best = client.get_metric_history(parent.info.run_id, "search/best_reward")
    assert [b.value for b in sorted(best, key=lambda x: x.step)] == [0.5, 0.5, 0.5]


def test_without_child_runs_only_parent_metrics(store):
    run_dir, uri = store
    tracker = MlflowTracker(uri=uri, experiment="no-children", run_dir=run_dir, child_runs=False)
    run_search("random", ToyEvaluator(), 6, batch_size=3, seed=0, tracker=tracker, space="small")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("no-children")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    assert len(client.get_metric_history(runs[0].info.run_id, "search/reward")) == 6


def test_write_failure_does_not_kill_the_search(store, monkeypatch):
    run_dir, uri = store

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(mt, "_child_fields", broken)
    tracker = MlflowTracker(uri=uri, experiment="broken", run_dir=run_dir, background=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run_search("random", ToyEvaluator(), 8, batch_size=2, seed=0, tracker=tracker,
                         space="small")
    assert len(res.results) == 8
    assert tracker.error is not None and "disk full" in tracker.error
    assert any("MLflow logging stopped" in str(w.message) for w in caught)
    parent = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("broken").experiment_id],
        filter_string="tags.`searchlab.role` = 'search'")[0]
    assert parent.info.status == "FAILED"


# --- where, and failing fast -------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_fails_fast_with_one_clear_error():
    uri = f"http://127.0.0.1:{free_port()}"
    t = time.perf_counter()
    with pytest.raises(TrackingError) as e:
        MlflowTracker(uri=uri, experiment="x")
    assert time.perf_counter() - t < 10
    msg = str(e.value)
    assert uri in msg and "unreachable" in msg and "tracking=none" in msg and "\n" not in msg


def test_unwritable_local_store_fails_fast(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(TrackingError) as e:
        check_tracking_uri(f"sqlite:///{blocker}/sub/mlflow.db")
    assert "cannot create directory" in str(e.value)


def test_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example.invalid:1")
    assert resolve_tracking_uri(None, tmp_path) == "http://example.invalid:1"
    assert resolve_tracking_uri("sqlite:///x.db", tmp_path) == "sqlite:///x.db"


def test_local_store_keeps_artifacts_beside_the_database(store):
    run_dir, uri = store
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("unusual")
    assert exp.artifact_location.startswith((run_dir / "artifacts").resolve().as_uri())


def test_interrupted_search_marks_the_run_killed(store):
    run_dir, uri = store

    class Stop(ToyEvaluator):
        def evaluate(self, rule, seed):
            if getattr(self, "n", 0) >= 5:
                raise KeyboardInterrupt
            object.__setattr__(self, "n", getattr(self, "n", 0) + 1)
            return super().evaluate(rule, seed)

    tracker = MlflowTracker(uri=uri, experiment="interrupted", run_dir=run_dir)
    with pytest.raises(KeyboardInterrupt):
        try:
            run_search("random", Stop(), 20, batch_size=5, seed=0, tracker=tracker, space="small")
        except KeyboardInterrupt:
            tracker.abort("KILLED")
            raise
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("interrupted")
    parent = parent_of(client, exp.experiment_id)
    assert parent.info.status == "KILLED"
    assert len(children(client, exp.experiment_id, parent.info.run_id)) == 5


def test_metrics_held_by_a_dying_tracker_are_logged_by_resume(store):
    """Without nested runs, batches logged within FLUSH_SECONDS are held and written
    together; a process that dies holding some (no finish, no abort) loses them from the
    store, and ``resume`` with the checkpointed samples writes each missing step once."""
    run_dir, uri = store
    exp_name = "held-metrics"
    results = [Result(rule=f"g*{i}", key=f"k{i}", reward=0.01 * i, seconds=0.1)
               for i in range(30)]
    first = MlflowTracker(uri=uri, experiment=exp_name, run_dir=run_dir, child_runs=False,
                          background=False)
    first.start({"budget": 30}, {"task": "toy"})
    for k in range(0, 20, 5):          # 4 batches in far less than FLUSH_SECONDS
        first.log(results[k:k + 5], k)
    client = MlflowClient(uri)
    steps = sorted(m.step for m in client.get_metric_history(first.run_id, "search/reward"))
    assert steps == list(range(5))     # the first batch written, the next three held
    state = first.state_dict()
    del first                          # the process "dies": nothing flushes the held ones

    second = MlflowTracker(uri=uri, experiment=exp_name, run_dir=run_dir, child_runs=False,
                           background=False)
    second.resume(state, {"budget": 30}, {"task": "toy"}, results[:20])
    second.log(results[20:], 20)
    second.finish({"unique": 30})
    assert second.error is None and second.run_id == state["run_id"]
    hist = sorted(client.get_metric_history(state["run_id"], "search/reward"),
                  key=lambda m: m.step)
    assert [m.step for m in hist] == list(range(30))       # every step once
    assert [m.value for m in hist] == pytest.approx([r.reward for r in results])
