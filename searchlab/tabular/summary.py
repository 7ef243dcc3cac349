"""What a table's space looks like: the reward distribution of its functions, the share
of functions above reference rules, and its best rules with their held-out test accuracy.

:func:`summarize_table` computes it from a loaded :class:`~searchlab.tabular.table.Table`
(a partial one too: only rows with records count, and the summary says how many);
:func:`summary_markdown` and :func:`plot_histogram` present it.  ``searchlab table
describe`` prints it.

A row's *reward* is the mean validation reward over the seeds it was evaluated on
(functions that diverged at every lr count at the floor reward, as in a search); its
*test* the mean held-out test accuracy.  The top rules are ranked by validation reward
only, so their test column is the unbiased one (the build never reads test for
selection).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..dsl import Rule
from .table import OutsideTableError, Row, Table

__all__ = ["REFERENCES", "Reference", "SpaceSummary", "TopRule", "plot_histogram",
           "summarize_table", "summary_markdown"]

#: the reference rules a space is measured against (name -> rule text); rules outside
#: the space are answered by the table's extra rows or reported as missing
REFERENCES: dict[str, str] = {"SGD": "g", "momentum": "m", "Adam": "adam",
                              "PowerSign": "exp(sign(g)*sign(m))*g",
                              "AddSign": "(1+sign(g)*sign(m))*g"}


@dataclass(frozen=True)
class Reference:
    name: str
    rule: str
    seeds: int                 # records behind the numbers (0: not answered yet)
    reward: float              # mean validation reward (NaN without records)
    test: float
    share_above: float         # share of measured rows whose reward is strictly higher
    in_space: bool             # a row of the space (else an extra row, or missing)


@dataclass(frozen=True)
class TopRule:
    rank: int
    rule: str
    seeds: int
    reward: float
    reward_std: float          # over its seeds (NaN with one seed)
    test: float
    best_lr: float | None      # of its first record


@dataclass(frozen=True)
class SpaceSummary:
    name: str
    complete: bool
    rows: int                  # functions of the space
    measured: int              # rows with at least one record
    records_per_seed: Mapping[int, int]
    statuses: Mapping[str, int]     # records by status
    rewards: np.ndarray        # reward per measured row
    references: tuple[Reference, ...]
    top: tuple[TopRule, ...]


def summarize_table(table: Table, references: Mapping[str, str] = REFERENCES,
                    top: int = 20) -> SpaceSummary:
    """The summary of ``table`` (see the module docstring)."""
    measured = [r for r in table.rows if r.records]
    rewards = np.array([r.mean_reward for r in measured], dtype=float)
    seeds: dict[int, int] = {}
    statuses: dict[str, int] = {}
    for row in measured:
        for rec in row.records:
            seeds[rec.seed] = seeds.get(rec.seed, 0) + 1
            statuses[rec.status] = statuses.get(rec.status, 0) + 1
    row_ids = {id(r) for r in table.rows}
    refs = []
    for name, text in references.items():
        try:
            row = table.lookup(Rule.parse(text))
        except OutsideTableError:
            row = None
        if not isinstance(row, Row):        # outside, or an invalid rule of the space
            refs.append(Reference(name, text, 0, math.nan, math.nan, math.nan, False))
            continue
        value = row.mean_reward
        share = float(np.mean(rewards > value)) if row.records and rewards.size else math.nan
        refs.append(Reference(name, text, len(row.records), value, row.mean_test, share,
                              id(row) in row_ids))
    order = sorted(range(len(measured)), key=lambda i: (-rewards[i], measured[i].rule))[:top]
    best = tuple(
        TopRule(k, measured[i].rule, len(measured[i].records), float(rewards[i]),
                float(np.std([r.reward for r in measured[i].records], ddof=1))
                if len(measured[i].records) > 1 else math.nan,
                measured[i].mean_test, measured[i].records[0].best_lr)
        for k, i in enumerate(order, 1))
    return SpaceSummary(table.name, table.complete, len(table.rows), len(measured),
                        dict(sorted(seeds.items())), dict(sorted(statuses.items())), rewards,
                        tuple(refs), best)


def _f(x: float, digits: int = 3) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def summary_markdown(s: SpaceSummary, bins: Sequence[float] = tuple(np.linspace(0, 1, 11))
                     ) -> str:
    """The summary as Markdown: coverage, histogram counts, references, top rules."""
    state = "complete" if s.complete else "PARTIAL (a table still being built)"
    per_seed = ", ".join(f"seed {k}: {v:,}" for k, v in s.records_per_seed.items()) or "none"
    status = ", ".join(f"{k} {v:,}" for k, v in s.statuses.items()) or "none"
    lines = [f"Table `{s.name}`, {state}: {s.measured:,} of {s.rows:,} functions measured "
             f"(records: {per_seed}; by status: {status}).", ""]
    counts, edges = np.histogram(s.rewards, bins=np.asarray(bins, dtype=float))
    lines += ["| reward | functions | share |", "|---|---:|---:|"]
    for c, lo, hi in zip(counts, edges[:-1], edges[1:]):
        share = c / s.measured if s.measured else math.nan
        lines.append(f"| [{lo:.1f}, {hi:.1f}{']' if hi == edges[-1] else ')'} | {c:,} | "
                     f"{_f(share)} |")
    lines += ["", "| reference | rule | seeds | val | test | share of functions above (val) |",
              "|---|---|---:|---:|---:|---:|"]
    for r in s.references:
        where = "" if r.in_space else (" (extra row)" if r.seeds else " (not in the table)")
        lines.append(f"| {r.name}{where} | `{r.rule}` | {r.seeds} | {_f(r.reward)} | "
                     f"{_f(r.test)} | {_f(r.share_above)} |")
    lines += ["", f"Top {len(s.top)} functions by validation reward (test: never used to rank):",
              "", "| rank | rule | seeds | val mean | val std | test mean | best lr (seed 0) |",
              "|---:|---|---:|---:|---:|---:|---:|"]
    for t in s.top:
        lr = f"{t.best_lr:.0e}" if t.best_lr is not None else "-"
        lines.append(f"| {t.rank} | `{t.rule}` | {t.seeds} | {_f(t.reward)} | "
                     f"{_f(t.reward_std)} | {_f(t.test)} | {lr} |")
    return "\n".join(lines) + "\n"


def plot_histogram(s: SpaceSummary, path: str | os.PathLike[str]) -> Path:
    """A histogram of the rows' rewards with the references as vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(s.rewards, bins=np.linspace(0, 1, 51), color="0.55")
    ax.set_yscale("log")
    for k, r in enumerate(x for x in s.references if math.isfinite(x.reward)):
        ax.axvline(r.reward, color=f"C{k}", lw=1.2,
                   label=f"{r.name} {r.reward:.3f} ({100 * r.share_above:.1f} % above)")
    state = "" if s.complete else f", partial: {s.measured:,} of {s.rows:,}"
    ax.set(xlabel="validation reward (mean over the row's seeds)", ylabel="functions",
           title=f"table {s.name}{state}")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
