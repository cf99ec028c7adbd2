"""Building blocks shared by the model families: activations and initialisers.

Everything here is a plain registry (name -> (function, one-line description)),
so a new activation or initialiser is one line, and the harness can list and
validate them without knowing any model.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.nn import initializers as jinit

ACTIVATIONS = {
    "linear": (lambda x: x, "identity; no non-linearity"),
    "sigmoid": (jax.nn.sigmoid, "logistic sigmoid, saturates at 0 and 1"),
    "tanh": (jnp.tanh, "hyperbolic tangent, saturates at -1 and 1"),
    "relu": (jax.nn.relu, "max(x, 0)"),
    "leaky_relu": (jax.nn.leaky_relu, "max(x, 0.01 x)"),
    "elu": (jax.nn.elu, "x for x > 0, exp(x) - 1 otherwise"),
    "gelu": (jax.nn.gelu, "Gaussian error linear unit"),
}


def _constant(weight_var):
    """All weights equal to sqrt(weight_var / fan_in): the scale of `normal`, no randomness."""

    def init(key, shape, dtype=jnp.float32):
        del key
        fan_in = math.prod(shape[:-1])
        return jnp.full(shape, jnp.sqrt(weight_var / fan_in), dtype)

    return init


def _identity(weight_var):
    """sqrt(weight_var) times the identity (square matrices; recurrent weights)."""
    del weight_var  # scaled by the recurrent family's own knob

    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.eye(shape[-2], shape[-1], dtype=dtype)

    return init


# name -> (factory(weight_var) -> initializer, description)
INITIALISERS = {
    "normal": (
        lambda v: jinit.variance_scaling(v, "fan_in", "normal"),
        "W ~ N(0, weight_var / fan_in)",
    ),
    "xavier": (lambda v: jinit.glorot_normal(), "Glorot/Xavier normal: Var = 2 / (fan_in + fan_out)"),
    "he": (lambda v: jinit.he_normal(), "He/Kaiming normal: Var = 2 / fan_in"),
    "lecun": (lambda v: jinit.lecun_normal(), "LeCun normal: Var = 1 / fan_in"),
    "orthogonal": (lambda v: jinit.orthogonal(jnp.sqrt(v)), "random orthogonal, scaled by sqrt(weight_var)"),
    "constant": (_constant, "every weight equal to sqrt(weight_var / fan_in)"),
    "identity": (_identity, "identity matrix (square weights, recurrent)"),
}
SCALE_FREE = ("xavier", "he", "lecun")  # initialisers that set their own scale and ignore weight_var


def kernel_init(name: str, weight_var: float):
    """The weight initialiser registered under `name`."""
    return INITIALISERS[name][0](weight_var)


def bias_init(bias_var: float):
    """b ~ N(0, bias_var); exactly zero when bias_var is 0."""
    return jinit.normal(jnp.sqrt(bias_var)) if bias_var > 0 else jinit.zeros


def activation(name: str):
    """The activation function registered under `name`."""
    return ACTIVATIONS[name][0]


# Mixed precision: activations and matrix products run in `dtype`; parameters (and so the optimiser state)
# stay float32, and every family casts its output to float32 so the loss is computed in float32.
DTYPES = {
    "float32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
}


def compute_dtype(name: str):
    """The jnp dtype of a `dtype` model key."""
    return DTYPES[name]


# name -> description. Roles of a dense layer: "input" (fan_in fixed as width grows: the first layer,
# embeddings), "hidden" (fan_in and fan_out grow with width), "output" (the read-out: fan_out fixed).
PARAMETERIZATIONS = {
    "standard": "W ~ init(weight_var / fan_in) for every layer, one learning rate for every parameter",
    "ntk": "NTK parameterisation: W drawn sqrt(fan_in) times larger and the layer's input multiplied by "
           "1/sqrt(fan_in): the same function at init, gradients of W scaled by 1/fan_in",
    "mup": "maximal update parameterisation (Yang and Hu 2021; Tensor Programs V, Table 3) relative to "
           "base_width: read-out variance divided by width_mult = width / base_width, per-group learning "
           "rates (SGD: input weights and hidden biases x width_mult, hidden x 1, read-out / width_mult; "
           "Adam-like: input and biases x 1, hidden and read-out / width_mult; read-out bias x 1); attention "
           "logits scaled 1/head_dim",
}


def scaled(init, factor: float):
    """`init` times a constant factor."""
    return lambda key, shape, dtype=jnp.float32: init(key, shape, dtype) * factor


def dense_init(name: str, weight_var: float, parameterization: str, role: str, fan_in: int,
               width_mult: float):
    """(kernel initialiser, input multiplier) of a dense layer of `role` (input | hidden | output)."""
    init = kernel_init(name, weight_var)
    if parameterization == "ntk":
        return scaled(init, math.sqrt(fan_in)), 1.0 / math.sqrt(fan_in)
    if parameterization == "mup" and role == "output":
        return scaled(init, 1.0 / math.sqrt(width_mult)), 1.0
    return init, 1.0


def mup_lr_multipliers(adaptive: bool, width_mult: float) -> dict:
    """Learning-rate multiplier per parameter group under muP (Tensor Programs V, Table 3).

    Groups: "input" (input weights, hidden biases and norm parameters: fan_out grows with width),
    "hidden", "output" (the read-out kernel) and "output_bias" (fan_in 1, fan_out fixed: unchanged).
    """
    if adaptive:
        return {"input": 1.0, "hidden": 1.0 / width_mult, "output": 1.0 / width_mult, "output_bias": 1.0}
    return {"input": width_mult, "hidden": 1.0, "output": 1.0 / width_mult, "output_bias": 1.0}


def _key_name(entry):
    """A key-path entry as a plain string or int."""
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return str(entry)


def path_labels(group_of):
    """An optax.multi_transform param_labels function: each parameter's group, `group_of(path)`."""
    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: group_of(tuple(_key_name(k) for k in path)), params)
    return labels
