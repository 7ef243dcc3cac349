"""The multiscale operands (m_5, m_99, adam_5, adam_99) and the ``multiscale`` space,
where the symbolic search meets Shahid's multiscale Adam (issue 13, point 5).

References: the bias-corrected EMA and Adam formulas written out here directly, and
the learned-optimizer implementation of multiscale Adam (``searchlab.learned``), a
separate code path: an equal-weight LWA over beta1 = 0.5, 0.9, 0.99 is a DSL rule.
"""

from __future__ import annotations

import torch

from searchlab.dsl import SPACES, get_space
from searchlab.dsl.primitives import MULTISCALE_OPERANDS
from searchlab.optim import compile_rule

#: the paper's operands (section 4.1 and its decay operands), written out: the two
#: spaces that mirror the paper must not change when operands are added
PAPER_OPERANDS = {"g", "g2", "g3", "m", "v", "gamma", "sign_g", "sign_m", "1", "2", "eps",
                  "1e-4*w", "1e-3*w", "1e-2*w", "1e-1*w", "adam", "rmsprop", "ld", "cd",
                  "cd_1", "cd_2", "rd_1", "rd_10", "rd_20", "eps_t"}


def _grads(steps: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(5, generator=gen, dtype=torch.float64) + 0.3 for _ in range(steps)]


def _run(rule: str, grads):
    c = compile_rule(rule)
    p = torch.zeros(5, dtype=torch.float64)
    state = c.init_state([p])
    return [c.update([g], [p], state, t, len(grads))[0].clone() for t, g in enumerate(grads)]


def _ema(grads, beta, power=1):
    out, m = [], torch.zeros_like(grads[0])
    for t, g in enumerate(grads):
        m = beta * m + (1 - beta) * g ** power
        out.append(m / (1 - beta ** (t + 1)))
    return out


def test_multiscale_moving_averages_and_adams_follow_their_formulas():
    grads = _grads(12)
    v = _ema(grads, 0.999, 2)
    for name, beta in (("m_5", 0.5), ("m_99", 0.99)):
        for got, want in zip(_run(name, grads), _ema(grads, beta)):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    for name, beta in (("adam_5", 0.5), ("adam_99", 0.99)):
        want = [m / (torch.sqrt(vv) + 1e-8) for m, vv in zip(_ema(grads, beta), v)]
        for got, w in zip(_run(name, grads), want):
            torch.testing.assert_close(got, w, rtol=1e-10, atol=1e-12)
    # the fixed timescales are not the rule's betas: m is still beta1 = 0.9
    for got, want in zip(_run("m", grads), _ema(grads, 0.9)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_an_equal_weight_lwa_is_a_rule_of_the_multiscale_space():
    from searchlab.learned.multiscale import LWA_A

    grads = _grads(15, seed=3)
    lwa = LWA_A(beta1=(0.5, 0.9, 0.99)).double()   # weights start at 1/3 each
    state = lwa.init_state([grads[0]])
    rule = _run("adam_5 + adam + adam_99", grads)
    with torch.no_grad():
        for g, r in zip(grads, rule):
            (u,), state = lwa.update([g], state)
            torch.testing.assert_close(r / 3, u, rtol=1e-9, atol=1e-12)


def test_the_multiscale_space_has_them_and_the_paper_spaces_do_not():
    ms = get_space("multiscale")
    assert set(MULTISCALE_OPERANDS) <= set(ms.operands) and {"adam", "m"} <= set(ms.operands)
    assert set(SPACES["paper"].operands) == PAPER_OPERANDS
    assert set(SPACES["scratch"].operands) == PAPER_OPERANDS - {"adam", "rmsprop"}


def test_strategies_search_the_multiscale_space_and_the_rules_train():
    from searchlab.evaluation import Evaluator
    from searchlab.runner import run_search

    ev = Evaluator("ensemble", "smoke")
    res = run_search("random", ev, budget=40, batch_size=10, seed=0, space="multiscale")
    leaves = set().union(*(r.rule.replace("(", " ").replace(")", " ").replace(",", " ").split()
                           for r in res.results))
    assert leaves & set(MULTISCALE_OPERANDS)
    assert sum(r.status == "ok" for r in res.results) >= 10
    lwa = ev.evaluate("adam_5 + adam + adam_99", seed=0)
    assert lwa.status == "ok" and lwa.reward > ev.evaluate("g/0", seed=0).reward
