"""Re-scoring: what a user actually gets from a search, measured on fresh seeds.

The best reward a search saw is biased upward: it is the maximum of many noisy rewards,
all measured with the search's one ``eval_seed``.  After a search its top-k rules are
evaluated again on ``n`` *fresh* evaluation seeds (:func:`fresh_seeds`: disjoint from the
search's), each time scoring the validation split (the reward protocol, unchanged) and the
final model on the held-out **test** split, which no search ever reads.  Reference
optimizers (SGD, momentum, Adam, RMSProp, PowerSign, AddSign) are scored the same way in
comparisons, so a reader sees at a glance whether a search beat them.

Selection never looks at the test split: the rules are chosen by search-time reward
(:func:`searchlab.runfiles.best_results`), and the rows report test accuracy beside the
validation reward, ranked by nothing.  Evaluations go through the reward cache (keyed by
seed), so re-scoring the same rule on the same seeds again costs nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from .result import FLOOR_REWARD, Result

if TYPE_CHECKING:
    from .executors import Executor
    from .interfaces import Evaluator

__all__ = ["REFERENCE_RULES", "RESCORE_OFFSET", "Rescored", "RescoreTask", "fresh_seeds",
           "from_results", "parse_reference", "rescore", "rescored_markdown"]

#: fresh seeds start this far from the search's eval_seed (searches use small seeds)
RESCORE_OFFSET = 1_000_000

#: hand-designed optimizers scored beside every comparison (name -> rule)
REFERENCE_RULES: dict[str, str] = {
    "SGD": "g",
    "momentum": "m",
    "Adam": "adam",
    "RMSProp": "rmsprop",
    "PowerSign": "exp(sign(g)*sign(m))*g",
    "AddSign": "(1+sign(g)*sign(m))*g",
}


def fresh_seeds(eval_seed: int, n: int) -> list[int]:
    """``n`` evaluation seeds disjoint from ``eval_seed`` (and from any seed a search
    uses, which are below :data:`RESCORE_OFFSET`)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [RESCORE_OFFSET + 1000 * int(eval_seed) + j for j in range(n)]


@dataclass(frozen=True)
class RescoreTask:
    """The picklable callable an executor maps over ``(rule text, seed)`` pairs: one
    evaluation with the held-out test split scored too (``evaluate(..., test=True)``)."""

    evaluator: Any

    def __call__(self, item: tuple[str, int]) -> Result:
        rule, seed = item
        try:
            return self.evaluator.evaluate(rule, seed, test=True)
        except Exception as e:  # noqa: BLE001 - a bad evaluator must not kill the report
            return Result(rule=rule, key="", reward=FLOOR_REWARD, status="error", seed=seed,
                          message=f"{type(e).__name__}: {e}")


def _stats(xs: Sequence[float]) -> tuple[float, float]:
    a = np.array([x for x in xs if isinstance(x, (int, float)) and math.isfinite(x)], float)
    if a.size == 0:
        return math.nan, math.nan
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


@dataclass(frozen=True)
class Rescored:
    """One rule re-scored on fresh seeds (validation = the reward; test = held out)."""

    name: str                          # "rank 1", or a reference optimizer's name
    rule: str
    search_reward: float               # what the search saw (NaN for references)
    seeds: tuple[int, ...]
    val: tuple[float, ...]             # reward per fresh seed
    test: tuple[float, ...]            # held-out test accuracy per fresh seed
    statuses: tuple[str, ...]
    best_lrs: tuple[float | None, ...]
    cpu_seconds: float                 # compute of the re-scoring trainings
    #: compute spent to *discover* the rule: 0 for hand-designed optimizers, meta-training
    #: CPU-seconds for a learned optimizer, a search's summed child-training CPU-seconds
    discovery_cpu_seconds: float = 0.0

    @property
    def val_mean(self) -> float:
        return _stats(self.val)[0]

    @property
    def val_std(self) -> float:
        return _stats(self.val)[1]

    @property
    def test_mean(self) -> float:
        return _stats(self.test)[0]

    @property
    def test_std(self) -> float:
        return _stats(self.test)[1]

    def row(self) -> dict[str, Any]:
        return {"name": self.name, "rule": self.rule, "search_reward": self.search_reward,
                "val_mean": self.val_mean, "val_std": self.val_std,
                "test_mean": self.test_mean, "test_std": self.test_std,
                "seeds": list(self.seeds), "val": list(self.val), "test": list(self.test),
                "statuses": list(self.statuses), "best_lrs": list(self.best_lrs),
                "cpu_seconds": self.cpu_seconds,
                "discovery_cpu_seconds": self.discovery_cpu_seconds}


def rescore(evaluator: "Evaluator", rules: Mapping[str, str] | Iterable[tuple[str, str]],
            seeds: Sequence[int], *, executor: "Executor | None" = None,
            search_rewards: Mapping[str, float] | None = None) -> list[Rescored]:
    """Evaluate every ``(name, rule)`` on every seed of ``seeds`` with the test split
    scored; ``executor`` runs the evaluations (serial by default).  The evaluator must
    accept ``evaluate(rule, seed, test=True)`` and report ``extra["test_reward"]``."""
    from .executors import SerialExecutor

    pairs = list(rules.items()) if isinstance(rules, Mapping) else list(rules)
    items = [(rule, int(s)) for _, rule in pairs for s in seeds]
    ex = executor or SerialExecutor()
    results = list(ex.map(RescoreTask(evaluator), items)) if items else []
    out = []
    k = len(seeds)
    for j, (name, rule) in enumerate(pairs):
        rs = results[j * k:(j + 1) * k]
        test = tuple(float(r.extra.get("test_reward", math.nan)) if r.ok else math.nan
                     for r in rs)
        out.append(Rescored(
            name=name, rule=rule,
            search_reward=float((search_rewards or {}).get(name, math.nan)),
            seeds=tuple(int(s) for s in seeds), val=tuple(float(r.reward) for r in rs),
            test=test, statuses=tuple(r.status for r in rs),
            best_lrs=tuple(r.best_lr for r in rs),
            cpu_seconds=float(sum(float(r.extra.get("cpu_seconds", 0.0) or 0.0)
                                  for r in rs if not r.cached))))
    return out


def _f(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:.4f}"


def rescored_markdown(rows: Sequence[Rescored], title: str) -> str:
    """A Markdown table of re-scored rules (mean +- std over the fresh seeds)."""
    if not rows:
        return ""
    seeds = len(rows[0].seeds)
    lines = [f"### {title}", "",
             f"Re-scored on {seeds} fresh evaluation seeds (disjoint from the search's); "
             "validation = the reward protocol, test = the held-out split no search reads.",
             "", "| name | search reward | val mean +- std | test mean +- std | discovery "
             "CPU-s | rule |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r.name} | {_f(r.search_reward)} | {_f(r.val_mean)} +- "
                     f"{_f(r.val_std)} | {_f(r.test_mean)} +- {_f(r.test_std)} | "
                     f"{r.discovery_cpu_seconds:.0f} | `{r.rule}` |")
    return "\n".join(lines) + "\n"


def from_results(name: str, rule: str, results: Sequence[Result], *,
                 discovery_cpu_seconds: float = 0.0) -> Rescored:
    """A :class:`Rescored` row from evaluations already made (one per fresh seed), e.g. a
    learned optimizer's (:func:`searchlab.learned.reference_row`)."""
    return Rescored(
        name=name, rule=rule, search_reward=math.nan, seeds=tuple(r.seed for r in results),
        val=tuple(float(r.reward) for r in results),
        test=tuple(float(r.extra.get("test_reward", math.nan)) if r.ok else math.nan
                   for r in results),
        statuses=tuple(r.status for r in results), best_lrs=tuple(r.best_lr for r in results),
        cpu_seconds=float(sum(float(r.extra.get("cpu_seconds", 0.0) or 0.0) for r in results)),
        discovery_cpu_seconds=float(discovery_cpu_seconds))


def parse_reference(spec: str) -> tuple[str, str]:
    """``(name, what)`` of a ``references`` entry: ``name=rule``, a rule text (named by
    itself), or ``learned:<file or kind>`` (named by the file's stem)."""
    spec = spec.strip()
    if spec.startswith("learned:"):
        target = spec[len("learned:"):]
        return (target.rsplit("/", 1)[-1].removesuffix(".pt") or target, spec)
    name, sep, rule = spec.partition("=")
    if sep and name.strip() and "(" not in name:
        return name.strip(), rule.strip()
    return spec, spec
