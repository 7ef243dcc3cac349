"""Token form of rules (paper 3.1) and the ONE mask function (paper 4.1 constraints).

A rule of depth n is 5n tokens in groups ``(op1, op2, u1, u2, b)``; group k computes
``b(u1(op1), u2(op2))`` and its output becomes operand ``o{k}`` for later groups; the
last group's output is the update.

Constraints (paper 4.1), each switchable in a :class:`Space`:

* ``distinct_operands`` — the two operands of a group differ;
* ``no_final_add`` — the last binary function is not addition;
* ``reuse_output`` — every group after the first reads the output of the group just
  before it.  The paper says "reuse one of the previously computed operands"; we require
  the *latest* one, so that every group contributes to the update and token strings map
  one-to-one to rules (``Rule.from_tokens(t).to_tokens() == t``).  Earlier outputs may be
  used as the other operand.

:func:`valid_next_tokens` is the single implementation of these masks, used by the
Gymnasium env's ``action_masks()``, the controllers, random search, evolution and GP.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Mapping, Sequence

import numpy as np

from .nodes import Bin, Call, Const, Leaf, Node
from .primitives import BINARY, MAX_DEPTH, MULTISCALE_OPERANDS, OPERANDS, OUTPUTS, UNARY

GROUP = 5
SLOT_KINDS = ("operand", "operand", "unary", "unary", "binary")


class TokenGrammarError(ValueError):
    """A token sequence is malformed, or a rule is outside the token grammar."""


@dataclass(frozen=True)
class Space:
    """A named search space: a subset of the vocabulary, a depth and the constraints."""

    name: str
    operands: tuple[str, ...]
    unary: tuple[str, ...]
    binary: tuple[str, ...]
    depth: int = 2
    distinct_operands: bool = True
    no_final_add: bool = True
    reuse_output: bool = True

    def __post_init__(self) -> None:
        for label, names, table in (("operand", self.operands, OPERANDS),
                                    ("unary function", self.unary, UNARY),
                                    ("binary function", self.binary, BINARY)):
            bad = [n for n in names if n not in table]
            if bad:
                raise ValueError(f"space {self.name!r}: unknown {label}(s) {bad}; "
                                 f"valid: {sorted(table)}")
        if not 1 <= self.depth <= MAX_DEPTH:
            raise ValueError(f"space {self.name!r}: depth must be 1..{MAX_DEPTH}, got {self.depth}")
        if self.no_final_add and self.binary == ("add",):
            raise ValueError(f"space {self.name!r}: only 'add' but no_final_add is on")

    def with_(self, **changes: object) -> "Space":
        """A copy with some fields changed (e.g. ``space.with_(depth=3)``)."""
        from dataclasses import replace

        return replace(self, **changes)  # type: ignore[arg-type]

    @cached_property
    def vocab(self) -> tuple[str, ...]:
        """All tokens of the space: operands, earlier outputs, unary, binary functions."""
        return self.operands + OUTPUTS[: self.depth - 1] + self.unary + self.binary

    @cached_property
    def index(self) -> Mapping[str, int]:
        return MappingProxyType({t: i for i, t in enumerate(self.vocab)})

    @property
    def length(self) -> int:
        return GROUP * self.depth

    def size(self) -> int:
        """Number of valid token strings (exact count, by dynamic programming)."""
        return count_rules(self)


_ALL_OPERANDS = tuple(o for o in OPERANDS if o not in MULTISCALE_OPERANDS)
_NO_OPT = tuple(o for o in _ALL_OPERANDS if o not in ("adam", "rmsprop"))
#: Adam and momentum at three timescales (beta1 0.5, 0.9, 0.99), plus the gradient,
#: second moment, signs, constants and two decays: linear combinations such as
#: ``adam_5 + adam_99`` or ``(adam + adam_99)*ld`` are the multiscale-Adam (LWA) rules of
#: Shahid 2017, reachable by every strategy
_MULTISCALE = ("g", "m_5", "m", "m_99", "v", "sign_g", "sign_m", "adam_5", "adam", "adam_99",
               "1", "2", "ld", "cd")

#: The tabular benchmark's vocabulary (searchlab.tabular; README, "The tabular benchmark"):
#: depth 1, b(u1(o1), u2(o2)), the paper's form of rule.  Operands: the gradient and its
#: powers, the three moving averages, the signs, the constants that make PowerSign- and
#: AddSign-like factors, Adam and RMSProp (so the table holds rules at and above tuned
#: Adam: ``adam*cd``, ``adam*ld``), the paper's linear, cosine and restart decays and two
#: weight-decay terms.  Unary: the paper's functions without noise (no ``drop``; ``eps``
#: is not an operand either), so every function is deterministic given the evaluation
#: seed; one clip.  All six binary functions.  66,640 token strings.
_TABULAR = ("g", "g2", "g3", "m", "v", "gamma", "sign_g", "sign_m", "1", "2", "adam",
            "rmsprop", "ld", "cd", "rd_10", "1e-4*w", "1e-2*w")
_TABULAR_UNARY = ("id", "neg", "exp", "log", "sqrt", "sign", "clip_1e-3")

#: Named spaces.  ``paper`` is the full vocabulary of section 4.1; ``scratch`` (the
#: default for strategy comparisons) removes the ``adam``/``rmsprop`` operands so a
#: strategy cannot reach Adam-level reward by picking Adam; ``small`` is a ~10^5-rule
#: space around PowerSign/AddSign for quick demos and tests; ``multiscale`` (not the
#: paper's) adds momentum and Adam at the timescales 0.5 and 0.99 (``m_5``, ``adam_99``, ...),
#: where the symbolic search meets the learned multiscale Adam (docs/ARCHITECTURE.md);
#: ``tabular`` is the space of the tabular benchmark (above) and ``tabular-mini`` a tiny one.
SPACES: Mapping[str, Space] = MappingProxyType({
    "paper": Space("paper", _ALL_OPERANDS, tuple(UNARY), tuple(BINARY), depth=2),
    "scratch": Space("scratch", _NO_OPT, tuple(UNARY), tuple(BINARY), depth=2),
    "small": Space("small", ("g", "m", "v", "sign_g", "sign_m", "1", "2", "ld", "cd"),
                   ("id", "neg", "exp", "sqrt", "sign"), ("add", "sub", "mul", "div"),
                   depth=2),
    "multiscale": Space("multiscale", _MULTISCALE, tuple(UNARY), tuple(BINARY), depth=2),
    "tabular": Space("tabular", _TABULAR, _TABULAR_UNARY, tuple(BINARY), depth=1),
    # a 324-string depth-1 space: a table of it builds in a minute (tests, demos)
    "tabular-mini": Space("tabular-mini", ("g", "m", "sign_m", "1"), ("id", "sqrt", "sign"),
                          ("mul", "div", "left"), depth=1),
})


def get_space(name: str, **overrides: object) -> Space:
    """Look up a named space, optionally overriding fields such as ``depth``."""
    try:
        space = SPACES[name]
    except KeyError:
        raise KeyError(f"unknown search space {name!r}; valid: {sorted(SPACES)}") from None
    return space.with_(**overrides) if overrides else space


# --- the one mask function -----------------------------------------------------------
def valid_next_tokens(space: Space, prefix: Sequence[str | int]) -> np.ndarray:
    """Boolean mask over ``space.vocab``: which tokens may follow ``prefix``.

    ``prefix`` holds token strings or vocabulary indices.  An empty mask is returned for a
    complete rule.  The prefix itself is assumed valid (check with :func:`check_tokens`).
    """
    toks = [space.vocab[t] if not isinstance(t, str) else t for t in prefix]
    mask = np.zeros(len(space.vocab), dtype=bool)
    pos = len(toks)
    if pos >= space.length:
        return mask
    group, slot = divmod(pos, GROUP)
    idx = space.index
    kind = SLOT_KINDS[slot]
    if kind == "unary":
        for u in space.unary:
            mask[idx[u]] = True
        return mask
    if kind == "binary":
        last = group == space.depth - 1
        for b in space.binary:
            if not (last and space.no_final_add and b == "add"):
                mask[idx[b]] = True
        return mask
    # operand slots
    allowed = list(space.operands) + list(OUTPUTS[:group])
    if slot == 1:
        first = toks[pos - 1]
        if space.reuse_output and group > 0 and first != OUTPUTS[group - 1]:
            allowed = [OUTPUTS[group - 1]]
        if space.distinct_operands:
            allowed = [a for a in allowed if a != first]
    for a in allowed:
        mask[idx[a]] = True
    return mask


def count_rules(space: Space) -> int:
    """Exact number of complete token strings allowed by the masks."""
    n_ops = len(space.operands)
    total = 1
    for group in range(space.depth):
        outs = group
        pool = n_ops + outs
        if space.reuse_output and group > 0:
            # first = latest output: second any other; first = something else: second = latest
            pairs = (pool - (1 if space.distinct_operands else 0)) + (pool - 1)
        else:
            pairs = pool * (pool - (1 if space.distinct_operands else 0))
        n_bin = len(space.binary)
        if group == space.depth - 1 and space.no_final_add and "add" in space.binary:
            n_bin -= 1
        total *= pairs * len(space.unary) ** 2 * n_bin
    return total


def check_tokens(space: Space | None, tokens: Sequence[str]) -> None:
    """Raise :class:`TokenGrammarError` naming the first bad token of ``tokens``.

    With a space, also checks membership and the constraints (via the mask function).
    """
    tokens = list(tokens)
    if not tokens or len(tokens) % GROUP or len(tokens) // GROUP > MAX_DEPTH:
        raise TokenGrammarError(
            f"a rule is 5, 10, 15 or 20 tokens (groups of op1, op2, u1, u2, b); got {len(tokens)}")
    for pos, tok in enumerate(tokens):
        group, slot = divmod(pos, GROUP)
        kind = SLOT_KINDS[slot]
        if not isinstance(tok, str):
            raise TokenGrammarError(f"token {pos} is {tok!r}, not a string")
        if kind == "operand":
            ok = tok in OPERANDS or tok in OUTPUTS[:group]
        elif kind == "unary":
            ok = tok in UNARY
        else:
            ok = tok in BINARY
        if not ok:
            hint = (f"earlier outputs here: {list(OUTPUTS[:group])}" if kind == "operand"
                    else f"valid: {sorted(UNARY if kind == 'unary' else BINARY)}")
            raise TokenGrammarError(
                f"token {pos} ({tok!r}) is not a valid {kind} in group {group + 1}; {hint}")
        if space is not None:
            if tok not in space.index:
                raise TokenGrammarError(f"token {pos} ({tok!r}) is not in space {space.name!r}")
    if space is not None:
        if len(tokens) != space.length:
            raise TokenGrammarError(
                f"space {space.name!r} has depth {space.depth} ({space.length} tokens), "
                f"got {len(tokens)} tokens")
        for pos, tok in enumerate(tokens):
            if not valid_next_tokens(space, tokens[:pos])[space.index[tok]]:
                raise TokenGrammarError(
                    f"token {pos} ({tok!r}) breaks a constraint of space {space.name!r} "
                    "(distinct operands / no final add / reuse latest output)")


# --- tokens <-> tree -----------------------------------------------------------------
_WEIGHT_SCALES = {o.name: float(o.name.split("*")[0]) for o in OPERANDS.values()
                  if o.kind == "weight"}
_CONSTS = {o.name: float(o.name) for o in OPERANDS.values() if o.kind == "constant"}


def operand_node(name: str) -> Node:
    """The tree of a (non-output) operand token."""
    if name in _CONSTS:
        return Const(_CONSTS[name])
    if name in _WEIGHT_SCALES:
        return Bin("mul", Const(_WEIGHT_SCALES[name]), Leaf("w"))
    return Leaf(name)


def node_operand(node: Node) -> str | None:
    """The operand token a tree is, or None."""
    if isinstance(node, Leaf):
        return node.name if node.name in OPERANDS else None
    if isinstance(node, Const):
        for name, value in _CONSTS.items():
            if node.value == value:
                return name
        return None
    if (isinstance(node, Bin) and node.op == "mul" and isinstance(node.left, Const)
            and node.right == Leaf("w")):
        for name, value in _WEIGHT_SCALES.items():
            if node.left.value == value:
                return name
    return None


def unary_node(name: str, arg: Node) -> Node:
    if name == "id":
        return arg
    u = UNARY[name]
    return Call("neg" if u.fn == "-" else str(u.fn), arg, u.param)


def _node_unary(node: Node) -> tuple[str, Node] | None:
    if not isinstance(node, Call):
        return None
    for u in UNARY.values():
        fn = "neg" if u.fn == "-" else u.fn
        if fn == node.fn and u.param == node.param:
            return u.name, node.arg
    return None


def tokens_to_node(tokens: Sequence[str]) -> Node:
    """Build the tree of a token sequence (checked with :func:`check_tokens`)."""
    check_tokens(None, tokens)
    outputs: list[Node] = []
    for g in range(len(tokens) // GROUP):
        op1, op2, u1, u2, b = tokens[GROUP * g: GROUP * (g + 1)]
        args = []
        for op, u in ((op1, u1), (op2, u2)):
            base = outputs[OUTPUTS.index(op)] if op in OUTPUTS else operand_node(op)
            args.append(unary_node(u, base))
        outputs.append(Bin(b, args[0], args[1]))
    return outputs[-1]


def node_to_tokens(root: Node) -> tuple[str, ...]:
    """Inverse of :func:`tokens_to_node`; raises :class:`TokenGrammarError` when the tree
    is outside the token grammar (see the module docstring for the canonical order)."""
    groups: list[tuple[str, ...]] = []
    emitted: dict[Node, str] = {}

    def operand_of(child: Node) -> tuple[str, str]:
        name = node_operand(child)
        if name is not None:
            return name, "id"
        if isinstance(child, Bin) and child.op in BINARY:
            return emit(child), "id"
        un = _node_unary(child)
        if un is not None:
            u, inner = un
            name = node_operand(inner)
            if name is not None:
                return name, u
            if isinstance(inner, Bin) and inner.op in BINARY:
                return emit(inner), u
        raise TokenGrammarError(
            f"sub-expression {_text(child)!r} is not an operand, a unary function of an "
            "operand, or a group output, so the rule is outside the token grammar")

    def emit(node: Bin) -> str:
        if node in emitted:
            return emitted[node]
        (o1, u1), (o2, u2) = operand_of(node.left), operand_of(node.right)
        if len(groups) >= MAX_DEPTH:
            raise TokenGrammarError(f"the rule needs more than {MAX_DEPTH} groups")
        groups.append((o1, o2, u1, u2, node.op))
        emitted[node] = OUTPUTS[len(groups) - 1] if len(groups) <= len(OUTPUTS) else "final"
        return emitted[node]

    if not (isinstance(root, Bin) and root.op in BINARY) or node_operand(root) is not None:
        raise TokenGrammarError(
            f"{_text(root)!r}: the top of a token-grammar rule is a binary function of two "
            "operands, e.g. 'g*1' for plain SGD")
    emit(root)
    tokens = tuple(t for grp in groups for t in grp)
    # canonical order check: the tree must come back unchanged from these tokens
    if tokens_to_node(tokens) != root:
        raise TokenGrammarError(f"{_text(root)!r} has no token form")
    return tokens


def _text(node: Node) -> str:
    from .text import to_text

    return to_text(node)
