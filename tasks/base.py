"""What every task returns: data as a pytree, and pure functions over it.

The data pytree is an argument of the compiled program (not a constant baked
into it), so large data sets do not slow compilation.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax


@dataclasses.dataclass(frozen=True)
class Task:
    """A made task.

    Attributes:
      data: pytree of arrays; must hold `train_eval`, `validation` and `heldout`, each (x, y):
        the training-evaluation set (final training loss, trivial loss), the split that picks an
        arm's best learning rate, and the split its tuned quality is reported on.
      sample: (data, key) -> (x, y), one training batch.
      loss: (prediction, y) -> scalar mean loss.
      metric: (prediction, y) -> scalar held-out metric.
      metric_name: what `metric` measures, e.g. "accuracy".
      input_shape: shape of one example.
      output_dim: width of the model's output.
      target: convergence target on the smoothed training loss.
      trivial_loss: loss of the best constant (input-independent) predictor on `train_eval`: the
        scale every threshold is relative to (`trivial_mse`, `trivial_cross_entropy`).
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


def trivial_mse(y) -> float:
    """Loss of the best constant predictor under `mse`: the targets' variance (mean over outputs)."""
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    return float(np.mean(np.var(y, axis=0)))


def trivial_cross_entropy(labels, n_classes: int) -> float:
    """Loss of the best constant predictor under `cross_entropy`: the entropy of the label frequencies."""
    p = np.bincount(np.asarray(labels).ravel(), minlength=n_classes) / np.asarray(labels).size
    p = p[p > 0]
    return float(-np.sum(p * np.log(p)))


def split_off(x, y, fraction: float):
    """(rest, last) of stored rows: the last `fraction` of them (at least one) split off, e.g. for validation."""
    n_last = max(1, round(fraction * len(y)))
    return (x[:-n_last], y[:-n_last]), (x[-n_last:], y[-n_last:])


def mse(pred, y):
    """Mean squared error over examples and outputs."""
    return jnp.mean((pred - y) ** 2)


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy with integer labels."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def accuracy(logits, labels):
    """Fraction of examples whose arg-max logit is the label."""
    return jnp.mean(jnp.argmax(logits, -1) == labels)


def classification(train, validation, heldout, *, batch_size: int, n_classes: int, target: float,
                   train_eval=None) -> Task:
    """A classification task over stored (x, labels) arrays: cross-entropy, accuracy, rows drawn per batch."""
    train_eval = train if train_eval is None else train_eval
    return Task(
        data={"train": train, "train_eval": train_eval, "validation": validation, "heldout": heldout},
        sample=functools.partial(sample_rows, batch_size=batch_size),
        loss=cross_entropy,
        metric=accuracy,
        metric_name="accuracy",
        input_shape=tuple(train[0].shape[1:]),
        output_dim=n_classes,
        target=target,
        trivial_loss=trivial_cross_entropy(train_eval[1], n_classes),
    )
