"""Re-scored incumbents, reference rows and the comparison presets (issue 10)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from searchlab import kernels  # noqa: E402
from searchlab.app import build_strategy, rescore_best, run_one_search  # noqa: E402
from searchlab.config import load_config, strategy_choices  # noqa: E402
from searchlab.dsl import parse  # noqa: E402
from searchlab.rescore import (REFERENCE_RULES, RESCORE_OFFSET, fresh_seeds,  # noqa: E402
                               rescore)
from searchlab.runfiles import best_results  # noqa: E402
from searchlab.runner import run_search  # noqa: E402
from searchlab.testing.toy import ToyEvaluator  # noqa: E402

TOY = ["task=toy", "tracking=none", "quiet=true"]


class Spy:
    """The toy evaluator, recording (rule, seed, test) of every call."""

    task_name, protocol = "toy", "probe"

    def __init__(self) -> None:
        self.inner = ToyEvaluator()
        self.calls: list[tuple[str, int, bool]] = []

    def evaluate(self, rule, seed=0, *, test=False):
        text = rule if isinstance(rule, str) else rule.text
        self.calls.append((text, seed, test))
        return self.inner.evaluate(rule, seed, test=test)


@pytest.mark.parametrize("eval_seed", [0, 1, 7, 999])
def test_fresh_seeds_are_disjoint_from_every_search_seed(eval_seed):
    seeds = fresh_seeds(eval_seed, 5)
    assert len(set(seeds)) == 5 and eval_seed not in seeds
    assert min(seeds) >= RESCORE_OFFSET            # searches use seeds below the offset
    assert not set(seeds) & set(fresh_seeds(eval_seed + 1, 5))


def test_search_never_reads_test_and_rescoring_uses_only_fresh_seeds(tmp_path):
    cfg = load_config(TOY + ["budget=30", "batch_size=10", "eval_seed=3", "space=small",
                             f"out={tmp_path}", "rescore.top_k=3", "rescore.seeds=4"])
    spy = Spy()
    strategy = build_strategy(cfg)
    res = run_search(strategy, spy, cfg.budget, cfg.batch_size, cfg.seed, eval_seed=3,
                     space="small")
    during = list(spy.calls)
    assert during and all(seed == 3 and not test for _, seed, test in during)
    from searchlab.executors import SerialExecutor

    rows = rescore_best(cfg, spy, res, SerialExecutor(), tmp_path)
    after = spy.calls[len(during):]
    assert {seed for _, seed, _ in after} == set(fresh_seeds(3, 4))
    assert all(test for _, _, test in after)
    # selection is by the search's reward only: the top 3 ok rules, in that order
    expect = [r.rule for r in best_results(res.results, len(res.results)) if r.ok][:3]
    assert [r.rule for r in rows] == expect
    assert [r.name for r in rows] == ["rank 1", "rank 2", "rank 3"]
    saved = json.loads((tmp_path / "rescored.json").read_text())
    assert [d["rule"] for d in saved] == expect


def test_rescored_statistics_are_the_mean_and_std_of_direct_evaluations():
    ev = ToyEvaluator()
    seeds = fresh_seeds(0, 3)
    [row] = rescore(ev, {"AddSign": REFERENCE_RULES["AddSign"]}, seeds)
    vals = [ev.evaluate(REFERENCE_RULES["AddSign"], s).reward for s in seeds]
    tests = [ev.evaluate(REFERENCE_RULES["AddSign"], s, test=True).extra["test_reward"]
             for s in seeds]
    assert row.val_mean == pytest.approx(np.mean(vals))
    assert row.val_std == pytest.approx(np.std(vals, ddof=1))
    assert row.test_mean == pytest.approx(np.mean(tests))
    # the toy's held-out probes are other states: test differs from validation
    assert not math.isclose(row.test_mean, row.val_mean)


def test_search_files_and_summary_carry_the_rescored_incumbent(tmp_path):
    cfg = load_config(TOY + ["budget=20", "space=small", f"out={tmp_path}",
                             "rescore.top_k=2", "rescore.seeds=2"])
    result, folder, _ = run_one_search(cfg)
    summary = json.loads((folder / "summary.json").read_text())
    rows = json.loads((folder / "rescored.json").read_text())
    assert len(rows) == 2 and summary["rescored_rule"] == rows[0]["rule"]
    assert summary["rescored_rule"] == result.best[0].rule
    assert summary["rescored_test_mean"] == pytest.approx(rows[0]["test_mean"])
    assert summary["cpu_kernels"] == torch.backends.cpu.get_cpu_capability()   # provenance
    assert summary["cpu_vendor"] == kernels.cpu_vendor()


def test_rescore_zero_writes_nothing(tmp_path):
    cfg = load_config(TOY + ["budget=10", "space=small", f"out={tmp_path}", "rescore.top_k=0"])
    run_one_search(cfg)
    assert not (tmp_path / "rescored.json").exists()


@pytest.mark.parametrize("preset", ["experiment/smoke", "experiment/quick"])
def test_presets_exercise_each_strategy(preset):
    """Every strategy of a preset gets past its warm-up and proposes its own rules (on the
    toy objective with the preset's space, budget and batch size)."""
    cfg = load_config([f"config={preset}"] + TOY)
    sequences = {}
    for label, sc in strategy_choices(cfg):
        c = cfg.model_copy(update={"strategy": sc})
        strategy = build_strategy(c, label)
        assert cfg.budget > strategy.warmup, (label, strategy.warmup)
        res = run_search(strategy, ToyEvaluator(), cfg.budget, cfg.batch_size, cfg.seed)
        sequences[label] = res.keys
    labels = list(sequences)
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            assert sequences[a] != sequences[b], (a, b)
            # beyond the warm-up, a strategy that uses feedback proposes other rules
            assert len(set(sequences[a]) ^ set(sequences[b])) > cfg.budget // 4, (a, b)


def test_budget_at_warmup_warns(capsys, tmp_path):
    cfg = load_config(TOY + ["strategy=evolution", "budget=20", "space=small", f"out={tmp_path}",
                             "rescore.top_k=0"])
    run_one_search(cfg)
    assert "warm-up" in capsys.readouterr().err


def test_reference_rules_parse():
    for name, text in REFERENCE_RULES.items():
        assert parse(text).text, name


def test_reference_rows_include_extra_rules_and_learned_optimizers(tmp_path):
    from searchlab.app import reference_section

    cfg = load_config(["task=ensemble", "fidelity=smoke", "tracking=none", "quiet=true",
                       "rescore.seeds=2", "references=[lion=sign(m),learned:lwa-a]"],
                      )
    targets, md = reference_section(cfg, tmp_path, [], lambda msg: None)
    rows = {d["name"]: d for d in json.loads((tmp_path / "references.json").read_text())}
    assert set(REFERENCE_RULES) | {"lion", "lwa-a"} == set(rows)
    assert rows["lion"]["rule"] == "sign(m)" and rows["lwa-a"]["rule"] == "learned:lwa-a"
    assert all(len(d["val"]) == 2 and d["seeds"] == fresh_seeds(0, 2) for d in rows.values())
    # targets: SGD, momentum, Adam and the best reference, at their re-scored val means
    assert targets["Adam"] == pytest.approx(np.mean(rows["Adam"]["val"]))
    best = max(rows.values(), key=lambda d: np.mean(d["val"]))
    assert targets[f"best reference ({best['name']})"] == pytest.approx(np.mean(best["val"]))
    assert "| lwa-a |" in md and "discovery CPU-s" in md
    # re-reporting reads the saved rows back, without evaluating anything
    again, md2 = reference_section(cfg, tmp_path, [], lambda msg: None, compute=False)
    assert again == pytest.approx(targets) and md2 == md


def test_compare_resume_extends_finished_searches_to_a_larger_budget(tmp_path):
    from searchlab.app import run_comparison
    from searchlab.runfiles import load_search

    base = TOY + ["strategies=[random,evolution-small]", "seeds=[0,1]", "space=small",
                  "batch_size=5", f"out={tmp_path}", "rescore.top_k=0", "reps=50"]
    run_comparison(load_config(base + ["budget=15"]))
    small = {f.parent.name: [r.key for r in load_search(f.parent).results]
             for f in tmp_path.glob("runs/*/results.json")}
    assert len(small) == 4 and all(len(v) == 15 for v in small.values())
    _, _, runs = run_comparison(load_config(base + ["budget=30", "resume=true"]))
    assert sorted(r.unique for r in runs) == [30] * 4
    ref = run_comparison(load_config(TOY + ["strategies=[random,evolution-small]", "seeds=[0,1]",
                                            "space=small", "batch_size=5", "budget=30",
                                            f"out={tmp_path / 'ref'}", "rescore.top_k=0",
                                            "reps=50"]))[2]
    for a, b in zip(runs, ref):
        # extended = uninterrupted (serial executor, same seeds), and it kept its first 15
        assert [r.key for r in a.results] == [r.key for r in b.results]
        assert [r.key for r in a.results][:15] == small[f"{a.label}-s{a.seed}"]
