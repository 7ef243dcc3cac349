"""Population-batched training: ``R`` rules x ``K`` learning rates as one stacked model.

The reward protocol of :func:`~searchlab.evaluation.protocol.run_classification`, run for
several rules at once.  Every rule of a population evaluated with the same evaluation
seed starts from the same initial weights and sees the same data order, so their lr
sweeps, final runs and extra final copies can share one stacked network: parameters
``[rows, ...]``, one forward and one backward per minibatch for all rules.  Each rule
(a :class:`Member` of a :class:`Stack`) owns a contiguous block of rows and keeps its own
protocol:

* its own compiled update, applied to its block only (a view of the stacked parameters),
  with its own optimizer state and its own noise generator (seeded as alone, so
  stochastic rules draw the same numbers as alone);
* its own divergence: a row whose loss is NaN/inf or exploded is dropped, nothing else;
* its own validation, batch-norm refresh and lr choice, on a view of its rows with the
  chunk sizes it would have alone (:class:`~searchlab.evaluation.protocol.CopyView`);
* its own time limit on its own clock (:class:`~searchlab.evaluation.protocol.Clock`: the time of its updates and
  validations plus its share, by rows, of the shared forward and backward); a rule that
  runs out is dropped with status ``timeout`` and the others go on;
* its own failure: an exception in its update scores it ``error`` and drops its rows.

Rows never interact (every op of the network is per copy, every op of a rule is
elementwise), so a population's rewards equal those of evaluating each rule alone up
to float rounding; ``tests/test_population.py`` checks that against the one-rule path.
Phases that cannot share minibatches run as separate stacks: after the sweep, rules
whose final run continues the sweep (no decay operand) go on in the sweep's stack; rules
that retrain from scratch form a second stack; each extra final copy
(``Fidelity.final_copies``) is one more stack of every rule still ``ok``.

Problem tasks are batched by :func:`~searchlab.evaluation.protocol.run_problems_population`
(one flat ``[R*K, D]`` tensor for every rule, lr and problem).
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Sequence

import torch
from torch import Tensor

from ..tasks.base import ClassificationTask, Splits, StackedModel
from .fidelity import Fidelity
from .protocol import (
    DIVERGENCE_FACTOR,
    PARAM_LIMIT,
    TRAINING_ERRORS,
    Clock,
    CopyView,
    Outcome,
    Seeds,
    TailAverage,
    TailWindows,
    _bn_inputs,
    _prepare_all,
    _ranked,
    _sizes,
    _workspace,
    run_epochs,
)

__all__ = ["Member", "Stack", "run_population"]


class Member:
    """One rule's block of rows in a :class:`Stack` (copy ``i`` trains with ``lrs[i]``;
    :attr:`alive` maps the block's rows to copy indices)."""

    def __init__(self, rule: int, compiled: Any, lrs: Sequence[float], noise_seed: int,
                 total_steps: int, clock: Clock) -> None:
        self.rule = rule
        self.compiled = compiled
        self.lrs = [float(x) for x in lrs]
        self.alive: list[int] = list(range(len(self.lrs)))
        self.diverged: dict[int, int] = {}
        self.noise_gen = torch.Generator().manual_seed(noise_seed)
        self.total_steps = int(total_steps)
        self.step = 0
        self.clock = clock
        self.state: dict[str, list[Tensor]] = {}
        self.workspace = _workspace()
        self.failure: Outcome | None = None
        self.lr_views: list[Tensor] = []
        self.tail = TailAverage()              # of the block (Fidelity.average_steps)

    @property
    def k(self) -> int:
        return len(self.alive)


class Stack:
    """Members trained on shared minibatches (the same data order, one stacked model).

    ``model`` (optional) continues an existing stacked model whose rows are exactly the
    members' rows in order; otherwise a fresh one is built from ``seeds.init``."""

    def __init__(self, task: ClassificationTask, members: Sequence[Member], seeds: Seeds,
                 model: StackedModel | None = None,
                 order_gen: torch.Generator | None = None, loss0: float | None = None) -> None:
        self.task = task
        self.members: list[Member] = [m for m in members if m.k > 0]
        rows = sum(m.k for m in self.members)
        self.model = model if model is not None else task.build_model(
            rows, torch.Generator().manual_seed(seeds.init))
        self.order_gen = (order_gen if order_gen is not None
                          else torch.Generator().manual_seed(seeds.order))
        self.loss0 = loss0
        self.batch_size = 100
        self.bn_momenta: list[float | None] | None = None
        for m, (lo, hi) in self.blocks():
            if m.step == 0 and not m.state:
                m.state = m.compiled.init_state([p.detach()[lo:hi] for p in self.model.params])
            self._refresh_lrs(m)

    # --- rows ------------------------------------------------------------------------
    def blocks(self) -> list[tuple[Member, tuple[int, int]]]:
        out, lo = [], 0
        for m in self.members:
            out.append((m, (lo, lo + m.k)))
            lo += m.k
        return out

    def _refresh_lrs(self, m: Member) -> None:
        lr = torch.tensor([m.lrs[i] for i in m.alive], dtype=torch.float32)
        m.lr_views = [lr.view((-1,) + (1,) * (p.dim() - 1)).to(p.dtype) for p in self.model.params]

    def keep(self, rows: dict[Member, list[int]]) -> None:
        """Keep, for each member in ``rows``, only its block rows listed (in that order);
        members not in ``rows`` keep all theirs; members left with none leave the stack."""
        index: list[int] = []
        for m, (lo, hi) in self.blocks():
            local = rows.get(m, list(range(m.k)))
            index.extend(lo + r for r in local)
        if index == list(range(sum(m.k for m in self.members))):
            return
        self.model.select(index)
        for m in self.members:
            local = rows.get(m)
            if local is None or local == list(range(m.k)):
                continue
            idx = torch.as_tensor(local, dtype=torch.long)
            k = m.k
            m.state = {name: [t[idx] if t.dim() > 0 and t.shape[0] == k else t for t in ts]
                       for name, ts in m.state.items()}
            m.tail.select(idx)
            m.alive = [m.alive[r] for r in local]
            m.workspace = _workspace()  # shapes changed
            self._refresh_lrs(m)
        self.members = [m for m in self.members if m.k > 0]

    def drop(self, members: Sequence[Member]) -> None:
        if members:
            self.keep({m: [] for m in members})

    def block(self, m: Member) -> tuple[int, int]:
        return dict((id(mm), b) for mm, b in self.blocks())[id(m)]

    def view(self, m: Member) -> CopyView:
        """``m``'s rows as a :class:`CopyView` (validation, batch-norm refresh)."""
        lo, hi = self.block(m)
        return CopyView(self.task, self.model.rows(lo, hi), m.alive, self.batch_size,
                        self.bn_momenta)

    # --- tail averages (as CopyTrainer's, per member) ----------------------------------
    def block_weights(self, m: Member) -> list[Tensor]:
        """Views of ``m``'s rows of every parameter."""
        lo, hi = self.block(m)
        return [p.detach()[lo:hi] for p in self.model.params]

    def average_over(self, m: Member, from_step: int) -> None:
        """Start a new tail average of ``m``'s rows: its iterates after step ``from_step``."""
        m.tail.restart(from_step)

    def use_average(self, m: Member) -> int:
        """Replace ``m``'s weights by their tail average (CopyTrainer.use_average); returns
        how many iterates it holds.  Batch-norm buffers are left as they are."""
        return m.tail.apply(self.block_weights(m))

    def averaged_weights(self, m: Member) -> ContextManager[int]:
        """Inside: ``m``'s tail-averaged weights; after: its iterates again."""
        return m.tail.swapped_in(self.block_weights(m))

    # --- training --------------------------------------------------------------------
    def train_epochs(self, x: Tensor, y: Tensor, epochs: int, batch_size: int,
                     after_epoch: Callable[[int], None] | None = None) -> None:
        """As :meth:`CopyTrainer.train_epochs`, for every member at once."""
        self.batch_size = batch_size
        run_epochs(self.task, x, y, epochs, batch_size, self.order_gen, self._step,
                   lambda: bool(self.members), after_epoch)

    def _step(self, xb: Tensor, yb: Tensor) -> None:
        t0 = time.perf_counter()
        losses = self.model.losses(xb, yb)
        if self.loss0 is None:
            self.loss0 = float(losses.detach().max())
        finite = torch.isfinite(losses)
        if math.isfinite(self.loss0):
            finite &= losses <= DIVERGENCE_FACTOR * max(self.loss0, 1e-3)
        flags = finite.tolist()
        if not all(flags):
            keep: dict[Member, list[int]] = {}
            for m, (lo, hi) in self.blocks():
                ok = [r for r in range(m.k) if flags[lo + r]]
                for r in range(m.k):
                    if not flags[lo + r]:
                        m.diverged[m.alive[r]] = m.step
                if len(ok) < m.k:
                    keep[m] = ok
            if not any(flags):
                self.members = []
                return
            grads = torch.autograd.grad(losses[finite].sum(), self.model.params)
            idx = torch.as_tensor([r for r, f in enumerate(flags) if f], dtype=torch.long)
            self.keep(keep)
            grads = tuple(g[idx] for g in grads)
        else:
            grads = torch.autograd.grad(losses.sum(), self.model.params)
        rows = sum(m.k for m in self.members)
        shared = time.perf_counter() - t0
        params = self.model.params
        out: list[Member] = []
        for m, (lo, hi) in self.blocks():
            t1 = time.perf_counter()
            views = [p.detach()[lo:hi] for p in params]
            g = [gr[lo:hi] for gr in grads]
            try:
                if m.k == 1:
                    m.compiled.apply_update(views, g, m.state, m.step, m.lrs[m.alive[0]],
                                            m.total_steps, m.noise_gen, workspace=m.workspace)
                else:
                    u = m.compiled.update(g, views, m.state, m.step, m.total_steps,
                                          m.noise_gen, workspace=m.workspace)
                    with torch.no_grad():
                        torch._foreach_mul_(u, m.lr_views)
                        torch._foreach_sub_(views, u)
            except TRAINING_ERRORS:
                m.failure = Outcome("error", message=traceback.format_exc())
            except Exception:  # noqa: BLE001 - one rule's failure never stops the others
                m.failure = Outcome("error", message="unexpected error:\n" + traceback.format_exc())
            m.step += 1
            if m.failure is None:
                m.tail.add(m.step, views)
            m.clock.charge(time.perf_counter() - t1 + shared * m.k / rows)
            if m.failure is None and m.clock.over:
                m.failure = m.clock.outcome()
            if m.failure is not None:
                out.append(m)
        self.drop(out)

    def validate(self, m: Member, xv: Tensor, yv: Tensor,
                 bn_x: Tensor | None) -> tuple[list[float], list[float]]:
        """``m``'s validation as alone (batch-norm refresh first if ``bn_x``); charged
        to its clock."""
        t0 = time.perf_counter()
        v = self.view(m)
        if bn_x is not None:
            v.refresh_bn(bn_x)
            self.bn_momenta = v._bn_momenta
        out = v.validate(xv, yv)
        m.clock.charge(time.perf_counter() - t0)
        return out


@dataclass
class _Rule:
    """The protocol state of one rule of a population (what run_classification keeps in
    locals)."""

    index: int
    compiled: Any
    clock: Clock
    acc: dict[int, float]
    loss: dict[int, float]
    curves: dict[int, list[float]]
    diverged: dict[int, int]
    extra: dict[str, Any]
    outcome: Outcome | None = None
    member: Member | None = None
    last: tuple[list[float], list[float]] | None = None
    tops: list[int] | None = None
    best_lr: float | None = None
    final_curves: dict[float, list[float]] | None = None
    done: int = 0
    win: TailWindows | None = None         # the final run's tail-average windows
    iterate_acc: dict[int, float] = field(default_factory=dict)  # copy -> last iterate's val


def run_population(task: ClassificationTask, splits: Splits, compiled: Sequence[Any],
                   fid: Fidelity, seed: int, time_limit: float | None,
                   test: bool = False) -> list[Outcome]:
    """:func:`~searchlab.evaluation.protocol.run_classification` (its batched sweep) for
    every rule of ``compiled`` at once; one outcome per rule, in order."""
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
    final_total = (n_final // bs) * fid.final_epochs
    lrs = list(fid.lrs)
    bn_sweep, bn_final = _bn_inputs(task, fid, x_sweep), _bn_inputs(task, fid, x_final)
    rules = [_Rule(i, c, Clock(time_limit), {}, {}, {j: [] for j in range(len(lrs))}, {},
                   {}) for i, c in enumerate(compiled)]

    def failed(st: Stack) -> None:
        """Rules whose member failed in ``st`` (error, timeout) get that outcome."""
        for r in rules:
            if r.outcome is None and r.member is not None and r.member.failure is not None:
                r.outcome = r.member.failure

    # --- sweep: every rule x every lr, one stack --------------------------------------
    for r in rules:
        r.member = Member(r.index, r.compiled, lrs, seeds.noise, sweep_total, r.clock)
    sweep = Stack(task, [r.member for r in rules if r.member], seeds)
    by_member = {id(r.member): r for r in rules}

    def after_sweep(epoch: int) -> None:
        for m in list(sweep.members):
            r = by_member[id(m)]
            a, l = sweep.validate(m, xv, yv, bn_sweep)
            for row, copy in enumerate(m.alive):
                r.curves[copy].append(a[row])
            r.last = (a, l) if epoch == fid.sweep_epochs - 1 else None
        over = [m for m in sweep.members if m.clock.over]
        for m in over:
            m.failure = m.clock.outcome()
        sweep.drop(over)

    sweep.train_epochs(x_sweep, y_sweep, fid.sweep_epochs, bs, after_sweep)
    failed(sweep)
    in_sweep = {id(m) for m in sweep.members}
    for r in rules:
        if r.outcome is not None:
            continue
        m = r.member
        assert m is not None
        if r.last is not None and id(m) in in_sweep:
            a, l = r.last
        elif id(m) in in_sweep:
            a, l = sweep.validate(m, xv, yv, bn_sweep)
        else:
            a, l = [], []
        for row, copy in enumerate(m.alive if id(m) in in_sweep else []):
            if math.isfinite(l[row]):
                r.acc[copy], r.loss[copy] = a[row], l[row]
            else:
                r.diverged[copy] = m.step
        for copy, step in m.diverged.items():
            r.diverged[copy] = step
        r.extra.update({
            "sweep_loss": [r.loss.get(i, math.nan) for i in range(len(lrs))],
            "diverged_lrs": [lrs[i] for i in sorted(r.diverged)],
            "batched": True,
            "examples": {"sweep": n_sweep, "final": n_final, "val": n_val},
        })
        r.tops = _ranked(r.acc, r.loss)[:fid.final_lrs]
        if not r.tops:
            r.outcome = Outcome("diverged", sweep=_sweep(lrs, r), extra=r.extra,
                                message="every learning rate of the sweep diverged (NaN/inf "
                                        "or exploded loss, or exploded weights)")
            continue
        r.best_lr = lrs[r.tops[0]]
        r.win = TailWindows.of(fid, len(r.tops), n_sweep, n_final)
        if len(r.tops) > 1:
            r.extra["final_lrs"] = [lrs[i] for i in r.tops]

    # --- final runs: continue the sweep's stack, or retrain in a fresh one -------------
    live = [r for r in rules if r.outcome is None]
    cont = [r for r in live if not r.compiled.uses_decay and n_final == n_sweep
            and fid.final_epochs >= fid.sweep_epochs and id(r.member) in in_sweep
            and r.win is not None and r.win.may_continue]
    fresh = [r for r in live if r not in cont]
    keep: dict[Member, list[int]] = {m: [] for m in sweep.members}
    for r in cont:
        m = r.member
        assert m is not None and r.tops is not None
        keep[m] = [m.alive.index(i) for i in r.tops]
        r.final_curves = {lrs[i]: list(r.curves[i]) for i in r.tops}
        r.done = fid.sweep_epochs
    sweep.keep(keep)
    for r in cont:
        assert r.member is not None
        r.member.total_steps = final_total
    for r in fresh:
        assert r.tops is not None
        r.member = Member(r.index, r.compiled, [lrs[i] for i in r.tops], seeds.noise,
                          final_total, r.clock)
        r.final_curves = {lrs[i]: [] for i in r.tops}
        r.done = 0
    stacks: list[tuple[Stack, list[_Rule], int]] = []
    if cont:
        stacks.append((sweep, cont, fid.final_epochs - fid.sweep_epochs))
    if fresh:
        stacks.append((Stack(task, [r.member for r in fresh if r.member], seeds), fresh,
                       fid.final_epochs))
    for st, group, epochs_left in stacks:
        _final_run(st, group, epochs_left, fid, xv, yv, bn_final, x_final, y_final, bs)
        failed(st)
        for r in group:
            if r.outcome is None:
                _finish(st, r, epochs_left, lrs, fid, xv, yv, bn_final, splits, test, task)

    # --- extra final copies: one stack per copy for every rule still ok ---------------
    if fid.final_copies > 1:
        ok = [r for r in rules if r.outcome is not None and r.outcome.status == "ok"
              and r.outcome.best_lr is not None]
        _copies(task, ok, seed, fid, final_total, xv, yv, bn_final, x_final, y_final, bs,
                splits, test)
    outs = [r.outcome if r.outcome is not None else Outcome("error", message="no outcome")
            for r in rules]
    for o, r in zip(outs, rules):
        o.extra["clock_seconds"] = r.clock.seconds   # the evaluator's time shares
    return outs


def _sweep(lrs: list[float], r: _Rule) -> tuple[tuple[float, float], ...]:
    return tuple((lrs[i], r.acc.get(i, math.nan)) for i in range(len(lrs)))


def _select(st: Stack, r: _Rule, a: list[float], l: list[float]) -> None:
    """Keep ``r``'s best surviving lr of the final run (ties: lower loss, smaller lr)."""
    m = r.member
    assert m is not None
    rows = [i for i in range(m.k) if math.isfinite(l[i])] or list(range(m.k))
    row = min(rows, key=lambda i: (-a[i], l[i], m.lrs[m.alive[i]]))
    r.extra["final_scores"] = [[m.lrs[c], a[i]] for i, c in enumerate(m.alive)]
    st.keep({m: [row]})
    r.last = ([a[row]], [l[row]])


def _final_run(st: Stack, group: list[_Rule], epochs_left: int, fid: Fidelity, xv: Tensor,
               yv: Tensor, bn_final: Tensor | None, x: Tensor, y: Tensor, bs: int) -> None:
    by_member = {id(r.member): r for r in group}
    for r in group:
        r.last = None
        m = r.member
        assert m is not None and r.tops is not None
        if m.k > 1 and 0 < fid.select_epochs <= r.done:   # chosen by the sweep's scores
            _select(st, r, [r.acc[i] for i in r.tops], [r.loss[i] for i in r.tops])
        if fid.average_steps:
            assert r.win is not None
            st.average_over(m, r.win.first_from)

    def after(epoch: int) -> None:
        for m in list(st.members):
            r = by_member.get(id(m))
            if r is None:
                continue
            a, l = st.validate(m, xv, yv, bn_final)
            if not a:
                continue
            assert r.final_curves is not None
            for row, copy in enumerate(m.alive):
                r.final_curves[m.lrs[copy]].append(a[row])
            r.iterate_acc.update(zip(m.alive, a))
            r.last = (a, l)
            if r.done + epoch + 1 == fid.select_epochs:
                if m.k > 1:
                    if fid.average_steps:   # each lr judged by its tail-averaged weights
                        with st.averaged_weights(m):
                            a, l = st.validate(m, xv, yv, bn_final)
                    _select(st, r, a, l)
                if fid.average_steps and r.win is not None and r.win.mid_select:
                    st.average_over(m, r.win.reward_from)   # the reward's window
        over = [m for m in st.members if m.clock.over]
        for m in over:
            m.failure = m.clock.outcome()
        st.drop(over)

    st.train_epochs(x, y, epochs_left, bs, after)


def _finish(st: Stack, r: _Rule, epochs_left: int, lrs: list[float], fid: Fidelity,
            xv: Tensor, yv: Tensor, bn_final: Tensor | None, splits: Splits, test: bool,
            task: ClassificationTask) -> None:
    """The outcome of ``r``'s final run (as the end of run_classification)."""
    m = r.member
    assert m is not None and r.tops is not None and r.final_curves is not None
    extra = r.extra
    extra["continued"] = r.done > 0
    extra["steps"] = m.step
    sweep = _sweep(lrs, r)
    best_lr = r.best_lr
    in_stack = any(mm is m for mm in st.members)
    if not in_stack or m.k == 0:
        lr_text = "/".join(f"{lrs[i]:g}" for i in r.tops)
        r.outcome = Outcome("diverged", best_lr=best_lr, sweep=sweep,
                            curve=tuple(r.final_curves[best_lr]),  # type: ignore[index]
                            message=f"the final run with lr {lr_text} diverged at step "
                                    f"{max(m.diverged.values(), default=m.step)}", extra=extra)
        return
    if epochs_left == 0 or r.last is None or len(r.last[0]) != m.k:
        r.last = st.validate(m, xv, yv, bn_final)
        r.iterate_acc.update(zip(m.alive, r.last[0]))
    if fid.average_steps:          # score the tail-averaged weights (training is done)
        extra["averaged_steps"] = st.use_average(m)
        r.last = st.validate(m, xv, yv, bn_final)
    if m.k > 1:
        _select(st, r, *r.last)
    if fid.average_steps:
        extra["last_iterate_val"] = r.iterate_acc[m.alive[0]]
    chosen_lr = m.lrs[m.alive[0]]
    curve = r.final_curves[chosen_lr]
    val_acc, val_loss = r.last[0][0], r.last[1][0]
    if not math.isfinite(val_loss):
        r.outcome = Outcome("diverged", best_lr=chosen_lr, sweep=sweep, curve=tuple(curve),
                            message="validation loss of the final run is not finite, or its "
                                    f"weights exceeded {PARAM_LIMIT:g}", extra=extra)
        return
    if chosen_lr != best_lr:
        extra["sweep_best_lr"] = best_lr
    if test:
        ta, tl = st.view(m).validate(_prepare_all(task, splits.test_x), splits.test_y)
        extra["_tests"] = [(ta[0], tl[0])]
    r.outcome = Outcome("ok", reward=val_acc, best_lr=chosen_lr, sweep=sweep,
                        curve=tuple(curve), val_loss=val_loss, val_acc=val_acc, extra=extra)
    if fid.final_copies <= 1:
        _test_summary(r.outcome)


def _copies(task: ClassificationTask, ok: list[_Rule], seed: int, fid: Fidelity,
            final_total: int, xv: Tensor, yv: Tensor, bn_final: Tensor | None, x: Tensor,
            y: Tensor, bs: int, splits: Splits, test: bool) -> None:
    """``final_copies - 1`` more final runs per rule at its chosen lr, copy ``j`` with
    ``Seeds.of(seed, j)``; the reward becomes the mean (a diverged copy counts 0)."""
    xt = _prepare_all(task, splits.test_x) if test else None
    accs = {id(r): [r.outcome.val_acc] for r in ok}                 # type: ignore[union-attr]
    losses = {id(r): [r.outcome.val_loss] for r in ok}              # type: ignore[union-attr]
    for j in range(1, fid.final_copies):
        sj = Seeds.of(seed, j)
        members = {}
        for r in ok:
            if r.outcome is not None and r.outcome.status == "ok":
                members[id(r)] = Member(r.index, r.compiled, [r.outcome.best_lr],  # type: ignore[list-item]
                                        sj.noise, final_total, r.clock)
        if not members:
            break
        st = Stack(task, list(members.values()), sj)
        if fid.average_steps:
            for r in ok:
                if id(r) in members and r.win is not None:
                    st.average_over(members[id(r)], r.win.reward_from)
        st.train_epochs(x, y, fid.final_epochs, bs)
        for r in ok:
            m = members.get(id(r))
            if m is None:
                continue
            if m.failure is not None:            # error/timeout in copy j: the rule's outcome
                r.outcome = m.failure
                continue
            in_stack = any(mm is m for mm in st.members)
            if in_stack and fid.average_steps:
                st.use_average(m)
            a, l = st.validate(m, xv, yv, bn_final) if in_stack else ([], [])
            if not a or not math.isfinite(l[0]):
                accs[id(r)].append(0.0)      # a copy that diverged: FLOOR_REWARD
                losses[id(r)].append(math.inf)
                continue
            accs[id(r)].append(a[0])
            losses[id(r)].append(l[0])
            if xt is not None:
                ta, tl = st.view(m).validate(xt, splits.test_y)
                r.outcome.extra.setdefault("_tests", []).append((ta[0], tl[0]))  # type: ignore[union-attr]
    for r in ok:
        out = r.outcome
        assert out is not None
        if out.status != "ok":
            continue
        a, l = accs[id(r)], losses[id(r)]
        out.extra["copies"] = a
        out.extra["copy_losses"] = l
        finite = [v for v in l if v is not None and math.isfinite(v)]
        out.val_acc = out.reward = sum(a) / len(a)  # type: ignore[arg-type]
        out.val_loss = sum(finite) / len(finite)
        _test_summary(out)


def _test_summary(out: Outcome) -> None:
    tests = out.extra.pop("_tests", [])
    if tests:
        out.extra["test_reward"] = sum(t[0] for t in tests) / len(tests)
        out.extra["test_loss"] = sum(t[1] for t in tests) / len(tests)
