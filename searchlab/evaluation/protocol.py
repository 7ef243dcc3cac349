"""The reward protocol (paper section 4.2; docs/ARCHITECTURE.md): lr sweep, final run, scoring.

Classification tasks.  :class:`CopyTrainer` trains ``K`` copies of the task's network
(one per learning rate) in one pass: the copies share every minibatch, their parameters
are stacked ``[K, ...]`` and updated by the compiled rule with a per-copy lr
(``p -= lr_k * u``).  ``K = 1`` is the sequential path (one lr at a time), which applies
the update with :meth:`~searchlab.optim.CompiledRule.apply_update` exactly as
:class:`~searchlab.optim.RuleOptimizer` does.  Both paths use, for every lr, the same
initial weights (seeded), the same data order (a seeded permutation per epoch, gathered
once per epoch, no DataLoader) and the same noise seed for the rule; they agree up to
float rounding for deterministic rules (stochastic rules draw their noise for the K
copies at once in the batched path).

Divergence (docs/ARCHITECTURE.md, statuses): after every step the K losses are checked; a copy whose loss is
NaN/inf, or above ``DIVERGENCE_FACTOR`` (1000) times the loss of its first step, stops at
once (it is dropped from the stack; the others go on).  The second test catches runs that
explode without overflowing: ``g/0`` is ``g/1e-8 = 1e8*g`` (paper 4.2's delta), and its
losses reach 1e4..1e30 at every lr of the grid while staying finite in float32.  At every
validation a copy with a weight above ``PARAM_LIMIT`` (1e6) in magnitude counts as
diverged too: constant huge updates such as ``1/0 = 1e8`` can leave a batch-normalised
network with finite, flat losses (equal logits) whose value depends on float rounding.
A sweep where every lr diverged, or a final run that diverged, scores ``diverged``.  The deadline
(per-evaluation time limit) is checked between steps and raises :class:`Timeout`.

Comparison options (fidelity fields, off in ``paper``/``fast``/``smoke``; see
:mod:`searchlab.evaluation.fidelity`): ``bn_examples`` recomputes every copy's batch-norm
statistics from its current weights before each validation
(:meth:`CopyTrainer.refresh_bn`); ``final_lrs``/``select_epochs`` carry the sweep's best
lrs into the final run and keep the best of them after ``select_epochs`` epochs;
``final_copies`` averages the reward over final runs with seeds of their own
(``Seeds.of(seed, j)``).

Many rules at once: :func:`searchlab.evaluation.population.run_population` runs this
protocol for several rules in one stacked model (each rule's rows validated through a
:class:`CopyView`); :class:`CopyTrainer` and :func:`run_classification` stay the one-rule
reference it is tested against.

Problem tasks.  :func:`run_problems` runs every problem from its seeded starting point
for ``problem_steps`` steps with each lr (batched over lrs the same way) and scores the
normalised gap reduction (:mod:`searchlab.tasks.problems`).
"""

from __future__ import annotations

import math
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ContextManager, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..tasks.base import ClassificationTask, ProblemTask, Splits, StackedModel, derive_seed
from ..tasks.problems import ORDERS
from .fidelity import Fidelity

__all__ = ["CopyTrainer", "CopyView", "Outcome", "Seeds", "TRAINING_ERRORS", "TailAverage",
           "Timeout", "run_classification", "run_problems"]

#: errors a bad rule can raise while training (status ``error`` with the traceback);
#: anything else is caught too and reported as an unexpected error
TRAINING_ERRORS = (ValueError, TypeError, KeyError, ArithmeticError, RuntimeError,
                   IndexError, NotImplementedError)

VAL_CHUNK = 1000  # validation examples per forward pass
#: a training loss above this many times the first step's loss counts as diverged
DIVERGENCE_FACTOR = 1000.0
#: a copy with a weight of larger magnitude counts as diverged (checked at validation):
#: float32 rounds away any step below ~0.06 there, so training has stopped in effect;
#: sane rules stay far below it (lr 10 x |update| 1 x the paper's 2,700 steps = 2.7e4)
PARAM_LIMIT = 1e6


def _workspace() -> Any:
    from ..optim import Workspace

    return Workspace()


class Timeout(Exception):
    """The evaluation ran past its time limit."""


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.perf_counter() > deadline:
        raise Timeout()


@dataclass
class Seeds:
    """Independent seeded streams of one evaluation (ARCHITECTURE.md: explicit seeds)."""

    init: int
    order: int
    noise: int

    @classmethod
    def of(cls, seed: int, copy: int = 0) -> "Seeds":
        """The streams of evaluation ``seed``; copy ``j >= 1`` of a multi-copy final run
        (``Fidelity.final_copies``) gets streams of its own (``init/j``, ``order/j``, ...)."""
        if copy == 0:
            return cls(derive_seed(seed, "init"), derive_seed(seed, "order"),
                       derive_seed(seed, "noise"))
        return cls(derive_seed(seed, f"init/{copy}"), derive_seed(seed, f"order/{copy}"),
                   derive_seed(seed, f"noise/{copy}"))


class CopyView:
    """Validation and batch-norm refresh of ``k`` stacked copies of a task's network
    (``len(alive)`` rows of ``model``).  :class:`CopyTrainer` is one; the population
    trainer (:mod:`searchlab.evaluation.population`) makes one per rule over that rule's
    rows of the population's model, so each rule is validated exactly as alone."""

    def __init__(self, task: ClassificationTask, model: StackedModel, alive: Sequence[int],
                 batch_size: int = 100, bn_momenta: "list[float | None] | None" = None) -> None:
        self.task = task
        self.model = model
        self.alive = list(alive)
        self.batch_size = batch_size     # chunk floor of refresh_bn
        self._bn_momenta = bn_momenta

    @torch.no_grad()
    def validate(self, xv: Tensor, yv: Tensor) -> tuple[list[float], list[float]]:
        """Accuracy and mean loss of every surviving copy on prepared inputs ``xv``."""
        k = len(self.alive)
        if k == 0:
            return [], []
        correct = torch.zeros(k, dtype=torch.float64)
        loss = torch.zeros(k, dtype=torch.float64)
        chunk = max(1, self.task.eval_rows // k)  # keep activations in cache
        for lo in range(0, len(yv), chunk):
            xc, yc = xv[lo:lo + chunk], yv[lo:lo + chunk]
            logits = self.model.forward(xc, train=False)              # [k, n, classes]
            kk, nb, c = logits.shape
            ce = F.cross_entropy(logits.reshape(kk * nb, c), yc.repeat(kk), reduction="none")
            loss += ce.view(kk, nb).sum(1).double()
            correct += (logits.argmax(-1) == yc).sum(1).double()
        n = len(yv)
        loss /= n
        loss[self.exploded()] = math.inf  # diverged: see PARAM_LIMIT
        return (correct / n).tolist(), loss.tolist()

    @torch.no_grad()
    def exploded(self) -> Tensor:
        """``[k]`` bool: copies with a weight above ``PARAM_LIMIT`` in magnitude (or NaN)."""
        big = torch.stack([p.detach().abs().flatten(1).amax(1) for p in self.model.params]).amax(0)
        return ~(big <= PARAM_LIMIT)

    @torch.no_grad()
    def refresh_bn(self, x: Tensor) -> None:
        """Replace every copy's running statistics (its batch-norm buffers) by the batch
        statistics of its current weights on the prepared training inputs ``x``
        ("precise BN"): the mean over chunks of ``max(batch size,
        eval_rows / k)`` examples of each chunk's train-mode statistics.

        The buffers are exponential running averages that the model's train-mode forward
        updates as ``b <- (1 - m) b + m s`` (torch's batch norm, ``m = 0.1``); ``m`` is
        read off once per trainer by running a two-example batch from buffers set to 0
        and to ``2**20`` (train-mode outputs never read the buffers), so each chunk's
        statistics are ``s = b / m`` after a forward from zeroed buffers.  Buffers the
        forward does not update that way are left as they are.  Training never reads the
        buffers, so the refresh changes validation only."""
        bufs = self.model.buffers
        if not bufs or not self.alive or len(x) == 0:
            return
        if self._bn_momenta is None:
            self._bn_momenta = self._probe_momenta(x[:2])
        saved = [b.clone() for b in bufs]
        total = [torch.zeros_like(b) for b in bufs]
        n = len(x)
        chunk = max(self.batch_size, self.task.eval_rows // len(self.alive))
        for lo in range(0, n, chunk):
            xc = x[lo:lo + chunk]
            for b in bufs:
                b.zero_()
            self.model.forward(xc, train=True)
            for t, b in zip(total, bufs):
                t.add_(b, alpha=len(xc) / n)
        for b, t, m, old in zip(bufs, total, self._bn_momenta, saved):
            b.copy_(t / m if m is not None else old)

    def _probe_momenta(self, x: Tensor) -> list[float | None]:
        bufs = self.model.buffers
        saved = [b.clone() for b in bufs]
        for b in bufs:
            b.zero_()
        self.model.forward(x, train=True)
        from_zero = [b.clone() for b in bufs]
        big = float(2 ** 20)
        for b in bufs:
            b.fill_(big)
        self.model.forward(x, train=True)
        out: list[float | None] = []
        for b, z, old in zip(bufs, from_zero, saved):
            m = 1.0 - (b.double() - z.double()) / big      # b - z = (1 - m) * big
            mean = float(m.mean())
            ok = 1e-4 < mean <= 1.0 and float((m - mean).abs().max()) < 1e-4
            out.append(mean if ok else None)
            b.copy_(old)
        return out


class TailAverage:
    """Polyak-Ruppert tail average of a block of weights (``Fidelity.average_steps``): the
    iterates after step :attr:`start` summed in :attr:`total`, :attr:`count` of them.

    ``weights`` arguments are the tensors (or row-block views of them) being averaged,
    always the same list in the same order: a :class:`CopyTrainer`'s parameters, or one
    population member's rows of them (:mod:`searchlab.evaluation.population`)."""

    def __init__(self) -> None:
        self.start: int | None = None          # sum the weights after steps > this one
        self.total: list[Tensor] | None = None
        self.count = 0                          # iterates in total

    def restart(self, from_step: int) -> None:
        """Start a new tail average: the iterates after step ``from_step`` are summed."""
        self.start, self.total, self.count = from_step, None, 0

    def add(self, step: int, weights: Sequence[Tensor]) -> None:
        """Add the iterate after step ``step`` if it is in the window."""
        if self.start is None or step <= self.start:
            return
        with torch.no_grad():
            if self.total is None:
                self.total = [w.detach().clone() for w in weights]
            else:
                torch._foreach_add_(self.total, [w.detach() for w in weights])
        self.count += 1

    def select(self, idx: Tensor) -> None:
        """Keep the rows ``idx`` of the sums (the trainer dropped the others)."""
        if self.total is not None:
            self.total = [a[idx] for a in self.total]

    def apply(self, weights: Sequence[Tensor]) -> int:
        """Replace ``weights`` by their mean over the iterates summed since :attr:`start`
        and empty the sums; returns how many iterates there were."""
        n = self.count
        if n and self.total is not None:
            with torch.no_grad():
                for w, a in zip(weights, self.total):
                    w.detach().copy_(a / n)
        self.total, self.count = None, 0
        return n

    @contextmanager
    def swapped_in(self, weights: Sequence[Tensor]) -> Iterator[int]:
        """Inside: ``weights`` are the tail average (as :meth:`apply`); after: the iterates
        again, with the sums, so that training goes on from where it was.  Yields how many
        iterates were averaged."""
        saved = [w.detach().clone() for w in weights]
        total, n = self.total, self.count
        try:
            yield self.apply(weights)
        finally:
            with torch.no_grad():
                for w, q in zip(weights, saved):
                    w.detach().copy_(q)
            self.total, self.count = total, n


class CopyTrainer(CopyView):
    """``K`` copies of a task's network, each with its own lr, trained on shared batches.

    ``lrs[i]`` belongs to copy ``i``; :attr:`alive` maps the surviving stack rows back to
    those indices, :attr:`diverged` records the dropped ones.
    """

    def __init__(self, task: ClassificationTask, compiled: Any, lrs: Sequence[float],
                 seeds: Seeds, total_steps: int) -> None:
        self.task = task
        self.compiled = compiled
        self.lrs = [float(x) for x in lrs]
        self.model: StackedModel = task.build_model(len(self.lrs), torch.Generator().manual_seed(seeds.init))
        self.state = compiled.init_state(self.model.params)
        self.order_gen = torch.Generator().manual_seed(seeds.order)
        self.noise_gen = torch.Generator().manual_seed(seeds.noise)
        self.total_steps = int(total_steps)
        self.step = 0
        self.loss0: float | None = None  # loss of the first step (same init for every copy)
        self.alive: list[int] = list(range(len(self.lrs)))
        self.diverged: dict[int, int] = {}  # copy index -> step at which it diverged
        self._lr_views: list[Tensor] = []
        self._refresh_lrs()
        self.workspace = _workspace()  # the rule's scratch buffers, reused across steps
        self.batch_size = 100          # chunk floor of refresh_bn (set by train_epochs)
        self._bn_momenta: list[float | None] | None = None
        self.tail = TailAverage()              # Fidelity.average_steps

    def _refresh_lrs(self) -> None:
        lr = torch.tensor([self.lrs[i] for i in self.alive], dtype=torch.float32)
        self._lr_views = [lr.view((-1,) + (1,) * (p.dim() - 1)).to(p.dtype) for p in self.model.params]

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only the stack rows ``rows`` (model, optimizer state, lrs)."""
        rows = list(rows)
        if rows == list(range(len(self.alive))):
            return
        idx = torch.as_tensor(rows, dtype=torch.long)
        k = len(self.alive)
        self.model.select(rows)
        self.state = {name: [t[idx] if t.dim() > 0 and t.shape[0] == k else t for t in ts]
                      for name, ts in self.state.items()}
        self.alive = [self.alive[r] for r in rows]
        self.tail.select(idx)
        self._refresh_lrs()
        self.workspace = _workspace()  # shapes changed

    def average_over(self, from_step: int) -> None:
        """Start a new tail average: the iterates after step ``from_step`` are summed."""
        self.tail.restart(from_step)

    def use_average(self) -> int:
        """Replace every surviving copy's weights by their mean over the iterates summed
        since the :meth:`average_over` step (Polyak-Ruppert tail averaging); returns how
        many.  The batch-norm buffers are left as they are: refresh them for the new
        weights."""
        return self.tail.apply(self.model.params)

    def averaged_weights(self) -> ContextManager[int]:
        """Inside: the tail-averaged weights (as :meth:`use_average`); after: the iterates
        again, so that training goes on from where it was.  Yields how many were averaged."""
        return self.tail.swapped_in(self.model.params)

    def train_epochs(self, x: Tensor, y: Tensor, epochs: int, batch_size: int,
                     deadline: float | None, after_epoch: Any = None) -> None:
        """Train on ``x, y`` for ``epochs`` epochs (the last partial batch is dropped)."""
        self.batch_size = batch_size

        def step(xb: Tensor, yb: Tensor) -> None:
            self._step(xb, yb)
            if self.alive:
                _check_deadline(deadline)

        run_epochs(self.task, x, y, epochs, batch_size, self.order_gen, step,
                   lambda: bool(self.alive), after_epoch)

    def _step(self, xb: Tensor, yb: Tensor) -> None:
        losses = self.model.losses(xb, yb)
        if self.loss0 is None:
            self.loss0 = float(losses.detach().max())
        finite = torch.isfinite(losses)
        if math.isfinite(self.loss0):
            finite &= losses <= DIVERGENCE_FACTOR * max(self.loss0, 1e-3)
        if not bool(finite.all()):
            # NaN/inf (or exploded) loss: those copies stop here; others go on
            ok_rows = [r for r, f in enumerate(finite.tolist()) if f]
            for r, f in enumerate(finite.tolist()):
                if not f:
                    self.diverged[self.alive[r]] = self.step
            if not ok_rows:
                self.alive = []
                return
            grads = torch.autograd.grad(losses[finite].sum(), self.model.params)
            idx = torch.as_tensor(ok_rows, dtype=torch.long)
            grads = tuple(g[idx] for g in grads)
            self.keep(ok_rows)
        else:
            grads = torch.autograd.grad(losses.sum(), self.model.params)
        params = self.model.params
        if len(self.alive) == 1:
            self.compiled.apply_update(params, grads, self.state, self.step, self.lrs[self.alive[0]],
                                       self.total_steps, self.noise_gen, workspace=self.workspace)
        else:
            u = self.compiled.update(grads, params, self.state, self.step, self.total_steps,
                                     self.noise_gen, workspace=self.workspace)
            with torch.no_grad():
                torch._foreach_mul_(u, self._lr_views)
                torch._foreach_sub_(params, u)
        self.step += 1
        self.tail.add(self.step, params)

def run_epochs(task: ClassificationTask, x: Tensor, y: Tensor, epochs: int, batch_size: int,
               order_gen: torch.Generator, step: Any, alive: Any, after_epoch: Any = None) -> None:
    """The epoch loop of :class:`CopyTrainer` and the population's ``Stack``: a seeded
    permutation per epoch (gathered once), ``step(xb, yb)`` per full batch, stop as soon
    as ``alive()`` is false, ``after_epoch(epoch)`` after each complete epoch."""
    n = len(y)
    for epoch in range(epochs):
        if not alive():
            return
        perm = torch.randperm(n, generator=order_gen)
        xe, ye = x[perm], y[perm]
        for i in range(n // batch_size):
            lo = i * batch_size
            step(task.prepare(xe[lo:lo + batch_size]), ye[lo:lo + batch_size])
            if not alive():
                return
        if after_epoch is not None:
            after_epoch(epoch)


def _prepare_all(task: ClassificationTask, x: Tensor) -> Tensor:
    parts = [task.prepare(x[lo:lo + VAL_CHUNK]) for lo in range(0, len(x), VAL_CHUNK)]
    return torch.cat(parts) if len(parts) > 1 else parts[0]


@dataclass
class Outcome:
    """What a protocol run reports (the evaluator turns it into a ``Result``)."""

    status: str
    reward: float | None = None
    best_lr: float | None = None
    sweep: tuple[tuple[float, float], ...] = ()
    curve: tuple[float, ...] = ()
    val_loss: float | None = None
    val_acc: float | None = None
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _sizes(fid: Fidelity, splits: Splits) -> tuple[int, int, int]:
    n_train, n_val = len(splits.train_y), len(splits.val_y)
    cap = lambda want, have: have if want is None else min(int(want), have)  # noqa: E731
    return cap(fid.sweep_examples, n_train), cap(fid.final_examples, n_train), cap(fid.val_examples, n_val)


def run_classification(task: ClassificationTask, splits: Splits, compiled: Any, fid: Fidelity,
                       seed: int, batched: bool, deadline: float | None,
                       test: bool = False) -> Outcome:
    """Paper 4.2: sweep the lrs, train the best one for the final run, score validation.

    The fidelity's comparison options (all off in ``paper``/``fast``/``smoke``):
    ``bn_examples`` recomputes the batch-norm statistics before every validation
    (:meth:`CopyTrainer.refresh_bn`); ``final_lrs > 1`` starts the final run with the
    sweep's best ``final_lrs`` lrs (stacked, the same seeds) and keeps the best of them
    after ``select_epochs`` final epochs (0: at its end); ``final_copies > 1`` trains that
    many final runs at the chosen lr, copy ``j`` with the seeds ``Seeds.of(seed, j)``,
    and the reward is the mean of their validation accuracies (a copy that diverged
    counts ``0``); ``average_steps`` scores (and selects by) the mean of the last
    ``average_steps`` iterates instead of the last one (:meth:`CopyTrainer.averaged_weights`)."""
    n_sweep, n_final, n_val = _sizes(fid, splits)
    bs = fid.batch_size
    if min(n_sweep, n_final) < bs:
        raise ValueError(f"fidelity {fid.key}: batch size {bs} exceeds the training examples "
                         f"({min(n_sweep, n_final)}) of task {task.id}")
    seeds = Seeds.of(seed)
    xv = _prepare_all(task, splits.val_x[:n_val])
    yv = splits.val_y[:n_val]
    x_sweep, y_sweep = splits.train_x[:n_sweep], splits.train_y[:n_sweep]
    x_final, y_final = splits.train_x[:n_final], splits.train_y[:n_final]
    sweep_total = (n_sweep // bs) * fid.sweep_epochs
    lrs = list(fid.lrs)
    bn_sweep, bn_final = _bn_inputs(task, fid, x_sweep), _bn_inputs(task, fid, x_final)

    def validate(tr: CopyTrainer, bn_x: Tensor | None) -> tuple[list[float], list[float]]:
        if bn_x is not None:
            tr.refresh_bn(bn_x)
        return tr.validate(xv, yv)

    # --- sweep: every lr for sweep_epochs on n_sweep examples --------------------------
    groups = [list(range(len(lrs)))] if batched else [[i] for i in range(len(lrs))]
    acc: dict[int, float] = {}
    loss: dict[int, float] = {}
    curves: dict[int, list[float]] = {i: [] for i in range(len(lrs))}
    diverged: dict[int, int] = {}
    trainers: dict[int, tuple[CopyTrainer, int]] = {}  # lr index -> (trainer, its copy index)
    for group in groups:
        tr = CopyTrainer(task, compiled, [lrs[i] for i in group], seeds, sweep_total)
        last_val: list[tuple[list[float], list[float]]] = []

        def after(epoch: int, tr: CopyTrainer = tr, group: list[int] = group,
                  last_val: list = last_val) -> None:
            a, l = validate(tr, bn_sweep)
            for row, copy in enumerate(tr.alive):
                curves[group[copy]].append(a[row])
            last_val[:] = [(a, l)] if epoch == fid.sweep_epochs - 1 else []

        tr.train_epochs(x_sweep, y_sweep, fid.sweep_epochs, bs, deadline, after)
        a, l = last_val[0] if last_val else validate(tr, bn_sweep)
        for row, copy in enumerate(tr.alive):
            i = group[copy]
            if math.isfinite(l[row]):
                acc[i], loss[i] = a[row], l[row]
                trainers[i] = (tr, copy)
            else:
                diverged[i] = tr.step
        for copy, step in tr.diverged.items():
            diverged[group[copy]] = step
        if not batched:
            # keep only what a continuation may need: the best lr(s) so far
            keep = set(_ranked(acc, loss)[:fid.final_lrs])
            trainers = {i: t for i, t in trainers.items() if i in keep}
    sweep = tuple((lrs[i], acc.get(i, math.nan)) for i in range(len(lrs)))
    extra: dict[str, Any] = {
        "sweep_loss": [loss.get(i, math.nan) for i in range(len(lrs))],
        "diverged_lrs": [lrs[i] for i in sorted(diverged)],
        "batched": batched,
        "examples": {"sweep": n_sweep, "final": n_final, "val": n_val},
    }
    tops = _ranked(acc, loss)[:fid.final_lrs]
    if not tops:
        return Outcome("diverged", sweep=sweep, message="every learning rate of the sweep "
                       "diverged (NaN/inf or exploded loss, or exploded weights)", extra=extra)
    best_lr = lrs[tops[0]]

    # --- final run with the best lr (or the best final_lrs lrs, then the best of them) ---
    final_total = (n_final // bs) * fid.final_epochs
    avg = fid.average_steps
    win = TailWindows.of(fid, len(tops), n_sweep, n_final)
    can_continue = (not compiled.uses_decay and n_final == n_sweep
                    and fid.final_epochs >= fid.sweep_epochs
                    and len({id(trainers[i][0]) for i in tops}) == 1 and win.may_continue)
    if can_continue:
        tr, _ = trainers[tops[0]]
        tr.keep([tr.alive.index(trainers[i][1]) for i in tops])
        tr.total_steps = final_total
        done = fid.sweep_epochs
        final_curves = {lrs[i]: list(curves[i]) for i in tops}
        epochs_left = fid.final_epochs - fid.sweep_epochs
    else:
        tr = CopyTrainer(task, compiled, [lrs[i] for i in tops], seeds, final_total)
        done = 0
        final_curves = {lrs[i]: [] for i in tops}
        epochs_left = fid.final_epochs
    trainers.clear()
    last: list[tuple[list[float], list[float]]] = []
    iterate_acc: dict[int, float] = {}   # copy -> validation accuracy of its last iterate
    if len(tops) > 1:
        extra["final_lrs"] = [lrs[i] for i in tops]

    def select(a: list[float], l: list[float]) -> None:
        """Keep the best surviving lr of the final run (ties: lower loss, smaller lr)."""
        rows = [r for r in range(len(tr.alive)) if math.isfinite(l[r])] or list(range(len(tr.alive)))
        row = min(rows, key=lambda r: (-a[r], l[r], tr.lrs[tr.alive[r]]))
        extra["final_scores"] = [[tr.lrs[c], a[r]] for r, c in enumerate(tr.alive)]
        tr.keep([row])
        last[:] = [([a[row]], [l[row]])]

    def after_final(epoch: int) -> None:
        a, l = validate(tr, bn_final)
        if a:
            for row, copy in enumerate(tr.alive):
                final_curves[tr.lrs[copy]].append(a[row])
            iterate_acc.update(zip(tr.alive, a))
            last[:] = [(a, l)]
            if done + epoch + 1 == fid.select_epochs:
                if len(tr.alive) > 1:
                    if avg:        # each lr judged by its tail-averaged weights
                        with tr.averaged_weights():
                            a, l = validate(tr, bn_final)
                    select(a, l)
                if avg and win.mid_select:    # the reward's window starts after the selection
                    tr.average_over(win.reward_from)

    if len(tr.alive) > 1 and 0 < fid.select_epochs <= done:   # chosen by the sweep's scores
        select([acc[i] for i in tops], [loss[i] for i in tops])
    if avg:
        tr.average_over(win.first_from)
    tr.train_epochs(x_final, y_final, epochs_left, bs, deadline, after_final)
    extra["continued"] = can_continue
    extra["steps"] = tr.step
    if not tr.alive:
        lr_text = "/".join(f"{lrs[i]:g}" for i in tops)
        return Outcome("diverged", best_lr=best_lr, sweep=sweep,
                       curve=tuple(final_curves[best_lr]),
                       message=f"the final run with lr {lr_text} diverged at step "
                               f"{max(tr.diverged.values(), default=tr.step)}", extra=extra)
    if epochs_left == 0 or not last or len(last[0][0]) != len(tr.alive):
        last[:] = [validate(tr, bn_final)]
        iterate_acc.update(zip(tr.alive, last[0][0]))
    if avg:                        # score the tail-averaged weights (training is done)
        extra["averaged_steps"] = tr.use_average()
        last[:] = [validate(tr, bn_final)]
    if len(tr.alive) > 1:
        select(*last[0])
    if avg:
        extra["last_iterate_val"] = iterate_acc[tr.alive[0]]
    chosen_lr = tr.lrs[tr.alive[0]]
    curve = final_curves[chosen_lr]
    val_acc, val_loss = last[0][0][0], last[0][1][0]
    if not math.isfinite(val_loss):
        return Outcome("diverged", best_lr=chosen_lr, sweep=sweep, curve=tuple(curve),
                       message="validation loss of the final run is not finite, or its "
                               f"weights exceeded {PARAM_LIMIT:g}", extra=extra)
    if chosen_lr != best_lr:
        extra["sweep_best_lr"] = best_lr
    tests: list[tuple[float, float]] = []
    if test:
        xt = _prepare_all(task, splits.test_x)
        ta, tl = tr.validate(xt, splits.test_y)
        tests.append((ta[0], tl[0]))
    if fid.final_copies > 1:
        accs, losses = [val_acc], [val_loss]
        for j in range(1, fid.final_copies):
            trj = CopyTrainer(task, compiled, [chosen_lr], Seeds.of(seed, j), final_total)
            if avg:
                trj.average_over(win.reward_from)
            trj.train_epochs(x_final, y_final, fid.final_epochs, bs, deadline)
            if trj.alive:
                trj.use_average()
            a, l = validate(trj, bn_final) if trj.alive else ([], [])
            if not a or not math.isfinite(l[0]):
                accs.append(0.0)      # a copy that diverged: FLOOR_REWARD
                losses.append(math.inf)
                continue
            accs.append(a[0])
            losses.append(l[0])
            if test:
                ta, tl = trj.validate(xt, splits.test_y)
                tests.append((ta[0], tl[0]))
        extra["copies"] = accs
        extra["copy_losses"] = losses
        val_acc = sum(accs) / len(accs)
        finite = [x for x in losses if math.isfinite(x)]
        val_loss = sum(finite) / len(finite)
    if tests:
        extra["test_reward"] = sum(t[0] for t in tests) / len(tests)
        extra["test_loss"] = sum(t[1] for t in tests) / len(tests)
    return Outcome("ok", reward=val_acc, best_lr=chosen_lr, sweep=sweep, curve=tuple(curve),
                   val_loss=val_loss, val_acc=val_acc, extra=extra)


@dataclass(frozen=True)
class TailWindows:
    """Which final-run steps the tail averages (``Fidelity.average_steps``) sum: the
    selection's window (a mid-run selection after ``select_epochs``) and the reward's; a
    window never reaches back past a mid-run selection.  The one plan of
    :func:`run_classification` and the population's final runs."""

    mid_select: bool      # the final run keeps its best lr after select_epochs (of several)
    first_from: int       # averaging starts after this step (the selection's or the reward's)
    reward_from: int      # the reward's average: the iterates after this step
    may_continue: bool    # a continued sweep run equals the fresh final run (no averages
                          # in the sweep, no selection on the sweep's scores)

    @staticmethod
    def of(fid: Fidelity, n_tops: int, n_sweep: int, n_final: int) -> "TailWindows":
        bs, avg = fid.batch_size, fid.average_steps
        final_total = (n_final // bs) * fid.final_epochs
        sel_step = (n_final // bs) * fid.select_epochs   # step of a selection after select_epochs
        mid_select = n_tops > 1 and 0 < fid.select_epochs < fid.final_epochs
        sel_window = min(avg, sel_step) if mid_select else 0
        final_window = min(avg, final_total - sel_step) if mid_select else min(avg, final_total)
        reward_from = final_total - final_window
        first_from = sel_step - sel_window if mid_select else reward_from
        may_continue = not avg or (
            first_from >= (n_sweep // bs) * fid.sweep_epochs
            and not (n_tops > 1 and 0 < fid.select_epochs <= fid.sweep_epochs))
        return TailWindows(mid_select, first_from, reward_from, may_continue)


def _bn_inputs(task: ClassificationTask, fid: Fidelity, x: Tensor) -> Tensor | None:
    """Prepared training inputs for :meth:`CopyTrainer.refresh_bn` (None: no refresh)."""
    if fid.bn_examples == 0:
        return None
    n = len(x) if fid.bn_examples is None else min(fid.bn_examples, len(x))
    return _prepare_all(task, x[:n])


def _ranked(acc: dict[int, float], loss: dict[int, float]) -> list[int]:
    """Lr indices, best first: highest validation accuracy; ties -> lower validation loss,
    then smaller lr."""
    return sorted(acc, key=lambda i: (-acc[i], loss[i], i))


def _best(acc: dict[int, float], loss: dict[int, float]) -> int | None:
    """Highest validation accuracy; ties -> lower validation loss, then smaller lr."""
    ranked = _ranked(acc, loss)
    return ranked[0] if ranked else None


# --------------------------------------------------------------------------------------
# problem tasks
# --------------------------------------------------------------------------------------
CHECKPOINTS = 10  # points of the learning curve of a problem run


@dataclass
class Clock:
    """One rule's time across the passes it trains in (seconds; ``limit`` None: none).
    A rule trained in a population is charged its own updates and validations plus its
    share, by rows, of the shared work (:mod:`searchlab.evaluation.population`)."""

    limit: float | None
    seconds: float = 0.0

    def charge(self, dt: float) -> None:
        self.seconds += dt

    @property
    def over(self) -> bool:
        return self.limit is not None and self.seconds > self.limit

    def outcome(self) -> "Outcome":
        return Outcome("timeout", message=f"time limit of {self.limit:g} s reached")


def _problem_runs(task: ProblemTask, compiled: Sequence[Any], lrs: Sequence[float], steps: int,
                  seed: int, stream: str, clocks: Sequence[Clock]
                  ) -> list["tuple[Tensor, Tensor, Tensor] | Outcome"]:
    """For each rule of ``compiled``: scores ``[K, P]``, final values ``[K, P]`` and curve
    ``[CHECKPOINTS, K]`` (mean score), or the ``error``/``timeout`` outcome that stopped it.

    All problems live in one flat parameter tensor ``[R*K, D]`` (problem ``j`` owns
    columns ``offsets[j]:offsets[j+1]``, rule ``r`` rows ``r*K:(r+1)*K``), so the
    problems' values and gradients are one pass per step for every rule and lr; each
    rule's update runs on its own rows with its own state and noise generator (seeded as
    alone).  Gradients are closed-form.  A run (lr, problem) is dead once its value is
    NaN/inf or its gap exceeds ``DIVERGENCE_FACTOR`` times the starting gap; dead runs
    score 0 (they stay isolated: every op of a rule is elementwise).  A rule whose runs
    are all dead stops updating (checked every 16 steps, as alone)."""
    problems = task.problems()
    x0 = task.initial_points(seed, stream)
    k, n_rules = len(lrs), len(compiled)
    dims = [p.dim for p in problems]
    offsets = [0]
    for d in dims:
        offsets.append(offsets[-1] + d)
    x = torch.cat(x0).unsqueeze(0).repeat(k * n_rules, 1)                        # [R*K, D]
    views = [x[:, offsets[j]:offsets[j + 1]] for j in range(len(problems))]
    f0 = torch.stack([p.f(x0j) for p, x0j in zip(problems, x0)])                  # [P]
    f_star = torch.tensor([p.f_star for p in problems], dtype=torch.float64)
    limit = f_star + DIVERGENCE_FACTOR * (f0 - f_star).clamp_min(1e-12)
    lr = torch.tensor(list(lrs), dtype=torch.float64).view(k, 1)
    rows = [x[r * k:(r + 1) * k] for r in range(n_rules)]
    states = [c.init_state([xr]) for c, xr in zip(compiled, rows)]
    gens = [torch.Generator().manual_seed(derive_seed(seed, "noise")) for _ in compiled]
    spaces = [_workspace() for _ in compiled]
    failures: list[Outcome | None] = [None] * n_rules
    running = [True] * n_rules
    # curve points: the score after steps*j/CHECKPOINTS steps, j = 1 .. CHECKPOINTS
    marks = {round(steps * (j + 1) / CHECKPOINTS) for j in range(CHECKPOINTS - 1)}
    curve: list[Tensor] = []
    dead = torch.zeros(k * n_rules, len(problems), dtype=torch.bool)

    def values_and_grads() -> tuple[Tensor, Tensor]:
        out = [p.value_and_grad(v) for p, v in zip(problems, views)]
        return torch.stack([o[0] for o in out], 1), torch.cat([o[1] for o in out], 1)

    bounded = [j for j, p in enumerate(problems) if p.upper_and_grad is not None]

    def divergence_and_grads() -> tuple[Tensor, Tensor]:
        """``(~(vals <= limit), grads)`` as :func:`values_and_grads` would give them, for
        steps that need no values: a problem with ``upper_and_grad`` computes its value
        only for live runs whose bound exceeds the limit (the same decisions exactly)."""
        out = [(p.upper_and_grad or p.value_and_grad)(v) for p, v in zip(problems, views)]
        over = ~(torch.stack([o[0] for o in out], 1) <= limit)
        for j in bounded:
            if bool((over[:, j] & ~dead[:, j]).any()):
                over[:, j] = ~(problems[j].value_and_grad(views[j])[0] <= limit[j])
        return over, torch.cat([o[1] for o in out], 1)

    log_gap0 = torch.log10((f0 - f_star).clamp_min(1e-300))

    def score(vals: Tensor) -> Tensor:  # tasks.problems.normalised_score, dead runs -> 0
        sc = ((log_gap0 - torch.log10((vals - f_star).clamp_min(1e-300))) / ORDERS).clamp(0.0, 1.0)
        return torch.where(dead | ~torch.isfinite(vals), torch.zeros_like(sc), sc)

    stopped_at = [steps] * n_rules
    with torch.no_grad():
        for t in range(steps):
            t0 = time.perf_counter()
            if t in marks:
                vals, grads = values_and_grads()
                dead |= ~(vals <= limit)      # NaN compares False: dead too
                curve.append(score(vals).mean(1))
            else:
                over, grads = divergence_and_grads()
                dead |= over
            if t % 16 == 0:
                for r in range(n_rules):
                    if running[r] and bool(dead[r * k:(r + 1) * k].all()):
                        running[r], stopped_at[r] = False, t
            active = [r for r in range(n_rules) if running[r]]
            if not active:
                break
            shared = (time.perf_counter() - t0) / len(active)
            for r in active:
                t1 = time.perf_counter()
                lo, hi = r * k, (r + 1) * k
                try:
                    u = compiled[r].update([grads[lo:hi]], [rows[r]], states[r], t, steps,
                                           gens[r], workspace=spaces[r])[0]
                    rows[r].sub_(u.mul_(lr))
                except TRAINING_ERRORS:
                    failures[r] = Outcome("error", message=traceback.format_exc())
                except Exception:  # noqa: BLE001 - one rule's failure never stops the others
                    failures[r] = Outcome("error", message="unexpected error:\n"
                                          + traceback.format_exc())
                clocks[r].charge(time.perf_counter() - t1 + shared)
                if failures[r] is None and clocks[r].over:
                    failures[r] = clocks[r].outcome()
                if failures[r] is not None:
                    running[r] = False
        vals, _ = values_and_grads()
        dead |= ~(vals <= limit)
    sc = score(vals)
    vals = torch.where(dead, torch.full_like(vals, math.nan), vals)
    out: list[tuple[Tensor, Tensor, Tensor] | Outcome] = []
    for r in range(n_rules):
        if failures[r] is not None:
            out.append(failures[r])  # type: ignore[arg-type]
            continue
        lo, hi = r * k, (r + 1) * k
        # points after the rule stopped (all its runs dead) are 0: dead runs score 0
        pts = [c[lo:hi] for c in curve]
        while len(pts) < CHECKPOINTS - 1:  # stopped early: every run diverged
            pts.append(torch.zeros(k, dtype=sc.dtype))
        pts.append(sc[lo:hi].mean(1))
        out.append((sc[lo:hi], vals[lo:hi], torch.stack(pts)))
    return out


def _problem_run(task: ProblemTask, compiled: Any, lrs: Sequence[float], steps: int,
                 seed: int, stream: str, deadline: float | None) -> tuple[Tensor, Tensor, Tensor]:
    """One rule of :func:`_problem_runs` (raises :class:`Timeout`, or the rule's error)."""
    limit = None if deadline is None else deadline - time.perf_counter()
    (res,) = _problem_runs(task, [compiled], lrs, steps, seed, stream, [Clock(limit)])
    if isinstance(res, Outcome):
        if res.status == "timeout":
            raise Timeout()
        raise RuntimeError(res.message)
    return res


def _problem_outcome(task: ProblemTask, lrs: Sequence[float], scores: Tensor, vals: Tensor,
                     curves: Tensor, batched: bool, steps: int) -> Outcome:
    mean = scores.mean(1)
    names = [p.name for p in task.problems()]
    sweep = tuple((lr, float(m)) for lr, m in zip(lrs, mean))
    extra: dict[str, Any] = {"batched": batched, "steps": steps}
    if bool(torch.isnan(vals).all()):
        return Outcome("diverged", sweep=sweep, extra=extra,
                       message="every run of every learning rate diverged (NaN/inf value)")
    best = int(torch.argmax(mean))  # first maximum: the smallest lr among ties
    extra["scores"] = {n: float(s) for n, s in zip(names, scores[best])}
    extra["values"] = {n: float(v) for n, v in zip(names, vals[best])}
    return Outcome("ok", reward=float(mean[best]), best_lr=lrs[best], sweep=sweep,
                   curve=tuple(float(c) for c in curves[:, best]), extra=extra)


def run_problems(task: ProblemTask, compiled: Any, fid: Fidelity, seed: int, batched: bool,
                 deadline: float | None, test: bool = False) -> Outcome:
    """Every lr from the same seeded starts; reward = best lr's mean normalised score."""
    lrs = list(fid.lrs)
    steps = fid.problem_steps
    groups = [lrs] if batched else [[lr] for lr in lrs]
    parts = [_problem_run(task, compiled, g, steps, seed, "val", deadline) for g in groups]
    out = _problem_outcome(task, lrs, torch.cat([p[0] for p in parts]),
                           torch.cat([p[1] for p in parts]),
                           torch.cat([p[2] for p in parts], dim=1), batched, steps)
    if test and out.status == "ok":
        sc, _, _ = _problem_run(task, compiled, [out.best_lr], steps, seed, "test", deadline)
        out.extra["test_reward"] = float(sc.mean())
    return out


def run_problems_population(task: ProblemTask, compiled: Sequence[Any], fid: Fidelity,
                            seed: int, time_limit: float | None,
                            test: bool = False) -> list[Outcome]:
    """:func:`run_problems` (batched over lrs) for every rule of ``compiled`` in one pass;
    one outcome per rule, in order (each rule with its own clock of ``time_limit``)."""
    lrs = list(fid.lrs)
    steps = fid.problem_steps
    clocks = [Clock(time_limit) for _ in compiled]
    outs: list[Outcome] = []
    for res in _problem_runs(task, compiled, lrs, steps, seed, "val", clocks):
        outs.append(res if isinstance(res, Outcome)
                    else _problem_outcome(task, lrs, res[0], res[1], res[2], True, steps))
    if test:
        idx = [i for i, o in enumerate(outs) if o.status == "ok"]
        by_lr: dict[float, list[int]] = {}
        for i in idx:
            by_lr.setdefault(outs[i].best_lr, []).append(i)  # type: ignore[arg-type]
        for lr_, group in by_lr.items():
            res = _problem_runs(task, [compiled[i] for i in group], [lr_], steps, seed, "test",
                                [clocks[i] for i in group])
            for i, rr in zip(group, res):
                if isinstance(rr, Outcome):
                    outs[i] = rr
                else:
                    outs[i].extra["test_reward"] = float(rr[0].mean())
    for o, c in zip(outs, clocks):
        o.extra["clock_seconds"] = c.seconds   # the evaluator's time shares
    return outs
