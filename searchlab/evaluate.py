"""The reward of a rule: ``Evaluator(task, fidelity).evaluate(rule, seed)``.

A thin re-export of :mod:`searchlab.evaluation` (see :mod:`searchlab.evaluation.evaluator`
for the full contract, :mod:`searchlab.evaluation.fidelity` for the protocols and
:mod:`searchlab.cache` for the reward cache)::

    from searchlab.evaluate import Evaluator
    Evaluator("mnist1d", "fast").evaluate("exp(sign(g)*sign(m))*g", seed=0).reward
"""

from .evaluation import (
    FIDELITIES,
    PAPER_LRS,
    TRAINING_ERRORS,
    CopyTrainer,
    Evaluator,
    Fidelity,
    Probe,
    RewardCache,
    Timeout,
    default_cache_path,
    fingerprint,
    get_fidelity,
    probe,
)
from .tasks import TASKS, DataNotFoundError, get_task

__all__ = [
    "CopyTrainer", "DataNotFoundError", "Evaluator", "FIDELITIES", "Fidelity", "PAPER_LRS",
    "Probe", "RewardCache", "TASKS", "TRAINING_ERRORS", "Timeout", "default_cache_path",
    "fingerprint", "get_fidelity", "get_task", "probe",
]
