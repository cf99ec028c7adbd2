"""The statistics of a comparison of per-seed values: exact permutation tests, Hodges-Lehmann effects with
bootstrap intervals, and Holm's correction (docs/METHODS.md, "Statistics")."""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

N_PERMUTATIONS = 20_000
N_BOOTSTRAP = 2_000


def permutation_p(baseline: np.ndarray, variant: np.ndarray) -> float:
    """Two-sided p-value of the rank-sum statistic under random relabelling (exact when enumerable)."""
    pooled = np.concatenate([baseline, variant])
    if np.all(pooled == pooled[0]):
        return 1.0
    ranks = stats.rankdata(pooled)
    n_b = len(baseline)

    def statistic(rank_b, rank_v, axis=-1):
        return np.mean(rank_v, axis=axis) - np.mean(rank_b, axis=axis)

    result = stats.permutation_test((ranks[:n_b], ranks[n_b:]), statistic, permutation_type="independent",
                                    alternative="two-sided", n_resamples=N_PERMUTATIONS, vectorized=True,
                                    rng=np.random.default_rng(0))
    return float(min(1.0, result.pvalue))


def hodges_lehmann(baseline: np.ndarray, variant: np.ndarray):
    """The median of all pairwise differences variant - baseline (per row, for 2-D arrays of resamples)."""
    diffs = variant[..., :, None] - baseline[..., None, :]
    return np.median(diffs.reshape(*diffs.shape[:-2], -1), axis=-1)


def _finite(values: np.ndarray, both: np.ndarray) -> np.ndarray:
    """Infinite values replaced by the most extreme finite value of both arms (the effect becomes a bound)."""
    finite = both[np.isfinite(both)]
    if not finite.size:
        return np.zeros_like(values)
    return np.clip(np.where(np.isposinf(values), finite.max(), np.where(np.isneginf(values), finite.min(),
                                                                          values)), finite.min(), finite.max())


def _ordered(values: np.ndarray, both: np.ndarray) -> np.ndarray:
    """Infinite values replaced by finite ones beyond every finite value (order and equality kept)."""
    finite = both[np.isfinite(both)]
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
    span = 1e3 * (high - low + 1.0)
    return np.where(np.isposinf(values), high + span, np.where(np.isneginf(values), low - span, values))


def paired_permutation_p(baseline: np.ndarray, variant: np.ndarray) -> float:
    """Two-sided p of the Wilcoxon signed-rank statistic under random sign flips of the paired differences.

    Exact (all 2^n sign patterns) up to N_PERMUTATIONS patterns; zero differences carry no sign.
    """
    both = np.concatenate([baseline, variant])
    d = _ordered(variant, both) - _ordered(baseline, both)
    if np.all(d == 0):
        return 1.0

    def statistic(x, y, axis=-1):
        diff = y - x
        return np.sum(np.sign(diff) * stats.rankdata(np.abs(diff), axis=axis), axis=axis)

    result = stats.permutation_test((np.zeros_like(d), d), statistic, permutation_type="samples",
                                    alternative="two-sided", n_resamples=N_PERMUTATIONS, vectorized=True,
                                    rng=np.random.default_rng(0))
    return float(min(1.0, result.pvalue))


def paired_hodges_lehmann(differences: np.ndarray):
    """The median of the Walsh averages (d_i + d_j) / 2, i <= j, of paired differences (per row, for 2-D
    arrays of resamples)."""
    i, j = np.triu_indices(differences.shape[-1])
    return np.median((differences[..., i] + differences[..., j]) / 2, axis=-1)


def compare(baseline, variant, *, log_scale: bool, censored=(None, None), paired: bool = False) -> dict:
    """Test, effect and bootstrap interval of one per-seed comparison (before the Holm correction).

    Args:
      baseline, variant: per-seed values (NaN: left out, counted in `dropped`).
      log_scale: compare logarithms (the effect is then a ratio).
      censored: per arm, the censoring of its median seed ("above", "below" or None).
      paired: value i of both arms comes from the same seed (same data order, and the same
        initialisation where the architecture is the same): a signed-rank test on the differences.
    """
    b, v = np.asarray(baseline, np.float64), np.asarray(variant, np.float64)
    if paired:
        keep = ~np.isnan(b) & ~np.isnan(v)
        dropped, b, v = int((~keep).sum()), b[keep], v[keep]
    else:
        dropped = int(np.isnan(b).sum() + np.isnan(v).sum())
        b, v = b[~np.isnan(b)], v[~np.isnan(v)]
    out = {"n": [len(b), len(v)], "dropped": dropped,
           "median": [float(np.quantile(x, 0.5, method="lower")) if len(x) else None for x in (b, v)]}
    if len(b) < 2 or len(v) < 2:
        return {**out, "p": None, "effect": None, "ci": None, "note": "fewer than 2 seeds in an arm"}
    if log_scale:
        with np.errstate(divide="ignore"):
            b, v = np.log(b), np.log(v)
    both = np.concatenate([b, v])
    bf, vf = _finite(b, both), _finite(v, both)
    # An infinite value (a run whose gradient overflowed, a seed that never converged) enters the effect as the
    # most extreme finite value of both arms: the effect and its interval are then bounds, not estimates.
    up, down = np.isposinf(v).any() or np.isneginf(b).any(), np.isneginf(v).any() or np.isposinf(b).any()
    bound = "≥" if up and not down else "≤" if down and not up else "~" if up else ""
    rng = np.random.default_rng(0)
    if paired:
        d = vf - bf
        boots = paired_hodges_lehmann(d[rng.integers(0, len(d), (N_BOOTSTRAP, len(d)))])
        effect, p = float(paired_hodges_lehmann(d)), paired_permutation_p(b, v)
    else:
        boots = hodges_lehmann(rng.choice(bf, (N_BOOTSTRAP, len(bf))), rng.choice(vf, (N_BOOTSTRAP, len(vf))))
        effect, p = float(hodges_lehmann(bf, vf)), permutation_p(b, v)
    low, high = np.quantile(boots, [0.025, 0.975])
    note = None
    if censored[0] and censored[0] == censored[1]:
        note = f"both arms censored {censored[0]} the grid"
    transform = math.exp if log_scale else float
    return {**out, "p": p, "paired": paired, "log_scale": log_scale, "effect_raw": effect,
            "ci_raw": [float(low), float(high)], "effect": transform(effect),
            "ci": [transform(low), transform(high)], "bound": bound, "note": note}


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error control)."""
    order = np.argsort(pvalues)
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted
