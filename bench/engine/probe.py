"""Gradient diagnostics at initialisation: the direct measurement of explosion.

For every seed (all seeds in one vmapped, jitted program) the loss gradient of
one batch is taken with respect to a zero shift added to every layer's
pre-activation (for recurrent models: every time step's hidden state), which
is the gradient with respect to that pre-activation. Reported per layer:
`preact_grad_norm`, `weight_grad_norm` (where the family exposes per-layer
kernels), `activation_rms`; and `growth_per_layer`, the factor by which the
squared pre-activation gradient norm grows per layer going from the output
towards the input, fitted (least squares on its logarithm) over the layers
away from the ends, and `e2e_ratio`, ||dL/dh_first|| / ||dL/dh_last||.
Mean-field theory: a deep ReLU net with W ~ N(0, weight_var / fan_in) has
growth weight_var / 2. Norms are computed as logarithms (`metrics.log_norm`),
so gradients far below float32's range do not underflow; a seed whose
gradient is exactly zero or not finite is counted in `degenerate_seeds` and
kept (growth 0 or inf), never dropped.
"""
from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gradbench.engine import program
from gradbench.records import metrics
from gradbench.records.cell import json_extended, json_number
from gradbench.spec.build import make_model, make_task


DEFAULT_TASK = {"mlp": "teacher_student", "rnn": "adding", "resnet": "digits", "transformer": "markov_lm"}  # a task that fits each family


@functools.lru_cache(maxsize=None)
def _program(task_json: str, model_json: str):
    task = make_task(json.loads(task_json))
    model_cfg = json.loads(model_json)

    def one_seed(seed):
        k_init, k_data = program.seed_keys(seed)
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
            "log_preact_grad_norm": jnp.stack([metrics.log_norm(g) for g in g_shifts]),
            "log_activation_rms": jnp.stack([metrics.log_norm(a) - 0.5 * jnp.log(a.size) for a in acts]),
        }
        grad_model = nnx.merge(graphdef, g_params, rest, copy=True)
        if hasattr(grad_model, "layer_kernels"):  # a model whose parameters are the gradients
            out["log_weight_grad_norm"] = jnp.stack([metrics.log_norm(k) for k in grad_model.layer_kernels()])
        return out

    return jax.jit(jax.vmap(one_seed))


def probe(task_cfg: dict, model_cfg: dict, seeds: int) -> dict:
    """Per-seed and summarised gradient diagnostics at initialisation (batch: the task's batch_size)."""
    fn = _program(json.dumps(task_cfg, sort_keys=True), json.dumps(model_cfg, sort_keys=True))
    logs = {k: np.asarray(v, np.float64) for k, v in jax.device_get(fn(jnp.arange(seeds))).items()}
    growth = metrics.fit_growth(logs["log_preact_grad_norm"])
    e2e = np.exp(metrics.log_e2e_ratio(logs["log_preact_grad_norm"]))
    axis = "steps" if model_cfg["family"] == "rnn" else "layers"
    rows = []
    for i in range(logs["log_preact_grad_norm"].shape[1]):
        row = {"layer" if axis == "layers" else "step": i + 1}
        for key, values in logs.items():
            column, name = np.exp(values[:, i]), key.removeprefix("log_")
            row[name] = json_number(np.mean(column))
            row[f"{name}_std"] = json_number(np.std(column))
            row[f"{name}_log10_std"] = json_number(np.std(values[:, i]) / np.log(10))  # the norms span decades
        rows.append(row)
    degenerate = ~np.isfinite(logs["log_preact_grad_norm"]).all(axis=1)
    return {
        "axis": axis,
        axis: rows,
        "growth_per_layer": summarise_growth(growth),
        "growth_per_layer_per_seed": [json_extended(g) for g in growth],
        "e2e_ratio": json_number(np.median(e2e[~np.isnan(e2e)])) if not np.isnan(e2e).all() else None,
        "e2e_ratio_per_seed": [json_extended(r) for r in e2e],
        "degenerate_seeds": int(degenerate.sum()),
        "per_seed": {"log10_" + k.removeprefix("log_"): [[json_extended(x / np.log(10)) for x in row] for row in v]
                     for k, v in logs.items()},
    }


def summarise_growth(growth) -> float | None:
    """Geometric mean of per-seed growth; the median over every seed when one is 0, inf or NaN (none dropped)."""
    growth = np.asarray(growth, np.float64)
    if np.all(np.isfinite(growth) & (growth > 0)):
        return json_number(np.exp(np.mean(np.log(growth))))
    ordered = np.where(np.isnan(growth), np.inf, growth)  # a NaN gradient is an overflow: the top of the order
    return json_extended(np.quantile(ordered, 0.5, method="lower"))


def fit_growth(norms_SxL) -> np.ndarray:
    """Per-seed growth per layer from plain norms (see `metrics.fit_growth`, which takes log norms)."""
    with np.errstate(divide="ignore"):
        return metrics.fit_growth(np.log(np.asarray(norms_SxL, np.float64)))
