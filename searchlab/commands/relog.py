"""``searchlab relog``: log a finished run folder into MLflow again, as a new parent run.

    searchlab relog runs/<search folder>                       # its own store and experiment
    searchlab relog runs/<search folder> tracking.uri=http://127.0.0.1:5000
    searchlab relog runs/<search folder> tracking.experiment=recovered

The run folder's files are the record of a search (``results.json``, ``config.yaml``,
``rescored.json``); when its MLflow record is lost (``mlflow.db`` deleted or replaced
during the search, a store that was unreachable) this writes it again: one parent run
(params from ``config.yaml``, tag ``searchlab.relogged_from``, the search's metrics and
artifacts) with one nested run per sample, as the search itself would have logged it.
By default into the store the search used (its ``tracking.uri``, else
``$MLFLOW_TRACKING_URI``, else ``<run_dir>/mlflow.db``) and its experiment.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..config import ConfigError, parse_model
from ._common import fail, options_parser, say

#: config keys that are not a search's parameters (as ``searchlab.app.run_one_search``)
_NOT_PARAMS = ("strategies", "seeds", "report", "threshold", "resume", "quiet", "reps")


class RelogOptions(BaseModel):
    """Options of ``searchlab relog`` (after the run folder)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str | None = Field(None, description="tracking store URI (also tracking.uri; default: the search's)")
    run_dir: str | None = Field(None, description="run directory of the local store (default: the search's)")
    experiment: str | None = Field(None, description="experiment name (also tracking.experiment; default: the search's)")
    child_runs: bool | None = Field(None, description="one nested run per sample (default: the search's setting)")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = options_parser(sub, "relog", RelogOptions, width=10,
                       help="log a finished run folder into MLflow again",
                       description="Log a finished search's run folder (results.json, "
                                   "config.yaml) into MLflow as a new parent run with its "
                                   "samples, e.g. after its mlflow.db was lost.",
                       examples=["searchlab relog runs/random-mnist1d-fast-s0-20250101-120000",
                                 "searchlab relog runs/<folder> tracking.uri=http://127.0.0.1:5000"])
    p.add_argument("folder", help="a finished search's run folder (holds results.json)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="uri=, run_dir=, experiment=")
    return p


def relog(folder: str | Path, uri: str | None = None, run_dir: str | None = None,
          experiment: str | None = None, child_runs: bool | None = None) -> Any:
    """Log the finished search in ``folder`` to MLflow as a new parent run; returns the
    :class:`~searchlab.mlflow_tracker.MlflowTracker` (``run_id``, ``error``, ``where()``).
    Raises :class:`ConfigError` for a folder without ``results.json`` and
    ``TrackingError`` for an unusable store."""
    import yaml

    from ..config import flatten
    from ..mlflow_tracker import MlflowTracker
    from ..result import result_from_json

    folder = Path(folder)
    path = folder / "results.json"
    if not path.is_file():
        raise ConfigError(f"{str(folder)!r} has no results.json: only a finished search's run "
                          f"folder can be re-logged (an interrupted one continues with "
                          f"`searchlab search resume={folder}`)")
    try:
        data = json.loads(path.read_text())
        summary = dict(data.get("summary") or {})
        results = [result_from_json(x) for x in data.get("results", [])]
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ConfigError(f"{str(path)!r} is not a searchlab results file ({e})") from None
    cfg_file = folder / "config.yaml"
    cfg: dict[str, Any] = {}
    if cfg_file.is_file():
        cfg = yaml.safe_load(cfg_file.read_text()) or {}
    cfg = cfg if isinstance(cfg, dict) and cfg else dict(summary.get("config") or {})
    tracking = cfg.get("tracking") if isinstance(cfg.get("tracking"), dict) else {}
    run_dir = run_dir or cfg.get("run_dir") or str(folder.parent)
    label = str(summary.get("label") or summary.get("strategy") or "search")
    fidelity = cfg.get("fidelity", {}).get("name") if isinstance(cfg.get("fidelity"), dict) else None
    run_name = (f"{label}-{summary.get('task', '?')}-{fidelity or summary.get('fidelity', '?')}"
                f"-s{summary.get('seed', 0)}")
    tracker = MlflowTracker(
        uri=uri or tracking.get("uri"), run_dir=run_dir,
        experiment=experiment or summary.get("experiment") or tracking.get("experiment")
        or folder.name,
        run_name=run_name, background=False, top_k=int(cfg.get("top_k", 5) or 5),
        child_runs=bool(_child_runs(cfg, tracking) if child_runs is None else child_runs))
    params = {k: summary[k] for k in ("strategy", "seed", "eval_seed", "budget")
              if summary.get(k) is not None}
    params.update(flatten({k: v for k, v in cfg.items() if k not in _NOT_PARAMS}))
    tags = {"strategy": str(summary.get("strategy", label)), "seed": str(summary.get("seed", 0)),
            "task": str(summary.get("task", "")), "fidelity": str(summary.get("fidelity", "")),
            "space": str(summary.get("space", "")), "searchlab.label": label,
            "searchlab.relogged_from": str(folder.resolve())}
    tracker.start(params, tags)
    if results:
        tracker.log(results, 0)
    tracker.finish(summary)
    rescored = folder / "rescored.json"
    if rescored.is_file():
        rows = json.loads(rescored.read_text())
        if isinstance(rows, list) and rows:
            tracker.log_rescored(rows)
    return tracker


def _child_runs(cfg: dict[str, Any], tracking: dict[str, Any]) -> bool:
    """The search's ``tracking.child_runs`` (null or absent: the config's default,
    :attr:`searchlab.config.Config.child_runs`)."""
    from pydantic import ValidationError

    from ..config import Config

    if tracking.get("child_runs") is not None:
        return bool(tracking["child_runs"])
    try:
        return Config.model_validate(cfg).child_runs
    except ValidationError:          # an older or hand-edited config.yaml
        return True


def run(args: argparse.Namespace) -> int:
    words = [w.replace("tracking.", "", 1) if w.startswith(("tracking.uri=", "tracking.experiment=",
                                                            "tracking.child_runs="))
             else w for w in args.overrides]
    try:
        opts = parse_model(RelogOptions, words)
        tracker = relog(args.folder, uri=opts.uri, run_dir=opts.run_dir,
                        experiment=opts.experiment, child_runs=opts.child_runs)
    except ConfigError as e:
        return fail("relog", str(e))
    if tracker.error:
        return fail("relog", tracker.error, code=1)
    say(f"re-logged {args.folder} as run {tracker.run_id}")
    print(f"MLflow:   {tracker.where()}")
    print(f"open UI:  {tracker.open_hint()}")
    return 0
