"""Recurrent networks: `layers` stacked cells of `hidden` units, then a linear read-out.

Cells: `tanh` is the Elman cell h_t = act(W_x x_t + W_h h_{t-1} + b), written
here so its activation and recurrent initialiser are free knobs; `lstm` and
`gru` are Flax's own cells. The read-out sees the top layer's hidden state at
the last step (or at every step, for sequence tasks). `dtype` sets the
precision of activations and matrix products (parameters stay float32; the
output is cast to float32). For gradient probes the
"layers" of `forward` are the time steps of the top layer: its hidden states.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx
from jax.nn import initializers as jinit

from gradbench.models import common

DESCRIPTION = "RNN: stacked tanh (Elman, any activation) / LSTM / GRU cells, recurrent initialiser"


def _identity(scale):
    """scale times the identity: every eigenvalue of W_h equals scale."""

    def init(key, shape, dtype=jnp.float32):
        del key
        return scale * jnp.eye(shape[-2], shape[-1], dtype=dtype)

    return init


# name -> (factory(config) -> initialiser of an H x H recurrent matrix (each gate's, for LSTM/GRU), or None
# for Flax's own; description). The default, normal with variance 1, puts a random W_h's spectral radius
# near 1 (circular law): the edge between vanishing and exploding for the Elman cell.
RECURRENT_INITS = {
    "normal": (lambda c: jinit.variance_scaling(c.recurrent_weight_var, "fan_in", "normal"),
               "W_h ~ N(0, recurrent_weight_var / hidden)"),
    "orthogonal": (lambda c: jinit.orthogonal(c.recurrent_scale),
                   "random orthogonal times recurrent_scale (spectral radius recurrent_scale)"),
    "identity": (lambda c: _identity(c.recurrent_scale), "recurrent_scale times the identity (Le et al. 2015)"),
    "default": (lambda c: None, "Flax's own recurrent initialiser of the cell"),
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Suite `[model]` keys of the RNN family."""

    cell: str = "tanh"
    hidden: int = 64
    layers: int = 1
    activation: str = "tanh"
    recurrent_init: str = "normal"
    recurrent_weight_var: float = 1.0
    recurrent_scale: float = 1.0
    init: str = "lecun"
    weight_var: float = 1.0
    bias_var: float = 0.0
    dtype: str = "float32"

    CHOICES: ClassVar[dict] = {
        "cell": ("tanh", "lstm", "gru"),
        "dtype": tuple(common.DTYPES),
        "activation": tuple(common.ACTIVATIONS),
        "recurrent_init": tuple(RECURRENT_INITS),
        "init": tuple(n for n in common.INITIALISERS if n != "identity"),
    }

    def __post_init__(self):
        if self.hidden < 1 or self.layers < 1:
            raise ValueError("hidden and layers must be >= 1")
        if self.weight_var <= 0 or self.bias_var < 0:
            raise ValueError("weight_var must be > 0 and bias_var >= 0")
        if self.recurrent_weight_var <= 0 or self.recurrent_scale <= 0:
            raise ValueError("recurrent_weight_var and recurrent_scale must be > 0")
        if self.cell != "tanh" and self.activation != "tanh":
            # Silently ignoring it would make an `activation` mitigation a no-op on LSTM/GRU.
            raise ValueError(f"activation applies to the Elman cell (cell = 'tanh') only, not {self.cell!r}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def elman_scan(activation, xw_TxBxH, w_HxH, shift_TxBxH):
    """h_t = activation(xw_t + h_{t-1} W) + shift_t from h_0 = 0: every step's h, shaped (T, B, H).

    Differentiated by hand so that the backward pass loops over time with one matrix product per step (the
    gradient flowing to h_{t-1}); the gradient of W, a sum over steps that autodiff would accumulate inside
    that loop with a second product per step, is one (T*B x H)^T (T*B x H) product after it.
    """
    return _elman_forward(activation, xw_TxBxH, w_HxH, shift_TxBxH)[0]


def _elman_forward(activation, xw_TxBxH, w_HxH, shift_TxBxH):
    def step(h_BxH, inputs):
        xw_BxH, shift_BxH = inputs
        z_BxH = xw_BxH + h_BxH @ w_HxH
        h_BxH = activation(z_BxH) + shift_BxH
        return h_BxH, (h_BxH, z_BxH)

    _, (h_TxBxH, z_TxBxH) = jax.lax.scan(step, jnp.zeros_like(xw_TxBxH[0]), (xw_TxBxH, shift_TxBxH))
    return h_TxBxH, (h_TxBxH, z_TxBxH, w_HxH)


def _elman_backward(activation, residuals, g_TxBxH):
    h_TxBxH, z_TxBxH, w_HxH = residuals

    def step(from_next_BxH, inputs):
        g_BxH, z_BxH = inputs
        dh_BxH = g_BxH + from_next_BxH  # d loss / d h_t: its own cotangent plus what h_{t+1} passes back
        dz_BxH = jax.vjp(activation, z_BxH)[1](dh_BxH)[0]
        return dz_BxH @ w_HxH.T, (dz_BxH, dh_BxH)

    _, (dz_TxBxH, dh_TxBxH) = jax.lax.scan(step, jnp.zeros_like(g_TxBxH[0]), (g_TxBxH, z_TxBxH), reverse=True)
    h_prev_TxBxH = jnp.concatenate([jnp.zeros_like(h_TxBxH[:1]), h_TxBxH[:-1]])
    dw_HxH = jnp.einsum("tbi,tbj->ij", h_prev_TxBxH, dz_TxBxH)
    return dz_TxBxH, dw_HxH, dh_TxBxH  # shift_t enters h_t additively: its gradient is d loss / d h_t


elman_scan.defvjp(_elman_forward, _elman_backward)


class ElmanCell(nnx.Module):
    """h_t = act(W_x x_t + W_h h_{t-1} + b) with a free activation and recurrent initialiser."""

    def __init__(self, in_features: int, hidden: int, *, activation, kernel_init, bias_init, recurrent_init,
                 dtype, rngs: nnx.Rngs):
        self.activation = activation
        self.input = nnx.Linear(in_features, hidden, kernel_init=kernel_init, bias_init=bias_init, dtype=dtype,
                                rngs=rngs)
        recurrent_init = recurrent_init or jinit.orthogonal()  # nnx.SimpleCell's default
        self.recurrent = nnx.Param(recurrent_init(rngs.params(), (hidden, hidden), jnp.float32))

    def scan(self, x_TxBxF, shift_TxBxH):
        """Hidden states (T, B, H) of the whole sequence; shift_t (if not None) is added to h_t."""
        xw_TxBxH = self.input(x_TxBxF)  # the input projection of every step in one matmul
        w_hh_HxH = self.recurrent[...].astype(xw_TxBxH.dtype)
        shift_TxBxH = jnp.zeros_like(xw_TxBxH) if shift_TxBxH is None else shift_TxBxH.astype(xw_TxBxH.dtype)
        return elman_scan(self.activation, xw_TxBxH, w_hh_HxH, shift_TxBxH)


class FlaxCell(nnx.Module):
    """An nnx.LSTMCell or nnx.GRUCell run over a sequence."""

    def __init__(self, cell_cls, in_features: int, hidden: int, *, kernel_init, bias_init, recurrent_init,
                 dtype, rngs: nnx.Rngs):
        extra = {"recurrent_kernel_init": recurrent_init} if recurrent_init is not None else {}
        self.cell = cell_cls(in_features, hidden, kernel_init=kernel_init, bias_init=bias_init, dtype=dtype,
                             rngs=rngs, **extra)
        self.hidden = hidden

    def scan(self, x_TxBxF, shift_TxBxH):
        """Hidden states (T, B, H) of the whole sequence; shift_t (if not None) is added to h_t."""
        zeros_BxH = jnp.zeros((x_TxBxF.shape[1], self.hidden), x_TxBxF.dtype)
        is_lstm = isinstance(self.cell, nnx.LSTMCell)

        def step(carry, inputs):
            x_BxF, shift_BxH = inputs
            carry, h_BxH = self.cell(carry, x_BxF)
            h_BxH = h_BxH if shift_BxH is None else h_BxH + shift_BxH
            # The LSTM carries (c, h); the shifted h is what the next step sees.
            return ((carry[0], h_BxH) if is_lstm else h_BxH), h_BxH

        carry0 = (zeros_BxH, zeros_BxH) if is_lstm else zeros_BxH
        return jax.lax.scan(step, carry0, (x_TxBxF, shift_TxBxH))[1]


# cell name -> (in_features, hidden, config, rngs, **initialisers) -> a module with .scan(x_TxBxF, shift_TxBxH)
CELLS = {
    "tanh": lambda f, h, c, rngs, **inits: ElmanCell(f, h, activation=common.activation(c.activation),
                                                     rngs=rngs, **inits),
    "lstm": lambda f, h, c, rngs, **inits: FlaxCell(nnx.LSTMCell, f, h, rngs=rngs, **inits),
    "gru": lambda f, h, c, rngs, **inits: FlaxCell(nnx.GRUCell, f, h, rngs=rngs, **inits),
}


class Model(nnx.Module):
    """The RNN; `forward` also exposes the top layer's hidden states for gradient probes."""

    def __init__(self, config: Config, input_shape: tuple, output_dim: int, *, sequence_output: bool = False,
                 rngs: nnx.Rngs):
        if len(input_shape) != 2:
            raise ValueError(f"the rnn family needs sequence inputs shaped (time, features); this task's "
                             f"examples are shaped {tuple(input_shape)}")
        self.config = config
        self.sequence_output = sequence_output
        kernel = common.kernel_init(config.init, config.weight_var)
        bias = common.bias_init(config.bias_var)
        dtype = common.compute_dtype(config.dtype)
        inits = {"kernel_init": kernel, "bias_init": bias,
                 "recurrent_init": RECURRENT_INITS[config.recurrent_init][0](config), "dtype": dtype}
        widths = [input_shape[1]] + [config.hidden] * config.layers
        self.cells = nnx.List([CELLS[config.cell](w_in, config.hidden, config, rngs, **inits)
                               for w_in in widths[:-1]])
        self.readout = nnx.Linear(config.hidden, output_dim, kernel_init=kernel, bias_init=bias, dtype=dtype,
                                  rngs=rngs)

    def _top_states(self, x_BxTxF, shift_TxBxH):
        """The top layer's hidden states (T, B, H); the shift (or None) applies to that layer."""
        h_TxBxH = jnp.swapaxes(x_BxTxF, 0, 1).astype(common.compute_dtype(self.config.dtype))
        for i, cell in enumerate(self.cells):
            h_TxBxH = cell.scan(h_TxBxH, shift_TxBxH if i == len(self.cells) - 1 else None)
        return h_TxBxH

    def _read(self, h_TxBxH):
        """(B, output_dim) from the last step, or (B, T, output_dim) with sequence_output; float32."""
        out = self.readout(jnp.swapaxes(h_TxBxH, 0, 1) if self.sequence_output else h_TxBxH[-1])
        return out.astype(jnp.float32)

    def forward(self, x_BxTxF, *, train: bool = True, shifts=None):
        """Returns (output, top-layer hidden state per step, the same states).

        `shifts` (one (B, hidden) array per time step) is added to the top
        layer's h_t before step t+1 and the read-out use it, so the loss
        gradient with respect to a zero shift is the gradient with respect to h_t.
        """
        del train  # no dropout or batch statistics
        h_TxBxH = self._top_states(x_BxTxF, None if shifts is None else jnp.stack(list(shifts)))
        states = list(h_TxBxH)
        return self._read(h_TxBxH), states, states

    def __call__(self, x_BxTxF, *, train: bool = True):
        """The prediction only (the training path: no per-step lists)."""
        del train
        return self._read(self._top_states(x_BxTxF, None))
