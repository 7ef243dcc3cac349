"""Text syntax of update rules: a Python-like infix language.

Grammar (lowest to highest precedence)::

    expr    := term (('+' | '-') term)*
    term    := unary (('*' | '/') unary)*
    unary   := '-' unary | power
    power   := atom ('^' unary)?            # right-associative, binds tighter than '-'
    atom    := NUMBER | NAME | FUNC '(' expr [',' NUMBER | ',' expr] ')' | '(' expr ')'

``log`` and ``sqrt`` mean ``log|x|`` and ``sqrt|x|`` as in the paper; ``x/y`` is the
protected ``x/(y+1e-8)``; ``left(x, y)`` is the keep-left binary function; ``clip(x, b)``
and ``drop(x, p)`` take a numeric second argument.  ``**`` is accepted for ``^``.
"""

from __future__ import annotations

import math
import re

from .nodes import Bin, Call, Const, Leaf, Node
from .primitives import OPERANDS, is_decay_name


class ParseError(ValueError):
    """A rule's text could not be parsed; the message names the token and its position."""

    def __init__(self, message: str, text: str, position: int) -> None:
        self.text = text
        self.position = position
        caret = " " * position + "^"
        super().__init__(f"{message} at position {position}\n  {text}\n  {caret}")


#: Names of leaves the text syntax accepts (besides the generic ``cd_<n>``/``rd_<n>``).
LEAF_NAMES: frozenset[str] = frozenset(
    {o.text for o in OPERANDS.values() if o.kind not in ("constant", "weight")} | {"w"}
)
#: Functions of one argument, and those taking a numeric parameter or a second expression.
FUNCTIONS_1 = frozenset({"exp", "log", "sqrt", "sign", "sigmoid", "abs"})
FUNCTIONS_PARAM = frozenset({"clip", "drop"})
FUNCTIONS_2 = frozenset({"left"})

_TOKEN = re.compile(
    r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<name>(?:cd|rd)_\d+\.\d+|[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>\*\*|[-+*/^(),]))"
)


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    out: list[tuple[str, str, int]] = []
    pos = 0
    n = len(text)
    while pos < n:
        if text[pos].isspace():
            pos += 1
            continue
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ParseError(f"unexpected character {text[pos]!r}", text, pos)
        kind = m.lastgroup
        assert kind is not None
        value = m.group(kind)
        start = m.start(kind)
        if value == "**":
            value = "^"
        out.append((kind, value, start))
        pos = m.end()
    out.append(("end", "", n))
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    # -- helpers ------------------------------------------------------------------
    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.i]

    def next(self) -> tuple[str, str, int]:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def fail(self, tok: tuple[str, str, int], what: str) -> ParseError:
        kind, value, pos = tok
        if kind == "end":
            return ParseError(f"unexpected end of rule, expected {what}", self.text, pos)
        return ParseError(f"unexpected token {value!r}, expected {what}", self.text, pos)

    def expect(self, value: str) -> None:
        tok = self.next()
        if tok[1] != value or tok[0] == "end":
            raise self.fail(tok, repr(value))

    # -- grammar ------------------------------------------------------------------
    def parse(self) -> Node:
        if self.peek()[0] == "end":
            raise ParseError("empty rule", self.text, 0)
        node = self.expr()
        tok = self.peek()
        if tok[0] != "end":
            raise self.fail(tok, "an operator or the end of the rule")
        return node

    def expr(self) -> Node:
        node = self.term()
        while self.peek()[1] in ("+", "-") and self.peek()[0] == "op":
            op = "add" if self.next()[1] == "+" else "sub"
            node = Bin(op, node, self.term())
        return node

    def term(self) -> Node:
        node = self.unary()
        while self.peek()[1] in ("*", "/") and self.peek()[0] == "op":
            op = "mul" if self.next()[1] == "*" else "div"
            node = Bin(op, node, self.unary())
        return node

    def unary(self) -> Node:
        if self.peek()[1] == "-" and self.peek()[0] == "op":
            self.next()
            return Call("neg", self.unary())
        if self.peek()[1] == "+" and self.peek()[0] == "op":
            raise self.fail(self.peek(), "an operand (unary plus is not part of the syntax)")
        return self.power()

    def power(self) -> Node:
        node = self.atom()
        if self.peek()[1] == "^" and self.peek()[0] == "op":
            self.next()
            node = Bin("pow", node, self.unary())
        return node

    def number(self) -> float:
        tok = self.next()
        if tok[0] != "num":
            raise self.fail(tok, "a number")
        return self._to_float(tok)

    def _to_float(self, tok: tuple[str, str, int]) -> float:
        value = float(tok[1])
        if not math.isfinite(value):
            raise ParseError(f"number {tok[1]!r} is not finite", self.text, tok[2])
        return value

    def atom(self) -> Node:
        tok = self.next()
        kind, value, pos = tok
        if kind == "num":
            return Const(self._to_float(tok))
        if kind == "op" and value == "(":
            node = self.expr()
            self.expect(")")
            return node
        if kind == "name":
            if self.peek()[1] == "(" and self.peek()[0] == "op":
                return self.call(tok)
            if value in FUNCTIONS_1 | FUNCTIONS_PARAM | FUNCTIONS_2:
                raise ParseError(f"function {value!r} needs an argument list, e.g. {value}(g)",
                                 self.text, pos)
            if value in LEAF_NAMES or is_decay_name(value):
                return Leaf(value)
            raise ParseError(
                f"unknown name {value!r} (operands: {', '.join(sorted(LEAF_NAMES))}, "
                "cd_<n>, rd_<n>)", self.text, pos)
        raise self.fail(tok, "an operand, a number, a function or '('")

    def call(self, name_tok: tuple[str, str, int]) -> Node:
        _, fn, pos = name_tok
        known = FUNCTIONS_1 | FUNCTIONS_PARAM | FUNCTIONS_2
        if fn not in known:
            raise ParseError(f"unknown function {fn!r} (functions: {', '.join(sorted(known))})",
                             self.text, pos)
        self.expect("(")
        arg = self.expr()
        if fn in FUNCTIONS_1:
            self.expect(")")
            return Call(fn, arg)
        self.expect(",")
        if fn in FUNCTIONS_2:
            right = self.expr()
            self.expect(")")
            return Bin(fn, arg, right)
        ptok = self.peek()
        param = self.number()
        if fn == "clip" and not param > 0:
            raise ParseError(f"clip bound must be > 0, got {ptok[1]}", self.text, ptok[2])
        if fn == "drop" and not 0 <= param < 1:
            raise ParseError(f"drop probability must be in [0, 1), got {ptok[1]}", self.text, ptok[2])
        self.expect(")")
        return Call(fn, arg, param)


def parse_node(text: str) -> Node:
    """Parse rule text into a tree; raises :class:`ParseError` (a ``ValueError``)."""
    if not isinstance(text, str):
        raise TypeError(f"rule text must be str, got {type(text).__name__}")
    return _Parser(text).parse()


# --- printer ------------------------------------------------------------------------
_PREC = {"add": 1, "sub": 1, "mul": 2, "div": 2, "neg": 3, "pow": 4}
_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "^"}
_ATOM = 5


def format_number(value: float) -> str:
    """Shortest text that parses back to exactly ``value`` (``1``, ``0.5``, ``1e-4``)."""
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    plain = repr(value)
    for digits in range(0, 17):
        s = f"{value:.{digits}e}"
        if float(s) == value:
            mant, exp = s.split("e")
            sci = f"{mant}e{int(exp)}"
            return sci if len(sci) < len(plain) else plain
    return plain


def _prec(node: Node) -> int:
    if isinstance(node, Bin) and node.op in _PREC:
        return _PREC[node.op]
    if isinstance(node, Call) and node.fn == "neg":
        return _PREC["neg"]
    return _ATOM


def to_text(node: Node) -> str:
    """Print a tree so that ``parse_node(to_text(t)) == t`` (minimal parentheses)."""
    if isinstance(node, Leaf):
        return node.name
    if isinstance(node, Const):
        return format_number(node.value)
    if isinstance(node, Call):
        if node.fn == "neg":
            inner = to_text(node.arg)
            # '-' applies to a unary/power expression; wrap lower-precedence children
            return "-" + (inner if _prec(node.arg) >= _PREC["neg"] else f"({inner})")
        if node.param is not None:
            return f"{node.fn}({to_text(node.arg)}, {format_number(node.param)})"
        return f"{node.fn}({to_text(node.arg)})"
    if node.op == "left":
        return f"left({to_text(node.left)}, {to_text(node.right)})"
    p = _PREC[node.op]
    lhs, rhs = to_text(node.left), to_text(node.right)
    if node.op == "pow":
        # left of '^' must be an atom; right may be a unary or power expression
        if _prec(node.left) < _ATOM:
            lhs = f"({lhs})"
        if _prec(node.right) < _PREC["neg"]:
            rhs = f"({rhs})"
    else:
        if _prec(node.left) < p:
            lhs = f"({lhs})"
        # left-associative: an equal-precedence right child needs parentheses
        if _prec(node.right) <= p:
            rhs = f"({rhs})"
    return f"{lhs}{_SYMBOL[node.op]}{rhs}" if p >= 2 else f"{lhs} {_SYMBOL[node.op]} {rhs}"
