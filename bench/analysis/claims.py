"""Verdicts on a suite's pre-registered claims, computed from results records (docs/METHODS.md, "Claims").

Each claim (a `[[claim]]` table, validated by bench/spec/claim_schema.py) asks
one primary question: a baseline arm against a variant arm on one measure of
MEASURES, where the claim expects the variant to be worse or better. An *arm*
is one configuration over its learning-rate grid, trained on the same seeds as
the other arm (values pair seed by seed), possibly over several datasets
(strata) and replicate blocks.

The answer is one word of a small vocabulary, from the effect's interval, an
exact test and a margin (`word`): yes, no, negligible, opposite, unsettled;
or degenerate, when the comparison cannot be made (an arm that fails on every
seed at every learning rate, both arms censored at one end of the grid). The
primary question is answered on the pooled seeds and again on each replicate
block; the verdict is settled only when every block gives the pooled word.
Secondary questions are answered the same way and decide nothing.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

from gradbench.analysis import stats
from gradbench.records import metrics
from gradbench.records.cell import read_extended
from gradbench.spec.claim_schema import matches

ALPHA = 0.05
MIN_RATE_EFFECT = 0.25  # the margin of a difference of shares (reach, divergence)
LOSS_MARGIN = 0.1  # a difference of losses: (min_effect - 1) x LOSS_MARGIN x the trivial loss
YES, NO, NEGLIGIBLE, OPPOSITE, UNSETTLED, DEGENERATE = "yes", "no", "negligible", "opposite", "unsettled", "degenerate"
WORDS = (YES, NO, NEGLIGIBLE, OPPOSITE, UNSETTLED, DEGENERATE)
LEARNING = ("reach", "reach_range", "steps")  # measures of learning: reaching the target


def run_lr(record) -> float:
    """The learning rate a record's runs used: its plan's (a mitigation may set its own), else the grid's."""
    return record.get("plan", {}).get("optimizer", {}).get("lr", record["config"]["optimizer"]["lr"])


def _as_float(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], np.float64)


def _bools(record, key) -> np.ndarray:
    return np.asarray(record["per_seed"][key], bool)


def reached(record) -> np.ndarray:
    """Per seed, whether the run reached the task's target (its smoothed training loss) and did not diverge."""
    return (_as_float(record["per_seed"]["steps_to_converge"]) >= 0) & ~_bools(record, "diverged")


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

    def reach(self) -> np.ndarray:
        """seeds x learning rates: reached the target."""
        return np.stack([reached(r) for r in self.records], axis=1)

    def tuned_index(self) -> int:
        """The grid index with the lowest median validation loss over seeds (a failed seed counts as infinity)."""
        losses = np.where(self.flags("trained"), self.per_seed("final_validation_loss"), np.inf)
        losses = np.where(np.isnan(losses), np.inf, losses)
        return int(np.argmin(np.quantile(losses, 0.5, axis=0, method="lower")))

    def never_trains(self) -> bool:
        """Whether every seed failed (diverged or collapsed) at every learning rate."""
        return not self.flags("trained").any()

    def at(self, lr: float) -> dict:
        """The record at a stated learning rate of the grid."""
        index = [i for i, x in enumerate(self.lrs) if math.isclose(x, lr, rel_tol=1e-9)]
        if not index:
            raise ValueError(f"learning rate {lr:g} is not on the arm's grid {self.lrs.tolist()}")
        return self.records[index[0]]

    def read_at(self, lr: float | None) -> dict:
        """The record at the stated learning rate, else at the arm's tuned one."""
        return self.at(lr) if lr is not None else self.records[self.tuned_index()]

    def reach_range(self) -> float:
        """The width in decades of the learning rates at which at least half the seeds reach the target (each
        grid point one grid step; 0: none)."""
        half = self.reach().mean(axis=0) >= 0.5
        return float(metrics.trained_width_decades(self.lrs, half[None, :])[0])

    def summary(self) -> dict:
        """Trainability over the grid: outcomes per learning rate, the tuned learning rate and what it reached."""
        median = lambda x: float(np.quantile(x, 0.5, method="lower"))  # noqa: E731

        def censored_median(values, censored):
            value = median(values)
            edge = [c for v, c in zip(values, censored) if v == value and c]
            return value, edge[0] if edge else None

        tuned = self.tuned_index()
        at_tuned = self.records[tuned]

        def present_median(key):  # over the seeds that have a value (a diverged seed has none)
            column = _as_float(at_tuned["per_seed"][key])
            return float(np.nanmedian(column)) if (~np.isnan(column)).any() else None

        steps = _as_float(at_tuned["per_seed"]["steps_to_converge"])
        crit, crit_edge = censored_median(*metrics.critical_lr(self.lrs, self.flags("trained")))
        stable, stable_edge = censored_median(*metrics.stable_lr(self.lrs, self.flags("diverged")))
        return {
            "lrs": self.lrs.tolist(),
            "run_steps_per_s": _median_of([r["throughput"].get("run_steps_per_s") for r in self.records]),
            "critical_lr": crit, "critical_lr_censored": crit_edge,
            "stable_lr": stable, "stable_lr_censored": stable_edge,
            "trained_decades": median(metrics.trained_width_decades(self.lrs, self.flags("trained"))),
            "reach_decades": self.reach_range(),
            "diverged": [int(r["per_seed"]["diverged"].count(True)) for r in self.records],
            "collapsed": [int(r["per_seed"]["collapsed"].count(True)) for r in self.records],
            "reached": self.reach().sum(axis=0).tolist(),
            "seeds": self.n_seeds,
            "e2e_init": _nan_median(e2e_ratio(self.records[0], 0.0)),
            "tuned_lr": run_lr(at_tuned),
            "tuned_reached": int(reached(at_tuned).sum()),
            "tuned_diverged": int(_bools(at_tuned, "diverged").sum()),
            "tuned_steps": float(np.quantile(np.where(np.isnan(steps), np.inf, steps), 0.5, method="lower")),
            "tuned_heldout_loss": present_median("final_heldout_loss"),
            "tuned_heldout_metric": present_median("final_heldout_metric"),
            "lr_sensitivity": median(metrics.lr_sensitivity(self.per_seed("final_validation_loss"),
                                                             self.trivial_loss)),
        }


def _nan_median(values: np.ndarray) -> float | None:
    """The median of the values that are not NaN (None: there are none)."""
    values = values[~np.isnan(values)]
    return float(np.median(values)) if values.size else None


def _median_of(values) -> float | None:
    values = [v for v in values if v]
    return float(sorted(values)[(len(values) - 1) // 2]) if values else None


def e2e_ratio(record: dict, fraction: float) -> np.ndarray:
    """Per-seed end-to-end gradient ratio at a snapshot fraction.

    A ratio that is not a number is read from the layers' gradients: no gradient at the input side (0/0
    included: every gradient zero) is total vanishing, ratio 0; a growth per layer that is not finite either is
    explosion, ratio infinity; a finite one (a norm that could not be computed, e.g. in float16, beside layers
    that do not grow) says nothing: NaN (no value). At initialisation, an infinite ratio whose output-side
    gradient is exactly zero is underflow, not explosion: NaN.
    """
    k = record["explosion"]["fractions"].index(fraction)
    per_seed = record["explosion"]["per_seed"]
    values = np.array([read_extended(row[k]) for row in per_seed["e2e_ratio"]])
    growth = np.array([read_extended(row[k]) for row in per_seed["growth_per_layer"]])
    values = np.where(np.isnan(values), np.where(growth == 0.0, 0.0, np.where(np.isfinite(growth), np.nan, np.inf)),
                      values)
    if k == 0 and "log10_preact_grad_init" in per_seed:
        underflow = np.array([bool(row) and read_extended(row[-1]) == -math.inf  # the output side's is zero
                              for row in per_seed["log10_preact_grad_init"]])
        values = np.where(np.isposinf(values) & underflow, np.nan, values)
    return values


# Measures -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Measure:
    """What a question compares: per-seed values of each arm, and how to read them.

    `values(base, var, q)` returns (baseline values, variant values, censoring of each arm's median seed or
    None, what was measured). `rate`: the values are per-seed events (a share is compared); else numbers,
    compared as ratios (`log_scale`) or differences. `worse_when`: +1 a larger value is worse, -1 a smaller.
    `training`: the measure needs arms that train (an arm that fails everywhere makes it degenerate).
    `grid`: a per-seed value on the learning-rate grid (its effect is a whole number of grid steps).
    """

    values: Callable
    worse_when: int
    log_scale: bool = True
    rate: bool = False
    training: bool = True
    grid: bool = False
    margin: Callable[[float, float], float] | None = None  # (min_effect, trivial loss) -> margin of a difference


def _gradient(base: Arm, var: Arm, q: dict, distance: bool = False):
    """The end-to-end gradient ratio at initialisation (each arm at its lowest learning rate, or the stated
    one) or, at a later fraction, per seed the geometric median over the learning rates both arms ran where
    neither run of the seed diverged."""
    at, lr = q["at"], q["lr"]
    if at == 0.0:
        ratios = [e2e_ratio(a.at(a.lrs[0] if lr is None else lr), 0.0) for a in (base, var)]
        where = "at initialisation"
    else:
        shared = [lr] if lr is not None else [x for x in base.lrs if np.isclose(var.lrs, x, rtol=1e-9).any()]
        ratios = _training_ratios(base, var, shared, at)
        where = f"at {at:.0%} of training (median over the {len(shared)} learning rates both arms ran, not diverged)"
    if distance:  # distance from norm-preserving, either way: max(r, 1/r)
        with np.errstate(divide="ignore"):
            return (*[np.exp(np.abs(np.log(r))) for r in ratios], (None, None),
                    f"gradient ratio's distance from 1 (either way) {where}", ratios)
    return (*ratios, (None, None), f"gradient ratio (input / output side) {where}", ratios)


def _training_ratios(base: Arm, var: Arm, lrs: list, at: float):
    if not lrs:
        return np.full(base.n_seeds, np.nan), np.full(var.n_seeds, np.nan)
    ratios = [np.stack([e2e_ratio(a.at(x), at) for x in lrs], axis=1) for a in (base, var)]
    diverged = [np.stack([_bools(a.at(x), "diverged") for x in lrs], axis=1) for a in (base, var)]
    ok = [~(diverged[0] | diverged[1])] * 2 if base.seeds == var.seeds else [~d for d in diverged]
    with np.errstate(divide="ignore"):
        return tuple(np.array([np.exp(np.median(np.log(row[keep]))) if keep.any() else np.nan
                               for row, keep in zip(r, k)]) for r, k in zip(ratios, ok))


def _at(fn, what: str):
    """A per-seed value of the record at the stated learning rate, else at each arm's own tuned one."""
    def values(base: Arm, var: Arm, q: dict):
        where = f"at lr {q['lr']:g}" if q["lr"] is not None else \
            "at each arm's tuned learning rate" if len(base.lrs) > 1 or len(var.lrs) > 1 else ""
        return fn(base.read_at(q["lr"])), fn(var.read_at(q["lr"])), (None, None), f"{what} {where}".strip(), None
    return values


def _grid(fn, what: str):
    """A per-seed value over the learning-rate grid, with its censoring at the grid's ends."""
    def values(base: Arm, var: Arm, q: dict):
        (b, bc), (v, vc) = fn(base), fn(var)
        b, v = np.asarray(b, np.float64), np.asarray(v, np.float64)
        return b, v, (_median_censor(b, bc), _median_censor(v, vc)), what, None
    return values


def _reach_censored(arm: Arm) -> list:
    """Per seed, "above" where its width of learning rates reaching the target is a lower bound: it reached the
    target at an end of the arm's grid, so the range may go on beyond it."""
    reach = arm.reach()
    edge = reach[:, 0] | reach[:, -1] if len(arm.lrs) > 1 else np.zeros(arm.n_seeds, bool)
    return ["above" if e else None for e in edge]


def _steps(record):
    steps = _as_float(record["per_seed"]["steps_to_converge"])
    return np.where(np.isnan(steps) | _bools(record, "diverged"), np.inf, steps)


def _heldout(record):
    """Held-out loss; a diverged seed has none that counts: infinity (never a finite stand-in)."""
    loss = _as_float(record["per_seed"]["final_heldout_loss"])
    return np.where(_bools(record, "diverged") | ~np.isfinite(loss), np.inf, loss)


def _gap(record):
    """Held-out minus training loss of the seeds that reached the target: at the same training loss (a seed that
    stopped short of it trained less far, which is no measure of overfitting; it is left out, never stood in)."""
    ps = record["per_seed"]
    gap = _as_float(ps["final_heldout_loss"]) - _as_float(ps["final_train_loss"])
    return np.where(reached(record), gap, np.nan)


def _recorded(key):
    def fn(record):
        values = _as_float(record["per_seed"][key])
        return np.where(np.isnan(values), np.inf, values)
    return fn


MEASURES = {
    "gradient": Measure(_gradient, +1, training=False),
    "gradient_distance": Measure(lambda b, v, q: _gradient(b, v, q, distance=True), +1, training=False),
    "reach": Measure(_at(reached, "seeds reaching the target"), -1, rate=True, log_scale=False),
    "reach_range": Measure(_grid(lambda a: (metrics.trained_width_decades(a.lrs, a.reach()), _reach_censored(a)),
                                 "width in decades of the learning rates at which the seed reached the target"), -1,
                           log_scale=False, margin=None),
    "divergence": Measure(_at(lambda r: _bools(r, "diverged"), "diverged"), +1, rate=True, log_scale=False,
                          training=False),
    "steps": Measure(_at(_steps, "steps to the target (never: infinity)"), +1),
    "heldout_loss": Measure(_at(_heldout, "held-out loss (diverged: infinity)"), +1, training=False),
    "overfitting_gap": Measure(_at(_gap, "held-out minus training loss, seeds that reached the target"), +1,
                               log_scale=False,
                               margin=lambda min_effect, trivial: (min_effect - 1) * LOSS_MARGIN * trivial),
    "critical_lr": Measure(_grid(lambda a: metrics.critical_lr(a.lrs, a.flags("trained")),
                                 "largest grid learning rate at and below which the seed trained"), -1,
                           training=False, grid=True),
    "stable_lr": Measure(_grid(lambda a: metrics.stable_lr(a.lrs, a.flags("diverged")),
                               "largest grid learning rate below the seed's first divergence"), -1,
                         training=False, grid=True),
    "lr_sensitivity": Measure(_grid(lambda a: (metrics.lr_sensitivity(a.per_seed("final_validation_loss"),
                                                                      a.trivial_loss) / a.trivial_loss,
                                               [None] * a.n_seeds),
                                    "learning-rate sensitivity of the validation loss / trivial loss"), +1,
                              training=False),
    "max_attn_logit": Measure(_at(_recorded("max_attn_logit"), "largest attention logit in training"), +1,
                              training=False),
    "max_abs_log_z": Measure(_at(_recorded("max_abs_log_z"), "largest batch-mean |log Z| of the output softmax"),
                             +1, training=False),
    "grad_zero_fraction": Measure(_at(_recorded("grad_zero_fraction"), "largest share of exactly-zero gradient "
                                      "entries in a step"), +1, training=False),
}


def _median_censor(values, censored):
    """The censoring of an arm's median seed ("above" / "below" the grid, or None)."""
    return censored[int(np.argsort(values, kind="stable")[(len(values) - 1) // 2])] if len(values) else None


# The rule ---------------------------------------------------------------------------------------------------


def word(effect: float, low: float, high: float, p: float, margin: float, alpha: float = ALPHA) -> str:
    """The answer of an effect in the claimed direction (positive: as the claim says), its 95% interval and the
    p of its exact test, against the margin (the smallest effect that matters).

    yes: detected (p < alpha), as claimed, at least the margin; opposite: detected, the other way, at least the
    margin; negligible: the whole interval inside (-margin, margin), detected or not; no: the claimed effect of
    the margin's size excluded (the interval ends below it) but neither of those; else unsettled (a detected
    effect below the margin whose interval reaches past it among them). A value that differs from ±margin by
    rounding alone is the margin (stats.ROUNDING): a range of whole grid steps one step wider is at the margin.
    """
    effect, low, high = (next((m for m in (margin, -margin) if math.isclose(x, m, rel_tol=stats.ROUNDING)), x)
                         for x in (effect, low, high))
    if p < alpha and effect >= margin:
        return YES
    if p < alpha and effect <= -margin:
        return OPPOSITE
    if -margin < low and high < margin:
        return NEGLIGIBLE
    if high < margin:
        return NO
    return UNSETTLED


def _bound_ends(result: dict, sign: int) -> tuple[float, float]:
    """The interval in the claimed direction, opened where infinite values made the effect a bound."""
    low, high = sorted((sign * result["ci_raw"][0], sign * result["ci_raw"][1]))
    bound = result.get("bound", "")
    up, down = bound in ("≥", "~"), bound in ("≤", "~")
    if (up and sign > 0) or (down and sign < 0):
        high = math.inf
    if (down and sign > 0) or (up and sign < 0):
        low = -math.inf
    return low, high


def answer(base: list[dict], var: list[dict], q: dict, min_effect: float) -> dict:
    """One question on the given records of both arms: values, test, effect, interval, word."""
    base, var = _shared_seeds(base, var)
    measure = MEASURES[q["measure"]]
    values, strata, arms = _pooled(measure, q, base, var)
    b_arm, v_arm = arms
    sign = (1 if q["expect"] == "worse" else -1) * measure.worse_when
    out = {"measure": q["measure"], "expected_sign": sign, "n": [len(values[0]), len(values[1])]}
    never = [name for name, a in (("baseline", b_arm), ("variant", v_arm)) if a.never_trains()]
    if measure.training and never:
        return {**out, "word": DEGENERATE, "what": values[3],
                "reason": " and ".join(never) + (" never train" if len(never) == 2 else " never trains")
                + " (every seed fails at every learning rate)"}
    if q["measure"] in LEARNING and not (b_arm.reach().any() or v_arm.reach().any()):
        return {**out, "word": DEGENERATE, "what": values[3],
                "reason": "neither arm reaches the target, on any seed at any learning rate"}
    paired = b_arm.seeds is not None and b_arm.seeds == v_arm.seeds
    if measure.rate:
        result = stats.compare_rates(values[0], values[1], paired=paired)
        margin = MIN_RATE_EFFECT
    else:
        result = stats.compare(values[0], values[1], log_scale=measure.log_scale, paired=paired, strata=strata)
        if result["p"] is None:
            return {**out, **_public(result), "word": DEGENERATE, "what": values[3],
                    "reason": "fewer than 2 seeds with a value in an arm"}
        step = _grid_step(b_arm.lrs)
        margin = (max(math.log(min_effect), math.log(step)) if measure.grid else math.log(min_effect)) \
            if measure.log_scale else measure.margin(min_effect, b_arm.trivial_loss) if measure.margin \
            else math.log10(step)
    result = {**_public(result), "what": values[3], "margin": margin, "expected_sign": sign,
              "unit": {"reach_range": " decades", "overfitting_gap": " nats"}.get(q["measure"], "")}
    if values[4] is not None:  # the raw gradient ratios behind a distance
        result["ratio_median"] = [float(np.nanmedian(r)) if np.isfinite(r).any() or np.isinf(r).any() else None
                                  for r in values[4]]
    censored = values[2]
    if censored[0] and censored[0] == censored[1]:
        return {**out, **result, "word": DEGENERATE,
                "reason": f"both arms' median seeds are censored {censored[0]} the grid"}
    if any(censored):
        result["bound"] = {("above", None): "≤", (None, "below"): "≤", (None, "above"): "≥",
                           ("below", None): "≥"}.get(tuple(censored), "~")
    if measure.grid:
        result["grid_step"] = _grid_step(b_arm.lrs)
    if not measure.rate and q["measure"] == "steps" and any(not np.isfinite(np.quantile(v, 0.5, method="lower"))
                                                              for v in values[:2]):
        return {**out, **result, "word": DEGENERATE,
                "reason": "fewer than half the seeds of " + " and ".join(
                    n for n, v in zip(("the baseline", "the variant"), values[:2])
                    if not np.isfinite(np.quantile(v, 0.5, method="lower"))) + " reach the target"}
    low, high = _bound_ends(result, sign)
    effect = sign * result["effect_raw"]
    if result.get("identical"):
        result["word"] = NEGLIGIBLE
    else:
        result["word"] = word(effect, low, high, result["p"], margin)
        if result["word"] == YES and low == -math.inf and not (high == math.inf):
            result["word"] = UNSETTLED  # a bound towards no effect cannot show the claimed one
    return {**out, **result}


def _grid_step(lrs) -> float:
    return float(np.exp(np.mean(np.diff(np.log(lrs))))) if len(lrs) > 1 else 1.0


def _public(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.startswith("_")}


def _pooled(measure: Measure, q: dict, base: list[dict], var: list[dict]):
    """Per-seed values over every dataset both arms were trained on ((dataset, seed) pairs are the replicates,
    strata for the test), with the arms of the first dataset for their outcomes."""
    base_parts, var_parts = _by_dataset(base), _by_dataset(var)
    shared = [k for k in base_parts if k in var_parts] or [next(iter(base_parts))]
    pooled_b, pooled_v, censor, strata, ratios = [], [], [], [], ([], [])
    arms = None
    for stratum, key in enumerate(shared):
        b_arm, v_arm = Arm(base_parts[key]), Arm(var_parts.get(key, next(iter(var_parts.values()))))
        arms = arms or (b_arm, v_arm)
        b, v, c, what, raw = measure.values(b_arm, v_arm, q)
        pooled_b.append(b)
        pooled_v.append(v)
        censor.append(c)
        strata += [stratum] * len(b)
        if raw is not None:
            ratios[0].append(raw[0])
            ratios[1].append(raw[1])
    dtype = bool if measure.rate else np.float64
    values = (np.concatenate(pooled_b).astype(dtype), np.concatenate(pooled_v).astype(dtype), censor[0],
              what + (f" ({len(shared)} datasets as strata)" if len(shared) > 1 else ""),
              tuple(np.concatenate(r) for r in ratios) if ratios[0] else None)
    return values, (np.asarray(strata) if len(shared) > 1 else None), arms


def _by_dataset(records: list[dict]) -> dict:
    """An arm's records split by the task's data_seed, each part's replicate blocks merged into one record per
    learning rate (their seeds side by side)."""
    parts: dict = {}
    for r in records:
        parts.setdefault(r["config"].get("task", {}).get("data_seed"), []).append(r)
    return {k: _merge_blocks(v) for k, v in parts.items()}


def _merge_blocks(records: list[dict]) -> list[dict]:
    """One record per learning rate: the records of several replicate blocks with their per-seed fields
    concatenated in block order."""
    by_lr: dict = {}
    for r in sorted(records, key=lambda r: r["config"].get("replicate", 0)):
        by_lr.setdefault(run_lr(r), []).append(r)
    merged = []
    for group in by_lr.values():
        if len(group) == 1:
            merged.append(group[0])
            continue
        join = lambda tables: {k: [x for t in tables for x in t[k]] for k in tables[0]}  # noqa: E731
        explosion = {**group[0]["explosion"], "per_seed": join([r["explosion"]["per_seed"] for r in group])}
        merged.append({**group[0], "per_seed": join([r["per_seed"] for r in group]), "explosion": explosion})
    return merged


def _on_seeds(record: dict, keep: list[int]) -> dict:
    """A record cut down to the seeds at positions `keep` (its per-seed fields: everything an arm reads)."""
    cut = lambda table: {k: [v[i] for i in keep] for k, v in table.items()}  # noqa: E731
    explosion = record["explosion"]
    return {**record, "per_seed": cut(record["per_seed"]),
            "explosion": {**explosion, "per_seed": cut(explosion["per_seed"])}}


def _shared_seeds(base: list[dict], var: list[dict]) -> tuple[list[dict], list[dict]]:
    """Both arms on the seeds they share, per replicate block, when they ran different ones: their values then
    pair seed by seed."""
    out_b, out_v = [], []
    for block in sorted({_block(r) for r in base} & {_block(r) for r in var}) or [None]:
        b = [r for r in base if block is None or _block(r) == block]
        v = [r for r in var if block is None or _block(r) == block]
        seeds = [rs[0]["per_seed"].get("seed") for rs in (b, v)]
        if None in seeds or seeds[0] == seeds[1] or not set(seeds[0]) & set(seeds[1]):
            out_b += b
            out_v += v
            continue
        shared = [s for s in seeds[0] if s in set(seeds[1])]
        out_b += [_on_seeds(r, [seeds[0].index(s) for s in shared]) for r in b]
        out_v += [_on_seeds(r, [seeds[1].index(s) for s in shared]) for r in v]
    return out_b, out_v


def _block(record: dict) -> int:
    return record["config"].get("replicate", 0)


def _arm_records(records: list[dict], experiment: str, selector: dict) -> list[dict]:
    return [r for r in records if r["experiment"] == experiment and matches(r["config"], selector)]


def ask(q: dict, records: list[dict], min_effect: float, blocks: bool = False) -> dict:
    """A question's answer on the pooled seeds, with the arms' summaries and, with `blocks`, its answer on
    each replicate block."""
    base = _arm_records(records, q["experiment"], q["baseline"])
    var = _arm_records(records, q["variant_experiment"] or q["experiment"], q["variant"])
    if not base or not var:
        missing = " and ".join(side for side, rs in (("baseline", base), ("variant", var)) if not rs)
        return {**q, "word": DEGENERATE, "reason": f"no records of the {missing} arm", "blocks": []}
    out = {**q, **answer(base, var, q, min_effect)}
    out["arms"] = {"baseline": Arm(_merge_blocks(_first_dataset(base))).summary(),
                   "variant": Arm(_merge_blocks(_first_dataset(var))).summary()}
    ids = sorted({_block(r) for r in base} & {_block(r) for r in var})
    out["blocks"] = [answer([r for r in base if _block(r) == k], [r for r in var if _block(r) == k], q, min_effect)
                     for k in ids] if blocks and len(ids) > 1 else []
    return out


def _first_dataset(records: list[dict]) -> list[dict]:
    first = records[0]["config"].get("task", {}).get("data_seed")
    return [r for r in records if r["config"].get("task", {}).get("data_seed") == first]


def verdicts(claims: list[dict], records: list[dict], min_effect: float = 1.25) -> list[dict]:
    """Every claim with its primary answer (pooled and per replicate block), its verdict and its secondary
    answers; the suite's false-discovery q-value over the primary answers beside them."""
    judged = []
    for claim in claims:
        primary = ask(claim["primary"], records, min_effect, blocks=True)
        secondary = [ask(q, records, min_effect) for q in claim["secondary"]]
        judged.append({**claim, "primary": primary, "secondary": secondary, **settle(primary)})
    tested = [c["primary"] for c in judged if c["primary"].get("p") is not None]
    for answer_, q in zip(tested, stats.fdr([a["p"] for a in tested])):
        answer_["q_suite"] = q
    return judged


def settle(primary: dict) -> dict:
    """The verdict: the pooled word, settled when every replicate block gives it too; else unsettled, leaning
    to the pooled word. Degenerate comparisons are said as such."""
    pooled = primary["word"]
    blocks = [b["word"] for b in primary.get("blocks", [])]
    if pooled == DEGENERATE:
        return {"verdict": DEGENERATE, "settled": False, "leans": None}
    if pooled == UNSETTLED:
        return {"verdict": UNSETTLED, "settled": False, "leans": None}
    agree = len(blocks) > 1 and all(b == pooled for b in blocks)
    return {"verdict": pooled if agree else UNSETTLED, "settled": agree, "leans": None if agree else pooled}
