"""The statistics of a comparison of per-seed values (docs/METHODS.md, "Statistics").

Exact tests wherever the null distribution can be enumerated (the signed-rank statistic over every sign
pattern, the rank-sum statistic without ties, Fisher's and McNemar's tests on counts), Hodges-Lehmann
effects with bootstrap intervals, Newcombe intervals for differences of rates, the multiplicity
corrections of statsmodels, and the stability of an answer under resampling of seeds.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import confint_proportions_2indep

EXACT_MAX_SEEDS = 20  # sign patterns enumerated up to 2^20; beyond, MONTE_CARLO random ones
MONTE_CARLO = 200_000
N_BOOTSTRAP = 2_000
N_STABILITY = 200  # resamples of seeds behind an answer's stability
# Values closer than this (relative to their magnitude) differ by the rounding of the analysis alone: the log and
# exp of numpy differ in the last bits between CPUs (their SIMD kernels), while two runs' float32 numbers differ
# by at least ~6e-8. Such values are one value, so zeros, ties and orderings are the same on every CPU.
ROUNDING = 1e-11


@functools.lru_cache(maxsize=None)
def _sign_patterns(n: int) -> np.ndarray:
    """Every pattern of n signs (2^n x n, +1/-1)."""
    return 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1).astype(np.int8)


def _ranks(d: np.ndarray, strata: np.ndarray) -> np.ndarray:
    """Mid-ranks of |d| along the last axis among the non-zero differences of each stratum (`strata`: each
    column's); a zero difference gets rank 0 (it ties lowest, then is taken out)."""
    a, ranks = np.abs(d), np.zeros(d.shape)
    for k in np.unique(strata):
        part = a[..., strata == k]
        ranks[..., strata == k] = np.where(
            part > 0, stats.rankdata(part, axis=-1) - (part == 0).sum(-1, keepdims=True), 0.0)
    return ranks


def signed_rank_p(d: np.ndarray, strata: np.ndarray | None = None) -> tuple[float, str]:
    """Two-sided p of the Wilcoxon signed-rank statistic of paired differences under sign flips, and the test.

    Zero differences carry no sign (Wilcoxon's convention); tied |d| get mid-ranks. With strata (datasets), |d|
    is ranked within each stratum and the statistic summed over them (the stratified signed-rank test), so every
    stratum weighs the same whatever the scale of its differences. Exact (all 2^n patterns) up to
    EXACT_MAX_SEEDS non-zero differences, else MONTE_CARLO random patterns.
    """
    strata = np.zeros(len(d), int) if strata is None else np.asarray(strata)
    keep = d != 0
    d, strata = d[keep], strata[keep]
    n_strata = len(np.unique(strata))
    name = "signed-rank" if n_strata < 2 else f"stratified signed-rank ({n_strata} strata)"
    if not len(d):
        return 1.0, f"{name}, exact"
    ranks = _ranks(d, strata)
    observed = abs(float(np.sum(np.sign(d) * ranks)))
    if len(d) <= EXACT_MAX_SEEDS:
        null = np.abs(_sign_patterns(len(d)) @ ranks)
        return float(np.mean(null >= observed - 1e-9)), f"{name}, exact"
    signs = 1 - 2 * np.random.default_rng(0).integers(0, 2, (MONTE_CARLO, len(d)))
    null = np.abs(signs @ ranks)
    return float((np.sum(null >= observed - 1e-9) + 1) / (MONTE_CARLO + 1)), f"{name}, {MONTE_CARLO:,} random"


def rank_sum_p(baseline: np.ndarray, variant: np.ndarray) -> tuple[float, str]:
    """Two-sided p of the Mann-Whitney rank-sum statistic: exact without ties, else a permutation test."""
    pooled = np.concatenate([baseline, variant])
    if np.all(pooled == pooled[0]):
        return 1.0, "rank-sum, exact"
    if len(np.unique(pooled)) == len(pooled):
        return float(stats.mannwhitneyu(variant, baseline, method="exact").pvalue), "rank-sum, exact"
    ranks = stats.rankdata(pooled)
    n_b = len(baseline)
    result = stats.permutation_test((ranks[:n_b], ranks[n_b:]), lambda x, y, axis=-1: np.mean(y, axis) - np.mean(x, axis),
                                    permutation_type="independent", n_resamples=MONTE_CARLO, vectorized=True,
                                    rng=np.random.default_rng(0))
    exact = math.comb(len(pooled), n_b) <= MONTE_CARLO
    return float(min(1.0, result.pvalue)), "rank-sum (ties), " + ("exact" if exact else f"{MONTE_CARLO:,} random")


def hodges_lehmann(baseline: np.ndarray, variant: np.ndarray):
    """The median of all pairwise differences variant - baseline (per row, for 2-D arrays of resamples)."""
    diffs = variant[..., :, None] - baseline[..., None, :]
    return np.median(diffs.reshape(*diffs.shape[:-2], -1), axis=-1)


def paired_hodges_lehmann(differences: np.ndarray):
    """The median of the Walsh averages (d_i + d_j) / 2, i <= j, of paired differences (per row)."""
    i, j = np.triu_indices(differences.shape[-1])
    return np.median((differences[..., i] + differences[..., j]) / 2, axis=-1)


def merge_rounding(x: np.ndarray, scale: float | None = None) -> np.ndarray:
    """x with every run of values that differ by rounding alone made equal to the run's smallest member.

    Sorted neighbours are one value when their gap is at most ROUNDING times the larger magnitude (or times
    `scale`, for differences of values of that magnitude, whose rounding follows the values, not the difference).
    Infinite and NaN values are kept as they are.
    """
    x = np.array(x, np.float64)
    finite = np.isfinite(x)
    order = np.argsort(x[finite], kind="stable")
    s = x[finite][order]
    if s.size < 2:
        return x
    magnitude = np.maximum(np.abs(s[1:]), np.abs(s[:-1])) if scale is None else scale
    starts = np.concatenate([[True], np.diff(s) > ROUNDING * magnitude])
    merged = np.empty_like(s)
    merged[order] = s[starts][np.cumsum(starts) - 1]
    x[finite] = merged
    return x


def _paired_differences(b: np.ndarray, v: np.ndarray) -> np.ndarray:
    """v - b of values already merged by `merge_rounding`, with differences of equal size up to the rounding of
    the values made equal (their ranks tie on every CPU); signs kept."""
    d = v - b
    both = np.abs(np.concatenate([b, v]))
    scale = float(both[np.isfinite(both)].max(initial=0.0))
    return np.sign(d) * merge_rounding(np.abs(d), scale=scale)


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


def _fast_p(b: np.ndarray, v: np.ndarray, paired: bool, strata: np.ndarray | None = None) -> np.ndarray:
    """Per row of resampled arms, the normal approximation of the same test (for stability only). Paired: `v`
    holds the rows of differences (`b` is unused) and `strata` each column's stratum."""
    with np.errstate(all="ignore"):
        if paired:  # the signed-rank statistic over its variance given the ranks (tie-corrected, zeros dropped)
            ranks = _ranks(v, np.zeros(v.shape[-1], int) if strata is None else strata)
            z = np.sum(np.sign(v) * ranks, -1) / np.sqrt(np.sum(ranks ** 2, -1))
            p = 2 * stats.norm.sf(np.abs(z))
        else:
            p = stats.mannwhitneyu(v, b, axis=-1, method="asymptotic").pvalue
    return np.where(np.isnan(p), 1.0, p)


def _resample(n: int, strata: np.ndarray | None, rng, draws: int) -> np.ndarray:
    """draws x n bootstrap indices, drawn within each stratum when there are strata."""
    if strata is None:
        return rng.integers(0, n, (draws, n))
    parts = [np.flatnonzero(strata == k) for k in np.unique(strata)]
    return np.concatenate([idx[rng.integers(0, len(idx), (draws, len(idx)))] for idx in parts], axis=1)


def compare(baseline, variant, *, log_scale: bool, censored=(None, None), paired: bool = False,
            strata=None) -> dict:
    """Test, effect and bootstrap interval of one per-seed comparison (before any multiplicity correction).

    Args:
      baseline, variant: per-seed values (NaN: left out, counted in `dropped`).
      log_scale: compare logarithms (the effect is then a ratio).
      censored: per arm, the censoring of its median seed ("above", "below" or None).
      paired: value i of both arms comes from the same seed (same data order, and the same
        initialisation where the architecture is the same): a signed-rank test on the differences.
      strata: per pair, its stratum (the dataset of a comparison over several): paired values are then
        ranked within strata and resampled within them; unpaired values ignore them.
    """
    b, v = np.asarray(baseline, np.float64), np.asarray(variant, np.float64)
    if paired:
        keep = ~np.isnan(b) & ~np.isnan(v)
        dropped, b, v = int((~keep).sum()), b[keep], v[keep]
        strata = None if strata is None or len(np.unique(strata)) < 2 else np.asarray(strata)[keep]
    else:
        dropped = int(np.isnan(b).sum() + np.isnan(v).sum())
        b, v = b[~np.isnan(b)], v[~np.isnan(v)]
    out = {"n": [len(b), len(v)], "dropped": dropped, "kind": "values",
           "median": [float(np.quantile(x, 0.5, method="lower")) if len(x) else None for x in (b, v)]}
    if len(b) < 2 or len(v) < 2:
        return {**out, "p": None, "effect": None, "ci": None, "note": "fewer than 2 seeds in an arm"}
    if log_scale:
        with np.errstate(divide="ignore"):
            b, v = np.log(b), np.log(v)
    pooled = merge_rounding(np.concatenate([b, v]))  # ties within rounding: the same answer on every CPU
    b, v = pooled[:len(b)], pooled[len(b):]
    both = pooled
    bf, vf = _finite(b, both), _finite(v, both)
    # An infinite value (a run whose gradient overflowed, a seed that never converged) enters the effect as the
    # most extreme finite value of both arms: the effect and its interval are then bounds, not estimates.
    up, down = np.isposinf(v).any() or np.isneginf(b).any(), np.isneginf(v).any() or np.isposinf(b).any()
    bound = "≥" if up and not down else "≤" if down and not up else "~" if up else ""
    # An arm whose every value is infinite (every ratio 0 or infinite, no seed converged): the effect itself is
    # infinite, not merely bounded; the finite stand-in still decides the word (conservatively), the report
    # prints what the values are.
    extreme = next(([arm, "0" if x[0] < 0 else "∞"] for arm, x in (("baseline", b), ("variant", v))
                    if len(x) and np.isinf(x).all() and (x == x[0]).all()), None)
    rng = np.random.default_rng(0)
    bo, vo = _ordered(b, both), _ordered(v, both)
    if paired:
        d = _paired_differences(bf, vf)
        boots = paired_hodges_lehmann(d[_resample(len(d), strata, rng, N_BOOTSTRAP)])
        effect = float(paired_hodges_lehmann(d))
        p, test = signed_rank_p(_paired_differences(bo, vo), strata)
    else:
        boots = hodges_lehmann(rng.choice(bf, (N_BOOTSTRAP, len(bf))), rng.choice(vf, (N_BOOTSTRAP, len(vf))))
        effect = float(hodges_lehmann(bf, vf))
        p, test = rank_sum_p(bo, vo)
    low, high = np.quantile(boots, [0.025, 0.975])
    note = None
    if censored[0] and censored[0] == censored[1]:
        note = f"both arms censored {censored[0]} the grid"
    transform = math.exp if log_scale else float
    identical = bool(paired and np.array_equal(bo, vo) or not paired and np.array_equal(np.sort(bo), np.sort(vo)))
    return {**out, "p": p, "test": test, "paired": paired, "log_scale": log_scale, "effect_raw": effect,
            "ci_raw": [float(low), float(high)], "effect": transform(effect),
            "ci": [transform(low), transform(high)], "bound": bound, "note": note, "identical": identical,
            "every_seed": extreme,
            "_resample": (bf, vf, bo, vo, strata if paired else None)}


def compare_rates(baseline, variant, *, paired: bool = False) -> dict:
    """Exact test and Newcombe interval of the difference of two rates (variant - baseline) of per-seed events.

    Paired (the same seeds): McNemar's exact test (a binomial test on the discordant seeds); otherwise Fisher's
    exact test. The interval is Newcombe's hybrid score interval for independent proportions.
    """
    b, v = np.asarray(baseline, bool), np.asarray(variant, bool)
    kb, kv, nb, nv = int(b.sum()), int(v.sum()), len(b), len(v)
    out = {"n": [nb, nv], "dropped": 0, "kind": "rate", "median": [kb / nb, kv / nv], "counts": [kb, kv],
           "paired": paired, "log_scale": False, "bound": "", "note": None}
    if paired:
        up, down = int((v & ~b).sum()), int((b & ~v).sum())
        p = float(stats.binomtest(up, up + down, 0.5).pvalue) if up + down else 1.0
        test = "McNemar, exact"
    else:
        p, test = float(stats.fisher_exact([[kv, nv - kv], [kb, nb - kb]]).pvalue), "Fisher, exact"
    low, high = confint_proportions_2indep(kv, nv, kb, nb, method="newcomb", compare="diff")
    effect = kv / nv - kb / nb
    identical = bool(np.array_equal(b, v) if paired else kb * nv == kv * nb and nb == nv)
    return {**out, "p": min(1.0, p), "test": test, "effect_raw": effect, "ci_raw": [float(low), float(high)],
            "effect": effect, "ci": [float(low), float(high)], "identical": identical, "_resample": (b, v)}


def resamples(result: dict, n: int = N_STABILITY) -> dict[str, np.ndarray]:
    """The answer recomputed on n bootstrap resamples of seeds (pairs kept together when paired, within strata):
    per resample its effect, interval (low, high) and p-value, on the scale of `effect_raw` / `ci_raw`.

    Rates: their exact test and Newcombe interval per resample. Values: the Hodges-Lehmann effect and the
    normal approximation of the rank test, and the full data's bootstrap interval shifted by the resample's
    change of effect (a nested bootstrap per resample would cost N_BOOTSTRAP times more; docs/METHODS.md).
    """
    rng = np.random.default_rng(1)
    if result["kind"] == "rate":
        b, v = result["_resample"]
        ib = rng.integers(0, len(b), (n, len(b)))
        iv = ib if result["paired"] else rng.integers(0, len(v), (n, len(v)))
        again = [compare_rates(b[ib[k]], v[iv[k]], paired=result["paired"]) for k in range(n)]
        low, high = np.array([r["ci_raw"] for r in again]).T
        return {"effect": np.array([r["effect_raw"] for r in again]), "low": low, "high": high,
                "p": np.array([r["p"] for r in again])}
    bf, vf, bo, vo, strata = result["_resample"]
    ib = _resample(len(bf), strata, rng, n)  # within strata: resampled columns are grouped by stratum
    iv = ib if result["paired"] else rng.integers(0, len(vf), (n, len(vf)))
    order_strata = None if strata is None else np.sort(strata)
    if result["paired"]:
        effect = paired_hodges_lehmann(_paired_differences(bf, vf)[ib])
        p = _fast_p(None, _paired_differences(bo, vo)[ib], True, order_strata)
    else:
        effect = hodges_lehmann(bf[ib], vf[iv])
        p = _fast_p(bo[ib], vo[iv], False)
    shift = effect - result["effect_raw"]
    return {"effect": effect, "low": result["ci_raw"][0] + shift, "high": result["ci_raw"][1] + shift, "p": p}


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error control)."""
    return multipletests(pvalues, method="holm")[1].tolist() if pvalues else []


def holm_multipliers(pvalues: list[float]) -> list[float]:
    """The factor each p is multiplied by in Holm's step-down (m - rank), before the running maximum."""
    order = np.argsort(pvalues, kind="stable")
    factors = np.empty(len(pvalues))
    factors[order] = len(pvalues) - np.arange(len(pvalues))
    return factors.tolist()


def fdr(pvalues: list[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (q-values: false discovery rate control)."""
    return multipletests(pvalues, method="fdr_bh")[1].tolist() if pvalues else []


def smallest_p(result: dict) -> float:
    """The smallest p-value the answer's test can reach with its seeds (every seed the same way)."""
    n_b, n_v = result["n"]
    if result["kind"] == "rate":
        if result["paired"]:
            return float(stats.binomtest(n_b, n_b, 0.5).pvalue)
        return float(stats.fisher_exact([[n_v, 0], [0, n_b]]).pvalue)
    if result["paired"]:
        return 2.0 / 2 ** n_b if n_b <= EXACT_MAX_SEEDS else 1.0 / (MONTE_CARLO + 1)
    return 2.0 / math.comb(n_b + n_v, n_b)
