"""Gradient diagnostics at initialisation: the direct measurement of explosion.

For every seed (all seeds in one vmapped, jitted program) the loss gradient of
one batch is taken with respect to a zero shift added to every layer's
pre-activation (for recurrent models: every time step's hidden state), which
is the gradient with respect to that pre-activation. Reported per layer:
`preact_grad_norm`, `weight_grad_norm` (where the family exposes per-layer
kernels), `activation_rms`; and `growth_per_layer`, the factor by which the
squared pre-activation gradient norm grows per layer going from the output
towards the input, fitted (least squares on its logarithm) over the layers
away from the ends. Mean-field theory: a deep ReLU net with
W ~ N(0, weight_var / fan_in) has growth weight_var / 2.
"""
from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench import engine
from bench.records import json_number
from bench.build import make_model, make_task


DEFAULT_TASK = {"mlp": "teacher_student", "rnn": "adding", "resnet": "digits", "transformer": "markov_lm"}  # a task that fits each family


def fit_growth(norms_SxL: np.ndarray) -> np.ndarray:
    """Per-seed growth per layer of the squared norm, output to input, fitted away from the ends."""
    n_layers = norms_SxL.shape[1]
    trim = max(1, n_layers // 10) if n_layers >= 6 else 0
    layers = np.arange(n_layers)[trim:n_layers - trim]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_sq = np.log(np.asarray(norms_SxL, np.float64)[:, trim:n_layers - trim] ** 2)
    growth = np.full(norms_SxL.shape[0], np.nan)
    for s, row in enumerate(log_sq):
        if np.all(np.isfinite(row)) and len(row) >= 2:
            growth[s] = np.exp(-np.polyfit(layers, row, 1)[0])
    return growth


@functools.lru_cache(maxsize=None)
def _program(task_json: str, model_json: str):
    task = make_task(json.loads(task_json))
    model_cfg = json.loads(model_json)

    def one_seed(seed):
        k_init, k_data = engine.seed_keys(seed)
        model = make_model(model_cfg, task, k_init)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        x, y = task.sample(task.data, jax.random.fold_in(k_data, 0))
        _, preacts, _ = model.forward(x, train=True)
        shifts = [jnp.zeros_like(p) for p in preacts]

        def loss(params, shifts):
            pred, _, acts = nnx.merge(graphdef, params, rest, copy=True).forward(x, train=True, shifts=shifts)
            return task.loss(pred, y), acts

        (g_params, g_shifts), acts = jax.grad(loss, argnums=(0, 1), has_aux=True)(params, shifts)
        out = {
            "preact_grad_norm": jnp.stack([jnp.linalg.norm(g) for g in g_shifts]),
            "activation_rms": jnp.stack([jnp.sqrt(jnp.mean(a**2)) for a in acts]),
        }
        grad_model = nnx.merge(graphdef, g_params, rest, copy=True)
        if hasattr(grad_model, "layer_kernels"):  # a model whose parameters are the gradients
            out["weight_grad_norm"] = jnp.stack([jnp.linalg.norm(k) for k in grad_model.layer_kernels()])
        return out

    return jax.jit(jax.vmap(one_seed))


def probe(task_cfg: dict, model_cfg: dict, seeds: int) -> dict:
    """Per-seed and summarised gradient diagnostics at initialisation (batch: the task's batch_size)."""
    fn = _program(json.dumps(task_cfg, sort_keys=True), json.dumps(model_cfg, sort_keys=True))
    per_seed = {k: np.asarray(v, np.float64) for k, v in jax.device_get(fn(jnp.arange(seeds))).items()}
    growth = fit_growth(per_seed["preact_grad_norm"])
    axis = "steps" if model_cfg["family"] == "rnn" else "layers"
    rows = []
    for i in range(per_seed["preact_grad_norm"].shape[1]):
        row = {"layer" if axis == "layers" else "step": i + 1}
        for key, values in per_seed.items():
            column = values[:, i]
            row[key] = json_number(np.mean(column))
            row[f"{key}_std"] = json_number(np.std(column))
        rows.append(row)
    finite = growth[np.isfinite(growth)]
    return {
        "axis": axis,
        axis: rows,
        "growth_per_layer": json_number(np.exp(np.mean(np.log(finite)))) if finite.size else None,
        "growth_per_layer_per_seed": [json_number(g) for g in growth],
        "per_seed": {k: [[json_number(x) for x in row] for row in v] for k, v in per_seed.items()},
    }
