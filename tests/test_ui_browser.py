"""The MLflow UI really shows a search and its samples (headless Chromium via Playwright).

A real MLflow server is started with ``searchlab ui`` on 127.0.0.1 (a free port, one
worker, MLflow's job runners off); a small search logs to it over HTTP, another straight
into the local store it serves (``searchlab search`` then ``searchlab ui``); for each,

1. headless Chromium opens the experiment's runs page, finds the search's parent run,
   expands it and finds every sample's nested run (named ``<index> <rule text>``);
2. MLflow's client API, on the same server, finds exactly ``budget`` samples, each with
   rule text, tokens, canonical key, reward, status, best lr, seconds and cache flag.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

CHROMIUM = "/usr/bin/chromium"
BUDGET = 12
EXPERIMENT = "browser-check"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason=f"{CHROMIUM} missing (scripts/setup.sh --dev installs it)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``searchlab ui`` on a free port; stopped (with its server's process group) after."""
    run_dir = tmp_path_factory.mktemp("ui")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(run_dir / "ui.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "searchlab.cli", "ui", f"run_dir={run_dir}",
                             f"port={port}"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("MLflow UI did not start: " + (run_dir / "ui.log").read_text()[-2000:])
            time.sleep(0.5)
        yield url, run_dir
    finally:
        proc.send_signal(signal.SIGTERM)          # `searchlab ui` stops its server group
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    assert not healthy(url), "the server outlived `searchlab ui`"


@pytest.fixture(scope="module", params=["http", "local"])
def logged(server, request):
    """A small search (the CLI, as a user would run it) logged either to the server over
    HTTP (the client-API path) or straight into the local store the server serves (what
    ``searchlab search`` + ``searchlab ui`` do: the one-transaction-per-batch path)."""
    from searchlab.cli import main

    url, run_dir = server
    out = run_dir / f"search-{request.param}"
    where = [f"tracking.uri={url}"] if request.param == "http" else []
    rc = main(["search", "strategy=random", "task=toy", "space=small", f"budget={BUDGET}",
               "batch_size=4", "seed=5", *where, f"tracking.experiment={EXPERIMENT}-{request.param}",
               f"run_dir={run_dir}", f"out={out}", "quiet=true"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert len(results) == BUDGET
    return url, f"{EXPERIMENT}-{request.param}", results


def test_experiment_page_lists_the_search_and_its_samples(logged):
    from playwright.sync_api import sync_playwright

    from mlflow import MlflowClient

    from searchlab.commands.ui import experiment_url
    from searchlab.mlflow_tracker import sample_run_name
    from searchlab.result import result_from_json

    url, experiment, results = logged
    exp = MlflowClient(url).get_experiment_by_name(experiment)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 2400})
            page.goto(experiment_url(url, exp.experiment_id), wait_until="load")
            name_cells = "[role=gridcell][col-id='attributes.`Run Name`']"
            parent = page.locator(name_cells, has_text="random-toy-").first
            parent.wait_for(timeout=60_000)
            assert experiment in page.inner_text("body")
            assert page.get_by_text(f"{BUDGET + 1} matching runs").count() == 1
            parent.locator("button").first.click()             # expand the nested sample runs
            page.locator(name_cells, has_text="0000 ").first.wait_for(timeout=30_000)
            page.wait_for_timeout(500)
            names = [t.split("\n")[-1].strip() for t in page.locator(name_cells).all_inner_texts()]
        finally:
            browser.close()
    samples = sorted(n for n in names if n[:4].isdigit())
    expected = sorted(sample_run_name(r.extra["sample"], r)
                      for r in map(result_from_json, results))
    assert samples == expected
    assert any(n.startswith("random-toy-") for n in names)


def test_client_api_finds_exactly_the_budgeted_samples_with_all_fields(logged):
    from mlflow import MlflowClient

    url, experiment, results = logged
    client = MlflowClient(url)
    exp = client.get_experiment_by_name(experiment)
    parents = client.search_runs([exp.experiment_id], "tags.`searchlab.role` = 'search'")
    assert len(parents) == 1
    kids = client.search_runs([exp.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'",
                              max_results=1000)
    assert len(kids) == BUDGET
    by_index = {int(k.data.metrics["sample"]): k for k in kids}
    assert sorted(by_index) == list(range(BUDGET))
    for r in results:
        k = by_index[r["extra"]["sample"]]
        p, m = k.data.params, k.data.metrics
        assert p["rule"] == r["rule"] and p["key"] == r["key"] and p["status"] == r["status"]
        assert p["tokens"] == " ".join(r["tokens"]) and p["cached"] == str(r["cached"]).lower()
        assert m["reward"] == pytest.approx(r["reward"]) and m["seconds"] == pytest.approx(r["seconds"])
        if r["best_lr"] is not None:
            assert m["best_lr"] == pytest.approx(r["best_lr"])
    hist = client.get_metric_history(parents[0].info.run_id, "search/best_reward")
    assert len(hist) == BUDGET
    arts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"results.csv", "best_rules.md"} <= arts
