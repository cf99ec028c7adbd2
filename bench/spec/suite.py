"""Suite files (TOML) -> validated, expanded cells.

Validation happens here, before any compute; everything downstream trusts the
cells. Every key is stated once with its type, range and default (a
`gradbench.spec.schema.Key`): the tables below for [suite] and [[experiment]],
bench/spec/claim_schema.py for [[claim]], `gradbench.spec.optim` for optimiser keys and
mitigation parameters, and the model and task Config dataclasses (type hints,
CHOICES, __post_init__) for [model] and [task]. Every float must be finite.

A suite holds one experiment (top-level [task], [model], [optimizer],
[[mitigation]]) or several ([[experiment]] tables, whose sections override the
top-level ones key by key; a section that names another task, family or
optimiser starts from that one's defaults). Any scalar key of
task/model/optimizer/mitigation may be a list: a grid axis. A learning rate
(`[optimizer] lr`, an optimizer mitigation's `lr`) may also be a log-spaced
grid `{ min = 1e-3, max = 1.0, per_decade = 8 }`: n = round(per_decade x
log10(max / min)) and the values 10 ** linspace(log10(min), log10(max), n + 1),
both ends included, each rounded to 12 significant digits. The command line's
--seeds and --steps override the suite's and every experiment's own.

`[[claim]]` tables are validated by bench/spec/claim_schema.py once the cells exist.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import typing
from pathlib import Path

from gradbench.spec import build, optim, plugins
from gradbench.spec.claim_schema import validate_claims
from gradbench.spec.schema import (REQUIRED, Key, SuiteError, check_choice, check_keys, check_table, check_value,
                               slug, suggest)
from gradbench.spec.settings import MAX_RUNS, MAX_SEEDS, SETTINGS, read_toml  # noqa: F401 (MAX_SEEDS: re-exported)
from gradbench.models import FAMILIES, common
from gradbench.tasks import TASKS

# top-level keys of a suite file
TOP_LEVEL = {
    "suite": Key(dict),
    "task": Key(dict, None),
    "model": Key(dict, None),
    "optimizer": Key(dict, None),
    "mitigation": Key(list, None, of=dict, nonempty=True),
    "experiment": Key(list, None, of=dict, nonempty=True),
    "claim": Key(list, [], of=dict),
}
# [[experiment]] keys (None: the top level's)
EXPERIMENT = {
    "name": Key(str, None),
    "description": Key(str, ""),
    "seeds": dataclasses.replace(SETTINGS["seeds"], default=None),
    "steps": dataclasses.replace(SETTINGS["steps"], default=None),
    "early_stop": Key(bool, None),
    "task": Key(dict, None),
    "model": Key(dict, None),
    "optimizer": Key(dict, None),
    "mitigation": TOP_LEVEL["mitigation"],
}


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
    plugins: tuple = ()  # gradbench.spec.plugins.Plugin, as loaded for this suite (suite.json records them)


def _axis(path, key, value, spec: Key):
    """A key's values as a list (a grid axis when the suite gave a list or a log-spaced grid table)."""
    if isinstance(value, list):
        if not value:
            raise SuiteError(path, key, "an empty list gives no cells")
        spec = dataclasses.replace(spec, log_grid=False)  # a grid table inside a list is not a value
        return [check_value(path, key, v, spec) for v in value]
    values = check_value(path, key, value, spec)
    return values if isinstance(values, list) else [values]


def _field_keys(config_cls) -> dict[str, Key]:
    """The Keys of a model or task Config dataclass: its type hints, defaults and CHOICES."""
    hints = typing.get_type_hints(config_cls)
    choices = getattr(config_cls, "CHOICES", {})
    default = config_cls()
    return {f.name: Key(hints[f.name], getattr(default, f.name), choices=choices.get(f.name))
            for f in dataclasses.fields(config_cls)}


def _dataclass_axes(path, prefix, table, config_cls):
    """Validates a table against a Config dataclass; returns key -> list of values."""
    keys = _field_keys(config_cls)
    check_keys(path, prefix, table, keys)
    return {key: _axis(path, f"{prefix}.{key}", table.get(key, spec.default), spec) for key, spec in keys.items()}


def _make_config(path, prefix, config_cls, values):
    try:
        return dataclasses.asdict(config_cls(**values))
    except ValueError as e:
        raise SuiteError(path, prefix, str(e)) from None


def _weight_var_used(path, prefix, given: dict, effective: dict, config_cls):
    """Refuses a weight_var given beside an initialiser that ignores it (it sets its own scale)."""
    if "weight_var" not in given or "init" not in {f.name for f in dataclasses.fields(config_cls)}:
        return
    inits = effective.get("init", config_cls().init)
    inits = inits if isinstance(inits, list) else [inits]
    if inits and all(isinstance(i, str) and i in common.SCALE_FREE for i in inits):
        scaled = ", ".join(n for n in common.INITIALISERS if n not in common.SCALE_FREE and n != "identity")
        raise SuiteError(path, f"{prefix}.weight_var", f"init {inits[0]!r} ignores weight_var (it sets its own "
                         f"scale); drop weight_var or use an init that reads it: {scaled}")


def _named(path, section, table, key, registry):
    if key not in table:
        raise SuiteError(path, f"{section}.{key}", f"missing; allowed: {', '.join(registry)}")
    if not isinstance(table[key], str):
        raise SuiteError(path, f"{section}.{key}", f"must be one name, one of {', '.join(registry)} "
                         "(grid over experiments instead)")
    check_choice(path, f"{section}.{key}", table[key], list(registry))
    return table[key]


def _family_list(value) -> list:
    """model.family as a list: one family, or the arms of a grid over families."""
    return value if isinstance(value, list) else [value]


def _families(path, table) -> list[str]:
    """The experiment's model families: one name, or a list (a grid axis: each family an arm)."""
    value = table.get("family")
    if not isinstance(value, list):
        return [_named(path, "model", table, "family", FAMILIES)]
    if not value:
        raise SuiteError(path, "model.family", "an empty list gives no cells")
    for item in value:
        if not isinstance(item, str):
            raise SuiteError(path, "model.family", f"{item!r} is not allowed; allowed: names of "
                             f"{', '.join(FAMILIES)}")
        check_choice(path, "model.family", item, list(FAMILIES))
    if len(set(value)) < len(value):
        raise SuiteError(path, "model.family", "names a family twice; name each once")
    return list(value)


def _family_axes(path, own: dict, families: list[str]) -> dict[str, dict]:
    """family -> its model key axes; with several families every key given must be a key of each."""
    out = {}
    for family in families:
        cls = FAMILIES[family].Config
        if len(families) > 1:
            fields = {f.name for f in dataclasses.fields(cls)}
            for key in own:
                if key not in fields:
                    raise SuiteError(path, f"model.{key}", f"not a key of family {family!r} (model.family is a list, "
                                     f"so every model key must belong to every family); allowed: "
                                     f"{', '.join(sorted(fields))}")
        out[family] = _dataclass_axes(path, "model", own, cls)
    return out


def _product(axes: dict) -> list[dict]:
    keys = list(axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]


def _size(axes: dict) -> int:
    return math.prod(len(v) for v in axes.values())


def _optimizer_axes(path, table):
    name = _named(path, "optimizer", table, "name", optim.OPTIMIZERS)
    keys = optim.optimizer_keys(name)
    check_keys(path, "optimizer", {k: v for k, v in table.items() if k != "name"}, keys)
    return name, {k: _axis(path, f"optimizer.{k}", table.get(k, spec.default), spec) for k, spec in keys.items()}


def _mitigation_axes(path, key, table, model_table):
    name = _named(path, key, table, "name", optim.MITIGATIONS)
    spec = optim.MITIGATIONS[name]
    params = {k: v for k, v in table.items() if k != "name"}
    check_keys(path, key, params, spec.params)
    axes = {}
    for param, param_spec in spec.params.items():
        if param not in table and param_spec.default is REQUIRED:
            raise SuiteError(path, f"{key}.{param}", f"required by mitigation {name!r}; expected "
                             f"{param_spec.allowed()}")
        value = table.get(param, param_spec.default)
        if param in spec.lists and isinstance(value, list) and not all(isinstance(v, list) for v in value):
            value = [value]  # one list-valued parameter (combo's `apply`), not a grid axis over its items
        axes[param] = [None] if value is None else _axis(path, f"{key}.{param}", value, param_spec)
    if name == "init":
        for family in _family_list(model_table.get("family")):
            if family in FAMILIES:
                _weight_var_used(path, key, params, params, FAMILIES[family].Config)
    return name, axes


def _plan(path, key, config) -> dict:
    """Applies the mitigation to the baseline and validates the result."""
    plan = {"task": config["task"], "model": copy.deepcopy(config["model"]),
            "optimizer": copy.deepcopy(config["optimizer"]), "transforms": [], "skip_nonfinite": 0,
            "aux_losses": [], "loss_scaling": None}
    if "init_perturbation" in config:
        plan["init_perturbation"] = config["init_perturbation"]  # traced: one program for every value
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
    axes = _dataclass_axes(path, f"{key} ({name})", model_table, family.Config)
    if any(len(v) > 1 for v in axes.values()):
        raise SuiteError(path, key, "a mitigation's model keys take one value each here")
    plan["model"] = {"family": plan["model"]["family"],
                     **_make_config(path, key, family.Config, {k: v[0] for k, v in axes.items()})}
    for layers in build.LAYER_KEYS:
        if isinstance(plan["model"].get(layers), int) and plan["model"][layers] > build.MAX_LAYERS:
            raise SuiteError(path, f"model.{layers}", f"{plan['model'][layers]} is beyond the compile-time limit "
                             f"(compiling would take minutes or hang); allowed: at most {build.MAX_LAYERS}")
    try:
        _check_task_size(path, plan["task"])
        build.check(plan["task"], plan["model"])
    except (ValueError, OSError, OverflowError, MemoryError) as e:
        raise SuiteError(path, f"task {plan['task']['name']!r} with family {plan['model']['family']!r}",
                         str(e) or type(e).__name__) from None
    return plan


def _check_task_size(path, task_cfg: dict):
    """Refuses a task with an empty split or a trivial loss that is not above zero (every seed would fail)."""
    import jax
    import numpy as np

    with np.errstate(all="ignore"):
        task = build.make_task(task_cfg)
    key = "task.n_train" if "n_train" in task_cfg else "task"
    empty = [name for name, split in task.data.items() if min(len(a) for a in jax.tree.leaves(split)) == 0]
    if empty:
        raise SuiteError(path, key, f"task {task_cfg['name']!r} has no examples in its {empty[0]!r} split; allowed: "
                         "a task large enough that every split holds examples (more n_train)")
    if not task.trivial_loss > 0 or not math.isfinite(task.trivial_loss):
        raise SuiteError(path, key, f"task {task_cfg['name']!r} has a trivial loss of {task.trivial_loss:g} (the loss "
                         "of its best constant predictor), so no run can be judged against it; allowed: a task whose "
                         "trivial loss is above zero (more n_train, or targets that vary)")


def canonical_section(source, section: str, table: dict) -> dict:
    """One validated `[task]` or `[model]` table (no grid axes) with every default filled in."""
    name_key, registry = {"task": ("name", TASKS), "model": ("family", FAMILIES)}[section]
    name = _named(source, section, table, name_key, registry)
    cls = registry[name].Config
    own = {k: v for k, v in table.items() if k != name_key}
    axes = _dataclass_axes(source, section, own, cls)
    for key, values in axes.items():
        if len(values) > 1:
            raise SuiteError(source, f"{section}.{key}", "takes one value here")
    if section == "model":
        _weight_var_used(source, section, own, own, cls)
    return {name_key: name, **_make_config(source, section, cls, {k: v[0] for k, v in axes.items()})}


def _canonical(value):
    """A config with every -0.0 as 0.0 (one configuration, one id), at any depth."""
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value + 0.0 if isinstance(value, float) else value


def cell_id(config: dict) -> str:
    """Stable id: a hash of the canonical config (never of results)."""
    return hashlib.sha256(json.dumps(_canonical(config), sort_keys=True).encode()).hexdigest()[:16]


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
    return config[section].get(key)


def _expand(path, settings, exp, runs_before: int) -> list[Cell]:
    """The cells of one resolved experiment (sections merged, seeds and steps settled)."""
    task_name = _named(path, "task", exp["task"], "name", TASKS)
    task_mod = TASKS[task_name]
    task_axes = _dataclass_axes(path, "task", {k: v for k, v in exp["task"].items() if k != "name"},
                                task_mod.Config)
    families = _families(path, exp["model"])
    family_axes = _family_axes(path, {k: v for k, v in exp["model"].items() if k != "family"}, families)
    opt_name, opt_axes = _optimizer_axes(path, exp["optimizer"])
    seeds = exp["seeds"]
    steps = check_value(path, f"{exp['where']}.steps", exp["steps"] or task_mod.DEFAULT_STEPS, SETTINGS["steps"])
    model_varying = ["family"] * (len(families) > 1) + list(dict.fromkeys(
        k for axes in family_axes.values() for k, v in axes.items() if len(v) > 1))
    varying = ([f"task.{k}" for k, v in task_axes.items() if len(v) > 1] + [f"model.{k}" for k in model_varying]
               + [f"optimizer.{k}" for k, v in opt_axes.items() if len(v) > 1])
    mitigations = [(f"mitigation[{i}]", *_mitigation_axes(path, f"mitigation[{i}]", m, exp["model"]))
                   for i, m in enumerate(exp["mitigation"])]
    models = [(family, m) for family in families for m in _product(family_axes[family])]  # family-major
    n_cells = _size(task_axes) * len(models) * _size(opt_axes) * sum(_size(a) for _, _, a in mitigations)
    blocks = settings["replicates"]
    if runs_before + n_cells * seeds * blocks > MAX_RUNS:
        raise SuiteError(path, f"{exp['where']}.seeds", f"{n_cells} cells x {seeds} seeds x {blocks} replicate blocks "
                         f"(with the experiments before: {runs_before + n_cells * seeds * blocks} runs) is more than "
                         f"{MAX_RUNS:,} runs; use fewer "
                         "seeds or a coarser grid, or split the suite")
    cells = []
    for block, (m_key, m_name, m_axes) in itertools.product(range(blocks), mitigations):
        for t, (family, m), o, mp in itertools.product(_product(task_axes), models, _product(opt_axes),
                                                       _product(m_axes)):
            config = {
                "task": {"name": task_name, **_make_config(path, "task", task_mod.Config, t)},
                "model": {"family": family, **_make_config(path, "model", FAMILIES[family].Config, m)},
                "optimizer": {"name": opt_name, **o},
                "mitigation": {"name": m_name, **mp},
                "seeds": seeds,
                "steps": steps,
                "divergence_factor": settings["divergence_factor"],
                "collapse_fraction": settings["collapse_fraction"],
                "smoothing": settings["smoothing"],
                "early_stop": exp["early_stop"],
            }
            # Past the first block: replicate_perturbation on top of init_perturbation, so a rerun with
            # --set init_perturbation moves every block, not only the first.
            perturbation = settings["init_perturbation"] + (settings["replicate_perturbation"] if block else 0.0)
            if perturbation > 0 or blocks > 1:  # absent at 0 without blocks: unperturbed cells keep their ids;
                config["init_perturbation"] = perturbation  # with blocks, every block shares one program
            if block:  # block 0 is the cell of a run without blocks (same id, same seeds)
                config.update(replicate=block, first_seed=block * seeds)
            plan = _plan(path, m_key, config)
            used = plugins.used(config, plan)
            if used:  # a cell of a plugin's entries: the plugin's source is part of its identity
                config["plugins"] = used
            label = _label(config, varying) + (f" block={block}" if block else "")
            cells.append(Cell(cell_id(config), settings["name"], exp["name"], label, config, plan))
    return cells


def extended(path, raw: dict, seen: tuple = ()) -> dict:
    """A suite file that `extends` another (a path relative to it): the other's tables with this file's on top.

    Tables merge key by key; an [[experiment]] merges into the other's experiment of the same name (a new name
    adds one); any other list (a mitigation list, the claims) is replaced whole. So a suite at another scale
    states its scale knobs (seeds, steps, grids, sizes) and asks the same pre-registered claims.
    """
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise SuiteError(path, "extends", f"{parent!r} is not allowed; allowed: the path of another suite file, "
                         "relative to this one")
    base_path = Path(path).parent / parent
    if base_path.resolve() in seen or base_path.resolve() == Path(path).resolve():
        raise SuiteError(path, "extends", f"{parent!r} extends this file again (a cycle)")
    return _merged(extended(base_path, read_toml(base_path), (*seen, Path(path).resolve())), raw)


def _merged(base, top, key: str = ""):
    if isinstance(base, dict) and isinstance(top, dict):
        return {**base, **{k: _merged(base[k], v, k) if k in base else v for k, v in top.items()}}
    if key == "experiment" and isinstance(base, list) and isinstance(top, list):
        named = {t.get("name"): t for t in top if isinstance(t, dict)}
        return [_merged(b, named.pop(b.get("name"))) if isinstance(b, dict) and b.get("name") in named else b
                for b in base] + list(named.values())
    return top


SECTIONS = ("task", "model", "optimizer", "mitigation")  # the sections a dotted --set key may name
NAME_KEYS = {"task": "name", "model": "family", "optimizer": "name"}
FIXED_SETTINGS = ("name", "description", "plugins")  # [suite] keys no --set overrides (plugins: loaded first)


def _split_overrides(path, overrides: dict, seeds, steps) -> tuple[dict, dict, int | None, int | None]:
    """--set KEY=VALUE pairs -> ([suite] settings, {(section, key): value}, seeds, steps).

    A bare key (or suite.KEY) is a [suite] setting; `seeds` and `steps` are the --seeds and --steps flags (every
    experiment's too). SECTION.KEY names a key of every experiment's [task], [model] or [optimizer] table, or a
    parameter of every [[mitigation]] that has it.
    """
    settings, dotted = {}, {}
    allowed_settings = [k for k in SETTINGS if k not in FIXED_SETTINGS]
    for name, value in overrides.items():
        flag = f"--set {name}"
        section, dot, key = str(name).partition(".")
        if not isinstance(name, str) or not name or (dot and (not key or "." in key)):
            raise SuiteError(path, flag, "expected KEY or SECTION.KEY (e.g. seeds=4, model.depth=8); allowed "
                             f"sections: suite, {', '.join(SECTIONS)}")
        if not dot or section == "suite":
            key = key if dot else name
            if key not in allowed_settings:
                raise SuiteError(path, flag, f"not a [suite] setting nor a SECTION.KEY; allowed: "
                                 f"{', '.join(allowed_settings)}{suggest(key, allowed_settings)}, or a dotted key of "
                                 f"{', '.join(SECTIONS)} (e.g. model.depth=8)")
            value = check_value(path, flag, value, SETTINGS[key])
            given = {"seeds": seeds, "steps": steps}.get(key)
            if given is not None and given != value:
                raise SuiteError(path, flag, f"{value} contradicts --{key} {given}; give one of the two")
            if key == "seeds":
                seeds = value
            elif key == "steps":
                steps = value
            else:
                settings[key] = value
            continue
        if section not in SECTIONS:
            raise SuiteError(path, flag, f"unknown section {section!r}; allowed: suite, {', '.join(SECTIONS)}"
                             f"{suggest(section, SECTIONS)}")
        if section == "mitigation" and key == "name":
            raise SuiteError(path, flag, "the arms are the suite's [[mitigation]] tables, so their names are not "
                             "overridden; allowed: a parameter of a mitigation (e.g. mitigation.max_norm=2.0)")
        dotted[(section, key)] = value
    return settings, dotted, seeds, steps


def _section_keys(section: str, table: dict) -> dict[str, Key] | None:
    """The Keys of one experiment's section table (None: its task, family or optimiser is unknown)."""
    name = table.get(NAME_KEYS[section])
    if section == "optimizer":
        return {"name": Key(str), **optim.optimizer_keys(name)} if name in optim.OPTIMIZERS else None
    registry = TASKS if section == "task" else FAMILIES
    return {NAME_KEYS[section]: Key(str), **_field_keys(registry[name].Config)} if name in registry else None


def _apply_overrides(path, experiments: list[dict], dotted: dict) -> None:
    """Sets every dotted --set key in every experiment that has it (a list is a grid axis); each value is checked
    against its Key. A key no experiment has is refused, naming the keys allowed."""
    first = sorted(dotted.items(), key=lambda item: item[0][1] != NAME_KEYS.get(item[0][0]))  # names first
    for (section, key), value in first:
        flag, used, allowed = f"--set {section}.{key}", False, {}
        for exp in experiments:
            if section == "mitigation":
                tables = []
                for table in exp["mitigation"]:
                    spec = optim.MITIGATIONS.get(table.get("name"))
                    params = spec.params if spec else {}
                    allowed.update(params)
                    if key in params:
                        _axis(path, flag, value, params[key])
                        table, used = {**table, key: value}, True
                    tables.append(table)
                exp["mitigation"] = tables
                continue
            name_key = NAME_KEYS[section]
            if key == name_key:
                used = True
                registry = {"task": TASKS, "model": FAMILIES, "optimizer": optim.OPTIMIZERS}[section]
                if not isinstance(value, str):
                    raise SuiteError(path, flag, f"must be one name, one of {', '.join(registry)} (grid over "
                                     "experiments instead)")
                check_choice(path, flag, value, list(registry))
                if exp[section].get(name_key) != value:  # another task / family / optimiser: its own defaults
                    exp[section] = {name_key: value}
                continue
            keys = _section_keys(section, exp[section]) or {}
            allowed.update(keys)
            if key in keys:
                _axis(path, flag, value, keys[key])
                exp[section], used = {**exp[section], key: value}, True
                if section == "model" and key in ("weight_var", "init"):
                    _weight_var_used(path, "--set model", exp["model"], exp["model"],
                                     FAMILIES[exp["model"]["family"]].Config)
        if not used:
            where = "mitigation" if section == "mitigation" else f"[{section}] table"
            raise SuiteError(path, flag, f"no experiment's {where} has this key; allowed: "
                             f"{', '.join(k for k in allowed if k != 'name') or 'none'}{suggest(key, allowed)}")


def load(path, seeds: int | None = None, steps: int | None = None, overrides: dict | None = None) -> Suite:
    """Reads, validates and expands a suite file; raises SuiteError on bad input.

    `seeds` and `steps` (the command line's --seeds and --steps) override the suite's and every experiment's;
    `overrides` (the command line's --set KEY=VALUE, a dict of KEY -> value) override a [suite] setting (a bare
    key such as `init_perturbation`, or `seeds` and `steps`, which are --seeds and --steps), or, as a dotted
    SECTION.KEY (`model.depth`, `optimizer.lr`, `task.n_train`, `mitigation.max_norm`), that key in every
    experiment whose section has it, as if each experiment's table had said so (a list is a grid axis; naming
    another task, family or optimiser starts from its defaults). Every value is checked as the TOML's would be.
    """
    path = Path(path)
    raw = check_table(path, "top level", extended(path, read_toml(path)), TOP_LEVEL)
    settings = check_table(path, "suite", raw["suite"], SETTINGS)
    # Before any name is looked up: a plugin's mitigations, transforms, families and tasks are named below.
    loaded = plugins.load(settings["plugins"], path.parent, path)
    overridden, dotted, seeds, steps = _split_overrides(path, overrides or {}, seeds, steps)
    settings.update(overridden)
    for flag, value in (("seeds", seeds), ("steps", steps)):
        if value is not None:
            settings[flag] = check_value(path, f"--{flag}", value, SETTINGS[flag])
    base = {k: raw[k] for k in ("task", "model", "optimizer", "mitigation") if raw[k] is not None}
    if "model" in base:
        for family in _family_list(base["model"].get("family")):
            _weight_var_used(path, "model", base["model"], base["model"],
                             FAMILIES[family].Config if isinstance(family, str) and family in FAMILIES else _NoInit)
    experiments = raw["experiment"] or [{"name": settings["name"]}]
    resolved, names, slugs = [], {}, {}
    for i, table in enumerate(experiments):
        where = f"experiment[{i}]" if raw["experiment"] else "suite"
        exp = check_table(path, where, table, EXPERIMENT)
        exp["name"] = exp["name"] if exp["name"] is not None else f"experiment{i}"
        if exp["name"] in names:
            raise SuiteError(path, f"{where}.name", f"{exp['name']!r} is already the name of {names[exp['name']]}; "
                             "experiment names must differ")
        names[exp["name"]] = where
        if slug(exp["name"]) in slugs:
            other = slugs[slug(exp["name"])]
            raise SuiteError(path, f"{where}.name", f"{exp['name']!r} and {other[0]!r} ({other[1]}) map to the same "
                             f"file name {slug(exp['name'])!r} for their plots, so one's figures would overwrite the "
                             "other's; allowed: experiment names that differ in their letters or digits")
        slugs[slug(exp["name"])] = (exp["name"], where)
        for section, name_key in (("task", "name"), ("model", "family"), ("optimizer", "name")):
            inherited, own = base.get(section, {}), exp[section] or {}
            if name_key in own and own[name_key] != inherited.get(name_key):
                inherited = {}  # another task / family / optimiser: its own defaults, not the top level's keys
            exp[section] = {**inherited, **own}
            if not exp[section]:
                raise SuiteError(path, f"{where}.{section}" if raw["experiment"] else section,
                                 f"missing section; give a [{section}] table")
            if section == "model":
                for family in _family_list(exp[section].get(name_key)):
                    if isinstance(family, str) and family in FAMILIES:
                        _weight_var_used(path, f"{where}.model", own, exp[section], FAMILIES[family].Config)
        exp["mitigation"] = exp["mitigation"] or base.get("mitigation") or [{"name": "none"}]
        # --seeds/--steps beat the experiment's own, which beat the suite's.
        exp["seeds"] = seeds or exp["seeds"] or settings["seeds"]
        exp["steps"] = steps or exp["steps"] or settings["steps"]
        exp["early_stop"] = settings["early_stop"] if exp["early_stop"] is None else exp["early_stop"]
        exp["where"] = where
        resolved.append(exp)
    _apply_overrides(path, resolved, dotted)
    cells = []
    for exp in resolved:
        try:
            cells += _expand(path, settings, exp, sum(c.config["seeds"] for c in cells))
        except SuiteError as e:
            if dotted:  # a value --set gave may be what breaks a rule that joins keys
                given = ", ".join(f"{s}.{k}={v!r}" for (s, k), v in dotted.items())
                e.args = (f"{e} (with --set {given})",)
            raise
    resolved = [{k: v for k, v in exp.items() if k != "where"} for exp in resolved]
    seen: dict[str, Cell] = {}
    for c in cells:
        if c.cell_id in seen:
            raise SuiteError(path, "experiment", f"{c.label!r} of experiment {c.experiment!r} is the same cell as "
                             f"{seen[c.cell_id].label!r} of {seen[c.cell_id].experiment!r}; compare within one "
                             "experiment instead")
        seen[c.cell_id] = c
    claims = validate_claims(path, raw["claim"], cells)
    return Suite(str(path), settings["name"], settings, resolved, cells, claims, loaded)


class _NoInit:
    """Stands in for an unknown family's Config (the family itself is refused later, by name)."""
