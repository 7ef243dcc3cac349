"""Typed, frozen configuration: YAML files plus ``key=value`` overrides.

A configuration is built in layers, later layers winning::

    configs/default.yaml                      the defaults (the same as the model defaults)
    config=experiment/quick  | --config FILE  a ready experiment (any YAML file)
    strategy=gp task=cifar10 fidelity=paper   group choices: configs/<group>/<name>.yaml
    budget=200 strategy.options.lr=1e-4       dotted overrides, values parsed as YAML

and validated into :class:`Config`, a tree of frozen pydantic models in which an
unknown key or a bad value is an error.  Errors are raised as :class:`ConfigError`, whose
one-line message names the offending key and lists the valid choices; the CLI prints it
and exits non-zero.

A *group* (``strategy``, ``task``, ``fidelity``, ``space``, ``executor``, ``tracking``) set
to a plain name selects ``configs/<group>/<name>.yaml`` when that file exists, else
``{name: <name>}``; the whole group is replaced (options of the previous choice do not
leak into the new one).  ``strategies=[random, gp]`` (for ``searchlab compare``) names
strategy choices the same way.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

_M = TypeVar("_M", bound=BaseModel)

__all__ = [
    "CONFIG_DIR", "Config", "ConfigError", "ExecutorConfig", "FidelityConfig", "GROUPS",
    "SpaceConfig", "StrategyConfig", "TaskConfig", "TrackingConfig", "config_reference",
    "flatten", "load_config", "parse_model", "parse_overrides", "strategy_choices",
]


class ConfigError(ValueError):
    """A configuration problem, with a one-line message naming the key and valid choices."""


def _default_config_dir() -> Path:
    env = os.environ.get("SEARCHLAB_CONFIGS")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    # installed: the repository's configs/ ships as package data searchlab/configs/
    # (pyproject.toml maps it); a source checkout or editable install: <repo>/configs/
    for cand in (here / "configs", here.parent / "configs"):
        if (cand / "default.yaml").is_file():
            return cand
    return here.parent / "configs"


#: Where ``configs/`` lives: ``$SEARCHLAB_CONFIGS``, else the ``configs/`` installed with
#: the package (the repository's ``configs/`` in a checkout).
CONFIG_DIR: Path = _default_config_dir()


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class StrategyConfig(_Frozen):
    """Which search strategy, and its options."""

    name: str = Field("random", description="strategy registered in searchlab.strategy.STRATEGIES")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="keyword options of the strategy (see configs/strategy/)")


class TaskConfig(_Frozen):
    """The child task that scores rules."""

    name: str = Field("mnist1d", description="task registered in searchlab.tasks (mnist1d, cifar10, rosenbrock, ensemble) or toy")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="keyword options of the task, e.g. data_dir for cifar10")


class FidelityConfig(_Frozen):
    """How much training one evaluation gets (:mod:`searchlab.evaluation.fidelity`)."""

    name: str = Field("averaged", description="evaluation protocol: paper (published), fast or smoke (reductions), averaged (low-noise rewards for comparisons, ~1.85x fast), compare (its predecessor, ~1.7x fast)")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="overrides of the fidelity's fields (e.g. final_epochs: 5); the name in logs says so")


class SpaceConfig(_Frozen):
    """The search space (DSL vocabulary subset, depth, paper 4.1 constraints)."""

    name: str | None = Field(None, description="named search space: paper, scratch (no adam/rmsprop operands), small, multiscale or tabular (null: the task's space, scratch; task=table: tabular)")
    depth: int | None = Field(None, ge=1, le=4, description="groups per rule, 1..4 (null: the space's default)")
    distinct_operands: bool | None = Field(None, description="the two operands of a group differ (null: space default)")
    no_final_add: bool | None = Field(None, description="the last binary function is not addition (null: space default)")
    reuse_output: bool | None = Field(None, description="later groups read the previous output (null: space default)")

    def overrides(self) -> dict[str, Any]:
        """The fields to override on the named space (those not null)."""
        return {k: v for k, v in self.model_dump().items() if k != "name" and v is not None}


class ExecutorConfig(_Frozen):
    """Where evaluations run (ARCHITECTURE.md, rule 9)."""

    name: str = Field("serial", description="executor registered in searchlab.executors (serial, process, ray)")
    workers: int = Field(1, ge=1, description="parallel evaluations")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="executor options, e.g. address for ray ('auto' or host:port)")


class TrackingConfig(_Frozen):
    """Where samples are logged, from the main process only (ARCHITECTURE.md, rule 10)."""

    name: str = Field("mlflow", description="tracker: mlflow, none (or memory, for tests)")
    uri: str | None = Field(None, description="MLflow tracking URI (null: $MLFLOW_TRACKING_URI, else sqlite:///<run_dir>/mlflow.db)")
    experiment: str | None = Field(None, description="MLflow experiment name (null: one new experiment per search or comparison)")
    child_runs: bool | None = Field(None, description="log every sample as a nested MLflow run (false: only the parent's table/metrics; null: true, except on task=table, where a nested run per lookup would cost more than the search)")
    background: bool = Field(True, description="write to MLflow from a background thread while evaluations run")


class RescoreConfig(_Frozen):
    """Re-scoring after a search: its best rules on fresh evaluation seeds, with test."""

    top_k: int = Field(3, ge=0, description="best rules re-scored after each search (0: none)")
    seeds: int | None = Field(None, ge=1, description="fresh evaluation seeds per re-scored rule, disjoint from the search's (null: 5; task=table: 1, the table's record the search did not see)")


class Config(_Frozen):
    """A search (``searchlab search``) or comparison (``searchlab compare``)."""

    strategy: StrategyConfig = Field(default_factory=StrategyConfig, description="search strategy (group: configs/strategy/)")
    task: TaskConfig = Field(default_factory=TaskConfig, description="child task (group: configs/task/)")
    fidelity: FidelityConfig = Field(default_factory=FidelityConfig, description="evaluation protocol (group: configs/fidelity/)")
    space: SpaceConfig = Field(default_factory=SpaceConfig, description="search space")
    budget: int = Field(100, ge=1, description="unique evaluations per search (cache hits are free)")
    batch_size: int = Field(10, ge=1, description="rules asked from the strategy at a time")
    seed: int = Field(0, ge=0, description="strategy seed")
    eval_seed: int = Field(0, ge=0, description="seed of child training (the same for every strategy, for fair comparisons)")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig, description="where evaluations run")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow logging")
    rescore: RescoreConfig = Field(default_factory=RescoreConfig, description="re-scoring of the best rules on fresh seeds")
    run_dir: str = Field("runs", description="directory of the local MLflow store, caches and outputs")
    out: str | None = Field(None, description="output folder (null: <run_dir>/<experiment name>)")
    quiet: bool = Field(False, description="no progress bars (for CI); messages still go to stderr")
    resume: bool | str = Field(False, description="search: a run directory to continue after a crash (printed when a search starts); compare: true skips runs already finished in out and continues interrupted ones")
    top_k: int = Field(5, ge=1, description="best rules kept in reports and artifacts")
    strategies: tuple[str, ...] = Field((), description="compare: strategy choices (empty: just `strategy`)")
    seeds: tuple[int, ...] = Field((), description="compare: seeds, or a count n for 0..n-1 (empty: just `seed`)")
    threshold: float | None = Field(None, description="compare: reward threshold for 'evaluations to reach' (null: median final best reward)")
    report: str | None = Field(None, description="compare: re-report finished runs from this folder or MLflow experiment, without running")
    reps: int = Field(1000, ge=10, description="compare: bootstrap resamples of the report's statistics (rliable)")
    searches: int | None = Field(None, ge=1, description="compare: searches run at once on a lookup task (table, toy), each in its own process (null: workers=N if N > 1, else on table one per core, at most 8, on toy 1); other tasks run one search at a time (their workers evaluate its rules)")
    references: tuple[str, ...] = Field((), description="compare: extra reference rows beside SGD/momentum/Adam/RMSProp/PowerSign/AddSign: rule texts, name=rule, or learned:<file or kind>")

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_count(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            if v < 1:
                raise ValueError("a seed count must be >= 1")
            return tuple(range(v))
        return v

    @field_validator("strategies", "references", mode="before")
    @classmethod
    def _one_strategy(cls, v: Any) -> Any:
        return (v,) if isinstance(v, str) else v

    # --- derived names -------------------------------------------------------------
    @property
    def space_name(self) -> str:
        """The space searched: ``space.name``, or the task's own (``tabular`` for
        ``task=table``, whose table holds exactly that space; ``scratch`` otherwise)."""
        from .evaluators import default_space

        return self.space.name if self.space.name is not None else default_space(self.task.name)

    @property
    def child_runs(self) -> bool:
        """``tracking.child_runs``, or its default: one nested MLflow run per sample,
        except on ``task=table`` (~10 ms per nested run against microseconds per lookup)."""
        from .evaluators import TABLE_TASK

        if self.tracking.child_runs is not None:
            return self.tracking.child_runs
        return self.task.name != TABLE_TASK

    @property
    def rescore_seeds(self) -> int:
        """Fresh seeds per re-scored rule: ``rescore.seeds``, or 5 (1 on ``task=table``,
        whose rows hold 2-3 recorded seeds: one of them is the search's)."""
        from .evaluators import TABLE_TASK

        if self.rescore.seeds is not None:
            return self.rescore.seeds
        return 1 if self.task.name == TABLE_TASK else 5

    @property
    def fidelity_name(self) -> str:
        """The fidelity's name as logged: ``fast``, or ``fast+epochs=2`` when overridden."""
        if not self.fidelity.options:
            return self.fidelity.name
        extra = ",".join(f"{k}={v}" for k, v in sorted(self.fidelity.options.items()))
        return f"{self.fidelity.name}+{extra}"

    def run_name(self, label: str | None = None) -> str:
        """A search's name, encoding its main settings (ARCHITECTURE.md, rule 4)."""
        return f"{label or self.strategy.name}-{self.task.name}-{self.fidelity_name}-s{self.seed}"


#: Config fields that are groups: a plain name selects ``configs/<group>/<name>.yaml``.
GROUPS: tuple[str, ...] = ("strategy", "task", "fidelity", "space", "executor", "tracking")
#: Keys only ``searchlab compare`` uses (``searchlab search`` rejects them on its command line).
COMPARE_KEYS: tuple[str, ...] = ("strategies", "seeds", "threshold", "report", "reps",
                                  "references", "searches")


# --- overrides ---------------------------------------------------------------------
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z_][A-Za-z0-9_\-]*)*$")


_SCI_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _numbers(value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; read it as the float users mean."""
    if isinstance(value, str) and _SCI_RE.match(value):
        return float(value)
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    return value


def _parse_value(text: str) -> Any:
    """A value as YAML (``3`` -> int, ``1e-4`` -> float, ``[a,b]`` -> list, ``null`` ->
    None), else the string itself."""
    if text == "":
        return ""
    try:
        return _numbers(yaml.safe_load(text))
    except yaml.YAMLError:
        return text


def parse_overrides(items: Iterable[str]) -> list[tuple[str, Any]]:
    """Parse ``key=value`` words into ``(dotted key, value)`` pairs, in order."""
    pairs: list[tuple[str, Any]] = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not _KEY_RE.match(key):
            raise ConfigError(f"bad override {item!r}: expected key=value with a dotted key "
                              "(e.g. budget=200 or strategy.options.lr=1e-4)")
        pairs.append((key, _parse_value(raw.strip())))
    return pairs


# --- YAML files --------------------------------------------------------------------
def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read config file {str(path)!r}: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {str(path)!r}{where} is not valid YAML: "
                          f"{getattr(e, 'problem', None) or e}") from None
    if data is None:
        return {}
    data = _numbers(data)
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys, "
                          f"not {type(data).__name__}")
    return data


def _choices(config_dir: Path, group: str) -> list[str]:
    d = config_dir / group
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def _resolve_config_file(name: str, config_dir: Path) -> Path:
    """``experiment/quick`` -> ``configs/experiment/quick.yaml``; paths are taken as is."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    for cand in (config_dir / f"{name}.yaml", config_dir / name, p):
        if cand.is_file():
            return cand
    ready = [f"experiment/{n}" for n in _choices(config_dir, "experiment")]
    raise ConfigError(f"unknown config {name!r}: no file {str(config_dir / (name + '.yaml'))!r}; "
                      f"ready experiments: {', '.join(ready) or '(none)'}")


def _group_choice(group: str, name: str, config_dir: Path) -> dict[str, Any]:
    """The mapping a group choice such as ``strategy=gp`` stands for."""
    path = config_dir / group / f"{name}.yaml"
    if path.is_file():
        data = _read_yaml(path)
        data.setdefault("name", name)
        return data
    return {"name": name}


def _expand_groups(data: dict[str, Any], config_dir: Path) -> dict[str, Any]:
    out = dict(data)
    for group in GROUPS:
        v = out.get(group)
        if isinstance(v, str):
            out[group] = _group_choice(group, v, config_dir)
    return out


def _merge(base: dict[str, Any], new: Mapping[str, Any], replace_groups: bool) -> dict[str, Any]:
    """Deep merge ``new`` into ``base``; group mappings from a new layer replace the old."""
    out = dict(base)
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) and not (
                replace_groups and k in GROUPS and "name" in v):
            out[k] = _merge(dict(out[k]), v, replace_groups=False)
        else:
            out[k] = v
    return out


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None or not isinstance(child, dict):
            if child is not None and not isinstance(child, dict):
                raise ConfigError(f"bad override {key}={value!r}: "
                                  f"{'.'.join(parts[:i + 1])!r} is a value, not a group of keys")
            child = {}
        node[part] = child = dict(child)
        node = child
    node[parts[-1]] = value


# --- validation errors -> one line ---------------------------------------------------
def _fields_at(loc: Sequence[Any], root: type[BaseModel] | None = None) -> list[str]:
    model: Any = root or Config
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def _format_error(err: ValidationError, data: Mapping[str, Any],
                  root: type[BaseModel] | None = None) -> str:
    errors = err.errors()
    first = errors[0]
    loc = [p for p in first["loc"] if not isinstance(p, int)]
    key = ".".join(str(p) for p in loc)
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    if first["type"] == "extra_forbidden":
        valid = _fields_at(loc, root)
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        where = f" under {'.'.join(map(str, loc[:-1]))!r}" if len(loc) > 1 else ""
        return f"unknown config key {key!r}{hint}; valid keys{where}: {', '.join(valid)}{more}"
    value = first.get("input")
    msg = first["msg"]
    return f"bad value for {key!r}: {value!r} ({msg}){more}"


def _validate_names(cfg: Config, config_dir: Path) -> None:
    """Check component names against their registries (lists the valid choices)."""
    from .executors import EXECUTORS
    from .tracking import TRACKERS

    def check(key: str, name: str, names: Sequence[str], group: str | None = None) -> None:
        if name not in names:
            # config files (e.g. nos-ppo-paper) are choices too, when they name a valid one
            files = [n for n in _choices(config_dir, group) if n not in names
                     and _group_choice(group, n, config_dir).get("name") in names] if group else []
            valid = sorted(set(names) | set(files))
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown {key} {name!r}{hint}; valid: {', '.join(valid)}")

    from .strategy import STRATEGIES   # names only: no strategy module is imported

    strategy_names = STRATEGIES.names()
    check("strategy", cfg.strategy.name, strategy_names, "strategy")
    for label, sc in strategy_choices(cfg, config_dir):
        if sc.name not in strategy_names:
            check("strategy", label if label == sc.name else sc.name, strategy_names, "strategy")
    for key, name, names in _registry_names(cfg):
        check(key, name, names, key)
    check("executor", cfg.executor.name, EXECUTORS.names(), "executor")
    check("tracker", cfg.tracking.name, TRACKERS.names())
    from .dsl import SPACES
    check("space", cfg.space_name, sorted(SPACES))


def _registry_names(cfg: Config) -> list[tuple[str, str, list[str]]]:
    """Task and fidelity names (light modules: no task or training code is imported)."""
    from .evaluation.fidelity import FIDELITIES
    from .evaluators import LOOKUP_TASKS, task_names

    out = [("task", cfg.task.name, task_names())]
    if cfg.task.name not in LOOKUP_TASKS:
        out.append(("fidelity", cfg.fidelity.name, FIDELITIES.names()))
    return out


# --- public entry points -----------------------------------------------------------
def load_config(overrides: Iterable[str] = (), config_file: str | os.PathLike[str] | None = None,
                *, data: Mapping[str, Any] | None = None,
                config_dir: str | os.PathLike[str] | None = None,
                check_names: bool = True) -> Config:
    """Build a :class:`Config` from ``configs/default.yaml``, an optional experiment file
    (``config_file``: a path or a name like ``experiment/quick``) or mapping (``data``),
    group choices and dotted ``key=value`` overrides; raise :class:`ConfigError` on any
    unknown key, bad value or unknown component name."""
    cdir = Path(config_dir) if config_dir is not None else CONFIG_DIR
    pairs = parse_overrides(overrides)
    merged: dict[str, Any] = {}
    default = cdir / "default.yaml"
    if default.is_file():
        merged = _expand_groups(_read_yaml(default), cdir)
    if data is not None:
        merged = _merge(merged, _expand_groups(dict(data), cdir), replace_groups=True)
    files = [str(config_file)] if config_file is not None else []
    files += [v for k, v in pairs if k == "config"]
    for f in files:
        if not isinstance(f, str):
            raise ConfigError(f"bad value for 'config': {f!r} (expected a file or a name like experiment/quick)")
        layer = _expand_groups(_read_yaml(_resolve_config_file(f, cdir)), cdir)
        merged = _merge(merged, layer, replace_groups=True)
    # group choices first (Hydra's order), then dotted overrides in the order given
    for key, value in pairs:
        if key in GROUPS and isinstance(value, str):
            merged[key] = _group_choice(key, value, cdir)
    for key, value in pairs:
        if key == "config" or (key in GROUPS and isinstance(value, str)):
            continue
        _set_dotted(merged, _shorthand(key), value)
    try:
        cfg = Config.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(_format_error(e, merged)) from None
    ray_keys = [k for k, _ in pairs if k.startswith("ray.")]
    if ray_keys and cfg.executor.name != "ray":
        raise ConfigError(f"{ray_keys[0]!r} applies to executor=ray, not executor="
                          f"{cfg.executor.name!r}; add executor=ray")
    if check_names:
        _validate_names(cfg, cdir)
    return cfg


def _shorthand(key: str) -> str:
    """Short override keys: ``workers=8`` is ``executor.workers=8``; ``ray.address=auto``
    (any ``ray.<option>``) is ``executor.options.address=auto``."""
    if key == "workers":
        return "executor.workers"
    if key.startswith("ray."):
        return "executor.options." + key[len("ray."):]
    return key


def parse_model(model: type[_M], overrides: Iterable[str]) -> _M:
    """A small frozen model (e.g. a command's options) from ``key=value`` words, with the
    same one-line errors as :func:`load_config`."""
    data: dict[str, Any] = {}
    for key, value in parse_overrides(overrides):
        _set_dotted(data, key, value)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e, data, model)) from None


def strategy_choices(cfg: Config, config_dir: str | os.PathLike[str] | None = None
                     ) -> list[tuple[str, StrategyConfig]]:
    """The strategies a comparison runs, as ``(label, StrategyConfig)``: every entry of
    ``strategies`` resolved through ``configs/strategy/``, or just ``(name, strategy)``."""
    if not cfg.strategies:
        return [(cfg.strategy.name, cfg.strategy)]
    cdir = Path(config_dir) if config_dir is not None else CONFIG_DIR
    out = []
    for label in cfg.strategies:
        try:
            out.append((label, StrategyConfig.model_validate(_group_choice("strategy", label, cdir))))
        except ValidationError as e:
            raise ConfigError(f"configs/strategy/{label}.yaml: "
                              + _format_error(e, {}).replace("unknown config key", "unknown key")) from None
    return out


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': 1}}`` -> ``{'a.b': 1}`` (for MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_reference(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(key, default, doc)`` for every config key, for ``--help`` and the README."""
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(config_reference(ann, f"{prefix}{name}."))
            continue
        default = field.get_default(call_default_factory=True)
        if isinstance(default, tuple):
            default = list(default)
        text = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
        rows.append((f"{prefix}{name}", text, field.description or ""))
    return rows
