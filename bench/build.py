"""Tasks and models from canonical configs (shared by validation and the engine)."""
from __future__ import annotations

import functools
import json
import math

import jax
import numpy as np
from flax import nnx

from models import FAMILIES
from tasks import TASKS


@functools.lru_cache(maxsize=None)
def _task(task_json: str):
    cfg = json.loads(task_json)
    module = TASKS[cfg.pop("name")]
    return module.make(module.Config(**cfg))


def make_task(task_cfg: dict):
    """The task of a canonical task config (cached: its data is made once per process)."""
    return _task(json.dumps(task_cfg, sort_keys=True))


def make_model(model_cfg: dict, task, key):
    """A fresh Flax model of a canonical model config, shaped for `task`."""
    cfg = dict(model_cfg)
    module = FAMILIES[cfg.pop("family")]
    return module.Model(module.Config(**cfg), task.input_shape, task.output_dim,
                        sequence_output=task.sequence_output, rngs=nnx.Rngs(params=key))


@functools.lru_cache(maxsize=None)
def _check(task_json: str, model_json: str) -> None:
    task = _task(task_json)
    x, _ = jax.eval_shape(lambda: task.sample(task.data, jax.random.key(0)))
    jax.eval_shape(lambda x: make_model(json.loads(model_json), task, jax.random.key(0))(x, train=True), x)


def check(task_cfg: dict, model_cfg: dict) -> None:
    """Builds the task and (abstractly) the model and its prediction on a batch; raises ValueError/OSError if they
    do not fit. Initial scales change no shape: configs that differ only there are checked once."""
    structure = {k: (1.0 if k in INIT_SCALES else v) for k, v in model_cfg.items()}
    _check(json.dumps(task_cfg, sort_keys=True), json.dumps(structure, sort_keys=True))


# Initial scales that can be traced inputs: a sweep over them trains in one compiled program. The model is
# initialised with every one of them at 1, and each parameter leaf is multiplied by value ** power.
INIT_SCALES = ("weight_var", "bias_var", "recurrent_weight_var", "recurrent_scale", "readout_scale")
_PROBES = (4.0, 16.0)


def unit_scales(model_cfg: dict) -> dict:
    """The model config with every traced initial scale (None in a static plan) at 1."""
    return {k: (1.0 if k in INIT_SCALES and v is None else v) for k, v in model_cfg.items()}


def _param_leaves(model_cfg: dict, task) -> list[np.ndarray]:
    model = make_model(model_cfg, task, jax.random.key(0))
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(nnx.split(model, nnx.Param, ...)[1])]


def _power(base: np.ndarray, probes: list[np.ndarray]) -> float | None:
    """p with probe_v == v ** p * base for every probe value v, or None if there is no such power."""
    scale = np.linalg.norm(base)
    if scale == 0:
        return 0.0 if not any(np.any(x) for x in probes) else None
    p = math.log(np.linalg.norm(probes[0]) / scale) / math.log(_PROBES[0])
    fits = all(np.allclose(x, v ** p * base, rtol=1e-5, atol=1e-6 * scale / math.sqrt(base.size))
               for v, x in zip(_PROBES, probes))
    return p if fits else None


@functools.lru_cache(maxsize=None)
def _init_powers(task_json: str, model_json: str) -> dict[str, tuple[float, ...]]:
    task, unit = _task(task_json), json.loads(model_json)
    base = _param_leaves(unit, task)
    powers = {}
    for knob in (k for k in INIT_SCALES if k in unit):
        probes = [_param_leaves({**unit, knob: v}, task) for v in _PROBES]
        found = [_power(b, [p[i] for p in probes]) for i, b in enumerate(base)]
        if None not in found and any(found):
            powers[knob] = tuple(found)
    return powers


def init_powers(task_cfg: dict, model_cfg: dict) -> dict[str, tuple[float, ...]]:
    """Initial scale -> per parameter leaf, the power of its value that the leaf scales with.

    Found by initialising the model (with one fixed key) at 1 and at two larger values of each scale in
    INIT_SCALES that the config has: a scale is traced only where every leaf is exactly value ** power
    times its unit initialisation (the normal, orthogonal and constant initialisers: power 1/2 for a
    variance, 1 for a spectral scale; 0 for leaves it does not touch); otherwise it stays static.
    """
    unit = unit_scales({**model_cfg, **{k: None for k in INIT_SCALES if k in model_cfg}})
    return _init_powers(json.dumps(task_cfg, sort_keys=True), json.dumps(unit, sort_keys=True))


def scale_init(params, powers: dict[str, tuple[float, ...]], values: dict):
    """Unit-scale initial parameters times value ** power per leaf (values: initial scale -> traced value)."""
    leaves, treedef = jax.tree.flatten(params)
    for knob, per_leaf in powers.items():
        leaves = [x if p == 0 else x * values[knob] ** p for x, p in zip(leaves, per_leaf)]
    return jax.tree.unflatten(treedef, leaves)
