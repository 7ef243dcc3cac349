"""Functional fingerprint of an update rule, and the cheap pre-training validity probe.

The canonical key (:mod:`searchlab.dsl.canonical`) merges rules that are equal by
rewriting; the fingerprint merges rules that are equal *as functions*, however they are
written (``g*2``, ``2*g``, ``g+g``; ``sign(g)*sign(m)*g`` and ``abs(g)*sign(m)``), the
way the searches of AutoML-Zero (Real et al. 2020) and Lion (Chen et al. 2023) hash a
candidate's behaviour on fixed inputs before training it.

Probe.  The compiled rule (:func:`searchlab.optim.compile_rule`) runs for ``PROBE_STEPS``
(40) steps on two float64 tensors of 128 elements each, fed a fixed seeded stream:

* gradients ``g_t = s * (mu + z_t)``: per-element scales ``s`` log-uniform in
  ``[1e-4, 10]`` (so small additive terms such as ``clip(g2, 1e-5)`` or ``1e-4*w`` show),
  a persistent mean ``mu ~ N(0, 1)`` (moving averages agree in sign with ``g`` for some
  elements and not for others) and fresh noise ``z_t ~ N(0, 1)``;
* weights ``w_t = w_0 - 0.01 * sum_{s<t} g_s`` (independent of the rule);
* ``total_steps = PROBE_STEPS`` (decay operands sweep their whole schedule) and a noise
  generator seeded with ``NOISE_SEED`` (stochastic rules hash their noisy updates).

The updates are rounded to about 6 significant digits (float32 with the low 6 mantissa
bits rounded off, after computing in float64) and hashed with BLAKE2b; equal rules agree
far below that precision, different rules almost never agree on all 10,240 numbers.

Validity (``Probe.problem``).  A rule is flagged, and the evaluator scores it ``invalid``
without training (configurable: ``Evaluator(reject_invalid=False)``), when on the probe

* an update is NaN or infinite, or beyond float32's range (children train in float32):
  ``exp(exp(g))*1e9``, ``0^-1`` ...; (``g/0`` is ``g/1e-8``, finite: it diverges in training),
* every update is exactly zero (``g - g``, ``clip(g, 1e-5) * 0`` ...), or
* the update is never a descent direction: ``<u_t, g_t> <= 0`` at every step (``-g``).

Rules that fail to compile are flagged too (``cannot compile: ...``).
"""

from __future__ import annotations

import hashlib
import math
import traceback
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from .dsl import ParseError, Rule, as_rule

__all__ = ["PROBE_STEPS", "PROBE_VERSION", "Probe", "probe", "fingerprint"]

PROBE_STEPS = 40
PROBE_SIZES = (128, 128)
PROBE_SEED = 20170614        # the stream of gradients and weights
NOISE_SEED = 7               # the rule's own noise (eps, eps_t, drop)
ROUND_BITS = 6               # float32 mantissa bits rounded off before hashing
PROBE_VERSION = 1            # bump when the probe changes (invalidates cached fingerprints)

#: errors a rule can raise while being compiled or run on the probe
_RULE_ERRORS = (ParseError, ValueError, TypeError, KeyError, ArithmeticError,
                RuntimeError, IndexError, NotImplementedError)


@dataclass(frozen=True)
class Probe:
    """Outcome of probing one rule.

    ``digest``: hex fingerprint (empty if the rule could not be run); ``problem``: why the
    rule is invalid, or None.
    """

    digest: str
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


@lru_cache(maxsize=1)
def _stream() -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
    rng = np.random.default_rng(PROBE_SEED)
    grads: list[list[torch.Tensor]] = [[] for _ in range(PROBE_STEPS)]
    weights: list[list[torch.Tensor]] = [[] for _ in range(PROBE_STEPS)]
    for n in PROBE_SIZES:
        # libm's pow, one element at a time: numpy's vectorised power differs in the last
        # bit on AVX-512 machines, which moved the fingerprint of 0.2 % of the functions
        # (cancellations such as exp(v) - exp(g2)) from one machine to another
        scale = np.array([math.pow(10.0, float(x)) for x in rng.uniform(-4.0, 1.0, size=n)])
        mu = rng.normal(size=n)
        w = rng.normal(size=n)
        for t in range(PROBE_STEPS):
            g = scale * (mu + rng.normal(size=n))
            grads[t].append(torch.tensor(g, dtype=torch.float64))
            weights[t].append(torch.tensor(w, dtype=torch.float64))
            w = w - 0.01 * g
    return grads, weights


_F32_MAX = float(np.finfo(np.float32).max)


def _quantise(u: np.ndarray) -> np.ndarray:
    x = np.clip(u, -_F32_MAX, _F32_MAX).astype(np.float32) + np.float32(0.0)  # -0 -> +0
    bits = x.view(np.uint32).astype(np.uint64)
    return ((bits + (1 << (ROUND_BITS - 1))) >> ROUND_BITS).astype(np.uint32)


@lru_cache(maxsize=4096)
def _probe_cached(rule: Rule) -> Probe:
    from .optim import compile_rule

    try:
        compiled = compile_rule(rule)
    except _RULE_ERRORS as exc:
        return Probe("", f"cannot compile: {type(exc).__name__}: {exc}")
    grads, weights = _stream()
    params = [w.clone() for w in weights[0]]
    state = compiled.init_state(params)
    gen = torch.Generator().manual_seed(NOISE_SEED)
    h = hashlib.blake2b(digest_size=12)
    h.update(f"probe-v{PROBE_VERSION}".encode())
    finite = True
    nonzero = False
    descent = False
    try:
        for t in range(PROBE_STEPS):
            for p, w in zip(params, weights[t]):
                p.copy_(w)
            u = compiled.update(grads[t], params, state, t, PROBE_STEPS, gen)
            flat = torch.cat([x.reshape(-1) for x in u]).numpy()
            # children train in float32: values beyond its range are inf there
            if not (np.isfinite(flat).all() and np.abs(flat).max(initial=0.0) <= _F32_MAX):
                finite = False
                flat = np.nan_to_num(flat, nan=0.0, posinf=1e300, neginf=-1e300)
            nonzero = nonzero or bool(np.any(flat != 0.0))
            g = torch.cat([x.reshape(-1) for x in grads[t]]).numpy()
            with np.errstate(over="ignore", invalid="ignore"):   # 1e300-sized stand-ins
                descent = descent or float(np.dot(flat, g)) > 0.0
            h.update(_quantise(flat).tobytes())
    except _RULE_ERRORS as exc:
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return Probe("", f"cannot run on the probe: {last}")
    digest = h.hexdigest()
    if not finite:
        return Probe(digest, "non-finite update (NaN, inf or beyond float32) on the probe")
    if not nonzero:
        return Probe(digest, "the update is zero everywhere on the probe")
    if not descent:
        return Probe(digest, "never a descent direction on the probe (<u, g> <= 0 at every step)")
    return Probe(digest, None)


def probe(rule: Rule | str) -> Probe:
    """Fingerprint and validity of ``rule`` (see the module docstring); never raises for
    a bad rule (unparsable text gives ``Probe("", "cannot parse: ...")``)."""
    try:
        r = as_rule(rule)
    except ParseError as exc:
        return Probe("", f"cannot parse: {exc}")
    return _probe_cached(r)


def fingerprint(rule: Rule | str) -> str:
    """The hex fingerprint of ``rule`` (empty string if it cannot be run)."""
    return probe(rule).digest
