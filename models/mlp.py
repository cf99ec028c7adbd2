"""Multi-layer perceptron: `depth` hidden layers of `width` units, then a linear read-out.

Each hidden layer is Linear -> [BatchNorm | LayerNorm] -> activation, with an
optional residual connection around every hidden layer whose input and
output widths match (all but the first).
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

from flax import nnx

from models import common

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

    CHOICES: ClassVar[dict] = {
        "activation": tuple(common.ACTIVATIONS),
        "init": tuple(n for n in common.INITIALISERS if n != "identity"),
        "norm": ("none", "batch", "layer"),
    }

    def __post_init__(self):
        if self.depth < 1 or self.width < 1:
            raise ValueError("depth and width must be >= 1")
        if self.weight_var <= 0 or self.bias_var < 0:
            raise ValueError("weight_var must be > 0 and bias_var >= 0")


NORMS = {
    "none": None,
    "batch": lambda n, rngs: nnx.BatchNorm(n, momentum=0.9, rngs=rngs),
    "layer": lambda n, rngs: nnx.LayerNorm(n, rngs=rngs),
}


class Model(nnx.Module):
    """The MLP; `forward` also exposes pre-activations for gradient probes."""

    def __init__(self, config: Config, input_shape: tuple, output_dim: int, *, sequence_output: bool = False,
                 rngs: nnx.Rngs):
        if sequence_output:
            raise ValueError("the mlp family predicts once per example; this task needs a sequence model (rnn)")
        self.config = config
        kernel = common.kernel_init(config.init, config.weight_var)
        bias = common.bias_init(config.bias_var)
        widths = [math.prod(input_shape)] + [config.width] * config.depth
        self.layers = nnx.List([
            nnx.Linear(w_in, w_out, kernel_init=kernel, bias_init=bias, rngs=rngs)
            for w_in, w_out in zip(widths[:-1], widths[1:])
        ])
        make_norm = NORMS[config.norm]
        self.norms = nnx.List([make_norm(config.width, rngs) for _ in range(config.depth)]) if make_norm else None
        self.readout = nnx.Linear(config.width, output_dim, kernel_init=kernel, bias_init=bias, rngs=rngs)

    def forward(self, x_BxI, *, train: bool = True, shifts=None):
        """Returns (output, per-layer pre-activations, per-layer activations).

        `shifts` (one array per hidden layer, shaped like its pre-activation)
        is added to each pre-activation: the gradient of the loss with respect
        to a zero shift is the gradient with respect to that pre-activation.
        """
        act = common.activation(self.config.activation)
        h_BxW = x_BxI.reshape(x_BxI.shape[0], -1)
        preacts, acts = [], []
        for i, layer in enumerate(self.layers):
            z_BxW = layer(h_BxW)
            if self.norms is not None:
                z_BxW = (self.norms[i](z_BxW, use_running_average=not train)
                         if self.config.norm == "batch" else self.norms[i](z_BxW))
            if shifts is not None:
                z_BxW = z_BxW + shifts[i]
            a_BxW = act(z_BxW)
            h_BxW = h_BxW + a_BxW if self.config.residual and i > 0 else a_BxW
            preacts.append(z_BxW)
            acts.append(h_BxW)
        return self.readout(h_BxW), preacts, acts

    def layer_kernels(self):
        """The weight matrix of every hidden layer, input side first (for gradient probes)."""
        return [layer.kernel[...] for layer in self.layers]

    def __call__(self, x_BxI, *, train: bool = True):
        return self.forward(x_BxI, train=train)[0]
