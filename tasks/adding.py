"""The adding problem (Hochreiter and Schmidhuber 1997; Pascanu, Mikolov and Bengio 2013).

Each example is a sequence of `length` steps with two channels: channel 0
holds values drawn from U(0, 1); channel 1 is a marker that is 1 at exactly
two steps, one drawn uniformly from the first half of the sequence and one
from the second half, and 0 elsewhere. The target is the sum of the two
marked values. Sequence length is the knob: the first marker lies about
`length` / 2 steps or more before the read-out, so the gradient that teaches
the model to keep it crosses that many recurrent steps.

Loss and metric: mean squared error. The trivial predictor (always the mean
of the sum, 1.0) has loss Var(u1 + u2) = 2 / 12 = 1/6 ~ 0.1667 (the task
states the value computed on its training-evaluation set); a model that
remembers only one of the two values at best reaches 1/12 ~ 0.083. Converged:
smoothed training MSE <= `target` (default 0.05, which needs both values).

Training batches are generated fresh from the step's key (an endless stream,
cheap: uniform values and two integer positions per example); `train_eval`,
`validation` and `heldout` are three fixed sets of `n_heldout` examples drawn
from `data_seed`, so their losses differ only by sampling error.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from gradbench.tasks import base

DESCRIPTION = "adding problem: sum of two marked values in a long sequence (MSE; RNN)"

DEFAULT_STEPS = 1000

TRIVIAL_LOSS = 1.0 / 6.0  # Var(u1 + u2) with u1, u2 ~ U(0, 1): the closed form of the trivial loss


@dataclasses.dataclass(frozen=True)
class Config:
    """Suite `[task]` keys."""

    length: int = 50
    batch_size: int = 64
    n_heldout: int = 1024
    target: float = 0.05
    data_seed: int = 0

    def __post_init__(self):
        if self.length < 2:
            raise ValueError("length must be >= 2 (one marker in each half)")
        if min(self.batch_size, self.n_heldout) < 1:
            raise ValueError("batch_size and n_heldout must be >= 1")
        if self.target <= 0:
            raise ValueError("target must be > 0")


def examples(key, n: int, length: int):
    """n examples: x (n, length, 2) with values and markers, y (n, 1) the marked sum."""
    k_values, k_first, k_second = jax.random.split(key, 3)
    half = length // 2
    values_NxT = jax.random.uniform(k_values, (n, length))
    first_N = jax.random.randint(k_first, (n,), 0, half)
    second_N = jax.random.randint(k_second, (n,), half, length)
    markers_NxT = jax.nn.one_hot(first_N, length) + jax.nn.one_hot(second_N, length)
    x_NxTx2 = jnp.stack([values_NxT, markers_NxT], axis=-1)
    y_Nx1 = jnp.sum(values_NxT * markers_NxT, axis=1, keepdims=True)
    return x_NxTx2, y_Nx1


def _sample(data, key, *, batch_size: int, length: int):
    """A fresh training batch from the step's key (the data pytree is not needed)."""
    del data
    return examples(key, batch_size, length)

def data_bytes(config: Config) -> int:
    """Bytes this config's data takes to make (its arrays and the intermediates beside them), known before `make`
    allocates anything: the harness refuses a task that cannot fit before making it."""
    return 3 * 4 * config.n_heldout * (6 * config.length + 2)


def make(config: Config) -> base.Task:
    """Draws the fixed train_eval, validation and heldout sets from `data_seed`."""
    keys = jax.random.split(jax.random.key(config.data_seed), 3)
    data = {split: examples(k, config.n_heldout, config.length)
            for split, k in zip(("train_eval", "heldout", "validation"), keys)}
    return base.Task(
        data=data,
        sample=functools.partial(_sample, batch_size=config.batch_size, length=config.length),
        loss=base.mse,
        metric=base.mse,
        metric_name="mse",
        input_shape=(config.length, 2),
        output_dim=1,
        target=config.target,
        trivial_loss=base.trivial_mse(data["train_eval"][1]),
    )
