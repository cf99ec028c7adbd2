"""Metric functions on hand-made traces (docs/METHODS.md)."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from gradbench.records import metrics

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize("losses, norms, expected", [
    ([1.0, 0.9, 0.8, 0.7], [1, 1, 1, 1], None),            # healthy
    ([1.0, 2.0, 10.0, 10.5], [1, 1, 1, 1], 3),             # 10.5 > 10 x trivial; 10.0 is not
    ([25.0, 10.5, 3.0], [1, 1, 1], 1),                     # the initial loss alone is not divergence
    ([1.0, 0.9, NAN, 0.5], [1, 1, 1, 1], 2),               # non-finite loss
    ([1.0, 0.9, 0.8, 0.7], [1, INF, 1, 1], 1),             # non-finite gradient norm
    ([NAN, 1.0], [1, 1], 0),                               # broken from the start
])
def test_divergence_step(losses, norms, expected):
    assert metrics.divergence_step(losses, norms, factor=10.0, trivial_loss=1.0) == expected


def test_the_threshold_is_the_trivial_loss_not_the_arms_own_initial_loss():
    # A seed at 3 x trivial is judged against 10 x trivial whatever its arm's initial loss (25 x trivial
    # here, which under a threshold relative to loss_0 would have tolerated losses up to 250 x trivial).
    assert metrics.divergence_step([25.0, 3.0, 3.0], [1, 1, 1], 10.0, trivial_loss=1.0, loss_0=25.0) is None
    assert metrics.divergence_step([25.0, 30.0, 12.0, 51.0], [1] * 4, 10.0, trivial_loss=1.0, loss_0=25.0) == 3
    # An arm that starts at 2 x trivial diverges at 10.5 x trivial, far below the other arm's initial loss.
    assert metrics.divergence_step([2.0, 10.5], [1, 1], 10.0, trivial_loss=1.0, loss_0=2.0) == 1
    assert metrics.divergence_step([1.0, 3.0], [1, 1], factor=2.0, trivial_loss=1.0) == 1
    assert metrics.divergence_step([1.0, 3.0], [1, 1], factor=5.0, trivial_loss=1.0) is None


@pytest.mark.parametrize("diverged, final, expected", [
    (True, None, metrics.DIVERGED),
    (False, 0.49, metrics.TRAINED),
    (False, 0.5, metrics.COLLAPSED),      # exactly collapse_fraction x trivial: collapsed
    (False, 3.0, metrics.COLLAPSED),      # at 3 x trivial: finished, never learnt
    (False, None, metrics.COLLAPSED),
])
def test_outcome(diverged, final, expected):
    assert metrics.outcome(diverged, final, trivial_loss=1.0, collapse_fraction=0.5) == expected


def test_log_norm_does_not_underflow():
    import jax.numpy as jnp

    tiny = jnp.full((64, 32), 1e-30, jnp.float32)  # squares underflow float32; the norm must not
    assert float(metrics.log_norm(tiny)) == pytest.approx(math.log(1e-30 * math.sqrt(64 * 32)), rel=1e-5)
    assert float(jnp.linalg.norm(tiny)) == 0.0  # what a plain norm gives
    assert float(metrics.log_norm(jnp.zeros(3))) == -INF
    assert float(metrics.log_norm(jnp.array([3.0, 4.0]))) == pytest.approx(math.log(5.0))


def test_growth_and_e2e_keep_degenerate_seeds():
    logs = np.log(np.array([[8.0, 4.0, 2.0, 1.0],      # norm halves per layer towards the output: growth 4
                            [1.0, 1.0, 1.0, 1.0]]))
    logs = np.vstack([logs, [-INF, -INF, 0.0, 0.0]])    # gradients vanished to exactly zero at the input side
    np.testing.assert_allclose(metrics.fit_growth(logs), [4.0, 1.0, 0.0])
    np.testing.assert_allclose(np.exp(metrics.log_e2e_ratio(logs)), [8.0, 1.0, 0.0])


def test_critical_lr_with_censoring_at_both_ends():
    lrs = [0.01, 0.1, 1.0]
    trained = [[True, True, False],    # 0.1
               [True, True, True],     # trained everywhere: censored above, the top
               [False, False, False],  # trained nowhere: censored below, the bottom
               [False, True, False],   # too slow at 0.01, trained at 0.1, failed at 1: 0.1
               [True, False, True]]    # the first failure after the first success decides
    values, censored = metrics.critical_lr(lrs, trained)
    assert values == [0.1, 1.0, 0.01, 0.1, 0.01]
    assert censored == [None, "above", "below", None, None]


def test_lr_sensitivity_on_a_hand_made_table():
    # trivial 1.0; seed 0: losses 0.2, 0.4, diverged -> capped 0.2, 0.4, 1.0; best 0.2; mean of 0, 0.2, 0.8 = 1/3
    # seed 1: 0.3, 0.3, 2.0 -> 0.3, 0.3, 1.0; mean of 0, 0, 0.7 = 0.7/3
    losses = [[0.2, 0.4, NAN], [0.3, 0.3, 2.0]]
    np.testing.assert_allclose(metrics.lr_sensitivity(losses, 1.0), [1 / 3, 0.7 / 3])


def test_trainable_range_in_decades():
    out = metrics.trainable_range_decades([1e-3, 1e-2, 1e-1, 1.0], [[False, True, True, False],
                                                                    [False, False, False, False]])
    assert out[0] == pytest.approx(1.0) and math.isnan(out[1])


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


def test_kernel_rank_is_the_participation_ratio_of_the_singular_values():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(24, 16)).astype(np.float32)
    s2 = np.linalg.svd(w, compute_uv=False) ** 2
    expected = s2.sum() ** 2 / (s2 ** 2).sum() / 16
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    params = {"a": jnp.asarray(w), "bias": jnp.ones(16), "readout": jnp.ones((16, 1))}  # the last two are skipped
    assert float(metrics.kernel_rank(params)) == pytest.approx(expected, rel=1e-4)
    assert float(metrics.kernel_rank({"q": jnp.asarray(q, jnp.float32)})) == pytest.approx(1.0, rel=1e-4)
    assert float(metrics.kernel_rank({"equal": jnp.full((8, 8), 1e30)})) == pytest.approx(1 / 8, rel=1e-4)
    assert np.isnan(float(metrics.kernel_rank({"bias": jnp.ones(4)})))
