"""Language modelling on a fixed random sparse Markov chain: no download, known optimum.

From `data_seed` a chain over `vocab` tokens is drawn: every token has
`branching` successors (one of them its successor on a random cycle through
all tokens, so the chain is irreducible) with transition probabilities from a
symmetric Dirichlet(`concentration`). A sequence starts from the stationary
distribution pi, so every position is stationary. The model reads tokens
x_0..x_{T-1} and predicts x_1..x_T at every position (sequence_output).

Loss: mean next-token cross-entropy. The best achievable loss is the entropy
rate H = -sum_i pi_i sum_j P_ij log P_ij (the model sees the current token,
and the chain is Markov); the best predictor that ignores the context
(unigram) has loss H(pi) = -sum_i pi_i log pi_i. Both are stated in closed
form (`entropy_rate`, `unigram_entropy`); the task's `best_loss` is the
entropy rate and its `trivial_loss`, like every task's, the loss of the best
constant predictor on `train_eval` (the sample's unigram entropy, close to
H(pi)). Metric: next-token accuracy.
Converged: smoothed training loss <= entropy rate + `target_excess` nats.

Training batches are sampled fresh from the step's key (a scan of T
categorical draws over the batch); `train_eval`, `validation` and `heldout`
are three fixed sets of `n_heldout` sequences drawn from `data_seed`.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from gradbench.tasks import base

DESCRIPTION = "next-token prediction on a random sparse Markov chain (cross-entropy; known entropy rate)"

DEFAULT_STEPS = 500


@dataclasses.dataclass(frozen=True)
class Config:
    """Suite `[task]` keys."""

    vocab: int = 16
    branching: int = 3
    concentration: float = 1.0
    length: int = 32
    batch_size: int = 32
    n_heldout: int = 256
    target_excess: float = 0.05
    data_seed: int = 0

    def __post_init__(self):
        if self.vocab < 2 or not 1 <= self.branching <= self.vocab:
            raise ValueError("vocab must be >= 2 and branching in [1, vocab]")
        if self.concentration <= 0 or self.target_excess <= 0:
            raise ValueError("concentration and target_excess must be > 0")
        if min(self.length, self.batch_size, self.n_heldout) < 1:
            raise ValueError("length, batch_size and n_heldout must be >= 1")


def transition_matrix(config: Config) -> np.ndarray:
    """The chain's (vocab, vocab) transition matrix P (rows sum to 1), drawn from data_seed."""
    rng = np.random.default_rng(config.data_seed)
    v = config.vocab
    cycle = rng.permutation(v)
    nxt = np.empty(v, int)
    nxt[cycle] = np.roll(cycle, -1)
    p = np.zeros((v, v))
    for i in range(v):
        others = rng.permutation(np.setdiff1d(np.arange(v), [nxt[i]]))[: config.branching - 1]
        successors = np.concatenate([[nxt[i]], others])
        p[i, successors] = rng.dirichlet(np.full(config.branching, config.concentration))
    return p


def stationary(p: np.ndarray) -> np.ndarray:
    """The stationary distribution pi (pi P = pi) of an irreducible chain."""
    values, vectors = np.linalg.eig(p.T)
    pi = np.abs(np.real(vectors[:, np.argmin(np.abs(values - 1.0))]))
    return pi / pi.sum()


def _xlogx(p):
    return np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)


def entropy_rate(p: np.ndarray) -> float:
    """H = -sum_i pi_i sum_j P_ij log P_ij (nats per token): the best achievable loss."""
    return float(-np.sum(stationary(p)[:, None] * _xlogx(p)))


def unigram_entropy(p: np.ndarray) -> float:
    """H(pi) (nats): the loss of the best predictor that ignores the context."""
    return float(-np.sum(_xlogx(stationary(p))))


@functools.partial(jax.jit, static_argnums=(1, 2))
def sequences(key, n: int, length: int, log_p, log_pi):
    """n stationary sequences: tokens x (n, length) and next tokens y (n, length)."""
    k_start, k_steps = jax.random.split(key)
    first = jax.random.categorical(k_start, log_pi, shape=(n,))

    def step(token_N, k):
        nxt = jax.random.categorical(k, log_p[token_N])
        return nxt, nxt

    _, rest_LxN = jax.lax.scan(step, first, jax.random.split(k_steps, length))
    tokens_NxL1 = jnp.concatenate([first[:, None], rest_LxN.T], axis=1).astype(jnp.int32)
    return tokens_NxL1[:, :-1], tokens_NxL1[:, 1:]


def _sample(data, key, *, batch_size: int, length: int):
    """A fresh training batch from the step's key and the chain held in the data pytree."""
    return sequences(key, batch_size, length, data["log_p"], data["log_pi"])

def data_bytes(config: Config) -> int:
    """Bytes this config's data takes to make (its arrays and the intermediates beside them), known before `make`
    allocates anything: the harness refuses a task that cannot fit before making it."""
    return 3 * 8 * config.vocab ** 2 + 3 * 4 * config.n_heldout * (4 * config.length + 2 * config.vocab)


def make(config: Config) -> base.Task:
    """Draws the chain and the fixed train_eval, validation and heldout sets from `data_seed`."""
    p = transition_matrix(config)
    with np.errstate(divide="ignore"):
        log_p, log_pi = jnp.asarray(np.log(p), jnp.float32), jnp.asarray(np.log(stationary(p)), jnp.float32)
    keys = jax.random.split(jax.random.key(config.data_seed), 3)
    n, t = config.n_heldout, config.length
    h = entropy_rate(p)
    splits = ("train_eval", "heldout", "validation")
    data = {split: sequences(k, n, t, log_p, log_pi) for split, k in zip(splits, keys)}
    return base.Task(
        data={**data, "log_p": log_p, "log_pi": log_pi},
        sample=functools.partial(_sample, batch_size=config.batch_size, length=t),
        loss=base.cross_entropy,
        metric=base.accuracy,
        metric_name="accuracy",
        input_shape=(t,),
        output_dim=config.vocab,
        target=h + config.target_excess,
        trivial_loss=base.trivial_cross_entropy(data["train_eval"][1], config.vocab),
        sequence_output=True,
        best_loss=h,
    )
