"""Statistics and figures for comparing optimizer-search strategies.

``searchlab compare`` runs every strategy over several seeds; this package turns the runs
into the evidence issue 10 (item 4) asks for, so a reader can tell whether one strategy
finds better update rules with fewer samples than another, and how sure that is:

* :mod:`searchlab.report.statistics` -- pure functions over numpy arrays (no I/O, no
  plotting): the interquartile mean (IQM) of best-so-far reward with stratified-bootstrap
  confidence intervals at chosen budgets and along the whole curve, the matrix of pairwise
  probabilities of improvement, performance profiles (all three via ``rliable``),
  COCO-style fixed-target statistics (evaluations to reach a reward level, success rate,
  average running time, ECDF), the same curves against compute (CPU-seconds), and the
  plain warning that fewer than 5 seeds make the intervals meaningless;
* :mod:`searchlab.report.figures` -- PNG figures of those results (matplotlib, Agg).

Importing the package imports neither submodule, so it costs nothing; ``rliable`` (which
pulls in ``arch`` and ``pandas``) is imported when a statistic is first computed, and
matplotlib only by :mod:`searchlab.report.figures`.
"""
