"""Fidelities: how much training one reward costs (paper section 4.2).

``paper`` is the published protocol: for each lr in 10^-5 .. 10^1 (7 values) train one
epoch on 10,000 training examples; retrain the best lr for 5 epochs; the reward is the
accuracy on a fixed held-out validation set of 5,000 examples; batch size 100.  The
paper does not say on how many examples the 5 final epochs run; we read "train our child
network for 5 epochs" as the whole training split (45,000 CIFAR-10 images after holding
out the validation set), the 10,000-example limit being stated for the sweep only.
``paper+final_examples=10000`` is the other reading.

``fast`` and ``smoke`` are documented reductions (table below); every field can be
overridden and the name then says so (``fast+final_epochs=5``), which is what results,
MLflow tags and the reward cache record.  Sizes larger than a task's splits
are capped at the split size (MNIST-1D has 8,000 training and 2,000 validation signals).

=========  =================  ============  ============  ==========  =====  =============
fidelity   lrs                sweep         final         validation  batch  problem steps
=========  =================  ============  ============  ==========  =====  =============
paper      1e-5 .. 1e1 (7)    1 ep x 10000  5 ep x all    5000        100    4000
fast       1e-5 .. 1e1 (7)    1 ep x 4000   3 ep x 4000   2000        100    400
compare    1e-5 .. 1e1 (7)    1 ep x 4000   6 ep x 4000   2000        100    400
averaged   1e-5 .. 1e1 (7)    1 ep x 4000   6 ep x 4000   2000        100    400
smoke      1e-3, 1e-2, 1e-1   1 ep x 1000   2 ep x 1000   500         100    100
=========  =================  ============  ============  ==========  =====  =============

``averaged``, the default of ``search`` and ``compare``, is ``compare`` with the selection
between its two final lrs made after 3 of the 6 final epochs (``select_epochs=3``) and the
reward (and the selection) taken from the mean of the weights of the last 80 steps, two
epochs (``average_steps=80``, below).  Measured over 6 seeds on the 8 reference rules on
an Intel Xeon (BENCHMARKS.md, "Reward noise and the comparison fidelity"): a standard deviation of
0.008 (median) and 0.019 (max) at ~1.85x the CPU time of ``fast``; ``compare`` gave 0.013
and 0.084 on the same machine, its max from SGD's lr selection flipping after 2 epochs.

``compare`` is a protocol for comparing strategies on mnist1d (BENCHMARKS.md, "Reward
noise and the comparison fidelity", measured why; it was the default before
``averaged``, and the mnist1d verdict and the tabular benchmark's table are at it).  It is the paper's reward (validation accuracy after a final
run with the sweep's best lr) with three documented changes, fields that are off (0 or 1)
in the other fidelities:

``bn_examples=1000``  before every validation the batch-norm statistics of each copy are
    recomputed from its current weights on the first 1,000 training examples of the run
    ("precise BN"; training is unchanged).  The running averages lag behind weights that
    move fast at a large lr: recomputing them adds 0.01-0.02 accuracy, lowers the spread
    over seeds and halves the depth of the one-epoch drops (0.70 -> 0.39) of the last
    iterate.
``final_lrs=2, select_epochs=2``  the sweep's two best lrs both continue into the final
    run (stacked, the same seeds); after 2 epochs the better of them (the sweep's ranking
    rule) goes on alone.  The 1-epoch sweep flips between neighbouring grid points (SGD:
    lr 1 in 4 of 6 seeds, 0.1 in 2; 0.85 or 0.69 after 6 epochs); one more epoch settles
    most of these.  ``select_epochs=0`` keeps both to the end of the final run and
    reports the better (steadier across thread counts, 2.1x ``fast``).
``final_epochs=6``  a longer final run: its accuracy varies less between seeds.

``final_copies`` (1 here) trains that many final runs at the chosen lr, copy ``j`` with
seeds of its own, and reports the mean of their accuracies: ``compare+final_copies=3``
reaches a standard deviation over seeds of 0.010 (median over 8 rules) at ~3.5x the CPU
time of ``fast``; ``compare`` itself costs ~1.7x with 0.015.

``average_steps`` (0 here; BENCHMARKS.md, "Reward noise") scores the mean of the weights
over the final run's last ``average_steps`` steps (Polyak-Ruppert tail averaging) instead
of the last iterate, with batch-norm statistics recomputed for the averaged weights (so it
needs ``bn_examples``). A selection among ``final_lrs`` judges each lr the same way, by
the mean of its last ``average_steps`` iterates before the selection; training goes on
from the chosen lr's iterate, so training itself is unchanged. Neither window reaches
back past a mid-run selection (both are clamped to the steps on their side of it:
``Result.extra["averaged_steps"]``), and a window that would reach into the sweep makes
the final run start afresh instead of continuing the sweep run. Population training
(:mod:`searchlab.evaluation.population`) keeps the same windows for each rule's rows.

Problem tasks (``rosenbrock``, ``ensemble``) run ``problem_steps`` steps per lr (paper
6.1 ran Rosenbrock for 4,000 iterations) and use only ``lrs`` and ``problem_steps``
(``compare`` and ``averaged`` score them exactly as ``fast`` does).

When the final run would replay the sweep run of the best lr exactly (same examples and
batch size, no decay operand, whose schedule depends on the run's length), the evaluator
continues that run instead of retraining it from scratch: the same numbers for fewer
steps (``Result.extra["continued"]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..registry import Registry

__all__ = ["FIDELITIES", "Fidelity", "PAPER_LRS", "get_fidelity"]

#: 10^i for i = -5 .. 1 (paper 4.2)
PAPER_LRS: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)

#: fields that do not change an ok result (not part of the protocol name)
_NOT_IN_NAME = frozenset({"name", "base", "time_limit", "doc"})


@dataclass(frozen=True)
class Fidelity:
    """One evaluation protocol (all sizes in examples; None = the whole split)."""

    name: str                                   # name as shown (config may set "fast+...")
    lrs: tuple[float, ...] = PAPER_LRS          # learning-rate grid of the sweep
    sweep_examples: int | None = 10_000         # training examples of each sweep run
    sweep_epochs: int = 1                       # epochs of each sweep run
    final_examples: int | None = None           # training examples of the final run
    final_epochs: int = 5                       # epochs of the final run with the best lr
    val_examples: int | None = 5_000            # validation examples (sweep choice, reward)
    batch_size: int = 100                       # minibatch size
    problem_steps: int = 4_000                  # steps per lr on problem tasks
    bn_examples: int | None = 0                 # recompute BN statistics on this many training
                                                # examples before each validation (0: off)
    final_lrs: int = 1                          # best sweep lrs that start the final run
    select_epochs: int = 0                      # final epochs after which the best of them is
                                                # kept (0: at the end of the final run)
    final_copies: int = 1                       # final runs (seeded copies) averaged for the reward
    average_steps: int = 0                      # score the mean of the weights over the final
                                                # run's last N steps (0: the last iterate)
    time_limit: float | None = None             # seconds per evaluation (None: no limit)
    base: str = ""                              # registered fidelity this derives from
    doc: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen)
        lrs = self.lrs
        if isinstance(lrs, (int, float)):
            lrs = (lrs,)
        set_("lrs", tuple(float(x) for x in lrs))
        if not self.lrs or any(not (x > 0) for x in self.lrs):
            raise ValueError(f"lrs must be positive numbers, got {self.lrs}")
        for k in ("sweep_examples", "final_examples", "val_examples"):
            v = getattr(self, k)
            if v is not None:
                set_(k, int(v))
                if int(v) < 1:
                    raise ValueError(f"{k} must be >= 1 or None, got {v}")
        for k in ("sweep_epochs", "final_epochs", "batch_size", "problem_steps",
                  "final_lrs", "final_copies"):
            set_(k, int(getattr(self, k)))
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.bn_examples is not None:
            set_("bn_examples", int(self.bn_examples))
            if self.bn_examples < 0:
                raise ValueError(f"bn_examples must be >= 0 or None, got {self.bn_examples}")
        set_("average_steps", int(self.average_steps))
        if self.average_steps < 0:
            raise ValueError(f"average_steps must be >= 0, got {self.average_steps}")
        if self.average_steps and self.bn_examples == 0:
            raise ValueError("average_steps needs recomputed batch-norm statistics for the "
                             "averaged weights: set bn_examples > 0 (or None) too")
        set_("select_epochs", int(self.select_epochs))
        if not 0 <= self.select_epochs <= self.final_epochs:
            raise ValueError(f"select_epochs must be in 0..final_epochs ({self.final_epochs}), "
                             f"got {self.select_epochs}")
        if self.time_limit is not None:
            set_("time_limit", float(self.time_limit))
        if not self.base:
            set_("base", self.name.split("+", 1)[0])

    @property
    def key(self) -> str:
        """The protocol's name derived from its fields: the base name plus every field
        that differs from the registered base (``fast+final_epochs=5``).  Used in cache
        keys, so two fidelities with equal protocols share rewards whatever their label."""
        base = FIDELITIES.get(self.base) if self.base in FIDELITIES else None
        diffs = []
        for f in fields(self):
            if f.name in _NOT_IN_NAME:
                continue
            v = getattr(self, f.name)
            if base is None or getattr(base, f.name) != v:
                diffs.append(f"{f.name}={_fmt(v)}")
        return self.base + ("+" + ",".join(diffs) if diffs else "")

    def with_(self, **changes: Any) -> "Fidelity":
        """A copy with fields changed; its name then records the changes."""
        out = replace(self, **changes)
        return replace(out, name=out.key)

    def __str__(self) -> str:
        return self.key


def _fmt(v: Any) -> str:
    if isinstance(v, tuple):
        return "/".join(_fmt(x) for x in v)
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _parse_value(field_name: str, text: str) -> Any:
    if field_name == "lrs":
        return tuple(float(x) for x in text.split("/") if x)
    if text in ("None", "none", "all"):
        return None
    if field_name == "time_limit":
        return float(text)
    return int(float(text))


FIDELITIES: Registry[Fidelity] = Registry("fidelity")

FIDELITIES.register("paper")(Fidelity(
    "paper", PAPER_LRS, sweep_examples=10_000, sweep_epochs=1, final_examples=None,
    final_epochs=5, val_examples=5_000, batch_size=100, problem_steps=4_000,
    time_limit=3600.0, doc="the published protocol (paper 4.2)"))
FIDELITIES.register("fast")(Fidelity(
    "fast", PAPER_LRS, sweep_examples=4_000, sweep_epochs=1, final_examples=4_000,
    final_epochs=3, val_examples=2_000, batch_size=100, problem_steps=400,
    time_limit=600.0, doc="a reduction for searches: ~1-2 s per rule on mnist1d"))
FIDELITIES.register("compare")(Fidelity(
    "compare", PAPER_LRS, sweep_examples=4_000, sweep_epochs=1, final_examples=4_000,
    final_epochs=6, val_examples=2_000, batch_size=100, problem_steps=400,
    bn_examples=1_000, final_lrs=2, select_epochs=2, final_copies=1,
    time_limit=900.0, doc="fast's sweep, recomputed BN statistics, the two best lrs into a "
                          "6-epoch final run: for comparisons, ~1.7x fast"))
FIDELITIES.register("averaged")(Fidelity(
    "averaged", PAPER_LRS, sweep_examples=4_000, sweep_epochs=1, final_examples=4_000,
    final_epochs=6, val_examples=2_000, batch_size=100, problem_steps=400,
    bn_examples=1_000, final_lrs=2, select_epochs=3, final_copies=1, average_steps=80,
    time_limit=900.0, doc="compare's runs, the lr kept after 3 final epochs, scored on the "
                          "mean weights of the last 2: the default, ~1.85x fast"))
FIDELITIES.register("smoke")(Fidelity(
    "smoke", (1e-3, 1e-2, 1e-1), sweep_examples=1_000, sweep_epochs=1, final_examples=1_000,
    final_epochs=2, val_examples=500, batch_size=100, problem_steps=100,
    time_limit=300.0, doc="the smallest protocol, for tests; not for conclusions"))


def get_fidelity(fidelity: "str | Fidelity") -> Fidelity:
    """A fidelity by name; ``"fast+final_epochs=5,lrs=0.001/0.01"`` overrides fields."""
    if isinstance(fidelity, Fidelity):
        return fidelity
    base, _, opts = str(fidelity).partition("+")
    fid = FIDELITIES.get(base)
    if not opts:
        return fid
    valid = [f.name for f in fields(Fidelity) if f.name not in ("name", "base", "doc")]
    changes: dict[str, Any] = {}
    for item in opts.split(","):
        k, sep, v = item.partition("=")
        k = k.strip()
        if not sep or k not in valid:
            raise ValueError(f"bad fidelity override {item!r} in {fidelity!r}; "
                             f"write name+field=value,...; fields: {', '.join(valid)}")
        try:
            changes[k] = _parse_value(k, v.strip())
        except ValueError:
            kind = ("numbers separated by '/', e.g. lrs=0.001/0.01/0.1" if k == "lrs" else
                    "a number" if k == "time_limit" else "a whole number (or None)")
            raise ValueError(f"bad value {v.strip()!r} for fidelity field {k!r} in "
                             f"{fidelity!r}: expected {kind}") from None
    return fid.with_(**changes)
