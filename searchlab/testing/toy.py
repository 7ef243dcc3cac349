"""A millisecond toy evaluator for tests and strategy conformance (ARCHITECTURE.md, rule 12).

``ToyEvaluator().evaluate(rule, seed)`` does not train anything: it computes the rule's
update on a fixed set of *probe states* (random gradients, moving averages, weights and
training progress, drawn once from ``probe_seed``) and scores how close it is to a hidden
*target rule*'s update on the same probes:

    final   = max(0, cos(update(rule), update(target)))
    blocks  = mean over the target's intermediate group outputs T_j of
              max over the rule's binary sub-expressions R_i of |cos(R_i, T_j)|
    reward  = (1 - partial) * final ** sharpness + partial * blocks

Cosine similarity is scale-free, like the real protocol, which picks the best learning
rate for every rule (the toy reports the least-squares scale as ``best_lr``).  The
*building-block* term gives partial credit for computing a piece of the target (for the
default target PowerSign ``exp(sign(g)*sign(m))*g``, Bello et al. 2017 section 5, the
piece ``sign(g)*sign(m)``), so the objective rewards what search strategies are supposed
to exploit: good parts that can be kept and recombined.  Only the target family scores
1.0.  With ``partial=0`` only the final update counts; that landscape is nearly flat
around plain ``g`` (cosine ~0.89), and random search is then hard to beat at a few
hundred samples.

Deterministic: the probes depend on ``probe_seed`` only; stochastic rules (``eps``,
``eps_t``, ``drop``) draw their noise from ``(seed, canonical key)``.  A non-finite
update scores ``diverged``.  Failures can be injected with ``fail`` (rule text or key ->
status) and ``fail_rate`` (a fixed, hash-chosen fraction of keys), to test that
strategies and the runner survive ``diverged``/``invalid`` results.

Implements the evaluator protocol used by :func:`searchlab.runner.run_search` and the
Gymnasium env: ``evaluate(rule, seed) -> Result``, never raising for a bad rule.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Mapping

import numpy as np

from ..dsl import ParseError, Rule, as_rule
from ..dsl.nodes import Bin, Call, Const, Leaf, Node
from ..dsl.primitives import DIV_DELTA, decay_value, is_decay_name
from ..result import FLOOR_REWARD, STATUSES, Result

#: PowerSign, the paper's best-known discovery (section 5): the default hidden target.
POWERSIGN = "exp(sign(g)*sign(m))*g"

_TOTAL_STEPS = 1000  # T of the decay operands on the probes


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity (0 if either vector is zero or overflows)."""
    na, nb = float(np.sqrt(a @ a)), float(np.sqrt(b @ b))
    if na == 0.0 or nb == 0.0 or not math.isfinite(na * nb):
        return 0.0
    c = float(a @ b) / (na * nb)
    return c if math.isfinite(c) else 0.0


def _stable_hash(*parts: object) -> int:
    """A process-independent 64-bit hash (Python's ``hash`` is salted per process)."""
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little")


def probe_states(n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` random optimizer states: every input a rule can read, as float64 arrays.

    ``m`` agrees in sign with ``g`` on about two thirds of the probes, so rules that
    react to sign agreement (PowerSign, AddSign) differ from plain ``g``.
    """
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(n)
    m = 0.5 * g + 0.8 * rng.standard_normal(n)
    v = 0.5 * g**2 + 0.5 * rng.standard_normal(n) ** 2 + 1e-3
    gamma = 0.5 * g**3 + 0.5 * rng.standard_normal(n)
    w = rng.standard_normal(n)
    t = rng.integers(0, _TOTAL_STEPS, n)
    st: dict[str, np.ndarray] = {
        "g": g, "g2": g**2, "g3": g**3, "m": m, "v": v, "gamma": gamma, "w": w,
        "sign_g": np.sign(g), "sign_m": np.sign(m),
        "adam": m / (np.sqrt(v) + 1e-8), "rmsprop": g / (np.sqrt(v) + 1e-8),
        "_t": t.astype(np.float64),
    }
    return st


def _leaf_value(name: str, st: Mapping[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    if name in st and not name.startswith("_"):
        return st[name]
    n = len(st["g"])
    if name == "eps":                                   # N(0, 0.01): std 0.1
        return 0.1 * rng.standard_normal(n)
    if name == "eps_t":                                 # N(0, 1/(1+t)^0.55)
        return rng.standard_normal(n) * np.sqrt(1.0 / (1.0 + st["_t"]) ** 0.55)
    if is_decay_name(name):
        return np.array([decay_value(name, int(t), _TOTAL_STEPS) for t in st["_t"]])
    raise KeyError(f"the toy evaluator cannot read {name!r}")


def eval_node(node: Node, st: Mapping[str, np.ndarray], rng: np.random.Generator,
              subs: dict[Node, np.ndarray] | None = None) -> np.ndarray:
    """Evaluate a rule tree on probe states with the protected meanings of the
    primitives table (an independent NumPy interpreter, float64).

    If ``subs`` is given, the value of every binary sub-expression (a group output, in
    token form) is stored in it.
    """
    if isinstance(node, Const):
        return np.full(len(st["g"]), node.value)
    if isinstance(node, Leaf):
        return _leaf_value(node.name, st, rng)
    if isinstance(node, Call):
        x = eval_node(node.arg, st, rng, subs)
        fn = node.fn
        if fn == "neg":
            return -x
        if fn == "exp":
            return np.exp(np.minimum(x, 80.0))
        if fn == "log":
            return np.log(np.abs(x) + 1e-8)
        if fn == "sqrt":
            return np.sqrt(np.abs(x))
        if fn == "sign":
            return np.sign(x)
        if fn == "abs":
            return np.abs(x)
        if fn == "sigmoid":
            return 1.0 / (1.0 + np.exp(-np.clip(x, -80.0, 80.0)))
        if fn == "clip":
            assert node.param is not None
            return np.clip(x, -node.param, node.param)
        if fn == "drop":
            assert node.param is not None
            return np.where(rng.random(len(x)) < node.param, 0.0, x)
        raise KeyError(f"unknown function {fn!r}")
    assert isinstance(node, Bin)
    a = eval_node(node.left, st, rng, subs)
    b = eval_node(node.right, st, rng, subs)   # evaluated even for keep-left (noise order)
    if node.op == "left":
        out = a
    elif node.op == "add":
        out = a + b
    elif node.op == "sub":
        out = a - b
    elif node.op == "mul":
        out = a * b
    elif node.op == "div":
        out = a / (b + DIV_DELTA)
    elif node.op == "pow":
        out = np.sign(a) * np.abs(a) ** b
    else:
        raise KeyError(f"unknown binary function {node.op!r}")
    if subs is not None:
        subs[node] = out
    return out


@dataclass(frozen=True)
class ToyEvaluator:
    """Scores a rule by the cosine similarity of its probe updates to a target rule's.

    Args:
        target: text of the hidden target rule (default PowerSign).
        probes: number of probe states.
        probe_seed: seed of the probe states (fixed: the objective itself).
        sharpness: exponent applied to the clipped cosine (>1 stretches the top).
        partial: weight of the building-block credit (see the module docstring);
            0 scores the final update only.
        fail: rule text or canonical key -> status to return instead of evaluating
            (e.g. ``{"g*m": "diverged"}``); the reward is then ``FLOOR_REWARD``.
        fail_rate: fraction of canonical keys (chosen by a stable hash) that return
            ``fail_status``.
        fail_status: status of the ``fail_rate`` failures.
        sleep: seconds to sleep per evaluation (to simulate cost in executor tests).
    """

    target: str = POWERSIGN
    probes: int = 128
    probe_seed: int = 0
    sharpness: float = 1.0
    partial: float = 0.5
    fail: Mapping[str, str] = field(default_factory=dict)
    fail_rate: float = 0.0
    fail_status: str = "diverged"
    sleep: float = 0.0

    task = "toy"
    fidelity = "probe"
    #: the evaluator contract (searchlab.interfaces.Evaluator)
    task_name = "toy"
    protocol = "probe"

    def __post_init__(self) -> None:
        for status in list(self.fail.values()) + [self.fail_status]:
            if status not in STATUSES or status == "ok":
                raise ValueError(f"injected status must be one of {STATUSES[1:]}, got {status!r}")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError(f"fail_rate must be in [0, 1], got {self.fail_rate}")

    @cached_property
    def _states(self) -> dict[str, np.ndarray]:
        return probe_states(self.probes, self.probe_seed)

    @cached_property
    def _target(self) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """The target's update and its intermediate group outputs on the probes."""
        rule = as_rule(self.target)
        subs: dict[Node, np.ndarray] = {}
        rng = np.random.default_rng(_stable_hash("target", rule.key))
        y = eval_node(rule.node, self._states, rng, subs)
        if not np.all(np.isfinite(y)) or not np.any(y):
            raise ValueError(f"target rule {self.target!r} has a non-finite or zero update")
        parts = tuple(v for n, v in subs.items() if n != rule.node
                      and np.all(np.isfinite(v)) and np.any(v - v[0]))
        return y, parts

    def score(self, rule: Rule | str, seed: int = 0) -> tuple[float, float | None]:
        """(reward, best scale) of a rule; raises ``FloatingPointError`` if its update is
        non-finite."""
        rule = as_rule(rule)
        rng = np.random.default_rng(_stable_hash(seed, rule.key))
        subs: dict[Node, np.ndarray] = {}
        with np.errstate(all="ignore"):
            y = eval_node(rule.node, self._states, rng, subs)
            if not np.all(np.isfinite(y)) or not math.isfinite(float(y @ y)):
                raise FloatingPointError("non-finite update on a probe state")
            t, parts = self._target
            final = max(0.0, _cos(y, t))
            reward = final ** self.sharpness
            if self.partial > 0 and parts:
                mine = [v for v in subs.values() if np.all(np.isfinite(v))]
                best = [max((abs(_cos(v, p)) for v in mine), default=0.0) for p in parts]
                reward = (1.0 - self.partial) * reward + self.partial * float(np.mean(best))
            yy = float(y @ y)
            scale = float(y @ t) / yy if yy > 0 else 0.0
        return reward, (scale if scale > 0 and math.isfinite(scale) else None)

    def evaluate(self, rule: Rule | str, seed: int = 0, *, test: bool = False) -> Result:
        """Score ``rule``; never raises for a bad rule (bad text -> ``invalid``).

        ``test=True`` also scores it on held-out probe states (``probe_seed + 1``) as
        ``extra["test_reward"]``, the toy's stand-in for a test split."""
        start, cpu0 = time.perf_counter(), time.process_time()
        text = rule if isinstance(rule, str) else rule.text
        try:
            rule = as_rule(rule)
        except ParseError as e:
            return Result(rule=text, key="", reward=FLOOR_REWARD, status="invalid", seed=seed,
                          task=self.task, fidelity=self.fidelity, message=str(e))
        try:
            tokens = rule.to_tokens()
        except ValueError:
            tokens = ()
        common = dict(rule=rule.text, key=rule.key, seed=seed, task=self.task,
                      fidelity=self.fidelity, tokens=tokens)
        if self.sleep:
            time.sleep(self.sleep)
        injected = self.fail.get(rule.text) or self.fail.get(rule.key)
        if injected is None and self.fail_rate > 0:
            if _stable_hash("fail", rule.key) % 10_000 < self.fail_rate * 10_000:
                injected = self.fail_status
        if injected is not None:
            return Result(reward=FLOOR_REWARD, status=injected,  # type: ignore[arg-type]
                          seconds=time.perf_counter() - start,
                          message="injected by ToyEvaluator", **common)
        try:
            reward, scale = self.score(rule, seed)
        except FloatingPointError as e:
            return Result(reward=FLOOR_REWARD, status="diverged",
                          seconds=time.perf_counter() - start, message=str(e), **common)
        except KeyError as e:  # an input the toy cannot compute: a value, not a crash
            return Result(reward=FLOOR_REWARD, status="invalid",
                          seconds=time.perf_counter() - start, message=str(e), **common)
        extra: dict[str, float] = {"cpu_seconds": time.process_time() - cpu0}
        if test:
            from dataclasses import replace

            extra["test_reward"] = replace(self, probe_seed=self.probe_seed + 1).score(rule, seed)[0]
        return Result(reward=reward, status="ok", best_lr=scale,
                      seconds=time.perf_counter() - start, extra=extra, **common)
