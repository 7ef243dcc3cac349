"""Learned optimizers: the hierarchical RNN of Wichrowska et al. 2017 and the
normalized-input and multiscale-Adam optimizers of Shahid 2017, meta-trained on the
problem ensemble and scored by the same reward protocol as update rules.

=====================  ================================================================
module                 its one job
=====================  ================================================================
``base``               the ``LearnedModel`` interface, the GRU cell, the ``MODELS`` registry
``hrnn``               the hierarchical RNN (``hrnn``)
``normalized``         normalized inputs, k timesteps / k momentums (``ni-steps``, ``ni-momentums``)
``multiscale``         multiscale Adam: LWA a/b/c, MLP, RNN (``lwa-a`` ... ``msadam-rnn``)
``optimizer``          ``LearnedOptimizer``: a model as a ``torch.optim.Optimizer``
``files``              save / load meta-parameters (``torch.load(weights_only=True)``)
``distribution``       the meta-training distribution of problem runs
``metatrain``          truncated backpropagation through unrolls, checkpoint / resume
``tracking``           meta-training losses to MLflow through searchlab's tracker
``scoring``            the reward protocol for a learned optimizer; ``reference_row``
=====================  ================================================================

Light to import: the submodules load when used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LearnedOptimizer", "MODELS", "build_model", "load_learned", "meta_train",
           "reference_row", "save_learned", "score_learned"]

_WHERE = {"LearnedOptimizer": "optimizer", "MODELS": "base", "build_model": "files",
          "load_learned": "files", "save_learned": "files", "meta_train": "metatrain",
          "reference_row": "scoring", "score_learned": "scoring"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
