"""The reward protocol (searchlab.evaluate): statuses, cache, fingerprint, determinism,
the paper protocol's step counts, agreement with a plain hand-written torch loop, CLI."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import pytest
import torch

import searchlab.evaluation.evaluator as evaluator_mod
from searchlab.cache import UNRECORDED, RewardCache
from searchlab.dsl import parse
from searchlab.evaluate import FIDELITIES, PAPER_LRS, Evaluator, fingerprint, get_fidelity, probe
from searchlab.evaluation.protocol import PARAM_LIMIT, CopyTrainer, Seeds
from searchlab.optim import RuleOptimizer
from searchlab.result import FLOOR_REWARD, Result
from searchlab.tasks import DataNotFoundError
from searchlab.tasks.base import ClassificationTask, Splits, StackedModel
from searchlab.tasks.mnist1d import MNIST1DConvNet

JPEG_TAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"
M1D = {"num_samples": 1200}   # 800 train / 200 validation / 200 test signals


@pytest.fixture(autouse=True)
def _env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEARCHLAB_CACHE", str(tmp_path_factory.getbasetemp() / "searchlab-cache"))
    torch.set_num_threads(1)


def smoke(**kw: Any) -> Evaluator:
    return Evaluator("mnist1d", "smoke", **{**M1D, **kw})


# --- statuses -------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["exp(exp(g))*1e9", "g/0", "1/(g-g)", "0^(-1)*g", "g^(-1)"])
def test_divergent_rules_score_diverged_or_invalid_without_raising(text: str) -> None:
    for reject in (True, False):
        r = smoke(reject_invalid=reject).evaluate(text, seed=0)
        assert r.status in ("diverged", "invalid"), (text, reject, r.status, r.message)
        assert r.reward == FLOOR_REWARD and r.message


def test_overflowing_rule_is_invalid_by_probe_and_diverged_when_trained() -> None:
    assert smoke().evaluate("exp(exp(g))*1e9").status == "invalid"
    r = smoke(reject_invalid=False).evaluate("exp(exp(g))*1e9")
    assert r.status == "diverged" and r.extra["diverged_lrs"] == [1e-3, 1e-2, 1e-1]
    assert all(math.isnan(acc) for _, acc in r.sweep)


def test_copies_with_exploded_weights_validate_as_diverged() -> None:
    """A copy with a weight above PARAM_LIMIT has an infinite validation loss (so the
    protocol drops it as diverged) even when its outputs are finite."""
    from searchlab.optim import compile_rule

    ev = smoke()
    s = ev.task.load()
    tr = CopyTrainer(ev.task, compile_rule(parse("adam")), [1e-3, 1e-2, 1e-1], Seeds.of(0), 10)
    with torch.no_grad():
        tr.model.params[-1][1, 0] = 2 * PARAM_LIMIT   # copy 1's head bias: logits stay finite
        tr.model.params[0][2, 0] = PARAM_LIMIT / 2    # copy 2: large, but below the limit
    acc, loss = tr.validate(s.val_x, s.val_y)
    assert tr.exploded().tolist() == [False, True, False]
    assert math.isfinite(loss[0]) and loss[1] == math.inf and math.isfinite(loss[2])


def test_g_over_zero_explodes_at_every_lr() -> None:
    # g/0 = g/1e-8 stays finite in float32 but its loss explodes: diverged, floor reward
    r = smoke().evaluate("g/0")
    assert r.status == "diverged" and r.best_lr is None


def test_probe_rejects_ascent_and_zero_updates_unless_disabled() -> None:
    ev = smoke()
    assert ev.evaluate("-g").status == "invalid" and "descent" in ev.evaluate("-g").message
    assert ev.evaluate("g - g").status == "invalid"
    assert ev.trainings == 0
    r = smoke(reject_invalid=False).evaluate("-g")
    assert r.status in ("ok", "diverged")


def test_unparsable_text_is_invalid_and_tokens_are_accepted() -> None:
    r = smoke().evaluate("g +* m")
    assert r.status == "invalid" and "cannot parse" in r.message
    assert smoke().evaluate(("g", "m", "nonsense", "id", "mul")).status == "invalid"
    ev = Evaluator("rosenbrock", "smoke")
    by_tokens = ev.evaluate(("sign_g", "sign_m", "id", "id", "mul", "o1", "g", "exp", "id", "mul"))
    assert by_tokens.rule == "exp(sign_g*sign_m)*g" and by_tokens.tokens[0] == "sign_g"
    assert by_tokens.reward == ev.evaluate("exp(sign(g)*sign(m))*g").reward


def test_timeout_is_a_status_and_not_cached(tmp_path: Path) -> None:
    cache = RewardCache(tmp_path / "r.sqlite")
    r = smoke(time_limit=1e-9, cache=cache).evaluate("g")
    assert r.status == "timeout" and r.reward == FLOOR_REWARD
    assert cache.puts == 0 and len(cache) == 0


def test_training_errors_become_error_results(monkeypatch: pytest.MonkeyPatch) -> None:
    class Strange(Exception):
        pass

    for exc, word in ((ZeroDivisionError("boom"), "ZeroDivisionError"), (Strange("odd"), "unexpected")):
        def fail(*a: Any, exc: Exception = exc, **k: Any) -> None:
            raise exc

        monkeypatch.setattr(evaluator_mod, "run_classification", fail)
        r = smoke().evaluate("g")
        assert r.status == "error" and r.reward == FLOOR_REWARD
        assert "Traceback" in r.message and word in r.message


def test_missing_cifar_data_raises_a_clear_error(tmp_path: Path) -> None:
    where = tmp_path / "no-cifar-here"
    ev = Evaluator("cifar10", "smoke", data_dir=where)
    with pytest.raises(DataNotFoundError, match="python batches") as err:
        ev.evaluate("g")
    assert str(where) in str(err.value)


# --- decay operands, protocol details --------------------------------------------------------
def test_decay_rule_gets_the_runs_total_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    import searchlab.optim as optim

    seen: list[int | None] = []
    real = optim.compile_rule

    class Spy:
        def __init__(self, c: Any) -> None:
            self.c = c

        def __getattr__(self, name: str) -> Any:
            return getattr(self.c, name)

        def update(self, grads, params, state, step, total_steps=None, generator=None, **kw):
            seen.append(total_steps)
            return self.c.update(grads, params, state, step, total_steps, generator, **kw)

        def apply_update(self, params, grads, state, step, lr, total_steps=None, generator=None,
                         **kw):
            seen.append(total_steps)
            return self.c.apply_update(params, grads, state, step, lr, total_steps, generator, **kw)

    probe("(1+ld*sign(g)*sign(m))*g")  # the probe (T=40) is memoised: not spied on below
    monkeypatch.setattr(optim, "compile_rule", lambda r: Spy(real(r)))
    r = smoke().evaluate("(1+ld*sign(g)*sign(m))*g")
    assert r.status == "ok" and 0.0 <= r.reward <= 1.0
    # smoke on 800 examples, batch 100: sweep runs of 8 steps (T=8), then a fresh final
    # run of 2 epochs (T=16): a decay's schedule depends on T, so no continuation
    assert r.extra["continued"] is False
    assert set(seen) == {8, 16} and seen.count(16) == 16


class _Linear(StackedModel):
    calls: ClassVar[list[tuple[int, int]]] = []

    def forward(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        w, b = self.params
        if train:
            _Linear.calls.append((w.shape[0], x.shape[0]))
        return torch.baddbmm(b.unsqueeze(1), x.unsqueeze(0).expand(w.shape[0], -1, -1), w)


class _TinyTask(ClassificationTask):
    """Softmax regression on fixed Gaussian blobs: counts every training forward pass."""

    name: ClassVar[str] = "tiny-test"

    def __init__(self, n: int = 12_000) -> None:
        g = torch.Generator().manual_seed(0)
        y = torch.randint(0, 10, (n,), generator=g)
        x = torch.randn(n, 8, generator=g) + torch.randn(10, 8, generator=g)[y]
        self.splits = Splits(x[:n - 7000], y[:n - 7000], x[n - 7000:n - 2000], y[n - 7000:n - 2000],
                             x[n - 2000:], y[n - 2000:])

    def load(self) -> Splits:
        return self.splits

    def build_model(self, k: int, generator: torch.Generator) -> StackedModel:
        w = torch.randn(8, 10, generator=generator) * 0.1
        return _Linear(_Linear.replicate([w, torch.zeros(10)], k), [])


@pytest.mark.parametrize("batched", [True, False])
def test_paper_protocol_step_counts(batched: bool) -> None:
    """Paper 4.2: 7 lrs x 1 epoch on 10,000 examples, batch 100; best lr 5 epochs."""
    _Linear.calls.clear()
    task = _TinyTask()  # 5,000 training examples, 5,000 validation
    fid = get_fidelity("paper")
    assert fid.lrs == PAPER_LRS == (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
    r = Evaluator(task, fid, batched=batched).evaluate("g")
    assert r.status == "ok" and len(r.sweep) == 7 and len(r.curve) == 5
    assert r.extra["examples"] == {"sweep": 5000, "final": 5000, "val": 5000}  # capped
    assert all(b == 100 for _, b in _Linear.calls)
    sweep_calls = 7 * 50 if not batched else 50
    sweep = _Linear.calls[:sweep_calls] if not batched else _Linear.calls[:50]
    if batched:
        assert sweep[0][0] == 7
    else:
        assert all(k == 1 for k, _ in sweep)
    # 5 final epochs of 50 steps: the sweep's epoch is reused (same run), 4 more are trained
    assert r.extra["continued"] is True
    assert len(_Linear.calls) - sweep_calls == 4 * 50
    assert r.extra["steps"] == 5 * 50


def test_sequential_path_equals_a_plain_torch_loop() -> None:
    """The evaluator's protocol against a hand-written loop: the same one-copy network,
    RuleOptimizer, the same seeds, data order and sizes; the final run retrained from
    scratch.  Both run the same arithmetic, so the rewards must be equal, not close: a
    tolerance would have to absorb rounding that training amplifies differently on every
    CPU (with ``torch.nn`` layers instead of the stacked network, 5 of 200 validation
    predictions moved on an Intel Xeon).  That the stacked network equals ``torch.nn``
    layers is tested on its own, in tests/test_tasks.py."""
    rule = "adam"
    ev = smoke(batched=False)
    res = ev.evaluate(rule, seed=5)
    fid = ev.fidelity
    s = ev.task.load()
    n, bs = 800, fid.batch_size
    seeds = Seeds.of(5)

    def plain_run(lr: float, epochs: int) -> list[float]:
        net = MNIST1DConvNet.create(1, torch.Generator().manual_seed(seeds.init))
        opt = RuleOptimizer(net.params, rule, lr=lr, total_steps=epochs * (n // bs))
        order = torch.Generator().manual_seed(seeds.order)
        accs = []
        for _ in range(epochs):
            perm = torch.randperm(n, generator=order)
            x, y = s.train_x[:n][perm], s.train_y[:n][perm]
            for i in range(n // bs):
                opt.zero_grad()
                # the evaluator's loss (mean cross-entropy, summed over the one copy), so
                # that the two reductions cannot round apart on another CPU
                net.losses(x[i * bs:(i + 1) * bs], y[i * bs:(i + 1) * bs]).sum().backward()
                opt.step()
            with torch.no_grad():   # in the evaluator's chunks (as many rows per product)
                step = ev.task.eval_rows
                pred = torch.cat([net.forward(s.val_x[lo:lo + step], train=False)[0].argmax(1)
                                  for lo in range(0, len(s.val_y), step)])
                accs.append(int((pred == s.val_y).sum()) / len(s.val_y))
        return accs

    sweep = [plain_run(lr, 1)[0] for lr in fid.lrs]
    assert [acc for _, acc in res.sweep] == sweep
    best = fid.lrs[int(np.argmax(sweep))]
    assert res.best_lr == best
    final = plain_run(best, fid.final_epochs)
    assert list(res.curve) == final
    assert res.reward == res.curve[-1] == res.val_acc


def test_batched_and_sequential_sweeps_agree() -> None:
    a = smoke(batched=True).evaluate("exp(sign(g)*sign(m))*g", seed=1)
    b = smoke(batched=False).evaluate("exp(sign(g)*sign(m))*g", seed=1)
    assert a.fidelity == "smoke+sequential" or b.fidelity == "smoke+sequential"
    for (lr1, x1), (lr2, x2) in zip(a.sweep, b.sweep):
        assert lr1 == lr2 and abs(x1 - x2) <= 0.011
    assert a.best_lr == b.best_lr and abs(a.reward - b.reward) <= 0.016


# --- determinism ----------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["m", "drop(g, 0.3)*exp(sign(g)*sign(m))"])
def test_same_seed_same_reward(text: str) -> None:
    r1, r2 = smoke().evaluate(text, seed=3), smoke().evaluate(text, seed=3)
    assert r1.status == "ok"
    assert (r1.reward, r1.sweep, r1.curve, r1.val_loss) == (r2.reward, r2.sweep, r2.curve, r2.val_loss)
    r3 = smoke().evaluate(text, seed=4)
    assert (r3.sweep, r3.curve) != (r1.sweep, r1.curve)


def test_global_rng_is_neither_read_nor_changed() -> None:
    torch.manual_seed(1)
    np.random.seed(1)
    state = torch.get_rng_state()
    a = smoke().evaluate("drop(g, 0.5)*sign(m)", seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(999)
    b = smoke().evaluate("drop(g, 0.5)*sign(m)", seed=0)
    assert a.reward == b.reward and a.sweep == b.sweep


# --- cache and fingerprint -------------------------------------------------------------------
def test_cache_hits_skip_training_also_across_runs(tmp_path: Path) -> None:
    path = tmp_path / "rewards.sqlite"
    ev = smoke(cache=RewardCache(path))
    first = ev.evaluate("exp(sign(g)*sign(m))*g", seed=0)
    assert ev.trainings == 1 and not first.cached
    again = ev.evaluate("exp(sign(g)*sign(m))*g", seed=0)
    assert ev.trainings == 1 and again.cached and ev.cache.hits == 1
    assert (again.reward, again.sweep, again.curve) == (first.reward, first.sweep, first.curve)
    # a new evaluator (a later run, another process) reads the same file
    ev2 = pickle.loads(pickle.dumps(smoke(cache_dir=tmp_path)))
    hit = ev2.evaluate("exp(sign(g)*sign(m))*g", seed=0)
    assert ev2.trainings == 0 and hit.cached and hit.reward == first.reward
    # another seed, task option or fidelity is another entry
    ev2.evaluate("exp(sign(g)*sign(m))*g", seed=1)
    assert ev2.trainings == 1
    ev3 = Evaluator("mnist1d", "smoke+final_epochs=3", num_samples=1200, cache_dir=tmp_path)
    ev3.evaluate("exp(sign(g)*sign(m))*g", seed=0)
    assert ev3.trainings == 1
    assert ev3.lookup("g*exp(sign(m)*sign(g))", seed=0).cached


def test_equivalent_rules_share_one_evaluation(tmp_path: Path) -> None:
    assert len({fingerprint(t) for t in ("g*2", "2*g", "g+g")}) == 1
    assert parse("g*2").key != parse("g+g").key  # not merged by the canonical key
    ev = smoke(cache=RewardCache(tmp_path / "r.sqlite"))
    results = [ev.evaluate(t, seed=0) for t in ("g*2", "2*g", "g+g")]
    assert ev.trainings == 1 and ev.cache.puts == 1 and ev.cache.hits == 2
    assert [r.cached for r in results] == [False, True, True]
    assert [r.rule for r in results] == ["g*2", "2*g", "g + g"]
    assert results[2].key == parse("g+g").key and results[2].extra["evaluated_as"] == "g*2"
    assert len({(r.reward, r.sweep) for r in results}) == 1


def test_fingerprint_separates_different_rules() -> None:
    rules = ["g", "g - clip(g2, 1e-5)", "g + 1e-4*w", "m", "adam", "rmsprop", "sign(g)*sign(m)*g",
             "exp(sign(g)*sign(m))*g", "(1+sign(g)*sign(m))*g", "(1+ld*sign(g)*sign(m))*g",
             "(1+cd*sign(g)*sign(m))*g", "drop(g, 0.1)", "drop(g, 0.3)", "g*(1+eps)", "1.0001*g"]
    prints = [fingerprint(r) for r in rules]
    assert len(set(prints)) == len(rules)
    # the same functions written differently
    assert fingerprint("adam") == fingerprint("m/sqrt(v)")
    assert fingerprint("abs(g)*sign(m)") == fingerprint("sign(g)*sign(m)*g")
    assert fingerprint("(1+sign(g)*sign(m))*g") == fingerprint("g + sign(g)*sign(m)*g")
    assert probe("g").ok and not probe("-g").ok and not probe("0*g").ok


def test_cache_stores_only_deterministic_outcomes(tmp_path: Path) -> None:
    cache = RewardCache(tmp_path / "c.sqlite")
    base = dict(rule="g", key="g", reward=0.5, seed=0, task="t", fidelity="f", fingerprint="abc")
    assert cache.put(Result(status="ok", **base))
    assert cache.put(Result(**{**base, "status": "diverged", "reward": 0.0, "fingerprint": "d"}))
    for status in ("timeout", "error", "invalid"):
        assert not cache.put(Result(**{**base, "status": status, "fingerprint": status}))
    assert len(cache) == 2 and cache.get("abc", "t", "f", 0).reward == 0.5
    assert cache.get("abc", "t", "f", 1) is None and cache.misses == 1


def test_a_cache_names_the_cpu_vendors_that_wrote_it_and_warns_about_others(tmp_path: Path) -> None:
    """Rewards round differently between CPU vendors (searchlab.kernels): a cache records
    who wrote it, and check() warns when the writers are not (only) this machine's vendor.
    A file from before the record (no meta table) names none and is not warned about."""
    import sqlite3
    import warnings

    from searchlab import kernels

    mine = kernels.cpu_vendor() or "unknown"
    base = dict(rule="g", key="g", reward=0.5, seed=0, task="t", fidelity="f", fingerprint="abc",
                status="ok")
    path = tmp_path / "c.sqlite"
    cache = RewardCache(path)
    assert cache.vendors() == set()
    cache.put(Result(**base))
    assert cache.vendors() == {mine}
    assert cache.other_vendors() == set()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache.check()                                   # only this machine's: no warning
    cache.close()
    with sqlite3.connect(path) as db:                   # as if another vendor's machine wrote it
        db.execute("DELETE FROM meta")
        db.execute("INSERT INTO meta VALUES ('cpu_vendor:OtherVendorInc', '1')")
    other = RewardCache(path)
    assert other.vendors() == {"OtherVendorInc"}
    assert other.other_vendors() == {"OtherVendorInc"}
    with pytest.warns(RuntimeWarning, match=f"OtherVendorInc CPUs, and this machine is {mine}"):
        other.check()
    assert other.get("abc", "t", "f", 0).reward == 0.5  # its rows stay readable
    other.put(Result(**{**base, "fingerprint": "new"}))
    assert other.vendors() == {"OtherVendorInc", mine}
    assert other.other_vendors() == {"OtherVendorInc"}   # this machine's rows do not count
    other.close()
    old = tmp_path / "old.sqlite"                       # written before the record existed
    with sqlite3.connect(old) as db:
        db.execute("CREATE TABLE results (fingerprint TEXT NOT NULL, task TEXT NOT NULL, "
                   "fidelity TEXT NOT NULL, seed INTEGER NOT NULL, protocol INTEGER NOT NULL, "
                   "key TEXT NOT NULL, rule TEXT NOT NULL, status TEXT NOT NULL, reward REAL, "
                   "created REAL NOT NULL, data TEXT NOT NULL, "
                   "PRIMARY KEY (fingerprint, task, fidelity, seed, protocol))")
        db.execute("INSERT INTO results VALUES ('old', 't', 'f', 0, 1, 'g', 'g', 'ok', 0.5, 0, "
                   "'{}')")
    legacy = RewardCache(old)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        legacy.check()                                  # nothing recorded: nothing to say
    assert legacy.vendors() == set()
    legacy.put(Result(**{**base, "fingerprint": "new"}))  # its old rows are not this machine's
    assert legacy.vendors() == {UNRECORDED, mine}
    assert legacy.other_vendors() == {UNRECORDED}
    legacy.close()
    with pytest.warns(RuntimeWarning, match="unrecorded ones"):
        RewardCache(old).check()
    restored = tmp_path / "restored.sqlite"             # a file restored from a known machine
    RewardCache(restored).note_vendor("AuthenticAMD")
    assert RewardCache(restored).vendors() == {"AuthenticAMD"}


# --- fidelities -------------------------------------------------------------------------------
def test_fidelities_and_names() -> None:
    paper = FIDELITIES.get("paper")
    assert (paper.sweep_examples, paper.sweep_epochs, paper.final_epochs, paper.val_examples,
            paper.batch_size) == (10_000, 1, 5, 5_000, 100)
    assert {"paper", "fast", "smoke"} <= set(FIDELITIES.names())
    f = get_fidelity("fast+final_epochs=5,lrs=0.001/0.01")
    assert f.final_epochs == 5 and f.lrs == (1e-3, 1e-2)
    assert f.key == "fast+lrs=0.001/0.01,final_epochs=5" and get_fidelity(f.key) == f
    # a config-style copy keeps its label but the cache key follows the fields
    from dataclasses import replace
    g = replace(FIDELITIES.get("fast"), final_epochs=5, name="fast+final_epochs=5")
    assert g.key == "fast+final_epochs=5" and replace(g, name="fast").key == g.key
    with pytest.raises(ValueError):
        get_fidelity("fast+nonsense=1")


# --- problem tasks ------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["ensemble", "rosenbrock"])
def test_problem_task_scores_are_normalised(task: str) -> None:
    ev = Evaluator(task, "smoke")
    for text in ("g", "m", "adam", "exp(sign(g)*sign(m))*g", "(1+sign(g)*sign(m))*g"):
        r = ev.evaluate(text, seed=2)
        assert r.status == "ok" and 0.0 <= r.reward <= 1.0 and r.seconds < 5
        assert all(0.0 <= v <= 1.0 for _, v in r.sweep)
        assert all(0.0 <= v <= 1.0 for v in r.extra["scores"].values())
        assert r.reward == max(v for _, v in r.sweep) and r.curve[-1] == pytest.approx(r.reward)
    assert ev.evaluate("g/0").status == "diverged"


def test_problem_batched_equals_sequential() -> None:
    a = Evaluator("ensemble", "smoke", batched=True).evaluate("adam", seed=0)
    b = Evaluator("ensemble", "smoke", batched=False).evaluate("adam", seed=0)
    for (_, x), (_, y) in zip(a.sweep, b.sweep):
        assert x == pytest.approx(y, abs=1e-9)


def test_adam_beats_sgd_on_rosenbrock_like_the_paper() -> None:
    # paper 6.1, Figure 5: with tuned lrs Adam and PowerSign beat SGD on Rosenbrock
    ev = Evaluator("rosenbrock", "fast")
    sgd, adam = ev.evaluate("g").reward, ev.evaluate("adam").reward
    powersign = ev.evaluate("exp(sign(g)*sign(m))*g").reward
    assert adam > sgd and powersign > sgd


# --- cifar10 on a small subset of the JPEG copy --------------------------------------------------
@pytest.mark.skipif(not JPEG_TAR.is_file(), reason="shared CIFAR-10 JPEG copy not present")
def test_cifar10_small_subset_end_to_end() -> None:
    ev = Evaluator("cifar10", "smoke", data_dir=JPEG_TAR, max_examples=300)
    assert ev.task.id == "cifar10+max_examples=300,source=images"
    r = ev.evaluate("exp(sign(g)*sign(m))*g", seed=0, test=True)
    assert r.status == "ok" and 0.0 <= r.reward <= 1.0 and 0.0 <= r.extra["test_reward"] <= 1.0
    assert r.extra["examples"] == {"sweep": 270, "final": 270, "val": 30}


# --- runner and CLI -----------------------------------------------------------------------------
def test_runner_drives_the_evaluator(tmp_path: Path) -> None:
    from searchlab.dsl import Rule, get_space
    from searchlab.runner import run_search
    from searchlab.strategy import Strategy

    tokens = [("sign_g", "g", "id", "id", "mul"),   # |g|
              ("g2", "m", "sqrt", "id", "left"),    # sqrt|g^2| = |g|: another key, same function
              ("m", "2", "id", "id", "mul"), ("g", "m", "id", "id", "mul")]

    class Fixed(Strategy):
        def __init__(self, space: Any, seed: int, **kw: Any) -> None:
            super().__init__(space, seed)
            self.todo = [Rule.from_tokens(t) for t in tokens]

        def ask(self, n: int) -> list:
            out, self.todo = self.todo[:n], self.todo[n:]
            return out

        def tell(self, results: Sequence[Result]) -> None:
            pass

    ev = Evaluator("ensemble", "smoke", cache_dir=tmp_path)
    out = run_search(Fixed(get_space("scratch", depth=1), 0), ev, budget=4, batch_size=2, eval_seed=0)
    assert len(out.results) == 4 and {r.status for r in out.results} <= {"ok", "diverged"}
    assert all(r.task == "ensemble" and r.fidelity == "smoke" for r in out.results)
    # 4 unique keys for the runner, 3 trainings: |g| written twice is one function
    assert ev.trainings == 3 and [r.cached for r in out.results] == [False, True, False, False]
    assert out.results[0].reward == out.results[1].reward


def test_cli_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from searchlab.cli import main

    args = ["evaluate", "exp(sign(g)*sign(m))*g", "--task", "rosenbrock", "--fidelity", "smoke",
            "--cache", str(tmp_path / "c.sqlite")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "status       ok" in out and "reward" in out and "<- best" in out
    assert main(args + ["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["cached"] is True and data["task"] == "rosenbrock" and 0 <= data["reward"] <= 1
    assert main(["evaluate", "g", "--task", "cifar10", "--data-dir", str(tmp_path / "none")]) == 2
    assert "CIFAR-10 data not found" in capsys.readouterr().err
