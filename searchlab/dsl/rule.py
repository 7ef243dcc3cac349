"""``Rule``: an immutable update rule."""

from __future__ import annotations

from functools import cached_property
from typing import Sequence

from .canonical import canonical, canonical_key
from .nodes import Call, Leaf, Node, walk
from .primitives import OPERANDS, is_decay_name
from .text import check_limits, parse_node, to_text
from .tokens import node_to_tokens, tokens_to_node


class Rule:
    """An update rule ``w <- w - lr * rule``: an expression tree over the primitives.

    Build one with :func:`parse` (text) or :meth:`Rule.from_tokens`.  Rules compare and
    hash by their tree (``parse(str(r)) == r``); :attr:`key` is the canonical key shared
    by rules that differ only by commutativity, keep-left, aliases and the like.
    """

    __slots__ = ("node", "__dict__")

    def __init__(self, node: Node) -> None:
        object.__setattr__(self, "node", node)

    def __setattr__(self, name: str, value: object) -> None:  # immutable
        if name in type(self).__dict__ and isinstance(type(self).__dict__[name], cached_property):
            object.__setattr__(self, name, value)
            return
        raise AttributeError("Rule is immutable")

    # --- construction --------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> "Rule":
        return cls(parse_node(text))

    @classmethod
    def from_tokens(cls, tokens: Sequence[str]) -> "Rule":
        """Rule of a token sequence (groups of ``op1 op2 u1 u2 b``, paper 3.1); raises
        ``TokenGrammarError`` or, beyond the size limits, ``ParseError`` (both ``ValueError``)."""
        node = tokens_to_node(list(tokens))
        check_limits(node, " ".join(map(str, tokens)))
        return cls(node)

    def to_tokens(self) -> tuple[str, ...]:
        """Token sequence of this rule; raises ``TokenGrammarError`` (a ``ValueError``)
        when the rule is outside the token grammar."""
        toks = self.__dict__.get("_tokens")
        if toks is None:        # computed once (a search on a table asks ~3x per sample);
            toks = self.__dict__["_tokens"] = node_to_tokens(self.node)  # errors: not kept
        return toks

    # --- views ---------------------------------------------------------------------
    @cached_property
    def text(self) -> str:
        return to_text(self.node)

    @cached_property
    def key(self) -> str:
        """Canonical key (see :mod:`searchlab.dsl.canonical`)."""
        return canonical_key(self.node)

    @cached_property
    def canonical(self) -> "Rule":
        check_limits(self.node)
        return Rule(canonical(self.node))

    @cached_property
    def leaves(self) -> frozenset[str]:
        """Names of the inputs the rule reads (``g``, ``m``, ``w``, ``ld`` ...)."""
        return frozenset(n.name for n in walk(self.node) if isinstance(n, Leaf))

    @cached_property
    def reads(self) -> frozenset[str]:
        """Per-parameter state the rule needs: a subset of ``{'m', 'v', 'gamma', 'w'}``."""
        out: set[str] = set()
        for name in self.leaves:
            if name in OPERANDS:
                out |= OPERANDS[name].reads
            elif name == "w":
                out.add("w")
        return frozenset(out)

    @cached_property
    def uses_decay(self) -> bool:
        """True if the rule reads a decay operand (needs the total number of steps)."""
        return any(is_decay_name(n) for n in self.leaves)

    @cached_property
    def is_stochastic(self) -> bool:
        """True if the rule draws random numbers (``eps``, ``eps_t``, ``drop``)."""
        return bool({"eps", "eps_t"} & self.leaves) or any(
            isinstance(n, Call) and n.fn == "drop" for n in walk(self.node))

    @property
    def depth(self) -> int | None:
        """Number of token groups, or None when the rule is outside the token grammar."""
        try:
            return len(self.to_tokens()) // 5
        except ValueError:
            return None

    # --- protocol ------------------------------------------------------------------
    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Rule({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rule) and self.node == other.node

    def __hash__(self) -> int:
        return hash(self.node)

    def __reduce__(self):  # pickle by text: small and version-independent
        return (parse, (self.text,))


def parse(text: str) -> Rule:
    """Parse rule text (see :mod:`searchlab.dsl.text`); raises :class:`ParseError`."""
    return Rule(parse_node(text))


def as_rule(rule: "Rule | str") -> Rule:
    """Accept a :class:`Rule` or its text."""
    if isinstance(rule, Rule):
        return rule
    if isinstance(rule, str):
        return parse(rule)
    raise TypeError(f"expected a Rule or rule text, got {type(rule).__name__}")
