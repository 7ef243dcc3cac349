"""searchlab's optimizers as drop-in torch.optim optimizers (issue 16), checked against
torch's documented behaviour with torch's own optimizers as the reference where one
exists: Tensor lr, copies and pickles, complex parameters, maximize, foreach and the
flags that are refused.  bench/torch_optim_suite.py runs pytorch's own generic tests."""

from __future__ import annotations

import copy
import io
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from searchlab.optim import (
    AddSign,
    LinearCosineLR,
    PowerSign,
    RuleOptimizer,
    compile_rule,
    cosine_decay,
    linear_decay,
)

Factory = Callable[..., torch.optim.Optimizer]


def _with(defaults: dict[str, Any], kw: dict[str, Any]) -> dict[str, Any]:
    return {**defaults, **kw}


#: one deterministic rule, two stochastic ones (one reads every moving average, a decay
#: operand and the weights), and the two dedicated classes with sign decays
KINDS: dict[str, Factory] = {
    "rule": lambda ps, **kw: RuleOptimizer(ps, "exp(sign(g)*sign(m))*g", **_with({"lr": 0.01}, kw)),
    "rule-drop": lambda ps, **kw: RuleOptimizer(ps, "drop(m, 0.3)*exp(1e-3*w)",
                                                **_with({"lr": 0.01}, kw)),
    "rule-eps": lambda ps, **kw: RuleOptimizer(
        ps, "adam*(1+eps_t) + drop(gamma, 0.5) - 1e-3*w*cd", **_with(
            {"lr": 0.01, "total_steps": 20, "seed": 4}, kw)),
    "powersign": lambda ps, **kw: PowerSign(ps, **_with({"lr": 0.01, "sign_decay": cosine_decay(20)},
                                                        kw)),
    "addsign": lambda ps, **kw: AddSign(ps, **_with({"lr": 0.01, "sign_decay": linear_decay(20)}, kw)),
}
STOCHASTIC = ("rule-drop", "rule-eps")


def make_params(seed: int = 0) -> list[Tensor]:
    """Several shapes and two dtypes (so several buckets), one 0-dim tensor."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [((4, 3), torch.float32), ((5,), torch.float32), ((), torch.float32),
              ((2, 3), torch.float64)]
    return [torch.randn(s, dtype=d, generator=gen).requires_grad_() for s, d in shapes]


def set_grads(params: list[Tensor], t: int, scale: float = 1.0,
              skip: frozenset[int] = frozenset()) -> None:
    """Gradients that depend only on the step and the parameter's index."""
    gen = torch.Generator().manual_seed(1000 + t)
    for i, p in enumerate(params):
        g = torch.randn(p.shape, dtype=p.dtype, generator=gen)
        p.grad = None if i in skip else scale * g


def run(opt: torch.optim.Optimizer, params: list[Tensor], steps: range, scale: float = 1.0) -> None:
    for t in steps:
        set_grads(params, t, scale)
        opt.step()


def assert_same(a: list[Tensor], b: list[Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and torch.equal(x.detach(), y.detach()), (x, y)


def assert_same_state(oa: torch.optim.Optimizer, pa: list[Tensor],
                      ob: torch.optim.Optimizer, pb: list[Tensor]) -> None:
    for x, y in zip(pa, pb):
        sa, sb = oa.state[x], ob.state[y]
        assert sa.keys() == sb.keys() and len(sa) > 0
        for k in sa:
            if isinstance(sa[k], Tensor):
                assert torch.equal(sa[k], sb[k]), k
            else:
                assert sa[k] == sb[k], k


# --------------------------------------------------------------------------------------
# 1. Tensor lr
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(), (1,), (1, 1)])
@pytest.mark.parametrize("kind", KINDS)
def test_tensor_lr_steps_identically_to_the_float(kind, shape):
    lr = 2.0 ** -6  # exact in float32, so the Tensor holds the float's value
    a, b = make_params(), make_params()
    oa, ob = KINDS[kind](a, lr=lr), KINDS[kind](b, lr=torch.full(shape, lr))
    run(oa, a, range(6))
    run(ob, b, range(6))
    assert_same(a, b)
    assert_same_state(oa, a, ob, b)
    assert isinstance(ob.param_groups[0]["lr"], Tensor)  # kept as given, as torch does


def test_rule_g_with_tensor_lr_equals_torch_sgd_with_it():
    a, b = make_params(), make_params()
    run(RuleOptimizer(a, "g", lr=torch.tensor(0.1)), a, range(5))
    run(torch.optim.SGD(b, lr=torch.tensor(0.1), foreach=True), b, range(5))
    assert_same(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_tensor_lr_changed_in_place_takes_effect(kind):
    a, b = make_params(), make_params()
    lr = torch.tensor(2.0 ** -5)
    oa, ob = KINDS[kind](a, lr=lr), KINDS[kind](b, lr=2.0 ** -5)
    run(oa, a, range(3))
    run(ob, b, range(3))
    lr.fill_(2.0 ** -8)  # e.g. a scheduler, or a torch.compile'd loop
    ob.param_groups[0]["lr"] = 2.0 ** -8
    run(oa, a, range(3, 6))
    run(ob, b, range(3, 6))
    assert_same(a, b)
    c = make_params()
    run(KINDS[kind](c, lr=2.0 ** -5), c, range(6))  # the change did matter
    assert any(not torch.equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("sched", ["step", "linear-cosine"])
@pytest.mark.parametrize("kind", ["rule", "powersign"])
def test_schedulers_drive_a_tensor_lr_as_they_drive_a_float(kind, sched):
    def make(o):
        return (torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5) if sched == "step"
                else LinearCosineLR(o, decay_steps=8))

    a, b, c = make_params(), make_params(), make_params()
    # float64: the scheduler's products are the float's, bit for bit
    oa = KINDS[kind](a, lr=torch.tensor(0.02, dtype=torch.float64))
    ob = KINDS[kind](b, lr=0.02)
    ref = torch.optim.SGD(c, lr=torch.tensor(0.02, dtype=torch.float64))  # torch's lr sequence
    sa, sb, sr = make(oa), make(ob), make(ref)
    for t in range(8):
        for p, o, s in ((a, oa, sa), (b, ob, sb), (c, ref, sr)):
            set_grads(p, t)
            o.step()
            s.step()
        assert float(oa.param_groups[0]["lr"]) == ob.param_groups[0]["lr"] \
            == float(ref.param_groups[0]["lr"])
    assert_same(a, b)
    assert isinstance(oa.param_groups[0]["lr"], Tensor)


@pytest.mark.parametrize("kind", KINDS)
def test_tensor_lr_of_more_than_one_element_is_torchs_error(kind):
    w = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError) as ref:
        torch.optim.SGD([w], lr=torch.tensor([0.1, 0.1]))
    with pytest.raises(ValueError) as got:
        KINDS[kind]([w], lr=torch.tensor([0.1, 0.1]))
    assert str(got.value) == str(ref.value) == "Tensor lr must be 1-element"
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        KINDS[kind](None, lr=torch.tensor([0.1, 0.1]))  # checked before the params, as torch
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        KINDS[kind]([{"params": [w], "lr": torch.ones(2, 2)}])
    with pytest.raises(ValueError, match="lr must be >= 0"):
        KINDS[kind]([w], lr=torch.tensor(-0.1))


@pytest.mark.parametrize("kind", ["rule-eps", "addsign"])
def test_state_dict_with_tensor_lr_and_flags_loads_weights_only(kind):
    a, b = make_params(), make_params(seed=7)
    oa = KINDS[kind](a, lr=torch.tensor(0.01), maximize=True, foreach=False)
    run(oa, a, range(3))
    buf = io.BytesIO()
    torch.save({"params": [p.detach() for p in a], "opt": oa.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    with torch.no_grad():
        for p, q in zip(b, saved["params"]):
            p.copy_(q)
    ob = KINDS[kind](b, lr=0.5)
    ob.load_state_dict(saved["opt"])
    assert ob.param_groups[0]["maximize"] is True and ob.param_groups[0]["foreach"] is False
    run(oa, a, range(3, 7))
    run(ob, b, range(3, 7))
    assert_same(a, b)


# --------------------------------------------------------------------------------------
# 2. copies: deepcopy, pickle, torch.save(opt)
# --------------------------------------------------------------------------------------
def _torch_save_load(obj: Any) -> Any:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


COPIES: dict[str, Callable[[Any], Any]] = {
    "deepcopy": copy.deepcopy,
    "pickle": lambda obj: pickle.loads(pickle.dumps(obj)),
    "torch.save": _torch_save_load,
}


@pytest.mark.parametrize("how", COPIES)
@pytest.mark.parametrize("kind", KINDS)
def test_a_copy_steps_identically_to_the_original(kind, how):
    params = make_params()
    opt = KINDS[kind](params, maximize=kind == "addsign")
    run(opt, params, range(3))
    params2, opt2 = COPIES[how]((params, opt))  # together, as a model and its optimizer
    assert type(opt2) is type(opt)
    public = {k for k in vars(opt) if not k.startswith("_")}
    assert public == {k for k in vars(opt2) if not k.startswith("_")}  # torch's deepcopy test
    if isinstance(opt, (PowerSign, AddSign)):
        assert opt2.sign_decay == opt.sign_decay is not None
    run(opt, params, range(3, 8))
    run(opt2, params2, range(3, 8))
    assert_same(params, params2)
    assert_same_state(opt, params, opt2, params2)


def test_copy_keeps_a_sign_decay_that_is_a_plain_function():
    params = make_params()
    opt = PowerSign(params, lr=0.01, sign_decay=lambda t: 0.5 ** t)
    run(opt, params, range(2))
    params2, opt2 = copy.deepcopy((params, opt))
    run(opt, params, range(2, 5))
    run(opt2, params2, range(2, 5))
    assert_same(params, params2)
    ref = make_params()
    run(PowerSign(ref, lr=0.01), ref, range(5))  # the decay is what made the difference
    assert any(not torch.equal(x, y) for x, y in zip(params, ref))


def test_a_pickle_from_before_the_flags_and_the_decay_unpickles():
    params = make_params()
    opt = AddSign(params, lr=0.01)
    run(opt, params, range(2))
    old = torch.optim.Optimizer.__getstate__(opt)  # what such a pickle held
    old = copy.deepcopy({**old, "param_groups": [
        {k: v for k, v in g.items() if k not in ("foreach", "maximize", "differentiable",
                                                 "capturable")} for g in old["param_groups"]]})
    restored = AddSign.__new__(AddSign)
    restored.__setstate__(old)
    assert restored.sign_decay is None
    assert restored.param_groups[0]["maximize"] is False
    assert restored.param_groups[0]["foreach"] is None
    restored.step()  # has its workspace


# --------------------------------------------------------------------------------------
# 3. complex parameters: the real view, as torch's optimizers
# --------------------------------------------------------------------------------------
def _complex_and_real(seed: int = 0) -> tuple[list[Tensor], list[Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    cplx = [torch.randn(4, 3, dtype=torch.complex64, generator=gen).requires_grad_(),
            torch.randn(5, dtype=torch.complex64, generator=gen).requires_grad_(),
            torch.randn(3, 2, generator=gen).requires_grad_()]  # real and complex mixed
    real = [(torch.view_as_real(p) if p.is_complex() else p).detach().clone().requires_grad_()
            for p in cplx]
    return cplx, real


def _as_real(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


@pytest.mark.parametrize("foreach", [None, False])
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_complex_params_step_as_their_real_view(kind, maximize, foreach):
    cplx, real = _complex_and_real()
    oc = KINDS[kind](cplx, maximize=maximize, foreach=foreach)
    orr = KINDS[kind](real, maximize=maximize, foreach=foreach)
    for t in range(5):
        set_grads(cplx, t)
        for c, r in zip(cplx, real):
            r.grad = _as_real(c.grad).clone()
        oc.step()
        orr.step()
        assert_same([_as_real(p) for p in cplx], real)
    for c, r in zip(cplx, real):  # state: torch's layout, complex buffers shaped like p
        for k, v in oc.state[c].items():
            if isinstance(v, Tensor):
                assert v.dtype == c.dtype and v.shape == c.shape
                assert torch.equal(_as_real(v), orr.state[r][k])


def test_adam_rule_on_complex_params_matches_torch_adam():
    """torch.optim.Adam also takes complex parameters as their real view."""
    a, _ = _complex_and_real()
    b = [p.detach().clone().requires_grad_() for p in a]
    oa = RuleOptimizer(a, "adam", lr=1e-2)
    ob = torch.optim.Adam(b, lr=1e-2, eps=1e-8, foreach=True)
    for t in range(20):
        set_grads(a, t)
        set_grads(b, t)
        oa.step()
        ob.step()
    for x, y in zip(a, b):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-5, atol=1e-6)


def test_compiled_update_refuses_complex_tensors_naming_the_rule():
    c = compile_rule("sign(g)*m")
    g = [torch.randn(3, dtype=torch.complex64)]
    with pytest.raises(ValueError, match=r"sign\(g\)\*m.*view_as_real"):
        c.update(g, None, c.init_state(g), step=0)


# --------------------------------------------------------------------------------------
# 4. maximize
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("foreach", [None, False])
@pytest.mark.parametrize("kind", KINDS)
def test_maximize_is_minimizing_the_negated_loss(kind, foreach):
    a, b = make_params(), make_params()
    oa = KINDS[kind](a, maximize=True, foreach=foreach)
    ob = KINDS[kind](b, foreach=foreach)
    for t in range(6):
        set_grads(a, t)
        set_grads(b, t, scale=-1.0)  # the gradient of -loss
        grads = [p.grad.clone() for p in a]
        versions = [p.grad._version for p in a]
        oa.step()
        ob.step()
        # the gradients are read, never written (torch's test_grads_are_never_inplaced_into)
        assert [p.grad._version for p in a] == versions
        assert_same([p.grad for p in a], grads)
    assert_same(a, b)
    assert_same_state(oa, a, ob, b)  # the averages average -g, as torch's do


def test_maximize_rule_g_equals_torch_sgd_maximize():
    a, b = make_params(), make_params()
    run(RuleOptimizer(a, "g", lr=0.1, maximize=True), a, range(5))
    run(torch.optim.SGD(b, lr=0.1, maximize=True, foreach=True), b, range(5))
    assert_same(a, b)


@pytest.mark.parametrize("kind", ["rule", "powersign"])
def test_maximize_per_param_group(kind):
    """One group maximizing, one minimizing, equals the two optimizers apart
    (deterministic kinds: a stochastic one's groups share the generator)."""
    a = make_params()
    opt = KINDS[kind]([{"params": a[:2], "maximize": True}, {"params": a[2:]}])
    b1, b2 = make_params()[:2], make_params()[2:]
    o1, o2 = KINDS[kind](b1, maximize=True), KINDS[kind](b2)
    for t in range(4):
        set_grads(a, t)
        set_grads(b1 + b2, t)
        for o in (opt, o1, o2):
            o.step()
    assert_same(a, b1 + b2)


# --------------------------------------------------------------------------------------
# 5. foreach, differentiable, capturable
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_foreach_false_equals_foreach_true(kind):
    """torch's test_foreach_matches_forloop, with the same hard parts: layers frozen for
    two steps (their step counts fall behind: several buckets), a step without any
    gradient, a 0-dim parameter, two dtypes, a complex parameter; bit for bit, random
    draws included."""
    def params() -> list[Tensor]:
        ps = make_params()
        ps.append(torch.randn(3, dtype=torch.complex64,
                              generator=torch.Generator().manual_seed(5)).requires_grad_())
        return ps

    a, b = params(), params()
    oa, ob = KINDS[kind](a, foreach=False), KINDS[kind](b, foreach=True)
    for t in range(8):
        skip = frozenset({0, 3}) if t in (3, 4) else frozenset(range(5)) if t == 2 else frozenset()
        set_grads(a, t, skip=skip)
        set_grads(b, t, skip=skip)
        oa.step()
        ob.step()
    assert_same(a, b)
    assert_same_state(oa, a, ob, b)
    assert oa.state[a[0]]["step"] == 5 and oa.state[a[1]]["step"] == 7


@pytest.mark.parametrize("kind", STOCHASTIC)
def test_for_loop_draws_the_same_numbers_not_fresh_ones(kind):
    """The parity above is not luck: another seed changes the result."""
    a, b = make_params(), make_params()
    run(KINDS[kind](a, foreach=False, seed=1), a, range(3))
    run(KINDS[kind](b, foreach=False, seed=2), b, range(3))
    assert any(not torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("kind", KINDS)
def test_torchs_default_flags_are_accepted_and_kept_as_torch_keeps_them(kind):
    w = [torch.zeros(3, requires_grad=True)]
    opt = KINDS[kind](w, foreach=None, maximize=False, differentiable=False, capturable=False)
    ref = torch.optim.Adam([torch.zeros(3, requires_grad=True)])  # has all four flags
    group, ref_group = opt.state_dict()["param_groups"][0], ref.state_dict()["param_groups"][0]
    for flag in ("foreach", "maximize", "differentiable", "capturable"):
        assert group[flag] == ref_group[flag], flag


@pytest.mark.parametrize("flag", ["differentiable", "capturable"])
@pytest.mark.parametrize("kind", KINDS)
def test_unsupported_flags_are_a_clear_error(kind, flag):
    w = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=f"{flag}=True is not supported"):
        KINDS[kind]([w], **{flag: True})
    with pytest.raises(ValueError, match=f"{flag}=True is not supported"):
        KINDS[kind]([{"params": [w], flag: True}])


@pytest.mark.parametrize("kind", ["rule", "addsign"])
def test_foreach_must_be_none_or_a_bool(kind):
    with pytest.raises(TypeError, match="foreach must be None, True or False"):
        KINDS[kind]([torch.zeros(3, requires_grad=True)], foreach="yes")


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_without_the_flags_loads_with_torchs_defaults(kind):
    """A state dict saved before these flags existed (torch's test_can_load_older_state_dict)."""
    a, b = make_params(), make_params()
    oa, ob = KINDS[kind](a), KINDS[kind](b)
    run(oa, a, range(3))
    run(ob, b, range(3))
    old = copy.deepcopy(oa.state_dict())
    for group in old["param_groups"]:
        for flag in ("foreach", "maximize", "differentiable", "capturable"):
            del group[flag]
    oa.load_state_dict(old)
    assert oa.param_groups[0]["maximize"] is False and oa.param_groups[0]["foreach"] is None
    run(oa, a, range(3, 6))
    run(ob, b, range(3, 6))
    assert_same(a, b)
