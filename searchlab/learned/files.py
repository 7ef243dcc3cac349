"""Saved learned optimizers: meta-parameters and what it cost to find them, in one file.

``save_learned(path, model, meta)`` writes, with ``torch.save``, a dict of plain data::

    {"format": "searchlab-learned/1", "kind": "hrnn", "config": {...},
     "state_dict": {name: tensor}, "meta": {"cpu_seconds": ..., "iterations": ...,
     "task": ..., "seed": ..., "default_lr": ..., "losses": [...], ...}}

``load_learned(path)`` reads it back with ``torch.load(weights_only=True)`` (no pickled
code is ever executed) and rebuilds the model from ``kind`` and ``config`` through the
:data:`~searchlab.learned.base.MODELS` registry.  ``meta["cpu_seconds"]`` is the
meta-training's CPU time (the discovery compute that comparison reports show).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .base import MODELS, LearnedModel

__all__ = ["FORMAT", "Learned", "build_model", "file_digest", "load_learned", "save_learned"]

FORMAT = "searchlab-learned/1"


@dataclass
class Learned:
    """A loaded learned optimizer: its model, metadata and where it came from."""

    model: LearnedModel
    meta: dict[str, Any] = field(default_factory=dict)
    path: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        return self.meta.get("name") or (Path(self.path).stem if self.path else self.model.kind)

    @property
    def cpu_seconds(self) -> float:
        return float(self.meta.get("cpu_seconds", 0.0))

    @property
    def default_lr(self) -> float:
        return float(self.meta.get("default_lr", 1e-3))


def build_model(kind: str, **config: Any) -> LearnedModel:
    """A fresh (untrained) model of a registered kind."""
    return MODELS.get(kind)(**config)


def _plain(value: Any) -> Any:
    """Only types ``torch.load(weights_only=True)`` accepts (floats, ints, str, lists...)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None or isinstance(value, torch.Tensor):
        return value
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)


def save_learned(path: str | os.PathLike[str], model: LearnedModel,
                 meta: dict[str, Any] | None = None) -> Path:
    """Write ``model`` and ``meta`` to ``path`` (atomically: a temporary file renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "kind": model.kind, "config": _plain(model.config),
               "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
               "meta": _plain(meta or {})}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def file_digest(path: str | os.PathLike[str]) -> str:
    h = hashlib.blake2b(Path(path).read_bytes(), digest_size=8)
    return h.hexdigest()


def load_learned(path: str | os.PathLike[str]) -> Learned:
    """The learned optimizer saved in ``path`` (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no learned optimizer file {str(path)!r}")
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a searchlab learned optimizer file (format {FORMAT})")
    model = build_model(data["kind"], **data["config"])
    floats = [v.dtype for v in data["state_dict"].values() if v.is_floating_point()]
    if floats:
        model.to(floats[0])              # the dtype it was trained in (float64 usually)
    model.load_state_dict(data["state_dict"])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Learned(model, dict(data.get("meta", {})), str(path), file_digest(path))
