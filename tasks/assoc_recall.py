"""In-context associative recall (Ba et al. 2016; the induction-head task of Olsson et al. 2022).

An example is `n_pairs` key-value pairs k_1 v_1 ... k_n v_n, with distinct
keys drawn from `n_keys` key tokens and values drawn uniformly from
`n_values` value tokens, followed by one query key (one of the k_i, chosen
uniformly); the target is the value paired with it. Tokens: keys are
0..n_keys-1, values n_keys..n_keys+n_values-1 (the model's vocabulary and
output are both n_keys + n_values wide); the sequence has T = 2 n_pairs + 1
tokens and the model predicts once, at the last position.

Loss: cross-entropy; metric: accuracy. The mapping changes with every
example, so it must be read from the context. The best predictor that
ignores the context is uniform over the values: loss log(n_values); the best
achievable loss is 0. Converged: smoothed training loss <= `target`.

Training batches are sampled fresh from the step's key; `train_eval`,
`validation` and `heldout` are three fixed sets of `n_heldout` examples drawn
from `data_seed`. `trivial_loss` is measured like every task's: the loss of
the best constant predictor on `train_eval` (close to log(n_values)).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from gradbench.tasks import base

DESCRIPTION = "in-context associative recall: the value of a queried key from pairs in the context (Transformer)"

DEFAULT_STEPS = 1000


@dataclasses.dataclass(frozen=True)
class Config:
    """Suite `[task]` keys."""

    n_keys: int = 16
    n_values: int = 16
    n_pairs: int = 4
    batch_size: int = 32
    n_heldout: int = 256
    target: float = 0.1
    data_seed: int = 0

    def __post_init__(self):
        if not 1 <= self.n_pairs <= self.n_keys or self.n_values < 2:
            raise ValueError("n_pairs must be in [1, n_keys] and n_values >= 2")
        if min(self.batch_size, self.n_heldout) < 1 or self.target <= 0:
            raise ValueError("batch_size and n_heldout must be >= 1 and target > 0")


@functools.partial(jax.jit, static_argnums=(1, 2))
def examples(key, n: int, config: Config):
    """n examples: tokens x (n, 2 n_pairs + 1) and the queried value's token y (n,)."""
    k_keys, k_values, k_query = jax.random.split(key, 3)
    keys_NxP = jnp.argsort(jax.random.uniform(k_keys, (n, config.n_keys)), axis=1)[:, : config.n_pairs]
    values_NxP = config.n_keys + jax.random.randint(k_values, (n, config.n_pairs), 0, config.n_values)
    query_N = jax.random.randint(k_query, (n,), 0, config.n_pairs)
    pairs_NxPx2 = jnp.stack([keys_NxP, values_NxP], axis=-1)
    rows = jnp.arange(n)
    x = jnp.concatenate([pairs_NxPx2.reshape(n, -1), keys_NxP[rows, query_N][:, None]], axis=1)
    return x.astype(jnp.int32), values_NxP[rows, query_N].astype(jnp.int32)


def _sample(data, key, *, config: Config):
    """A fresh training batch from the step's key (the data pytree is not needed)."""
    del data
    return examples(key, config.batch_size, config)

def data_bytes(config: Config) -> int:
    """Bytes this config's data takes to make (its arrays and the intermediates beside them), known before `make`
    allocates anything: the harness refuses a task that cannot fit before making it."""
    return 3 * 4 * config.n_heldout * (3 * config.n_keys + 6 * config.n_pairs + 8)


def make(config: Config) -> base.Task:
    """Draws the fixed train_eval, validation and heldout sets from `data_seed`."""
    keys = jax.random.split(jax.random.key(config.data_seed), 3)
    splits = ("train_eval", "heldout", "validation")
    data = {split: examples(k, config.n_heldout, config) for split, k in zip(splits, keys)}
    return base.Task(
        data=data,
        sample=functools.partial(_sample, config=config),
        loss=base.cross_entropy,
        metric=base.accuracy,
        metric_name="accuracy",
        input_shape=(2 * config.n_pairs + 1,),
        output_dim=config.n_keys + config.n_values,
        target=config.target,
        trivial_loss=base.trivial_cross_entropy(data["train_eval"][1], config.n_keys + config.n_values),
        best_loss=0.0,
    )
