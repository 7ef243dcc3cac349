"""Config: YAML layers + key=value overrides into frozen typed models; strict, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import yaml

from searchlab.config import (CONFIG_DIR, GROUPS, Config, ConfigError, config_reference, flatten,
                              load_config, parse_overrides, strategy_choices)
from searchlab.dsl import get_space
from searchlab.executors import EXECUTORS
from searchlab.strategy import STRATEGIES

GROUP_FILES = sorted((g, p.stem) for g in GROUPS for p in (CONFIG_DIR / g).glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def err(words, **kw) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(words, **kw)
    msg = str(e.value)
    assert "\n" not in msg, "errors are one line"
    return msg


# --- files -------------------------------------------------------------------------------
def test_default_yaml_matches_model_defaults():
    # configs/default.yaml documents the defaults; it must not drift from Config()
    assert load_config([]) == Config()
    raw = yaml.safe_load((CONFIG_DIR / "default.yaml").read_text())
    assert raw["budget"] == Config().budget and raw["strategy"] == Config().strategy.name


@pytest.mark.parametrize("group,name", GROUP_FILES, ids=[f"{g}/{n}" for g, n in GROUP_FILES])
def test_every_group_file_is_a_valid_choice(group, name):
    cfg = load_config([f"{group}={name}"], check_names=False)
    data = yaml.safe_load((CONFIG_DIR / group / f"{name}.yaml").read_text())
    assert getattr(cfg, group).name == data.get("name", name)


def test_every_strategy_file_names_a_registered_strategy():
    for p in (CONFIG_DIR / "strategy").glob("*.yaml"):
        assert yaml.safe_load(p.read_text())["name"] in STRATEGIES.names(), p


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_ready_experiments_load(name):
    cfg = load_config([f"config=experiment/{name}"], check_names=False)
    assert cfg.budget >= 1
    assert strategy_choices(cfg)


def test_ready_experiments_cover_quick_mnist1d_and_paper_cifar10():
    quick = load_config(["config=experiment/quick"], check_names=False)
    assert quick.task.name == "mnist1d" and len(quick.strategies) >= 2 and len(quick.seeds) >= 2
    paper = load_config(["config=experiment/paper"], check_names=False)
    assert (paper.task.name, paper.fidelity.name, paper.space.name) == ("cifar10", "paper", "paper")
    assert paper.strategy.name == "nos-ppo" and paper.strategy.options.get("preset") == "paper"


def test_config_file_argument_and_its_errors(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("budget: 7\nstrategy: evolution\ntask:\n  name: toy\n")
    cfg = load_config(["seed=4"], f)
    assert (cfg.budget, cfg.seed, cfg.strategy.name, cfg.task.name) == (7, 4, "evolution", "toy")
    bad = tmp_path / "bad.yaml"
    bad.write_text("budget: [1,\n")
    assert "not valid YAML" in err([], config_file=bad) and "bad.yaml" in err([], config_file=bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    assert "mapping" in err([], config_file=lst)
    msg = err(["config=experiment/nope"])
    assert "experiment/nope" in msg and "experiment/quick" in msg


# --- overrides ---------------------------------------------------------------------------
def test_override_values_are_typed_like_yaml():
    cfg = load_config(["budget=200", "quiet=true", "strategies=[random, evolution]", "seeds=3",
                       "strategy.options.lr=1e-4", "tracking.uri=http://127.0.0.1:5000",
                       "threshold=0.5", "space.depth=3", "task.options.data_dir=/data/c10"])
    assert cfg.budget == 200 and cfg.quiet is True
    assert cfg.strategies == ("random", "evolution")
    assert cfg.seeds == (0, 1, 2)
    assert cfg.strategy.options == {"lr": 1e-4}
    assert cfg.tracking.uri == "http://127.0.0.1:5000"
    assert cfg.threshold == 0.5 and cfg.space.depth == 3
    assert cfg.task.options == {"data_dir": "/data/c10"}
    assert load_config(["seeds=[4, 9]"]).seeds == (4, 9)


def test_group_choice_replaces_the_whole_group_and_dotted_keys_apply_after():
    cfg = load_config(["strategy.options.preset=tuned", "strategy=nos-ppo-paper"])
    # Hydra's order: the group choice first, then dotted overrides (whatever the order typed)
    assert cfg.strategy.name == "nos-ppo" and cfg.strategy.options == {"preset": "tuned"}
    cfg = load_config(["config=experiment/paper", "strategy=random"])
    assert cfg.strategy.name == "random" and cfg.strategy.options == {}   # no leaked preset
    cfg = load_config(["config=experiment/quick", "budget=7", "task=toy"])
    assert cfg.budget == 7 and cfg.task.name == "toy" and cfg.task.options == {}


def test_strategy_choices_resolve_files_and_registered_names():
    cfg = load_config(["strategies=[random, nos-ppo-paper]"])
    got = strategy_choices(cfg)
    assert [lab for lab, _ in got] == ["random", "nos-ppo-paper"]
    assert got[1][1].name == "nos-ppo" and got[1][1].options == {"preset": "paper"}
    assert strategy_choices(load_config(["strategy=evolution"])) == [
        ("evolution", load_config(["strategy=evolution"]).strategy)]


def test_python_api_data_layer():
    cfg = load_config(["budget=5"], data={"strategy": "evolution", "task": {"name": "toy"}, "budget": 9})
    assert (cfg.strategy.name, cfg.task.name, cfg.budget) == ("evolution", "toy", 5)


def test_configs_are_frozen():
    cfg = load_config([])
    with pytest.raises(pydantic.ValidationError):
        cfg.budget = 3  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        cfg.strategy.name = "gp"  # type: ignore[misc]


def test_space_config_builds_the_space():
    cfg = load_config(["space=small", "space.depth=3", "space.no_final_add=false"])
    space = get_space(cfg.space.name, **cfg.space.overrides())
    assert (space.name, space.depth, space.no_final_add) == ("small", 3, False)
    assert get_space("small").no_final_add is True


def test_names_encode_settings():
    cfg = load_config(["strategy=evolution", "task=toy", "seed=3", "fidelity=fast",
                       "fidelity.options.final_epochs=2"])
    assert cfg.fidelity_name == "fast+final_epochs=2"
    assert cfg.run_name() == "evolution-toy-fast+final_epochs=2-s3"


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": {}, "f": 3}) == {
        "a.b": 1, "a.c.d": 2, "e": {}, "f": 3}


def test_reference_documents_every_key():
    rows = config_reference()
    keys = {k for k, _, _ in rows}
    for name, field in Config.model_fields.items():
        assert field.description, name
        assert name in keys or any(k.startswith(name + ".") for k in keys)
    assert all(doc for _, _, doc in rows)


# --- errors ------------------------------------------------------------------------------
def test_unknown_top_level_key_names_it_and_suggests():
    msg = err(["budgt=3"])
    assert "'budgt'" in msg and "did you mean 'budget'" in msg and "batch_size" in msg


def test_unknown_nested_key_lists_the_groups_keys():
    msg = err(["strategy.optionz.lr=1"])
    assert "'strategy.optionz'" in msg and "name, options" in msg
    msg = err(["tracking.urI=x"])
    assert "tracking.urI" in msg and "uri" in msg and "experiment" in msg


def test_bad_values_name_the_key():
    assert "'budget'" in err(["budget=abc"]) and "abc" in err(["budget=abc"])
    assert "'budget'" in err(["budget=0"])
    assert "'space.depth'" in err(["space.depth=9"])
    assert "'seeds'" in err(["seeds=[a]"])
    assert "'quiet'" in err(["quiet=maybe"])
    assert "strategy.name" in err(["strategy.name.x=1"])


def test_unknown_strategy_lists_registered_names():
    msg = err(["strategy=nope"])
    assert "'nope'" in msg
    for name in STRATEGIES.names():
        assert name in msg
    msg = err(["strategies=[random, nope]"])
    assert "'nope'" in msg and "random" in msg


def test_unknown_components_list_choices():
    msg = err(["executor=rayy"])
    assert "'rayy'" in msg and "did you mean 'ray'" in msg
    for name in EXECUTORS.names():
        assert name in msg
    msg = err(["tracking=nope"])
    assert "mlflow" in msg and "none" in msg
    msg = err(["space=huge"])
    assert "'huge'" in msg and "scratch" in msg and "paper" in msg


@pytest.mark.parametrize("word", ["foo", "=3", "a..b=1", "budget"])
def test_bad_override_syntax(word):
    with pytest.raises(ConfigError) as e:
        parse_overrides([word])
    assert repr(word) in str(e.value) and "key=value" in str(e.value)


def test_config_dir_is_the_repository_configs():
    assert CONFIG_DIR == Path(__file__).resolve().parent.parent / "configs"


def test_readme_reference_lists_every_key():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for key, default, _ in config_reference():
        assert f"| `{key}` | `{default}` |" in readme, key
