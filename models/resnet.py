"""Small CIFAR-style ResNet: a 3x3 conv stem, `stages` stages of `blocks_per_stage` basic blocks, a linear read-out.

Stage s has `width * 2**s` channels; every stage after the first starts with
a stride-2 block. A basic block is conv -> norm -> act -> conv -> norm, plus
the skip (a 1x1 conv projection where the shape changes), then act. With
`residual = false` the skip is dropped: a plain CNN of the same depth.
Global average pooling feeds the read-out. `dtype` sets the precision of
activations and convolutions (parameters stay float32; the output is cast
to float32).

On CPU the convolutions run as im2col matrix products (about 10x faster there
than XLA's convolutions, measured); elsewhere as XLA's. The environment
variable RESNET_CONV=matmul|xla overrides the choice (for benchmarks).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from gradbench.models import common

DESCRIPTION = "ResNet/CNN for images: stages x blocks of 3x3 convs, norm, residual on/off, global pooling"


@dataclasses.dataclass(frozen=True)
class Config:
    """Suite `[model]` keys of the ResNet family."""

    stages: int = 3
    blocks_per_stage: int = 2
    width: int = 16
    activation: str = "relu"
    init: str = "he"
    weight_var: float = 2.0  # used by init "normal" (and orthogonal, constant): He scale for relu
    bias_var: float = 0.0
    norm: str = "batch"
    residual: bool = True
    dtype: str = "float32"

    CHOICES: ClassVar[dict] = {
        "dtype": tuple(common.DTYPES),
        "activation": tuple(common.ACTIVATIONS),
        "init": tuple(n for n in common.INITIALISERS if n != "identity"),
        "norm": ("none", "batch", "layer"),
    }

    def __post_init__(self):
        if self.stages < 1 or self.blocks_per_stage < 1 or self.width < 1:
            raise ValueError("stages, blocks_per_stage and width must be >= 1")
        if self.weight_var <= 0 or self.bias_var < 0:
            raise ValueError("weight_var must be > 0 and bias_var >= 0")


def conv_as_matmul(x_BxHxWxC, kernel_KxKxCxD, strides, padding, *, lhs_dilation=None, rhs_dilation=None,
                   feature_group_count=1, **unused):
    """A 'NHWC'/'HWIO' convolution (as nnx.Conv calls it) as shifted slices and one matrix product (im2col)."""
    if feature_group_count != 1 or any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))):
        raise NotImplementedError("conv_as_matmul: no dilation or feature groups")
    kh, kw, c, d = kernel_KxKxCxD.shape
    pads = lax.padtype_to_pads(x_BxHxWxC.shape[1:3], (kh, kw), strides, padding)
    x_pad = jnp.pad(x_BxHxWxC, ((0, 0), *pads, (0, 0)))
    ho, wo = (x_pad.shape[1] - kh) // strides[0] + 1, (x_pad.shape[2] - kw) // strides[1] + 1
    cols = [x_pad[:, i:i + (ho - 1) * strides[0] + 1:strides[0], j:j + (wo - 1) * strides[1] + 1:strides[1]]
            for i in range(kh) for j in range(kw)]
    patches_BxHxWxKKC = jnp.concatenate(cols, -1)
    return patches_BxHxWxKKC @ kernel_KxKxCxD.reshape(kh * kw * c, d)


def _conv_kernel_init(name: str, weight_var: float):
    """The registered initialiser, drawing a conv kernel as a (K*K*C, D) matrix where that gives the same values."""
    init = common.kernel_init(name, weight_var)
    if name == "xavier":  # its fan_out counts the receptive field: keep the 4-d shape
        return init
    # XLA on CPU compiles vmapped 4-d random draws about twice as slowly as 2-d ones (fan_in is the same).
    return lambda key, shape, dtype=jnp.float32: init(key, (math.prod(shape[:-1]), shape[-1]), dtype).reshape(shape)


def _conv_impl():
    """im2col on CPU, where XLA's convolutions are slow (and slower still vmapped over runs); XLA's elsewhere."""
    forced = os.environ.get("RESNET_CONV", "")
    if forced not in ("", "matmul", "xla"):
        raise ValueError(f"RESNET_CONV must be matmul or xla, got {forced!r}")
    if forced:
        return conv_as_matmul if forced == "matmul" else lax.conv_general_dilated
    return conv_as_matmul if jax.default_backend() == "cpu" else lax.conv_general_dilated


def _make_norm(kind: str, channels: int, rngs: nnx.Rngs, dtype=None):
    """A norm over channels-last feature maps, or None."""
    if kind == "batch":
        # Statistics over batch and space, per channel (the usual conv BatchNorm).
        return nnx.BatchNorm(channels, momentum=0.9, dtype=dtype, rngs=rngs)
    if kind == "layer":
        # Statistics over one example's whole feature map (LayerNorm = GroupNorm with one group).
        return nnx.LayerNorm(channels, reduction_axes=(-3, -2, -1), feature_axes=-1, dtype=dtype, rngs=rngs)
    return None


def _apply_norm(norm, x_BxHxWxC, train: bool):
    """Applies `norm` (BatchNorm uses batch statistics when training, running averages otherwise)."""
    if norm is None:
        return x_BxHxWxC
    if isinstance(norm, nnx.BatchNorm):
        return norm(x_BxHxWxC, use_running_average=not train)
    return norm(x_BxHxWxC)


class Block(nnx.Module):
    """A basic block; `__call__` returns its output before the final activation."""

    def __init__(self, c_in: int, c_out: int, stride: int, config: Config, conv: dict, rngs: nnx.Rngs):
        self.act_name = config.activation
        self.conv1 = nnx.Conv(c_in, c_out, (3, 3), stride, padding="SAME", **conv)
        self.norm1 = _make_norm(config.norm, c_out, rngs, conv["dtype"])
        self.conv2 = nnx.Conv(c_out, c_out, (3, 3), 1, padding="SAME", **conv)
        self.norm2 = _make_norm(config.norm, c_out, rngs, conv["dtype"])
        self.residual = config.residual
        # A projection only where the identity cannot be added (channels or resolution change).
        needs_proj = config.residual and (stride != 1 or c_in != c_out)
        self.proj = nnx.Conv(c_in, c_out, (1, 1), stride, padding="SAME", **conv) if needs_proj else None

    def __call__(self, x_BxHxWxC, *, train: bool):
        act = common.activation(self.act_name)
        h_BxHxWxD = act(_apply_norm(self.norm1, self.conv1(x_BxHxWxC), train))
        z_BxHxWxD = _apply_norm(self.norm2, self.conv2(h_BxHxWxD), train)
        if self.residual:
            z_BxHxWxD = z_BxHxWxD + (self.proj(x_BxHxWxC) if self.proj is not None else x_BxHxWxC)
        return z_BxHxWxD


class Model(nnx.Module):
    """The ResNet; `forward` also exposes per-block pre-activations for gradient probes."""

    def __init__(self, config: Config, input_shape: tuple, output_dim: int, *, sequence_output: bool = False,
                 rngs: nnx.Rngs):
        if sequence_output:
            raise ValueError("the resnet family predicts once per example; this task needs a sequence model (rnn)")
        if len(input_shape) != 3:
            raise ValueError(f"the resnet family needs image inputs shaped (H, W, C); this task gives {input_shape}")
        self.config = config
        channels = [config.width * 2**s for s in range(config.stages)]
        conv = dict(conv_general_dilated=_conv_impl(), kernel_init=_conv_kernel_init(config.init, config.weight_var),
                    bias_init=common.bias_init(config.bias_var), dtype=common.compute_dtype(config.dtype), rngs=rngs)
        self.stem = nnx.Conv(input_shape[-1], channels[0], (3, 3), 1, padding="SAME", **conv)
        self.stem_norm = _make_norm(config.norm, channels[0], rngs, conv["dtype"])
        blocks, c_in = [], channels[0]
        for s, c_out in enumerate(channels):
            for b in range(config.blocks_per_stage):
                blocks.append(Block(c_in, c_out, 2 if s > 0 and b == 0 else 1, config, conv, rngs))
                c_in = c_out
        self.blocks = nnx.List(blocks)
        self.readout = nnx.Linear(c_in, output_dim, kernel_init=common.kernel_init(config.init, config.weight_var),
                                  bias_init=conv["bias_init"], dtype=conv["dtype"], rngs=rngs)

    def forward(self, x_BxHxWxC, *, train: bool = True, shifts=None):
        """Returns (logits, pre-activations, activations): one entry for the stem, then one per block.

        A block's pre-activation is its output before the final activation
        (after the skip addition); `shifts[i]` is added there.
        """
        act = common.activation(self.config.activation)
        layers = [lambda v: _apply_norm(self.stem_norm, self.stem(v), train)]
        layers += [functools.partial(block, train=train) for block in self.blocks]
        preacts, acts = [], []
        h_BxHxWxD = x_BxHxWxC.astype(common.compute_dtype(self.config.dtype))
        for i, layer in enumerate(layers):
            z_BxHxWxD = layer(h_BxHxWxD)
            if shifts is not None:
                z_BxHxWxD = z_BxHxWxD + shifts[i]
            h_BxHxWxD = act(z_BxHxWxD)
            preacts.append(z_BxHxWxD)
            acts.append(h_BxHxWxD)
        pooled_BxD = jnp.mean(h_BxHxWxD, axis=(-3, -2))
        return self.readout(pooled_BxD).astype(jnp.float32), preacts, acts

    def layer_kernels(self):
        """Per `forward` entry, that layer's conv kernels flattened into one vector (for gradient probes)."""
        kernels = [self.stem.kernel[...].ravel()]
        for block in self.blocks:
            convs = [block.conv1, block.conv2] + ([block.proj] if block.proj is not None else [])
            kernels.append(jnp.concatenate([c.kernel[...].ravel() for c in convs]))
        return kernels

    def __call__(self, x_BxHxWxC, *, train: bool = True):
        return self.forward(x_BxHxWxC, train=train)[0]
