"""PyTorch's device-generic optimizer tests, run against searchlab's optimizers.

    .venv/bin/python bench/torch_optim_suite.py PATH/TO/test_optim.py [-k TEXT] [-v]
        [--run-inapplicable] [--threads 1]

``PATH/TO/test_optim.py`` is a local copy of ``test/test_optim.py`` from the pytorch
repository at the tag of the installed torch (``python -c "import torch;
print(torch.__version__)"``: 2.13.0 -> tag ``v2.13.0``), e.g. from a checkout
(``git clone --depth 1 --branch v2.13.0 <pytorch repository>``) or the file's raw view
on the repository's web page.  The torch wheel ships the machinery the file uses
(``torch.testing._internal.common_optimizers``) but not the file; that machinery imports
``expecttest`` (``pip install expecttest``).  Nothing is fetched at run time.

What runs: the file's ``TestOptimRenewed`` class, which is parametrized at import time
over ``common_optimizers.optim_db`` (one ``OptimizerInfo`` per optimizer).  This script
replaces the contents of that list with the four entries below *before* importing the
file, so the class is instantiated for searchlab's optimizers only, on CPU; tests of the
class that take no optimizer (they check torch's own optimizers) are left out.  The
file's imports of its sibling modules (``optim.test_optim`` and others, other test
classes from pytorch's ``test/optim/``) get empty stand-ins.

Tests that cannot apply are declared the way torch's own ``optim_db`` does it, as skips
with a reason on the ``OptimizerInfo`` (``INAPPLICABLE`` below; ``--run-inapplicable``
runs them anyway); CUDA-only tests skip themselves on a machine without CUDA.  Prints
the counts per optimizer, every skip with its reason and every failure's last line.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import types
import unittest
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import searchlab  # noqa: F401  (first: it pins torch's kernels and numpy's OpenBLAS, searchlab.kernels)
import torch
from torch.optim.lr_scheduler import ExponentialLR, ReduceLROnPlateau, StepLR

from searchlab.optim import (
    AddSign,
    LinearCosineLR,
    PowerSign,
    RuleOptimizer,
    cosine_decay,
    linear_decay,
)

#: the deterministic rule (PowerSign's, paper section 5) and a stochastic one (it reads
#: the weights too): the two kinds of compiled rule
DETERMINISTIC_RULE = "exp(sign(g)*sign(m))*g"
STOCHASTIC_RULE = "drop(m, 0.3)*exp(1e-3*w)"


# Test names carry ``OptimizerInfo.name``, the class's __name__, so the two rules need two
# class names: thin subclasses that fix the rule.
class RuleOptimizerDeterministic(RuleOptimizer):
    def __init__(self, params: Any, lr: Any = 1e-3, **kwargs: Any) -> None:
        super().__init__(params, DETERMINISTIC_RULE, lr=lr, **kwargs)


class RuleOptimizerStochastic(RuleOptimizer):
    def __init__(self, params: Any, lr: Any = 1e-3, **kwargs: Any) -> None:
        super().__init__(params, STOCHASTIC_RULE, lr=lr, **kwargs)


#: (test method of TestOptimRenewed, optimizer names or None for all, reason)
INAPPLICABLE: list[tuple[str, tuple[str, ...] | None, str]] = [
    ("test_foreach_matches_forloop", None,
     ("its TensorTracker calls .detach() on every per-parameter state value, and "
      "searchlab's state keeps 'step' as a Python int (its state_dict format); the "
      "property it checks (foreach=False equals foreach=True, params and state, with "
      "frozen layers and missing grads) is tested in tests/test_optim_torch_compat.py")),
    ("test_param_group_with_lrscheduler_goes_right_direction", ("PowerSign",),
     ("it runs a param group at the class's default lr, and PowerSign's is TensorFlow's "
      "0.1 (kept for parity with tf.contrib.opt.PowerSignOptimizer), which diverges on "
      "this quadratic (see SIGN_INPUTS); not a property of the implementation")),
    ("test_complex_2d", ("RuleOptimizerStochastic",),
     ("a stochastic rule draws its random numbers in memory order, and this test wants a "
      "complex tensor to equal its real and imaginary parts as two separate tensors "
      "(planar order) while test_complex wants it to equal torch.view_as_real (interleaved "
      "order); only a deterministic rule can satisfy both, and searchlab follows "
      "test_complex (torch's convention)")),
]


def _inputs(specs: list[tuple[dict[str, Any], str]]) -> Callable[..., list[Any]]:
    from torch.testing._internal.common_optimizers import OptimizerInput

    # fresh kwargs every call: the tests mutate them (and a Tensor lr is filled in place)
    def make(device: Any, dtype: Any = None) -> list[Any]:
        return [OptimizerInput(params=None, kwargs={k: (v.clone() if isinstance(v, torch.Tensor)
                                                        else v) for k, v in kw.items()},
                               desc=desc) for kw, desc in specs]
    return make


RULE_INPUTS: list[tuple[dict[str, Any], str]] = [
    ({}, "default"),
    ({"lr": 0.01}, "non-default lr"),
    ({"lr": torch.tensor(0.001)}, "Tensor lr"),
    ({"maximize": True}, "maximize"),
    ({"lr": torch.tensor(0.01), "maximize": True}, "maximize, Tensor lr"),
    ({"betas": (0.8, 0.99, 0.99)}, "non-default betas"),
]
# PowerSign's and AddSign's default lr, 0.1 (TensorFlow's), is too large for the tests'
# quadratic loss |Wx + b|^2 (curvature 2(|x|^2 + 1), about 12): steps of up to e*0.1*|g|
# diverge, as SGD's would at lr 0.27.  Every sample config therefore sets lr.
SIGN_INPUTS: list[tuple[dict[str, Any], str]] = [
    ({"lr": 0.01}, "lr 0.01"),
    ({"lr": 0.005}, "lr 0.005"),
    ({"lr": torch.tensor(0.01)}, "Tensor lr"),
    ({"lr": 0.01, "maximize": True}, "maximize"),
    ({"lr": torch.tensor(0.005), "maximize": True}, "maximize, Tensor lr"),
]
POWERSIGN_INPUTS = SIGN_INPUTS + [
    ({"lr": 0.01, "base": 2.0, "beta": 0.8}, "base 2, beta 0.8"),
    ({"lr": 0.01, "sign_decay": cosine_decay(10)}, "cosine sign decay"),
]
ADDSIGN_INPUTS = SIGN_INPUTS + [
    ({"lr": 0.01, "alpha": 0.5}, "alpha 0.5"),
    ({"lr": 0.01, "sign_decay": linear_decay(10)}, "linear sign decay"),
]


def _errors(extra: list[tuple[dict[str, Any], type[Exception], str]]) -> Callable[..., list[Any]]:
    from torch.testing._internal.common_optimizers import (
        ErrorOptimizerInput,
        OptimizerInput,
        get_error_inputs_for_all_optims,
    )

    common = [
        ({"lr": -0.1}, ValueError, "lr must be >= 0"),
        ({"differentiable": True}, ValueError, "differentiable=True is not supported"),
        ({"capturable": True}, ValueError, "capturable=True is not supported"),
        ({"foreach": "yes"}, TypeError, "foreach must be None, True or False"),
    ]

    def make(device: Any, dtype: Any) -> list[Any]:
        out = get_error_inputs_for_all_optims(device, dtype)  # torch's checks for every optimizer
        if torch.device(device).type == "cpu":
            param = torch.nn.Parameter(torch.randn(1, 1, device=device, dtype=dtype))
            out += [ErrorOptimizerInput(OptimizerInput(params=[param], kwargs=kw, desc=regex),
                                        error_type=err, error_regex=regex)
                    for kw, err, regex in common + extra]
        return out
    return make


def _scheduler_inputs() -> tuple[list[Callable[[Any], Any]], ...]:
    return (
        [lambda opt: StepLR(opt, gamma=0.9, step_size=10), lambda opt: ReduceLROnPlateau(opt)],
        [lambda opt: ExponentialLR(opt, gamma=0.9)],
        [lambda opt: LinearCosineLR(opt, decay_steps=20)],  # searchlab's own schedule
    )


def searchlab_optim_db() -> list[Any]:
    from torch.testing._internal.common_methods_invocations import DecorateInfo
    from torch.testing._internal.common_optimizers import OptimizerInfo

    def skips(name: str) -> tuple[Any, ...]:
        return tuple(DecorateInfo(unittest.skip(f"cannot apply: {reason}"), "TestOptimRenewed", test)
                     for test, names, reason in INAPPLICABLE if names is None or name in names)

    rule_errors = [({"betas": (0.9, 1.5, 0.9)}, ValueError, "betas must be three numbers")]
    entries = [
        (RuleOptimizerDeterministic, RULE_INPUTS, rule_errors),
        (RuleOptimizerStochastic, RULE_INPUTS + [({"seed": 3}, "seed 3")], rule_errors),
        (PowerSign, POWERSIGN_INPUTS, [({"base": -1.0}, ValueError, "base must be > 0"),
                                       ({"beta": 1.0}, ValueError, "beta must be in"),
                                       ({"sign_decay": 3}, TypeError, "sign_decay must be")]),
        (AddSign, ADDSIGN_INPUTS, [({"beta": -0.5}, ValueError, "beta must be in")]),
    ]
    return [OptimizerInfo(cls, optim_inputs_func=_inputs(inputs),
                          optim_error_inputs_func=_errors(errors),
                          scheduler_inputs=_scheduler_inputs(),
                          supported_impls=("foreach",),  # differentiable: refused, see README
                          skips=skips(cls.__name__))
            for cls, inputs, errors in entries]


NAMES = ("RuleOptimizerDeterministic", "RuleOptimizerStochastic", "PowerSign", "AddSign")


def load_test_class(path: str, run_inapplicable: bool) -> type[unittest.TestCase]:
    """Import the test file with optim_db restricted to searchlab's entries; return the
    CPU instantiation of TestOptimRenewed."""
    from torch.testing._internal import common_optimizers

    db = searchlab_optim_db()
    if run_inapplicable:
        for info in db:
            info.decorators = ()
    common_optimizers.optim_db[:] = db  # the file's decorators read it when it is imported
    stubs = {"optim": types.ModuleType("optim")}
    for sub, cls in (("test_optim", "TestDifferentiableOptimizer"),
                     ("test_lrscheduler", "TestLRScheduler"), ("test_swa_utils", "TestSWAUtils")):
        mod = types.ModuleType(f"optim.{sub}")
        setattr(mod, cls, type(cls, (), {}))  # not a TestCase: contributes no tests
        stubs[f"optim.{sub}"] = mod
    saved = {k: sys.modules.get(k) for k in stubs}
    sys.modules.update(stubs)
    try:
        spec = importlib.util.spec_from_file_location("torch_test_optim", path)
        if spec is None or spec.loader is None:
            raise SystemExit(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return module.TestOptimRenewedCPU


def optimizer_of(method: str) -> str | None:
    for name in NAMES:
        if f"_{name}_" in method:
            return name
    return None


class _Recorder(unittest.TextTestResult):
    """Keeps every test's outcome (and the reason or last error line) by method name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outcomes: dict[str, tuple[str, str]] = {}

    def _put(self, test: unittest.TestCase, outcome: str, note: str = "") -> None:
        self.outcomes[test._testMethodName] = (outcome, note)

    def addSuccess(self, test: unittest.TestCase) -> None:
        super().addSuccess(test)
        self._put(test, "passed")

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addFailure(test, err)
        self._put(test, "failed", f"{err[0].__name__}: {str(err[1]).strip().splitlines()[-1:]}")

    def addError(self, test: unittest.TestCase, err: Any) -> None:
        super().addError(test, err)
        self._put(test, "failed", f"{err[0].__name__}: {str(err[1]).strip().splitlines()[-1:]}")

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        super().addSkip(test, reason)
        self._put(test, "skipped", reason)


def _tests(suite: Iterable[Any]) -> Iterable[unittest.TestCase]:
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from _tests(t)
        else:
            yield t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("test_file", help="local copy of pytorch's test/test_optim.py")
    ap.add_argument("-k", default="", help="run only tests whose name contains this text")
    ap.add_argument("-v", action="store_true", help="one line per test")
    ap.add_argument("--run-inapplicable", action="store_true",
                    help="run the tests declared inapplicable too (to see them fail)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sys.argv = sys.argv[:1]  # torch's test helpers read sys.argv as their own options

    cls = load_test_class(args.test_file, args.run_inapplicable)
    tests = [t for t in _tests(unittest.TestLoader().loadTestsFromTestCase(cls))
             if optimizer_of(t._testMethodName) is not None and args.k in t._testMethodName]
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=2 if args.v else 1,
                                     resultclass=_Recorder)
    result = runner.run(unittest.TestSuite(tests))
    assert isinstance(result, _Recorder)

    per: dict[str, Counter[str]] = defaultdict(Counter)
    for method, (outcome, _) in result.outcomes.items():
        per[optimizer_of(method) or "?"][outcome] += 1
    total: Counter[str] = Counter()
    print(f"\ntorch {torch.__version__}, {args.test_file}: TestOptimRenewed on CPU")
    print(f"{'optimizer':28s} {'passed':>7s} {'failed':>7s} {'skipped':>8s}")
    for name in NAMES:
        c = per[name]
        total.update(c)
        print(f"{name:28s} {c['passed']:7d} {c['failed']:7d} {c['skipped']:8d}")
    skipped = defaultdict(list)
    for method, (outcome, note) in sorted(result.outcomes.items()):
        if outcome == "skipped":
            skipped[note].append(method)
    for note, methods in skipped.items():
        print(f"\nskipped ({len(methods)}): {note}")
        for m in methods:
            print(f"  {m}")
    failed = [(m, n) for m, (o, n) in sorted(result.outcomes.items()) if o == "failed"]
    if failed:
        print(f"\nfailed ({len(failed)}):")
        for m, n in failed:
            print(f"  {m}: {n}")
    print(f"\n{total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped")
    return 0 if total["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
