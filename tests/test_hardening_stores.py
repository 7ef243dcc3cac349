"""Hardening of the stores a search writes (issue 15, items 1-5 and 7).

Concurrency and crash tests start REAL processes (``python -m searchlab.cli search``)
against a REAL sqlite MLflow store: searches started together in a new run directory,
two identical searches started at once, a corrupt reward cache or MLflow store, the
MLflow store deleted mid-search (and ``searchlab relog``), ``kill -9`` before the first
checkpoint and a truncated ``checkpoint.pkl``, and MLflow telemetry from the Python API.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from searchlab.checkpoint import CHECKPOINT_FILE, JOURNAL_FILE, Journal

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "searchlab.cli"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

pytestmark = pytest.mark.slow


def start(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(CLI + args, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


def finish(procs: list[subprocess.Popen], timeout: float = 600) -> list[tuple[int, str, str]]:
    out = []
    for p in procs:
        o, e = p.communicate(timeout=timeout)
        out.append((p.returncode, o, e))
    return out


def cli(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def one_error_line(stderr: str, command: str = "search") -> str:
    """The single ``searchlab <command>: error: ...`` line (no traceback)."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith(f"searchlab {command}: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def parents_and_samples(db: Path) -> dict[str, tuple[int, int]]:
    """experiment name -> (parent runs, sample runs) in the sqlite store ``db``."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    out = {}
    for exp in client.search_experiments():
        if exp.name == "Default":
            continue
        runs = client.search_runs([exp.experiment_id], max_results=5000)
        roles = [r.data.tags.get("searchlab.role") for r in runs]
        out[exp.name] = (roles.count("search"), roles.count("sample"))
    return out


# --- 1. searches started together in a NEW run directory --------------------------------
@pytest.mark.parametrize("n", [4])
def test_concurrent_searches_create_a_new_mlflow_store_safely(tmp_path, n):
    run_dir = tmp_path / "runs"                 # does not exist: every search creates it
    strategies = [["strategy=evolution", "strategy.options.population=4"], ["strategy=random"]]
    procs = [start(["search", *strategies[i % 2], "task=toy", "budget=12", "batch_size=4",
                    f"seed={i}", f"run_dir={run_dir}", "quiet=true", "rescore.top_k=0"])
             for i in range(n)]
    outs = finish(procs)
    for rc, _, err in outs:
        assert rc == 0, err
        assert "Traceback" not in err, err
    stores = parents_and_samples(run_dir / "mlflow.db")     # the store is usable after
    assert len(stores) == n and all(v == (1, 12) for v in stores.values()), stores
    # and still works with the store existing: n more searches at once
    procs = [start(["search", "strategy=random", "task=toy", "budget=6", f"seed={10 + i}",
                    f"run_dir={run_dir}", "quiet=true", "rescore.top_k=0"])
             for i in range(n)]
    for rc, _, err in finish(procs):
        assert rc == 0 and "Traceback" not in err, err
    assert len(parents_and_samples(run_dir / "mlflow.db")) == 2 * n


# --- 2. identical searches started together get their own folders --------------------------
def test_identical_concurrent_searches_get_their_own_run_folders(tmp_path):
    run_dir = tmp_path / "runs"
    # the same experiment name for both: the folder <run_dir>/<experiment> collides for sure
    args = ["search", "strategy=random", "task=toy", "budget=20", "seed=0", "batch_size=4",
            "task.options.sleep=0.05", f"run_dir={run_dir}", "quiet=true", "tracking=none",
            "tracking.experiment=same", "rescore.top_k=0"]
    outs = finish([start(args), start(args)])
    for rc, _, err in outs:
        assert rc == 0, err
    folders = sorted(p for p in run_dir.iterdir() if p.is_dir())
    assert [p.name for p in folders] == ["same", "same-2"]
    for f in folders:
        assert len(Journal.read(f / JOURNAL_FILE)) == 20             # not 40
        assert len(json.loads((f / "results.json").read_text())["results"]) == 20
    printed = sorted(o.split("results:")[1].split()[0] for _, o, _ in outs)
    assert printed == [str(f) for f in folders]


def test_identical_concurrent_searches_get_their_own_mlflow_experiments(tmp_path):
    run_dir = tmp_path / "runs"
    args = ["search", "strategy=random", "task=toy", "budget=8", "seed=0",
            "task.options.sleep=0.05", f"run_dir={run_dir}", "quiet=true", "rescore.top_k=0"]
    outs = finish([start(args), start(args)])
    for rc, _, err in outs:
        assert rc == 0 and "Traceback" not in err, err
    folders = sorted(p.name for p in run_dir.iterdir() if (p / "results.json").is_file())
    assert len(folders) == 2
    stores = parents_and_samples(run_dir / "mlflow.db")
    assert sorted(stores) == folders and all(v == (1, 8) for v in stores.values()), stores


def test_unique_folder_claims_atomically(tmp_path):
    from searchlab.app import unique_folder

    a = unique_folder(tmp_path / "x")
    b = unique_folder(tmp_path / "x")
    assert (a.name, b.name) == ("x", "x-2") and a.is_dir() and b.is_dir()
    empty = tmp_path / "given"
    empty.mkdir()
    assert unique_folder(empty) == empty                 # an existing empty folder is used
    assert unique_folder(empty).name == "given-2"        # ... once


# --- 3. corrupt reward cache and MLflow store ----------------------------------------------
def test_corrupt_reward_cache_stops_the_search_with_one_line(tmp_path):
    run_dir = tmp_path / "runs"
    bad = run_dir / "cache" / "rewards.sqlite"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"this is not a database " * 300)
    out = cli(["search", "task=rosenbrock", "budget=6", "tracking=none", f"run_dir={run_dir}",
               "quiet=true"])
    assert out.returncode != 0
    line = one_error_line(out.stderr)
    assert str(bad) in line and "reward cache" in line and ("delete" in line or "move" in line)
    assert not any(p.name != "cache" for p in run_dir.iterdir())      # nothing was run


def test_corrupt_mlflow_store_stops_the_search_with_one_line(tmp_path):
    run_dir = tmp_path / "runs"
    run_dir.mkdir()
    (run_dir / "mlflow.db").write_bytes(b"garbage " * 1000)
    out = cli(["search", "task=toy", "budget=6", f"run_dir={run_dir}", "quiet=true"])
    assert out.returncode != 0
    line = one_error_line(out.stderr)
    assert str(run_dir / "mlflow.db") in line and "not a valid" in line


def test_reward_cache_check_passes_on_a_good_and_a_new_cache(tmp_path):
    from searchlab.cache import CacheError, RewardCache

    RewardCache(tmp_path / "new.sqlite").check()           # created on demand
    RewardCache(tmp_path / "new.sqlite").check()           # and reopened
    RewardCache(None).check()
    (tmp_path / "bad.sqlite").write_bytes(b"\x00" * 4096)
    with pytest.raises(CacheError, match="bad.sqlite"):
        RewardCache(tmp_path / "bad.sqlite").check()


# --- 4. the MLflow store deleted mid-search; searchlab relog ---------------------------------
def test_mlflow_store_deleted_mid_search_is_reported_and_relog_restores_it(tmp_path):
    run_dir = tmp_path / "runs"
    run = tmp_path / "run"
    budget = 24
    proc = start(["search", "strategy=random", "task=toy", f"budget={budget}", "batch_size=2",
                  "task.options.sleep=0.1", f"run_dir={run_dir}", f"out={run}", "quiet=true",
                  "rescore.top_k=0"])
    deadline = time.monotonic() + 300
    while len(Journal.read(run / JOURNAL_FILE)) < 4:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for suffix in ("", "-wal", "-shm"):
        (run_dir / f"mlflow.db{suffix}").unlink(missing_ok=True)
    rc, out, err = finish([proc])[0]
    assert rc != 0, err
    line = one_error_line(err)
    assert "mlflow.db" in line and "searchlab relog" in line and str(run) in line
    assert len(json.loads((run / "results.json").read_text())["results"]) == budget

    res = cli(["relog", str(run)])
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    stores = parents_and_samples(run_dir / "mlflow.db")
    assert list(stores.values()) == [(1, budget)], stores
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name != "Default"]
    (parent,) = client.search_runs([exp.experiment_id], "tags.`searchlab.role` = 'search'")
    assert parent.info.status == "FINISHED"
    assert parent.data.params["budget"] == str(budget)
    assert parent.data.tags["searchlab.relogged_from"] == str(run.resolve())
    steps = [m.step for m in client.get_metric_history(parent.info.run_id, "search/reward")]
    assert sorted(steps) == list(range(budget))
    artifacts = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert "results.json" in artifacts


def test_relog_is_a_command_with_help(capsys):
    from searchlab.cli import COMMANDS, main

    assert "relog" in COMMANDS
    with pytest.raises(SystemExit) as e:
        main(["relog", "--help"])
    assert e.value.code == 0 and "examples:" in capsys.readouterr().out


def test_relog_errors_are_one_line(tmp_path):
    res = cli(["relog", str(tmp_path / "nope")])
    assert res.returncode != 0
    assert "no results.json" in one_error_line(res.stderr, "relog")


# --- 5. resume without a (readable) checkpoint ----------------------------------------------
SEARCH5 = ["strategy=evolution", "strategy.options.population=4", "task=toy", "budget=16",
           "batch_size=4", "seed=3",
           "rescore.top_k=0", "quiet=true"]


def reference_rewards(tmp_path: Path) -> list[tuple[str, float, str]]:
    from searchlab.app import run_one_search
    from searchlab.config import load_config

    cfg = load_config(SEARCH5 + ["tracking=none", f"out={tmp_path / 'reference'}"])
    result, _, _ = run_one_search(cfg, progress=lambda *a: None)
    return [(r.key, r.reward, r.status) for r in result.results]


def samples(run: Path) -> list[tuple[str, float, str]]:
    from searchlab.runfiles import load_search

    return [(r.key, r.reward, r.status) for r in load_search(run).results]


def test_kill_9_before_the_first_checkpoint_then_resume(tmp_path):
    run_dir, run = tmp_path / "runs", tmp_path / "run"
    # with MLflow the start-up (store creation) takes seconds: kill -9 as soon as the
    # search has written its config (the resume hint is printed) but no checkpoint yet
    proc = start(["search", *SEARCH5, f"run_dir={run_dir}", f"out={run}"])
    deadline = time.monotonic() + 120
    while not ((run / "config.yaml").is_file() and (run / "config.yaml").stat().st_size):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    # the kill can land just after the first checkpoint was written; the state of a
    # search killed before it is the same folder without checkpoint.pkl
    (run / CHECKPOINT_FILE).unlink(missing_ok=True)
    res = cli(["search", f"resume={run}"])
    assert res.returncode == 0, res.stderr
    assert "no checkpoint" in res.stderr and "from its seed" in res.stderr
    assert samples(run) == reference_rewards(tmp_path)
    keys = [r.key for r in Journal.read(run / JOURNAL_FILE)]
    assert len(keys) == 16 == len(set(keys))


def test_truncated_checkpoint_resumes_from_the_journal(tmp_path):
    run_dir, run = tmp_path / "runs", tmp_path / "run"
    proc = start(["search", *SEARCH5, "task.options.sleep=0.1", "tracking=none",
                  f"run_dir={run_dir}", f"out={run}"])
    deadline = time.monotonic() + 120
    while len(Journal.read(run / JOURNAL_FILE)) < 9:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    before = [r.key for r in Journal.read(run / JOURNAL_FILE)]
    ckpt = run / CHECKPOINT_FILE
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])     # truncated
    res = cli(["search", f"resume={run}"])
    assert res.returncode == 0, res.stderr
    assert "cannot read" in res.stderr and f"{len(before)} evaluations" in res.stderr
    assert samples(run) == reference_rewards(tmp_path)
    keys = [r.key for r in Journal.read(run / JOURNAL_FILE)]
    assert keys[: len(before)] == before                  # none evaluated twice
    assert len(keys) == 16 == len(set(keys))


def test_resume_of_a_folder_without_any_search_says_what_is_possible(tmp_path):
    (tmp_path / "config.yaml").write_text("budget: 3\n")
    from searchlab.checkpoint import Checkpointer, ResumeError

    with pytest.raises(ResumeError, match="no checkpoint.pkl and no evaluations.jsonl"):
        Checkpointer(tmp_path / "elsewhere").load()


# --- 7. telemetry off from the Python API -------------------------------------------------
# a subprocess records every DNS lookup (the ``socket.getaddrinfo`` audit event) while it
# uses searchlab's Python API; MLflow's telemetry looks up config.mlflow-telemetry.io from a
# thread started at ``import mlflow`` (whether or not the lookup then succeeds)
DNS_PROBE = """
import os, sys, threading
hosts = []
sys.addaudithook(lambda event, args: hosts.append(str(args[0]))
                 if event == "socket.getaddrinfo" else None)
{body}
for t in threading.enumerate():
    if t.name == "GetTelemetryConfig":
        t.join(10)
from mlflow.telemetry.utils import is_telemetry_disabled
print("RESULT", os.environ.get("MLFLOW_DISABLE_TELEMETRY"), is_telemetry_disabled(),
      [h for h in hosts if "telemetry" in h])
"""


@pytest.mark.parametrize("body", [
    'import searchlab\nsearchlab.search(["task=toy", "budget=4", "quiet=true", '
    '"rescore.top_k=0", "run_dir={runs}"])',
    'from searchlab.mlflow_tracker import MlflowTracker\n'
    'from searchlab.runner import run_search\n'
    'from searchlab.testing.toy import ToyEvaluator\n'
    'run_search("random", ToyEvaluator(), 3, seed=0, '
    'tracker=MlflowTracker(run_dir="{runs}", background=False))',
], ids=["searchlab.search", "run_search+MlflowTracker"])
def test_python_api_with_mlflow_makes_no_telemetry_lookup(tmp_path, body):
    # no CI/pytest markers (MLflow turns its telemetry off by itself when it sees them)
    env = {k: v for k, v in ENV.items()
           if k not in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "RAY_USAGE_STATS_ENABLED",
                        "PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS")}
    code = DNS_PROBE.format(body=body.format(runs=tmp_path / "runs"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")][-1]
    assert line == "RESULT true True []", line


def test_a_user_who_opted_in_keeps_mlflow_telemetry(tmp_path):
    from searchlab.mlflow_tracker import disable_telemetry

    env = {"MLFLOW_DISABLE_TELEMETRY": "false"}
    disable_telemetry(env)
    assert env == {"MLFLOW_DISABLE_TELEMETRY": "false", "RAY_USAGE_STATS_ENABLED": "0"}
    env = {}
    disable_telemetry(env)
    assert env == {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
                   "RAY_USAGE_STATS_ENABLED": "0"}
