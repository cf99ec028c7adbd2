"""Optimisers, gradient transformations and mitigations, each a registry by name.

A *plan* is the effective training recipe of a cell, a plain dict:
  {"task": {...}, "model": {...}, "optimizer": {"name", "lr", "warmup_steps", **kwargs},
   "transforms": [{"name", **params}, ...], "skip_nonfinite": int,
   "aux_losses": [{"name", **params}, ...], "loss_scaling": None | {"mode", "scale", "period"}}
A mitigation is a documented edit of the baseline plan; `combo` applies
several. The learning rate, every transform and auxiliary-loss parameter and
the loss scale and its period are *traced*: they are inputs of the compiled
program, so sweeping them never recompiles.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from bench.spec.build import init_powers
from bench.spec.schema import REQUIRED, Key  # noqa: F401  (REQUIRED: re-exported)

# name -> (optax factory, defaults that differ from optax's, description)
OPTIMIZERS = {
    "sgd": (optax.sgd, {}, "plain stochastic gradient descent"),
    "momentum": (optax.sgd, {"momentum": 0.9}, "SGD with heavy-ball momentum (0.9)"),
    "nesterov": (optax.sgd, {"momentum": 0.9, "nesterov": True}, "SGD with Nesterov momentum (0.9)"),
    "adam": (optax.adam, {}, "Adam (Kingma and Ba 2015)"),
    "adamw": (optax.adamw, {}, "Adam with decoupled weight decay"),
    "adagrad": (optax.adagrad, {}, "Adagrad (Duchi et al. 2011)"),
    "rmsprop": (optax.rmsprop, {}, "RMSProp (Tieleman and Hinton 2012)"),
    "lion": (optax.lion, {}, "Lion (Chen et al. 2023)"),
}

# Optimisers whose update is invariant to the gradient's scale (muP gives them other learning-rate groups).
ADAPTIVE = frozenset({"adam", "adamw", "adagrad", "rmsprop", "lion"})


def _independent_weight_decay(weight_decay):
    """theta <- theta - weight_decay * theta every step, added after the optimiser: not scaled by the lr."""
    return optax.add_decayed_weights(-weight_decay)


# name -> (factory(**params), description); every parameter is traced. Transforms in AFTER_OPTIMIZER act on
# the optimiser's update, the others on the gradient before it.
TRANSFORMS = {
    "clip_by_global_norm": (lambda max_norm: optax.clip_by_global_norm(max_norm),
                            "rescale the gradient so its global norm is at most max_norm"),
    "clip_by_value": (lambda max_value: optax.clip(max_value),
                      "clip every gradient entry to [-max_value, max_value]"),
    "adaptive_grad_clip": (lambda clipping: optax.adaptive_grad_clip(clipping),
                           "clip each unit's gradient to clipping x its weight norm (Brock et al. 2021)"),
    "weight_decay": (_independent_weight_decay,
                     "independent weight decay: theta -= weight_decay * theta each step, independent of the "
                     "learning rate and its schedule (Loshchilov and Hutter 2019; Wortsman et al. 2023)"),
}
AFTER_OPTIMIZER = frozenset({"weight_decay"})


def _z_loss(pred, coefficient):
    """coefficient x mean over predictions of log^2 Z, Z the softmax normaliser of the logits (PaLM's z-loss)."""
    return coefficient * jnp.mean(jax.nn.logsumexp(pred.astype(jnp.float32), axis=-1) ** 2)


# name -> ((prediction, **params) -> scalar added to the training loss, description); parameters traced.
AUX_LOSSES = {
    "z_loss": (_z_loss, "coefficient x log^2 Z of the output softmax (Chowdhery et al. 2022)"),
}

LOSS_SCALING_MODES = ("static", "dynamic")


# The range of every optimiser keyword that has one (any other keyword: its default's type, finite).
OPTIMIZER_KEYS = {
    "lr": Key(float, 0.01, gt=0, log_grid=True, doc="learning rate"),
    "warmup_steps": Key(int, 0, ge=0, doc="linear warm-up from 0 over this many steps"),
    "eps": Key(float, gt=0),
    "eps_root": Key(float, ge=0),
    "b1": Key(float, ge=0, lt=1),
    "b2": Key(float, ge=0, lt=1),
    "momentum": Key(float, ge=0, lt=1),
    "decay": Key(float, ge=0, le=1),
    "weight_decay": Key(float, ge=0),
    "initial_accumulator_value": Key(float, ge=0),
    "initial_scale": Key(float, ge=0),
}


def optimizer_keys(name: str) -> dict[str, Key]:
    """Every key of an [optimizer] table of that optimiser, with its default, type and range."""
    keys = {"lr": OPTIMIZER_KEYS["lr"], "warmup_steps": OPTIMIZER_KEYS["warmup_steps"]}
    for k, default in optimizer_defaults(name).items():
        typ = bool if isinstance(default, bool) else float if isinstance(default, float) else int
        known = OPTIMIZER_KEYS.get(k, Key(typ))
        keys[k] = dataclasses.replace(known, type=typ if typ is bool else known.type, default=default)
    return keys


def optimizer_defaults(name: str) -> dict:
    """Every scalar keyword of the optimiser with its default (registry over optax)."""
    factory, overrides, _ = OPTIMIZERS[name]
    params = inspect.signature(factory).parameters
    defaults = {k: p.default for k, p in params.items()
                if k != "learning_rate" and isinstance(p.default, (bool, int, float)) and p.default is not None}
    defaults.update(overrides)
    return defaults


def traced_values(plan: dict) -> dict[str, float]:
    """The plan's traced hyperparameters, as a flat name -> value dict."""
    values = {"lr": float(plan["optimizer"]["lr"])}
    for group in ("transforms", "aux_losses"):
        for i, t in enumerate(plan.get(group, [])):
            values.update({f"{group}.{i}.{k}": float(v) for k, v in t.items() if k != "name"})
    if plan.get("loss_scaling"):
        values.update({f"loss_scaling.{k}": float(plan["loss_scaling"][k]) for k in ("scale", "period")})
    values.update({f"model.{k}": float(plan["model"][k]) for k in init_powers(plan["task"], plan["model"])})
    return values


def static_plan(plan: dict) -> dict:
    """The plan with traced values blanked: equal static plans share a compiled program."""
    plan = copy.deepcopy(plan)
    plan["optimizer"]["lr"] = None
    for group in ("transforms", "aux_losses"):
        plan[group] = [{k: (v if k == "name" else None) for k, v in t.items()} for t in plan.get(group, [])]
    if plan.get("loss_scaling"):
        plan["loss_scaling"] = {"mode": plan["loss_scaling"]["mode"], "scale": None, "period": None}
    plan["model"].update(dict.fromkeys(init_powers(plan["task"], plan["model"])))
    return plan


def adaptive(plan: dict) -> bool:
    """Whether the plan's optimiser is Adam-like (scale-invariant updates)."""
    return plan["optimizer"]["name"] in ADAPTIVE


def build(plan: dict, hyper: dict, lr_groups=None) -> optax.GradientTransformation:
    """The optax chain of a (static) plan with traced hyperparameters `hyper` filled in.

    `lr_groups` (from the model's `lr_groups`, or None): (param_labels, {group: multiplier}); each
    group's update is scaled by its multiplier, i.e. a per-group learning rate (optax.multi_transform).
    """
    opt = dict(plan["optimizer"])
    name, warmup = opt.pop("name"), opt.pop("warmup_steps")
    opt.pop("lr")
    lr = hyper["lr"]
    if warmup > 0:
        lr = optax.linear_schedule(0.0, lr, warmup)
    factory = OPTIMIZERS[name][0]
    made = [(t["name"], TRANSFORMS[t["name"]][0](**{k: hyper[f"transforms.{i}.{k}"] for k in t if k != "name"}))
            for i, t in enumerate(plan["transforms"])]
    chain = [tx for name, tx in made if name not in AFTER_OPTIMIZER] + [factory(learning_rate=lr, **opt)]
    if lr_groups is not None:
        labels, multipliers = lr_groups
        chain.append(optax.multi_transform({g: optax.scale(m) for g, m in multipliers.items()}, labels))
    chain += [tx for name, tx in made if name in AFTER_OPTIMIZER]
    tx = optax.chain(*chain)
    if plan["skip_nonfinite"] > 0:
        tx = optax.apply_if_finite(tx, plan["skip_nonfinite"])
    return tx


def aux_loss(plan: dict, hyper: dict, pred):
    """The sum of the plan's auxiliary training losses on the prediction (0.0 when it has none)."""
    total = jnp.zeros((), jnp.float32)
    for i, term in enumerate(plan.get("aux_losses", [])):
        fn = AUX_LOSSES[term["name"]][0]
        total = total + fn(pred, **{k: hyper[f"aux_losses.{i}.{k}"] for k in term if k != "name"})
    return total


def loss_scale_init(plan: dict, hyper: dict) -> dict:
    """The loss-scaling state of a run: the current scale (1 without loss scaling) and finite steps in a row."""
    scale = hyper["loss_scaling.scale"] if plan.get("loss_scaling") else 1.0
    return {"scale": jnp.asarray(scale, jnp.float32), "good_steps": jnp.zeros((), jnp.int32)}


def loss_scale_update(plan: dict, hyper: dict, state: dict, grads_finite):
    """(next state, skip this update) after a step whose unscaled gradients were finite or not.

    Dynamic (as jmp.DynamicLossScale): on overflow halve the scale (not below 1) and skip the update;
    after `period` finite steps in a row double it. Static and none: the scale never changes, nothing skipped.
    """
    scaling = plan.get("loss_scaling")
    if not scaling or scaling["mode"] != "dynamic":
        return state, jnp.zeros((), bool)
    good = state["good_steps"] + 1
    grow = good >= hyper["loss_scaling.period"]
    scale = jnp.where(grads_finite, jnp.where(grow, state["scale"] * 2.0, state["scale"]),
                      jnp.maximum(state["scale"] / 2.0, 1.0))
    good = jnp.where(grads_finite & ~grow, good, 0)
    return {"scale": scale, "good_steps": good.astype(jnp.int32)}, ~grads_finite


@dataclasses.dataclass(frozen=True)
class Mitigation:
    """A named change to the baseline plan.

    Attributes:
      description: one line for `bench list` and reports.
      params: parameter name -> Key (its type, range and default; REQUIRED: must be given; None: keep the
        baseline's). Any parameter may be a list in a suite (a grid axis), except those in `lists`.
      apply: (plan, params) -> None, edits the plan in place; ValueError on a bad parameter.
      lists: parameters whose value is one list (a list of lists is a grid axis over them).
    """

    description: str
    params: dict[str, Key]
    apply: Callable[[dict, dict], None]
    lists: tuple = ()


def _transform(name):
    return lambda plan, p: plan["transforms"].append({"name": name, **p})


def _aux_loss(name):
    return lambda plan, p: plan.setdefault("aux_losses", []).append({"name": name, **p})


def _loss_scaling(plan, params):
    plan["loss_scaling"] = {"mode": params["mode"], "scale": params["scale"], "period": params["period"]}


def apply_mitigation(plan: dict, table: dict) -> None:
    """Applies one mitigation table {name, **params} (checked, defaults filled in) to the plan; ValueError if bad."""
    name = table.get("name")
    if name not in MITIGATIONS or name == "combo":
        allowed = ", ".join(n for n in MITIGATIONS if n != "combo")
        raise ValueError(f"{name!r} is not a mitigation that combo can apply; allowed: {allowed}")
    spec = MITIGATIONS[name]
    unknown = sorted(set(table) - {"name"} - set(spec.params))
    if unknown:
        raise ValueError(f"{name}: unknown key {unknown[0]!r}; allowed: {', '.join(spec.params) or 'none'}")
    params = {}
    for key, key_spec in spec.params.items():
        if key not in table and key_spec.default is REQUIRED:
            raise ValueError(f"{name}: {key} is required ({key_spec.allowed()})")
        value = table.get(key, key_spec.default)
        try:
            params[key] = None if value is None else key_spec.check(value)
        except ValueError as e:
            raise ValueError(f"{name}: {key}: {e}") from None
    spec.apply(plan, params)


def _combo(plan, params):
    for table in params["apply"]:
        apply_mitigation(plan, table)


def _model_keys(plan, params):
    plan["model"].update({k: v for k, v in params.items() if v is not None})


def _optimizer(plan, params):
    name = params["optimizer"]
    kept = {k: plan["optimizer"][k] for k in ("lr", "warmup_steps")}
    if params.get("lr") is not None:
        kept["lr"] = params["lr"]
    plan["optimizer"] = {"name": name, **optimizer_defaults(name), **kept}


_POSITIVE = dict(type=float, gt=0)
MITIGATIONS = {
    "none": Mitigation("the baseline, unchanged", {}, lambda plan, p: None),
    "clip_by_global_norm": Mitigation("optax.clip_by_global_norm before the optimiser",
                                      {"max_norm": Key(default=1.0, **_POSITIVE)}, _transform("clip_by_global_norm")),
    "clip_by_value": Mitigation("optax.clip (element-wise) before the optimiser",
                                {"max_value": Key(default=1.0, **_POSITIVE)}, _transform("clip_by_value")),
    "adaptive_grad_clip": Mitigation("optax.adaptive_grad_clip before the optimiser",
                                     {"clipping": Key(default=0.01, **_POSITIVE)}, _transform("adaptive_grad_clip")),
    "skip_nonfinite": Mitigation(
        "optax.apply_if_finite: skip updates with NaN/Inf gradients (a non-finite loss or gradient "
        "still counts as divergence)", {"max_consecutive_errors": Key(int, 5, ge=1)},
        lambda plan, p: plan.update(skip_nonfinite=p["max_consecutive_errors"])),
    "warmup": Mitigation("linear learning-rate warm-up from 0 over warmup_steps",
                         {"warmup_steps": Key(int, 100, ge=1)},
                         lambda plan, p: plan["optimizer"].update(warmup_steps=p["warmup_steps"])),
    "init": Mitigation("another weight initialiser (model key init, optional weight_var and readout_scale)",
                       {"init": Key(str), "weight_var": Key(float, None, gt=0),
                        "readout_scale": Key(float, None, gt=0)}, _model_keys),
    "activation": Mitigation("another activation function", {"activation": Key(str)}, _model_keys),
    "norm": Mitigation("normalisation after each linear layer", {"norm": Key(str, "batch")}, _model_keys),
    "residual": Mitigation("residual connections around hidden layers", {"residual": Key(bool, True)}, _model_keys),
    "depth": Mitigation("another depth", {"depth": Key(int, ge=1)}, _model_keys),
    "width": Mitigation("another width", {"width": Key(int, ge=1)}, _model_keys),
    "optimizer": Mitigation("another optimiser (optax name; optional lr)",
                            {"optimizer": Key(str, choices=tuple(OPTIMIZERS)),
                             "lr": dataclasses.replace(OPTIMIZER_KEYS["lr"], default=None)}, _optimizer),
    "weight_decay": Mitigation("independent weight decay (not scaled by the learning rate) after the optimiser",
                               {"weight_decay": Key(default=1e-4, **_POSITIVE)}, _transform("weight_decay")),
    "z_loss": Mitigation("auxiliary loss coefficient x log^2 Z of the output softmax (z-loss)",
                         {"coefficient": Key(default=1e-4, **_POSITIVE)}, _aux_loss("z_loss")),
    "loss_scaling": Mitigation(
        "loss scaling: the loss x scale before the backward pass, gradients / scale after; dynamic: halve "
        "and skip on overflow, double after `period` finite steps (jmp.DynamicLossScale)",
        {"mode": Key(str, "dynamic", choices=LOSS_SCALING_MODES), "scale": Key(float, 2.0**15, ge=1),
         "period": Key(int, 2000, ge=1)}, _loss_scaling),
    "qk_norm": Mitigation("LayerNorm on attention queries and keys (transformer)", {"qk_norm": Key(bool, True)},
                          _model_keys),
    "parameterization": Mitigation("another parameterisation (standard, ntk, mup)",
                                   {"parameterization": Key(str)}, _model_keys),
    "dtype": Mitigation("another compute precision (float32, bfloat16, float16)", {"dtype": Key(str)}, _model_keys),
    "attention_dtype": Mitigation("the attention logits and softmax in another precision (transformer; float32: "
                                  "the usual upcast under a low-precision dtype)",
                                  {"attention_dtype": Key(str, "float32")}, _model_keys),
    "combo": Mitigation("several mitigations at once, applied in order: apply = [{name = ...}, ...]",
                        {"apply": Key(list, of=dict, nonempty=True)}, _combo, lists=("apply",)),
}

