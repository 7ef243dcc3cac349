"""The paper's controller (strategies/controller.py): ``nos-ppo`` and ``reinforce``.

Checked against the paper (Bello et al. 2017, sections 3.2 and 4.2) and against
independent references: masks via ``check_tokens``, learning via a synthetic bandit
whose optimum is known (PowerSign's tokens), checkpoints via a run that never stopped.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from searchlab.dsl import Rule, Space, check_tokens, get_space, parse, valid_next_tokens
from searchlab.result import FLOOR_REWARD, Result
from searchlab.runner import run_search
from searchlab.strategy import STRATEGIES
from searchlab.testing.toy import ToyEvaluator
from searchlab.strategies.controller import (PRESETS, NosPPO, Reinforce, make_config, ppo_clip_loss,
                                   single_thread)

ALGOS = ["nos-ppo", "reinforce"]
SMALL = get_space("small")
POWERSIGN = parse("exp(sign(g)*sign(m))*g").to_tokens()


def result(rule: Rule, reward: float, **kw) -> Result:
    return Result(rule=rule.text, key=rule.key, reward=reward, **kw)


def build(name: str, seed: int = 0, space=SMALL, **options):
    return STRATEGIES.get(name)(space, seed, **options)


def logp_of(strategy, strings) -> torch.Tensor:
    """log p(tokens) of each token string under the strategy's controller (masked)."""
    space = strategy.space
    ids = [[space.index[t] for t in tokens] for tokens in strings]
    masks = torch.from_numpy(np.stack([np.stack([valid_next_tokens(space, row[:i])
                                                 for i in range(len(row))]) for row in ids]))
    with torch.no_grad(), single_thread():
        logp, _ = strategy.policy.log_probs(torch.tensor(ids), masks)
    return logp.sum(1)


def hamming_reward(rule: Rule) -> float:
    """Bandit reward: fraction of positions equal to PowerSign's token string."""
    return float(np.mean([a == b for a, b in zip(rule.to_tokens(), POWERSIGN)]))


def run_bandit(strategy, rounds: int, n: int = 10, sign: float = 1.0) -> list[float]:
    means = []
    for _ in range(rounds):
        rules = strategy.ask(n)
        rewards = [sign * hamming_reward(r) for r in rules]
        strategy.tell([result(r, x) for r, x in zip(rules, rewards)])
        means.append(sign * float(np.mean(rewards)))
    return means


# --- the paper's architecture and presets ------------------------------------------
@pytest.mark.parametrize("name", ALGOS)
def test_registered(name):
    assert STRATEGIES.get(name) is {"nos-ppo": NosPPO, "reinforce": Reinforce}[name]


def test_controller_is_the_papers_lstm():
    s = build("nos-ppo", seed=3, space=get_space("scratch"))
    pol = s.policy
    # paper 4.2: "a single-layer LSTM with hidden state size 150"
    assert isinstance(pol.lstm, torch.nn.LSTM)
    assert pol.lstm.num_layers == 1 and pol.lstm.hidden_size == 150
    # paper 3.2: different softmax weights at every step of prediction
    assert len(pol.heads) == s.space.length
    ws = [h.weight for h in pol.heads]
    assert len({w.data_ptr() for w in ws}) == len(ws)
    assert all(w.shape == (len(s.space.vocab), 150) for w in ws)
    # paper 4.2: "weights are initialized uniformly at random between -0.08 and 0.08"
    flat = torch.cat([p.detach().flatten() for p in pol.parameters()])
    assert flat.min() >= -0.08 and flat.max() <= 0.08
    assert flat.min() < -0.079 and flat.max() > 0.079            # the whole range is used
    assert abs(float(flat.mean())) < 2e-3
    assert float(flat.std()) == pytest.approx(0.16 / math.sqrt(12), rel=0.02)  # uniform std


def test_previous_token_is_fed_back():
    """The distribution at position 1 depends on the token chosen at position 0."""
    space = SMALL
    pol = build("nos-ppo", seed=0).policy
    masks = torch.ones(2, space.length, len(space.vocab), dtype=torch.bool)
    toks = torch.zeros(2, space.length, dtype=torch.long)
    toks[1, 0] = 1                                    # only token 0 differs
    out, _ = pol.lstm(pol.embedding(torch.cat([torch.full((2, 1), pol.start_token), toks[:, :-1]], 1)))
    assert torch.equal(out[0, 0], out[1, 0])          # position 0 sees only the start token
    assert not torch.allclose(out[0, 1], out[1, 1])   # position 1 sees token 0
    logp, _ = pol.log_probs(toks, masks)                 # token 1 scored in both contexts
    assert logp[0, 1] != logp[1, 1]


@pytest.mark.parametrize("name", ALGOS)
def test_paper_preset_is_section_4_2(name):
    cfg = PRESETS[name]["paper"]
    assert cfg.lr == 1e-5 and cfg.minibatch_size == 5 and cfg.batch_size == 5
    assert cfg.entropy == 0.0015 and cfg.hidden == 150 and cfg.init_range == 0.08
    s = build(name, preset="paper")
    assert isinstance(s.optimizer, torch.optim.Adam)
    assert s.optimizer.param_groups[0]["lr"] == 1e-5
    assert s.policy.lstm.hidden_size == 150
    assert s.name == f"{name}[paper]"


def test_options_override_and_unknown_options_are_errors():
    s = build("nos-ppo", lr=1e-3, clip=0.1)
    assert s.config.lr == 1e-3 and s.config.clip == 0.1
    assert s.name == "nos-ppo[lr=0.001,clip=0.1]"
    assert build("reinforce").name == "reinforce"
    with pytest.raises(TypeError, match="lrate"):
        make_config("nos-ppo", lrate=1.0)
    with pytest.raises(KeyError, match="preset"):
        build("nos-ppo", preset="fast")
    with pytest.raises(ValueError):
        build("nos-ppo", repeats="sometimes")


# --- masks ---------------------------------------------------------------------------
@pytest.mark.parametrize("space", [get_space("small"), get_space("scratch", depth=3),
                                   get_space("small", reuse_output=False, distinct_operands=False,
                                             no_final_add=False)],
                         ids=["small", "scratch-d3", "small-unconstrained"])
def test_samples_honour_the_masks(space):
    s = build("nos-ppo", seed=1, space=space)
    # adversarial controller: push every output layer towards the forbidden tokens of
    # its slot, so an unmasked sampler would almost never produce a valid rule
    with torch.no_grad():
        for pos, head in enumerate(s.policy.heads):
            kind = ("operand", "operand", "unary", "unary", "binary")[pos % 5]
            allowed = {"operand": set(space.operands) | {f"o{k}" for k in range(1, 4)},
                       "unary": set(space.unary), "binary": set(space.binary)}[kind]
            for i, tok in enumerate(space.vocab):
                head.bias[i] = -20.0 if tok in allowed else 20.0
            head.bias[space.index[space.binary[0]]] = 25.0   # e.g. "add" everywhere
    strings = []
    for n in (200, 100):
        rules = s.ask(n)
        sampled = [tuple(space.vocab[i] for i in row) for row in s._pending[0].tolist()]
        for r, tokens in zip(rules, sampled):
            check_tokens(space, tokens)                  # raises if a mask was ignored
            assert r == Rule.from_tokens(tokens)
        strings += sampled
    assert "add" in {t for tokens in strings for t in tokens[:-1]}   # the bias pulls ...
    if space.no_final_add:
        assert all(tokens[-1] != "add" for tokens in strings)        # ... but not here
    assert len(set(strings)) > 10                        # still sampling, not a fixed string


def test_entropy_and_logp_are_finite_with_masks_and_gradients_too():
    s = build("reinforce", seed=0)
    rules = s.ask(8)
    tokens, masks = s._pending
    logp, ent = s.policy.log_probs(tokens, masks)
    assert torch.isfinite(logp).all() and torch.isfinite(ent).all()
    (logp.sum() + ent.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in s.policy.parameters())
    # forced positions (reuse of the latest output in group 2) have logp 0, entropy 0
    forced = masks.sum(-1) == 1
    assert forced.any()
    assert torch.all(logp[forced] == 0) and torch.all(ent[forced] == 0)
    # entropy of an untrained controller is close to log(#valid) at each position
    assert torch.allclose(ent[~forced], masks.sum(-1)[~forced].double().log().float(), atol=0.05)


# --- learning --------------------------------------------------------------------------
# A tiny depth-1 space (640 token strings) whose rewarded set is known exactly: every
# string whose rule contains sign(g)*sign(m) (32 of them, found by enumeration).
BANDIT = Space("bandit", ("g", "m", "sign_g", "sign_m", "1"), ("id", "sign", "exp", "neg"),
               ("mul", "sub"), depth=1)


def all_strings(space) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []

    def rec(prefix: list[str]) -> None:
        if len(prefix) == space.length:
            out.append(tuple(prefix))
            return
        for i in np.flatnonzero(valid_next_tokens(space, prefix)):
            rec(prefix + [space.vocab[i]])
    rec([])
    return out


def sign_agreement(rule: Rule) -> float:
    return 1.0 if "sign(g)*sign(m)" in rule.key else 0.0


REWARDED = [t for t in all_strings(BANDIT) if sign_agreement(Rule.from_tokens(t))]


def p_rewarded(strategy) -> float:
    """Exact probability that the controller samples a rewarded rule."""
    return float(logp_of(strategy, REWARDED).exp().sum())


def run_sign_bandit(strategy, rounds: int, sign: float = 1.0) -> list[float]:
    means = []
    for _ in range(rounds):
        rules = strategy.ask(10)
        rewards = [sign_agreement(r) for r in rules]
        strategy.tell([result(r, sign * x) for r, x in zip(rules, rewards)])
        means.append(float(np.mean(rewards)))
    return means


def test_bandit_has_a_rare_rewarded_set():
    assert len(all_strings(BANDIT)) == 640 == BANDIT.size()
    assert 20 <= len(REWARDED) <= 40
    assert ("sign_g", "sign_m", "id", "id", "mul") in REWARDED


@pytest.mark.parametrize("name", ALGOS)
def test_raises_the_probability_of_a_rewarded_rule(name):
    """Reward 1 for rules containing sign(g)*sign(m): the probability of sampling one
    (exact, summed over the rewarded set) and the mean sampled reward must go up; with
    the negated reward the probability must go down (so a sign error cannot pass)."""
    s = build(name, seed=0, space=BANDIT)
    before = p_rewarded(s)
    assert before < 0.1
    means = run_sign_bandit(s, rounds=15)
    assert p_rewarded(s) > 0.9
    assert np.mean(means[-3:]) > np.mean(means[:3]) + 0.5

    neg = build(name, seed=0, space=BANDIT)
    run_sign_bandit(neg, rounds=8, sign=-1.0)
    assert p_rewarded(neg) < 0.5 * before


@pytest.mark.parametrize("name", ALGOS)
def test_mean_reward_rises_on_a_depth_2_bandit(name):
    """Dense reward (agreement with PowerSign's 10 tokens): learning across both groups
    and the fed-back tokens."""
    s = build(name, seed=0)
    means = run_bandit(s, rounds=25)
    assert np.mean(means[-5:]) > np.mean(means[:5]) + 0.25


def test_paper_preset_learns_slowly():
    """lr 1e-5 (paper 4.2): after the same 150 samples, the paper preset has barely moved
    while the tuned one has learned the bandit."""
    paper, tuned = build("nos-ppo", preset="paper", space=BANDIT), build("nos-ppo", space=BANDIT)
    before = p_rewarded(paper)
    assert before == p_rewarded(tuned)              # same seed, same initial weights
    run_sign_bandit(paper, rounds=15)
    run_sign_bandit(tuned, rounds=15)
    assert abs(p_rewarded(paper) - before) < 0.01
    assert p_rewarded(tuned) > 0.9


def test_ppo_clip_loss_is_schulmans_surrogate():
    """Gradient of the loss per token: -ratio*A inside [1-clip, 1+clip], and 0 where the
    ratio has already moved past the clip range in the advantage's direction
    (Schulman et al. 2017, eq. 7); the value equals -(sum_t min(r A, clip(r) A))."""
    clip = 0.2
    old = torch.zeros(4, 1)
    ratios = torch.tensor([[1.1], [1.5], [0.5], [0.9]])
    adv = torch.tensor([[1.0], [1.0], [-1.0], [-1.0]])
    logp = ratios.log().requires_grad_(True)
    loss = ppo_clip_loss(logp, old, adv, clip)
    loss.backward()
    expected_grad = torch.tensor([[-1.1], [0.0], [0.0], [0.9]]) / 4   # mean over 4 rules
    assert torch.allclose(logp.grad, expected_grad)
    value = -(torch.tensor([1.1 * 1, 1.2 * 1, 0.8 * -1, 0.9 * -1])).mean()
    assert float(loss.detach()) == pytest.approx(float(value))
    # ratio past the range *against* the advantage is not clipped (pessimistic bound)
    lp = torch.tensor([[math.log(0.5)]], requires_grad=True)
    ppo_clip_loss(lp, torch.zeros(1, 1), torch.tensor([[1.0]]), clip).backward()
    assert float(lp.grad) == pytest.approx(-0.5)


# --- failures and repeats ------------------------------------------------------------
@pytest.mark.parametrize("name", ALGOS)
def test_failed_and_nan_results_count_as_floor(name):
    a, b = build(name, seed=4, batch_size=4), build(name, seed=4, batch_size=4)
    ra, rb = a.ask(4), b.ask(4)
    assert ra == rb
    a.tell([result(ra[0], float("nan"), status="diverged"), result(ra[1], 0.7, status="invalid"),
            result(ra[2], float("inf")), result(ra[3], 0.5)])
    b.tell([result(rb[0], FLOOR_REWARD, status="diverged"),
            result(rb[1], FLOOR_REWARD, status="invalid"),
            result(rb[2], FLOOR_REWARD), result(rb[3], 0.5)])
    for pa, pb in zip(a.policy.parameters(), b.policy.parameters()):
        assert torch.isfinite(pa).all() and torch.equal(pa, pb)
    assert a.updates == 1


def test_repeats_policy():
    """``repeats="floor"``: a repeat (the runner's ``repeat=True``) trains like a FLOOR_REWARD
    sample; ``repeats="learn"`` (paper): like a fresh one with the same reward.  A
    reward-cache hit (``cached=True`` alone) is a fresh sample under both policies."""
    def trained(repeats, reward, **marks):
        s = build("nos-ppo", seed=5, batch_size=3, repeats=repeats)
        rules = s.ask(3)
        s.tell([result(rules[0], 0.2), result(rules[1], 0.4),
                result(rules[2], reward, **marks)])
        return [p.detach().clone() for p in s.policy.parameters()]

    def same(x, y):
        return all(torch.equal(a, b) for a, b in zip(x, y))

    repeat = {"cached": True, "repeat": True}
    assert same(trained("floor", 0.9, **repeat), trained("floor", FLOOR_REWARD))
    assert not same(trained("floor", 0.9, **repeat), trained("floor", 0.9))
    assert same(trained("learn", 0.9, **repeat), trained("learn", 0.9))
    assert same(trained("floor", 0.9, cached=True), trained("floor", 0.9))    # a cache hit
    assert PRESETS["nos-ppo"]["paper"].repeats == "learn"
    assert PRESETS["nos-ppo"]["tuned"].repeats == "floor"


def test_tell_checks_its_input():
    s = build("nos-ppo")
    with pytest.raises(RuntimeError):
        s.tell([])
    rules = s.ask(3)
    with pytest.raises(ValueError):
        s.tell([result(rules[0], 0.1)])


# --- determinism and checkpoints -----------------------------------------------------
def drive(strategy, rounds: int, n: int = 3) -> list[str]:
    keys = []
    for _ in range(rounds):
        rules = strategy.ask(n)
        keys += [r.key for r in rules]
        strategy.tell([result(r, hamming_reward(r)) for r in rules])
    return keys


@pytest.mark.parametrize("name", ALGOS)
def test_deterministic_for_a_seed(name):
    a = drive(build(name, seed=11), 8)
    b = drive(build(name, seed=11), 8)
    c = drive(build(name, seed=12), 8)
    assert a == b and a != c


@pytest.mark.parametrize("name", ALGOS)
def test_global_rng_is_neither_read_nor_changed(name):
    state = torch.get_rng_state()
    torch.manual_seed(1)
    a = drive(build(name, seed=11), 4)
    torch.manual_seed(2)                 # a different global state: same rules
    assert drive(build(name, seed=11), 4) == a
    torch.manual_seed(3)
    before = torch.get_rng_state()
    drive(build(name, seed=11), 4)
    assert torch.equal(torch.get_rng_state(), before)
    torch.set_rng_state(state)


@pytest.mark.parametrize("name", ALGOS)
def test_state_dict_round_trip_continues_identically(name):
    a = build(name, seed=2)
    drive(a, 7)                        # 21 told: one update (at 12), 9 episodes buffered
    assert a.updates == 1 and len(a._buffer) == 9
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)    # serialisable as a checkpoint file
    ref = drive(a, 8)

    b = build(name, seed=99)           # different seed: everything must come from the state
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=False))
    assert drive(b, 8) == ref
    assert b.baseline == a.baseline and b.updates == a.updates
    for pa, pb in zip(a.policy.parameters(), b.policy.parameters()):
        assert torch.equal(pa, pb)

    with pytest.raises(ValueError):
        build(name, seed=2, lr=0.5).load_state_dict(a.state_dict())


# --- through the runner --------------------------------------------------------------
@pytest.mark.parametrize("name", ALGOS)
def test_search_through_the_runner(name):
    res = run_search(name, ToyEvaluator(), budget=50, batch_size=5, seed=0, space="scratch")
    assert res.stopped == "budget" and res.unique == 50 == len(set(res.keys))
    assert not any(r.status == "invalid" for r in res.results)
