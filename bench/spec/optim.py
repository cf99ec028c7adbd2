"""Optimisers, gradient transformations and mitigations, each a registry by name.

A *plan* is the effective training recipe of a cell, a plain dict:
  {"task": {...}, "model": {...}, "optimizer": {"name", "lr", "warmup_steps", **kwargs},
   "transforms": [{"name", **params}, ...], "skip_nonfinite": int,
   "aux_losses": [{"name", **params}, ...], "loss_scaling": None | {"mode", "scale", "period"}}
A mitigation is a documented edit of the baseline plan; `combo` applies
several. Which plan values are *traced* (inputs of the compiled program, so
sweeping them never recompiles) and which are static (part of the program's
identity) is declared once, at the Key that defines each (`Key(...,
traced=True)`): the learning rate, the built-in transforms' and auxiliary
losses' parameters and the loss scale and its period are traced; a plugin's
transform may declare static ints or strings. `traced_values` and
`static_plan` (the plan's two halves), `build`, `aux_loss` and
`loss_scale_*` all read that declaration (`_slots`, `slot`).

Every registry is written by the register_* functions, built-in entries and
plugins' alike (gradbench.spec.register is the public API; docs/EXTENDING.md).
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradbench.spec import plugins
from gradbench.spec.build import init_powers
from gradbench.spec.schema import REQUIRED, Key  # noqa: F401  (REQUIRED: re-exported)

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


class Transform(NamedTuple):
    """A gradient transformation: `factory(**params)` -> optax.GradientTransformation."""

    factory: Callable
    description: str
    params: dict  # name -> Key (traced=True: an input of the compiled program; else part of its identity)
    after_optimizer: bool = False  # acts on the optimiser's update (else on the gradient before it)


class AuxLoss(NamedTuple):
    """An auxiliary training loss: `fn(prediction, **params)` -> scalar added to the training loss."""

    fn: Callable
    description: str
    params: dict  # name -> Key, as Transform's


def _z_loss(pred, coefficient):
    """coefficient x mean over predictions of log^2 Z, Z the softmax normaliser of the logits (PaLM's z-loss)."""
    return coefficient * jnp.mean(jax.nn.logsumexp(pred.astype(jnp.float32), axis=-1) ** 2)


# The registries (name -> entry); written only by the register_* functions below (gradbench.spec.register is the
# public API over them), built-in entries and plugins' alike.
TRANSFORMS: dict[str, Transform] = {}
AUX_LOSSES: dict[str, AuxLoss] = {}
MITIGATIONS: dict[str, "Mitigation"] = {}

LOSS_SCALING_MODES = ("static", "dynamic")
# The plan's loss_scaling table (and the loss_scaling mitigation's parameters).
LOSS_SCALING_KEYS = {"mode": Key(str, "dynamic", choices=LOSS_SCALING_MODES),
                     "scale": Key(float, 2.0**15, ge=1, traced=True),
                     "period": Key(int, 2000, ge=1, traced=True)}


# The range of every optimiser keyword that has one (any other keyword: its default's type, finite).
OPTIMIZER_KEYS = {
    "lr": Key(float, 0.01, gt=0, log_grid=True, doc="learning rate", traced=True),
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


# The plan's lists of registered entries, {"name", **params} each: list -> its registry.
ENTRY_LISTS = {"transforms": TRANSFORMS, "aux_losses": AUX_LOSSES}


def slot(section: str, key: str, index: int | None = None) -> str:
    """The name of a traced plan value among a run's hyperparameters: `lr` (an optimiser key), `transforms.0.max_norm`
    (an entry of a list), `loss_scaling.scale`."""
    if section == "optimizer":
        return key
    return f"{section}.{index}.{key}" if index is not None else f"{section}.{key}"


def _slots(plan: dict):
    """(section, index, key, table) of every plan value whose Key is declared traced (gradbench.spec.schema.Key)."""
    keys = optimizer_keys(plan["optimizer"]["name"])
    for key in plan["optimizer"]:
        if key in keys and keys[key].traced:
            yield "optimizer", None, key, plan["optimizer"]
    for section, registry in ENTRY_LISTS.items():
        for i, entry in enumerate(plan.get(section, [])):
            params = registry[entry["name"]].params
            for key in entry:
                if key != "name" and params[key].traced:
                    yield section, i, key, entry
    if plan.get("loss_scaling"):
        for key in plan["loss_scaling"]:
            if LOSS_SCALING_KEYS[key].traced:
                yield "loss_scaling", None, key, plan["loss_scaling"]


def traced_values(plan: dict) -> dict[str, float]:
    """The plan's traced hyperparameters, as a flat name -> value dict (every value a float)."""
    values = {slot(section, key, i): float(table[key]) for section, i, key, table in _slots(plan)}
    values.update({f"model.{k}": float(plan["model"][k]) for k in init_powers(plan["task"], plan["model"])})
    return values


def static_plan(plan: dict) -> dict:
    """The plan with traced values blanked (None): equal static plans share a compiled program."""
    plan = copy.deepcopy(plan)
    for _, _, key, table in list(_slots(plan)):
        table[key] = None
    plan["model"].update(dict.fromkeys(init_powers(plan["task"], plan["model"])))
    return plan


def entry_params(plan: dict, hyper: dict, section: str, index: int) -> dict:
    """The parameters of entry `index` of a (static) plan's list: static ones from the plan, traced ones from
    `hyper`."""
    entry = plan[section][index]
    params = ENTRY_LISTS[section][entry["name"]].params
    return {k: hyper[slot(section, k, index)] if params[k].traced else v for k, v in entry.items() if k != "name"}


def _value(plan: dict, hyper: dict, section: str, key: str):
    """A plan table's value: from `hyper` when its Key is traced, else the plan's."""
    spec = optimizer_keys(plan["optimizer"]["name"]).get(key) if section == "optimizer" else LOSS_SCALING_KEYS[key]
    return hyper[slot(section, key)] if spec is not None and spec.traced else plan[section][key]


def adaptive(plan: dict) -> bool:
    """Whether the plan's optimiser is Adam-like (scale-invariant updates)."""
    return plan["optimizer"]["name"] in ADAPTIVE


def build(plan: dict, hyper: dict, lr_groups=None) -> optax.GradientTransformation:
    """The optax chain of a (static) plan with traced hyperparameters `hyper` filled in.

    `lr_groups` (from the model's `lr_groups`, or None): (param_labels, {group: multiplier}); each
    group's update is scaled by its multiplier, i.e. a per-group learning rate (optax.multi_transform).
    """
    opt = {k: _value(plan, hyper, "optimizer", k) for k in plan["optimizer"] if k != "name"}
    name, warmup = plan["optimizer"]["name"], opt.pop("warmup_steps")
    lr = opt.pop("lr")
    if warmup > 0:
        lr = optax.linear_schedule(0.0, lr, warmup)
    factory = OPTIMIZERS[name][0]
    made = [(TRANSFORMS[t["name"]], TRANSFORMS[t["name"]].factory(**entry_params(plan, hyper, "transforms", i)))
            for i, t in enumerate(plan["transforms"])]
    chain = [tx for spec, tx in made if not spec.after_optimizer] + [factory(learning_rate=lr, **opt)]
    if lr_groups is not None:
        labels, multipliers = lr_groups
        chain.append(optax.multi_transform({g: optax.scale(m) for g, m in multipliers.items()}, labels))
    chain += [tx for spec, tx in made if spec.after_optimizer]
    tx = optax.chain(*chain)
    if plan["skip_nonfinite"] > 0:
        tx = optax.apply_if_finite(tx, plan["skip_nonfinite"])
    return tx


def aux_loss(plan: dict, hyper: dict, pred):
    """The sum of the plan's auxiliary training losses on the prediction (0.0 when it has none)."""
    total = jnp.zeros((), jnp.float32)
    for i, term in enumerate(plan.get("aux_losses", [])):
        total = total + AUX_LOSSES[term["name"]].fn(pred, **entry_params(plan, hyper, "aux_losses", i))
    return total


def loss_scale_init(plan: dict, hyper: dict) -> dict:
    """The loss-scaling state of a run: the current scale (1 without loss scaling) and finite steps in a row."""
    scale = _value(plan, hyper, "loss_scaling", "scale") if plan.get("loss_scaling") else 1.0
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
    grow = good >= _value(plan, hyper, "loss_scaling", "period")
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


def _check_params(kind: str, name: str, params: dict) -> dict:
    """A registration's parameters: name -> Key; a transform's or auxiliary loss's traced one (a plan value) an
    int or float with a default or REQUIRED."""
    if not isinstance(params, dict):
        raise ValueError(f"{kind} {name!r}: params must be a dict of name -> Key")
    for key, spec in params.items():
        if not isinstance(spec, Key):
            raise ValueError(f"{kind} {name!r}: parameter {key!r} must be a gradbench.spec.register.Key, got {spec!r}")
        if key == "name" or not key.isidentifier():
            raise ValueError(f"{kind} {name!r}: parameter name {key!r} is not allowed (an identifier, not 'name')")
        if kind != "mitigation" and spec.traced and (spec.type not in (int, float) or spec.default is None):
            raise ValueError(f"{kind} {name!r}: parameter {key!r} is traced, so it must be an int or float with a "
                             "default (or REQUIRED)")
    return dict(params)


def _entry(section: str, name: str):
    return lambda plan, p: plan.setdefault(section, []).append({"name": name, **p})


def register_mitigation(name: str, description: str, params: dict, apply: Callable[[dict, dict], None],
                        lists: tuple = ()) -> Mitigation:
    """Registers a mitigation: `apply(plan, params)` edits a cell's plan in place (ValueError on a bad value);
    `params` (name -> Key) are its suite keys, checked and defaulted before `apply` sees them."""
    params = _check_params("mitigation", name, params)
    if not callable(apply):
        raise ValueError(f"mitigation {name!r}: apply must be a function (plan, params) -> None")
    plugins.registering("mitigation", name, MITIGATIONS)
    MITIGATIONS[name] = Mitigation(description, params, apply, tuple(lists))
    return MITIGATIONS[name]


def register_transform(name: str, factory: Callable, description: str, params: dict, *,
                       after_optimizer: bool = False, mitigation: str | None = None) -> Transform:
    """Registers an optax gradient transformation, `factory(**params)` -> optax.GradientTransformation, and the
    mitigation of the same name that adds it to a plan's chain (before the optimiser, or after it where
    `after_optimizer`); `mitigation` is that mitigation's description (default: `description`)."""
    params = _check_params("transform", name, params)
    if not callable(factory):
        raise ValueError(f"transform {name!r}: factory must be a function (**params) -> optax.GradientTransformation")
    plugins.registering("transform", name, TRANSFORMS)
    plugins.registering("mitigation", name, MITIGATIONS)
    TRANSFORMS[name] = Transform(factory, description, params, bool(after_optimizer))
    register_mitigation(name, mitigation or description, params, _entry("transforms", name))
    return TRANSFORMS[name]


def register_aux_loss(name: str, fn: Callable, description: str, params: dict, *,
                      mitigation: str | None = None) -> AuxLoss:
    """Registers an auxiliary training loss, `fn(prediction, **params)` -> scalar added to the training loss, and
    the mitigation of the same name that adds it to a plan."""
    params = _check_params("aux_loss", name, params)
    if not callable(fn):
        raise ValueError(f"aux_loss {name!r}: fn must be a function (prediction, **params) -> scalar")
    plugins.registering("aux_loss", name, AUX_LOSSES)
    plugins.registering("mitigation", name, MITIGATIONS)
    AUX_LOSSES[name] = AuxLoss(fn, description, params)
    register_mitigation(name, mitigation or description, params, _entry("aux_losses", name))
    return AUX_LOSSES[name]


def _loss_scaling(plan, params):
    plan["loss_scaling"] = {key: params[key] for key in LOSS_SCALING_KEYS}


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


_POSITIVE = dict(type=float, gt=0, traced=True)
# The built-in entries, registered as a plugin registers its own (gradbench.spec.register), in `bench list` order.
register_mitigation("none", "the baseline, unchanged", {}, lambda plan, p: None)
register_transform("clip_by_global_norm", lambda max_norm: optax.clip_by_global_norm(max_norm),
                   "rescale the gradient so its global norm is at most max_norm",
                   {"max_norm": Key(default=1.0, **_POSITIVE)},
                   mitigation="optax.clip_by_global_norm before the optimiser")
register_transform("clip_by_value", lambda max_value: optax.clip(max_value),
                   "clip every gradient entry to [-max_value, max_value]",
                   {"max_value": Key(default=1.0, **_POSITIVE)},
                   mitigation="optax.clip (element-wise) before the optimiser")
register_transform("adaptive_grad_clip", lambda clipping: optax.adaptive_grad_clip(clipping),
                   "clip each unit's gradient to clipping x its weight norm (Brock et al. 2021)",
                   {"clipping": Key(default=0.01, **_POSITIVE)},
                   mitigation="optax.adaptive_grad_clip before the optimiser")
register_mitigation("skip_nonfinite", "optax.apply_if_finite: skip updates with NaN/Inf gradients (a non-finite loss "
                    "or gradient still counts as divergence)", {"max_consecutive_errors": Key(int, 5, ge=1)},
                    lambda plan, p: plan.update(skip_nonfinite=p["max_consecutive_errors"]))
register_mitigation("warmup", "linear learning-rate warm-up from 0 over warmup_steps",
                    {"warmup_steps": Key(int, 100, ge=1)},
                    lambda plan, p: plan["optimizer"].update(warmup_steps=p["warmup_steps"]))
register_mitigation("init", "another weight initialiser (model key init, optional weight_var and readout_scale)",
                    {"init": Key(str), "weight_var": Key(float, None, gt=0),
                     "readout_scale": Key(float, None, gt=0)}, _model_keys)
register_mitigation("activation", "another activation function", {"activation": Key(str)}, _model_keys)
register_mitigation("norm", "normalisation after each linear layer", {"norm": Key(str, "batch")}, _model_keys)
register_mitigation("residual", "residual connections around hidden layers", {"residual": Key(bool, True)},
                    _model_keys)
register_mitigation("depth", "another depth", {"depth": Key(int, ge=1)}, _model_keys)
register_mitigation("width", "another width", {"width": Key(int, ge=1)}, _model_keys)
register_mitigation("optimizer", "another optimiser (optax name; optional lr)",
                    {"optimizer": Key(str, choices=tuple(OPTIMIZERS)),
                     "lr": dataclasses.replace(OPTIMIZER_KEYS["lr"], default=None)}, _optimizer)
register_transform("weight_decay", _independent_weight_decay,
                   "independent weight decay: theta -= weight_decay * theta each step, independent of the learning "
                   "rate and its schedule (Loshchilov and Hutter 2019; Wortsman et al. 2023)",
                   {"weight_decay": Key(default=1e-4, **_POSITIVE)}, after_optimizer=True,
                   mitigation="independent weight decay (not scaled by the learning rate) after the optimiser")
register_aux_loss("z_loss", _z_loss, "coefficient x log^2 Z of the output softmax (Chowdhery et al. 2022)",
                  {"coefficient": Key(default=1e-4, **_POSITIVE)},
                  mitigation="auxiliary loss coefficient x log^2 Z of the output softmax (z-loss)")
register_mitigation("loss_scaling", "loss scaling: the loss x scale before the backward pass, gradients / scale after; "
                    "dynamic: halve and skip on overflow, double after `period` finite steps (jmp.DynamicLossScale)",
                    LOSS_SCALING_KEYS, _loss_scaling)
register_mitigation("qk_norm", "LayerNorm on attention queries and keys (transformer)", {"qk_norm": Key(bool, True)},
                    _model_keys)
register_mitigation("parameterization", "another parameterisation (standard, ntk, mup)",
                    {"parameterization": Key(str)}, _model_keys)
register_mitigation("dtype", "another compute precision (float32, bfloat16, float16)", {"dtype": Key(str)},
                    _model_keys)
register_mitigation("attention_dtype", "the attention logits and softmax in another precision (transformer; float32: "
                    "the usual upcast under a low-precision dtype)", {"attention_dtype": Key(str, "float32")},
                    _model_keys)
register_mitigation("combo", "several mitigations at once, applied in order: apply = [{name = ...}, ...]",
                    {"apply": Key(list, of=dict, nonempty=True)}, _combo, lists=("apply",))
