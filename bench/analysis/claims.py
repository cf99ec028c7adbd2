"""Statistical verdicts on the suite's claims, computed from results records (docs/METHODS.md, "Claims").

A claim (a `[[claim]]` table of a suite) holds comparisons; each compares a
baseline arm of an experiment with a variant arm of the same experiment (or of
`variant_experiment`, say an optimiser swept over its own learning-rate range). An *arm* is the set of
cells selected by a mitigation selector: the same configuration at every
learning rate of the grid, trained on the same seeds. A comparison answers the
questions of QUESTIONS (bench/spec/claim_schema.py, which validates the tables):

- `init`: the gradient at initialisation, the per-seed end-to-end ratio
  ||dL/dh_first|| / ||dL/dh_last||, read as the comparison's `gradient` says:
  explosion (a larger ratio is worse), vanishing (a smaller one is worse) or
  either (the distance from 1, max(r, 1/r), is worse);
- `training`: the same at the fraction `at` of the budget, at the stated
  learning rate `lr`, else per seed the median over the learning rates both
  arms' grids hold (the same rates in both arms, none chosen by the outcome),
  leaving out the rates where either arm's run of the seed diverged;
- `trainability`: a per-seed summary over the learning-rate grid, `metric`
  (default the divergence-free learning rate);
- `rate`: the divergence or failure rate (`rate`) over seeds at the stated `lr`;
- `symmetry`: the per-seed kernel rank at initialisation (a lower one is worse).

The comparison's `questions` (default: its claim's `judged_on`) are *judged*:
only they enter the claim's multiplicity correction and its verdict; the
others are reported as descriptive. Seeds are never pooled over the grid:
every test compares one value per seed and arm; arms trained on the same
seeds are paired seed by seed, on the seeds both ran where one arm ran more
(bench/analysis/stats.py names each test).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

from bench.analysis import stats
from bench.records import metrics
from bench.records.cell import read_extended
from bench.spec.claim_schema import JUDGED_BY_DEFAULT, matches

ALPHA = 0.05
STABLE = 0.8  # an answer reproduced by fewer of the resamples of seeds than this is fragile
MIN_RATE_EFFECT = 0.25  # the smallest difference of rates a `rate` answer counts as an effect
SUPPORTED, CONTRADICTED, NO_EFFECT, INCONCLUSIVE = "supported", "contradicted", "no detectable effect", "inconclusive"
NOT_SUPPORTED, DESCRIPTIVE = "not supported", "descriptive"


def run_lr(record) -> float:
    """The learning rate a record's runs used: its plan's (a mitigation may set its own), else the grid's."""
    return record.get("plan", {}).get("optimizer", {}).get("lr", record["config"]["optimizer"]["lr"])


def _as_float(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], np.float64)


def _bools(record, key) -> np.ndarray:
    return np.asarray(record["per_seed"][key], bool)


@dataclasses.dataclass
class Arm:
    """The cells of one arm (the same configuration over the learning-rate grid), sorted by the learning rate
    its runs used (a mitigation may set its own)."""

    records: list[dict]

    def __post_init__(self):
        self.records = sorted(self.records, key=run_lr)
        self.lrs = np.array([run_lr(r) for r in self.records])
        self.trivial_loss = self.records[0]["thresholds"]["trivial_loss"]
        self.seeds = self.records[0]["per_seed"].get("seed")  # the same seeds in two arms: paired values
        self.n_seeds = len(self.records[0]["per_seed"]["trained"])

    def per_seed(self, key: str) -> np.ndarray:
        """seeds x learning rates of a per-seed field (None -> NaN)."""
        return np.stack([_as_float(r["per_seed"][key]) for r in self.records], axis=1)

    def flags(self, key: str) -> np.ndarray:
        """seeds x learning rates of a per-seed boolean field (trained, diverged, collapsed)."""
        return np.stack([_bools(r, key) for r in self.records], axis=1)

    def tuned_index(self) -> int:
        """The grid index with the lowest median validation loss over seeds (a failed seed counts as infinity)."""
        losses = np.where(self.flags("trained"), self.per_seed("final_validation_loss"), np.inf)
        losses = np.where(np.isnan(losses), np.inf, losses)
        return int(np.argmin(np.quantile(losses, 0.5, axis=0, method="lower")))

    def fastest_index(self) -> int:
        """The grid index where the most seeds reach the target (ties: the fewest median steps, then the lower
        learning rate): the arm's best learning rate for convergence."""
        steps = self.per_seed("steps_to_converge")
        steps = np.where(np.isnan(steps), np.inf, steps)
        converged = np.isfinite(steps).sum(axis=0)
        median = np.quantile(steps, 0.5, axis=0, method="lower")
        return min(range(len(self.lrs)), key=lambda i: (-converged[i], median[i], i))

    def seed_tuned(self) -> np.ndarray:
        """Per seed, the grid index of its own lowest validation loss (a failed run counts as infinity; a seed
        that failed everywhere: the lowest learning rate)."""
        losses = np.where(self.flags("trained"), self.per_seed("final_validation_loss"), np.inf)
        return np.argmin(np.where(np.isnan(losses), np.inf, losses), axis=1)

    def read(self, fn: Callable[[dict], np.ndarray], lr: float | None) -> np.ndarray:
        """Per-seed values fn(record) at the stated learning rate, else each seed's at its own tuned one."""
        if lr is not None:
            return fn(self.at(lr))
        table = np.stack([fn(r) for r in self.records], axis=1)
        return table[np.arange(self.n_seeds), self.seed_tuned()]

    def at(self, lr: float) -> dict:
        """The record at a stated learning rate of the grid."""
        index = [i for i, x in enumerate(self.lrs) if math.isclose(x, lr, rel_tol=1e-9)]
        if not index:
            raise ValueError(f"learning rate {lr:g} is not on the arm's grid {self.lrs.tolist()}")
        return self.records[index[0]]

    def summary(self) -> dict:
        """Trainability over the grid: medians of the per-seed summaries, outcomes and the tuned quality."""
        median = lambda x: float(np.quantile(x, 0.5, method="lower"))  # noqa: E731

        def censored_median(values, censored):
            value = median(values)
            edge = [c for v, c in zip(values, censored) if v == value and c]
            return value, edge[0] if edge else None

        tuned, fastest = self.tuned_index(), self.fastest_index()
        converged = np.isfinite(self.per_seed("steps_to_converge")).sum(axis=0)

        def present_median(key, index):  # over the seeds that have a value (a diverged seed has none)
            column = self.per_seed(key)[:, index]
            return float(np.nanmedian(column)) if (~np.isnan(column)).any() else None

        crit, crit_edge = censored_median(*metrics.critical_lr(self.lrs, self.flags("trained")))
        stable, stable_edge = censored_median(*metrics.stable_lr(self.lrs, self.flags("diverged")))
        return {
            "lrs": self.lrs.tolist(),
            "critical_lr": crit, "critical_lr_censored": crit_edge,
            "stable_lr": stable, "stable_lr_censored": stable_edge,
            "lr_sensitivity": median(metrics.lr_sensitivity(self.per_seed("final_validation_loss"),
                                                             self.trivial_loss)),
            "trained_decades": median(metrics.trained_width_decades(self.lrs, self.flags("trained"))),
            "diverged": [int(r["per_seed"]["diverged"].count(True)) for r in self.records],
            "collapsed": [int(r["per_seed"]["collapsed"].count(True)) for r in self.records],
            "seeds": self.n_seeds,
            "failure_rate": (1 - self.flags("trained").mean(axis=0)).tolist(),
            "tuned_lr": run_lr(self.records[tuned]),
            "tuned_converged": int(converged[tuned]),
            "fastest_lr": run_lr(self.records[fastest]),
            "fastest_converged": int(converged[fastest]),
            "tuned_heldout_loss": present_median("final_heldout_loss", tuned),
            "tuned_heldout_metric": present_median("final_heldout_metric", tuned),
        }


def e2e_ratio(record: dict, fraction: float) -> np.ndarray:
    """Per-seed end-to-end gradient ratio at a snapshot fraction.

    A ratio that is not a number is read from the layers' gradients: no gradient at the input side (0/0
    included: every gradient zero) is total vanishing, ratio 0; a gradient that is not finite is explosion,
    ratio infinity.
    """
    k = record["explosion"]["fractions"].index(fraction)
    per_seed = record["explosion"]["per_seed"]
    values = np.array([read_extended(row[k]) for row in per_seed["e2e_ratio"]])
    growth = np.array([read_extended(row[k]) for row in per_seed["growth_per_layer"]])
    return np.where(np.isnan(values), np.where(growth == 0.0, 0.0, np.inf), values)


def _gradient_values(ratio: np.ndarray, gradient: str) -> np.ndarray:
    """The ratio as the comparison reads it: explosion and vanishing the ratio itself, either max(r, 1/r)."""
    if gradient != "either":
        return ratio
    with np.errstate(divide="ignore"):
        return np.exp(np.abs(np.log(ratio)))


def _heldout(record) -> np.ndarray:
    """Per-seed held-out loss; a failed seed keeps its own loss capped at the trivial loss (not a number ->
    the trivial loss), as learning-rate sensitivity counts it."""
    raw = _as_float(record["per_seed"]["final_heldout_loss"])
    trivial = record["thresholds"]["trivial_loss"]
    failed = np.where(np.isfinite(raw), np.minimum(raw, trivial), trivial)
    return np.where(_bools(record, "trained") & np.isfinite(raw), raw, failed)


def _steps(record):
    steps = _as_float(record["per_seed"]["steps_to_converge"])
    return np.where(np.isnan(steps), np.inf, steps)


def _gap(record):
    ps = record["per_seed"]
    gap = _as_float(ps["final_heldout_loss"]) - _as_float(ps["final_train_loss"])
    return np.where(_bools(record, "trained"), gap, np.nan)


def _recorded(record, key):
    """A per-seed model diagnostic of every seed, trained or not (None, a non-finite value, -> inf)."""
    values = _as_float(record["per_seed"][key])
    return np.where(np.isnan(values), np.inf, values)


@dataclasses.dataclass(frozen=True)
class Metric:
    """A trainability metric: per-seed values of an arm at a learning rate (or over the grid)."""

    values: Callable[[Arm, float | None], tuple[np.ndarray, list]]  # -> (values, censoring per seed)
    worse_when: int  # +1: a higher value is worse; -1: lower is worse
    log_scale: bool  # effect as a ratio (True) or a difference (False)
    description: str
    # The minimum effect of a difference (log_scale False), given the suite's min_effect, the baseline's median
    # and the trivial loss; default (min_effect - 1) x the baseline's median, at least 1% of the trivial loss.
    min_difference: Callable[[float, float | None, float], float] | None = None


def _grid_metric(fn):
    def values(arm, lr):
        del lr  # a summary over the whole grid
        values, censored = fn(arm)
        return np.array(values, np.float64), list(censored)
    return values


def _record_metric(fn):
    return lambda arm, lr: (arm.read(fn, lr), [None] * arm.n_seeds)


def _fewest_steps(arm, lr):
    """Steps to the target at the stated learning rate, else each seed's fewest over the grid."""
    steps = _steps(arm.at(lr)) if lr is not None else np.min(np.stack([_steps(r) for r in arm.records]), axis=0)
    return steps, [None] * arm.n_seeds


# The metrics a comparison may name; their names are the claim schema's METRIC_NAMES, in the same order.
METRICS = {
    "stable_lr": Metric(_grid_metric(lambda a: metrics.stable_lr(a.lrs, a.flags("diverged"))), -1, True,
                        "per seed, the largest grid learning rate below its first divergence"),
    "critical_lr": Metric(_grid_metric(lambda a: metrics.critical_lr(a.lrs, a.flags("trained"))), -1, True,
                          "per seed, the largest grid learning rate at and below which it trained"),
    "trained_decades": Metric(
        _grid_metric(lambda a: (metrics.trained_width_decades(a.lrs, a.flags("trained")), [None] * a.n_seeds)),
        -1, False, "per seed, the width in decades of the learning rates at which it trained",
        min_difference=lambda min_effect, base, trivial: math.log10(min_effect)),
    "lr_sensitivity": Metric(
        lambda arm, lr: (metrics.lr_sensitivity(arm.per_seed("final_validation_loss"), arm.trivial_loss)
                         / arm.trivial_loss, [None] * arm.n_seeds), +1, True,
        "per seed, Wortsman et al.'s learning-rate sensitivity of the validation loss / trivial loss"),
    "tuned_heldout_loss": Metric(_record_metric(_heldout), +1, True,
                                 "held-out loss at each seed's tuned (or the stated) learning rate; a failed "
                                 "seed's own loss capped at the trivial loss"),
    "steps_to_converge": Metric(_record_metric(_steps), +1, True,
                                "steps to the target at each seed's tuned (or the stated) learning rate; never = inf"),
    "steps_at_fastest_lr": Metric(
        _fewest_steps, +1, True,
        "per seed, the fewest steps to the target over the grid (at its fastest learning rate) or at the stated "
        "one; never = inf"),
    "generalization_gap": Metric(_record_metric(_gap), +1, False,
                                 "held-out minus training loss at each seed's tuned (or the stated) learning "
                                 "rate, trained seeds"),
    "max_attn_logit": Metric(_record_metric(lambda r: _recorded(r, "max_attn_logit")), +1, True,
                             "largest attention logit during training at each seed's tuned (or the stated) "
                             "learning rate; overflow = inf"),
    "max_abs_log_z": Metric(_record_metric(lambda r: _recorded(r, "max_abs_log_z")), +1, True,
                            "largest mean |log Z| of the output softmax during training at each seed's tuned "
                            "(or the stated) learning rate; overflow = inf"),
    "grad_zero_fraction": Metric(
        _record_metric(lambda r: _recorded(r, "grad_zero_fraction")), +1, False,
        "largest fraction of exactly-zero gradient entries in a step (underflow) at each seed's tuned (or the "
        "stated) learning rate",
        min_difference=lambda min_effect, base, trivial: max(abs(base or 0.0), 0.01) * (min_effect - 1)),
}


def _min_difference(metric: Metric | None, min_effect: float, result: dict, trivial_loss: float) -> float:
    """The minimum effect of a difference: see Metric.min_difference."""
    base_median = result["median"][0]
    base = base_median if base_median is not None and math.isfinite(base_median) else None
    if metric is not None and metric.min_difference is not None:
        return metric.min_difference(min_effect, base, trivial_loss)
    return max(abs(base) if base is not None else 0.0, 0.01 * trivial_loss) * (min_effect - 1)


def judge(result: dict, expected_sign: int, threshold: float, alpha: float = ALPHA) -> str:
    """The verdict of one judged answer, given its corrected p-value."""
    if result.get("p") is None or result.get("note"):
        return INCONCLUSIVE
    if result.get("identical"):
        return NO_EFFECT
    return _answer(result["effect_raw"], *result["ci_raw"], result["p_adjusted"], result.get("bound", ""),
                   expected_sign, threshold, alpha)


def _answer(effect: float, low: float, high: float, p_adjusted: float, bound: str, expected_sign: int,
            threshold: float, alpha: float) -> str:
    """The verdict of an effect, its interval and its corrected p-value.

    Effects that are bounds (an infinite value in an arm) are decisive only where the bound does not point
    towards no effect, and are never "no detectable effect" or "not supported" on the side the bound leaves open.
    """
    open_up, open_down = bound in ("≥", "~"), bound in ("≤", "~")
    towards_zero = (effect > 0 and open_down and not open_up) or (effect < 0 and open_up and not open_down)
    if p_adjusted < alpha and abs(effect) >= threshold and effect != 0 and not towards_zero:
        return SUPPORTED if np.sign(effect) == expected_sign else CONTRADICTED
    claimed_open = open_up if expected_sign > 0 else open_down
    other_open = open_down if expected_sign > 0 else open_up
    claimed_end = high if expected_sign > 0 else -low
    other_end = -low if expected_sign > 0 else high
    if claimed_end < threshold and not claimed_open:
        return NO_EFFECT if other_end < threshold and not other_open else NOT_SUPPORTED
    return INCONCLUSIVE


# What stability compares: "no detectable effect" and "not supported" both exclude the claimed effect, and
# differ only in whether the opposite one is excluded too.
_OUTCOME = {NO_EFFECT: "claimed effect excluded", NOT_SUPPORTED: "claimed effect excluded"}


def stability(result: dict, verdict: str, multiplier: float, alpha: float = ALPHA) -> float:
    """The fraction of resamples of seeds (`stats.resamples`) whose answer has the outcome of `verdict`
    (supported, contradicted, claimed effect excluded, inconclusive), each resample's p-value times the answer's
    Holm multiplier in the full data."""
    if result.get("note") or result.get("identical"):
        return 1.0  # censored or identical arms answer the same on every resample
    r = stats.resamples(result)
    again = [_answer(e, lo, hi, min(1.0, p * multiplier), result.get("bound", ""), result["expected_sign"],
                     result["threshold"], alpha) for e, lo, hi, p in zip(r["effect"], r["low"], r["high"], r["p"])]
    outcome = _OUTCOME.get(verdict, verdict)
    return float(np.mean([_OUTCOME.get(a, a) == outcome for a in again]))


def _questions(comp: dict, base: Arm, var: Arm) -> dict:
    """Every question's per-seed data for one comparison on one dataset: values, scale, direction, per-seed
    censoring, what was measured."""
    name = comp.get("metric", "stable_lr")
    metric = METRICS[name]
    lr, at, gradient = comp.get("lr"), comp.get("at", 0.5), comp.get("gradient", "explosion")
    no_censoring = ([None] * base.n_seeds, [None] * var.n_seeds)
    worse = -1 if gradient == "vanishing" else +1
    read = {"explosion": "ratio", "vanishing": "ratio", "either": "max(ratio, 1/ratio)"}[gradient]
    # The gradient at initialisation does not depend on the learning rate: each arm is read at the stated lr
    # (on both grids), else at its own lowest one (the two arms' grids may differ).
    initial = [a.at(a.lrs[0] if lr is None else lr) for a in (base, var)]
    out = {"init": dict(values=tuple(_gradient_values(e2e_ratio(r, 0.0), gradient) for r in initial),
                        log_scale=True, worse_when=worse, censored=no_censoring,
                        what=f"{gradient}: end-to-end gradient {read} at initialisation")}
    # In training, both arms at the same learning rates: the stated one, else per seed the median over every
    # learning rate both grids hold (no choice of a tuned rate that a flat loss curve can flip). A run that
    # diverged is left out (its divergence is the trainability answers' business): per seed, the rates where
    # neither arm diverged.
    shared = [lr] if lr is not None else [x for x in base.lrs if np.isclose(var.lrs, x, rtol=1e-9, atol=0).any()]
    where = f"lr {lr:g}" if lr is not None else \
        f"median over the {len(shared)} learning rates of both grids" if shared else "no learning rate on both grids"
    training = _training_ratios(base, var, shared, at)
    if shared:
        where += " where neither arm diverged"  # how many seeds have one: counted once pooled
    out["training"] = dict(values=tuple(_gradient_values(v, gradient) for v in training),
                           empty=("no learning rate at which both arms ran without diverging" if shared
                                  else "the arms ran at no common learning rate"),
                           log_scale=True, worse_when=worse, censored=no_censoring,
                           what=f"{gradient}: end-to-end gradient {read} at {at:.0%} of training, {where}")
    (b_vals, b_cens), (v_vals, v_cens) = metric.values(base, lr), metric.values(var, lr)
    out["trainability"] = dict(values=(b_vals, v_vals), log_scale=metric.log_scale, worse_when=metric.worse_when,
                               censored=(list(b_cens), list(v_cens)), what=name, metric=metric)
    if lr is not None:
        rate = comp.get("rate", "failure")
        flag = (lambda r: _bools(r, "diverged")) if rate == "divergence" else (lambda r: ~_bools(r, "trained"))
        out["rate"] = dict(values=(flag(base.at(lr)), flag(var.at(lr))), rate=True, worse_when=+1,
                           censored=no_censoring, what=f"{rate} rate at lr {lr:g}")
    if all("kernel_rank_init" in a.records[0]["per_seed"] for a in (base, var)):
        ranks = tuple(_as_float(r["per_seed"]["kernel_rank_init"]) for r in initial)
        out["symmetry"] = dict(values=ranks,
                               log_scale=True, worse_when=-1, censored=no_censoring,
                               what="kernel rank at initialisation (1/n: every unit equal)")
    return out


def _training_ratios(base: Arm, var: Arm, lrs: list, at: float) -> tuple[np.ndarray, np.ndarray]:
    """Per seed and arm, the geometric median of the end-to-end ratio at fraction `at` over the learning rates
    `lrs` at which neither arm's run of that seed diverged (arms on different seeds: at which the arm's own
    run did not; NaN: there is none)."""
    if not lrs:
        return np.full(base.n_seeds, np.nan), np.full(var.n_seeds, np.nan)
    ratios = [np.stack([e2e_ratio(a.at(x), at) for x in lrs], axis=1) for a in (base, var)]
    diverged = [np.stack([_bools(a.at(x), "diverged") for x in lrs], axis=1) for a in (base, var)]
    ok = [~(diverged[0] | diverged[1])] * 2 if base.seeds == var.seeds else [~d for d in diverged]
    with np.errstate(divide="ignore"):
        return tuple(np.array([np.exp(np.median(np.log(row[keep]))) if keep.any() else np.nan
                               for row, keep in zip(r, k)]) for r, k in zip(ratios, ok))


def _remark(question: str, comp: dict, result: dict) -> str | None:
    """What a reader needs beside an explosion or vanishing answer: an arm whose gradient goes the other way."""
    gradient = comp.get("gradient", "explosion")
    if question not in ("init", "training") or gradient == "either" or None in result["median"]:
        return None
    other = [f"{side}'s median ratio {m:.3g}" for side, m in zip(("baseline", "variant"), result["median"])
             if (m < 1 if gradient == "explosion" else m > 1)]
    kind = "vanishes" if gradient == "explosion" else "explodes"
    return f"the gradient {kind} towards the input ({'; '.join(other)})" if other else None


def _median_censor(values, censored):
    """The censoring of an arm's median seed."""
    return censored[int(np.argsort(values, kind="stable")[(len(values) - 1) // 2])] if len(values) else None


def _by_dataset(records: list[dict]) -> dict:
    """An arm's records split by the task's data_seed: each part is one configuration over the grid."""
    parts: dict = {}
    for r in records:
        parts.setdefault(r["config"].get("task", {}).get("data_seed"), []).append(r)
    return parts


def _pooled_questions(comp: dict, base: list[dict], var: list[dict]) -> tuple[dict, Arm, Arm]:
    """The questions over every dataset both arms were trained on: (dataset, seed) pairs are the replicates."""
    base_parts, var_parts = _by_dataset(base), _by_dataset(var)
    shared = [k for k in base_parts if k in var_parts] or [next(iter(base_parts))]
    pooled: dict = {}
    for stratum, key in enumerate(shared):
        b_arm, v_arm = Arm(base_parts[key]), Arm(var_parts.get(key, next(iter(var_parts.values()))))
        for name, q in _questions(comp, b_arm, v_arm).items():
            if name not in pooled:
                pooled[name] = {**q, "values": ([], []), "censored": ([], []), "strata": []}
            for side in (0, 1):
                pooled[name]["values"][side].extend(q["values"][side])
                pooled[name]["censored"][side].extend(q["censored"][side])
            pooled[name]["strata"].extend([stratum] * len(q["values"][0]))
    for q in pooled.values():
        q["values"] = tuple(np.asarray(v, bool if q.get("rate") else np.float64) for v in q["values"])
        q["censored"] = tuple(_median_censor(v, c) for v, c in zip(q["values"], q["censored"]))
        q["strata"] = np.asarray(q["strata"]) if len(shared) > 1 else None
        if q.get("empty"):
            q["what"] += f" ({int(np.isfinite(q['values'][0]).sum())} of {len(q['values'][0])} seeds)"
    if len(shared) > 1:
        for q in pooled.values():
            q["what"] += f" ({len(shared)} datasets as strata)"
    return pooled, Arm(base_parts[shared[0]]), Arm(var_parts.get(shared[0], next(iter(var_parts.values()))))


def _on_seeds(record: dict, keep: list[int]) -> dict:
    """A record cut down to the seeds at positions `keep` (its per-seed fields: everything an arm reads)."""
    cut = lambda table: {k: [v[i] for i in keep] for k, v in table.items()}  # noqa: E731
    explosion = record["explosion"]
    return {**record, "per_seed": cut(record["per_seed"]),
            "explosion": {**explosion, "per_seed": cut(explosion["per_seed"]),
                          **{k: [explosion[k][i] for i in keep] for k in ("e2e_ratio_init", "growth_init")
                             if k in explosion}}}


def _shared_seeds(base: list[dict], var: list[dict]) -> tuple[list[dict], list[dict]]:
    """Both arms on the seeds they share, when they ran different ones (a baseline run on more seeds than a
    variant is compared on the variant's): their values then pair seed by seed."""
    seeds = [rs[0]["per_seed"].get("seed") for rs in (base, var)]
    if None in seeds or seeds[0] == seeds[1] or not set(seeds[0]) & set(seeds[1]):
        return base, var
    shared = [s for s in seeds[0] if s in set(seeds[1])]
    return tuple([_on_seeds(r, [arm_seeds.index(s) for s in shared]) for r in rs]
                 for rs, arm_seeds in zip((base, var), seeds))


def _test_key(question: str, result: dict, values) -> tuple:
    """What makes two answers the same test: the question's measure and both arms' values."""
    return (question, result["what"], result["kind"], *(np.asarray(v, np.float64).tobytes() for v in values))


def verdicts(claims: list[dict], records: list[dict], min_effect: float = 1.25, alpha: float = ALPHA) -> list[dict]:
    """Every claim with its comparisons' answers: tested, corrected per claim over its distinct judged tests,
    judged, and given a stability over resamples of seeds."""
    rows, families = [], {}
    for claim in claims:
        family: dict[tuple, list[dict]] = {}  # distinct judged test -> the answers that are it
        for comp in claim["comparison"]:
            var_experiment = comp.get("variant_experiment") or comp["experiment"]
            base = [r for r in records if r["experiment"] == comp["experiment"] and matches(r["config"], comp["baseline"])]
            var = [r for r in records if r["experiment"] == var_experiment and matches(r["config"], comp["variant"])]
            judged = comp.get("questions") or claim.get("judged_on") or list(JUDGED_BY_DEFAULT)
            row = {"claim": claim["id"], **comp, "judged": list(judged), "questions": {}}
            if base and var:
                base, var = _shared_seeds(base, var)
                questions, base_arm, var_arm = _pooled_questions(comp, base, var)
                row["arms"] = {"baseline": base_arm.summary(), "variant": var_arm.summary()}
                expected = 1 if comp["expect"] == "worse" else -1
                paired = base_arm.seeds is not None and base_arm.seeds == var_arm.seeds
                for question, q in questions.items():
                    if q.get("rate"):
                        result = stats.compare_rates(*q["values"], paired=paired)
                        threshold = MIN_RATE_EFFECT
                    else:
                        result = stats.compare(*q["values"], log_scale=q["log_scale"], censored=q["censored"],
                                               paired=paired, strata=q["strata"])
                        threshold = math.log(min_effect) if q["log_scale"] else _min_difference(
                            q.get("metric"), min_effect, result, base_arm.trivial_loss)
                    if result.get("note") and result["n"][0] < 2 and q.get("empty"):
                        result["note"] = q["empty"]
                    result.update(what=q["what"], expected_sign=expected * q["worse_when"], threshold=threshold,
                                  judged=question in judged, remark=_remark(question, comp, result))
                    row["questions"][question] = result
                    if result["judged"] and result["p"] is not None and not result["identical"] \
                            and not result.get("note"):
                        family.setdefault(_test_key(question, result, q["values"]), []).append(result)
            rows.append(row)
        families[claim["id"]] = family
    _correct(families, alpha)
    for row in rows:
        for result in row["questions"].values():
            result["verdict"] = judge(result, result["expected_sign"], result["threshold"], alpha) \
                if result["judged"] else DESCRIPTIVE
            result.pop("_resample", None)
    return [_claim_verdict(claim, [r for r in rows if r["claim"] == claim["id"]]) for claim in claims]


def _correct(families: dict, alpha: float) -> None:
    """Holm's correction within each claim's family of distinct judged tests (each counted once), the
    Benjamini-Hochberg q-value over every distinct judged test of the suite beside it, and each answer's
    stability: the fraction of resamples of seeds that reach the same answer at the same Holm multiplier."""
    suite = {}
    for claim, family in families.items():
        tests = [answers[0] for answers in family.values()]
        pvalues = [t["p"] for t in tests]
        for key, t, p_adj, k in zip(family, tests, stats.holm(pvalues), stats.holm_multipliers(pvalues)):
            decided = judge({**t, "p_adjusted": p_adj}, t["expected_sign"], t["threshold"], alpha)
            again = stability(t, decided, k, alpha)
            for answer in family[key]:
                answer.update(p_adjusted=p_adj, family=len(tests), stability=again)
            suite.setdefault(key, []).extend(family[key])
    for answers, q in zip(suite.values(), stats.fdr([a[0]["p"] for a in suite.values()])):
        for answer in answers:
            answer["q_suite"] = q


def fragile(answer: dict) -> bool:
    """Whether an answer is reproduced by fewer than STABLE of the resamples of seeds."""
    return answer.get("stability") is not None and answer["stability"] < STABLE


def _claim_verdict(claim: dict, comparisons: list[dict]) -> dict:
    """The stated rule: judged answers that are not fragile decide.

    Decisive ones all agree: that answer. They disagree: "depends", naming which regime and question gave
    which. None decisive: inconclusive if any judged answer is, or if a fragile answer would have decided
    (set aside), else not supported if any answer excludes the claimed effect, else no detectable effect.
    """
    answers = [(c.get("regime") or c["experiment"], q, c["questions"][q])
               for c in comparisons for q in c["judged"] if q in c["questions"]]
    decisive = [(r, q, a["verdict"]) for r, q, a in answers if a["verdict"] in (SUPPORTED, CONTRADICTED)
                and not fragile(a)]
    set_aside = [f"{a['verdict']} on {q} ({r}), stability {a['stability']:.2f}" for r, q, a in answers
                 if a["verdict"] in (SUPPORTED, CONTRADICTED, NO_EFFECT, NOT_SUPPORTED) and fragile(a)]
    kinds = sorted({a[2] for a in decisive})
    if len(kinds) == 1:
        verdict = kinds[0]
    elif kinds:
        parts = []
        for kind in kinds:  # e.g. "supported on trainability (ReLU at He scale); contradicted on init (ReLU, ...)"
            by_question: dict[str, list] = {}
            for regime, q, v in decisive:
                if v == kind:
                    by_question.setdefault(q, []).append(regime)
            parts.append(f"{kind} on " + ", ".join(f"{q} ({'; '.join(r)})" for q, r in by_question.items()))
        verdict = "depends: " + "; ".join(parts)
    elif not answers or set_aside or any(a["verdict"] == INCONCLUSIVE for _, _, a in answers):
        verdict = INCONCLUSIVE
    elif any(a["verdict"] == NOT_SUPPORTED for _, _, a in answers):
        verdict = NOT_SUPPORTED
    else:
        verdict = NO_EFFECT
    return {**{k: v for k, v in claim.items() if k != "comparison"}, "verdict": verdict,
            "fragile": set_aside, "comparisons": comparisons}
