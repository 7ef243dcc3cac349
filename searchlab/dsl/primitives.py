"""The primitives table: the single source of truth of the rule language.

Everything that speaks the language derives from these tables: the text parser and
printer (:mod:`searchlab.dsl.text`), the token grammar and its masks
(:mod:`searchlab.dsl.tokens`), the canonical key (:mod:`searchlab.dsl.canonical`),
the optimizer compiler (:mod:`searchlab.optim.compiler`) and the GP primitive set
(:mod:`strategies.gp`).

Operands, unary and binary functions follow Bello et al. 2017, section 4.1.  Where the
math can produce NaN or inf the *protected* meaning used by the compiler is written in
``protected`` (see also the compiler, which implements exactly these meanings).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

#: Moving-average decay rates of the paper (section 4.2): beta1=0.9, beta2=beta3=0.999.
DEFAULT_BETAS: tuple[float, float, float] = (0.9, 0.999, 0.999)
#: The delta of the protected division x / (y + delta) (paper section 4.2).
DIV_DELTA: float = 1e-8


@dataclass(frozen=True)
class Operand:
    """A leaf of the token grammar.

    ``text`` is how the operand prints in the text syntax (and what the parser reads back).
    ``reads`` names the per-parameter state the operand needs: moving averages ``m``,
    ``v``, ``gamma`` or the weight ``w``.  ``kind`` groups operands for search spaces.
    """

    name: str
    text: str
    doc: str
    kind: str  # "gradient" | "average" | "constant" | "noise" | "weight" | "optimizer" | "decay"
    reads: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Unary:
    """A unary function token; ``fn`` is its text-syntax function name."""

    name: str
    fn: str | None  # None for the identity (prints nothing)
    param: float | None
    doc: str
    protected: str = ""


@dataclass(frozen=True)
class Binary:
    """A binary function token; ``symbol`` is its infix operator (or function name)."""

    name: str
    symbol: str
    doc: str
    protected: str = ""


def _op(name: str, text: str, doc: str, kind: str, reads: tuple[str, ...] = ()) -> Operand:
    return Operand(name, text, doc, kind, frozenset(reads))


# --- Operands (paper 4.1) -------------------------------------------------------------
_OPERANDS: tuple[Operand, ...] = (
    _op("g", "g", "the gradient", "gradient"),
    _op("g2", "g2", "g^2", "gradient"),
    _op("g3", "g3", "g^3", "gradient"),
    _op("m", "m", "bias-corrected EMA of g (beta1)", "average", ("m",)),
    _op("v", "v", "bias-corrected EMA of g^2 (beta2)", "average", ("v",)),
    _op("gamma", "gamma", "bias-corrected EMA of g^3 (beta3)", "average", ("gamma",)),
    _op("sign_g", "sign_g", "sign(g) as an operand", "gradient"),
    _op("sign_m", "sign_m", "sign(m) as an operand", "average", ("m",)),
    _op("1", "1", "the constant 1", "constant"),
    _op("2", "2", "the constant 2", "constant"),
    _op("eps", "eps", "noise ~ N(0, 0.01) (variance 0.01), fresh each step", "noise"),
    _op("1e-4*w", "1e-4*w", "1e-4 times the weight", "weight", ("w",)),
    _op("1e-3*w", "1e-3*w", "1e-3 times the weight", "weight", ("w",)),
    _op("1e-2*w", "1e-2*w", "1e-2 times the weight", "weight", ("w",)),
    _op("1e-1*w", "1e-1*w", "1e-1 times the weight", "weight", ("w",)),
    _op("adam", "adam", "Adam's update m / (sqrt(v) + 1e-8)", "optimizer", ("m", "v")),
    _op("rmsprop", "rmsprop", "RMSProp's update g / (sqrt(v) + 1e-8)", "optimizer", ("v",)),
    # decay operands (paper 4.1): t = steps taken before this one, T = total steps
    _op("ld", "ld", "linear decay 1 - t/T", "decay"),
    _op("cd", "cd", "cosine decay cd_{1/2} = 0.5*(1+cos(pi*t/T))", "decay"),
    _op("cd_1", "cd_1", "cyclical decay, 1 period", "decay"),
    _op("cd_2", "cd_2", "cyclical decay, 2 periods", "decay"),
    _op("rd_1", "rd_1", "restart decay, 1 restart period", "decay"),
    _op("rd_10", "rd_10", "restart decay, 10 periods", "decay"),
    _op("rd_20", "rd_20", "restart decay, 20 periods", "decay"),
    _op("eps_t", "eps_t", "annealed noise ~ N(0, 1/(1+t)^0.55)", "noise"),
    # multiscale operands (not the paper's: Shahid 2017's Adam at several timescales, so
    # that a search can reach multiscale-Adam-like rules); only the ``multiscale`` space
    # has them, ``paper`` and ``scratch`` keep the paper's vocabulary
    _op("m_5", "m_5", "bias-corrected EMA of g with beta 0.5 (a short timescale)",
        "average", ("m_5",)),
    _op("m_99", "m_99", "bias-corrected EMA of g with beta 0.99 (a long timescale)",
        "average", ("m_99",)),
    _op("adam_5", "adam_5", "Adam's update with beta1 = 0.5: m_5 / (sqrt(v) + 1e-8)",
        "optimizer", ("m_5", "v")),
    _op("adam_99", "adam_99", "Adam's update with beta1 = 0.99: m_99 / (sqrt(v) + 1e-8)",
        "optimizer", ("m_99", "v")),
)

#: The multiscale operands (above) and the fixed decay rates of their moving averages.
MULTISCALE_OPERANDS: tuple[str, ...] = ("m_5", "m_99", "adam_5", "adam_99")
MULTISCALE_BETAS: Mapping[str, float] = MappingProxyType({"m_5": 0.5, "m_99": 0.99})

# --- Unary functions (paper 4.1) ------------------------------------------------------
_UNARY: tuple[Unary, ...] = (
    Unary("id", None, None, "identity x"),
    Unary("neg", "-", None, "-x"),
    Unary("exp", "exp", None, "e^x", "inputs clamped to <= 80 so the result stays finite in float32"),
    Unary("log", "log", None, "log|x|", "log(|x| + 1e-8) is never -inf"),
    Unary("sqrt", "sqrt", None, "sqrt|x|"),
    Unary("clip_1e-5", "clip", 1e-5, "clip(x, 1e-5): x clipped to [-1e-5, 1e-5]"),
    Unary("clip_1e-4", "clip", 1e-4, "clip(x, 1e-4)"),
    Unary("clip_1e-3", "clip", 1e-3, "clip(x, 1e-3)"),
    Unary("drop_0.1", "drop", 0.1, "drop(x, 0.1): each element set to 0 with probability 0.1"),
    Unary("drop_0.3", "drop", 0.3, "drop(x, 0.3)"),
    Unary("drop_0.5", "drop", 0.5, "drop(x, 0.5)"),
    Unary("sign", "sign", None, "sign(x), sign(0) = 0"),
)

#: Functions of the text syntax outside the token grammar (Table 6 uses sigmoid).
EXTRA_FUNCTIONS: Mapping[str, str] = MappingProxyType(
    {"sigmoid": "1 / (1 + e^-x)", "abs": "|x|"}
)

# --- Binary functions (paper 4.1) -----------------------------------------------------
_BINARY: tuple[Binary, ...] = (
    Binary("add", "+", "x + y"),
    Binary("sub", "-", "x - y"),
    Binary("mul", "*", "x * y"),
    Binary("div", "/", "x / (y + delta), delta = 1e-8",
           "x / (y + 1e-8); a zero denominator gives inf, which the evaluator scores diverged"),
    Binary("pow", "^", "x ^ y",
           "sign(x) * |x|^y for negative x (the real-valued odd extension); 0^negative = inf"),
    Binary("left", "left", "keep left: x (y is ignored)"),
)

OPERANDS: Mapping[str, Operand] = MappingProxyType({o.name: o for o in _OPERANDS})
UNARY: Mapping[str, Unary] = MappingProxyType({u.name: u for u in _UNARY})
BINARY: Mapping[str, Binary] = MappingProxyType({b.name: b for b in _BINARY})

#: names of the previous-output operands o1..o3 (a depth-4 rule has 3 earlier outputs)
MAX_DEPTH = 4
OUTPUTS: tuple[str, ...] = tuple(f"o{k}" for k in range(1, MAX_DEPTH))

#: Decay operands as functions of (t, T); t = 0-based step count, T = total steps.
def decay_value(name: str, t: int, total: int) -> float:
    """Value of a deterministic decay operand at step ``t`` of ``total`` (paper 4.1)."""
    s = min(t, total)
    if name == "ld":
        return 1.0 - s / total
    if name.startswith("cd"):
        n = 0.5 if name == "cd" else float(name.split("_", 1)[1])
        return 0.5 * (1.0 + math.cos(2.0 * math.pi * n * s / total))
    if name.startswith("rd"):
        n = float(name.split("_", 1)[1])
        return 0.5 * (1.0 + math.cos(math.pi * ((s * n) % total) / total))
    raise KeyError(name)


def is_decay_name(name: str) -> bool:
    """True for the names ``ld``, ``cd``, ``cd_<n>``, ``rd_<n>`` (any positive n)."""
    if name in ("ld", "cd"):
        return True
    head, _, tail = name.partition("_")
    if head in ("cd", "rd") and tail:
        try:
            return float(tail) > 0
        except ValueError:
            return False
    return False
