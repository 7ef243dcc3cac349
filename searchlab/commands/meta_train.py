"""``searchlab meta-train``: meta-train a learned optimizer and save it to a file.

    searchlab meta-train optimizer=hrnn task=ensemble steps=300 seed=0
    searchlab meta-train optimizer=lwa-b steps=200 out=runs/learned/lwa-b.pt
    searchlab meta-train optimizer=hrnn steps=600 resume=true        # continue / extend
    searchlab evaluate learned:runs/learned/hrnn-ensemble-s0.pt --task mnist1d

Keys (``key=value``, values as YAML): ``optimizer`` (hrnn, ni-steps, ni-momentums,
lwa-a, lwa-b, lwa-c, msadam-mlp, msadam-rnn), ``task`` (ensemble, or
ensemble+suite=extended for Wichrowska et al.'s longer list), ``steps`` (meta-iterations),
``seed``, ``out`` (default ``<run_dir>/learned/<optimizer>-<task>-s<seed>.pt``),
``resume`` (true: continue from ``<out>.ckpt``), ``tracking`` (mlflow, none),
``tracking.uri``, ``run_dir`` (runs), ``quiet``; every field of
:class:`searchlab.learned.metatrain.MetaTrainConfig` (``copies``, ``unroll_mean``,
``meta_lr``, ``param_noise``, ``first_order``, ...), and ``options.<name>`` for the
model's options (``options.param_hidden=8``).  ``validate_every=N`` scores the model on
a fixed meta-validation set every N meta-iterations (``val_runs``, ``val_steps``,
``val_seed``), and ``select=best`` saves the meta-parameters that scored best there:

    searchlab meta-train optimizer=hrnn steps=600 validate_every=25 select=best
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

EPILOG = __doc__.split("\n\n", 1)[1] if __doc__ else ""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "meta-train", help="meta-train a learned optimizer (hierarchical RNN, LWA, ...)",
        description="Meta-train a learned optimizer on the problem ensemble by truncated "
                    "backpropagation through unrolls; save its meta-parameters to a file.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="optimizer=hrnn task=ensemble steps=300 seed=0 ...")
    return p


def _parse(items: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected key=value, got {item!r}")
        key = key.strip()
        # task names keep their text (ensemble+suite=extended)
        out[key] = value if key in ("task", "out", "optimizer", "tracking.uri", "run_dir") \
            else yaml.safe_load(value)
    return out


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    try:
        opts = _parse(args.overrides)
    except ValueError as e:
        print(f"searchlab meta-train: error: {e}", file=sys.stderr)
        return 2
    from ..learned.base import MODELS
    from ..learned.metatrain import MetaTrainConfig, meta_train
    from ..learned.tracking import build_meta_tracker

    run_dir = str(opts.pop("run_dir", "runs"))
    out = opts.pop("out", None)
    resume = bool(opts.pop("resume", False))
    quiet = bool(opts.pop("quiet", False))
    tracking = str(opts.pop("tracking", "mlflow"))
    uri = opts.pop("tracking.uri", None)
    model_opts = {k.split(".", 1)[1]: opts.pop(k) for k in list(opts) if k.startswith("options.")}
    try:
        cfg = MetaTrainConfig.from_dict({**opts, "options": {**opts.get("options", {}), **model_opts}})
        _ = cfg.suite
        if cfg.optimizer not in MODELS:
            raise ValueError(f"unknown optimizer {cfg.optimizer!r}; valid: {', '.join(MODELS.names())}")
        if cfg.steps < 1:
            raise ValueError("steps must be >= 1")
    except (TypeError, ValueError) as e:
        print(f"searchlab meta-train: error: {e}", file=sys.stderr)
        return 2
    if out is None:
        task_tag = cfg.task.replace("+suite=", "-").replace("+", "-")
        out = str(Path(run_dir) / "learned" / f"{cfg.optimizer}-{task_tag}-s{cfg.seed}.pt")
    experiment = f"meta-train-{cfg.optimizer}-{cfg.task}"
    try:
        tracker = build_meta_tracker(tracking, uri=uri, experiment=experiment,
                                     run_name=Path(out).stem, run_dir=run_dir)
    except Exception as e:  # noqa: BLE001 - an unreachable store, an unknown tracker
        print(f"searchlab meta-train: error: {e}", file=sys.stderr)
        return 2
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, desc=f"meta-train {cfg.optimizer} ", disable=quiet,
               file=sys.stderr, dynamic_ncols=True, unit="it")
    ema: list[float] = []

    def progress(done: int, total: int, loss: float) -> None:
        if bar.n == 0 and done > 1:
            bar.update(done - 1)            # resumed
        bar.update(1)
        if math.isfinite(loss):
            ema[:] = [loss if not ema else 0.9 * ema[0] + 0.1 * loss]
        bar.set_postfix_str(f"loss {ema[0]:.3f}" if ema else "loss -")

    try:
        path = meta_train(cfg, out, resume=resume, tracker=tracker, progress=progress)
    except ValueError as e:
        bar.close()
        print(f"searchlab meta-train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        bar.close()
        if hasattr(tracker, "abort"):
            tracker.abort("KILLED")
        print(f"interrupted; continue with resume=true out={out}", file=sys.stderr)
        return 130
    bar.close()
    from ..learned.files import load_learned

    meta = load_learned(path).meta
    print(f"saved {path}  ({meta['iterations']} meta-iterations, "
          f"{meta['cpu_seconds']:.1f} CPU-seconds)")
    where = tracker.where() if hasattr(tracker, "where") else None
    if where:
        print(f"MLflow: {where}", file=sys.stderr)
    print(f"evaluate it: searchlab evaluate learned:{path} --task mnist1d", file=sys.stderr)
    return 1 if getattr(tracker, "error", None) else 0
