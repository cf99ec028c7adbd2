"""Multi-layer perceptron: `depth` hidden layers of `width` units, then a linear read-out.

Each hidden layer is Linear -> [BatchNorm | LayerNorm] -> activation, with an
optional residual connection around every hidden layer whose input and
output widths match (all but the first).

`parameterization` (standard, ntk, mup; models.common.PARAMETERIZATIONS)
sets how initial scales and per-layer learning rates depend on the width;
`dtype` the precision of activations and matrix products (parameters stay
float32; the output is cast to float32).
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax.numpy as jnp
from flax import nnx

from gradbench.models import common

DESCRIPTION = "MLP: depth x width hidden layers, any activation, initialiser, norm, residual"


@dataclasses.dataclass(frozen=True)
class Config:
    """Suite `[model]` keys of the MLP family."""

    depth: int = 4
    width: int = 64
    activation: str = "relu"
    init: str = "lecun"
    weight_var: float = 1.0
    bias_var: float = 0.0
    norm: str = "none"
    residual: bool = False
    parameterization: str = "standard"
    base_width: int = 64  # muP: the width at which it equals standard parameterisation
    dtype: str = "float32"
    readout_scale: float = 1.0  # the read-out's initial weights times this: the starting function, not the body

    CHOICES: ClassVar[dict] = {
        "activation": tuple(common.ACTIVATIONS),
        "init": tuple(n for n in common.INITIALISERS if n != "identity"),
        "norm": ("none", "batch", "layer"),
        "parameterization": tuple(common.PARAMETERIZATIONS),
        "dtype": tuple(common.DTYPES),
    }

    def __post_init__(self):
        if self.depth < 1 or self.width < 1 or self.base_width < 1:
            raise ValueError("depth, width and base_width must be >= 1")
        if self.weight_var <= 0 or self.bias_var < 0 or self.readout_scale <= 0:
            raise ValueError("weight_var and readout_scale must be > 0 and bias_var >= 0")


NORMS = {
    "none": None,
    "batch": lambda n, dtype, rngs: nnx.BatchNorm(n, momentum=0.9, dtype=dtype, rngs=rngs),
    "layer": lambda n, dtype, rngs: nnx.LayerNorm(n, dtype=dtype, rngs=rngs),
}


class Model(nnx.Module):
    """The MLP; `forward` also exposes pre-activations for gradient probes."""

    def __init__(self, config: Config, input_shape: tuple, output_dim: int, *, sequence_output: bool = False,
                 rngs: nnx.Rngs):
        if sequence_output:
            raise ValueError("the mlp family predicts once per example; this task needs a sequence model (rnn)")
        self.config = config
        dtype = common.compute_dtype(config.dtype)
        bias = common.bias_init(config.bias_var)
        widths = [math.prod(input_shape)] + [config.width] * config.depth
        width_mult = config.width / config.base_width
        roles = ["input"] + ["hidden"] * (config.depth - 1) + ["output"]
        inits = [common.dense_init(config.init, config.weight_var, config.parameterization, role, w_in, width_mult)
                 for role, w_in in zip(roles, widths)]
        self.multipliers = tuple(m for _, m in inits)  # input multipliers (ntk: 1/sqrt(fan_in)), read-out last
        self.layers = nnx.List([
            nnx.Linear(w_in, w_out, kernel_init=k, bias_init=bias, dtype=dtype, rngs=rngs)
            for w_in, w_out, (k, _) in zip(widths[:-1], widths[1:], inits)
        ])
        make_norm = NORMS[config.norm]
        self.norms = (nnx.List([make_norm(config.width, dtype, rngs) for _ in range(config.depth)])
                      if make_norm else None)
        readout_init = inits[-1][0]
        if config.readout_scale != 1.0:
            readout_init = common.scaled(readout_init, config.readout_scale)
        self.readout = nnx.Linear(config.width, output_dim, kernel_init=readout_init, bias_init=bias, dtype=dtype,
                                  rngs=rngs)

    def forward(self, x_BxI, *, train: bool = True, shifts=None):
        """Returns (output, per-layer pre-activations, per-layer activations).

        `shifts` (one array per hidden layer, shaped like its pre-activation)
        is added to each pre-activation: the gradient of the loss with respect
        to a zero shift is the gradient with respect to that pre-activation.
        """
        act = common.activation(self.config.activation)
        h_BxW = x_BxI.reshape(x_BxI.shape[0], -1).astype(common.compute_dtype(self.config.dtype))
        preacts, acts = [], []
        for i, layer in enumerate(self.layers):
            z_BxW = layer(h_BxW * self.multipliers[i] if self.multipliers[i] != 1.0 else h_BxW)
            if self.norms is not None:
                z_BxW = (self.norms[i](z_BxW, use_running_average=not train)
                         if self.config.norm == "batch" else self.norms[i](z_BxW))
            if shifts is not None:
                z_BxW = z_BxW + shifts[i]
            a_BxW = act(z_BxW)
            h_BxW = h_BxW + a_BxW if self.config.residual and i > 0 else a_BxW
            preacts.append(z_BxW)
            acts.append(h_BxW)
        out = self.readout(h_BxW * self.multipliers[-1] if self.multipliers[-1] != 1.0 else h_BxW)
        return out.astype(jnp.float32), preacts, acts

    def layer_kernels(self):
        """The weight matrix of every hidden layer, input side first (for gradient probes)."""
        return [layer.kernel[...] for layer in self.layers]

    def lr_groups(self, adaptive: bool):
        """muP: (param_labels function, learning-rate multiplier per group); None for other parameterisations."""
        if self.config.parameterization != "mup":
            return None

        def group(path):
            if path[0] == "readout":
                return "output" if path[-2] == "kernel" else "output_bias"
            if path[-2] != "kernel":
                return "input"  # hidden biases and norm parameters
            return "input" if path[1] == 0 else "hidden"

        width_mult = self.config.width / self.config.base_width
        return common.path_labels(group), common.mup_lr_multipliers(adaptive, width_mult)

    def __call__(self, x_BxI, *, train: bool = True):
        return self.forward(x_BxI, train=train)[0]
