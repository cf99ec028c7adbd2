"""Handwritten digits: scikit-learn's bundled 8x8 images (1797 real scans, 10 classes; no download).

A fixed split drawn from `data_seed` holds out a fraction `heldout_fraction`
of the images; `n_train` (0: all) caps the training split. Pixels are
standardised with the training split's mean and standard deviation (one
channel) and shaped (N, 8, 8, 1). The trivial predictor (uniform) has loss
log(10). Converged: smoothed training cross-entropy <= `target`.
"""
from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits

from gradbench.tasks import base

DESCRIPTION = "scikit-learn's 8x8 handwritten digits as images (cross-entropy, accuracy; held-out split)"

DEFAULT_STEPS = 500


@dataclasses.dataclass(frozen=True)
class Config:
    """Suite `[task]` keys."""

    heldout_fraction: float = 0.25
    validation_fraction: float = 0.1  # of the training images, split off to pick learning rates
    n_train: int = 0  # 0: every training image
    batch_size: int = 64
    target: float = 0.1
    data_seed: int = 0

    def __post_init__(self):
        if not 0 < self.heldout_fraction < 1 or not 0 < self.validation_fraction < 1:
            raise ValueError("heldout_fraction and validation_fraction must be in (0, 1)")
        if self.n_train < 0 or self.batch_size < 1 or self.target <= 0:
            raise ValueError("n_train must be >= 0 (0: all), batch_size >= 1 and target > 0")


@functools.lru_cache(maxsize=1)
def _load():
    """Images (N, 8, 8) float64 and labels, read once per process."""
    digits = load_digits()
    return digits.images, digits.target

def data_bytes(config: Config) -> int:
    """Bytes this config's data takes to make (its arrays and the intermediates beside them), known before `make`
    allocates anything: the harness refuses a task that cannot fit before making it."""
    images = 1797  # the bundled scans: the data is this size whatever the config
    return images * 64 * (8 + 4 * 4) + images * 16


def make(config: Config) -> base.Task:
    """Splits the bundled images with `data_seed` and standardises them."""
    images, labels = _load()
    order = np.random.default_rng(config.data_seed).permutation(len(labels))
    n_heldout = max(1, round(config.heldout_fraction * len(labels)))
    train_idx, heldout_idx = order[n_heldout:], order[:n_heldout]
    if config.n_train:
        train_idx = train_idx[: config.n_train]
    # Training statistics only, so the held-out split stays unseen.
    mean, std = images[train_idx].mean(), images[train_idx].std()

    def split(idx):
        x = ((images[idx] - mean) / std).astype(np.float32)[..., None]
        return jnp.asarray(x), jnp.asarray(labels[idx], jnp.int32)

    train, validation = base.split_off(*split(train_idx), config.validation_fraction)
    return base.classification(train, validation, split(heldout_idx), batch_size=config.batch_size, n_classes=10,
                               target=config.target)
