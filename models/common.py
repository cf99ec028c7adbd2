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
