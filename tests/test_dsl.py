"""Tests of the rule language: parser/printer, tokens, masks, canonical key."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from searchlab.dsl import (
    OPERANDS,
    SPACES,
    ParseError,
    Rule,
    Space,
    TokenGrammarError,
    check_tokens,
    count_rules,
    get_space,
    parse,
    valid_next_tokens,
)
from searchlab.dsl.nodes import Bin, Call, Const, Leaf
from searchlab.dsl.primitives import MULTISCALE_OPERANDS

# Example rules of the specification that must parse (docs/ARCHITECTURE.md, rule 6: the
# primitives table defines the language; README "Rules" lists its operands and functions)
SPEC_RULES = [
    "exp(sign(g)*sign(m))*g", "(1+sign(g)*sign(m))*g", "(1+ld*sign(g)*sign(m))*g",
    "exp(cd*sign(g)*sign(m))*g", "sign(m)*sqrt(g)", "m*exp(v)", "clip(m, 1e-4)*exp(v)",
    "drop(m, 0.3)*exp(1e-3*w)", "g - clip(g2, 1e-4)", "exp(g) - exp(m)",
    "adam*exp(sign(g)*sign(m))", "(1+sign(g)*sign(m))*rmsprop", "m*(1+eps)*sigmoid(1e-4*w)",
]
# Paper section 5.1 families and Table 6 (appendix 8.2), written in the text syntax
PAPER_RULES = [
    "exp(sign(g)*sign(m))*g", "exp(ld*sign(g)*sign(m))*g", "exp(cd*sign(g)*sign(m))*g",
    "2^(sign(g)*sign(m))*g", "(1+sign(g)*sign(m))*g", "(1+ld*sign(g)*sign(m))*g",
    "(1+cd*sign(g)*sign(m))*g", "(2+sign(g)*sign(m))*g",
    # Table 6
    "m*(1+eps)*sigmoid(1e-4*w)", "sign(m)*sqrt(g)", "sign(g)*sign(m)*m",
    "(1+sign(g)*sign(m))*sign(g)", "(1+sign(g)*sign(m))*sign(m)", "sign(g)*sqrt(m)",
    "sqrt(g)*m", "sqrt(g)*g", "(1+sign(g)*sign(m))*m", "(1+sign(g)*sign(m))*rmsprop",
    "(1+sign(g)*sign(m))*adam", "(exp(sign(g)*sign(m)) + clip(g, 1e-4))*g",
    "clip(m, 1e-4)*exp(v)", "m*exp(v)", "g*exp(sign(g)*sign(m))",
    "drop(g, 0.3)*exp(sign(g)*sign(m))", "m*exp(g2)", "drop(m, 0.1)/(exp(g2) + eps)",
    "drop(g, 0.1)*exp(sign(g)*sign(m))", "clip(rmsprop, 1e-5) + drop(m, 0.3)",
    "adam*exp(sign(g)*sign(m))", "adam*exp(m)", "g + drop(m, 0.3)", "drop(m, 0.1)*exp(g3)",
    "g - clip(g2, 1e-4)", "exp(g) - exp(m)", "drop(m, 0.3)*exp(1e-3*w)",
    # learning-rate decays of section 5.2
    "ld*cd", "(ld + eps_t)*cd + 0.001", "rd_10*g", "cd_2*g",
]


@pytest.mark.parametrize("text", sorted(set(SPEC_RULES + PAPER_RULES)))
def test_paper_and_design_rules_parse_and_print_back(text: str) -> None:
    rule = parse(text)
    assert parse(str(rule)) == rule
    assert parse(text.replace(" ", "")) == rule  # whitespace is insignificant


@pytest.mark.parametrize("text", [
    "exp(sign(g)*sign(m))*g", "(1+sign(g)*sign(m))*g", "(1+ld*sign(g)*sign(m))*g",
    "sign(m)*sqrt(g)", "m*exp(v)", "clip(m, 1e-4)*exp(v)", "drop(m, 0.3)*exp(1e-3*w)",
    "g - clip(g2, 1e-4)", "exp(g) - exp(m)", "adam*exp(sign(g)*sign(m))",
    "(1+sign(g)*sign(m))*rmsprop", "drop(m, 0.1)/(exp(g2) + eps)",
])
def test_paper_rules_have_token_form(text: str) -> None:
    rule = parse(text)
    tokens = rule.to_tokens()
    assert len(tokens) % 5 == 0 and 1 <= len(tokens) // 5 <= 4
    assert Rule.from_tokens(tokens) == rule


def test_powersign_tokens_in_paper_form() -> None:
    # Figure 3 style: (sign_g, sign_m, id, id, *) then (o1, g, exp, id, *)
    tokens = ("sign_g", "sign_m", "id", "id", "mul", "o1", "g", "exp", "id", "mul")
    rule = Rule.from_tokens(tokens)
    assert str(rule) == "exp(sign_g*sign_m)*g"
    assert rule.key == parse("exp(sign(g)*sign(m))*g").key
    assert rule.to_tokens() == tokens
    assert rule.reads == frozenset({"m"})


@pytest.mark.parametrize("text", ["g", "sigmoid(g)*m", "exp(exp(g))*m", "-g", "w*g",
                                  "(g+m)*(v+g)*(m+v)*(g-v)*(m-v)"])
def test_rules_outside_token_grammar_raise_clear_error(text: str) -> None:
    with pytest.raises(TokenGrammarError) as err:
        parse(text).to_tokens()
    assert isinstance(err.value, ValueError)
    assert str(err.value)


@pytest.mark.parametrize("text, token, position", [
    ("g * * m", "*", 4),
    ("exp(g", None, 5),
    ("g + foo", "foo", 4),
    ("bar(g)*m", "bar", 0),
    ("g $ m", "$", 2),
    ("clip(g, x)", "x", 8),
    ("g m", "m", 2),
    ("drop(g, 1.5)", "1.5", 8),
    ("", None, 0),
])
def test_parse_error_names_token_and_position(text: str, token: str | None, position: int) -> None:
    with pytest.raises(ParseError) as err:
        parse(text)
    assert isinstance(err.value, ValueError)
    assert err.value.position == position
    assert f"position {position}" in str(err.value)
    if token is not None:
        assert repr(token) in str(err.value) or token in str(err.value)


# --- property tests ------------------------------------------------------------------
def _draw_tokens(data: st.DataObject, space: Space) -> list[str]:
    tokens: list[str] = []
    for _ in range(space.length):
        mask = valid_next_tokens(space, tokens)
        choices = [t for t, ok in zip(space.vocab, mask) if ok]
        assert choices, f"empty mask after {tokens}"
        tokens.append(data.draw(st.sampled_from(choices)))
    return tokens


SPACE_CHOICES = [get_space(n, depth=d) for n in SPACES for d in (1, 2, 3, 4)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), space=st.sampled_from(SPACE_CHOICES))
def test_token_text_round_trip(data: st.DataObject, space: Space) -> None:
    tokens = _draw_tokens(data, space)
    check_tokens(space, tokens)
    rule = Rule.from_tokens(tokens)
    again = parse(str(rule))
    assert again == rule
    assert list(again.to_tokens()) == tokens


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="gmvwexpsignclrdo0123456789.e+-*/^(), _", max_size=40))
def test_parser_raises_only_parse_error_on_grammar_soup(text: str) -> None:
    try:
        rule = parse(text)
    except ParseError:
        return
    assert parse(str(rule)) == rule


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_parser_raises_only_parse_error_on_arbitrary_text(text: str) -> None:
    try:
        parse(text)
    except ParseError:
        pass


# --- canonical key -------------------------------------------------------------------
# An independent numpy interpreter of the text semantics, used to check that rules that
# share a key really compute the same update (the primitives table's meanings; paper 4.1).
def _np_eval(node, env):  # noqa: ANN001
    if isinstance(node, Leaf):
        name = {"sign_g": None, "sign_m": None}.get(node.name, node.name)
        if name is None:
            return np.sign(env[node.name.split("_")[1]])
        return env[name]
    if isinstance(node, Const):
        return np.full_like(env["g"], node.value)
    if isinstance(node, Call):
        x = _np_eval(node.arg, env)
        return {
            "neg": lambda: -x, "exp": lambda: np.exp(np.minimum(x, 80)),
            "log": lambda: np.log(np.abs(x) + 1e-8), "sqrt": lambda: np.sqrt(np.abs(x)),
            "sign": lambda: np.sign(x), "abs": lambda: np.abs(x),
            "sigmoid": lambda: 1 / (1 + np.exp(-x)),
            "clip": lambda: np.clip(x, -node.param, node.param),
        }[node.fn]()
    a, b = _np_eval(node.left, env), _np_eval(node.right, env)
    return {"add": a + b, "sub": a - b, "mul": a * b, "div": a / (b + 1e-8),
            "pow": np.sign(a) * np.abs(a) ** b, "left": a}[node.op]


_RNG = np.random.default_rng(0)
_ENV = {k: _RNG.normal(size=64) for k in ("g", "m", "v", "w", "g2", "ld", "cd")}
_ENV["v"] = np.abs(_ENV["v"])
_ENV["cd_0.5"] = _ENV["cd"]  # cd is cd_{1/2} (paper 4.1)


def _same_function(a: Rule, b: Rule) -> bool:
    with np.errstate(all="ignore"):
        x, y = _np_eval(a.node, _ENV), _np_eval(b.node, _ENV)
    return bool(np.allclose(x, y, rtol=1e-9, atol=1e-12, equal_nan=True))


_leaves = st.sampled_from([Leaf("g"), Leaf("m"), Leaf("v"), Leaf("sign_g"), Leaf("sign_m"),
                           Leaf("ld"), Const(1.0), Const(2.0)])


def _extend(children):  # noqa: ANN001
    return st.one_of(
        st.builds(Call, st.sampled_from(["neg", "exp", "sign", "sqrt", "log"]), children),
        st.builds(Bin, st.sampled_from(["add", "sub", "mul", "div", "left"]), children, children),
    )


trees = st.recursive(_leaves, _extend, max_leaves=6)


def _rewrites(node):  # noqa: ANN001
    """Trees equal to ``node`` by the rewrites the key must ignore."""
    out = []
    if isinstance(node, Bin) and node.op in ("add", "mul"):
        out.append(Bin(node.op, node.right, node.left))  # commutativity
    if isinstance(node, Bin) and node.op == "sub":
        out.append(Bin("add", node.left, Call("neg", node.right)))
    out.append(Bin("left", node, Leaf("v")))  # keep-left
    out.append(Call("neg", Call("neg", node)))  # double negation
    if node == Call("sign", Leaf("g")):
        out.append(Leaf("sign_g"))
    if node == Leaf("sign_m"):
        out.append(Call("sign", Leaf("m")))
    return out


def _rewrite_somewhere(node, data):  # noqa: ANN001
    """Apply one rewrite at a random place in the tree."""
    if isinstance(node, Bin) and data.draw(st.booleans()):
        if data.draw(st.booleans()):
            return Bin(node.op, _rewrite_somewhere(node.left, data), node.right)
        return Bin(node.op, node.left, _rewrite_somewhere(node.right, data))
    if isinstance(node, Call) and data.draw(st.booleans()):
        return Call(node.fn, _rewrite_somewhere(node.arg, data), node.param)
    return data.draw(st.sampled_from(_rewrites(node)))


@settings(max_examples=400, deadline=None)
@given(tree=trees, data=st.data())
def test_key_invariant_under_rewrites(tree, data) -> None:  # noqa: ANN001
    rule = Rule(tree)
    other = Rule(_rewrite_somewhere(tree, data))
    assert other.key == rule.key
    # and the key is idempotent
    assert Rule(rule.canonical.node).key == rule.key
    # the canonical tree computes the same function (independent numpy interpreter)
    assert _same_function(rule, rule.canonical)
    assert _same_function(rule, other)


@settings(max_examples=400, deadline=None)
@given(a=trees, b=trees)
def test_equal_keys_mean_equal_functions(a, b) -> None:  # noqa: ANN001
    ra, rb = Rule(a), Rule(b)
    if ra.key == rb.key:
        assert _same_function(ra, rb), (str(ra), str(rb), ra.key)


@pytest.mark.parametrize("a, b", [
    ("exp(sign(g)*sign(m))*g", "g*exp(sign_m*sign_g)"),
    ("(1+sign(g)*sign(m))*g", "g*(sign(m)*sign(g)+1)"),
    ("g - m", "-m + g"),
    ("g - m", "left(g, v) + -m"),
    ("--g*m", "m*g"),
    ("-g*-m", "g*m"),
    ("sign(sign(g))*m", "sign_g*m"),
    ("sign(-g)*m", "-(sign(g)*m)"),
    ("sqrt(-g)*m", "sqrt(g)*m"),
    ("g*1", "g"),
    ("2*g*3", "6*g"),
    ("cd_0.5*g", "cd*g"),
    ("(g + m) + v", "g + (m + v)"),
    ("-1*(g + g)", "-(g + g)"),  # found by hypothesis: -1*(a+b) distributes like -(a+b)
])
def test_key_equal_for_rewrites(a: str, b: str) -> None:
    assert parse(a).key == parse(b).key
    assert _same_function(parse(a), parse(b))


@pytest.mark.parametrize("a, b", [
    ("g", "m"), ("g - m", "m - g"), ("sign(g)*m", "sign(m)*g"), ("exp(g)", "exp(-g)"),
    ("g/m", "m/g"), ("g^m", "m^g"), ("exp(sign(g)*sign(m))*g", "(1+sign(g)*sign(m))*g"),
    ("clip(g, 1e-4)", "clip(g, 1e-3)"), ("drop(g, 0.1)", "drop(g, 0.3)"), ("cd*g", "ld*g"),
    ("sqrt(g)*m", "sqrt(m)*g"), ("left(g, m)", "left(m, g)"), ("log(g)", "sqrt(g)"),
])
def test_key_differs_for_different_rules(a: str, b: str) -> None:
    assert parse(a).key != parse(b).key


# --- masks and constraints -----------------------------------------------------------
def _brute_force_count(space: Space) -> int:
    """Count token strings satisfying the constraints by their definitions (paper 4.1)."""
    total = 0
    groups = []
    for k in range(space.depth):
        outs = [f"o{j}" for j in range(1, k + 1)]
        pool = list(space.operands) + outs
        last = k == space.depth - 1
        options = []
        for a, b in itertools.product(pool, pool):
            if space.distinct_operands and a == b:
                continue
            if space.reuse_output and k > 0 and f"o{k}" not in (a, b):
                continue
            options.append((a, b))
        binaries = [x for x in space.binary if not (last and space.no_final_add and x == "add")]
        groups.append(len(options) * len(space.unary) ** 2 * len(binaries))
    total = math.prod(groups)
    return total


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("flags", [(True, True, True), (False, True, True), (True, False, False),
                                   (False, False, False)])
def test_mask_count_matches_constraint_definitions(depth: int, flags) -> None:  # noqa: ANN001
    distinct, no_add, reuse = flags
    space = Space("tiny", ("g", "m", "1"), ("id", "exp"), ("add", "mul"), depth=depth,
                  distinct_operands=distinct, no_final_add=no_add, reuse_output=reuse)
    # enumerate with the mask function itself
    def walk(prefix):  # noqa: ANN001
        if len(prefix) == space.length:
            return 1
        mask = valid_next_tokens(space, prefix)
        return sum(walk(prefix + [t]) for t, ok in zip(space.vocab, mask) if ok)
    assert walk([]) == _brute_force_count(space) == count_rules(space)


def test_constraints_rejected_by_check_tokens() -> None:
    space = get_space("scratch")
    ok = ["g", "m", "sign", "sign", "mul", "o1", "g", "exp", "id", "mul"]
    check_tokens(space, ok)
    with pytest.raises(TokenGrammarError, match="constraint"):  # same operands twice
        check_tokens(space, ["g", "g", "id", "id", "mul", "o1", "g", "exp", "id", "mul"])
    with pytest.raises(TokenGrammarError, match="constraint"):  # final add
        check_tokens(space, ["g", "m", "id", "id", "mul", "o1", "g", "exp", "id", "add"])
    with pytest.raises(TokenGrammarError, match="constraint"):  # does not reuse o1
        check_tokens(space, ["g", "m", "id", "id", "mul", "v", "g", "exp", "id", "mul"])
    with pytest.raises(TokenGrammarError, match="not in space"):  # adam not in scratch
        check_tokens(space, ["adam", "m", "id", "id", "mul", "o1", "g", "exp", "id", "mul"])
    with pytest.raises(TokenGrammarError, match="token 1"):
        check_tokens(None, ["g", "exp", "id", "id", "mul"])


def test_spaces() -> None:
    paper, scratch = SPACES["paper"], SPACES["scratch"]
    # the paper's vocabulary: every operand but the multiscale ones (not the paper's)
    assert set(paper.operands) == set(OPERANDS) - set(MULTISCALE_OPERANDS)
    assert "adam" not in scratch.operands and "rmsprop" not in scratch.operands
    assert scratch.depth == 2
    # the paper reports spaces of 10^6 to 10^11 rules for its subsets (section 4.1)
    assert 1e6 <= SPACES["small"].size() <= 1e11
    with pytest.raises(KeyError, match="valid"):
        get_space("nope")
    with pytest.raises(ValueError, match="unknown operand"):
        Space("bad", ("g", "zz"), ("id",), ("mul",))


def test_rule_properties() -> None:
    r = parse("adam*exp(ld*sign(g)*sign(m)) + drop(1e-3*w, 0.1)")
    assert r.reads == frozenset({"m", "v", "w"})
    assert r.uses_decay and r.is_stochastic
    assert not parse("g*m").is_stochastic and not parse("g*m").uses_decay
    import pickle

    assert pickle.loads(pickle.dumps(r)) == r
    with pytest.raises(AttributeError):
        r.node = None  # type: ignore[misc]
