"""The reward protocol: fidelities, the training loops and the ``Evaluator``.

Public API (also importable from :mod:`searchlab.evaluate`)::

    from searchlab.evaluation import Evaluator, RewardCache, FIDELITIES, Fidelity, get_fidelity

Names are imported on first use: ``searchlab.evaluation.fidelity`` (the fidelity
registry, which config validation reads) does not import torch; the training modules do.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> module that defines it
_WHERE = {
    "RewardCache": "searchlab.cache", "default_cache_path": "searchlab.cache",
    "Probe": "searchlab.fingerprint", "fingerprint": "searchlab.fingerprint",
    "probe": "searchlab.fingerprint",
    "TRAINING_ERRORS": "searchlab.evaluation.protocol",
    "Evaluator": "searchlab.evaluation.evaluator",
    "FIDELITIES": "searchlab.evaluation.fidelity", "PAPER_LRS": "searchlab.evaluation.fidelity",
    "Fidelity": "searchlab.evaluation.fidelity", "get_fidelity": "searchlab.evaluation.fidelity",
    "CopyTrainer": "searchlab.evaluation.protocol", "Timeout": "searchlab.evaluation.protocol",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
