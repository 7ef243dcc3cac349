"""``searchlab ui``: open the MLflow UI on what searches logged (127.0.0.1 only).

Starts ``mlflow server`` on the local store ``sqlite:///<run_dir>/mlflow.db`` (or
``uri=``/``$MLFLOW_TRACKING_URI``) with one worker and MLflow's job runners off
(``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``): ~0.5 GB and ~4 s to start instead of
~2.5 GB and ~8 s with the defaults (ARCHITECTURE.md, "Dependency facts").  Equivalent by hand::

    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow server --workers 1 \\
        --backend-store-uri sqlite:///runs/mlflow.db --host 127.0.0.1 --port 5000
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..config import ConfigError, parse_model
from ._common import fail, options_parser, say


class UiOptions(BaseModel):
    """Options of ``searchlab ui``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_dir: str = Field("runs", description="run directory whose local store (mlflow.db) to open")
    uri: str | None = Field(None, description="a tracking store URI instead (also accepted as tracking.uri)")
    host: str = Field("127.0.0.1", description="interface to bind (keep 127.0.0.1 unless you know why)")
    port: int = Field(5000, ge=1, le=65535, description="port")
    workers: int = Field(1, ge=1, description="server worker processes")
    timeout: float = Field(120.0, gt=0, description="seconds to wait for the server to become healthy")


def server_command(store_uri: str, artifacts: Path, host: str, port: int, workers: int = 1
                   ) -> tuple[list[str], dict[str, str]]:
    """The ``mlflow server`` command line and environment ``searchlab ui`` runs."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store_uri,
           "--default-artifact-root", artifacts.resolve().as_uri(),
           "--host", host, "--port", str(port), "--workers", str(workers)]
    from ..mlflow_tracker import disable_telemetry

    env = dict(os.environ)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    disable_telemetry(env)          # telemetry off unless the user set the variables
    return cmd, env


def wait_healthy(url: str, timeout: float, proc: subprocess.Popen[Any] | None = None) -> bool:
    """Poll ``GET <url>/health`` until it answers 200 (False on timeout or server exit)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = options_parser(sub, "ui", UiOptions, defaults=True,
                       help="open the MLflow UI on the logged searches",
                       description="Start the MLflow UI (mlflow server, 1 worker, job runners "
                                   "off) on 127.0.0.1 for the local store of a run directory.",
                       examples=["searchlab ui                    # runs/mlflow.db on http://127.0.0.1:5000",
                                 "searchlab ui run_dir=/data/runs port=5050"])
    p.add_argument("overrides", nargs="*", metavar="key=value", help="run_dir=, port=, uri=, ...")
    return p


def run(args: argparse.Namespace) -> int:
    from ..mlflow_tracker import TrackingError, check_tracking_uri, resolve_tracking_uri

    words = [("uri=" + w.partition("=")[2]) if w.startswith("tracking.uri=") else w
             for w in args.overrides]
    try:
        opts = parse_model(UiOptions, words)
    except ConfigError as e:
        return fail("ui", str(e))
    uri = resolve_tracking_uri(opts.uri, opts.run_dir)
    if uri.startswith(("http://", "https://")):
        print(f"{uri} is already a tracking server: open it in a browser")
        return 0
    try:
        check_tracking_uri(uri)
    except TrackingError as e:
        return fail("ui", str(e))
    db = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
    if db is not None and not db.exists():
        say(f"note: {db} does not exist yet (nothing logged there); run `searchlab search` first")
    cmd, env = server_command(uri, Path(opts.run_dir) / "artifacts", opts.host, opts.port,
                              opts.workers)
    url = f"http://{opts.host}:{opts.port}"
    say(f"starting MLflow UI on {url} for {uri} ...")
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        if not wait_healthy(url, opts.timeout, proc):
            return fail("ui", f"the MLflow server did not become healthy on {url} "
                              f"(is port {opts.port} in use? try port=5050)")
        print(f"MLflow UI: {url}   (Ctrl-C to stop)", flush=True)
        for name, link in latest_experiments(uri, url):
            print(f"  {name}: {link}", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop_server(proc)
        signal.signal(signal.SIGTERM, previous)


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # stop the server's process group in ``run``'s finally


def experiment_url(base: str, experiment_id: str) -> str:
    """An experiment's runs page.  MLflow 3's UI opens experiments on its GenAI overview
    unless ``workflowType=machine_learning`` is in the URL."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def latest_experiments(store_uri: str, base: str, n: int = 3) -> list[tuple[str, str]]:
    """(name, runs-page URL) of the ``n`` most recently created searchlab experiments."""
    try:
        from mlflow import MlflowClient

        exps = MlflowClient(store_uri).search_experiments(order_by=["creation_time DESC"],
                                                          max_results=n + 1)
    except Exception:  # noqa: BLE001 - only a convenience
        return []
    return [(e.name, experiment_url(base, e.experiment_id)) for e in exps
            if e.name != "Default"][:n]


def stop_server(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """Stop a server started by :func:`server_command` and its worker processes (its own
    process group: it was started with ``start_new_session=True``)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)      # also any workers left in the group
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
