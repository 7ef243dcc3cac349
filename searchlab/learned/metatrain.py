"""Meta-training by truncated backpropagation through unrolled optimization (Wichrowska et
al. 2017, section 4 and appendix; Shahid 2017's learning algorithm is the same loop).

One *meta-iteration* is one unroll: ``T`` steps of the learned optimizer on the current
problem run (:mod:`searchlab.learned.distribution`), from where the previous unroll of the
run stopped, then one meta-update of the model's parameters.  A run lasts ``N`` unrolls,
then a new run is drawn.  ``N`` and ``T`` are heavy tailed (the appendix: exponential
distributions plus a constant offset), so the model sees short and long trainings::

    N = 1 + floor(Exp(unrolls_mean)),   T = unroll_min + floor(Exp(unroll_mean))  (<= unroll_max)

The meta-objective of an unroll is the mean over its steps and copies of the log of the
gap to the known minimum, relative to the run's start (section 3.4: the mean log loss
rewards exact convergence and still gives a signal at every step; the second term is a
constant)::

    L = mean_t,b  log((f(x_t) - f*) / (f(x_0) - f*) + 1e-12)

Gradients flow through the whole unroll, second derivatives included (the closed-form
gradients of the problems are differentiable; ``first_order=True`` detaches them as
Andrychowicz et al. did).  After every step small Gaussian noise is added to the
parameters (appendix: it moves the landscape under the optimizer so that long runs stay
informative; ``param_noise`` is its standard deviation relative to the step scale ``lr``
of each copy).  Losses above ``1e3`` times the start are clipped (their gradient is then
zero) and a non-finite unroll is skipped and its run dropped.  The meta-optimizer is Adam
with gradient-norm clipping.

*Meta-validation* (``validate_every=N``): every N meta-iterations, before the first and
after the last, the model runs ``val_steps`` steps from the start of each of ``val_runs``
runs of the same distribution, drawn once from ``val_seed`` (the same set for every
training seed), with no parameter noise and fixed gradient noise, and is scored as the
problem tasks score a run: the normalised score (orders of magnitude of gap reduction,
0..1, 0 if it diverges), mean over runs and copies.  The score is logged
(``meta/val_score``) and kept in the file's metadata.  ``select="best"`` saves the
meta-parameters of the highest validation score instead of the last (early stopping: a
meta-training that turns unstable keeps what it had found).  The score, not the
meta-objective, is what is compared: the mean log gap rewards converging to 1e-12 on an
easy bowl without bound, the score stops counting at :data:`~searchlab.tasks.problems.ORDERS`
orders of magnitude, as the problem tasks' reward does.

:func:`meta_train` checkpoints every ``checkpoint_every`` iterations (model, meta-optimizer,
generator state, the current run, the MLflow run id, CPU-seconds so far) to
``<out>.ckpt``; with ``resume=True`` it continues from there with the same numbers as an
uninterrupted meta-training.  It saves the result with
:func:`~searchlab.learned.files.save_learned`, the meta-training CPU-seconds in its
metadata.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from ..tasks.base import derive_seed
from ..tasks.problems import normalised_score
from .base import LearnedModel
from .distribution import ProblemRun, RunSampler
from .files import build_model, save_learned

__all__ = ["MetaTrainConfig", "meta_train", "unroll_loss", "validation_runs", "validation_score"]

#: what a meta-training saves: the last meta-parameters, or those of the best validation
SELECT = ("last", "best")


@dataclass
class MetaTrainConfig:
    optimizer: str = "hrnn"
    task: str = "ensemble"                 # ensemble (suite base) | ensemble+suite=extended
    steps: int = 200                       # meta-iterations (one unroll + meta-update each)
    seed: int = 0
    copies: int = 4                        # parallel runs of each problem (B)
    unrolls_mean: float = 4.0
    unroll_mean: float = 20.0
    unroll_min: int = 5
    unroll_max: int = 100
    meta_lr: float = 3e-3
    clip: float = 1.0
    param_noise: float = 0.01
    lr_low: float = 1e-3
    lr_high: float = 1.0
    multitask_prob: float = 0.2
    rescale_prob: float = 0.2
    first_order: bool = False
    checkpoint_every: int = 25
    validate_every: int = 0                # meta-validation every N iterations (0: never)
    val_runs: int = 16                     # the meta-validation set: runs of the distribution
    val_steps: int = 400                   # steps of each validation run (`fast`'s)
    val_seed: int = 0                      # draws the validation set (not the training seed)
    select: str = "last"                   # last | best: which meta-parameters are saved
    options: dict[str, Any] = field(default_factory=dict)   # the model's options

    def __post_init__(self) -> None:
        if self.select not in SELECT:
            raise ValueError(f"select={self.select!r}: use one of {', '.join(SELECT)}")
        if self.validate_every < 0 or self.val_runs < 1 or self.val_steps < 1:
            raise ValueError("validate_every must be >= 0, val_runs and val_steps >= 1")
        if self.select == "best" and self.validate_every == 0:
            raise ValueError("select=best needs meta-validation: set validate_every "
                             "(e.g. validate_every=25)")

    @property
    def suite(self) -> str:
        t = self.task
        if t in ("ensemble", "ensemble+suite=base"):
            return "base"
        if t in ("ensemble+suite=extended", "extended"):
            return "extended"
        raise ValueError(f"meta-training task {t!r}: use ensemble or ensemble+suite=extended")

    def identity(self) -> dict[str, Any]:
        """What must stay the same across a resume (everything but ``steps``)."""
        d = asdict(self)
        d.pop("steps")
        d.pop("checkpoint_every")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MetaTrainConfig":
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"unknown meta-training option(s) {bad}; valid: {sorted(known)}")
        return cls(**d)


def _exp_int(gen: torch.Generator, mean: float) -> int:
    u = float(torch.rand(1, generator=gen, dtype=torch.float64))
    return int(math.floor(-mean * math.log(1.0 - u)))


def unroll_loss(model: LearnedModel, run: Any, xs: list[Tensor], state: dict, steps: int,
                gap0: Tensor, gen: torch.Generator | None, *, param_noise: float = 0.0,
                first_order: bool = False, stochastic: bool = True
                ) -> tuple[Tensor, list[Tensor], dict]:
    """The meta-objective of ``steps`` steps from ``xs``/``state`` (module docstring), and
    where they end.  Differentiable in the model's parameters."""
    f_star = run.f_star
    lrs = run.lrs
    total = xs[0].new_zeros(())
    for _ in range(steps):
        f, grads = run.value_and_grad(xs, gen, stochastic)
        if first_order:
            grads = [g.detach() for g in grads]
        ratio = (f - f_star).clamp_min(0) / gap0
        total = total + torch.log(ratio.clamp(max=1e3) + 1e-12).mean()
        us, state = model.update(grads, state)
        new = []
        for x, u in zip(xs, us):
            step = lrs.view(-1, *([1] * (x.dim() - 1))) * u
            x = x - step
            if param_noise > 0 and gen is not None:
                noise = torch.randn(x.shape, generator=gen, dtype=x.dtype)
                x = x + param_noise * lrs.view(-1, *([1] * (x.dim() - 1))) * noise
            new.append(x)
        xs = new
    return total / steps, xs, state


def validation_runs(cfg: MetaTrainConfig) -> list[ProblemRun]:
    """The meta-validation set: ``cfg.val_runs`` runs of the meta-training distribution
    drawn from ``cfg.val_seed`` alone, so every training seed is validated on the same
    runs (and the training runs' draws are not touched)."""
    sampler = RunSampler(cfg.suite, cfg.copies, (cfg.lr_low, cfg.lr_high),
                         cfg.multitask_prob, cfg.rescale_prob)
    gen = torch.Generator().manual_seed(derive_seed(int(cfg.val_seed), "meta-validation"))
    return [sampler.sample(gen) for _ in range(cfg.val_runs)]


def validation_score(model: LearnedModel, runs: list[ProblemRun], steps: int,
                     dtype: torch.dtype = torch.float64) -> float:
    """How far ``model`` gets in ``steps`` steps from the start of each run: the problem
    tasks' normalised score (:func:`~searchlab.tasks.problems.normalised_score`: orders of
    magnitude of gap reduction, 0..1, 0 for a run that diverges), mean over runs and
    copies (each copy with its own step scale).  No parameter noise, no meta-gradient;
    stochastic gradients drawn from a generator seeded by the run's index, so every
    validation sees the same noise."""
    total = 0.0
    with torch.no_grad():
        for i, run in enumerate(runs):
            xs = [x.to(dtype) for x in run.x0]
            f0 = run.value(xs)
            gap0 = (f0 - run.f_star).clamp_min(1e-30)
            _, xs, _ = unroll_loss(model, run, xs, model.init_state(xs), steps, gap0,
                                   torch.Generator().manual_seed(i))
            total += float(normalised_score(f0, run.value(xs), run.f_star).mean())
    return total / len(runs)


def _detach_state(state: dict) -> dict:
    return {k: [t.detach() for t in v] for k, v in state.items()}


def meta_train(cfg: MetaTrainConfig, out: str | Path, *, resume: bool = False,
               tracker: Any = None, progress: Callable[[int, int, float], None] | None = None,
               on_update: Callable[[int, LearnedModel], None] | None = None,
               dtype: torch.dtype = torch.float64) -> Path:
    """Meta-train ``cfg.optimizer`` and save it to ``out`` (module docstring).  Returns the
    saved file.  ``progress(done, total, loss)`` is called after every iteration,
    ``on_update(iteration, model)`` after every meta-update."""
    from .tracking import finish_meta, log_metrics

    out = Path(out)
    ckpt = out.with_name(out.name + ".ckpt")
    sampler = RunSampler(cfg.suite, cfg.copies, (cfg.lr_low, cfg.lr_high),
                         cfg.multitask_prob, cfg.rescale_prob)
    with torch.random.fork_rng(devices=[]):   # the initial meta-parameters: from the seed
        torch.manual_seed(int(cfg.seed))
        model = build_model(cfg.optimizer, **cfg.options).to(dtype)
    meta_opt = torch.optim.Adam(model.parameters(), lr=cfg.meta_lr)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    it, cpu, wall, losses = 0, 0.0, 0.0, []
    val_scores: list[tuple[int, float]] = []     # (iteration, meta-validation score)
    best: dict[str, Any] | None = None           # iteration, score, model of the best one
    run = xs = state = gap0 = None
    unrolls_left = 0
    tracker_state: dict[str, Any] = {}
    if resume and ckpt.is_file():
        data = torch.load(ckpt, map_location="cpu", weights_only=True)
        if data["identity"] != cfg.identity():
            diff = sorted(k for k in cfg.identity() if data["identity"].get(k) != cfg.identity()[k])
            raise ValueError(f"resume: {ckpt} was written with other settings ({', '.join(diff)}); "
                             "only steps may change")
        model.load_state_dict(data["model"])
        meta_opt.load_state_dict(data["meta_opt"])
        gen.set_state(data["gen"])
        it, cpu, wall, losses = data["iteration"], data["cpu_seconds"], data["wall_seconds"], list(data["losses"])
        tracker_state = data.get("tracker", {})
        val_scores = [(int(i), float(v)) for i, v in data.get("val_scores", [])]
        best = data.get("best")
        if data.get("run") is not None:
            r = data["run"]
            run = sampler.rebuild(r["spec"], r["x0"], r["lrs"])
            xs, state, gap0, unrolls_left = r["xs"], r["state"], r["gap0"], r["unrolls_left"]
    params = {k: v for k, v in cfg.identity().items() if k != "options"}
    params.update({f"options.{k}": v for k, v in cfg.options.items()})
    params["steps"] = cfg.steps
    tags = {"searchlab.role": "meta-train", "optimizer": cfg.optimizer, "task": cfg.task,
            "seed": str(cfg.seed)}
    if tracker is not None:
        if tracker_state.get("run_id"):
            tracker.resume(tracker_state, params, tags, [])
        else:
            tracker.start(params, tags)

    def save_checkpoint() -> None:
        run_data = None
        if run is not None:
            run_data = {"spec": run.spec, "x0": run.x0, "lrs": run.lrs, "xs": xs,
                        "state": state, "gap0": gap0, "unrolls_left": unrolls_left}
        payload = {"identity": cfg.identity(), "iteration": it, "model": model.state_dict(),
                   "meta_opt": meta_opt.state_dict(), "gen": gen.get_state(),
                   "cpu_seconds": cpu, "wall_seconds": wall, "losses": losses,
                   "tracker": tracker.state_dict() if tracker is not None else {},
                   "run": run_data, "val_scores": val_scores, "best": best}
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt.with_name(ckpt.name + ".tmp")
        torch.save(payload, tmp)
        tmp.replace(ckpt)

    val_set = validation_runs(cfg) if cfg.validate_every > 0 else []

    def validate() -> None:
        nonlocal best, cpu, wall
        c0, w0 = time.process_time(), time.perf_counter()
        value = validation_score(model, val_set, cfg.val_steps, dtype)
        val_scores.append((it, value))
        if best is None or value > best["score"]:
            best = {"iteration": it, "score": value,
                    "model": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        cpu += time.process_time() - c0
        wall += time.perf_counter() - w0
        if tracker is not None:
            log_metrics(tracker, {"meta/val_score": value}, it)

    if val_set and not val_scores:
        validate()                           # the initial meta-parameters are a candidate
    while it < cfg.steps:
        c0, w0 = time.process_time(), time.perf_counter()
        if run is None or unrolls_left <= 0:
            run = sampler.sample(gen)
            xs = [x.to(dtype) for x in run.x0]
            state = model.init_state(xs)
            with torch.no_grad():
                gap0 = (run.value(xs) - run.f_star).clamp_min(1e-30)
            unrolls_left = 1 + _exp_int(gen, cfg.unrolls_mean)
        T = min(cfg.unroll_max, cfg.unroll_min + _exp_int(gen, cfg.unroll_mean))
        loss, xs_new, state_new = unroll_loss(model, run, xs, state, T, gap0, gen,
                                              param_noise=cfg.param_noise,
                                              first_order=cfg.first_order)
        meta_opt.zero_grad()
        grad_norm = math.nan
        if torch.isfinite(loss):
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            grad_norm = float(gn)
            if math.isfinite(grad_norm):
                meta_opt.step()
                model.project_()
                if on_update is not None:
                    on_update(it + 1, model)
        finite = math.isfinite(float(loss.detach())) and math.isfinite(grad_norm)
        if finite and all(bool(torch.isfinite(x).all()) for x in xs_new):
            xs = [x.detach() for x in xs_new]
            state = _detach_state(state_new)
            unrolls_left -= 1
        else:
            run = None                       # drop the run; draw a new one
        it += 1
        cpu += time.process_time() - c0
        wall += time.perf_counter() - w0
        value = float(loss.detach())
        losses.append(value if math.isfinite(value) else float("nan"))
        if tracker is not None:
            log_metrics(tracker, {"meta/loss": value if math.isfinite(value) else 1e30,
                                  "meta/unroll": float(T), "meta/grad_norm":
                                  grad_norm if math.isfinite(grad_norm) else -1.0,
                                  "meta/cpu_seconds": cpu}, it)
        if progress is not None:
            progress(it, cfg.steps, value)
        if val_set and it % cfg.validate_every == 0:
            validate()
        if it % max(1, cfg.checkpoint_every) == 0 or it == cfg.steps:
            save_checkpoint()
    if val_set and val_scores[-1][0] != it:
        validate()     # the last meta-parameters too (after the checkpoint: a resume that
                       # extends the run validates where an uninterrupted run would)
    meta = {"name": out.stem, "optimizer": cfg.optimizer, "task": cfg.task, "seed": cfg.seed,
            "iterations": it, "cpu_seconds": cpu, "wall_seconds": wall, "losses": losses,
            "config": asdict(cfg), "default_lr": math.sqrt(cfg.lr_low * cfg.lr_high),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if val_scores:
        meta["val_scores"] = [list(v) for v in val_scores]
        assert best is not None
        meta["best_val_iteration"], meta["best_val_score"] = best["iteration"], best["score"]
        meta["selected_iteration"] = best["iteration"] if cfg.select == "best" else it
        if cfg.select == "best":
            model.load_state_dict(best["model"])
    try:
        from .. import __version__
        meta["searchlab_version"] = __version__
    except ImportError:  # pragma: no cover
        pass
    path = save_learned(out, model, meta)
    if tracker is not None:
        finite_losses = [x for x in losses if math.isfinite(x)]
        tail = finite_losses[-max(1, len(finite_losses) // 10):] if finite_losses else [math.nan]
        summary = {"iterations": it, "cpu_seconds": cpu, "wall_seconds": wall,
                   "final_loss": sum(tail) / len(tail)}
        if best is not None:
            summary.update(best_val_score=best["score"], best_val_iteration=best["iteration"],
                           selected_iteration=meta["selected_iteration"])
        finish_meta(tracker, summary, path)
    return path
