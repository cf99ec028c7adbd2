"""What every task returns: data as a pytree, and pure functions over it.

The data pytree is an argument of the compiled program (not a constant baked
into it), so large data sets do not slow compilation.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class Task:
    """A made task.

    Attributes:
      data: pytree of arrays; must hold `train_eval` and `heldout`, each (x, y).
      sample: (data, key) -> (x, y), one training batch.
      loss: (prediction, y) -> scalar mean loss.
      metric: (prediction, y) -> scalar held-out metric.
      metric_name: what `metric` measures, e.g. "accuracy".
      input_shape: shape of one example.
      output_dim: width of the model's output.
      target: convergence target on the smoothed training loss.
      trivial_loss: loss of the best input-independent predictor (for scale).
      sequence_output: the model must predict at every time step, not once per example.
      best_loss: the best achievable loss where the task knows it (e.g. a Markov chain's entropy rate).
    """

    data: Any
    sample: Callable
    loss: Callable
    metric: Callable
    metric_name: str
    input_shape: tuple
    output_dim: int
    target: float
    trivial_loss: float
    sequence_output: bool = False
    best_loss: float | None = None


def sample_rows(data, key, batch_size: int):
    """A batch of rows drawn uniformly with replacement from data['train'].

    Drawing batch_size integer indices is far cheaper than generating a fresh
    batch of inputs with the PRNG at every step.
    """
    x, y = data["train"]
    idx = jax.random.randint(key, (batch_size,), 0, x.shape[0])
    return x[idx], y[idx]


def mse(pred, y):
    """Mean squared error over examples and outputs."""
    return jnp.mean((pred - y) ** 2)


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy with integer labels."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def accuracy(logits, labels):
    """Fraction of examples whose arg-max logit is the label."""
    return jnp.mean(jnp.argmax(logits, -1) == labels)


def classification(train, heldout, *, batch_size: int, n_classes: int, target: float, train_eval=None) -> Task:
    """A classification task over stored (x, labels) arrays: cross-entropy, accuracy, rows drawn per batch."""
    return Task(
        data={"train": train, "train_eval": train if train_eval is None else train_eval, "heldout": heldout},
        sample=functools.partial(sample_rows, batch_size=batch_size),
        loss=cross_entropy,
        metric=accuracy,
        metric_name="accuracy",
        input_shape=tuple(train[0].shape[1:]),
        output_dim=n_classes,
        target=target,
        trivial_loss=math.log(n_classes),
    )
