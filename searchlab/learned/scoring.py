"""The reward protocol for a learned optimizer: the same as for an update rule.

:func:`score_learned` scores a saved (or in-memory) learned optimizer on a task at a
fidelity with an evaluation seed, and returns a :class:`searchlab.result.Result` like
``Evaluator.evaluate`` does (``Result.rule`` is ``learned:<name>``, ``key`` and
``fingerprint`` the file's digest).  The lr sweep is over the learned optimizer's initial
step-size scale (``searchlab.learned.base``), the fidelity's ``lrs``.

Classification tasks run :func:`searchlab.evaluation.protocol.run_classification` itself,
with :class:`LearnedRule` in place of a compiled rule: the same seeds (model init, data
order), sizes, sweep, final run (continued from the sweep when the fidelity allows, as
for a rule without decay operands: a learned optimizer's step does not depend on the
run's length), divergence rules and validation/test scoring.  The K copies of the sweep
are the copy dimension of the learned model (they never interact).

Problem tasks follow ``run_problems`` (same starting points from the evaluation seed,
``problem_steps`` steps per lr, a run dead once its value is NaN/inf or its gap exceeds
``DIVERGENCE_FACTOR`` times the start's, dead runs score 0, reward = the best lr's mean
normalised score, smallest lr among ties, test = the best lr from the held-out starts)
with one difference: each problem is its own parameter tensor and its own optimization
(the protocol concatenates the problems into one tensor, which is the same thing for an
elementwise rule but would couple the problems through the hierarchical RNN's tensor and
global levels).

``extra`` holds what ``Evaluator`` records (``cpu_seconds``, ``train_examples``) and the
discovery compute, ``meta_cpu_seconds`` (the meta-training's CPU time, from the file).
"""

from __future__ import annotations

import math
import os
import time
import traceback
from typing import Any, Sequence

import torch
from torch import Tensor

from ..result import FLOOR_REWARD, Result
from ..tasks.base import ClassificationTask, ProblemTask, Task, get_task
from .base import LearnedModel, State
from .files import Learned, build_model, load_learned

__all__ = ["LearnedRule", "reference_row", "resolve_learned", "run_learned_problems",
           "score_learned"]


class LearnedRule:
    """A learned model in the place of a compiled rule (``init_state``/``update``/
    ``apply_update``, no decay operands), for the protocol's ``CopyTrainer``."""

    uses_decay = False
    is_stochastic = False

    def __init__(self, model: LearnedModel) -> None:
        self.model = model

    @torch.no_grad()
    def init_state(self, params: Sequence[Tensor]) -> State:
        return self.model.init_state([p.detach() for p in params])

    @torch.no_grad()
    def update(self, grads: Sequence[Tensor], params: Sequence[Tensor] | None, state: State,
               step: int, total_steps: int | None = None, generator: Any = None,
               **_: Any) -> list[Tensor]:
        us, new = self.model.update([g.detach() for g in grads], state)
        state.clear()
        state.update(new)
        return list(us)

    @torch.no_grad()
    def apply_update(self, params: Sequence[Tensor], grads: Sequence[Tensor], state: State,
                     step: int, lr: float, total_steps: int | None = None,
                     generator: Any = None, **_: Any) -> None:
        for p, u in zip(params, self.update(grads, params, state, step, total_steps)):
            p.sub_(u.to(p.dtype) * lr)


def resolve_learned(path_or_name: "str | os.PathLike[str] | Learned | LearnedModel",
                    run_dir: str | os.PathLike[str] = "runs") -> Learned:
    """A file path; else ``<run_dir>/learned/<name>.pt``; else a registered kind, untrained
    (e.g. ``lwa-a``: the uniform average of the Adam timescales, discovery cost 0)."""
    from pathlib import Path

    from .base import MODELS

    if isinstance(path_or_name, Learned):
        return path_or_name
    if isinstance(path_or_name, LearnedModel):
        return Learned(path_or_name, {"name": path_or_name.kind, "cpu_seconds": 0.0})
    text = str(path_or_name)
    if text.startswith("learned:"):
        text = text[len("learned:"):]
    for cand in (Path(text), Path(run_dir) / "learned" / f"{text}.pt"):
        if cand.is_file():
            return load_learned(cand)
    if text in MODELS:
        model = build_model(text)
        model.eval()
        return Learned(model, {"name": f"{text} (untrained)", "cpu_seconds": 0.0})
    raise FileNotFoundError(f"no learned optimizer {text!r}: not a file, not in "
                            f"{Path(run_dir) / 'learned'}, not a kind ({', '.join(MODELS.names())})")


# --------------------------------------------------------------------------------------
def run_learned_problems(task: ProblemTask, model: LearnedModel, lrs: Sequence[float],
                         steps: int, seed: int, stream: str, deadline: float | None
                         ) -> tuple[Tensor, Tensor, Tensor]:
    """Scores ``[K, P]``, final values ``[K, P]`` and curve ``[CHECKPOINTS, K]`` (as the
    protocol's ``_problem_run``; one optimization per problem)."""
    from ..evaluation.protocol import CHECKPOINTS, DIVERGENCE_FACTOR, Timeout
    from ..tasks.problems import ORDERS

    def _check_deadline(deadline: float | None) -> None:
        if deadline is not None and time.perf_counter() > deadline:
            raise Timeout()

    problems = task.problems()
    x0s = task.initial_points(seed, stream)
    k = len(lrs)
    lr = torch.tensor(list(lrs), dtype=torch.float64).view(k, 1)
    marks = sorted({round(steps * (j + 1) / CHECKPOINTS) for j in range(CHECKPOINTS - 1)})
    scores, finals, curves = [], [], []
    with torch.no_grad():
        for p, x0 in zip(problems, x0s):
            x = x0.unsqueeze(0).repeat(k, 1)
            f0 = p.f(x0)
            log_gap0 = torch.log10((f0 - p.f_star).clamp_min(1e-300))
            limit = p.f_star + DIVERGENCE_FACTOR * float((f0 - p.f_star).clamp_min(1e-12))
            state = model.init_state([x])
            dead = torch.zeros(k, dtype=torch.bool)
            curve = []

            def score(vals: Tensor, dead: Tensor, log_gap0: Tensor = log_gap0,
                      f_star: float = p.f_star) -> Tensor:
                sc = ((log_gap0 - torch.log10((vals - f_star).clamp_min(1e-300))) / ORDERS
                      ).clamp(0.0, 1.0)
                return torch.where(dead | ~torch.isfinite(vals), torch.zeros_like(sc), sc)

            for t in range(steps):
                vals, g = p.value_and_grad(x)
                dead |= ~(vals <= limit)
                if t in marks:
                    curve.append(score(vals, dead))
                if t % 16 == 0 and bool(dead.all()):
                    break
                us, state = model.update([g], state)
                step = lr * us[0]
                x = torch.where(dead.unsqueeze(1), x, x - step)   # dead runs stay put
                _check_deadline(deadline)
            vals, _ = p.value_and_grad(x)
            dead |= ~(vals <= limit)
            sc = score(vals, dead)
            while len(curve) < CHECKPOINTS - 1:
                curve.append(torch.zeros(k, dtype=sc.dtype))
            curve.append(sc)
            scores.append(sc)
            finals.append(torch.where(dead, torch.full_like(vals, math.nan), vals))
            curves.append(torch.stack(curve))
    return (torch.stack(scores, 1), torch.stack(finals, 1),
            torch.stack(curves, 0).mean(0))


def _problems_outcome(task: ProblemTask, model: LearnedModel, fid: Any, seed: int,
                      deadline: float | None, test: bool) -> Any:
    from ..evaluation.protocol import Outcome

    lrs = list(fid.lrs)
    scores, vals, curves = run_learned_problems(task, model, lrs, fid.problem_steps, seed,
                                                "val", deadline)
    mean = scores.mean(1)
    names = [p.name for p in task.problems()]
    sweep = tuple((lr, float(m)) for lr, m in zip(lrs, mean))
    extra: dict[str, Any] = {"batched": True, "steps": fid.problem_steps}
    if bool(torch.isnan(vals).all()):
        return Outcome("diverged", sweep=sweep, extra=extra,
                       message="every run of every learning rate diverged (NaN/inf value)")
    best = int(torch.argmax(mean))
    extra["scores"] = {n: float(s) for n, s in zip(names, scores[best])}
    extra["values"] = {n: float(v) for n, v in zip(names, vals[best])}
    if test:
        sc, _, _ = run_learned_problems(task, model, [lrs[best]], fid.problem_steps, seed,
                                        "test", deadline)
        extra["test_reward"] = float(sc.mean())
    return Outcome("ok", reward=float(mean[best]), best_lr=lrs[best], sweep=sweep,
                   curve=tuple(float(c) for c in curves[:, best]), extra=extra)


def score_learned(learned: "str | os.PathLike[str] | Learned | LearnedModel",
                  task: str | Task = "mnist1d", fidelity: Any = "fast", seed: int = 0, *,
                  test: bool = False, batched: bool | None = None,
                  time_limit: float | None = None, threads: int | None = None,
                  **task_options: Any) -> Result:
    """The reward of a learned optimizer (module docstring).  Never raises for a learned
    optimizer that trains badly (statuses as for rules); raises for a missing file, an
    unknown task or fidelity, or missing data."""
    from ..evaluation.evaluator import TRAINING_ERRORS
    from ..evaluation.fidelity import get_fidelity
    from ..evaluation.protocol import Outcome, Timeout, run_classification

    lo = resolve_learned(learned)
    tk = get_task(task, **task_options)
    fid = get_fidelity(fidelity)
    batched = tk.batched_default if batched is None else bool(batched)
    protocol = fid.key
    if batched != tk.batched_default:
        protocol += ("," if "+" in protocol else "+") + ("batched" if batched else "sequential")
    if isinstance(tk, ClassificationTask):
        splits = tk.load()
    t0b = time.perf_counter()
    time_limit = fid.time_limit if time_limit is None else float(time_limit)
    deadline = t0b + time_limit if time_limit is not None else None
    model = lo.model
    model.eval()
    cpu0 = time.process_time()
    prev = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        if isinstance(tk, ClassificationTask):
            out = run_classification(tk, splits, LearnedRule(model), fid, int(seed), batched,
                                     deadline, test)
        elif isinstance(tk, ProblemTask):
            out = _problems_outcome(tk, model, fid, int(seed), deadline, test)
        else:  # pragma: no cover
            raise TypeError(f"task {tk.id} is of unknown kind {tk.kind!r}")
    except Timeout:
        out = Outcome("timeout", message=f"time limit of {time_limit:g} s reached")
    except TRAINING_ERRORS:
        out = Outcome("error", message=traceback.format_exc())
    except Exception:  # noqa: BLE001
        out = Outcome("error", message="unexpected error:\n" + traceback.format_exc())
    finally:
        if threads is not None:
            torch.set_num_threads(prev)
    reward = out.reward if out.status == "ok" and out.reward is not None else FLOOR_REWARD
    if not math.isfinite(reward):
        reward = FLOOR_REWARD
    if isinstance(tk, ClassificationTask):
        n = splits.sizes()["train"]
        cap = lambda want: n if want is None else min(int(want), n)  # noqa: E731
        examples = (len(fid.lrs) * cap(fid.sweep_examples) * fid.sweep_epochs
                    + cap(fid.final_examples) * fid.final_epochs)
    else:
        examples = len(fid.lrs) * fid.problem_steps
    extra = {**out.extra, "cpu_seconds": time.process_time() - cpu0, "train_examples": examples,
             "meta_cpu_seconds": lo.cpu_seconds, "learned_kind": model.kind,
             "learned_file": lo.path}
    digest = lo.digest or "untrained"
    return Result(rule=f"learned:{lo.name}", key=f"learned:{digest}", reward=float(reward),
                  status=out.status, best_lr=out.best_lr, seconds=time.perf_counter() - t0b,
                  seed=int(seed), task=tk.id, fidelity=protocol, sweep=out.sweep,
                  curve=out.curve, val_loss=out.val_loss, val_acc=out.val_acc,
                  fingerprint=digest, message=out.message, extra=extra)


def reference_row(path_or_name: "str | os.PathLike[str] | Learned", task: str | Task,
                  fidelity: Any, seeds: Sequence[int], **task_options: Any) -> list[Result]:
    """One :class:`Result` per seed, held-out test scored too (``extra["test_reward"]``),
    for a comparison report's reference rows.  ``extra["meta_cpu_seconds"]`` is the
    discovery compute; ``extra["cpu_seconds"]`` the scoring's."""
    lo = resolve_learned(path_or_name)
    return [score_learned(lo, task, fidelity, int(s), test=True, **task_options) for s in seeds]
