"""The metrics of DESIGN.md section 5, as small pure functions.

The step-wise criteria (`exploded`, `ema_update`, `debiased`) are written
with jax.numpy so the compiled engine and the host-side trace functions use
the very same definitions.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from scipy import stats

# Fractions of the step budget at which explosion is measured during training (docs/METHODS.md).
SNAPSHOT_FRACTIONS = (0.0, 0.1, 0.5, 1.0)


def exploded(loss, grad_norm, loss_0, factor):
    """True where a step counts as divergence: non-finite loss or gradient norm, or loss > factor x loss_0."""
    return ~jnp.isfinite(loss) | ~jnp.isfinite(grad_norm) | (loss > factor * loss_0)


def ema_update(ema, loss, smoothing):
    """One step of the exponential moving average of the training loss (starts at 0)."""
    return smoothing * ema + (1.0 - smoothing) * loss


def debiased(ema, smoothing, n_updates):
    """The bias-corrected moving average after n_updates steps (Adam-style correction)."""
    return ema / (1.0 - smoothing**n_updates)


def divergence_step(losses, grad_norms, factor: float, loss_0: float | None = None) -> int | None:
    """First step whose loss or gradient norm is non-finite or whose loss exceeds factor x loss_0.

    loss_0 defaults to the first loss of the trace.
    """
    losses, grad_norms = np.asarray(losses, np.float64), np.asarray(grad_norms, np.float64)
    loss_0 = losses[0] if loss_0 is None else loss_0
    with np.errstate(invalid="ignore"):
        hits = np.flatnonzero(np.asarray(exploded(losses, grad_norms, loss_0, factor)))
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
