"""Copy memory (Hochreiter and Schmidhuber 1997; Arjovsky, Shah and Bengio 2016).

An example is `n_remember` symbols drawn uniformly from an alphabet of
`n_symbols`, then `length` blank steps (the delay: the knob that makes
gradients cross many recurrent steps), then one go marker, then
`n_remember` blank steps during which the model must output the symbols in
order. Inputs are one-hot over n_symbols + 2 channels (the symbols, blank,
go); the sequence has T = 2 n_remember + length + 1 steps.

The model predicts at every step (sequence_output) but the loss is the
cross-entropy over the final `n_remember` steps only (no blank targets
elsewhere, so the loss is not diluted by easy blank steps); targets `y` are
the symbols, (batch, n_remember) integers. Metric: accuracy on the recalled
symbols. The trivial predictor (uniform over the alphabet, the best one that
ignores the input) has loss close to log(n_symbols), 2.079 for 8 symbols (the
entropy of the recalled symbols' frequencies on the training-evaluation set,
which the task states). Converged:
smoothed training cross-entropy <= `target` (default 0.1 nats, near-perfect
recall).

Training batches are generated fresh from the step's key; `train_eval`,
`validation` and `heldout` are three fixed sets of `n_heldout` examples drawn
from `data_seed`.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from gradbench.tasks import base

DESCRIPTION = "copy memory: recall symbols after a long blank delay (cross-entropy, accuracy; RNN)"

DEFAULT_STEPS = 1000


@dataclasses.dataclass(frozen=True)
class Config:
    """Suite `[task]` keys."""

    length: int = 20
    n_symbols: int = 8
    n_remember: int = 5
    batch_size: int = 64
    n_heldout: int = 1024
    target: float = 0.1
    data_seed: int = 0

    def __post_init__(self):
        if self.length < 0:
            raise ValueError("length (the blank delay) must be >= 0")
        if self.n_symbols < 2 or self.n_remember < 1:
            raise ValueError("n_symbols must be >= 2 and n_remember >= 1")
        if min(self.batch_size, self.n_heldout) < 1:
            raise ValueError("batch_size and n_heldout must be >= 1")
        if self.target <= 0:
            raise ValueError("target must be > 0")


def examples(key, n: int, config: Config):
    """n examples: one-hot x (n, T, n_symbols + 2), symbols y (n, n_remember)."""
    blank, go = config.n_symbols, config.n_symbols + 1
    symbols_NxR = jax.random.randint(key, (n, config.n_remember), 0, config.n_symbols)
    delay_NxL = jnp.full((n, config.length), blank)
    go_Nx1 = jnp.full((n, 1), go)
    recall_NxR = jnp.full((n, config.n_remember), blank)
    tokens_NxT = jnp.concatenate([symbols_NxR, delay_NxL, go_Nx1, recall_NxR], axis=1)
    return jax.nn.one_hot(tokens_NxT, config.n_symbols + 2), symbols_NxR


def _sample(data, key, *, config: Config):
    """A fresh training batch from the step's key (the data pytree is not needed)."""
    del data
    return examples(key, config.batch_size, config)

def data_bytes(config: Config) -> int:
    """Bytes this config's data takes to make (its arrays and the intermediates beside them), known before `make`
    allocates anything: the harness refuses a task that cannot fit before making it."""
    steps = 2 * config.n_remember + config.length + 1
    return 3 * 4 * config.n_heldout * (2 * steps * (config.n_symbols + 2) + 2 * steps + config.n_remember)


def make(config: Config) -> base.Task:
    """Draws the fixed train_eval, validation and heldout sets from `data_seed`; the loss reads the recall steps."""
    keys = jax.random.split(jax.random.key(config.data_seed), 3)
    data = {split: examples(k, config.n_heldout, config)
            for split, k in zip(("train_eval", "heldout", "validation"), keys)}
    recall = config.n_remember

    def loss(logits_BxTxS, y_BxR):
        return base.cross_entropy(logits_BxTxS[:, -recall:], y_BxR)

    def metric(logits_BxTxS, y_BxR):
        return base.accuracy(logits_BxTxS[:, -recall:], y_BxR)

    return base.Task(
        data=data,
        sample=functools.partial(_sample, config=config),
        loss=loss,
        metric=metric,
        metric_name="accuracy",
        input_shape=(2 * config.n_remember + config.length + 1, config.n_symbols + 2),
        output_dim=config.n_symbols,
        target=config.target,
        trivial_loss=base.trivial_cross_entropy(data["train_eval"][1], config.n_symbols),
        sequence_output=True,
    )
