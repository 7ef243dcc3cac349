"""Canonical form of a rule tree: the key under which rewards are cached.

Two rules get the same key when they differ only by rewrites that never change the
update (up to floating-point rounding):

* ``left(x, y)`` -> ``x`` (keep-left); identity unary (never in the tree anyway);
* operand aliases ``sign_g`` -> ``sign(g)``, ``sign_m`` -> ``sign(m)``, ``cd_0.5`` -> ``cd``;
* ``x - y`` -> ``x + -y``; ``--x`` -> ``x``; ``-(a + b)`` -> ``-a + -b``; ``x + -x`` -> ``0``;
* ``+`` and ``*`` are flattened (associativity) and their arguments sorted
  (commutativity); numeric constants are folded, ``x*1``, ``x+0`` and ``x^1`` dropped;
  negation is pulled out of products into one coefficient;
* ``sign(sign(x))`` -> ``sign(x)``, ``sign(-x)`` -> ``-sign(x)``, ``sign(c)`` folded;
  ``log|-x|``, ``sqrt|-x|``, ``abs(-x)`` drop the minus (they read ``|x|``).

Anything else keeps rules apart.  Rules that are equal as *functions* but not by these
rewrites are caught later by the functional fingerprint of the evaluator.
"""

from __future__ import annotations

import math
from functools import lru_cache

from .nodes import Bin, Call, Const, Leaf, Node
from .text import check_limits, to_text

_ALIASES = {"sign_g": Call("sign", Leaf("g")), "sign_m": Call("sign", Leaf("m"))}


def _leaf(node: Leaf) -> Node:
    if node.name in _ALIASES:
        return _ALIASES[node.name]
    head, _, tail = node.name.partition("_")
    if head in ("cd", "rd") and tail:
        n = float(tail)
        if head == "cd" and n == 0.5:
            return Leaf("cd")
        return Leaf(f"{head}_{int(n) if n == int(n) else n}")
    return node


def _sort_key(node: Node) -> str:
    return to_text(node)


def _num(value: float) -> Node:
    return Const(value) if value >= 0 else Call("neg", Const(-value))


def _terms(node: Node) -> list[Node]:
    if isinstance(node, Bin) and node.op == "add":
        return _terms(node.left) + _terms(node.right)
    return [node]


def _coef_factors(node: Node) -> tuple[float, list[Node]]:
    """Split a canonical node into (numeric coefficient, non-numeric factors)."""
    if isinstance(node, Const):
        return node.value, []
    if isinstance(node, Call) and node.fn == "neg":
        c, fs = _coef_factors(node.arg)
        return -c, fs
    if isinstance(node, Bin) and node.op == "mul":
        c1, f1 = _coef_factors(node.left)
        c2, f2 = _coef_factors(node.right)
        return c1 * c2, f1 + f2
    return 1.0, [node]


def _product(coef: float, factors: list[Node]) -> Node:
    factors = sorted(factors, key=_sort_key)
    if coef == 0 or not factors:
        return _num(coef)
    node = factors[0]
    for f in factors[1:]:
        node = Bin("mul", node, f)
    if abs(coef) != 1:
        node = Bin("mul", Const(abs(coef)), node)
    if coef < 0:
        # -(a + b) is written -a + -b everywhere (see _neg), also when it comes from -1*(a+b)
        return _neg(node) if isinstance(node, Bin) and node.op == "add" else Call("neg", node)
    return node


def _sum(terms: list[Node]) -> Node:
    const = 0.0
    rest: list[Node] = []
    for t in terms:
        if isinstance(t, Const):
            const += t.value
        elif isinstance(t, Call) and t.fn == "neg" and isinstance(t.arg, Const):
            const -= t.arg.value
        else:
            rest.append(t)
    # x + -x = 0: cancel opposite pairs (exact for finite x, unlike reassociation)
    kept: list[Node] = []
    for t in rest:
        opposite = t.arg if isinstance(t, Call) and t.fn == "neg" else Call("neg", t)
        if opposite in kept:
            kept.remove(opposite)
        else:
            kept.append(t)
    rest = kept
    if const != 0 or not rest:
        rest.append(_num(const))
    rest.sort(key=_sort_key)
    node = rest[0]
    for t in rest[1:]:
        node = Bin("add", node, t)
    return node


def _neg(node: Node) -> Node:
    if isinstance(node, Bin) and node.op == "add":
        return _sum([_neg(t) for t in _terms(node)])
    c, fs = _coef_factors(node)
    if fs and len(fs) == 1 and c == 1 and not (isinstance(node, Bin) and node.op == "mul"):
        return Call("neg", node)
    return _product(-c, fs)


def _strip_sign(node: Node) -> Node:
    """|x| is invariant under x -> -x: drop the negation/coefficient sign."""
    c, fs = _coef_factors(node)
    return _product(abs(c), fs) if fs else Const(abs(c))


@lru_cache(maxsize=65536)
def canonical(node: Node) -> Node:
    """The canonical tree of ``node`` (idempotent: canonical(canonical(x)) == canonical(x))."""
    if isinstance(node, Leaf):
        return _leaf(node)
    if isinstance(node, Const):
        return node
    if isinstance(node, Call):
        arg = canonical(node.arg)
        if node.fn == "neg":
            return _neg(arg)
        if node.fn == "sign":
            c, fs = _coef_factors(arg)
            if not fs:
                return _num(float(math.copysign(1.0, c)) if c != 0 else 0.0)
            inner = _product(abs(c), fs)
            if isinstance(inner, Call) and inner.fn == "sign":
                out: Node = inner
            else:
                out = Call("sign", inner)
            return _neg(out) if c < 0 else out
        if node.fn in ("log", "sqrt", "abs"):
            return Call(node.fn, _strip_sign(arg), node.param)
        return Call(node.fn, arg, node.param)
    # binary
    if node.op == "left":
        return canonical(node.left)
    left, right = canonical(node.left), canonical(node.right)
    if node.op == "sub":
        return _sum(_terms(left) + _terms(_neg(right)))
    if node.op == "add":
        return _sum(_terms(left) + _terms(right))
    if node.op == "mul":
        c1, f1 = _coef_factors(left)
        c2, f2 = _coef_factors(right)
        return _product(c1 * c2, f1 + f2)
    if node.op == "pow" and right == Const(1.0):
        return left
    return Bin(node.op, left, right)


def canonical_key(node: Node) -> str:
    """Text of the canonical tree: equal for rules that differ only by the rewrites above.
    Raises :class:`~searchlab.dsl.ParseError` for a tree beyond the size limits
    (:data:`~searchlab.dsl.text.MAX_DEPTH`, :data:`~searchlab.dsl.text.MAX_NODES`), which
    the recursive rewrites could not handle."""
    check_limits(node)
    return to_text(canonical(node))
