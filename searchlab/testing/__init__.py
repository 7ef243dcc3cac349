"""Tools for testing searchlab and components written for it.

* :mod:`searchlab.testing.toy` -- :class:`~searchlab.testing.toy.ToyEvaluator`, a
  microsecond objective with the evaluator contract (``task=toy`` in configs);
* :mod:`searchlab.testing.faults` -- evaluators and functions that crash, hang or fail
  on purpose (executor and resume tests);
* :mod:`searchlab.testing.conformance` -- the checks every strategy and every task must
  pass, as plain functions an outside author calls from their own tests
  (:func:`~searchlab.testing.conformance.check_strategy`,
  :func:`~searchlab.testing.conformance.check_task` and the single checks they run).
"""
