"""Gaussian-cluster classification.

`n_classes` class means drawn from N(0, I * separation^2 / input_dim); every
example is its class mean plus N(0, I / input_dim) noise, and a fraction
`label_noise` of training labels is replaced by a uniformly random class (so
a model that memorises the training set generalises worse: the overfitting
knob, with `n_train`). The trivial predictor (the training label
frequencies) has loss close to log(n_classes). `n_validation` examples (clean
labels) pick the best learning rate; `n_heldout` more measure generalisation. Converged: smoothed training cross-entropy <= `target`.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from gradbench.tasks import base

DESCRIPTION = "classification of noisy Gaussian clusters (cross-entropy, accuracy; held-out split)"

DEFAULT_STEPS = 500


@dataclasses.dataclass(frozen=True)
class Config:
    """Suite `[task]` keys."""

    input_dim: int = 16
    n_classes: int = 4
    separation: float = 3.0
    label_noise: float = 0.0
    n_train: int = 512
    n_heldout: int = 512
    n_validation: int = 256
    batch_size: int = 64
    target: float = 0.3
    data_seed: int = 0

    def __post_init__(self):
        if min(self.input_dim, self.n_train, self.n_heldout, self.n_validation, self.batch_size) < 1 or self.n_classes < 2:
            raise ValueError("sizes must be >= 1 and n_classes >= 2")
        if not 0 <= self.label_noise <= 1 or self.separation <= 0 or self.target <= 0:
            raise ValueError("label_noise must be in [0, 1], separation and target > 0")

def data_bytes(config: Config) -> int:
    """Bytes this config's data takes to make (its arrays and the intermediates beside them), known before `make`
    allocates anything: the harness refuses a task that cannot fit before making it."""
    n = config.n_train + config.n_heldout + config.n_validation
    return 4 * n * (4 * config.input_dim + 6) + 4 * config.n_classes * config.input_dim


def make(config: Config) -> base.Task:
    """Draws class means, examples and label noise from `data_seed`."""
    k_means, k_labels, k_x, k_flip, k_random = jax.random.split(jax.random.key(config.data_seed), 5)
    d = config.input_dim
    means = jax.random.normal(k_means, (config.n_classes, d)) * config.separation / math.sqrt(d)
    n = config.n_train + config.n_heldout + config.n_validation
    labels = jax.random.randint(k_labels, (n,), 0, config.n_classes)
    x = means[labels] + jax.random.normal(k_x, (n, d)) / math.sqrt(d)
    flip = jax.random.uniform(k_flip, (config.n_train,)) < config.label_noise
    noisy = jnp.where(flip, jax.random.randint(k_random, (config.n_train,), 0, config.n_classes),
                      labels[: config.n_train])
    train = (x[: config.n_train], noisy)
    cut = config.n_train + config.n_heldout
    return base.classification(train, (x[cut:], labels[cut:]), (x[config.n_train:cut], labels[config.n_train:cut]),
                               batch_size=config.batch_size, n_classes=config.n_classes, target=config.target)
