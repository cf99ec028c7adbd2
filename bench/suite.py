"""Suite files (TOML) -> validated, expanded cells.

Validation happens here, before any compute; everything downstream trusts the
cells. A suite holds one experiment (top-level [task], [model], [optimizer],
[[mitigation]]) or several ([[experiment]] tables, whose sections override the
top-level ones key by key; a section that names another task, family or
optimiser starts from that one's defaults). Any scalar key of task/model/optimizer/mitigation
may be a list: a grid axis.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import itertools
import json
import tomllib
import typing
from pathlib import Path

from bench import build, optim
from models import FAMILIES
from tasks import TASKS

SETTINGS = {  # [suite] key -> (type, default)
    "name": (str, None),
    "description": (str, ""),
    "seeds": (int, 8),
    "steps": (int, None),  # None: the task's DEFAULT_STEPS
    "divergence_factor": (float, 10.0),
    "smoothing": (float, 0.9),
    "early_stop": (bool, True),  # a converged seed stops training (final numbers at convergence)
    "chunk_steps": (int, 100),
    "trace_points": (int, 100),
    "probe": (bool, True),  # record gradient diagnostics at initialisation with every cell
}
EXPERIMENT_KEYS = ("name", "description", "seeds", "steps", "early_stop", "task", "model", "optimizer", "mitigation")
CLAIM_KEYS = ("id", "title", "text", "comparison")
COMPARISON_KEYS = ("experiment", "regime", "baseline", "variant", "metric", "expect")


class SuiteError(Exception):
    """Bad input: names the file, the key and what is allowed."""

    def __init__(self, path, key: str, message: str):
        super().__init__(f"{path}: {key}: {message}")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One configuration to train: `config` is canonical (defaults filled), `plan` is effective."""

    cell_id: str
    suite: str
    experiment: str
    label: str
    config: dict
    plan: dict


@dataclasses.dataclass(frozen=True)
class Suite:
    """A validated suite: its settings and its cells in file order."""

    path: str
    name: str
    settings: dict
    experiments: list[dict]
    cells: list[Cell]
    claims: list[dict]


def _suggest(value, allowed) -> str:
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _choose(path, key, value, allowed):
    if value not in allowed:
        raise SuiteError(path, key, f"{value!r} is not allowed; allowed: {', '.join(map(str, allowed))}"
                         f"{_suggest(value, allowed)}")


def _check_type(path, key, value, typ):
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and typ is not bool or not isinstance(value, typ):
        raise SuiteError(path, key, f"expected {typ.__name__}, got {type(value).__name__} {value!r}")
    return value


def _check_keys(path, prefix, table, allowed):
    for key in table:
        if key not in allowed:
            raise SuiteError(path, f"{prefix}.{key}", f"unknown key; allowed: {', '.join(allowed)}"
                             f"{_suggest(key, allowed)}")


def _axis(path, key, value, typ):
    """A key's values as a list (a grid axis when the suite gave a list)."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise SuiteError(path, key, "an empty list gives no cells")
    return [_check_type(path, key, v, typ) for v in values]


def _dataclass_axes(path, prefix, table, config_cls, choices):
    """Validates a table against a Config dataclass; returns key -> list of values."""
    hints = typing.get_type_hints(config_cls)
    fields = [f.name for f in dataclasses.fields(config_cls)]
    _check_keys(path, prefix, table, fields)
    axes = {}
    for key in fields:
        default = getattr(config_cls(), key)
        values = _axis(path, f"{prefix}.{key}", table.get(key, default), hints[key])
        for v in values:
            if key in choices:
                _choose(path, f"{prefix}.{key}", v, choices[key])
        axes[key] = values
    return axes


def _make_config(path, prefix, config_cls, values):
    try:
        return dataclasses.asdict(config_cls(**values))
    except ValueError as e:
        raise SuiteError(path, prefix, str(e)) from None


def _named(path, section, table, key, registry):
    if key not in table:
        raise SuiteError(path, f"{section}.{key}", f"missing; allowed: {', '.join(registry)}")
    if not isinstance(table[key], str):
        raise SuiteError(path, f"{section}.{key}", "must be one name (grid over experiments instead)")
    _choose(path, f"{section}.{key}", table[key], list(registry))
    return table[key]


def _product(axes: dict) -> list[dict]:
    keys = list(axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]


def _optimizer_axes(path, table):
    name = _named(path, "optimizer", table, "name", optim.OPTIMIZERS)
    defaults = {"lr": 0.01, "warmup_steps": 0, **optim.optimizer_defaults(name)}
    _check_keys(path, "optimizer", {k: v for k, v in table.items() if k != "name"}, defaults)
    axes = {k: _axis(path, f"optimizer.{k}", table.get(k, d), type(d)) for k, d in defaults.items()}
    if any(lr <= 0 for lr in axes["lr"]):
        raise SuiteError(path, "optimizer.lr", "must be > 0")
    return name, axes


def _mitigation_axes(path, key, table):
    name = _named(path, key, table, "name", optim.MITIGATIONS)
    spec = optim.MITIGATIONS[name]
    _check_keys(path, key, {k: v for k, v in table.items() if k != "name"}, spec.params)
    axes = {}
    for param, default in spec.params.items():
        if param not in table and default is optim.REQUIRED:
            raise SuiteError(path, f"{key}.{param}", f"required by mitigation {name!r}")
        value = table.get(param, default)
        is_axis = isinstance(value, list) and (param not in spec.lists or all(isinstance(v, list) for v in value))
        axes[param] = value if is_axis else [value]
        for v in axes[param]:
            if name in _TRACED_MITIGATIONS and not (isinstance(v, (int, float)) and v > 0):
                raise SuiteError(path, f"{key}.{param}", f"must be a number > 0, got {v!r}")
    return name, axes


_TRACED_MITIGATIONS = optim.TRACED_MITIGATIONS  # mitigations whose parameters are traced numbers


def _plan(path, key, config) -> dict:
    """Applies the mitigation to the baseline and validates the result."""
    plan = {"task": config["task"], "model": copy.deepcopy(config["model"]),
            "optimizer": copy.deepcopy(config["optimizer"]), "transforms": [], "skip_nonfinite": 0,
            "aux_losses": [], "loss_scaling": None}
    mitigation = config["mitigation"]
    name = mitigation["name"]
    try:
        optim.MITIGATIONS[name].apply(plan, {k: v for k, v in mitigation.items() if k != "name"})
    except ValueError as e:
        raise SuiteError(path, key, f"mitigation {name!r}: {e}") from None
    family = FAMILIES[plan["model"]["family"]]
    model_table = {k: v for k, v in plan["model"].items() if k != "family"}
    extra = set(model_table) - {f.name for f in dataclasses.fields(family.Config)}
    if extra:
        raise SuiteError(path, key, f"mitigation {name!r} does not apply to family "
                         f"{plan['model']['family']!r} (it has no key {sorted(extra)[0]!r})")
    axes = _dataclass_axes(path, f"{key} ({name})", model_table, family.Config, family.Config.CHOICES)
    if any(len(v) > 1 for v in axes.values()):
        raise SuiteError(path, key, "a mitigation's model keys take one value each here")
    plan["model"] = {"family": plan["model"]["family"],
                     **_make_config(path, key, family.Config, {k: v[0] for k, v in axes.items()})}
    if plan["optimizer"]["name"] not in optim.OPTIMIZERS:
        _choose(path, f"{key}.optimizer", plan["optimizer"]["name"], list(optim.OPTIMIZERS))
    try:
        build.check(plan["task"], plan["model"])
    except (ValueError, OSError) as e:
        raise SuiteError(path, f"task {plan['task']['name']!r} with family {plan['model']['family']!r}",
                         str(e)) from None
    return plan


def canonical_section(source, section: str, table: dict) -> dict:
    """One validated `[task]` or `[model]` table (no grid axes) with every default filled in."""
    name_key, registry = {"task": ("name", TASKS), "model": ("family", FAMILIES)}[section]
    name = _named(source, section, table, name_key, registry)
    cls = registry[name].Config
    axes = _dataclass_axes(source, section, {k: v for k, v in table.items() if k != name_key}, cls,
                           getattr(cls, "CHOICES", {}))
    for key, values in axes.items():
        if len(values) > 1:
            raise SuiteError(source, f"{section}.{key}", "takes one value here")
    return {name_key: name, **_make_config(source, section, cls, {k: v[0] for k, v in axes.items()})}


def cell_id(config: dict) -> str:
    """Stable id: a hash of the canonical config (never of results)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def _mitigation_label(m: dict) -> str:
    """name(k=v,...); a list of mitigation tables (combo's `apply`) reads name(...)+name(...)."""
    parts = []
    for k, v in m.items():
        if k == "name" or v is None:
            continue
        if isinstance(v, list) and v and all(isinstance(t, dict) for t in v):
            parts.append("+".join(_mitigation_label(t) for t in v))
        else:
            parts.append(f"{k}={v}")
    return m["name"] + (f"({','.join(parts)})" if parts else "")


def _label(config, varying) -> str:
    parts = [_mitigation_label(config["mitigation"])]
    parts += [f"{key.split('.')[-1]}={_lookup(config, key)}" for key in varying]
    return " ".join(parts)


def _lookup(config, dotted):
    section, key = dotted.split(".")
    return config[section][key]


def _expand(path, settings, exp, index) -> list[Cell]:
    where = f"experiment[{index}]" if index is not None else "suite"
    task_name = _named(path, "task", exp["task"], "name", TASKS)
    task_mod = TASKS[task_name]
    task_axes = _dataclass_axes(path, "task", {k: v for k, v in exp["task"].items() if k != "name"},
                                task_mod.Config, getattr(task_mod.Config, "CHOICES", {}))
    family = _named(path, "model", exp["model"], "family", FAMILIES)
    model_cls = FAMILIES[family].Config
    model_axes = _dataclass_axes(path, "model", {k: v for k, v in exp["model"].items() if k != "family"},
                                 model_cls, model_cls.CHOICES)
    opt_name, opt_axes = _optimizer_axes(path, exp["optimizer"])
    mitigations = exp.get("mitigation", [{"name": "none"}])
    if not isinstance(mitigations, list) or not mitigations:
        raise SuiteError(path, "mitigation", "expected one or more [[mitigation]] tables")
    seeds = _check_type(path, f"{where}.seeds", exp.get("seeds", settings["seeds"]), int)
    steps = exp.get("steps", settings["steps"]) or task_mod.DEFAULT_STEPS
    steps = _check_type(path, f"{where}.steps", steps, int)
    if seeds < 1 or steps < 1:
        raise SuiteError(path, f"{where}.seeds", "seeds and steps must be >= 1")
    varying = [f"{s}.{k}" for s, axes in (("task", task_axes), ("model", model_axes), ("optimizer", opt_axes))
               for k, v in axes.items() if len(v) > 1]
    cells = []
    for m_index, m_table in enumerate(mitigations):
        m_key = f"mitigation[{m_index}]"
        m_name, m_axes = _mitigation_axes(path, m_key, m_table)
        for t, m, o, mp in itertools.product(_product(task_axes), _product(model_axes), _product(opt_axes),
                                             _product(m_axes)):
            config = {
                "task": {"name": task_name, **_make_config(path, "task", task_mod.Config, t)},
                "model": {"family": family, **_make_config(path, "model", model_cls, m)},
                "optimizer": {"name": opt_name, **o},
                "mitigation": {"name": m_name, **mp},
                "seeds": seeds,
                "steps": steps,
                "divergence_factor": settings["divergence_factor"],
                "smoothing": settings["smoothing"],
                "early_stop": _check_type(path, f"{where}.early_stop", exp.get("early_stop", settings["early_stop"]),
                                          bool),
            }
            plan = _plan(path, m_key, config)
            cells.append(Cell(cell_id(config), settings["name"], exp["name"], _label(config, varying), config, plan))
    return cells


def load(path, seeds: int | None = None, steps: int | None = None) -> Suite:
    """Reads, validates and expands a suite file; raises SuiteError on bad input."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SuiteError(path, "-", "no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise SuiteError(path, "-", f"not valid TOML: {e}") from None
    _check_keys(path, "top level", raw, ("suite", "task", "model", "optimizer", "mitigation", "experiment", "claim"))
    table = raw.get("suite", {})
    _check_keys(path, "suite", table, SETTINGS)
    settings = {k: (_check_type(path, f"suite.{k}", table[k], t) if k in table else d)
                for k, (t, d) in SETTINGS.items()}
    if settings["name"] is None:
        raise SuiteError(path, "suite.name", "missing; give the suite a name")
    settings["seeds"] = seeds or settings["seeds"]
    settings["steps"] = steps or settings["steps"]
    if not settings["divergence_factor"] > 1 or not 0 <= settings["smoothing"] < 1:
        raise SuiteError(path, "suite", "divergence_factor must be > 1 and smoothing in [0, 1)")
    if settings["chunk_steps"] < 1 or settings["trace_points"] < 2:
        raise SuiteError(path, "suite", "chunk_steps must be >= 1 and trace_points >= 2")
    base = {k: raw[k] for k in ("task", "model", "optimizer") if k in raw}
    if "mitigation" in raw:
        base["mitigation"] = raw["mitigation"]
    experiments = raw.get("experiment") or [{"name": settings["name"]}]
    cells, resolved = [], []
    for i, exp in enumerate(experiments):
        index = i if "experiment" in raw else None
        _check_keys(path, f"experiment[{i}]", exp, EXPERIMENT_KEYS)
        merged = {"name": exp.get("name", f"experiment{i}"), **{k: v for k, v in exp.items() if k != "name"}}
        for section, name_key in (("task", "name"), ("model", "family"), ("optimizer", "name")):
            inherited, own = base.get(section, {}), exp.get(section, {})
            if name_key in own and own[name_key] != inherited.get(name_key):
                inherited = {}  # another task / family / optimiser: its own defaults, not the top level's keys
            merged[section] = {**inherited, **own}
            if not merged[section]:
                raise SuiteError(path, section, "missing section")
        merged.setdefault("mitigation", base.get("mitigation", [{"name": "none"}]))
        resolved.append(merged)
        cells += _expand(path, settings, merged, index)
    seen: dict[str, Cell] = {}
    for c in cells:
        if c.cell_id in seen:
            raise SuiteError(path, "experiment", f"{c.label!r} of experiment {c.experiment!r} is the same cell as "
                             f"{seen[c.cell_id].label!r} of {seen[c.cell_id].experiment!r}; compare within one "
                             "experiment instead")
        seen[c.cell_id] = c
    claims = _claims(path, raw.get("claim", []), cells, settings)
    return Suite(str(path), settings["name"], settings, resolved, cells, claims)


def _claims(path, tables, cells, settings) -> list[dict]:
    """Validates `[[claim]]` tables: every comparison names an experiment and selects cells in it."""
    from bench.claims import METRICS, matches

    claims = []
    for i, claim in enumerate(tables):
        key = f"claim[{i}]"
        _check_keys(path, key, claim, CLAIM_KEYS)
        if "id" not in claim or not claim.get("comparison"):
            raise SuiteError(path, key, "needs an id and at least one [[claim.comparison]]")
        for j, comp in enumerate(claim["comparison"]):
            ckey = f"{key}.comparison[{j}]"
            _check_keys(path, ckey, comp, COMPARISON_KEYS)
            for field in ("experiment", "baseline", "variant", "metric", "expect"):
                if field not in comp:
                    raise SuiteError(path, f"{ckey}.{field}", "missing")
            in_exp = [c for c in cells if c.experiment == comp["experiment"]]
            if not in_exp:
                _choose(path, f"{ckey}.experiment", comp["experiment"], sorted({c.experiment for c in cells}))
            _choose(path, f"{ckey}.metric", comp["metric"], list(METRICS))
            _choose(path, f"{ckey}.expect", comp["expect"], ["higher", "lower"])
            if comp["metric"] == "probe_growth" and not settings["probe"]:
                raise SuiteError(path, f"{ckey}.metric", "probe_growth needs suite.probe = true")
            for side in ("baseline", "variant"):
                selector = comp[side]
                if not isinstance(selector, dict) or not any(matches(c.config, selector) for c in in_exp):
                    raise SuiteError(path, f"{ckey}.{side}", f"{selector!r} selects no cell of experiment "
                                     f"{comp['experiment']!r} (it is matched against the cells' mitigation)")
        claims.append({**claim, "id": str(claim["id"])})
    return claims
