"""The comparison fidelity's protocol options (searchlab.evaluation.protocol): recomputed
batch-norm statistics, the final run over the sweep's best lrs with a selection, seeded
final copies; fidelity keys; ``paper``/``fast`` unchanged; the evaluator's thread policy.

Every check recomputes the expected value directly from :class:`CopyTrainer` (or torch)
instead of comparing with numbers printed by the code under test."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import fields
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from searchlab.dsl import parse
from searchlab.evaluate import FIDELITIES, Evaluator, get_fidelity
from searchlab.evaluation.protocol import CopyTrainer, Seeds, _prepare_all, _ranked
from searchlab.optim import compile_rule

M1D = {"num_samples": 1200}   # 800 train / 200 validation / 200 test signals
NEW_FIELDS = {"bn_examples": 0, "final_lrs": 1, "select_epochs": 0, "final_copies": 1,
              "average_steps": 0}


@pytest.fixture(autouse=True)
def _env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEARCHLAB_CACHE", str(tmp_path_factory.getbasetemp() / "searchlab-cache"))
    torch.set_num_threads(1)


def ev_of(fidelity: str, **kw: Any) -> Evaluator:
    return Evaluator("mnist1d", fidelity, **{**M1D, **kw})


def _data(ev: Evaluator, fid: Any) -> tuple[Any, ...]:
    s = ev.task.load()
    n = len(s.train_y) if fid.final_examples is None else min(fid.final_examples, len(s.train_y))
    nv = len(s.val_y) if fid.val_examples is None else min(fid.val_examples, len(s.val_y))
    return s.train_x[:n], s.train_y[:n], _prepare_all(ev.task, s.val_x[:nv]), s.val_y[:nv]


# --- names and keys ------------------------------------------------------------------------
def test_compare_is_registered_with_its_own_key_and_config() -> None:
    from searchlab.config import CONFIG_DIR

    compare, fast = get_fidelity("compare"), get_fidelity("fast")
    assert "compare" in FIDELITIES.names() and compare.key == "compare" != fast.key
    assert (CONFIG_DIR / "fidelity" / "compare.yaml").is_file()
    # the options that make it a comparison protocol differ from fast's ...
    assert any(getattr(compare, k) != v for k, v in NEW_FIELDS.items())
    # ... and the problem tasks read only lrs and problem_steps, which it shares with fast
    assert (compare.lrs, compare.problem_steps) == (fast.lrs, fast.problem_steps)


def test_averaged_is_compare_with_a_later_selection_and_a_two_epoch_average() -> None:
    """The default protocol, as documented (fidelity.py, BENCHMARKS.md): compare's fields
    with select_epochs=3 and average_steps=80; on mnist1d its reward window is the last 80
    steps (2 epochs of 40), its final run continues the sweep run (the windows stay clear
    of the sweep), and it scores exactly what the equivalent compare override scores."""
    from searchlab.config import CONFIG_DIR, Config

    avg, compare = get_fidelity("averaged"), get_fidelity("compare")
    assert avg.key == "averaged" and (CONFIG_DIR / "fidelity" / "averaged.yaml").is_file()
    assert Config().fidelity.name == "averaged"
    differ = {f.name for f in fields(avg)
              if f.name not in ("name", "base", "doc") and getattr(avg, f.name) != getattr(compare, f.name)}
    assert differ == {"select_epochs", "average_steps"}
    assert (avg.select_epochs, avg.average_steps) == (3, 80)
    r = Evaluator("mnist1d", "averaged").evaluate("m", seed=2, use_cache=False)
    assert r.status == "ok" and r.fidelity == "averaged"
    assert r.extra["averaged_steps"] == 80 and r.extra["continued"] is True
    same = Evaluator("mnist1d", "compare+select_epochs=3,average_steps=80").evaluate(
        "m", seed=2, use_cache=False)
    assert same.reward == r.reward and same.best_lr == r.best_lr


def test_new_fields_are_part_of_the_protocol_key() -> None:
    for k, v in {"bn_examples": 500, "final_lrs": 2, "select_epochs": 1, "final_copies": 3}.items():
        f = get_fidelity(f"fast+{k}={v}")
        assert f.key == f"fast+{k}={v}" and getattr(f, k) == v and get_fidelity(f.key) == f
    f = get_fidelity("fast+bn_examples=all")
    assert f.bn_examples is None and f.key == "fast+bn_examples=None"
    with pytest.raises(ValueError):
        get_fidelity("fast+select_epochs=4")      # beyond final_epochs (3)
    with pytest.raises(ValueError):
        get_fidelity("fast+final_copies=0")


def test_paper_and_fast_keep_their_protocols() -> None:
    for name in ("paper", "fast", "smoke"):
        f = FIDELITIES.get(name)
        assert {k: getattr(f, k) for k in NEW_FIELDS} == NEW_FIELDS and f.key == name
    names = {f.name for f in fields(FIDELITIES.get("fast"))}
    assert set(NEW_FIELDS) <= names


def test_fast_reward_is_the_plain_sweep_then_continued_final_run() -> None:
    """fast-shaped protocol (smoke sizes): batched sweep, best lr, its sweep run continued;
    recomputed here with CopyTrainer calls, not with run_classification."""
    ev = ev_of("smoke")
    fid = ev.fidelity
    r = ev.evaluate("exp(sign(g)*sign(m))*g", seed=2, use_cache=False)
    x, y, xv, yv = _data(ev, fid)
    bs = fid.batch_size
    tr = CopyTrainer(ev.task, compile_rule(parse("exp(sign(g)*sign(m))*g")), list(fid.lrs),
                     Seeds.of(2), (len(y) // bs) * fid.sweep_epochs)
    tr.train_epochs(x, y, fid.sweep_epochs, bs, None)
    acc, loss = tr.validate(xv, yv)
    best = min(range(len(acc)), key=lambda i: (-acc[i], loss[i], i))
    assert [a for _, a in r.sweep] == acc and r.best_lr == fid.lrs[best]
    tr.keep([best])
    tr.total_steps = (len(y) // bs) * fid.final_epochs
    tr.train_epochs(x, y, fid.final_epochs - fid.sweep_epochs, bs, None)
    assert r.reward == tr.validate(xv, yv)[0][0] and r.extra["continued"] is True
    assert "copies" not in r.extra and "final_lrs" not in r.extra


# --- ranking and selection -------------------------------------------------------------------
def test_ranking_rule_on_a_hand_made_sweep() -> None:
    # accuracy first; equal accuracy -> lower loss; equal both -> smaller lr (lower index)
    acc = {0: 0.50, 1: 0.70, 2: 0.70, 3: 0.70, 4: 0.65}
    loss = {0: 1.0, 1: 0.90, 2: 0.80, 3: 0.80, 4: 0.10}
    assert _ranked(acc, loss) == [2, 3, 1, 4, 0]
    assert _ranked({}, {}) == []


def test_final_lrs_selection_keeps_the_best_after_select_epochs() -> None:
    """final_lrs=2, select_epochs=1: the sweep's two best lrs train together (fresh, same
    seeds) for one final epoch; the better one (by the ranking rule) goes on alone."""
    fid_text = "smoke+final_lrs=2,select_epochs=1"
    ev = ev_of(fid_text, batched=False)       # sequential sweep: the pair is trained afresh
    fid = ev.fidelity
    rule = "(1+sign(g)*sign(m))*g"
    r = ev.evaluate(rule, seed=4, use_cache=False)
    assert r.status == "ok"
    sweep_acc = {i: a for i, (_, a) in enumerate(r.sweep)}
    sweep_loss = dict(enumerate(r.extra["sweep_loss"]))
    top2 = _ranked(sweep_acc, sweep_loss)[:2]
    assert r.extra["final_lrs"] == [fid.lrs[i] for i in top2]
    x, y, xv, yv = _data(ev, fid)
    bs, total = fid.batch_size, (len(y) // fid.batch_size) * fid.final_epochs
    pair = CopyTrainer(ev.task, compile_rule(parse(rule)), [fid.lrs[i] for i in top2],
                       Seeds.of(4), total)
    pair.train_epochs(x, y, 1, bs, None)
    a, l = pair.validate(xv, yv)
    assert r.extra["final_scores"] == [[fid.lrs[i], a[k]] for k, i in enumerate(top2)]
    row = min(range(2), key=lambda k: (-a[k], l[k], fid.lrs[top2[k]]))
    assert r.best_lr == fid.lrs[top2[row]]
    pair.keep([row])
    pair.train_epochs(x, y, fid.final_epochs - 1, bs, None)
    assert r.reward == pair.validate(xv, yv)[0][0]


# --- final copies ------------------------------------------------------------------------------
def test_multi_copy_reward_is_the_mean_of_copies_trained_one_at_a_time() -> None:
    ev = ev_of("smoke+final_copies=3", batched=False)  # copy 0 = the sequential sweep run, continued
    fid = ev.fidelity
    rule = "m"
    r = ev.evaluate(rule, seed=1, use_cache=False, test=True)
    assert r.status == "ok" and len(r.extra["copies"]) == 3
    x, y, xv, yv = _data(ev, fid)
    s = ev.task.load()
    bs, total = fid.batch_size, (len(y) // fid.batch_size) * fid.final_epochs
    accs, tests = [], []
    for j in range(3):
        tr = CopyTrainer(ev.task, compile_rule(parse(rule)), [r.best_lr], Seeds.of(1, j), total)
        tr.train_epochs(x, y, fid.final_epochs, bs, None)
        accs.append(tr.validate(xv, yv)[0][0])
        tests.append(tr.validate(_prepare_all(ev.task, s.test_x), s.test_y)[0][0])
    assert r.extra["copies"] == accs and len(set(accs)) > 1     # the copies' seeds differ
    assert r.reward == pytest.approx(sum(accs) / 3, abs=1e-12) == r.val_acc
    assert r.extra["test_reward"] == pytest.approx(sum(tests) / 3, abs=1e-12)
    assert Seeds.of(1, 0) == Seeds.of(1) and Seeds.of(1, 1) != Seeds.of(1, 2)


# --- tail-averaged weights (average_steps) -------------------------------------------------------
def _recording(tr: CopyTrainer) -> list[list[torch.Tensor]]:
    """Record every copy's weights after each training step (the test's own record,
    independent of CopyTrainer's averaging)."""
    seen: list[list[torch.Tensor]] = []
    step = tr._step

    def wrapped(xb: torch.Tensor, yb: torch.Tensor) -> None:
        step(xb, yb)
        seen.append([p.detach().clone() for p in tr.model.params])

    tr._step = wrapped  # type: ignore[method-assign]
    return seen


def _score_mean_of(tr: CopyTrainer, iterates: list[list[torch.Tensor]], x: torch.Tensor,
                   xv: torch.Tensor, yv: torch.Tensor, n_bn: int) -> tuple[list[float], list[float]]:
    """Load the mean of ``iterates`` into ``tr``, recompute BN statistics, validate."""
    with torch.no_grad():
        for i, p in enumerate(tr.model.params):
            p.copy_(torch.stack([it[i] for it in iterates]).sum(0) / len(iterates))
    tr.refresh_bn(_prepare_all(tr.task, x[:n_bn]))
    return tr.validate(xv, yv)


def test_average_steps_scores_the_mean_of_the_last_iterates() -> None:
    """One final lr, the sweep run continued: the reward is the validation accuracy of the
    mean of the final run's last 5 iterates (not of the last iterate), with BN statistics
    recomputed for it; test accuracy comes from the same averaged weights."""
    ev = ev_of("smoke+bn_examples=200,average_steps=5")
    fid = ev.fidelity
    rule = "sign(m)"
    r = ev.evaluate(rule, seed=3, use_cache=False, test=True)
    assert r.status == "ok" and r.extra["continued"] and r.extra["averaged_steps"] == 5
    x, y, xv, yv = _data(ev, fid)
    bs = fid.batch_size
    tr = CopyTrainer(ev.task, compile_rule(parse(rule)), list(fid.lrs), Seeds.of(3),
                     (len(y) // bs) * fid.sweep_epochs)
    tr.train_epochs(x, y, fid.sweep_epochs, bs, None)
    best = fid.lrs.index(r.best_lr)
    tr.keep([tr.alive.index(best)])
    tr.total_steps = (len(y) // bs) * fid.final_epochs
    seen = _recording(tr)
    tr.train_epochs(x, y, fid.final_epochs - fid.sweep_epochs, bs, None)
    tr.refresh_bn(_prepare_all(ev.task, x[:200]))
    last = tr.validate(xv, yv)[0][0]
    a, _ = _score_mean_of(tr, seen[-5:], x, xv, yv, 200)
    s = ev.task.load()
    assert r.extra["last_iterate_val"] == last
    assert r.reward == pytest.approx(a[0], abs=1e-12) and r.reward != last
    assert r.extra["test_reward"] == pytest.approx(
        tr.validate(_prepare_all(ev.task, s.test_x), s.test_y)[0][0], abs=1e-12)
    assert r.curve[-1] == last                       # the curve stays the iterates'


def test_average_steps_judges_the_final_lrs_by_their_averaged_weights() -> None:
    """final_lrs=2, select_epochs=1, average_steps=3: each lr of the pair is judged by the
    mean of its last 3 iterates before the selection; training goes on from the chosen
    lr's iterate (not its average); the reward averages the last 3 iterates of the run."""
    ev = ev_of("smoke+bn_examples=200,final_lrs=2,select_epochs=1,average_steps=3",
               batched=False)
    fid = ev.fidelity
    rule = "(1+sign(g)*sign(m))*g"
    r = ev.evaluate(rule, seed=4, use_cache=False)
    assert r.status == "ok"
    lrs = r.extra["final_lrs"]
    x, y, xv, yv = _data(ev, fid)
    bs = fid.batch_size
    steps = len(y) // bs
    pair = CopyTrainer(ev.task, compile_rule(parse(rule)), lrs, Seeds.of(4), steps * fid.final_epochs)
    seen = _recording(pair)
    pair.train_epochs(x, y, 1, bs, None)
    iterate = [p.detach().clone() for p in pair.model.params]
    a, l = _score_mean_of(pair, seen[-3:], x, xv, yv, 200)
    assert r.extra["final_scores"] == [[lrs[k], a[k]] for k in range(2)]
    row = min(range(2), key=lambda k: (-a[k], l[k], lrs[k]))
    assert r.best_lr == lrs[row]
    with torch.no_grad():
        for p, q in zip(pair.model.params, iterate):
            p.copy_(q)
    pair.keep([row])
    seen.clear()
    pair.train_epochs(x, y, fid.final_epochs - 1, bs, None)
    assert r.reward == pytest.approx(_score_mean_of(pair, seen[-3:], x, xv, yv, 200)[0][0], abs=1e-12)


def test_an_average_reaching_into_the_sweep_trains_a_fresh_final_run() -> None:
    """A window longer than the final run's own steps after the sweep (12 of 16 steps, the
    sweep being 8): the sweep run is not continued (it kept no averages), and the reward
    is the mean of the last 12 iterates of a fresh final run."""
    ev = ev_of("smoke+bn_examples=200,average_steps=12")
    fid = ev.fidelity
    rule = "m"
    r = ev.evaluate(rule, seed=5, use_cache=False)
    assert r.status == "ok" and r.extra["continued"] is False and r.extra["averaged_steps"] == 12
    x, y, xv, yv = _data(ev, fid)
    bs = fid.batch_size
    tr = CopyTrainer(ev.task, compile_rule(parse(rule)), [r.best_lr], Seeds.of(5),
                     (len(y) // bs) * fid.final_epochs)
    seen = _recording(tr)
    tr.train_epochs(x, y, fid.final_epochs, bs, None)
    assert len(seen) == 16
    assert r.reward == pytest.approx(_score_mean_of(tr, seen[-12:], x, xv, yv, 200)[0][0], abs=1e-12)


def test_a_selection_at_the_end_and_the_reward_share_one_average() -> None:
    """select_epochs == final_epochs: the pair is judged by the means of its last 5
    iterates, and the winner's mean is the reward (the average is not restarted)."""
    ev = ev_of("smoke+bn_examples=200,final_lrs=2,select_epochs=2,average_steps=5", batched=False)
    fid = ev.fidelity
    rule = "(1+sign(g)*sign(m))*g"
    r = ev.evaluate(rule, seed=4, use_cache=False)
    lrs = r.extra["final_lrs"]
    x, y, xv, yv = _data(ev, fid)
    bs = fid.batch_size
    pair = CopyTrainer(ev.task, compile_rule(parse(rule)), lrs, Seeds.of(4),
                       (len(y) // bs) * fid.final_epochs)
    seen = _recording(pair)
    pair.train_epochs(x, y, fid.final_epochs, bs, None)
    pair.refresh_bn(_prepare_all(ev.task, x[:200]))
    last = pair.validate(xv, yv)[0]
    a, l = _score_mean_of(pair, seen[-5:], x, xv, yv, 200)
    row = min(range(2), key=lambda k: (-a[k], l[k], lrs[k]))
    assert r.best_lr == lrs[row] and r.extra["averaged_steps"] == 5
    assert r.reward == a[row] and r.extra["last_iterate_val"] == last[row]


def test_the_reward_window_never_reaches_back_past_a_mid_run_selection() -> None:
    """select after epoch 1 of 2 (step 8 of 16) with average_steps=12: both windows are
    clamped to the 8 steps on their side of the selection."""
    ev = ev_of("smoke+bn_examples=200,final_lrs=2,select_epochs=1,average_steps=12", batched=False)
    r = ev.evaluate("(1+sign(g)*sign(m))*g", seed=4, use_cache=False)
    assert r.status == "ok" and len(r.extra["final_lrs"]) == 2 and r.extra["averaged_steps"] == 8


def test_average_steps_needs_recomputed_bn_statistics() -> None:
    with pytest.raises(ValueError, match="bn_examples"):
        get_fidelity("fast+average_steps=40")
    with pytest.raises(ValueError, match="average_steps must be >= 0"):
        get_fidelity("compare+average_steps=-1")
    assert get_fidelity("compare+average_steps=40").key == "compare+average_steps=40"
    # populations average too (tests/test_population.py checks them against one-rule runs)
    assert ev_of("smoke+bn_examples=200,average_steps=5", population=2).max_batch == 2


# --- recomputed batch-norm statistics ----------------------------------------------------------
def test_refresh_bn_sets_the_batch_statistics_of_the_current_weights() -> None:
    ev = ev_of("smoke")
    s = ev.task.load()
    x, y = s.train_x[:800], s.train_y[:800]
    tr = CopyTrainer(ev.task, compile_rule(parse("adam")), [1e-3, 1e-2], Seeds.of(0), 8)
    tr.train_epochs(x, y, 1, 100, None)
    running = [b.clone() for b in tr.model.buffers]
    xb = x[:400]
    tr.refresh_bn(xb)
    assert tr._bn_momenta == pytest.approx([0.1] * 4, abs=1e-5)   # torch's BN momentum
    # layer 1 by hand: conv1 as windows @ weights, statistics over (examples, positions) of
    # each chunk, averaged over the chunks (chunk = max(batch, eval_rows // k) = 350)
    w1, b1 = tr.model.params[0].detach(), tr.model.params[1].detach()
    k, c = b1.shape
    chunk = max(100, ev.task.eval_rows // k)
    means, varis, sizes = [], [], []
    for lo in range(0, len(xb), chunk):
        xc = xb[lo:lo + chunk]
        win = F.pad(xc, (2, 2)).unfold(1, 5, 2).reshape(-1, 5)
        h = torch.addmm(b1.reshape(1, k * c), win, w1.reshape(k * c, 5).t())
        means.append(h.mean(0))
        varis.append(h.var(0))
        sizes.append(len(xc))
    mean = sum(m * n for m, n in zip(means, sizes)) / len(xb)
    var = sum(v * n for v, n in zip(varis, sizes)) / len(xb)
    assert torch.allclose(tr.model.buffers[0].view(-1), mean, atol=1e-5)
    assert torch.allclose(tr.model.buffers[1].view(-1), var, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(running[1], tr.model.buffers[1])    # it did change them


def test_bn_refresh_changes_validation_only() -> None:
    """bn_examples leaves training (the sweep's ranking inputs aside) untouched: with
    the same seeds the trained weights are identical."""
    rule = compile_rule(parse("sign(m)"))
    ev = ev_of("smoke")
    s = ev.task.load()
    x, y = s.train_x[:800], s.train_y[:800]
    xv = _prepare_all(ev.task, s.val_x)
    a = CopyTrainer(ev.task, rule, [1e-2], Seeds.of(3), 16)
    b = CopyTrainer(ev.task, rule, [1e-2], Seeds.of(3), 16)
    a.train_epochs(x, y, 2, 100, None, lambda e: a.validate(xv, s.val_y))
    b.train_epochs(x, y, 2, 100, None, lambda e: (b.refresh_bn(x), b.validate(xv, s.val_y)))
    assert all(torch.equal(p, q) for p, q in zip(a.model.params, b.model.params))


# --- problem tasks ---------------------------------------------------------------------------
@pytest.mark.parametrize("fidelity", ["compare", "averaged"])
@pytest.mark.parametrize("task", ["rosenbrock", "ensemble"])
def test_problem_tasks_score_the_same_at_compare_and_fast(task: str, fidelity: str) -> None:
    a = Evaluator(task, fidelity).evaluate("adam", seed=1, use_cache=False)
    b = Evaluator(task, "fast").evaluate("adam", seed=1, use_cache=False)
    assert a.status == b.status == "ok" and a.fidelity == fidelity
    assert (a.reward, a.best_lr, a.sweep) == (b.reward, b.best_lr, b.sweep)


# --- thread policy -----------------------------------------------------------------------------
_THREADS = r"""
import torch
torch.set_num_threads(2)
from searchlab.evaluate import Evaluator
out = []
ev = Evaluator("rosenbrock", "smoke")             # default "auto": the task's 1 thread
out.append(torch.get_num_threads())
ev.evaluate("adam", seed=0, use_cache=False)
out.append(torch.get_num_threads())                # not toggled around the evaluation
torch.set_num_threads(2)
ev.evaluate("m", seed=0, use_cache=False)
out.append(torch.get_num_threads())                # an explicit setting afterwards wins
Evaluator("rosenbrock", "smoke", threads=None)
out.append(torch.get_num_threads())                # None: left alone
Evaluator("ensemble", "smoke", threads=3)
out.append(torch.get_num_threads())
Evaluator("cifar10", "smoke", threads="auto")      # cifar10 prefers torch's own setting
out.append(torch.get_num_threads())
print(out)
"""


def test_evaluator_sets_the_cli_thread_policy_once() -> None:
    from searchlab.tasks import TASKS

    assert TASKS.get("mnist1d").preferred_threads == 1 and TASKS.get("cifar10").preferred_threads is None
    res = subprocess.run([sys.executable, "-c", _THREADS], capture_output=True, text=True, check=True)
    assert res.stdout.strip().splitlines()[-1] == "[1, 1, 2, 2, 3, 3]"
    with pytest.raises(ValueError):
        Evaluator("rosenbrock", "smoke", threads="many")
