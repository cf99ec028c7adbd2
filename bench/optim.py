"""Optimisers, gradient transformations and mitigations, each a registry by name.

A *plan* is the effective training recipe of a cell, a plain dict:
  {"task": {...}, "model": {...}, "optimizer": {"name", "lr", "warmup_steps", **kwargs},
   "transforms": [{"name", **params}, ...], "skip_nonfinite": int}
A mitigation is a documented edit of the baseline plan. The learning rate and
every transform parameter are *traced*: they are inputs of the compiled
program, so sweeping them never recompiles.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
from typing import Callable

import optax

from bench.schema import REQUIRED, Key  # noqa: F401  (REQUIRED: re-exported)

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

# name -> (factory(**params), description); every parameter is traced.
TRANSFORMS = {
    "clip_by_global_norm": (lambda max_norm: optax.clip_by_global_norm(max_norm),
                            "rescale the gradient so its global norm is at most max_norm"),
    "clip_by_value": (lambda max_value: optax.clip(max_value),
                      "clip every gradient entry to [-max_value, max_value]"),
    "adaptive_grad_clip": (lambda clipping: optax.adaptive_grad_clip(clipping),
                           "clip each unit's gradient to clipping x its weight norm (Brock et al. 2021)"),
}


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
    for i, t in enumerate(plan["transforms"]):
        values.update({f"transforms.{i}.{k}": float(v) for k, v in t.items() if k != "name"})
    return values


def static_plan(plan: dict) -> dict:
    """The plan with traced values blanked: equal static plans share a compiled program."""
    plan = copy.deepcopy(plan)
    plan["optimizer"]["lr"] = None
    plan["transforms"] = [{k: (v if k == "name" else None) for k, v in t.items()} for t in plan["transforms"]]
    return plan


def build(plan: dict, hyper: dict) -> optax.GradientTransformation:
    """The optax chain of a (static) plan with traced hyperparameters `hyper` filled in."""
    opt = dict(plan["optimizer"])
    name, warmup = opt.pop("name"), opt.pop("warmup_steps")
    opt.pop("lr")
    lr = hyper["lr"]
    if warmup > 0:
        lr = optax.linear_schedule(0.0, lr, warmup)
    factory = OPTIMIZERS[name][0]
    chain = [TRANSFORMS[t["name"]][0](**{k: hyper[f"transforms.{i}.{k}"] for k in t if k != "name"})
             for i, t in enumerate(plan["transforms"])]
    tx = optax.chain(*chain, factory(learning_rate=lr, **opt))
    if plan["skip_nonfinite"] > 0:
        tx = optax.apply_if_finite(tx, plan["skip_nonfinite"])
    return tx


@dataclasses.dataclass(frozen=True)
class Mitigation:
    """A named change to the baseline plan.

    Attributes:
      description: one line for `bench list` and reports.
      params: parameter name -> Key (its type, range and default; REQUIRED: must be given; None: keep the
        baseline's). Any parameter may be a list in a suite (a grid axis).
      apply: (plan, params) -> None, edits the plan in place.
    """

    description: str
    params: dict[str, Key]
    apply: Callable[[dict, dict], None]


def _transform(name):
    return lambda plan, p: plan["transforms"].append({"name": name, **p})


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
    "init": Mitigation("another weight initialiser (model key init, optional weight_var)",
                       {"init": Key(str), "weight_var": Key(float, None, gt=0)}, _model_keys),
    "activation": Mitigation("another activation function", {"activation": Key(str)}, _model_keys),
    "norm": Mitigation("normalisation after each linear layer", {"norm": Key(str, "batch")}, _model_keys),
    "residual": Mitigation("residual connections around hidden layers", {"residual": Key(bool, True)}, _model_keys),
    "depth": Mitigation("another depth", {"depth": Key(int, ge=1)}, _model_keys),
    "width": Mitigation("another width", {"width": Key(int, ge=1)}, _model_keys),
    "optimizer": Mitigation("another optimiser (optax name; optional lr)",
                            {"optimizer": Key(str, choices=tuple(OPTIMIZERS)),
                             "lr": dataclasses.replace(OPTIMIZER_KEYS["lr"], default=None)}, _optimizer),
}
