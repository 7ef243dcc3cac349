"""The tabular benchmark (searchlab.tabular): enumeration, build, table file, lookups.

A small real table is built once per session for the ``tabular-mini`` space (324 token
strings) on the problem ensemble at ``smoke`` fidelity, through the same build code as
the shipped mnist1d table; its lookups are compared with fresh evaluations by the real
evaluator, its strings with direct probes, its file with corrupted copies.
"""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from searchlab import kernels
from searchlab.dsl import Rule, get_space
from searchlab.dsl.tokens import check_tokens, count_rules
from searchlab.fingerprint import probe
from searchlab.strategy import STRATEGIES
from searchlab.rescore import fresh_seeds
from searchlab.tabular import OutsideTableError, Table, TableError, TableEvaluator
from searchlab.tabular.build import BuildSpec, build, export_table
from searchlab.tabular.functions import enumerate_strings
from searchlab.tabular.table import DEFAULT_TABLE, TABLE_DIR, Record, Row

SPEC = BuildSpec(space="tabular-mini", task="ensemble", fidelity="smoke", name="mini")


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(build directory, table file) of a complete mini table."""
    d = tmp_path_factory.mktemp("table")
    build(d / "build", SPEC, workers=1, say=lambda s: None, bar=False)
    path, counts = export_table(d / "build", d / "mini.json.gz", SPEC)
    assert counts["rows_with_all_seeds"] == counts["rows"]
    return d / "build", path


@pytest.mark.parametrize("name,depth", [("tabular", 1), ("tabular-mini", 1), ("small", 1),
                                        ("scratch", 1)])
def test_enumeration_is_every_string_once(name: str, depth: int) -> None:
    space = get_space(name, depth=depth)
    strings = list(enumerate_strings(space))
    # the dynamic-programming count of the masks is an independent count
    assert len(strings) == len(set(strings)) == count_rules(space)
    for t in strings[:: max(1, len(strings) // 500)]:
        check_tokens(space, t)


#: rules the issue asks the space to hold, each with a token string of the space
REQUIRED = {"g": "g 1 id id left", "m": "m g id id left", "sign(g)": "g m sign id left",
            "sign(m)": "m g sign id left", "sign(m)*sqrt(g)": "m g sign sqrt mul",
            "adam": "adam g id id left", "adam*cd": "adam cd id id mul"}


def test_tabular_space_holds_the_required_rules() -> None:
    strings = {" ".join(t) for t in enumerate_strings(get_space("tabular"))}
    for text, tokens in REQUIRED.items():
        assert tokens in strings, text
        # the string computes the function of the text (the probe is independent of both)
        assert probe(Rule.from_tokens(tokens.split())).digest == probe(text).digest, text
        assert probe(text).problem is None


def test_every_string_maps_to_its_probed_function(mini: tuple[Path, Path]) -> None:
    table = Table.load(mini[1])
    assert table.strings == [" ".join(t) for t in enumerate_strings(get_space("tabular-mini"))]
    for s in table.strings:
        pr = probe(Rule.from_tokens(s.split()))
        hit = table.lookup(Rule.from_tokens(s.split()))
        if pr.problem is None:
            assert isinstance(hit, Row) and hit.fingerprint == pr.digest
        else:
            assert hit == pr.problem
    # rows are distinct functions
    assert len({r.fingerprint for r in table.rows}) == len(table.rows)


def test_lookups_equal_fresh_evaluations(mini: tuple[Path, Path]) -> None:
    from searchlab.evaluation import Evaluator

    table = Table.load(mini[1])
    ev = TableEvaluator(str(mini[1]))
    fresh = Evaluator("ensemble", "smoke")          # no cache: every call trains
    rows = table.rows[:: max(1, len(table.rows) // 6)] + table.extras[:2]
    for row in rows:
        for seed in (0, 1):
            got = ev.evaluate(row.rule, seed, test=True)
            want = fresh.evaluate(row.rule, seed, test=True, use_cache=False)
            assert got.status == want.status
            assert got.reward == pytest.approx(want.reward, abs=1e-9)
            assert got.extra["test_reward"] == pytest.approx(want.extra["test_reward"], abs=1e-9)
            assert got.best_lr == want.best_lr
            assert got.extra["simulated"] is True and got.extra["cpu_seconds"] > 0


def test_every_row_has_its_seeds_and_the_best_a_third(mini: tuple[Path, Path]) -> None:
    table = Table.load(mini[1])
    n = [len(r.records) for r in table.rows]
    assert min(n) == 2 and n.count(3) == math.ceil(0.05 * len(table.rows))
    best = sorted(table.rows, key=lambda r: -sum(x.reward for x in r.records[:2]))
    cutoff = sum(x.reward for x in best[n.count(3) - 1].records[:2])
    for r in table.rows:
        if len(r.records) == 3:
            assert sum(x.reward for x in r.records[:2]) >= cutoff - 1e-12
        assert [x.seed for x in r.records] == sorted(x.seed for x in r.records)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_rescoring_seeds_never_read_the_searchs_record(n: int) -> None:
    recs = tuple(Record(s, 0.1 * s, 0.0, 0.1, "ok", 1.0, 1.0) for s in range(n))
    row = Row("fp", "g", recs)
    for search_seed in range(5):
        assert row.record(search_seed).seed == search_seed % n
        seen = {row.record(s).seed for s in fresh_seeds(search_seed, 4)}
        if n > 1:
            assert search_seed % n not in seen
            assert seen == set(range(n)) - {search_seed % n}


def test_outside_rules_and_bad_text(mini: tuple[Path, Path]) -> None:
    ev = TableEvaluator(str(mini[1]))
    with pytest.raises(OutsideTableError, match="tabular-mini"):
        ev.evaluate("exp(g)*v", 0)
    # a different text of a function of the space is answered
    a, b = ev.evaluate("sqrt(m)*sign(g)", 0), ev.evaluate("sign(g)*sqrt(m)", 0)
    assert a.fingerprint == b.fingerprint and a.reward == b.reward
    bad = ev.evaluate("g +* m", 0)
    assert bad.status == "invalid" and "cannot parse" in bad.message


def test_corrupt_missing_or_unsummed_table_is_a_clear_error(mini: tuple[Path, Path],
                                                            tmp_path: Path) -> None:
    src = mini[1]
    bad = tmp_path / "bad.json.gz"
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    (tmp_path / "bad.json.gz.sha256").write_text(Path(str(src) + ".sha256").read_text())
    with pytest.raises(TableError, match="corrupt.*searchlab table build"):
        Table.load(bad)
    with pytest.raises(TableError, match="not found.*searchlab table build"):
        Table.load(tmp_path / "missing.json.gz")
    lone = tmp_path / "lone.json.gz"
    lone.write_bytes(src.read_bytes())
    with pytest.raises(TableError, match="checksum file"):
        Table.load(lone)
    # a valid checksum of a file that is not a table
    junk = tmp_path / "junk.json.gz"
    junk.write_bytes(gzip.compress(b'{"format": 99}'))
    import hashlib

    (tmp_path / "junk.json.gz.sha256").write_text(hashlib.sha256(junk.read_bytes()).hexdigest())
    with pytest.raises(TableError, match="format 99"):
        Table.load(junk)
    out = subprocess.run([sys.executable, "-m", "searchlab.cli", "table", "info",
                          f"table={bad}"], capture_output=True, text=True)
    assert out.returncode == 2 and "corrupt" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_a_build_resumes_without_evaluating_twice(tmp_path: Path) -> None:
    first = build(tmp_path, SPEC, workers=1, limit=15, say=lambda s: None, bar=False)
    assert first == {"evaluated": 15, "failed": 0}
    rest = build(tmp_path, SPEC, workers=2, say=lambda s: None, bar=False)
    again = build(tmp_path, SPEC, workers=1, say=lambda s: None, bar=False)
    assert again == {"evaluated": 0, "failed": 0}
    import sqlite3

    con = sqlite3.connect(tmp_path / "cache" / "rewards.sqlite")
    n, distinct = con.execute("SELECT COUNT(*), COUNT(DISTINCT fingerprint || ':' || seed) "
                              "FROM results").fetchone()
    assert n == distinct == first["evaluated"] + rest["evaluated"]
    path, counts = export_table(tmp_path, tmp_path / "t.json.gz", SPEC)
    table = Table.load(path)
    assert counts["records"] + sum(len(r.records) for r in table.extras) == n
    assert table.complete
    # another spec in the same directory is refused
    with pytest.raises(ValueError, match="another build directory|use another"):
        build(tmp_path, BuildSpec(space="tabular-mini", task="ensemble", fidelity="fast",
                                  name="mini"), workers=1, say=lambda s: None, bar=False)


def test_a_space_the_table_does_not_hold_is_refused(mini: tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "searchlab.cli", "compare", "task=table",
           f"task.options.table={mini[1]}", "space=scratch", "strategies=[random]", "seeds=1",
           "budget=5", "tracking=none", "quiet=true", f"out={tmp_path / 'bad'}",
           f"run_dir={tmp_path / 'run'}"]
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "tabular-mini" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()
    missing = subprocess.run(cmd[:5] + [f"task.options.table={tmp_path / 'none.json.gz'}"]
                             + cmd[6:], capture_output=True, text=True, timeout=600)
    assert missing.returncode == 2 and "not found" in missing.stderr
    assert "searchlab table build" in missing.stderr


def _rewards(folder: Path) -> dict[str, list[tuple[str, float]]]:
    out = {}
    for sub in sorted((folder / "runs").iterdir()):
        data = json.loads((sub / "results.json").read_text())
        out[sub.name] = [(x["rule"], x["reward"]) for x in data["results"]]
    return out


def test_parallel_searches_equal_serial_ones_and_log_to_mlflow(mini: tuple[Path, Path],
                                                                tmp_path: Path) -> None:
    """On a lookup task searches=2 runs two searches at once (real processes, each
    logging to the same real MLflow sqlite store): the same samples as searches=1, one at
    a time in the calling process."""
    import mlflow

    base = [sys.executable, "-m", "searchlab.cli", "compare", "task=table",
            f"task.options.table={mini[1]}", "space=tabular-mini",
            "strategies=[random,evolution,gp]", "seeds=2", "budget=15", "quiet=true"]
    one = subprocess.run(base + ["searches=1", "tracking=none", f"out={tmp_path / 'one'}",
                                 f"run_dir={tmp_path / 'r1'}"], capture_output=True, text=True)
    two = subprocess.run(base + ["searches=2", f"out={tmp_path / 'two'}",
                                 f"run_dir={tmp_path / 'r2'}", "tracking.experiment=par"],
                         capture_output=True, text=True)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr[-1500:], two.stderr[-1500:])
    assert "6 searches, 2 at once" in two.stderr and "at once" not in one.stderr
    assert _rewards(tmp_path / "one") == _rewards(tmp_path / "two")
    # resumed with one search missing: the count says what is left, and one left runs alone
    import shutil

    saved = tmp_path / "random-s0"
    shutil.copytree(tmp_path / "two" / "runs" / "random-s0", saved)
    shutil.rmtree(tmp_path / "two" / "runs" / "random-s0")
    again = subprocess.run(base + ["searches=2", "tracking=none", f"out={tmp_path / 'two'}",
                                   f"run_dir={tmp_path / 'r3'}", "resume=true"],
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-1500:]
    assert "5 of 6 searches done before, 1 to run" in again.stderr
    assert "at once" not in again.stderr
    assert _rewards(tmp_path / "two") == _rewards(tmp_path / "one")
    shutil.rmtree(tmp_path / "two" / "runs" / "random-s0")
    shutil.copytree(saved, tmp_path / "two" / "runs" / "random-s0")   # for the MLflow checks
    summary = (tmp_path / "two" / "summary.md").read_text()
    assert "Adam" in summary and "probability of improvement" in summary.lower()
    assert (tmp_path / "two" / "report.html").is_file()
    res = json.loads((tmp_path / "two" / "runs" / "random-s0" / "results.json").read_text())
    ok = [x for x in res["results"] if x["status"] == "ok"]
    assert ok and all(x["extra"].get("simulated") for x in ok)
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'r2' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("par")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("searchlab.label")
               and "mlflow.parentRunId" not in r.data.tags]
    labels = sorted((r.data.tags["searchlab.label"], r.data.params.get("seed")) for r in parents
                    if r.data.tags["searchlab.label"] != "report")
    assert labels == sorted((lab, str(s)) for lab in ("random", "evolution", "gp")
                            for s in (0, 1))
    assert all(r.info.status == "FINISHED" for r in parents)
    # no nested run per lookup by default on a table
    assert not [r for r in runs if "mlflow.parentRunId" in r.data.tags
                and r.data.tags.get("searchlab.label") != "report"]


def test_table_commands(mini: tuple[Path, Path]) -> None:
    info = subprocess.run([sys.executable, "-m", "searchlab.cli", "table", "info",
                           f"table={mini[1]}"], capture_output=True, text=True)
    assert info.returncode == 0 and "SHA-256 verified" in info.stdout
    assert "rows: " in info.stdout and "complete: True" in info.stdout
    st = subprocess.run([sys.executable, "-m", "searchlab.cli", "table", "status",
                         f"dir={mini[0]}", "space=tabular-mini", "task=ensemble",
                         "fidelity=smoke", "name=mini"], capture_output=True, text=True)
    assert st.returncode == 0 and "seed 0: " in st.stdout and "failures: 0" in st.stdout
    bad = subprocess.run([sys.executable, "-m", "searchlab.cli", "table", "status",
                          f"dir={mini[0]}"], capture_output=True, text=True)
    assert bad.returncode == 2 and "use another build directory" in bad.stderr


def test_gymnasium_env_on_a_table(mini: tuple[Path, Path]) -> None:
    import gymnasium as gym
    import numpy as np

    import searchlab

    env = gym.make(searchlab.ENV_ID, task="table", space="tabular-mini",
                   task_options={"table": str(mini[1])})
    ev = TableEvaluator(str(mini[1]))
    rng = np.random.default_rng(0)
    for episode in range(5):
        obs, info = env.reset(seed=episode)
        done, reward = False, 0.0
        while not done:
            mask = env.unwrapped.action_masks()
            obs, reward, term, trunc, info = env.step(int(rng.choice(np.flatnonzero(mask))))
            done = term or trunc
        rule = env.unwrapped._last.rule
        assert reward == pytest.approx(ev.evaluate(rule, 0).reward)


def test_config_defaults_follow_the_task() -> None:
    from searchlab.config import load_config

    table = load_config(["task=table"])
    assert (table.space_name, table.child_runs, table.rescore_seeds) == ("tabular", False, 1)
    mine = load_config(["task=table", "space=tabular-mini", "tracking.child_runs=true",
                        "rescore.seeds=2"])
    assert (mine.space_name, mine.child_runs, mine.rescore_seeds) == ("tabular-mini", True, 2)
    trained = load_config([])
    assert (trained.space_name, trained.child_runs, trained.rescore_seeds) == ("scratch", True, 5)


def test_describe_matches_a_direct_reading_of_the_file(mini: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    # the expected numbers come from the gzip JSON itself (records are lists: seed,
    # reward, test, ...), not from the Table classes the summary uses
    from searchlab.tabular.summary import summarize_table

    raw = json.loads(gzip.decompress(mini[1].read_bytes()))
    recs = raw["rows"]["records"]
    means = [sum(r[1] for r in rs) / len(rs) for rs in recs if rs]
    refs = {"g": "g", "m": "m", "sign(m)*sqrt(g)": "sign(m)*sqrt(g)", "adam": "adam"}
    s = summarize_table(Table.load(mini[1]), references=refs, top=5)
    assert s.rows == len(recs) and s.measured == len(means) and s.complete
    assert sorted(s.rewards.tolist()) == pytest.approx(sorted(means))
    assert sum(s.records_per_seed.values()) == sum(len(rs) for rs in recs)
    records_of = {fp: (rs, part == "rows") for part in ("rows", "extras")
                  for fp, rs in zip(raw[part]["fingerprint"], raw[part]["records"])}
    for ref in s.references:
        rs, in_space = records_of[probe(Rule.parse(ref.rule)).digest]
        mine = sum(r[1] for r in rs) / len(rs)
        assert ref.in_space == in_space and ref.seeds == len(rs)
        assert ref.reward == pytest.approx(mine)
        assert ref.share_above == pytest.approx(sum(x > mine for x in means) / len(means))
        tests = [r[2] for r in rs if r[2] is not None]
        assert ref.test == pytest.approx(sum(tests) / len(tests))
    assert not s.references[-1].in_space        # adam: not an operand of tabular-mini
    missing = summarize_table(Table.load(mini[1]), references={"x": "exp(g)*exp(m)"})
    assert missing.references[0].seeds == 0 and math.isnan(missing.references[0].share_above)
    assert [t.reward for t in s.top] == pytest.approx(sorted(means, reverse=True)[:5])
    # the command prints the same and writes the files; a bad path is one clear error
    out = subprocess.run([sys.executable, "-m", "searchlab.cli", "table", "describe",
                          f"table={mini[1]}", f"out={tmp_path / 'space'}", "top=5"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "| 5 |" in out.stdout and (tmp_path / "space" / "reward_histogram.png").stat().st_size
    assert (tmp_path / "space" / "space.md").read_text() in out.stdout
    bad = subprocess.run([sys.executable, "-m", "searchlab.cli", "table", "describe",
                          f"table={tmp_path / 'nope.json.gz'}"], capture_output=True, text=True)
    assert bad.returncode != 0 and "nope.json.gz" in bad.stderr



def check_against_fresh_evaluations(path: Path, n_ok: int = 3, n_diverged: int = 1) -> int:
    """Re-train a random sample of a table's measured rows (seed 0 records) with a fresh
    evaluator of the table's task and fidelity; every field the table keeps must match.
    Returns the number of rows checked."""
    import random

    from searchlab.evaluation import Evaluator

    table = Table.load(path)                       # the checksum is verified here
    rng = random.Random(0)
    measured = [r for r in table.rows if r.records and r.records[0].seed == 0]
    ok = [r for r in measured if r.records[0].status == "ok"]
    bad = [r for r in measured if r.records[0].status != "ok"]
    sample = rng.sample(ok, min(n_ok, len(ok))) + rng.sample(bad, min(n_diverged, len(bad)))
    assert sample, f"{path}: no measured rows"
    fresh = Evaluator(table.meta["task"], table.meta["fidelity"])
    for row in sample:
        rec = row.records[0]
        want = fresh.evaluate(row.rule, rec.seed, test=True, use_cache=False)
        where = f"{row.rule!r} seed {rec.seed}"
        assert want.status == rec.status, where
        assert rec.reward == pytest.approx(want.reward, abs=1e-9), where
        if want.ok:        # a diverged record keeps no lr (failures.jsonl has none)
            assert rec.best_lr == want.best_lr, where
            assert rec.test == pytest.approx(want.extra["test_reward"], abs=1e-9), where
    return len(sample)


_SHIPPED = TABLE_DIR / f"{DEFAULT_TABLE}.json.gz"

#: the shipped table's numbers are those of its build machines' CPU vendor: on another
#: vendor's CPU, MKL rounds matrix products and its vector functions differently, so
#: fresh evaluations and fingerprints there cannot equal the table's (searchlab.kernels;
#: measured on an Intel Xeon: 1 of 20 sampled rewards equal, 2 of 205 fingerprints moved)
def _shipped_vendor() -> str:
    from searchlab.tabular.table import Table

    return Table.load(_SHIPPED).cpu_vendor if _SHIPPED.is_file() else ""


_SHIPPED_VENDOR = _shipped_vendor()
_OTHER_VENDOR = pytest.mark.skipif(
    _SHIPPED.is_file() and kernels.cpu_vendor() != _SHIPPED_VENDOR,
    reason=f"the shipped table was computed on {_SHIPPED_VENDOR or '?'} CPUs and this is "
           f"{kernels.cpu_vendor() or 'an unknown vendor'}'s: MKL's vendor-specific kernels "
           "round differently (BENCHMARKS.md, 'Intel CPUs')")


@pytest.mark.skipif(not _SHIPPED.is_file(), reason="the mnist1d table is not shipped yet")
def test_a_table_names_the_vendor_it_was_computed_on(tmp_path: Path) -> None:
    """The comparisons with fresh evaluations depend on it (above): a table's recorded
    vendor, the shipped table's known one (it predates the record), and "" (unknown) for
    any other table without the record; a new build records its machines' vendor."""
    import dataclasses

    from searchlab.tabular.build import _versions
    from searchlab.tabular.table import Table

    shipped = Table.load(_SHIPPED)
    assert "cpu_vendor" not in shipped.meta["versions"]
    assert shipped.cpu_vendor == "AuthenticAMD"         # results/table/README.md
    copy = dataclasses.replace(shipped, path=tmp_path / "other.json.gz")
    assert copy.cpu_vendor == ""
    versions = {**shipped.meta["versions"], "cpu_vendor": "GenuineIntel"}
    assert dataclasses.replace(shipped, meta={**shipped.meta, "versions": versions}).cpu_vendor \
        == "GenuineIntel"
    assert _versions()["cpu_vendor"] == kernels.cpu_vendor()
    if kernels.cpu_vendor():                            # x86 Linux: /proc/cpuinfo names it
        assert f"vendor_id\t: {kernels.cpu_vendor()}" in Path("/proc/cpuinfo").read_text()


@_OTHER_VENDOR
@pytest.mark.skipif(not _SHIPPED.is_file(), reason="the mnist1d table is not shipped yet "
                    "(being built: BENCHMARKS.md, 'The tabular benchmark')")
def test_the_shipped_tables_lookups_equal_fresh_mnist1d_evaluations() -> None:
    assert check_against_fresh_evaluations(_SHIPPED) == 4


@_OTHER_VENDOR
@pytest.mark.skipif(not _SHIPPED.is_file(), reason="the mnist1d table is not shipped yet")
def test_the_shipped_tables_fingerprints_are_this_machines() -> None:
    """The table's rows are keyed by the fingerprints of the machines that built it (AVX2
    AMD EPYC); a fresh probe here must give the same key, or a lookup by probe (rules
    written differently from the space's strings) and the reward cache would miss.
    Sampled rows plus rows with cancellations, whose keys once moved with numpy's
    AVX-512 code (BENCHMARKS.md, "The machine's CPU kernels")."""
    import random

    from searchlab.fingerprint import probe
    from searchlab.tabular.table import Table

    table = Table.load(_SHIPPED)
    fragile = {"exp(v) - exp(g2)", "adam - rmsprop", "log(g3) - log(gamma)",
               "sqrt(g3) - sqrt(gamma)", "log(rmsprop)^sqrt(g)"}
    rows = [r for r in table.rows if r.rule in fragile]
    assert len(rows) == len(fragile)
    rows += random.Random(0).sample(list(table.rows), 200)
    fresh = [(r.rule, r.fingerprint, probe(r.rule).digest) for r in rows]
    assert [x for x in fresh if x[1] != x[2]] == []


@pytest.mark.parametrize("strategy", STRATEGIES.names())
def test_lookups_without_item_seeding_give_the_same_search(mini: tuple[Path, Path],
                                                           strategy: str) -> None:
    """On the table task the serial executor skips the per-item reseeding and restoring of
    the global RNGs (``seed_items=False``, what ``build_executor`` gives a table): the
    strategies (DEAP's and SB3's use of the global generators included) write the same
    rules and get the same rewards as with it."""
    from searchlab.executors import SerialExecutor
    from searchlab.runner import run_search

    got = []
    for seed_items in (True, False):
        res = run_search(strategy, TableEvaluator(str(mini[1])), 40, batch_size=8, seed=3,
                         executor=SerialExecutor(seed_items=seed_items), space="tabular-mini",
                         options={"population": 8} if strategy == "evolution" else None)
        got.append([(r.rule, r.reward, r.status, r.cached) for r in res.results])
    assert len(got[0]) == 40 and got[0] == got[1]
