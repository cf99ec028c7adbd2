"""The public registration API: what a plugin (a module a suite names in `[suite] plugins`) calls to add
mitigations, optax gradient transforms, auxiliary losses, model families and tasks. The built-in entries are
registered the same way (bench/spec/optim.py) or live in the same registries (gradbench.models.FAMILIES, gradbench.tasks.TASKS).

    from gradbench.spec import register
    from gradbench.spec.register import Key

    register.transform("ema_clip", factory, "clip to a multiple of the gradient norm's EMA",
                       params={"multiple": Key(float, 2.0, gt=0, traced=True), "warmup": Key(int, 10, ge=1)})
    register.model_family("resmlp", resmlp_module)

Parameters are Keys (gradbench.spec.schema): type, default (REQUIRED: the suite must give it), range, choices.
A transform's or auxiliary loss's parameter with `traced=True` is an input of the compiled program (a float32:
sweeping it never recompiles); any other is static (part of the program's identity: each value compiles its
own program). Names must be new: a plugin cannot replace a built-in entry or another plugin's. docs/EXTENDING.md
walks through an example.
"""
from __future__ import annotations

import dataclasses

from gradbench.spec import optim, plugins
from gradbench.spec.schema import REQUIRED, Key  # noqa: F401  (the types a plugin declares its parameters with)

transform = optim.register_transform
aux_loss = optim.register_aux_loss
mitigation = optim.register_mitigation

FAMILY_EXPORTS = ("DESCRIPTION", "Config", "Model")
TASK_EXPORTS = ("DESCRIPTION", "DEFAULT_STEPS", "Config", "make", "data_bytes")


def _check_module(kind: str, name: str, module, exports) -> None:
    missing = [e for e in exports if not hasattr(module, e)]
    if missing:
        raise ValueError(f"{kind} {name!r}: its module must export {', '.join(exports)} (missing {missing[0]})")
    config = module.Config
    if not dataclasses.is_dataclass(config):
        raise ValueError(f"{kind} {name!r}: Config must be a dataclass (its fields are the suite's keys)")
    try:
        config()
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{kind} {name!r}: Config() must work with every field at its default ({e})") from None


def model_family(name: str, module) -> None:
    """Registers a model family: `module` (a module or any object) exports DESCRIPTION, a dataclass Config (its
    fields are the suite's [model] keys, CHOICES lists allowed strings) and Model (models/__init__.py says what
    Model must do; optional: lr_groups, DIAGNOSTICS)."""
    from gradbench.models import FAMILIES

    _check_module("model family", name, module, FAMILY_EXPORTS)
    plugins.registering("family", name, FAMILIES)
    FAMILIES[name] = module


def task(name: str, module) -> None:
    """Registers a task: `module` exports DESCRIPTION, DEFAULT_STEPS, a dataclass Config (the suite's [task] keys),
    make(config) -> tasks.base.Task and data_bytes(config) (tasks/__init__.py)."""
    from gradbench.tasks import TASKS

    _check_module("task", name, module, TASK_EXPORTS)
    plugins.registering("task", name, TASKS)
    TASKS[name] = module


__all__ = ["Key", "REQUIRED", "transform", "aux_loss", "mitigation", "model_family", "task"]
