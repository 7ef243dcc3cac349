"""The table file of a tabular benchmark, and the evaluator that answers from it.

A table holds, for every distinct probe-valid function of a finite space
(:mod:`searchlab.tabular.functions`), the real rewards of the function on a task at a
fidelity, one record per evaluation seed: validation reward, held-out test accuracy,
best lr, status, CPU-seconds and wall seconds.  It also maps every token string of the
space to its row (or to the probe problem that makes it invalid), so a lookup needs no
probe: a dictionary access.

File format (``<name>.json.gz``, gzip-compressed JSON, no pickle; :data:`TABLE_FORMAT`)::

    {"format": 1, "name": ..., "space": {Space fields}, "task": "mnist1d",
     "task_id": ..., "protocol": "compare", "seeds": [0, 1, 2], "versions": {...},
     "complete": true, "counts": {...},
     "problems": [probe problem texts],
     "strings": [token strings, space-separated, in enumeration order],
     "string_row": [row index, or -1 - problem index, per string],
     "rows":   {"fingerprint": [...], "rule": [...], "records": [[record, ...], ...]},
     "extras": {same: reference optimizers outside the space, answerable by fingerprint}}

with ``record = [seed, reward, test, best_lr, status, cpu_seconds, seconds]``.  Beside it,
``<name>.json.gz.sha256`` holds the file's SHA-256; :meth:`Table.load` checks it and
refuses a file that does not match.

Which record answers a query (:meth:`Row.record`): a row with records for seeds
``s_0 < s_1 < ...`` (n of them) answers evaluation seed ``e`` with record ``e mod n``,
so ``task=table eval_seed=1`` returns what ``task=mnist1d eval_seed=1`` returned when
the table was built (for ``e < n``), and different seeds see the recorded noise, as in
NAS-Bench-201.  Re-scoring seeds (:func:`searchlab.rescore.fresh_seeds`, for search seed
``e``: ``RESCORE_OFFSET + 1000 e + j``) cycle through the records *other than* ``e mod n``,
so a re-scored incumbent is never re-scored on the seed its search saw.  With 2 records per
row (3 for the best 5 %) that is 1 (or 2) fresh seeds, which is why the table's configs
re-score on ``rescore.seeds=1``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import kernels
from ..dsl import ParseError, Rule, as_rule
from ..dsl.tokens import Space
from ..result import FLOOR_REWARD, Result

__all__ = ["DEFAULT_TABLE", "OutsideTableError", "Record", "Row", "TABLE_DIR", "TABLE_FORMAT",
           "Table", "TableError", "TableEvaluator", "table_path"]

TABLE_FORMAT = 1
#: the table shipped with searchlab (searchlab/tabular/data/<name>.json.gz)
DEFAULT_TABLE = "mnist1d-tabular"
TABLE_DIR = Path(__file__).resolve().parent / "data"
#: the shipped table, built before tables recorded their CPU vendor (Table.cpu_vendor)
_SHIPPED_FILE = TABLE_DIR / f"{DEFAULT_TABLE}.json.gz"
REBUILD_HINT = ("rebuild it with `searchlab table build` then `searchlab table export` "
                "(README, \"The tabular benchmark\"), or restore the file from the repository")


class TableError(ValueError):
    """A table file is missing, corrupt or does not match its checksum."""


class OutsideTableError(ValueError):
    """A rule that is not a function of the table's space (a query the table cannot
    answer: raised, not scored, like missing data)."""


@dataclass(frozen=True)
class Record:
    """One evaluation of a row's function with one evaluation seed."""

    seed: int
    reward: float
    test: float | None
    best_lr: float | None
    status: str
    cpu_seconds: float
    seconds: float

    def to_list(self) -> list[Any]:
        return [self.seed, _num(self.reward), _num(self.test), _num(self.best_lr), self.status,
                round(self.cpu_seconds, 4), round(self.seconds, 4)]

    @classmethod
    def from_list(cls, x: Sequence[Any]) -> "Record":
        seed, reward, test, lr, status, cpu, sec = x
        return cls(int(seed), _float(reward, FLOOR_REWARD), _opt(test), _opt(lr), str(status),
                   float(cpu), float(sec))


def _num(x: float | None) -> float | str | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else str(x)


def _float(x: Any, default: float) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default


def _opt(x: Any) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


@dataclass(frozen=True)
class Row:
    """One function of the table: its fingerprint, the rule text that names it (the
    shortest text of its token strings) and its records, sorted by seed."""

    fingerprint: str
    rule: str
    records: tuple[Record, ...]

    def record(self, seed: int) -> Record:
        """The record that answers evaluation seed ``seed`` (see the module docstring)."""
        from ..rescore import RESCORE_OFFSET

        n = len(self.records)
        if n == 0:
            raise TableError(f"the table has no record of {self.rule!r} yet (a partial "
                             "table); " + REBUILD_HINT)
        seed = int(seed)
        if seed < RESCORE_OFFSET or n == 1:
            return self.records[seed % n]
        search_seed, j = divmod(seed - RESCORE_OFFSET, 1000)
        return self.records[(search_seed % n + 1 + j % (n - 1)) % n]

    @property
    def mean_reward(self) -> float:
        xs = [r.reward for r in self.records]
        return sum(xs) / len(xs) if xs else math.nan

    @property
    def mean_test(self) -> float:
        xs = [r.test for r in self.records if r.test is not None]
        return sum(xs) / len(xs) if xs else math.nan


def _rows_to_json(rows: Sequence[Row]) -> dict[str, list[Any]]:
    return {"fingerprint": [r.fingerprint for r in rows], "rule": [r.rule for r in rows],
            "records": [[rec.to_list() for rec in r.records] for r in rows]}


def _rows_from_json(d: Mapping[str, Any]) -> list[Row]:
    return [Row(fp, rule, tuple(sorted((Record.from_list(x) for x in recs),
                                       key=lambda r: r.seed)))
            for fp, rule, recs in zip(d["fingerprint"], d["rule"], d["records"])]


def table_path(table: str | os.PathLike[str]) -> Path:
    """The file of ``table``: a path to a ``.json.gz`` file, or the name of a table in
    :data:`TABLE_DIR` (``mnist1d-tabular``)."""
    p = Path(table).expanduser()
    if p.suffix == ".gz" or p.is_file() or os.sep in str(table):
        return p
    return TABLE_DIR / f"{table}.json.gz"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Table:
    """A loaded table (see the module docstring).  Build one with
    :func:`searchlab.tabular.build.export_table`, read one with :meth:`load`."""

    meta: dict[str, Any]
    space: Space
    strings: list[str]
    string_row: list[int]
    problems: list[str]
    rows: list[Row]
    extras: list[Row] = field(default_factory=list)
    path: Path | None = None

    @cached_property
    def by_string(self) -> dict[str, int]:
        return {s: i for s, i in zip(self.strings, self.string_row)}

    @cached_property
    def by_fingerprint(self) -> dict[str, Row]:
        out = {r.fingerprint: r for r in self.extras}
        out.update((r.fingerprint, r) for r in self.rows)
        return out

    @property
    def name(self) -> str:
        return str(self.meta["name"])

    @property
    def protocol(self) -> str:
        return str(self.meta["protocol"])

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete", False))

    @property
    def cpu_vendor(self) -> str:
        """The CPU vendor of the machines that computed the table's rewards, as its
        ``versions`` record it (``""``: not known). The shipped mnist1d table was built
        before the field existed, on AMD EPYC machines (results/table/README.md). Fresh
        evaluations on another vendor's CPU round differently (:mod:`searchlab.kernels`)."""
        versions = self.meta.get("versions", {})
        if "cpu_vendor" in versions:
            return str(versions["cpu_vendor"])
        shipped = self.path is not None and self.path.resolve() == _SHIPPED_FILE.resolve()
        return kernels.REFERENCE_VENDOR if shipped else ""

    # --- lookups ---------------------------------------------------------------------
    def lookup(self, rule: Rule) -> Row | str:
        """The row of ``rule``, or the probe problem (a string) of an invalid rule of the
        space.  Token strings of the space are a dictionary access; any other rule is
        probed and answered if its function is a row (or an extra row); otherwise
        :class:`OutsideTableError`."""
        try:
            key = " ".join(rule.to_tokens())
        except ValueError:
            key = None
        code = self.by_string.get(key) if key is not None else None
        if code is not None:
            return self.rows[code] if code >= 0 else self.problems[-1 - code]
        from ..fingerprint import probe

        row = self.by_fingerprint.get(probe(rule).digest)
        if row is not None:
            return row
        raise OutsideTableError(
            f"rule {rule.text!r} is not a function of table {self.name!r} (space "
            f"{self.space.name!r}: depth {self.space.depth}, operands "
            f"{' '.join(self.space.operands)}; unary {' '.join(self.space.unary)}; binary "
            f"{' '.join(self.space.binary)}); search it with space={self.space.name}")

    # --- files -----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        sp = self.space
        return {**self.meta, "format": TABLE_FORMAT,
                "space": {"name": sp.name, "operands": list(sp.operands),
                          "unary": list(sp.unary), "binary": list(sp.binary),
                          "depth": sp.depth, "distinct_operands": sp.distinct_operands,
                          "no_final_add": sp.no_final_add, "reuse_output": sp.reuse_output},
                "problems": self.problems, "strings": self.strings,
                "string_row": self.string_row, "rows": _rows_to_json(self.rows),
                "extras": _rows_to_json(self.extras)}

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the table and its ``.sha256`` file (atomically: a temporary file, then a
        rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        data = json.dumps(self.to_json(), separators=(",", ":")).encode()
        with open(tmp, "wb") as raw:
            # mtime=0: the same table gives the same bytes (and checksum)
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as f:
                f.write(data)
        os.replace(tmp, path)
        Path(str(path) + ".sha256").write_text(f"{sha256_of(path)}  {path.name}\n")
        return path

    @classmethod
    def load(cls, table: str | os.PathLike[str] = DEFAULT_TABLE) -> "Table":
        """Read a table by name or path, checking its SHA-256 first; a missing, corrupt
        or mismatching file raises :class:`TableError` naming the file and how to
        rebuild it."""
        path = table_path(table)
        if not path.is_file():
            raise TableError(f"table file {path} not found; " + REBUILD_HINT)
        sums = Path(str(path) + ".sha256")
        if not sums.is_file():
            raise TableError(f"checksum file {sums} not found (it must sit beside {path.name}); "
                             + REBUILD_HINT)
        want = sums.read_text().split()[0] if sums.read_text().split() else ""
        got = sha256_of(path)
        if got != want:
            raise TableError(f"table file {path} is corrupt: its SHA-256 is {got[:16]}..., "
                             f"{sums.name} says {want[:16]}...; " + REBUILD_HINT)
        try:
            with gzip.open(path, "rb") as f:
                d = json.loads(f.read())
            if d.get("format") != TABLE_FORMAT:
                raise TableError(f"table file {path} has format {d.get('format')!r}, this "
                                 f"searchlab reads format {TABLE_FORMAT}; " + REBUILD_HINT)
            sp = Space(**{k: (tuple(v) if isinstance(v, list) else v)
                          for k, v in d["space"].items()})
            meta = {k: v for k, v in d.items() if k not in
                    ("space", "problems", "strings", "string_row", "rows", "extras", "format")}
            return cls(meta, sp, list(d["strings"]), [int(x) for x in d["string_row"]],
                       list(d["problems"]), _rows_from_json(d["rows"]),
                       _rows_from_json(d["extras"]), path)
        except TableError:
            raise
        except (OSError, EOFError, ValueError, KeyError, TypeError) as e:
            raise TableError(f"table file {path} cannot be read ({type(e).__name__}: {e}); "
                             + REBUILD_HINT) from None


_LOADED: dict[str, Table] = {}


def _loaded(table: str) -> Table:
    """One :class:`Table` per file and process (worker processes load it once).  Looked
    up by the name first: resolving the path is file-system calls on every lookup."""
    hit = _LOADED.get(table)
    if hit is None:
        key = str(table_path(table).resolve())
        if key not in _LOADED:
            _LOADED[key] = Table.load(table)
        hit = _LOADED[table] = _LOADED[key]
    return hit


@dataclass(frozen=True)
class TableEvaluator:
    """Answers rules from a table in microseconds (``task=table``): the evaluator
    contract of :class:`searchlab.interfaces.Evaluator`.

    ``evaluate(rule, seed)`` returns the record of the rule's row for ``seed`` (see the
    module docstring) as a :class:`~searchlab.result.Result`: reward, status, best lr,
    and, with ``test=True``, the held-out test accuracy (``extra["test_reward"]``).
    ``Result.seconds`` and ``extra["cpu_seconds"]`` are the *recorded* costs of the real
    evaluation (``extra["simulated"] = True``), so a comparison's compute axis is the
    simulated cost of the search on the real task.  A probe-invalid string of the space
    is ``invalid`` (never trained, as in the real evaluator), unparsable text is
    ``invalid``; a rule that is not a function of the table's space raises
    :class:`OutsideTableError`, and a missing or corrupt file :class:`TableError`.

    Args:
        table: a table name in :data:`TABLE_DIR` or a path to a ``.json.gz`` file.
    """

    table: str = DEFAULT_TABLE

    @property
    def data(self) -> Table:
        return _loaded(self.table)

    def load(self) -> None:
        """Read (and checksum) the table now."""
        self.data  # noqa: B018

    @property
    def task_name(self) -> str:
        return "table"

    @property
    def protocol(self) -> str:
        return f"table:{self.data.name}"

    def evaluate(self, rule: Rule | str | Sequence[str], seed: int = 0, *,
                 test: bool = False) -> Result:
        t0 = time.perf_counter()
        tab = self.data
        base: dict[str, Any] = dict(seed=int(seed), task=f"table:{tab.name}",
                                    fidelity=tab.protocol)
        try:
            r = Rule.from_tokens(rule) if isinstance(rule, (list, tuple)) else as_rule(rule)
        except (ParseError, ValueError) as exc:
            text = " ".join(map(str, rule)) if isinstance(rule, (list, tuple)) else str(rule)
            return Result(rule=text, key="", reward=FLOOR_REWARD, status="invalid",
                          message=f"cannot parse: {exc}", **base)
        try:
            tokens = r.to_tokens()
        except ValueError:
            tokens = ()
        base.update(rule=r.text, key=r.key, tokens=tokens)
        hit = tab.lookup(r)
        if isinstance(hit, str):
            return Result(reward=FLOOR_REWARD, status="invalid", message=hit, **base)
        rec = hit.record(int(seed))
        extra: dict[str, Any] = {"cpu_seconds": rec.cpu_seconds, "simulated": True,
                                 "table_seed": rec.seed,
                                 "lookup_seconds": time.perf_counter() - t0}
        if hit.rule != r.text:
            extra["evaluated_as"] = hit.rule
        if test and rec.test is not None:
            extra["test_reward"] = rec.test
        reward = rec.reward if rec.status == "ok" else FLOOR_REWARD
        return Result(reward=reward, status=rec.status,  # type: ignore[arg-type]
                      best_lr=rec.best_lr, seconds=rec.seconds, fingerprint=hit.fingerprint,
                      extra=extra, **base)
