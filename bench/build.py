"""Tasks and models from canonical configs (shared by validation and the engine)."""
from __future__ import annotations

import functools
import json

import jax
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
    nnx.eval_shape(lambda: make_model(json.loads(model_json), task, jax.random.key(0)))


def check(task_cfg: dict, model_cfg: dict) -> None:
    """Builds the task and (abstractly) the model; raises ValueError/OSError if they do not fit."""
    _check(json.dumps(task_cfg, sort_keys=True), json.dumps(model_cfg, sort_keys=True))
