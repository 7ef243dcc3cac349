"""The functions of a finite search space: every token string, probed once.

A token string of a :class:`~searchlab.dsl.tokens.Space` is mapped to the project's
functional fingerprint (:func:`searchlab.fingerprint.probe`), so the rules of a space
that compute the same function share one entry, and probe-invalid strings (NaN/inf,
all-zero or never-descent updates) are marked with their problem.  This is what the
tabular benchmark tabulates (:mod:`searchlab.tabular`): one row per distinct valid
fingerprint.

The enumeration walks the space with the one mask function
(:func:`searchlab.dsl.tokens.valid_next_tokens`), in vocabulary order, so it is
deterministic; :func:`enumerate_strings` is also what the tests compare a table's
string list against.  Probing costs ~10-20 ms per string (40 steps of the compiled
rule), so :func:`probe_space` journals every probe to a JSON-lines file and continues
from it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..dsl import Rule
from ..dsl.tokens import Space, valid_next_tokens

__all__ = ["Functions", "enumerate_strings", "probe_space"]


def enumerate_strings(space: Space) -> Iterator[tuple[str, ...]]:
    """Every complete token string of ``space``, depth first in vocabulary order."""
    vocab = space.vocab

    def walk(prefix: list[str]) -> Iterator[tuple[str, ...]]:
        if len(prefix) == space.length:
            yield tuple(prefix)
            return
        for i in valid_next_tokens(space, prefix).nonzero()[0]:
            prefix.append(vocab[i])
            yield from walk(prefix)
            prefix.pop()

    yield from walk([])


@dataclass(frozen=True)
class Functions:
    """The probed token strings of a space.

    ``strings[i]`` is a token string (space-separated tokens); ``digests[i]`` its
    fingerprint ("" if it could not be run); ``problems[i]`` why it is probe-invalid,
    or None.  :attr:`rows` groups the valid strings by fingerprint."""

    space: Space
    strings: tuple[str, ...]
    digests: tuple[str, ...]
    problems: tuple[str | None, ...]

    @property
    def rows(self) -> dict[str, list[int]]:
        """Distinct valid fingerprint -> indices of its strings, in first-seen order."""
        out: dict[str, list[int]] = {}
        for i, (d, p) in enumerate(zip(self.digests, self.problems)):
            if p is None:
                out.setdefault(d, []).append(i)
        return out

    def representative(self, indices: list[int]) -> str:
        """The rule text that names a row: the shortest text of its strings (then the
        first in enumeration order)."""
        texts = [Rule.from_tokens(self.strings[i].split()).text for i in indices]
        return min(texts, key=len)


def probe_space(space: Space, journal: str | os.PathLike[str] | None = None, *,
                progress: Callable[[int, int], None] | None = None) -> Functions:
    """Probe every token string of ``space``.

    With ``journal`` (a JSON-lines file), every probe is appended as it is made and
    strings already in the file are not probed again, so a killed enumeration
    continues where it stopped.  ``progress(done, total)`` is called every 500 strings.
    """
    from ..fingerprint import probe

    strings = [" ".join(t) for t in enumerate_strings(space)]
    known: dict[str, tuple[str, str | None]] = {}
    path = Path(journal) if journal is not None else None
    if path is not None and path.is_file():
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:      # a torn last line after a kill
                    continue
                known[rec["s"]] = (rec["d"], rec["p"])
    out = None if path is None else open(path, "a", encoding="utf-8")
    try:
        for n, s in enumerate(strings):
            if s not in known:
                pr = probe(Rule.from_tokens(s.split()))
                known[s] = (pr.digest, pr.problem)
                if out is not None:
                    out.write(json.dumps({"s": s, "d": pr.digest, "p": pr.problem}) + "\n")
            if progress is not None and (n + 1) % 500 == 0:
                if out is not None:
                    out.flush()
                progress(n + 1, len(strings))
    finally:
        if out is not None:
            out.close()
    return Functions(space, tuple(strings), tuple(known[s][0] for s in strings),
                     tuple(known[s][1] for s in strings))
