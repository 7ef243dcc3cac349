"""Issue 15, items 6, 8, 10-14, 16, 17: export escaping, rule size limits, clear CLI
failures, `list`/`show`, CLI polish and the env's Gymnasium conventions.  Each test
reproduces the problem the issue reports (it failed before the fix)."""

from __future__ import annotations

import ast
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from searchlab.cli import main  # noqa: E402
from searchlab.dsl import ParseError, Rule, parse  # noqa: E402
from searchlab.result import Result  # noqa: E402

TOY = ["task=toy", "space=small", "quiet=true", "tracking=none"]
POWERSIGN = "exp(sign(g)*sign(m))*g"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def error_line(capsys, argv, code=2) -> str:
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == code, (out, err)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"searchlab {argv[0]}: error: "), lines[0]
    return lines[0]


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- 6. export: values from a results.json never become code ---------------------------------
HOSTILE_TASK = 'mnist1d"""\nimport pathlib; pathlib.Path("PWNED").write_text("task")\n"""'
HOSTILE_FIDELITY = ('fast\\" \'\'\' """ + __import__("pathlib").Path("PWNED2").write_text("x")'
                    ' #\r\n\x00\u2028""""')


def _write_search(folder: Path, results: list[Result], **fields) -> None:
    """A search's results.json; ``fields`` overwrite the first result's JSON fields (a
    crafted file)."""
    from searchlab.result import result_to_json

    rows = [result_to_json(r) for r in results]
    rows[0].update(fields)
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(
        {"summary": {"strategy": "random", "label": "random"}, "results": rows}))


@pytest.mark.parametrize("task, fidelity", [(HOSTILE_TASK, "fast"),
                                            ("mnist1d", HOSTILE_FIDELITY),
                                            (HOSTILE_TASK, HOSTILE_FIDELITY)])
def test_export_escapes_hostile_task_and_fidelity(tmp_path, capsys, task, fidelity):
    folder = tmp_path / "evil"
    _write_search(folder, [Result(rule=POWERSIGN, key=parse(POWERSIGN).key, reward=0.9,
                                  best_lr=0.01, task=task, fidelity=fidelity)])
    out = tmp_path / "exported.py"
    assert main(["export", f"source={folder}", f"out={out}"]) == 0
    capsys.readouterr()
    source = out.read_text()
    tree = ast.parse(source)             # valid Python, and only the expected statements
    kinds = [type(node).__name__ for node in tree.body]
    assert kinds == ["Expr", "ImportFrom", "Assign", "Assign", "FunctionDef"], kinds
    module = load_module(out)            # importing it runs nothing of the payload
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "PWNED2").exists()
    assert task in module.__doc__ and fidelity in module.__doc__  # kept as data
    assert module.RULE == POWERSIGN and module.LR == 0.01


def test_export_of_a_crafted_lr_or_rule_is_data_or_one_error(tmp_path, capsys):
    folder = tmp_path / "lr"
    _write_search(folder, [Result(rule=POWERSIGN, key=parse(POWERSIGN).key, reward=0.9,
                                  task="t", fidelity="f")], best_lr="1); import os; (")
    out = tmp_path / "lr_rule.py"
    assert main(["export", f"source={folder}", f"out={out}"]) == 0
    capsys.readouterr()
    assert "import os" not in out.read_text() and load_module(out).LR == 1e-3
    bad = tmp_path / "badrule"
    _write_search(bad, [Result(rule='g"""\nimport os\n"""', key="k", reward=0.9)])
    line = error_line(capsys, ["export", f"source={bad}", f"out={tmp_path / 'x.py'}"])
    assert "cannot export rule" in line and not (tmp_path / "x.py").exists()


# --- 8. size limits instead of RecursionError ----------------------------------------------
def test_deep_nesting_and_long_sums_are_parse_errors_naming_the_limit():
    for text in ["(" * 198 + "g" + ")" * 198, " + ".join(["g"] * 332),
                 "-" * 600 + "g", "exp(" * 300 + "g" + ")" * 300, "g^" * 200 + "g"]:
        with pytest.raises(ParseError) as err:
            parse(text)
        msg = str(err.value)
        assert "rule too large: nesting depth" in msg and "limit of 64" in msg, msg
        assert err.value.position is not None and f"position {err.value.position}" in msg
    with pytest.raises(ParseError, match="length"):
        parse("g" + " " * 5000)


def test_a_tree_built_without_text_is_checked_by_the_key():
    from searchlab.dsl import Bin, Leaf

    node = Leaf("g")
    for _ in range(400):
        node = Bin("add", node, Leaf("m"))
    with pytest.raises(ParseError, match="limit"):
        Rule(node).key


def test_rules_at_the_limits_work_with_headroom_on_the_stack():
    from searchlab.dsl.text import MAX_DEPTH
    from searchlab.optim import compile_rule

    texts = ["(" * (MAX_DEPTH - 1) + "g" + ")" * (MAX_DEPTH - 1),
             " + ".join(["g", "m"] * (MAX_DEPTH // 2)),
             "exp(" * (MAX_DEPTH - 1) + "g" + ")" * (MAX_DEPTH - 1),
             " + ".join(f"({' + '.join(['g', 'm', 'v', 'g2'] * 4)})" for _ in range(7))]

    def deep(n: int):             # everything below runs ~400 frames deep, like a worker
        if n:
            return deep(n - 1)
        out = []
        for text in texts:
            r = parse(text)
            out.append((r.key, str(r), compile_rule(r)))
        return out

    assert len(deep(400)) == len(texts)


@pytest.mark.parametrize("evaluator", ["toy", "rosenbrock"])
def test_evaluate_scores_too_large_rules_invalid(evaluator):
    from searchlab.evaluators import make_evaluator

    ev = make_evaluator(evaluator, "smoke")
    for text in ["(" * 198 + "g" + ")" * 198, " + ".join(["g"] * 332)]:
        r = ev.evaluate(text, 0)
        assert r.status == "invalid" and "limit" in r.message


# --- 10. evaluate: an unparsable rule fails -------------------------------------------------
def test_evaluate_with_an_unparsable_rule_exits_nonzero_with_one_line(capsys):
    line = error_line(capsys, ["evaluate", "exp(g", "--task", "rosenbrock",
                               "--fidelity", "smoke", "--no-cache"])
    assert "exp(g" in line and "position 5" in line


# --- 11. missing task data stops the search; all-errored searches warn ---------------------
def test_search_with_missing_cifar10_data_stops_before_searching(tmp_path, capsys):
    line = error_line(capsys, ["search", "task=cifar10", "task.options.data_dir=/nonexistent",
                               "fidelity=smoke", "budget=2", "quiet=true", "tracking=none",
                               f"run_dir={tmp_path / 'runs'}"])
    assert "CIFAR-10 data not found" in line and "/nonexistent" in line
    assert not list((tmp_path / "runs").glob("*/results.json"))


def test_a_search_whose_every_sample_errored_says_so(tmp_path, capsys, monkeypatch):
    import searchlab.app as app

    class Broken:
        task_name, protocol = "toy", "fast"

        def evaluate(self, rule, seed=0):
            raise RuntimeError("the task is broken")

    monkeypatch.setattr(app, "build_evaluator", lambda cfg: Broken())
    assert main(["search", *TOY, "budget=4", "batch_size=2", f"run_dir={tmp_path}"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "every one of the 4 samples" in err
    assert "the task is broken" in err


# --- 12. messages name the field, the valid options, the missing bound -----------------------
def test_fidelity_override_error_names_the_field(capsys):
    from searchlab.evaluation.fidelity import get_fidelity

    with pytest.raises(ValueError) as err:
        get_fidelity("fast+final_epochs=abc")
    assert "'final_epochs'" in str(err.value) and "'abc'" in str(err.value)
    line = error_line(capsys, ["evaluate", "g", "--task", "rosenbrock",
                               "--fidelity", "fast+final_epochs=abc"])
    assert "final_epochs" in line


def test_bad_strategy_option_lists_valid_options_with_did_you_mean(tmp_path, capsys):
    line = error_line(capsys, ["search", "strategy=evolution", "strategy.options.populaton=30",
                               *TOY, f"run_dir={tmp_path}"])
    assert "did you mean 'population'" in line
    assert "valid options: population, sample_size" in line


@pytest.mark.parametrize("text, needs", [("clip(g)", "clip needs a bound"),
                                         ("clip(g", "clip needs a bound"),
                                         ("drop(m)", "drop needs a probability"),
                                         ("left(g)", "left needs two arguments")])
def test_missing_second_argument_says_what_it_is(text, needs):
    with pytest.raises(ParseError, match=needs):
        parse(text)


# --- 13. the export hint works for decay rules; past total_steps warns once ----------------
@pytest.mark.parametrize("rule", [POWERSIGN, "(1+ld*sign(g)*sign(m))*g"])
def test_export_prints_a_hint_that_works(tmp_path, capsys, rule):
    import torch

    out = tmp_path / "hint_rule.py"
    assert main(["export", f"rule={rule}", f"out={out}"]) == 0
    stdout = capsys.readouterr().out
    hint = next(ln for ln in stdout.splitlines() if "opt = make_optimizer" in ln)
    module = load_module(out)
    ns = {"make_optimizer": module.make_optimizer, "model": torch.nn.Linear(2, 1),
          "epochs": 2, "loader": [0] * 3}
    exec(hint.strip(), ns)                       # the printed line runs as printed
    assert isinstance(ns["opt"], torch.optim.Optimizer)
    assert ("total_steps=" in hint) == parse(rule).uses_decay


def test_rule_optimizer_warns_once_past_total_steps():
    import torch

    from searchlab.optim import RuleOptimizer

    def run(rule, steps, total):
        w = torch.nn.Parameter(torch.ones(3))
        opt = RuleOptimizer([w], rule, lr=0.1, total_steps=total)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(steps):
                w.grad = torch.ones(3)
                opt.step()
        return [c for c in caught if "total_steps" in str(c.message)]

    assert run("ld*g", 3, 3) == []                       # within the schedule: silent
    past = run("ld*g", 10, 3)
    assert len(past) == 1 and issubclass(past[0].category, RuntimeWarning)
    assert "past total_steps=3" in str(past[0].message)
    assert run("g", 10, 3) == []                         # no decay operand: nothing to say


# --- 14. list and show ------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished search, an interrupted one (no results.json yet) and a comparison."""
    rd = tmp_path_factory.mktemp("listing") / "runs"
    assert main(["search", *TOY, "budget=6", "batch_size=3", f"run_dir={rd}",
                 f"out={rd / 'finished-search'}"]) == 0
    assert main(["search", "strategy=evolution", *TOY, "budget=6", "batch_size=3",
                 f"run_dir={rd}", f"out={rd / 'killed-search'}"]) == 0
    for name in ("results.json", "results.csv", "summary.json", "best_rules.md",
                 "best_rules.json", "rescored.json", "rescored.md"):
        (rd / "killed-search" / name).unlink(missing_ok=True)
    assert main(["compare", "strategies=[random,evolution]", "seeds=[0]", "budget=4",
                 "batch_size=2", *TOY, f"run_dir={rd}", f"out={rd / 'a-comparison'}"]) == 0
    (rd / "mlflow-like-folder").mkdir()          # anything else is not listed
    return rd


def test_list_shows_searches_and_comparisons(run_dir, capsys):
    capsys.readouterr()
    assert main(["list", f"run_dir={run_dir}"]) == 0
    out = capsys.readouterr().out
    rows = {ln.split()[-1]: ln for ln in out.splitlines() if str(run_dir) in ln}
    assert set(rows) == {str(run_dir / n) for n in ("finished-search", "killed-search",
                                                       "a-comparison")}
    fin, killed, comp = (rows[str(run_dir / n)] for n in ("finished-search", "killed-search",
                                                             "a-comparison"))
    assert " search " in fin and "finished" in fin and "random" in fin and "toy/" in fin
    assert "interrupted" in killed and "evolution" in killed and "6/6" in killed
    assert " compare " in comp and "finished" in comp and "random,evolution" in comp
    assert main(["list", f"run_dir={run_dir}", "format=json"]) == 0
    data = json.loads(capsys.readouterr().out)
    by = {Path(d["folder"]).name: d for d in data}
    assert by["finished-search"]["budget"] == 6 and by["finished-search"]["done"] == 6
    assert isinstance(by["finished-search"]["best_reward"], float)
    assert by["killed-search"]["status"] == "interrupted"
    assert by["a-comparison"]["done"] == 2 and by["a-comparison"]["total"] == 2


def test_show_a_search_a_comparison_and_an_interrupted_search(run_dir, capsys):
    capsys.readouterr()
    assert main(["show", str(run_dir / "finished-search")]) == 0
    out = capsys.readouterr().out
    assert "(finished)" in out and "best rules:" in out and "| rank |" in out
    assert "statuses:" in out and f"searchlab export source={run_dir / 'finished-search'}" in out
    assert main(["show", "killed-search", f"run_dir={run_dir}"]) == 0
    out = capsys.readouterr().out
    assert "(interrupted)" in out and f"resume={run_dir / 'killed-search'}" in out
    assert main(["show", str(run_dir / "a-comparison")]) == 0
    out = capsys.readouterr().out
    assert (run_dir / "a-comparison" / "summary.md").read_text().strip() in out
    assert f"searchlab compare report={run_dir / 'a-comparison'}" in out
    assert "nope" in error_line(capsys, ["show", "nope", f"run_dir={run_dir}"])
    assert "does not exist" in error_line(capsys, ["list", "run_dir=/nonexistent/runs"])


# --- 16. CLI polish ---------------------------------------------------------------------
def test_version(capsys):
    import searchlab

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"searchlab {searchlab.__version__}"


def test_search_help_lists_components_by_name_without_importing_them():
    from searchlab.evaluation.fidelity import FIDELITIES
    from searchlab.evaluators import task_names
    from searchlab.strategy import STRATEGIES

    code = ("import sys, io, contextlib\nfrom searchlab.cli import main\nbuf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n    try: main(['search', '--help'])\n"
            "    except SystemExit: pass\n"
            "heavy = [m for m in ('torch', 'deap', 'stable_baselines3', 'mlflow') if m in sys.modules]\n"
            "print(buf.getvalue()); print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "HEAVY []" in out
    section = out[out.index("components"):out.index("config keys")]
    lines = {ln.split()[0]: ln for ln in section.splitlines() if ln.startswith("  ")}
    for key, names in (("strategies", STRATEGIES.names()), ("tasks", task_names()),
                       ("fidelities", FIDELITIES.names())):
        assert all(n in lines[key] for n in names), (key, lines.get(key))


def test_evaluate_accepts_key_value_words_too(capsys, tmp_path):
    base = ["evaluate", POWERSIGN, "--cache", str(tmp_path / "c.sqlite")]
    assert main(base + ["task=rosenbrock", "fidelity=smoke", "json=true"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["task"] == "rosenbrock" and data["fidelity"] == "smoke"
    # intermixed with flags, in any order
    assert main(["evaluate", POWERSIGN, "--task", "rosenbrock", "seed=1", "--fidelity",
                 "smoke", "no_cache=true", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["seed"] == 1 and data["cached"] is False
    assert "unknown option 'colour=red'" in error_line(capsys, base + ["colour=red"])
    assert "'seed'" in error_line(capsys, base + ["seed=abc"])


def test_progress_bar_shows_one_eta():
    from searchlab.progress import SearchProgress

    buf = io.StringIO()
    bar = SearchProgress(10, desc="s", file=buf)
    bar.bar.disable = False
    bar(3, 10, 0.5)
    bar.close()
    last = [ln for ln in buf.getvalue().replace("\r", "\n").splitlines() if ln.strip()][-1]
    assert last.count("ETA") == 1 and "<" not in last, last


def test_demo_reports_its_time_and_the_readme_no_longer_promises_5_seconds(capsys):
    assert main(["demo", "--steps", "20"]) == 0
    out = capsys.readouterr().out
    assert "demo: " in out and "start-up" in out
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "5-second" not in readme


# --- 17. the env's Gymnasium conventions -------------------------------------------------
def test_env_info_has_the_action_mask_is_json_and_render_decodes_the_rule():
    from searchlab.envs.optimizer_search import OptimizerSearchEnv

    env = OptimizerSearchEnv(task="toy", space="small", render_mode="ansi")
    obs, info = env.reset(seed=0)
    json.dumps(info)
    assert info["action_mask"] == env.action_masks().tolist()
    tokens = parse(POWERSIGN).to_tokens()
    for t in tokens:
        mask = np.array(info["action_mask"], dtype=np.int8)
        assert mask[env.space.index[t]] == 1
        assert mask[env.action_space.sample(mask=mask)] == 1     # Gymnasium's mask sampling
        obs, reward, term, trunc, info = env.step(env.space.index[t])
        text = json.dumps(info)                  # every step's info is plain JSON
        assert info["action_mask"] == env.action_masks().tolist()
    assert term and json.loads(text)["rule"] == POWERSIGN
    assert info["result"].reward == reward and info["result"]["status"] == "ok"
    assert not info["result"].cached and isinstance(info["result"].result, Result)
    shown = env.render()
    assert f"rule: {POWERSIGN}" in shown and "status ok" in shown and " ".join(tokens) in shown
    env.reset(seed=0)
    env.step(env.space.index["g"])
    assert "rule" not in env.render().split("\n", 1)[1]         # no complete group yet
    obs, reward, term, trunc, info = env.step(env.space.index["g"])  # masked out
    assert term and info["status"] == "invalid"
    json.dumps(info)
