"""Teacher-student regression.

A fixed random teacher (one tanh hidden layer of `teacher_width` units) maps
x ~ N(0, I_input_dim) to y; targets are standardised to unit variance and get
Gaussian noise of standard deviation `noise`. The student sees `n_train`
examples; `n_validation` fresh ones pick the best learning rate and
`n_heldout` more measure generalisation. The trivial predictor (the training
targets' mean) has loss close to 1 + noise^2 (computed on the training set);
the best possible has noise^2.
Converged: smoothed training MSE <= `target` (default 0.15, i.e. 85% of the
teacher's variance explained).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from gradbench.tasks import base

DESCRIPTION = "regression on a random tanh teacher network (MSE; held-out split)"

DEFAULT_STEPS = 500


@dataclasses.dataclass(frozen=True)
class Config:
    """Suite `[task]` keys."""

    input_dim: int = 16
    output_dim: int = 1
    teacher_width: int = 32
    n_train: int = 512
    n_heldout: int = 512
    n_validation: int = 256
    noise: float = 0.1
    batch_size: int = 64
    target: float = 0.15
    data_seed: int = 0

    def __post_init__(self):
        if min(self.input_dim, self.output_dim, self.teacher_width, self.n_train, self.n_heldout, self.n_validation,
               self.batch_size) < 1:
            raise ValueError("sizes must be >= 1")
        if self.noise < 0 or self.target <= 0:
            raise ValueError("noise must be >= 0 and target > 0")

def data_bytes(config: Config) -> int:
    """Bytes this config's data takes to make (its arrays and the intermediates beside them), known before `make`
    allocates anything: the harness refuses a task that cannot fit before making it."""
    n = config.n_train + config.n_heldout + config.n_validation
    return 4 * n * (2 * config.input_dim + 2 * config.teacher_width + 4 * config.output_dim)


def make(config: Config) -> base.Task:
    """Draws the teacher and both splits from `data_seed`."""
    k_w1, k_w2, k_x, k_noise = jax.random.split(jax.random.key(config.data_seed), 4)
    w1 = jax.random.normal(k_w1, (config.input_dim, config.teacher_width)) / jnp.sqrt(config.input_dim)
    w2 = jax.random.normal(k_w2, (config.teacher_width, config.output_dim)) / jnp.sqrt(config.teacher_width)
    n = config.n_train + config.n_heldout + config.n_validation
    x = jax.random.normal(k_x, (n, config.input_dim))
    y = jnp.tanh(2.0 * x @ w1) @ w2
    y = (y - y.mean(0)) / y.std(0)
    y = y + config.noise * jax.random.normal(k_noise, y.shape)
    train = (x[: config.n_train], y[: config.n_train])
    cut = config.n_train + config.n_heldout
    heldout = (x[config.n_train:cut], y[config.n_train:cut])
    validation = (x[cut:], y[cut:])
    return base.Task(
        data={"train": train, "train_eval": train, "validation": validation, "heldout": heldout},
        sample=functools.partial(base.sample_rows, batch_size=config.batch_size),
        loss=base.mse,
        metric=base.mse,
        metric_name="mse",
        input_shape=(config.input_dim,),
        output_dim=config.output_dim,
        target=config.target,
        trivial_loss=base.trivial_mse(train[1]),
    )
