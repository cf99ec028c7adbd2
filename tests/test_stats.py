"""The statistics of a comparison: exact tests against brute-force counts, effects, intervals, bounds."""
import itertools
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from gradbench.analysis import claims, stats


def test_permutation_p_value_equals_a_brute_force_count():
    base, var = np.array([1.0, 2.0, 2.0, 5.0]), np.array([2.0, 6.0, 7.0, 7.0])  # ties on purpose
    pooled = np.concatenate([base, var])
    ranks = __import__("scipy").stats.rankdata(pooled)
    observed = abs(ranks[4:].mean() - ranks[:4].mean())
    hits = total = 0
    for idx in itertools.combinations(range(8), 4):
        v = np.zeros(8, bool)
        v[list(idx)] = True
        hits += abs(ranks[v].mean() - ranks[~v].mean()) >= observed - 1e-12
        total += 1
    assert stats.rank_sum_p(base, var)[0] == pytest.approx(hits / total)


def test_hodges_lehmann_and_degenerate_values():
    assert stats.hodges_lehmann(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == pytest.approx(2.0)
    # a vanished (0) and an overflowed (inf) seed are kept: ranked at the ends, effect bounded
    out = stats.compare([0.0, 1.0, 1.0, 1.0], [math.inf, 10.0, 10.0, 10.0], log_scale=True)
    assert out["n"] == [4, 4] and out["dropped"] == 0 and math.isfinite(out["effect"]) and out["effect"] > 1
    assert out["bound"] == "≥"  # both infinities (log 0 in the baseline, inf in the variant) push it up
    # A variant whose seeds all overflowed: the effect is the baseline's largest over its values, whatever the variant.
    base = [1.0, 2.0, 3.0, 4.0]
    out = stats.compare(base, [math.inf] * 4, log_scale=True, paired=True)
    expected = math.exp(stats.paired_hodges_lehmann(np.log(4.0) - np.log(base)))
    assert out["effect"] == pytest.approx(expected) and out["bound"] == "≥"
    assert stats.compare([math.inf, 1.0, 2.0], [1.0, 1.5, 2.5], log_scale=True)["bound"] == "≤"
    assert stats.compare([1.0, 2.0], [3.0, 4.0], log_scale=True)["bound"] == ""


def test_holm_correction():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5]) == [0.5]


def test_paired_sign_flip_p_equals_a_brute_force_count():
    base = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    var = np.array([1.5, 2.0, 3.9, 3.5, 7.0, 9.0])  # one zero difference, one negative
    d = var - base
    ranks = __import__("scipy").stats.rankdata(np.abs(d))
    observed = abs(np.sum(np.sign(d) * ranks))
    hits = total = 0
    for signs in itertools.product((1, -1), repeat=len(d)):
        flipped = d * np.array(signs)
        hits += abs(np.sum(np.sign(flipped) * __import__("scipy").stats.rankdata(np.abs(flipped)))) >= observed - 1e-9
        total += 1
    assert stats.signed_rank_p(var - base)[0] == pytest.approx(hits / total)


def test_signed_rank_p_is_exact_without_a_monte_carlo_floor():
    d = np.array([0.3, -1.2, 2.5, 0.7, 1.9, -0.4, 3.1, 0.9, 1.4, 2.2, -0.8, 1.1])  # no ties, no zeros
    p, test = stats.signed_rank_p(d)
    assert test == "signed-rank, exact"
    assert p == pytest.approx(scipy_stats.wilcoxon(d, method="exact").pvalue)
    # 16 seeds all one way: 2 of the 2^16 sign patterns are as extreme, p = 2 / 65536 (not 1e-4 from 20,000 draws)
    assert stats.signed_rank_p(np.arange(1.0, 17.0))[0] == pytest.approx(2 / 2 ** 16)


def test_rank_sum_p_is_scipys_exact_test_without_ties():
    b, v = np.array([1.0, 2.5, 3.0, 4.2, 0.5]), np.array([5.0, 6.1, 2.9, 7.3, 8.8, 9.0])
    p, test = stats.rank_sum_p(b, v)
    assert test == "rank-sum, exact" and p == pytest.approx(scipy_stats.mannwhitneyu(v, b, method="exact").pvalue)


def test_datasets_are_strata_ranked_within_and_weighing_the_same():
    # One dataset's differences are 100 times the other's: pooled ranks let it decide alone (its one negative
    # difference gets the top rank); ranked within each dataset, both weigh the same.
    import itertools

    d = np.array([100.0, 200.0, 300.0, -400.0, 1.0, 2.0, 3.0, 4.0])
    strata = np.array([0] * 4 + [1] * 4)
    p, test = stats.signed_rank_p(d, strata)
    ranks = np.array([1, 2, 3, 4] * 2, float)
    observed = abs(np.sum(np.sign(d) * ranks))
    null = [abs(np.dot(signs, ranks)) for signs in itertools.product((1, -1), repeat=8)]
    assert test == "stratified signed-rank (2 strata), exact" and p == pytest.approx(np.mean(np.array(null) >= observed))
    assert p != pytest.approx(stats.signed_rank_p(d)[0])


def test_identical_paired_arms_give_an_interval_of_exactly_no_effect():
    # The same initialisation measured in two arms (clipping cannot change the gradient at init): paired
    # differences are all zero, so the interval is exactly no effect, however spread the seeds are.
    values = np.exp(np.random.default_rng(1).normal(0, 1, 12))
    out = stats.compare(values, values.copy(), log_scale=True, paired=True)
    assert out["p"] == 1.0 and out["effect"] == 1.0 and out["ci"] == [1.0, 1.0]
    assert claims.word(0.0, 0.0, 0.0, out["p"], math.log(1.25)) == claims.NEGLIGIBLE
    unpaired = stats.compare(values, values.copy(), log_scale=True)
    assert unpaired["ci"][0] < 0.8 and unpaired["ci"][1] > 1.25  # the same data unpaired cannot tell
