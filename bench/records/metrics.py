"""The metrics of docs/METHODS.md, as small pure functions.

The step-wise criteria (`exploded`, `ema_update`, `debiased`, `log_norm`) are
written with jax.numpy so the compiled engine and the host-side functions use
the very same definitions. Every threshold is relative to the task's trivial
loss (the best constant predictor's), the same for every arm.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

TRAINED, COLLAPSED, DIVERGED = "trained", "collapsed", "diverged"


STARTED_HIGH_MARGIN = 2.0  # a run that starts above the threshold diverges at twice its initial loss


def exploded(loss, grad_norm, trivial_loss, factor, step, loss_0):
    """True where a step counts as divergence: non-finite loss or gradient norm, or loss > factor x trivial loss.

    The threshold is the same for every arm. A network that merely starts far from the data has not
    diverged: the loss threshold applies from step 1 on, and only to a loss also above
    STARTED_HIGH_MARGIN x the initial loss loss_0 (which binds only for a network that started above
    half the threshold; non-finite values count at any step).
    """
    too_high = (loss > factor * trivial_loss) & (loss > STARTED_HIGH_MARGIN * loss_0) & (step > 0)
    return ~jnp.isfinite(loss) | ~jnp.isfinite(grad_norm) | too_high


def outcome(diverged: bool, final_train_loss, trivial_loss: float, collapse_fraction: float) -> str:
    """A seed's outcome: diverged; collapsed (final training loss >= collapse_fraction x trivial); or trained."""
    if diverged:
        return DIVERGED
    if final_train_loss is None or not final_train_loss < collapse_fraction * trivial_loss:
        return COLLAPSED
    return TRAINED


def log_norm(x):
    """Natural log of the L2 norm of `x`, computed without underflow (-inf only for an exactly zero x).

    Squaring float32 entries below ~1e-23 underflows to zero, so the largest
    magnitude is factored out first: log||x|| = log m + log||x / m||.
    """
    m = jnp.max(jnp.abs(x))
    safe = jnp.where(m > 0, m, 1.0)
    return jnp.where(m > 0, jnp.log(safe) + 0.5 * jnp.log(jnp.sum(jnp.square(x / safe))), -jnp.inf)


def kernel_rank(params):
    """Symmetry: the median over weight matrices of participation-ratio rank / smaller dimension (jittable).

    The participation ratio of a matrix's squared singular values, (sum s^2)^2 / sum s^4, computed from its
    Gram matrix with matrix products only (no decomposition, so no LAPACK call inside a compiled program).
    Matrices are a parameter's leading axes against its last (the units), kept where both sides exceed 1.
    Units that start equal (a constant initialisation) get equal gradients and stay equal: rank 1, the
    fraction 1 / n; a square Gaussian matrix gives about 1/2. NaN when the model has no such matrix.
    """
    fractions = []
    for w in jax.tree.leaves(params):
        if w.ndim < 2 or min(w.size // w.shape[-1], w.shape[-1]) < 2:
            continue
        m = w.reshape(-1, w.shape[-1]).astype(jnp.float32)
        m = m / jnp.maximum(jnp.max(jnp.abs(m)), jnp.finfo(jnp.float32).tiny)  # no overflow in the fourth powers
        gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
        fractions.append(jnp.trace(gram) ** 2 / jnp.sum(gram * gram) / min(m.shape))
    return jnp.median(jnp.stack(fractions)) if fractions else jnp.full((), jnp.nan)


def fit_growth(log_norms_SxL) -> np.ndarray:
    """Per-seed growth per layer of the squared gradient norm, output to input, fitted away from the ends.

    Args:
      log_norms_SxL: natural-log gradient norms per seed and layer (input side first).

    Returns:
      Per seed exp(-2 x slope) of a least-squares line through the log norms of
      the inner layers; 0 where a norm is exactly zero (gradients vanished
      completely), inf where one overflowed, NaN with fewer than 2 layers.
    """
    log_norms = np.asarray(log_norms_SxL, np.float64)
    n_layers = log_norms.shape[1]
    trim = max(1, n_layers // 10) if n_layers >= 6 else 0
    layers = np.arange(n_layers)[trim:n_layers - trim]
    growth = np.full(log_norms.shape[0], np.nan)
    for s, row in enumerate(log_norms[:, trim:n_layers - trim]):
        if len(row) < 2:
            continue
        if np.all(np.isfinite(row)):
            growth[s] = np.exp(-2.0 * np.polyfit(layers, row, 1)[0])
        elif np.any(np.isneginf(row)):
            # Zero gradients: towards the input (vanished) or towards the output (the other way round).
            growth[s] = 0.0 if np.isneginf(row[0]) else np.inf
        else:
            growth[s] = np.inf if np.any(np.isposinf(row)) else np.nan
    return growth


def log_e2e_ratio(log_norms_SxL) -> np.ndarray:
    """Per seed, log of the end-to-end ratio ||dL/dh_first|| / ||dL/dh_last|| (input side over output side)."""
    log_norms = np.asarray(log_norms_SxL, np.float64)
    with np.errstate(invalid="ignore"):
        return log_norms[:, 0] - log_norms[:, -1]


def critical_lr(lrs, trained_SxL) -> tuple[list[float], list[str | None]]:
    """Per seed, the largest grid learning rate at and below which the seed trained.

    "Below" starts at the smallest learning rate at which the seed trained:
    learning rates under it are too small for the step budget (the run
    collapsed without diverging) and do not end the range. The value is the
    top of that first trainable range.

    Args:
      lrs: the grid, ascending.
      trained_SxL: per seed and learning rate, whether the seed trained.

    Returns:
      (values, censored): censored is "above" when the range reaches the top of
      the grid (the value is the top: the true one is larger), "below" when the
      seed trained at no learning rate (the value is the grid's bottom), None
      otherwise.
    """
    values, censored = [], []
    for row in np.asarray(trained_SxL, bool):
        trained = np.flatnonzero(row)
        if trained.size == 0:
            values.append(float(lrs[0]))
            censored.append("below")
            continue
        failed_after = np.flatnonzero(~row[trained[0]:])
        if failed_after.size == 0:
            values.append(float(lrs[-1]))
            censored.append("above")
        else:
            values.append(float(lrs[trained[0] + failed_after[0] - 1]))
            censored.append(None)
    return values, censored


def lr_sensitivity(losses_SxL, trivial_loss: float) -> np.ndarray:
    """Per seed, the learning-rate sensitivity of Wortsman et al. (2023).

    The mean over the (log-spaced) grid of min(loss, trivial) minus the best
    such value over the grid; a non-finite or missing loss (diverged) counts
    as the trivial loss. 0: every learning rate is as good as the best one;
    trivial - best: only one is any good.
    """
    losses = np.asarray(losses_SxL, np.float64)
    capped = np.where(np.isfinite(losses), np.minimum(losses, trivial_loss), trivial_loss)
    return np.mean(capped - capped.min(axis=1, keepdims=True), axis=1)


def trainable_range_decades(lrs, trained_SxL) -> np.ndarray:
    """Per seed, log10 of the largest over the smallest learning rate at which it trained (NaN: none)."""
    log_lrs = np.log10(np.asarray(lrs, np.float64))
    out = np.full(len(trained_SxL), np.nan)
    for s, row in enumerate(np.asarray(trained_SxL, bool)):
        if row.any():
            out[s] = log_lrs[row].max() - log_lrs[row].min()
    return out


def stable_lr(lrs, diverged_SxL) -> tuple[list[float], list[str | None]]:
    """Per seed, the divergence-free learning rate: the largest grid value below the seed's first divergence.

    Unlike the critical learning rate, a run that collapsed (too slow for its budget) does not end the range:
    only divergence does. Censored "above" when the seed diverged nowhere on the grid (the value is the top),
    "below" when it diverged already at the smallest learning rate (the value is the bottom).
    """
    values, censored = [], []
    for row in np.asarray(diverged_SxL, bool):
        first = np.flatnonzero(row)
        if first.size == 0:
            values.append(float(lrs[-1]))
            censored.append("above")
        elif first[0] == 0:
            values.append(float(lrs[0]))
            censored.append("below")
        else:
            values.append(float(lrs[first[0] - 1]))
            censored.append(None)
    return values, censored


def trained_width_decades(lrs, trained_SxL) -> np.ndarray:
    """Per seed, the width in decades of the learning rates at which it trained, each grid point from the lowest
    to the highest it trained at counting as one grid step (the mean log10 spacing, so a grid of rounded learning
    rates gives whole steps): 0 when it trained nowhere, one step when at a single learning rate."""
    log_lrs = np.log10(np.asarray(lrs, np.float64))
    step = float(np.mean(np.diff(log_lrs))) if len(log_lrs) > 1 else 0.0
    trained = np.asarray(trained_SxL, bool)
    return np.array([(np.flatnonzero(row)[-1] - np.flatnonzero(row)[0] + 1) * step if row.any() else 0.0
                     for row in trained])


def ema_update(ema, loss, smoothing):
    """One step of the exponential moving average of the training loss (starts at 0)."""
    return smoothing * ema + (1.0 - smoothing) * loss


def debiased(ema, smoothing, n_updates):
    """The bias-corrected moving average after n_updates steps (Adam-style correction)."""
    return ema / (1.0 - smoothing**n_updates)


def divergence_step(losses, grad_norms, factor: float, trivial_loss: float, loss_0: float = -math.inf) -> int | None:
    """First step that counts as divergence under `exploded` (loss_0: the initial loss; default: no excuse)."""
    losses, grad_norms = np.asarray(losses, np.float64), np.asarray(grad_norms, np.float64)
    with np.errstate(invalid="ignore"):
        steps = np.arange(len(losses))
        hits = np.flatnonzero(np.asarray(exploded(losses, grad_norms, trivial_loss, factor, steps, loss_0)))
    return int(hits[0]) if hits.size else None


def steps_to_converge(losses, target: float, smoothing: float, diverged_at: int | None = None) -> int | None:
    """First step whose smoothed training loss is <= target; None if never, or if the seed diverged."""
    if diverged_at is not None:
        return None
    ema = 0.0
    for t, loss in enumerate(np.asarray(losses, np.float64)):
        ema = ema_update(ema, loss, smoothing)
        if debiased(ema, smoothing, t + 1) <= target:
            return t
    return None


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k / n."""
    ci = stats.binomtest(k, n).proportion_ci(confidence, method="wilson")
    return float(ci.low), float(ci.high)


def censored_median(steps, confidence: float = 0.95):
    """Median of steps-to-converge counting None (never converged) as infinity.

    Returns (median, (low, high)): the lower median (x_(ceil(n/2)), so it is
    None unless at least half the seeds converged); the interval comes from order statistics (distribution
    free: the ranks whose binomial(n, 1/2) coverage is at least `confidence`),
    with None for an end that is infinite or not identifiable with n seeds.
    """
    values = np.sort([math.inf if s is None else float(s) for s in steps])
    n = len(values)
    median = float(values[(n - 1) // 2]) if n else math.inf
    # Largest j with P(Binom(n, 1/2) < j) <= alpha / 2: [x_(j), x_(n+1-j)] (1-based) covers the median.
    alpha = 1.0 - confidence
    j = int(stats.binom.ppf(alpha / 2, n, 0.5)) if n else 0
    if j >= 1 and stats.binom.cdf(j - 1, n, 0.5) > alpha / 2:
        j -= 1
    low, high = (values[j - 1], values[n - j]) if j >= 1 else (math.inf, math.inf)
    finite = lambda v: float(v) if math.isfinite(v) else None  # noqa: E731
    return finite(median), (finite(low) if j >= 1 else None, finite(high))


def largest_stable_lr(rate_by_lr: dict[float, float], max_rate: float = 0.1) -> float | None:
    """Largest learning rate whose divergence rate is <= max_rate (None if none is)."""
    ok = [lr for lr, rate in rate_by_lr.items() if rate <= max_rate]
    return max(ok) if ok else None
