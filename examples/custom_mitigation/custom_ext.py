"""An example gradbench plugin: a custom optax transform and a small model family.

A suite imports it with `[suite] plugins = ["custom_ext.py"]` (a path relative to the suite file; an
importable module name works too). docs/EXTENDING.md walks through it.

- `ema_clip`: clip the gradient's global norm to `multiple` x an exponential moving average of the norms of
  the steps before (Zhang et al.'s "adaptive" clipping in spirit): a threshold that follows the gradient's own
  scale instead of a fixed `max_norm`. `multiple` is traced (a float input of the compiled program: a sweep
  over it compiles once); `window` is static (an int that shapes the program: the EMA's span in steps, and
  the steps of history it gathers before it clips), so each value compiles its own program.
- `resmlp`: a pre-activation residual MLP, h <- h + branch_scale x W act(h), with the MLP's keys (depth,
  width, activation, init, weight_var, bias_var), so one experiment can compare it with the built-in `mlp`
  over `family = ["mlp", "resmlp"]`.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from gradbench.spec import register
from gradbench.spec.register import Key
from gradbench.models import common


# --- the transform -----------------------------------------------------------------------------------------

class EmaClipState(NamedTuple):
    ema: jnp.ndarray  # EMA of the (clipped) global norms of the steps before
    count: jnp.ndarray  # steps seen


def ema_clip(multiple, window: int) -> optax.GradientTransformation:
    """Scale the gradient so its global norm is at most `multiple` x the debiased EMA of earlier norms, once
    `window` steps have been seen (before that: unchanged, only the EMA is gathered)."""
    decay = 1.0 - 1.0 / window  # a Python float: `window` is static, part of the compiled program

    def init(params):
        del params
        return EmaClipState(jnp.zeros([], jnp.float32), jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        debias = 1.0 - decay ** jnp.maximum(state.count, 1).astype(jnp.float32)
        limit = multiple * state.ema / debias
        ready = state.count >= window
        clip = ready & (norm > limit)
        scale = jnp.where(clip, limit / jnp.where(clip, norm, 1.0), 1.0)
        updates = jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates)
        seen = jnp.where(clip, limit, norm)  # a clipped step adds the limit, so one spike cannot lift it
        return updates, EmaClipState(decay * state.ema + (1.0 - decay) * seen, state.count + 1)

    return optax.GradientTransformation(init, update)


register.transform(
    "ema_clip", ema_clip,
    "clip the global norm to multiple x an EMA of the earlier steps' norms (after `window` steps)",
    params={"multiple": Key(float, 2.0, gt=0, traced=True, doc="the threshold over the EMA of past norms"),
            "window": Key(int, 10, ge=1, le=10_000, doc="the EMA's span in steps (static: compiles per value)")},
)


# --- the model family --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Config:
    """Suite [model] keys of the resmlp family."""

    depth: int = 4
    width: int = 64
    activation: str = "relu"
    init: str = "normal"
    weight_var: float = 1.0
    bias_var: float = 0.0
    branch_scale: float = 1.0  # each residual branch's output times this

    CHOICES: ClassVar[dict] = {"activation": tuple(common.ACTIVATIONS),
                               "init": tuple(n for n in common.INITIALISERS if n != "identity")}

    def __post_init__(self):
        if self.depth < 1 or self.width < 1:
            raise ValueError("depth and width must be >= 1")
        if self.weight_var <= 0 or self.bias_var < 0 or self.branch_scale <= 0:
            raise ValueError("weight_var and branch_scale must be > 0 and bias_var >= 0")


class Model(nnx.Module):
    """Input projection, `depth` residual blocks h + branch_scale x W act(h), linear read-out."""

    def __init__(self, config: Config, input_shape: tuple, output_dim: int, *, sequence_output: bool = False,
                 rngs: nnx.Rngs):
        if sequence_output:
            raise ValueError("the resmlp family predicts once per example; this task needs a sequence model")
        self.config = config
        kernel = common.INITIALISERS[config.init][0](config.weight_var)
        bias = common.bias_init(config.bias_var)
        self.project = nnx.Linear(math.prod(input_shape), config.width, kernel_init=kernel, bias_init=bias, rngs=rngs)
        self.blocks = nnx.List([nnx.Linear(config.width, config.width, kernel_init=kernel, bias_init=bias, rngs=rngs)
                                for _ in range(config.depth)])
        self.readout = nnx.Linear(config.width, output_dim, kernel_init=kernel, bias_init=bias, rngs=rngs)

    def forward(self, x, *, train: bool = True, shifts=None):
        """(output, per-block pre-activations, per-block outputs); `shifts` is added to each pre-activation."""
        del train
        act = common.activation(self.config.activation)
        h = self.project(x.reshape(x.shape[0], -1))
        preacts, acts = [], []
        for i, block in enumerate(self.blocks):
            z = block(act(h))
            if shifts is not None:
                z = z + shifts[i]
            h = h + self.config.branch_scale * z
            preacts.append(z)
            acts.append(h)
        return self.readout(act(h)).astype(jnp.float32), preacts, acts

    def layer_kernels(self):
        return [block.kernel[...] for block in self.blocks]

    def __call__(self, x, *, train: bool = True):
        return self.forward(x, train=train)[0]


DESCRIPTION = "residual MLP: h <- h + branch_scale x W act(h), depth blocks of width units (example plugin)"
register.model_family("resmlp", sys.modules[__name__])  # this module: DESCRIPTION, Config, Model
