"""Random search: rules drawn uniformly from the valid token strings of a space.

The baseline every learning strategy must beat.  Sampling goes token by token through
the DSL's one mask function (:func:`searchlab.dsl.valid_next_tokens`); each valid next
token is weighted by the number of valid completions it leaves, so every complete token
string of the space is equally likely (plain per-token uniform choices would not be:
with the ``reuse_output`` constraint, a group starting with the previous output would be
drawn 26 times less often than it should in the ``scratch`` space).

:class:`TokenSampler` is shared with evolution (mutations repair a suffix with it).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from searchlab.dsl import Rule, Space, valid_next_tokens
from searchlab.dsl.tokens import GROUP
from searchlab.result import Result
from searchlab.strategy import STRATEGIES, Strategy


class TokenSampler:
    """Uniform sampling of valid token strings (and of suffixes, for repairs).

    ``completions(prefix)`` counts the valid completions of a prefix by recursion over the
    mask function.  It is memoised on ``(position, operands of the current group)``:
    the masks of :mod:`searchlab.dsl.tokens` depend only on the group index, the slot and
    the group's own operand tokens (constraints are per group), which the test suite
    checks by comparing ``completions([])`` with the independent ``count_rules``.
    """

    def __init__(self, space: Space) -> None:
        self.space = space
        self._memo: dict[tuple[int, tuple[str, ...]], int] = {}
        self._choices: dict[tuple[int, tuple[str, ...], str | None],
                            tuple[list[str], np.ndarray]] = {}

    def completions(self, prefix: Sequence[str]) -> int:
        """Number of valid complete token strings starting with ``prefix``."""
        pos = len(prefix)
        if pos >= self.space.length:
            return 1
        start = (pos // GROUP) * GROUP
        memo_key = (pos, tuple(prefix[start: min(pos, start + 2)]))
        hit = self._memo.get(memo_key)
        if hit is not None:
            return hit
        mask = valid_next_tokens(self.space, prefix)
        prefix = list(prefix)
        total = 0
        for t in np.flatnonzero(mask):
            total += self.completions(prefix + [self.space.vocab[t]])
        self._memo[memo_key] = total
        return total

    def choose(self, prefix: Sequence[str], rng: np.random.Generator,
               exclude: str | None = None) -> str | None:
        """Draw the next token so that complete strings stay uniform; ``exclude`` removes
        one token from the choices (None if nothing is left)."""
        # the candidates and their weights depend on what completions() depends on (the
        # position and the group's operands so far): computed once per such key
        pos = len(prefix)
        start = (pos // GROUP) * GROUP
        key = (pos, tuple(prefix[start: min(pos, start + 2)]), exclude)
        hit = self._choices.get(key)
        if hit is None:
            mask = valid_next_tokens(self.space, prefix)
            cands = [self.space.vocab[i] for i in np.flatnonzero(mask)]
            if exclude is not None:
                cands = [c for c in cands if c != exclude]
            prefix = list(prefix)
            w = np.array([float(self.completions(prefix + [c])) for c in cands])
            cdf = (w / w.sum()).cumsum() if cands else w
            hit = self._choices[key] = (cands, cdf / cdf[-1] if cands else cdf)
        cands, cdf = hit
        if not cands:
            return None
        # exactly what ``rng.choice(len(cands), p=p)`` draws (numpy's Generator.choice:
        # normalised cumsum, one ``random()``, searchsorted right; tests/test_strategies.py
        # checks the two agree), without its per-call checks of p (7x faster)
        return cands[int(cdf.searchsorted(rng.random(), side="right"))]

    def complete(self, prefix: Sequence[str], rng: np.random.Generator) -> list[str]:
        """``prefix`` completed uniformly at random into a full valid token string."""
        toks = list(prefix)
        while len(toks) < self.space.length:
            t = self.choose(toks, rng)
            assert t is not None, f"no valid token after {toks}"
            toks.append(t)
        return toks

    def sample(self, rng: np.random.Generator) -> list[str]:
        """A uniformly random valid token string of the space."""
        return self.complete([], rng)


@STRATEGIES.register("random")
class RandomSearch(Strategy):
    """Uniform random search over the valid token strings of the space.

    Options: none.  Deterministic for a seed (``np.random.default_rng(seed)``); it does
    not avoid repeats (the runner answers them for free).
    """

    def __init__(self, space: Space, seed: int, **options: Any) -> None:
        if options:
            raise TypeError(f"random search takes no options, got {sorted(options)}")
        super().__init__(space, seed)
        self.rng = np.random.default_rng(seed)
        self.sampler = TokenSampler(space)

    def ask(self, n: int) -> list[Rule]:
        return [Rule.from_tokens(self.sampler.sample(self.rng)) for _ in range(n)]

    def tell(self, results: Sequence[Result]) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
