"""``Result``: what one evaluation of a rule returns, and its one JSON codec.

Every file that stores results (the reward cache, the evaluation journal, a run folder's
``results.json``) writes them with :func:`result_to_json` and reads them with
:func:`result_from_json`.  JSON has no literal for NaN and infinities; the one convention
here is the strings ``"nan"``, ``"inf"`` and ``"-inf"`` (strict JSON, and a reader sees
what the value was).  :func:`result_from_json` also reads the two conventions of files
written before it existed: bare ``NaN``/``Infinity`` literals (Python's ``json`` default,
the old journal) and ``null`` for a NaN reward or sweep value (old ``results.json``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Mapping

Status = Literal["ok", "diverged", "invalid", "timeout", "error"]
STATUSES: tuple[str, ...] = ("ok", "diverged", "invalid", "timeout", "error")

#: Reward of every sample that did not finish normally (diverged, invalid, timeout,
#: error).  The same floor for all strategies keeps comparisons fair; 0.0 is below any
#: task's reward (accuracies and normalised scores are in [0, 1]).
FLOOR_REWARD: float = 0.0

__all__ = ["FLOOR_REWARD", "Result", "STATUSES", "Status", "dumps_result", "from_jsonable",
           "loads_result", "result_from_json", "result_to_json", "to_jsonable"]


@dataclass(frozen=True)
class Result:
    """One evaluated rule.  Immutable and picklable (crosses process boundaries)."""

    rule: str                      # rule text as evaluated
    key: str                       # canonical key
    reward: float                  # search signal (validation metric), FLOOR_REWARD if not ok
    status: Status = "ok"
    best_lr: float | None = None
    seconds: float = 0.0
    seed: int = 0
    task: str = ""
    fidelity: str = ""
    sweep: tuple[tuple[float, float], ...] = ()   # (lr, validation metric after the sweep run)
    curve: tuple[float, ...] = ()                 # validation metric per epoch of the final run
    val_loss: float | None = None
    val_acc: float | None = None
    tokens: tuple[str, ...] = ()
    fingerprint: str = ""
    cached: bool = False           # no training happened: a reward-cache hit or a repeat
    repeat: bool = False           # a rule this search had already evaluated, answered from
                                   # its memory (spends no budget; a cache hit is not a repeat)
    message: str = ""              # why a non-ok status happened (traceback for errors)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Result":
        data = dict(data)
        data["sweep"] = tuple(tuple(x) for x in data.get("sweep", ()))
        data["curve"] = tuple(data.get("curve", ()))
        data["tokens"] = tuple(data.get("tokens", ()))
        return cls(**data)

    def with_(self, **changes: Any) -> "Result":
        return replace(self, **changes)


# --- the JSON codec -----------------------------------------------------------------------
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
#: float fields of a Result that old files may hold as null for NaN
_FLOAT_FIELDS = ("reward",)
#: JSON values :func:`from_jsonable` returns unchanged (skipped: a report reads ~10^5)
_PLAIN = frozenset((int, float, bool, type(None)))
_SCALARS = frozenset((str, int, bool, type(None)))


def to_jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as ``"nan"``/``"inf"``/``"-inf"``, tuples as lists,
    numpy/torch scalars as Python numbers and anything else unknown as its ``str``."""
    t = type(value)     # exact JSON types first: ABC checks (Mapping) cost ~1 us each,
    if t in _SCALARS:   # and a result has ~30 values, written twice per sample
        return value
    if t is float and math.isfinite(value):
        return value
    if t is dict:
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if t is list or t is tuple:
        return [to_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return [to_jsonable(v) for v in sorted(value, key=str)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    item = getattr(value, "item", None)   # numpy / torch scalars (duck-typed on purpose)
    if callable(item):
        try:
            return to_jsonable(item())
        except (TypeError, ValueError):
            pass
    return str(value)


def from_jsonable(value: Any) -> Any:
    """Inverse of :func:`to_jsonable` for numbers: ``"nan"``/``"inf"``/``"-inf"`` become
    floats again (recursively)."""
    if isinstance(value, str):
        return _NONFINITE.get(value, value)
    if isinstance(value, dict):
        return {k: v if type(v) in _PLAIN else from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [v if type(v) in _PLAIN else from_jsonable(v) for v in value]
    return value


def result_to_json(result: Result) -> dict[str, Any]:
    """A JSON-safe dict of every field of ``result`` (see the module docstring):
    :func:`to_jsonable` reads a dataclass's fields directly (``dataclasses.asdict``'s deep
    copy of every nested value cost ~0.5 ms a result, twice per sample)."""
    return to_jsonable(result)


#: fields read as written: text (``"nan"`` may be a rule's text) and the token tuple
_TEXT_FIELDS = frozenset(("rule", "key", "status", "task", "fidelity", "fingerprint",
                          "message", "tokens"))


def result_from_json(data: Mapping[str, Any]) -> Result:
    """The :class:`Result` of a dict written by :func:`result_to_json` (or by an older
    searchlab); unknown keys are ignored, so files from a newer version load too."""
    known = Result.__dataclass_fields__
    # text fields are never converted; numbers are
    d = {k: v if k in _TEXT_FIELDS or type(v) in _PLAIN else from_jsonable(v)
         for k, v in data.items() if k in known}
    for k in _FLOAT_FIELDS:
        if d.get(k) is None:
            d[k] = math.nan
    d["sweep"] = tuple((float(lr), math.nan if v is None else v) for lr, v in d.get("sweep", ()))
    d["curve"] = tuple(math.nan if v is None else v for v in d.get("curve", ()))
    d["tokens"] = tuple(d.get("tokens", ()))
    return Result(**d)


def dumps_result(result: Result) -> str:
    """One line of strict JSON (the journal's and the cache's format)."""
    return json.dumps(result_to_json(result), allow_nan=False)


def loads_result(text: str) -> Result:
    """The result of a line written by :func:`dumps_result` (or an older searchlab)."""
    return result_from_json(json.loads(text))
