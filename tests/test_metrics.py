"""Metric functions on hand-made traces (DESIGN.md section 5)."""
import math

import numpy as np
import pytest

from bench import metrics

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize("losses, norms, expected", [
    ([1.0, 0.9, 0.8, 0.7], [1, 1, 1, 1], None),            # healthy
    ([1.0, 2.0, 10.0, 10.5], [1, 1, 1, 1], 3),             # 10.5 > 10 x loss_0; 10.0 is not
    ([1.0, 0.9, NAN, 0.5], [1, 1, 1, 1], 2),               # non-finite loss
    ([1.0, 0.9, 0.8, 0.7], [1, INF, 1, 1], 1),             # non-finite gradient norm
    ([NAN, 1.0], [1, 1], 0),                               # broken from the start
])
def test_divergence_step(losses, norms, expected):
    assert metrics.divergence_step(losses, norms, factor=10.0) == expected


def test_loss_0_can_come_from_elsewhere():
    assert metrics.divergence_step([5.0, 30.0], [1, 1], factor=10.0, loss_0=2.0) == 1
    assert metrics.divergence_step([5.0, 30.0], [1, 1], factor=10.0) is None


def test_divergence_factor_is_a_parameter():
    assert metrics.divergence_step([1.0, 3.0], [1, 1], factor=2.0) == 1
    assert metrics.divergence_step([1.0, 3.0], [1, 1], factor=5.0) is None


def test_steps_to_converge_uses_debiased_moving_average():
    # smoothing 0.5: smoothed = [1, (0.25+0.5*.. )] computed by hand below
    losses = [1.0, 0.5, 0.1, 0.1, 0.1]
    # ema: 0.5, 0.5, 0.3, 0.2, 0.15; debias by 1 - 0.5^n: 1.0, 0.667, 0.343, 0.213, 0.155
    assert metrics.steps_to_converge(losses, target=0.25, smoothing=0.5) == 3
    assert metrics.steps_to_converge(losses, target=0.15, smoothing=0.5) is None
    assert metrics.steps_to_converge(losses, target=0.5, smoothing=0.0) == 1  # no smoothing
    assert metrics.steps_to_converge(losses, target=0.25, smoothing=0.5, diverged_at=4) is None


def test_wilson_interval_matches_formula():
    k, n, z = 3, 16, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = metrics.wilson_interval(k, n)
    assert low == pytest.approx(centre - half, abs=1e-9)
    assert high == pytest.approx(centre + half, abs=1e-9)
    assert metrics.wilson_interval(0, 8)[0] == 0.0 and metrics.wilson_interval(8, 8)[1] == 1.0


def test_censored_median_counts_non_converged_as_infinity():
    median, (low, high) = metrics.censored_median([10, 20, 30, 40, 50, 60, 70, 80])
    assert median == 40 and (low, high) == (10, 80)  # n=8: ranks 1 and 8 (coverage 99.2%; 2..7 gives 93%)
    # 4 of 8 converged: the lower median exists; the upper end of the interval is infinite
    median, (low, high) = metrics.censored_median([10, 20, 30, 40, None, None, None, None])
    assert median == 40 and low == 10 and high is None
    # fewer than half converged: no median
    assert metrics.censored_median([10, 20, 30, None, None, None, None, None])[0] is None
    # 16 seeds: ranks 4 and 13 (P(Binom(16, 1/2) <= 3) = 0.0106 <= 0.025)
    median, (low, high) = metrics.censored_median(list(range(1, 17)))
    assert median == 8 and (low, high) == (4, 13)


def test_interval_covers_the_median_at_the_stated_rate():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(400):
        sample = rng.exponential(size=16)
        _, (low, high) = metrics.censored_median(list(sample))
        hits += low <= math.log(2) <= high
    assert hits / 400 >= 0.93


def test_largest_stable_lr():
    assert metrics.largest_stable_lr({0.01: 0.0, 0.1: 0.05, 1.0: 0.5}) == 0.1
    assert metrics.largest_stable_lr({1.0: 0.5}) is None
