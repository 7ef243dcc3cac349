"""CLI smoke runs of search / compare / export / ui and their one-line errors."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import socket
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from searchlab.cli import main  # noqa: E402
from searchlab.strategy import STRATEGIES  # noqa: E402

TOY = ["task=toy", "space=small", "quiet=true"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Relative paths (the default run_dir ``runs``) land in a temporary directory."""
    monkeypatch.chdir(tmp_path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_error(capsys, argv, code=2) -> str:
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == code, (out, err)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"searchlab {argv[0]}: error: ")
    return lines[0]


# --- compare: 2 strategies x 2 seeds -> PNG, CSV, Markdown, MLflow -------------------------
@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    out = tmp / "out"
    argv = ["compare", "strategies=[random,evolution]", "seeds=[0,1]", "budget=10",
            "batch_size=5", f"run_dir={tmp / 'runs'}", f"out={out}",
            "tracking.experiment=cli-compare", *TOY]
    rc = main(argv)
    return rc, tmp, out


def test_compare_writes_png_csv_markdown_with_one_row_per_strategy(compared, capsys):
    rc, tmp, out = compared
    assert rc == 0
    for name in ("best_so_far.png", "rewards.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["strategy"] for r in rows) == ["evolution", "random"]
    assert all(r["runs"] == "2" and r["budget"] == "10" for r in rows)
    md = (out / "summary.md").read_text()
    head = md.partition("## Statistics")[0]       # the summary table; statistics follow
    assert head.count("| random | 2 |") == 1 and head.count("| evolution | 2 |") == 1
    assert "fewer than 5 seeds" in md             # 2 seeds: the report says so
    assert "Reference optimizers" in md and "`adam`" in md
    for lab in ("random", "evolution"):
        for seed in (0, 1):
            data = json.loads((out / "runs" / f"{lab}-s{seed}" / "results.json").read_text())
            assert len(data["results"]) == 10 and data["summary"]["seed"] == seed


def test_compare_logged_searches_and_report_to_mlflow(compared):
    from mlflow import MlflowClient

    _, tmp, out = compared
    client = MlflowClient(f"sqlite:///{(tmp / 'runs' / 'mlflow.db').resolve()}")
    exp = client.get_experiment_by_name("cli-compare")
    searches = client.search_runs([exp.experiment_id], "tags.`searchlab.role` = 'search'")
    assert sorted((r.data.tags["searchlab.label"], r.data.tags["seed"]) for r in searches) == [
        ("evolution", "0"), ("evolution", "1"), ("random", "0"), ("random", "1")]
    samples = client.search_runs([exp.experiment_id], "tags.`searchlab.role` = 'sample'",
                                 max_results=1000)
    assert len(samples) == 40
    report = client.search_runs([exp.experiment_id], "tags.`searchlab.role` = 'report'")
    assert len(report) == 1
    arts = {a.path for a in client.list_artifacts(report[0].info.run_id)}
    assert {"best_so_far.png", "rewards.png", "summary.csv", "summary.md"} <= arts
    assert "compare/random/best_reward_mean" in report[0].data.metrics


def test_compare_rereport_from_folder_does_not_rerun(compared, capsys):
    _, tmp, out = compared
    before = (out / "summary.csv").read_text()
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/results.json")}
    (out / "summary.csv").unlink()
    assert main(["compare", f"report={out}", "tracking=none", "quiet=true"]) == 0
    assert (out / "summary.csv").read_text() == before
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/results.json")} == mtimes
    assert str(out) in capsys.readouterr().out


def test_compare_rereport_from_mlflow_experiment(compared, tmp_path):
    _, tmp, out = compared
    dest = tmp_path / "again"
    assert main(["compare", "report=cli-compare", f"run_dir={tmp / 'runs'}", f"out={dest}",
                 "tracking=none", "quiet=true"]) == 0
    with open(dest / "summary.csv") as a, open(out / "summary.csv") as b:
        ra, rb = list(csv.DictReader(a)), list(csv.DictReader(b))
    key = lambda r: r["strategy"]  # noqa: E731
    for x, y in zip(sorted(ra, key=key), sorted(rb, key=key)):
        assert x["best_reward_mean"] == y["best_reward_mean"]


def test_compare_resume_skips_finished_runs(compared, capsys):
    _, tmp, out = compared
    rc = main(["compare", "strategies=[random,evolution]", "seeds=[0,1]", "budget=10",
               "batch_size=5", f"run_dir={tmp / 'runs'}", f"out={out}", "resume=true",
               "tracking=none", *TOY])
    assert rc == 0
    err = capsys.readouterr().err
    assert err.count("already finished") == 4 and "4 of 4 searches done before, 0 to run" in err


# --- search + export ------------------------------------------------------------------------
def test_search_writes_results_and_export_makes_a_working_optimizer(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["search", "strategy=evolution", "budget=12", "batch_size=4", "seed=2",
                 "tracking=none", f"out={out}", f"run_dir={tmp_path}", *TOY]) == 0
    data = json.loads((out / "results.json").read_text())
    assert len(data["results"]) == 12 == len({r["key"] for r in data["results"]})
    assert data["summary"]["strategy"] == "evolution" and data["summary"]["seed"] == 2
    text = capsys.readouterr().out
    assert str(out) in text and "best rules" in text

    snippet = tmp_path / "found_rule.py"
    assert main(["export", f"source={out}", f"out={snippet}"]) == 0
    best = max((r for r in data["results"] if r["status"] == "ok"), key=lambda r: r["reward"])
    code = snippet.read_text()
    assert repr(best["rule"]) in code or best["rule"] in code
    spec = importlib.util.spec_from_file_location("found_rule", snippet)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = mod.make_optimizer([w], total_steps=10)
    assert isinstance(opt, torch.optim.Optimizer)


def test_export_powersign_first_step_matches_the_formula(tmp_path):
    # PowerSign exp(sign(g)*sign(m))*g: after one step the bias-corrected m equals g, so
    # sign(g)*sign(m) = 1 and w <- w - lr * e * g  (Bello et al. 2017, section 5)
    snippet = tmp_path / "powersign_rule.py"
    assert main(["export", "rule=exp(sign(g)*sign(m))*g", "lr=0.1", f"out={snippet}"]) == 0
    spec = importlib.util.spec_from_file_location("powersign_rule", snippet)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = mod.make_optimizer([w])
    g = torch.tensor([0.3, -0.1, 0.0])
    w.grad = g.clone()
    opt.step()
    expect = torch.tensor([1.0, -2.0, 0.5]) - 0.1 * math.e * g
    assert torch.allclose(w.detach(), expect, atol=1e-6)


# --- errors: non-zero exit, one line ---------------------------------------------------------
def test_unknown_key(capsys):
    line = one_error(capsys, ["search", "budgt=3", *TOY])
    assert "'budgt'" in line and "budget" in line


def test_unknown_strategy_lists_registered_names(capsys):
    line = one_error(capsys, ["search", "strategy=nope", *TOY])
    assert "'nope'" in line and all(n in line for n in STRATEGIES.names())
    line = one_error(capsys, ["compare", "strategies=[random,nope]", *TOY])
    assert "'nope'" in line


def test_bad_override_and_bad_value(capsys):
    assert "key=value" in one_error(capsys, ["search", "budget", *TOY])
    assert "'budget'" in one_error(capsys, ["search", "budget=lots", *TOY])
    assert "compare" in one_error(capsys, ["search", "strategies=[random]", *TOY])


def test_unreachable_tracking_uri_fails_before_searching(tmp_path, capsys):
    uri = f"http://127.0.0.1:{free_port()}"
    for cmd in ("search", "compare"):
        out = tmp_path / cmd
        line = one_error(capsys, [cmd, f"tracking.uri={uri}", f"out={out}",
                                  f"run_dir={tmp_path}", "budget=3", *TOY])
        assert uri in line and "unreachable" in line
        assert not out.exists()


def test_export_and_ui_errors(capsys):
    assert "exactly one of" in one_error(capsys, ["export"])
    assert "'rule'" in one_error(capsys, ["export", "rule=exp(("])
    assert "'prot'" in one_error(capsys, ["ui", "prot=5000"])


@pytest.mark.parametrize("cmd", ["search", "compare", "ui", "export"])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out
    if cmd in ("search", "compare"):
        assert "budget" in out and "strategy.name" in out and "tracking.uri" in out


def test_python_api(tmp_path):
    import searchlab

    res = searchlab.search({"task": "toy", "space": "small", "tracking": "none",
                            "run_dir": str(tmp_path), "quiet": True}, budget=7, strategy="random")
    assert len(res.results) == 7 and res.strategy == "random"
    assert list(tmp_path.glob("*/results.json"))


def test_module_entry_point(tmp_path):
    import subprocess

    r = subprocess.run([sys.executable, "-m", "searchlab.cli", "search", "budget=x"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "bad value for 'budget'" in r.stderr


def test_searches_is_refused_where_it_does_not_apply(capsys):
    line = one_error(capsys, ["compare", "strategies=[random]", "searches=2", "task=ensemble",
                              "fidelity=smoke", "quiet=true"])
    assert "searches=2 applies to lookup tasks" in line and "workers=N" in line
    assert "searches" in one_error(capsys, ["search", "searches=2", *TOY])


def test_bad_strategy_and_fidelity_options(capsys):
    line = one_error(capsys, ["search", "strategy=gp", "strategy.options.populaton=3", *TOY])
    assert "populaton" in line and "'gp'" in line
    line = one_error(capsys, ["search", "task=ensemble", "fidelity=smoke", "tracking=none",
                              "fidelity.options.epochs=2", "quiet=true"])
    assert "fidelity.options.epochs" in line and "final_epochs" in line
    line = one_error(capsys, ["compare", "strategies=[random,gp]", "strategy.options.x=1", *TOY])
    assert "configs/strategy" in line


def test_mlflow_tracking_uri_env_is_honoured(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'elsewhere' / 'store.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["search", "budget=5", "tracking.experiment=env-uri", f"run_dir={tmp_path / 'r'}",
                 *TOY]) == 0
    exp = MlflowClient(uri).get_experiment_by_name("env-uri")
    runs = MlflowClient(uri).search_runs([exp.experiment_id], max_results=100)
    assert len(runs) == 1 + 5
    assert not (tmp_path / "r" / "mlflow.db").exists()


@pytest.mark.parametrize("rule", ["g", "(1+ld*sign(g)*sign(m))*g", "m*(1+eps)"])
def test_exported_snippets_run(rule, tmp_path):
    snippet = tmp_path / "exported_rule.py"
    assert main(["export", f"rule={rule}", f"out={snippet}"]) == 0
    spec = importlib.util.spec_from_file_location("exported_rule", snippet)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = mod.make_optimizer([w], lr=0.1, total_steps=10)
    w.grad = torch.tensor([0.5, 0.5])
    opt.step()
    assert torch.isfinite(w).all() and not torch.equal(w.detach(), torch.tensor([1.0, -2.0]))
