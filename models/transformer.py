"""Decoder-only Transformer: token (or feature) embedding, `layers` causal blocks, a linear read-out.

A block is causal multi-head self-attention then an MLP (d_model -> mlp_ratio
d_model -> d_model), each added to the residual stream. `norm` places
LayerNorm: `pre` (GPT-2: before each sub-block, and once more before the
read-out), `post` (the original: after each residual addition) or `none`.
`qk_norm` applies LayerNorm over the head dimension to queries and keys
(Dehghani et al. 2023), which bounds the attention logits.

Inputs: a task whose examples are shaped (T,) gives integer tokens in
[0, output_dim) (the vocabulary is the output's); (T, F) gives features,
projected linearly. Token and learned position embeddings are drawn
N(0, 1/2) each, so their sum has unit variance. With sequence_output the
read-out predicts at every position, otherwise at the last one.

`parameterization` (standard, ntk, mup; models.common.PARAMETERIZATIONS)
scales initialisations and per-group learning rates with d_model relative to
base_width; muP also scales attention logits by 1/head_dim (times
sqrt(base head_dim)) instead of 1/sqrt(head_dim). `dtype` sets the
precision of activations, matrix products and the softmax (parameters stay
float32; the output logits are cast to float32). `attention_dtype` ("compute":
the same) computes the attention logits and their softmax in another
precision: queries and keys are cast to it before their product, the
probabilities back to `dtype` before they weight the values (float32 here is
the usual mixed-precision upcast of the softmax).

For gradient probes the "layers" of `forward` are the blocks: entry i is the
residual stream after block i. `diagnostics` returns instability measures
(Wortsman et al. 2023) beside the prediction: the largest attention logit,
the attention entropy of the most collapsed head and the output log-normaliser.
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx
from jax.nn import initializers as jinit

from gradbench.models import common

DESCRIPTION = "decoder-only Transformer: causal attention, pre/post/no LayerNorm, qk-norm, muP, mixed precision"

# name -> (how it is reduced over training steps, description); the values come from `diagnostics`.
DIAGNOSTICS = {
    "max_attn_logit": ("max", "largest attention logit (after scaling, over layers, heads and positions)"),
    "min_attn_entropy": ("min", "attention entropy of the most collapsed head, normalised by log(#keys) "
                                "(1: uniform over the causal window, 0: one-hot), mean over queries after the first"),
    "max_abs_log_z": ("max", "mean |log Z| of the output softmax (log Z = logsumexp of the logits)"),
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Suite `[model]` keys of the Transformer family."""

    layers: int = 2
    d_model: int = 64
    heads: int = 4
    mlp_ratio: int = 4
    activation: str = "gelu"
    norm: str = "pre"
    qk_norm: bool = False
    init: str = "normal"
    weight_var: float = 1.0
    bias_var: float = 0.0
    parameterization: str = "standard"
    base_width: int = 64  # muP: the d_model at which it equals standard parameterisation
    dtype: str = "float32"
    attention_dtype: str = "compute"

    CHOICES: ClassVar[dict] = {
        "activation": tuple(common.ACTIVATIONS),
        "init": tuple(n for n in common.INITIALISERS if n != "identity"),
        "norm": ("pre", "post", "none"),
        "parameterization": tuple(common.PARAMETERIZATIONS),
        "dtype": tuple(common.DTYPES),
        "attention_dtype": ("compute", *common.DTYPES),
    }

    def __post_init__(self):
        if min(self.layers, self.d_model, self.heads, self.mlp_ratio, self.base_width) < 1:
            raise ValueError("layers, d_model, heads, mlp_ratio and base_width must be >= 1")
        if self.d_model % self.heads or self.base_width % self.heads:
            raise ValueError(f"d_model ({self.d_model}) and base_width ({self.base_width}) must be multiples "
                             f"of heads ({self.heads})")
        if self.weight_var <= 0 or self.bias_var < 0:
            raise ValueError("weight_var must be > 0 and bias_var >= 0")


class Dense(nnx.Module):
    """nnx.Linear whose input is multiplied by the parameterisation's multiplier (ntk: 1/sqrt(fan_in))."""

    def __init__(self, d_in: int, d_out: int, role: str, config: Config, rngs: nnx.Rngs):
        width_mult = config.d_model / config.base_width
        init, self.multiplier = common.dense_init(config.init, config.weight_var, config.parameterization, role,
                                                  d_in, width_mult)
        self.linear = nnx.Linear(d_in, d_out, kernel_init=init, bias_init=common.bias_init(config.bias_var),
                                 dtype=common.compute_dtype(config.dtype), rngs=rngs)

    def __call__(self, x):
        return self.linear(x * self.multiplier if self.multiplier != 1.0 else x)


def _norm(config: Config, features: int, rngs: nnx.Rngs):
    return nnx.LayerNorm(features, dtype=common.compute_dtype(config.dtype), rngs=rngs)


class Attention(nnx.Module):
    """Causal multi-head self-attention; returns (output, largest logit, normalised entropy per head)."""

    def __init__(self, config: Config, rngs: nnx.Rngs):
        d, self.heads = config.d_model, config.heads
        self.head_dim = d // config.heads
        self.logit_dtype = common.compute_dtype(
            config.dtype if config.attention_dtype == "compute" else config.attention_dtype)
        self.qkv = Dense(d, 3 * d, "hidden", config, rngs)
        self.out = Dense(d, d, "hidden", config, rngs)
        self.q_norm = _norm(config, self.head_dim, rngs) if config.qk_norm else None
        self.k_norm = _norm(config, self.head_dim, rngs) if config.qk_norm else None
        if config.parameterization == "mup":
            self.scale = math.sqrt(config.base_width // config.heads) / self.head_dim
        else:
            self.scale = 1.0 / math.sqrt(self.head_dim)

    def queries_keys(self, x_BxTxD):
        """Queries and keys (B, T, heads, head_dim) after qk-norm, and the values."""
        b, t, _ = x_BxTxD.shape
        q, k, v = jnp.split(self.qkv(x_BxTxD).reshape(b, t, 3 * self.heads, self.head_dim), 3, axis=2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def __call__(self, x_BxTxD):
        b, t, d = x_BxTxD.shape
        q_BxTxHxE, k_BxSxHxE, v_BxSxHxE = self.queries_keys(x_BxTxD)
        q_BxTxHxE, k_BxSxHxE = q_BxTxHxE.astype(self.logit_dtype), k_BxSxHxE.astype(self.logit_dtype)
        logits_BxHxTxS = jnp.einsum("bthe,bshe->bhts", q_BxTxHxE, k_BxSxHxE) * jnp.asarray(self.scale, self.logit_dtype)
        causal_TxS = jnp.tril(jnp.ones((t, t), bool))
        probs_BxHxTxS = jax.nn.softmax(jnp.where(causal_TxS, logits_BxHxTxS, -jnp.inf), axis=-1)
        out_BxTxD = jnp.einsum("bhts,bshe->bthe", probs_BxHxTxS.astype(v_BxSxHxE.dtype), v_BxSxHxE).reshape(b, t, d)
        # Diagnostics in float32 (they do not feed the loss).
        logits32 = logits_BxHxTxS.astype(jnp.float32)
        max_logit = jnp.max(jnp.where(causal_TxS, logits32, -jnp.inf))
        p32 = probs_BxHxTxS.astype(jnp.float32)
        entropy_BxHxT = -jnp.sum(jnp.where(p32 > 0, p32 * jnp.log(jnp.where(p32 > 0, p32, 1.0)), 0.0), axis=-1)
        n_keys_T = jnp.arange(1, t + 1, dtype=jnp.float32)
        normalised_H = (jnp.mean(entropy_BxHxT[..., 1:] / jnp.log(n_keys_T[1:]), axis=(0, 2)) if t > 1
                        else jnp.ones((self.heads,), jnp.float32))
        return self.out(out_BxTxD), max_logit, normalised_H


class Block(nnx.Module):
    """Attention then MLP, each added to the residual stream, with LayerNorm placed by `norm`."""

    def __init__(self, config: Config, rngs: nnx.Rngs):
        d, hidden = config.d_model, config.mlp_ratio * config.d_model
        self.norm_kind = config.norm
        self.act_name = config.activation
        self.attn = Attention(config, rngs)
        self.up = Dense(d, hidden, "hidden", config, rngs)
        self.down = Dense(hidden, d, "hidden", config, rngs)
        self.norm1 = _norm(config, d, rngs) if config.norm != "none" else None
        self.norm2 = _norm(config, d, rngs) if config.norm != "none" else None

    def __call__(self, h_BxTxD):
        mlp = lambda v: self.down(common.activation(self.act_name)(self.up(v)))  # noqa: E731
        if self.norm_kind == "pre":
            a, max_logit, entropy = self.attn(self.norm1(h_BxTxD))
            h_BxTxD = h_BxTxD + a
            return h_BxTxD + mlp(self.norm2(h_BxTxD)), max_logit, entropy
        a, max_logit, entropy = self.attn(h_BxTxD)
        h_BxTxD = h_BxTxD + a
        if self.norm_kind == "post":
            h_BxTxD = self.norm1(h_BxTxD)
            return self.norm2(h_BxTxD + mlp(h_BxTxD)), max_logit, entropy
        return h_BxTxD + mlp(h_BxTxD), max_logit, entropy


class Model(nnx.Module):
    """The Transformer; `forward` exposes the residual stream after every block for gradient probes."""

    DIAGNOSTICS: ClassVar[dict] = DIAGNOSTICS

    def __init__(self, config: Config, input_shape: tuple, output_dim: int, *, sequence_output: bool = False,
                 rngs: nnx.Rngs):
        if len(input_shape) not in (1, 2):
            raise ValueError(f"the transformer family needs token sequences shaped (time,) or feature sequences "
                             f"shaped (time, features); this task's examples are shaped {tuple(input_shape)}")
        self.config = config
        self.sequence_output = sequence_output
        self.dtype = common.compute_dtype(config.dtype)
        d, t = config.d_model, input_shape[0]
        embed_init = jinit.normal(math.sqrt(0.5))
        self.tokens = len(input_shape) == 1
        if self.tokens:
            self.embed = nnx.Embed(output_dim, d, embedding_init=embed_init, dtype=self.dtype, rngs=rngs)
        else:
            self.embed = Dense(input_shape[1], d, "input", config, rngs)
        self.position = nnx.Param(embed_init(rngs.params(), (t, d), jnp.float32))
        self.blocks = nnx.List([Block(config, rngs) for _ in range(config.layers)])
        self.final_norm = _norm(config, d, rngs) if config.norm == "pre" else None
        self.readout = Dense(d, output_dim, "output", config, rngs)

    def _run(self, x, shifts):
        """(logits float32, residual streams per block, per-layer max logits, per-layer head entropies)."""
        if self.tokens != jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(f"the transformer family reads examples shaped (time,) as integer tokens and (time, "
                             f"features) as floats; this task's are shaped {x.shape[1:]} of {x.dtype}")
        h_BxTxD = self.embed(x if self.tokens else x.astype(self.dtype))
        h_BxTxD = (h_BxTxD + self.position[...].astype(self.dtype)).astype(self.dtype)
        streams, max_logits, entropies = [], [], []
        for i, block in enumerate(self.blocks):
            h_BxTxD, max_logit, entropy_H = block(h_BxTxD)
            if shifts is not None:
                h_BxTxD = h_BxTxD + shifts[i]
            streams.append(h_BxTxD)
            max_logits.append(max_logit)
            entropies.append(entropy_H)
        if self.final_norm is not None:
            h_BxTxD = self.final_norm(h_BxTxD)
        if not self.sequence_output:
            h_BxTxD = h_BxTxD[:, -1]
        return self.readout(h_BxTxD).astype(jnp.float32), streams, max_logits, entropies

    def forward(self, x, *, train: bool = True, shifts=None):
        """Returns (output, residual stream after each block, the same streams); shifts[i] is added to stream i."""
        del train  # no dropout or batch statistics
        out, streams, _, _ = self._run(x, shifts)
        return out, streams, streams

    def diagnostics(self, x, *, train: bool = True, shifts=None):
        """(prediction, {name: scalar}) with the instability measures of DIAGNOSTICS; shifts as in `forward`."""
        del train
        logits, _, max_logits, entropies = self._run(x, shifts)
        log_z = jax.nn.logsumexp(logits, axis=-1)
        return logits, {
            "max_attn_logit": jnp.max(jnp.stack(max_logits)),
            "min_attn_entropy": jnp.min(jnp.stack(entropies)),
            "max_abs_log_z": jnp.mean(jnp.abs(log_z)),
        }

    def layer_kernels(self):
        """Per block, every kernel of that block flattened into one vector (for gradient probes)."""
        return [jnp.concatenate([m.linear.kernel[...].ravel() for m in (b.attn.qkv, b.attn.out, b.up, b.down)])
                for b in self.blocks]

    def lr_groups(self, adaptive: bool):
        """muP: (param_labels function, learning-rate multiplier per group); None for other parameterisations."""
        if self.config.parameterization != "mup":
            return None

        def group(path):
            if path[0] == "readout":
                return "output" if path[-2] == "kernel" else "output_bias"
            if path[-2] != "kernel" or path[0] == "embed":
                return "input"  # embeddings, hidden biases and LayerNorm parameters
            return "hidden"

        width_mult = self.config.d_model / self.config.base_width
        return common.path_labels(group), common.mup_lr_multipliers(adaptive, width_mult)

    def __call__(self, x, *, train: bool = True):
        return self._run(x, None)[0]
