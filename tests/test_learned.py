"""Learned optimizers (searchlab.learned): each model's step against a direct
re-computation of its paper's equations, meta-gradients against finite differences,
constraints, optimizer state round trips, saved files, meta-training resume and
logging, the scoring protocol, and the extended problem ensemble's minima.

Sources: Wichrowska et al. 2017, section 3 (hierarchical RNN) and appendix; Shahid 2017
(normalized inputs, k timesteps / k momentums, multiscale Adam and its LWA variants).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from searchlab.learned import LearnedOptimizer, MODELS, build_model, load_learned, save_learned
from searchlab.learned.base import LearnedModel
from searchlab.learned.distribution import RunSampler
from searchlab.learned.metatrain import MetaTrainConfig, meta_train, unroll_loss

SMALL = {
    "hrnn": dict(timescales=2, param_hidden=3, tensor_hidden=2, global_hidden=2,
                 init_betas=[0.5, 0.9]),
    "ni-steps": dict(k=3, hidden=4),
    "ni-momentums": dict(k=3, hidden=4),
    "lwa-a": dict(beta1=[0.9, 0.6, 0.5]),
    "lwa-b": dict(beta1=[0.9, 0.6, 0.5]),
    "lwa-c": dict(beta1=[0.9, 0.6, 0.5]),
    "msadam-mlp": dict(beta1=[0.9, 0.5], hidden=4),
    "msadam-rnn": dict(beta1=[0.9, 0.5], hidden=3, layers=2),
}


def _randomized(kind: str, seed: int = 0, dtype: torch.dtype = torch.float64,
                scale: float = 0.5) -> torch.nn.Module:
    """A small model whose meta-parameters are all moved off their initial values (so
    no term of the equations is trivially zero)."""
    torch.manual_seed(seed)
    m = build_model(kind, **SMALL[kind]).to(dtype)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn_like(p))
    return m


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def _gru(x, h, W, U, b, c=None):
    """Cho et al.'s GRU, written out (the convention of searchlab.learned.base.GRUCell)."""
    H = h.shape[-1]
    c = np.zeros(3 * H) if c is None else c
    a = x @ W + b + c
    r = _sig(a[:H] + h @ U[:, :H])
    z = _sig(a[H:2 * H] + h @ U[:, H:2 * H])
    n = np.tanh(a[2 * H:] + (r * h) @ U[:, 2 * H:])
    return (1 - z) * h + z * n


def _np(t):
    return t.detach().double().numpy()


# --------------------------------------------------------------------------------------
# forward passes against the papers' equations
# --------------------------------------------------------------------------------------
def test_hrnn_step_matches_the_equations() -> None:
    """Two steps on two tensors (3 and 2 scalars), every quantity re-computed per scalar
    from Wichrowska et al. 2017 section 3 (module docstring of searchlab.learned.hrnn)."""
    m = _randomized("hrnn")
    S, eps = 2, 1e-12
    P = {k: _np(v) for k, v in m.named_parameters()}
    shapes = [(1, 3), (1, 2)]
    rng = np.random.default_rng(1)
    grads_seq = [[rng.normal(size=s) for s in shapes] for _ in range(2)]
    # reference state per scalar
    n = [3, 2]
    ref = {"mbar": [np.zeros((k, S)) for k in n], "lam": [np.zeros((k, S)) for k in n],
           "w": [np.zeros((k, S)) for k in n], "h": [np.zeros((k, 3)) for k in n],
           "ell": [np.zeros(k) for k in n], "ellbar": [np.zeros(k) for k in n],
           "o": [np.zeros(k) for k in n], "ht": [np.zeros(2) for _ in n], "hg": np.zeros(2)}
    state = m.init_state([torch.zeros(s, dtype=torch.float64) for s in shapes])
    for grads in grads_seq:
        us, state = m.update([torch.tensor(g) for g in grads], state)
        ell_mean = np.concatenate(ref["ell"]).mean()
        beta_l = _sig(P["step_momentum_logit"])
        new_ht, u_ref = [], []
        for i in range(2):
            for j in range(n[i]):
                g = grads[i][0, j]
                beta = _sig(P["beta_logits"] + ref["o"][i][j])
                ref["mbar"][i][j] = beta * ref["mbar"][i][j] + (1 - beta) * g
                ref["lam"][i][j] = beta * ref["lam"][i][j] + (1 - beta) * g * g
                ref["w"][i][j] = beta * ref["w"][i][j] + (1 - beta)
            ms = ref["lam"][i] / ref["w"][i]
            mm = (ref["mbar"][i] / ref["w"][i]) / np.sqrt(ms + eps)
            logms = np.log(ms + eps)
            gam = logms - logms.mean(1, keepdims=True)
            bias = ref["ht"][i] @ P["tensor_to_param"] + ref["hg"] @ P["global_to_param"]
            for j in range(n[i]):
                x = np.concatenate([mm[j], gam[j], [ref["ell"][i][j] - ell_mean]])
                ref["h"][i][j] = _gru(x, ref["h"][i][j], P["param_rnn.W"], P["param_rnn.U"],
                                      P["param_rnn.b"], bias)
            new_ht.append(_gru(ref["h"][i].mean(0), ref["ht"][i], P["tensor_rnn.W"],
                               P["tensor_rnn.U"], P["tensor_rnn.b"],
                               ref["hg"] @ P["global_to_tensor"]))
            out = ref["h"][i] @ P["readout"]
            d = out[:, 0] + mm @ P["direction_mix"]
            ref["ellbar"][i] = beta_l * ref["ellbar"][i] + (1 - beta_l) * ref["ell"][i]
            ref["ell"][i] = ref["ellbar"][i] + out[:, 1]
            ref["o"][i] = out[:, 2]
            u_ref.append(np.exp(ref["ell"][i]) * d / np.sqrt((d * d).mean() + eps))
        ref["ht"] = new_ht
        ref["hg"] = _gru(np.mean(new_ht, 0), ref["hg"], P["global_rnn.W"], P["global_rnn.U"],
                         P["global_rnn.b"])
        for i in range(2):
            np.testing.assert_allclose(_np(us[i])[0], u_ref[i], rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(_np(state["h"][i])[0], ref["h"][i], rtol=1e-10)
            np.testing.assert_allclose(_np(state["tensor_h"][i])[0], ref["ht"][i], rtol=1e-10)
        np.testing.assert_allclose(_np(state["global_h"][0])[0], ref["hg"], rtol=1e-10)


def test_hrnn_is_invariant_to_gradient_scale() -> None:
    """Section 3.2: rescaled inputs make the step invariant to the gradient's scale; the
    same direction for gradients 1000 times larger."""
    m = _randomized("hrnn", scale=0.3)
    g = [torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)]
    s1 = m.init_state([torch.zeros_like(x) for x in g])
    s2 = m.init_state([torch.zeros_like(x) for x in g])
    for _ in range(3):
        u1, s1 = m.update(g, s1)
        u2, s2 = m.update([1e3 * x for x in g], s2)
        for a, b in zip(u1, u2):
            torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


def _dx(m, inputs):
    W1, b1 = _np(m.l1.weight), _np(m.l1.bias)
    W2, b2 = _np(m.l2.weight), _np(m.l2.bias)
    h = np.maximum(inputs @ W1.T + b1, 0)
    return np.tanh((h @ W2.T)[..., 0] + b2[0] + inputs @ _np(m.skip))


@pytest.mark.parametrize("kind", ["ni-steps", "ni-momentums"])
def test_normalized_input_step_matches_the_update_equations(kind: str) -> None:
    """Shahid 2017: x_{t+1} = x_ref + dx (x_diff + eta_min), dx in [-1, 1], in the
    parameters' own units (the model works in units of eta_min = lr)."""
    m = _randomized(kind, seed=2)
    k, eta = 3, 0.05
    rng = np.random.default_rng(3)
    x0 = rng.normal(size=4)
    xs_hist = [x0.copy() for _ in range(k)]     # the last k iterates (start: x0)
    g_hist = [np.zeros(4) for _ in range(k)]
    betas = np.array(m.config.get("betas", [0.0] * k))
    mom, xavg, wsum = np.zeros((4, k)), np.zeros((4, k)), np.zeros(k)
    x = x0.copy()
    p = torch.tensor(x0).unsqueeze(0)
    state = m.init_state([p])
    for _ in range(5):
        g = np.sin(3 * x) + x                          # any gradient field
        us, state = m.update([torch.tensor(g).unsqueeze(0)], state)
        p = p - eta * us[0]
        if kind == "ni-steps":
            g_hist = g_hist[1:] + [g]
            H = np.stack(g_hist, -1)
            inp = H / np.abs(H).max(-1, keepdims=True)
            hist = np.stack(xs_hist[1:] + [x], -1)
            xmax, xmin = hist.max(-1), hist.min(-1)
            x_new = (xmax + xmin) / 2 + _dx(m, inp) * (xmax - xmin + eta)
            xs_hist = xs_hist[1:] + [x]
        else:
            mom = betas * mom + (1 - betas) * g[:, None]
            xavg = betas * xavg + (1 - betas) * x[:, None]
            wsum = betas * wsum + (1 - betas)
            mh = mom / wsum
            inp = mh / np.abs(mh).max(-1, keepdims=True)
            allx = np.concatenate([xavg / wsum, x[:, None]], -1)
            xmax, xmin = allx.max(-1), allx.min(-1)
            x_new = x + _dx(m, inp) * (xmax - xmin + eta)   # x_ref = x_t
        assert np.all(np.abs(_dx(m, inp)) <= 1)
        x = x_new
        np.testing.assert_allclose(_np(p)[0], x, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["lwa-a", "lwa-b", "lwa-c", "msadam-mlp", "msadam-rnn"])
def test_multiscale_adam_step_matches_the_equations(kind: str) -> None:
    m = _randomized(kind, seed=4)
    b1 = np.array(m.config["beta1"])
    b2, eps = 0.999, 1e-8
    k = len(b1)
    rng = np.random.default_rng(5)
    M, V = np.zeros((3, k)), np.zeros(3)
    H = [np.zeros((3, m.config.get("hidden", 1))) for _ in range(m.config.get("layers", 1))]
    state = m.init_state([torch.zeros(1, 3, dtype=torch.float64)])
    for t in range(1, 5):
        g = rng.normal(size=3)
        us, state = m.update([torch.tensor(g).unsqueeze(0)], state)
        M = b1 * M + (1 - b1) * g[:, None]
        V = b2 * V + (1 - b2) * g * g
        a = (M / (1 - b1 ** t)) / (np.sqrt(V / (1 - b2 ** t)) + eps)[:, None]
        if kind.startswith("lwa"):
            th = _np(m.theta)
            w = {"lwa-a": th - th.mean() + 1 / k, "lwa-b": np.exp(th) / np.exp(th).sum(),
                 "lwa-c": th}[kind]
            np.testing.assert_allclose(_np(m.weights()), w, rtol=1e-12)
        elif kind == "msadam-mlp":
            h = np.tanh(a @ _np(m.l1.weight).T + _np(m.l1.bias))
            w = 1 / k + h @ _np(m.l2.weight).T + _np(m.l2.bias)
        else:
            x = a
            for j, cell in enumerate(m.cells):
                H[j] = np.stack([_gru(x[i], H[j][i], _np(cell.W), _np(cell.U), _np(cell.b))
                                 for i in range(3)])
                x = H[j]
            w = 1 / k + x @ _np(m.out) + _np(m.out_bias)
        np.testing.assert_allclose(_np(us[0])[0], (w * a).sum(-1), rtol=1e-10, atol=1e-13)


# --------------------------------------------------------------------------------------
# meta-gradients
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(SMALL))
def test_meta_gradient_matches_finite_differences(kind: str) -> None:
    """d(meta-loss)/d(meta-parameters) of a 2-step unroll on a two-tensor problem
    (quadratic + booth), second-order terms included, vs central differences (float64)."""
    model = _randomized(kind, seed=6, scale=0.2)
    gen = torch.Generator().manual_seed(0)
    sampler = RunSampler("base", copies=2)
    run0 = sampler.sample(gen)
    x0 = [torch.rand(2, 10, generator=gen, dtype=torch.float64) * 2 - 1,
          torch.rand(2, 2, generator=gen, dtype=torch.float64) * 4 - 2]
    run = RunSampler.rebuild({"names": ["quadratic", "booth"], "scales": [None, None]}, x0,
                             torch.tensor([0.05, 0.2], dtype=torch.float64))
    del run0
    gap0 = run.value(x0) - run.f_star
    params = list(model.parameters())

    def loss() -> torch.Tensor:
        state = model.init_state(x0)
        return unroll_loss(model, run, list(x0), state, 2, gap0, None, stochastic=False)[0]

    grads = torch.autograd.grad(loss(), params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    rng = torch.Generator().manual_seed(1)
    h = 1e-6
    for _ in range(3):
        dirs = [torch.randn(p.shape, generator=rng, dtype=p.dtype) for p in params]
        analytic = sum(float((g * d).sum()) for g, d in zip(grads, dirs))
        with torch.no_grad():
            for p, d in zip(params, dirs):
                p.add_(h * d)
            up = float(loss())
            for p, d in zip(params, dirs):
                p.sub_(2 * h * d)
            down = float(loss())
            for p, d in zip(params, dirs):
                p.add_(h * d)
        numeric = (up - down) / (2 * h)
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8), kind


def test_first_order_meta_gradient_differs_from_the_full_one() -> None:
    model = _randomized("lwa-c", seed=7, scale=0.2)
    x0 = [torch.tensor([[1.5, -0.5]], dtype=torch.float64)]
    run = RunSampler.rebuild({"names": ["rosenbrock"], "scales": [None]}, x0,
                             torch.tensor([0.01], dtype=torch.float64))
    gap0 = run.value(x0) - run.f_star
    out = []
    for first in (False, True):
        loss = unroll_loss(model, run, list(x0), model.init_state(x0), 3, gap0, None,
                           stochastic=False, first_order=first)[0]
        out.append(torch.autograd.grad(loss, model.theta)[0])
    assert not torch.allclose(out[0], out[1])


# --------------------------------------------------------------------------------------
# constraints, saved files, state round trips
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lwa-a", "lwa-b", "lwa-c"])
def test_lwa_constraints_hold_after_every_meta_update(kind: str, tmp_path) -> None:
    seen = []

    def check(it: int, model) -> None:
        w = model.weights().detach()
        if kind in ("lwa-a", "lwa-b"):
            assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
        if kind == "lwa-b":
            assert bool((w > 0).all())
        seen.append(w.clone())

    cfg = MetaTrainConfig(optimizer=kind, steps=12, seed=0, unroll_mean=5, meta_lr=0.05)
    path = meta_train(cfg, tmp_path / f"{kind}.pt", on_update=check)
    assert len(seen) >= 10
    assert not torch.allclose(seen[0], seen[-1])          # the weights did move
    w = load_learned(path).model.weights()
    if kind != "lwa-c":
        assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)


def _train(net, opt, steps: int, seed: int) -> list[float]:
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x = torch.randn(16, 5, generator=gen)
        y = x.sum(1, keepdim=True)
        opt.zero_grad()
        loss = ((net(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_state_dict_round_trip_continues_identically(kind: str, tmp_path) -> None:
    """A real save/load of both the meta-parameters (file) and the optimizer state
    (``torch.save(opt.state_dict())``) continues bit for bit."""
    model = _randomized(kind, seed=8, dtype=torch.float32, scale=0.1)
    f = save_learned(tmp_path / "opt.pt", model, {"cpu_seconds": 1.5, "default_lr": 0.01})
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    opt = LearnedOptimizer([{"params": net[0].parameters()},
                            {"params": net[2].parameters(), "lr": 0.003}], f)
    assert opt.param_groups[0]["lr"] == 0.01                  # the file's default_lr
    _train(net, opt, 4, seed=1)
    torch.save({"net": net.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    after = _train(net, opt, 4, seed=2)
    final = [p.detach().clone() for p in net.parameters()]

    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    net2 = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    net2.load_state_dict(saved["net"])
    opt2 = LearnedOptimizer([{"params": net2[0].parameters()},
                             {"params": net2[2].parameters(), "lr": 0.003}], load_learned(f))
    opt2.load_state_dict(saved["opt"])
    assert _train(net2, opt2, 4, seed=2) == after
    for a, b in zip(final, net2.parameters()):
        assert torch.equal(a, b)


def test_saved_file_loads_without_pickled_code(tmp_path) -> None:
    model = _randomized("hrnn", dtype=torch.float32)
    f = save_learned(tmp_path / "h.pt", model, {"cpu_seconds": 12.5, "losses": [1.0, 0.5]})
    raw = torch.load(f, weights_only=True)                  # plain data only
    assert raw["kind"] == "hrnn" and raw["meta"]["cpu_seconds"] == 12.5
    back = load_learned(f)
    for (k, a), (_, b) in zip(model.state_dict().items(), back.model.state_dict().items()):
        assert torch.equal(a, b), k
    assert back.cpu_seconds == 12.5 and back.model.config == model.config


def test_optimizer_maximize_and_tensor_lr() -> None:
    model = build_model("lwa-a")
    p1 = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    p2 = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    o1 = LearnedOptimizer([p1], model, lr=torch.tensor(0.1))
    o2 = LearnedOptimizer([p2], model, lr=0.1, maximize=True)
    for _ in range(3):
        for p, o, s in ((p1, o1, 1.0), (p2, o2, -1.0)):
            o.zero_grad()
            (s * (p * p).sum()).backward()
            o.step()
    torch.testing.assert_close(p1, p2)
    assert float((p1.detach() ** 2).sum()) < 5.0


# --------------------------------------------------------------------------------------
# meta-training: resume and logging
# --------------------------------------------------------------------------------------
def test_meta_training_resumes_to_the_same_numbers(tmp_path) -> None:
    opts = dict(optimizer="hrnn", seed=3, unroll_mean=4, unroll_min=2, unrolls_mean=1.5,
                checkpoint_every=2, options=SMALL["hrnn"])
    a = meta_train(MetaTrainConfig(steps=7, **opts), tmp_path / "a.pt")
    meta_train(MetaTrainConfig(steps=4, **opts), tmp_path / "b.pt")
    b = meta_train(MetaTrainConfig(steps=7, **opts), tmp_path / "b.pt", resume=True)
    la, lb = load_learned(a), load_learned(b)
    assert la.meta["losses"] == lb.meta["losses"]
    for (k, x), (_, y) in zip(la.model.state_dict().items(), lb.model.state_dict().items()):
        assert torch.equal(x, y), k
    assert lb.meta["iterations"] == 7 and lb.cpu_seconds > 0
    with pytest.raises(ValueError, match="other settings"):
        meta_train(MetaTrainConfig(steps=8, **{**opts, "seed": 4}), tmp_path / "b.pt",
                   resume=True)


class _GradientStep(LearnedModel):
    """The plainest learned optimizer: its update is the gradient (plain gradient descent
    with each copy's step scale), or NaN with ``nan=True``."""

    kind = "test-gradient-step"

    def __init__(self, nan: bool = False) -> None:
        super().__init__(nan=nan)
        self.nan = nan

    def init_state(self, params):
        return {}

    def update(self, grads, state):
        return [g * math.nan if self.nan else g for g in grads], state


def test_validation_score_in_closed_form() -> None:
    """Gradient descent at step scale a on f(x) = |x|^2 / 2 shrinks the gap by (1 - a)^2
    per step: after T steps the score is min(1, -2 T log10(1 - a) / ORDERS), averaged
    over the copies' step scales; a run that diverges scores 0."""
    from searchlab.learned.distribution import ProblemRun
    from searchlab.learned.metatrain import validation_score
    from searchlab.tasks.problems import ORDERS, Problem

    bowl = Problem("bowl", 3, lambda x: 0.5 * (x * x).sum(-1),
                   lambda x: (0.5 * (x * x).sum(-1), x.clone()), 0.0, (-1.0,) * 3, (1.0,) * 3)
    lrs = torch.tensor([0.05, 0.3, 0.6], dtype=torch.float64)
    x0 = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.2, -0.1], [4.0, 1.0, 1.0]],
                      dtype=torch.float64)
    runs = [ProblemRun({}, (bowl,), [x0], lrs), ProblemRun({}, (bowl,), [2 * x0], lrs)]
    T = 12
    per_copy = [min(1.0, -2 * T * math.log10(1 - a) / ORDERS) for a in lrs.tolist()]
    assert 0 < per_copy[0] < per_copy[1] < 1 == per_copy[2]      # unclipped and clipped
    expected = sum(per_copy) / 3
    assert validation_score(_GradientStep(), runs, T) == pytest.approx(expected, rel=1e-9)
    assert validation_score(_GradientStep(nan=True), runs, T) == 0.0


_VALIDATED = dict(optimizer="hrnn", seed=2, unroll_mean=4, unroll_min=2, unrolls_mean=1.5,
                  meta_lr=0.05, validate_every=2, val_runs=3, val_steps=20,
                  options=SMALL["hrnn"])


def test_select_best_saves_the_meta_parameters_of_the_best_validation(tmp_path) -> None:
    from searchlab.learned.metatrain import validation_runs, validation_score

    cfg = MetaTrainConfig(steps=7, select="best", **_VALIDATED)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        first = build_model("hrnn", **SMALL["hrnn"]).to(torch.float64)
    snapshots = {0: {k: v.clone() for k, v in first.state_dict().items()}}
    saved = meta_train(cfg, tmp_path / "best.pt", on_update=lambda it, m: snapshots.update(
        {it: {k: v.detach().clone() for k, v in m.state_dict().items()}}))
    lo = load_learned(saved)
    history = dict(lo.meta["val_scores"])
    assert sorted(history) == [0, 2, 4, 6, 7]            # every 2, before the first, the last
    runs = validation_runs(cfg)
    for it in history:                                   # each logged value, recomputed
        model = build_model("hrnn", **SMALL["hrnn"]).to(torch.float64)
        model.load_state_dict(snapshots[it])
        assert validation_score(model, runs, cfg.val_steps) == pytest.approx(history[it], abs=1e-12)
    best = max(history, key=history.__getitem__)
    assert lo.meta["selected_iteration"] == lo.meta["best_val_iteration"] == best
    assert len(set(history.values())) > 1                # the meta-parameters did move
    for k, v in lo.model.state_dict().items():
        assert torch.equal(v, snapshots[best][k]), k
    assert lo.meta["iterations"] == 7


def test_validation_changes_nothing_in_the_training(tmp_path) -> None:
    plain = {k: v for k, v in _VALIDATED.items() if not k.startswith("val")}
    a = load_learned(meta_train(MetaTrainConfig(steps=5, **plain), tmp_path / "a.pt"))
    b = load_learned(meta_train(MetaTrainConfig(steps=5, **_VALIDATED), tmp_path / "b.pt"))
    assert a.meta["losses"] == b.meta["losses"] and "val_scores" not in a.meta
    assert b.meta["selected_iteration"] == 5                  # select=last: the last one
    for (k, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), k


def test_validated_meta_training_resumes_to_the_same_choice(tmp_path) -> None:
    opts = dict(_VALIDATED, select="best", checkpoint_every=2)
    a = load_learned(meta_train(MetaTrainConfig(steps=7, **opts), tmp_path / "a.pt"))
    meta_train(MetaTrainConfig(steps=5, **opts), tmp_path / "b.pt")
    b = load_learned(meta_train(MetaTrainConfig(steps=7, **opts), tmp_path / "b.pt",
                                resume=True))
    assert a.meta["val_scores"] == b.meta["val_scores"]
    assert a.meta["selected_iteration"] == b.meta["selected_iteration"]
    for (k, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), k


def test_select_best_without_validation_is_a_clear_error(capsys) -> None:
    from searchlab.cli import main

    with pytest.raises(ValueError, match="validate_every"):
        MetaTrainConfig(select="best")
    with pytest.raises(ValueError, match="select="):
        MetaTrainConfig(select="first", validate_every=5)
    assert main(["meta-train", "select=best", "steps=3", "tracking=none"]) == 2
    err = capsys.readouterr().err
    assert "validate_every" in err and err.count("\n") == 1


def test_every_meta_iteration_is_logged(tmp_path) -> None:
    from searchlab.learned.tracking import build_meta_tracker

    tracker = build_meta_tracker("memory")
    meta_train(MetaTrainConfig(optimizer="lwa-b", steps=5, unroll_mean=3), tmp_path / "m.pt",
               tracker=tracker)
    assert [s for s, _ in tracker.metrics] == [1, 2, 3, 4, 5]
    assert all("meta/loss" in m and "meta/cpu_seconds" in m for _, m in tracker.metrics)
    assert tracker.tags["searchlab.role"] == "meta-train" and tracker.finished == 1


def test_validation_scores_are_logged_and_summarised(tmp_path) -> None:
    from searchlab.learned.tracking import build_meta_tracker

    tracker = build_meta_tracker("memory")
    meta_train(MetaTrainConfig(optimizer="lwa-b", steps=5, unroll_mean=3, validate_every=2,
                               val_runs=2, val_steps=10, select="best"),
               tmp_path / "m.pt", tracker=tracker)
    val = [(s, m["meta/val_score"]) for s, m in tracker.metrics if "meta/val_score" in m]
    assert [s for s, _ in val] == [0, 2, 4, 5]
    assert [s for s, m in tracker.metrics if "meta/loss" in m] == [1, 2, 3, 4, 5]
    best = max(val, key=lambda sv: sv[1])
    assert tracker.summary["best_val_score"] == best[1]
    assert tracker.summary["selected_iteration"] == best[0]


@pytest.mark.slow
def test_meta_train_command_logs_to_mlflow_and_evaluate_scores_it(tmp_path, capsys) -> None:
    import json

    from mlflow import MlflowClient

    from searchlab.cli import main

    out = tmp_path / "lwa.pt"
    assert main(["meta-train", "optimizer=lwa-a", "steps=4", "seed=1", "quiet=true",
                 f"out={out}", f"run_dir={tmp_path}", "unroll_mean=3", "validate_every=2",
                 "val_runs=2", "val_steps=5", "select=best"]) == 0
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("meta-train-lwa-a-ensemble")
    (run,) = client.search_runs([exp.experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "meta/loss")] == [1, 2, 3, 4]
    val = client.get_metric_history(run.info.run_id, "meta/val_score")
    assert sorted(m.step for m in val) == [0, 2, 4]
    best = max(sorted(val, key=lambda m: m.step), key=lambda m: m.value)
    assert run.data.metrics["summary/selected_iteration"] == best.step == load_learned(out).meta["selected_iteration"]
    assert run.info.status == "FINISHED"
    capsys.readouterr()
    assert main(["evaluate", f"learned:{out}", "--task", "rosenbrock", "--fidelity", "smoke",
                 "--test", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["status"] == "ok" and r["rule"] == "learned:lwa" and len(r["sweep"]) == 3
    assert r["extra"]["meta_cpu_seconds"] > 0 and "test_reward" in r["extra"]
    assert main(["evaluate", "learned:no/such/file.pt"]) == 2


# --------------------------------------------------------------------------------------
# scoring: the rule protocol
# --------------------------------------------------------------------------------------
def test_single_timescale_lwa_scores_like_the_adam_rule() -> None:
    """LWA with one timescale (beta1 0.9) and weight 1 is Adam: on mnist1d at the smoke
    fidelity it gets the reward the evaluator gives the rule ``adam``."""
    from searchlab.evaluate import Evaluator
    from searchlab.learned.scoring import reference_row, score_learned

    adam = build_model("lwa-c", beta1=[0.9])
    ev = Evaluator("mnist1d", "smoke", num_samples=1200)
    rule = ev.evaluate("adam", 0, test=True)
    learned = score_learned(adam, "mnist1d", "smoke", 0, test=True, num_samples=1200)
    assert learned.status == "ok" and learned.task == rule.task
    assert learned.fidelity == rule.fidelity and learned.best_lr == rule.best_lr
    assert learned.reward == pytest.approx(rule.reward, abs=0.01)
    assert learned.extra["test_reward"] == pytest.approx(rule.extra["test_reward"], abs=0.01)
    assert [lr for lr, _ in learned.sweep] == [lr for lr, _ in rule.sweep]
    assert learned.extra["train_examples"] == rule.extra["train_examples"]
    rows = reference_row(adam, "rosenbrock", "smoke", [0, 1])
    assert [r.seed for r in rows] == [0, 1] and all("test_reward" in r.extra for r in rows)


def test_problem_scoring_follows_the_protocol() -> None:
    """On problem tasks the same starts, steps, lr grid and score as run_problems: LWA =
    Adam gets the rule's reward on the ensemble (up to float rounding)."""
    from searchlab.evaluate import Evaluator
    from searchlab.learned.scoring import score_learned

    adam = build_model("lwa-c", beta1=[0.9])
    rule = Evaluator("ensemble", "smoke").evaluate("adam", 2, test=True)
    learned = score_learned(adam, "ensemble", "smoke", 2, test=True)
    assert learned.reward == pytest.approx(rule.reward, abs=1e-6)
    assert learned.best_lr == rule.best_lr
    assert learned.extra["test_reward"] == pytest.approx(rule.extra["test_reward"], abs=1e-6)
    for name, s in rule.extra["scores"].items():
        assert learned.extra["scores"][name] == pytest.approx(s, abs=1e-6)


def test_a_diverging_learned_optimizer_scores_diverged() -> None:
    from searchlab.learned.scoring import score_learned

    bad = build_model("lwa-c", beta1=[0.9])
    with torch.no_grad():
        bad.theta.fill_(-1e6)          # steps up the gradient, enormous
    r = score_learned(bad, "rosenbrock", "smoke", 0)
    assert r.status == "diverged" and r.reward == 0.0


# --------------------------------------------------------------------------------------
# the extended problem ensemble
# --------------------------------------------------------------------------------------
def test_extended_problems_known_minima_and_gradients() -> None:
    from searchlab.tasks.problems import BRANIN_MIN, all_problems, build_extended_problems

    ps = all_problems()
    pi = math.pi
    branin = ps["branin"]
    for xy in ((-pi, 12.275), (pi, 2.275), (9.42478, 2.475)):
        assert float(branin.f(torch.tensor(xy, dtype=torch.float64))) == pytest.approx(0.397887, abs=1e-6)
    assert BRANIN_MIN == pytest.approx(0.397887, abs=1e-6)
    assert float(ps["ackley"].f(torch.zeros(2, dtype=torch.float64))) == pytest.approx(0.0, abs=1e-12)
    assert ps["michalewicz"].f_star == pytest.approx(-1.8013, abs=1e-4)
    assert float(ps["min_max"].f(torch.full((10,), 0.3, dtype=torch.float64))) == 0.0
    assert ps["multitask"].f_star == pytest.approx(ps["beale"].f_star + BRANIN_MIN
                                                   + ps["log_sum_exp"].f_star)
    gen = torch.Generator().manual_seed(0)
    for p in build_extended_problems():
        x = torch.stack([p.initial_point(s) for s in range(3)])
        f, g = p.value_and_grad(x)
        xx = x.clone().requires_grad_(True)
        fa = p.f(xx)
        (ga,) = torch.autograd.grad(fa.sum(), xx)
        torch.testing.assert_close(f, fa.detach(), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(g, ga, rtol=1e-8, atol=1e-8)
        assert bool((f >= p.f_star - 1e-9).all()), p.name
        if p.stochastic is not None:
            fs, gs = p.stochastic(x, gen)
            assert fs.shape == f.shape and gs.shape == g.shape


def test_the_ensemble_task_is_unchanged() -> None:
    """The eight problems and Adam's reward at the fast fidelity are what they were
    before the extended suite existed (value recorded at commit 1cd8ca6)."""
    from searchlab.evaluate import Evaluator
    from searchlab.tasks import get_task

    t = get_task("ensemble")
    assert t.id == "ensemble" and len(t.problems()) == 8
    assert get_task("ensemble", suite="extended").id == "ensemble+suite=extended"
    r = Evaluator("ensemble", "fast").evaluate("adam", 0)
    assert r.reward == 0.8585244670615452


def test_registry_lists_every_kind() -> None:
    assert set(MODELS.names()) == set(SMALL)
