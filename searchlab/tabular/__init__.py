"""The tabular benchmark: every function of a finite space, evaluated once, looked up in
microseconds.

* :mod:`.functions` -- the token strings of a space, probed and grouped by fingerprint;
* :mod:`.build` -- evaluating every function on the real task, journaled and resumable
  (``searchlab table build``), and writing the table file (``searchlab table export``);
* :mod:`.table` -- the table file (checksummed, gzip JSON) and :class:`TableEvaluator`,
  the evaluator of ``task=table``.

README, "The tabular benchmark", says how to use it; BENCHMARKS.md holds what it shows.
"""

from .table import (DEFAULT_TABLE, OutsideTableError, Record, Row, Table, TableError,
                    TableEvaluator)

__all__ = ["DEFAULT_TABLE", "OutsideTableError", "Record", "Row", "Table", "TableError",
           "TableEvaluator"]
