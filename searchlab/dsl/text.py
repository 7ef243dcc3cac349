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

Size limits (:data:`MAX_DEPTH` levels of nesting, :data:`MAX_NODES` nodes,
:data:`MAX_LENGTH` characters) keep every recursive pass over a tree far from Python's
recursion limit; a rule beyond them is a :class:`ParseError` naming the limit (and the
position), so evaluators score it ``invalid`` instead of raising ``RecursionError``.
"""

from __future__ import annotations

import math
import re

from .nodes import Bin, Call, Const, Leaf, Node, children
from .primitives import OPERANDS, is_decay_name


class ParseError(ValueError):
    """A rule's text could not be parsed; the message names the token and its position
    (``position`` None: a rule tree too large, built without text)."""

    def __init__(self, message: str, text: str, position: int | None) -> None:
        self.text = text
        self.position = position
        if position is None:
            super().__init__(message)
            return
        caret = " " * position + "^"
        super().__init__(f"{message} at position {position}\n  {text}\n  {caret}")


#: Limits of a rule (text or tree), so that every recursive pass over the tree (printer,
#: canonical key, compiler, fingerprint) stays far below Python's recursion limit: the
#: nesting depth (functions, parentheses, unary minus, each chained ``+ - * / ^``
#: operator: a sum of n terms is n levels deep), the number of nodes (operands, numbers,
#: functions and operators) and the length of the text.  Rules of the search spaces are
#: far below them (depth <= 20, a few dozen nodes).
MAX_DEPTH = 64
MAX_NODES = 256
MAX_LENGTH = 4000


def _limit_error(what: str, value: int, limit: int, text: str, position: int | None
                 ) -> ParseError:
    why = (" (each function, parenthesis, unary minus and chained + - * / ^ operator adds a "
           "level)" if what == "nesting depth" else "")
    return ParseError(f"rule too large: {what} {value} exceeds the limit of {limit}{why}",
                      text, position)


def check_limits(node: Node, text: str = "") -> None:
    """Raise :class:`ParseError` if the tree ``node`` is deeper than :data:`MAX_DEPTH` or
    has more than :data:`MAX_NODES` nodes (iterative: never recurses itself)."""
    count = 0
    stack: list[tuple[Node, int]] = [(node, 1)]
    while stack:
        n, d = stack.pop()
        count += 1
        if d > MAX_DEPTH:
            raise _limit_error("nesting depth", d, MAX_DEPTH, text, None)
        if count > MAX_NODES:
            raise _limit_error("node count", count, MAX_NODES, text, None)
        stack.extend((c, d + 1) for c in children(n))


#: Names of leaves the text syntax accepts (besides the generic ``cd_<n>``/``rd_<n>``).
LEAF_NAMES: frozenset[str] = frozenset(
    {o.text for o in OPERANDS.values() if o.kind not in ("constant", "weight")} | {"w"}
)
#: Functions of one argument, and those taking a numeric parameter or a second expression.
FUNCTIONS_1 = frozenset({"exp", "log", "sqrt", "sign", "sigmoid", "abs"})
FUNCTIONS_PARAM = frozenset({"clip", "drop"})
FUNCTIONS_2 = frozenset({"left"})
#: what the second argument of a two-argument function is, for error messages
_SECOND_ARGUMENT = {
    "clip": "clip needs a bound: clip(x, b) with a number b > 0, e.g. clip(g, 1e-4)",
    "drop": "drop needs a probability: drop(x, p) with a number 0 <= p < 1, e.g. drop(g, 0.1)",
    "left": "left needs two arguments: left(x, y) keeps x",
}

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
        if len(text) > MAX_LENGTH:
            raise _limit_error("length", len(text), MAX_LENGTH, text[:60] + " ...", None)
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self.nesting = 0                       # recursion depth of unary() (see MAX_DEPTH)
        self.depth: dict[int, int] = {}        # id(node) -> depth of its subtree
        self.nodes = 0

    def made(self, node: Node, pos: int) -> Node:
        """Account for a new node at text position ``pos``; enforce the limits."""
        d = 1 + max((self.depth[id(c)] for c in children(node)), default=0)
        self.nodes += 1
        if d > MAX_DEPTH:
            raise _limit_error("nesting depth", d, MAX_DEPTH, self.text, pos)
        if self.nodes > MAX_NODES:
            raise _limit_error("node count", self.nodes, MAX_NODES, self.text, pos)
        self.depth[id(node)] = d
        return node

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
            tok = self.next()
            op = "add" if tok[1] == "+" else "sub"
            node = self.made(Bin(op, node, self.term()), tok[2])
        return node

    def term(self) -> Node:
        node = self.unary()
        while self.peek()[1] in ("*", "/") and self.peek()[0] == "op":
            tok = self.next()
            op = "mul" if tok[1] == "*" else "div"
            node = self.made(Bin(op, node, self.unary()), tok[2])
        return node

    def unary(self) -> Node:
        # every nested construct (parentheses, function calls, '-', '^') passes through
        # here: bounding this recursion bounds the parser's
        self.nesting += 1
        try:
            if self.nesting > MAX_DEPTH:
                raise _limit_error("nesting depth", self.nesting, MAX_DEPTH, self.text,
                                   self.peek()[2])
            if self.peek()[1] == "-" and self.peek()[0] == "op":
                tok = self.next()
                return self.made(Call("neg", self.unary()), tok[2])
            if self.peek()[1] == "+" and self.peek()[0] == "op":
                raise self.fail(self.peek(), "an operand (unary plus is not part of the syntax)")
            return self.power()
        finally:
            self.nesting -= 1

    def power(self) -> Node:
        node = self.atom()
        if self.peek()[1] == "^" and self.peek()[0] == "op":
            tok = self.next()
            node = self.made(Bin("pow", node, self.unary()), tok[2])
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
            return self.made(Const(self._to_float(tok)), pos)
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
                return self.made(Leaf(value), pos)
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
            return self.made(Call(fn, arg), pos)
        tok = self.peek()
        if tok[1] != "," or tok[0] != "op":
            found = repr(tok[1]) if tok[0] != "end" else "the end of the rule"
            raise ParseError(f"{_SECOND_ARGUMENT[fn]}; found {found} where ',' was expected",
                             self.text, tok[2])
        self.next()
        if fn in FUNCTIONS_2:
            right = self.expr()
            self.expect(")")
            return self.made(Bin(fn, arg, right), pos)
        ptok = self.peek()
        if ptok[0] != "num":
            found = repr(ptok[1]) if ptok[0] != "end" else "the end of the rule"
            raise ParseError(f"{_SECOND_ARGUMENT[fn]}; found {found}", self.text, ptok[2])
        param = self.number()
        if fn == "clip" and not param > 0:
            raise ParseError(f"clip bound must be > 0, got {ptok[1]}", self.text, ptok[2])
        if fn == "drop" and not 0 <= param < 1:
            raise ParseError(f"drop probability must be in [0, 1), got {ptok[1]}", self.text, ptok[2])
        self.expect(")")
        return self.made(Call(fn, arg, param), pos)


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
