"""Meta-training logs through searchlab's trackers.

``build_meta_tracker(name, ...)`` builds the tracker the way ``searchlab.app.build_tracker``
does (same keyword arguments, so ``tracking.uri``/``$MLFLOW_TRACKING_URI`` and the local
store ``<run_dir>/mlflow.db`` behave the same).  For ``mlflow`` it is a
:class:`MetaTrainTracker`, an :class:`~searchlab.mlflow_tracker.MlflowTracker` whose run is
one meta-training: ``start`` (params: the meta-training config; tag
``searchlab.role=meta-train``), :meth:`MetaTrainTracker.log_metrics` once per
meta-iteration (``meta/loss``, ``meta/unroll``, ``meta/grad_norm``, ``meta/cpu_seconds``,
step = iteration; written from the tracker's background writer), ``finish`` (summary
metrics, the saved file as an artifact).  A resumed meta-training reopens the same run and
does not log an iteration twice.  ``none`` logs nothing; ``memory`` keeps the metrics in
``tracker.metrics`` (tests).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping

from ..mlflow_tracker import MlflowTracker
from ..tracking import TRACKERS, Tracker

__all__ = ["MetaTrainTracker", "build_meta_tracker", "log_metrics", "finish_meta"]


class MetaTrainTracker(MlflowTracker):
    """One MLflow run per meta-training (module docstring)."""

    _logged: frozenset[int] | set[int] = frozenset()

    def resume(self, state: Mapping[str, Any], params: Mapping[str, Any],
               tags: Mapping[str, str], results: Any = ()) -> None:
        super().resume(state, params, tags, [])
        if self.run_id and self.run_id == state.get("run_id"):
            hist = self._client().get_metric_history(self.run_id, "meta/loss")
            self._logged = {m.step for m in hist}

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if self.run_id is None or self._writer is None:
            raise RuntimeError("MetaTrainTracker.log_metrics called before start")
        if step in self._logged:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        client, run_id = self.client, self.run_id
        self._writer.submit(lambda: client.log_batch(run_id, metrics=batch))
        self._check_writer()

    def finish(self, summary: Mapping[str, Any], artifact: str | os.PathLike[str] | None = None
               ) -> None:  # type: ignore[override]
        if self.run_id is None or self._writer is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(f"summary/{k}", float(v), now, 0) for k, v in summary.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        client, run_id, writer = self.client, self.run_id, self._writer

        def job() -> None:
            if metrics:
                client.log_batch(run_id, metrics=metrics)
            if artifact is not None and Path(artifact).is_file():
                client.log_artifact(run_id, str(artifact))
            client.set_terminated(run_id, status="FAILED" if writer.error else "FINISHED")

        writer.submit(job)
        writer.drain()
        writer.close()
        if writer.error is not None:
            self.error = f"MLflow logging to {self.uri!r} failed ({writer.error})"


def build_meta_tracker(name: str = "mlflow", *, uri: str | None = None,
                       experiment: str = "meta-train", run_name: str | None = None,
                       run_dir: str | os.PathLike[str] = "runs", background: bool = True
                       ) -> Tracker:
    """A tracker for one meta-training (``mlflow``, ``none`` or ``memory``)."""
    kwargs = dict(uri=uri, experiment=experiment, run_name=run_name, run_dir=run_dir,
                  child_runs=False, background=background, top_k=1)
    if name == "mlflow":
        return MetaTrainTracker(**kwargs)
    tracker = TRACKERS.get(name)(**kwargs)
    if name == "memory":
        tracker.metrics = []  # type: ignore[attr-defined]
    return tracker


def log_metrics(tracker: Tracker, metrics: Mapping[str, float], step: int) -> None:
    """One meta-iteration's numbers to any tracker."""
    if isinstance(tracker, MetaTrainTracker):
        tracker.log_metrics(metrics, step)
    elif hasattr(tracker, "metrics"):
        tracker.metrics.append((int(step), dict(metrics)))  # type: ignore[attr-defined]


def finish_meta(tracker: Tracker, summary: Mapping[str, Any], artifact: Any = None) -> None:
    if isinstance(tracker, MetaTrainTracker):
        tracker.finish(summary, artifact)
    else:
        tracker.finish(summary)
