"""Statistical verdicts on the suite's claims, computed from results records (docs/METHODS.md, "Claims").

A claim (a `[[claim]]` table of a suite) holds comparisons; each compares a
baseline arm of an experiment with a variant arm of the same experiment (or of
`variant_experiment`, say an optimiser swept over its own learning-rate range). An *arm* is the set of
cells selected by a mitigation selector: the same configuration at every
learning rate of the grid, trained on the same seeds. Every comparison is
judged on three questions:

- `init`: explosion at initialisation, the per-seed end-to-end gradient ratio
  ||dL/dh_first|| / ||dL/dh_last||;
- `training`: the same ratio at the fraction `at` of the budget, at the stated
  learning rate `lr`, else at each arm's tuned learning rate;
- `trainability`: a per-seed summary over the learning-rate grid, `metric`
  (default the critical learning rate).

Seeds are never pooled over the grid: every test compares one value per
seed and arm. Arms trained on the same seeds are paired seed by seed (the
same data order, and the same initialisation where the architecture is the
same): the test is an exact sign-flip permutation test of the Wilcoxon
signed-rank statistic and the effect the Hodges-Lehmann estimate of the
paired differences. Otherwise the test is a permutation test of the rank-sum
(Mann-Whitney) statistic and the effect the Hodges-Lehmann shift between the
arms. Permutations are enumerated when there are at most 20,000, else drawn
at random; effects are ratios on log-scale metrics, with a bootstrap 95%
interval; p-values are
Holm-corrected over every test of the suite. A verdict is `supported` or
`contradicted` only when the corrected p < alpha and the effect clears the
suite's minimum effect; `inconclusive` when both arms are censored at the
same grid edge or the interval spans both no effect and the minimum effect;
`no detectable effect` otherwise.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

from bench import metrics
from bench.stats import compare, holm
from bench.records import read_extended

ALPHA = 0.05
EXPECT = ("worse", "better")  # what the claim says the variant does to explosion and trainability
QUESTIONS = ("init", "training", "trainability")  # the three questions every claim is judged on
SUPPORTED, CONTRADICTED, NO_EFFECT, INCONCLUSIVE = "supported", "contradicted", "no detectable effect", "inconclusive"


def matches(config: dict, selector: dict) -> bool:
    """Whether a cell config's mitigation has every key/value of the selector."""
    mitigation = config["mitigation"]
    return all(mitigation.get(k) == v for k, v in selector.items())


def _lr(record) -> float:
    return record["config"]["optimizer"]["lr"]


def _as_float(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], np.float64)


@dataclasses.dataclass
class Arm:
    """The cells of one arm (the same configuration over the learning-rate grid), sorted by learning rate."""

    records: list[dict]

    def __post_init__(self):
        self.records = sorted(self.records, key=_lr)
        self.lrs = np.array([_lr(r) for r in self.records])
        self.trivial_loss = self.records[0]["thresholds"]["trivial_loss"]
        self.seeds = self.records[0]["per_seed"].get("seed")  # the same seeds in two arms: paired values

    def per_seed(self, key: str) -> np.ndarray:
        """seeds x learning rates of a per-seed field (None -> NaN)."""
        return np.stack([_as_float(r["per_seed"][key]) for r in self.records], axis=1)

    def trained(self) -> np.ndarray:
        return np.stack([np.asarray(r["per_seed"]["trained"], bool) for r in self.records], axis=1)

    def critical_lr(self):
        """Per-seed critical learning rate and censoring ("above", "below" or None)."""
        return metrics.critical_lr(self.lrs, self.trained())

    def tuned_index(self) -> int:
        """The grid index with the lowest median validation loss over seeds (a failed seed counts as infinity)."""
        losses = np.where(self.trained(), self.per_seed("final_validation_loss"), np.inf)
        losses = np.where(np.isnan(losses), np.inf, losses)
        return int(np.argmin(np.quantile(losses, 0.5, axis=0, method="lower")))

    def at(self, lr: float | None) -> dict:
        """The record at a stated learning rate (None: at the arm's tuned learning rate)."""
        if lr is None:
            return self.records[self.tuned_index()]
        index = int(np.argmin(np.abs(np.log(self.lrs) - math.log(lr))))
        return self.records[index]

    def summary(self) -> dict:
        """Trainability over the grid: medians of the per-seed summaries and the tuned quality."""
        values, censored = self.critical_lr()
        tuned = self.records[self.tuned_index()]
        median = lambda x: float(np.quantile(x, 0.5, method="lower"))  # noqa: E731
        crit = median(values)
        edge = [c for v, c in zip(values, censored) if v == crit and c]
        return {
            "lrs": self.lrs.tolist(),
            "critical_lr": crit, "critical_lr_censored": edge[0] if edge else None,
            "lr_sensitivity": median(metrics.lr_sensitivity(self.per_seed("final_validation_loss"),
                                                             self.trivial_loss)),
            "trainable_decades": float(np.nanmedian(metrics.trainable_range_decades(self.lrs, self.trained())))
            if self.trained().any() else None,
            "failure_rate": [r["failure_rate"] for r in self.records],
            "tuned_lr": _lr(tuned),
            "tuned_heldout_loss": tuned["quality"]["final_heldout_loss"],
            "tuned_heldout_metric": tuned["quality"]["final_heldout_metric"],
        }


def _explosion(record: dict, fraction: float) -> np.ndarray:
    """Per-seed e2e gradient ratio at a snapshot fraction (NaN, a gradient that was not a number, -> inf)."""
    k = record["explosion"]["fractions"].index(fraction)
    values = np.array([read_extended(row[k]) for row in record["explosion"]["per_seed"]["e2e_ratio"]])
    return np.where(np.isnan(values), np.inf, values)


def _at_lr(key: str, failed: float) -> Callable:
    """A per-seed field of one record; seeds that did not train count as `failed`."""
    def values(record):
        raw = _as_float(record["per_seed"][key])
        trained = np.asarray(record["per_seed"]["trained"], bool)
        return np.where(trained & np.isfinite(raw), raw, failed)
    return values


def _steps(record):
    steps = _as_float(record["per_seed"]["steps_to_converge"])
    return np.where(np.isnan(steps), np.inf, steps)


def _gap(record):
    ps = record["per_seed"]
    gap = _as_float(ps["final_heldout_loss"]) - _as_float(ps["final_train_loss"])
    return np.where(np.asarray(ps["trained"], bool), gap, np.nan)


def _recorded(record, key):
    """A per-seed model diagnostic of every seed, trained or not (None, a non-finite value, -> inf)."""
    values = _as_float(record["per_seed"][key])
    return np.where(np.isnan(values), np.inf, values)


@dataclasses.dataclass(frozen=True)
class Metric:
    """A trainability metric: per-seed values of an arm at a learning rate (or over the grid)."""

    values: Callable[[Arm, float | None], tuple[np.ndarray, list]]  # -> (values, censoring per seed)
    worse_when: int  # +1: a higher value is worse; -1: lower is worse
    log_scale: bool  # effect as a ratio (True) or a difference, relative to the baseline median (False)
    description: str


def _critical(arm: Arm, lr) -> tuple[np.ndarray, list]:
    del lr  # a summary over the whole grid
    values, censored = arm.critical_lr()
    return np.array(values), censored


def _record_metric(fn):
    return lambda arm, lr: (fn(arm.at(lr)), [None] * len(arm.records[0]["per_seed"]["trained"]))


METRICS = {
    "critical_lr": Metric(_critical, -1, True,
                          "per seed, the largest grid learning rate at and below which it trained"),
    "lr_sensitivity": Metric(
        lambda arm, lr: (metrics.lr_sensitivity(arm.per_seed("final_validation_loss"), arm.trivial_loss)
                         / arm.trivial_loss, [None] * len(arm.trained())), +1, True,
        "per seed, Wortsman et al.'s learning-rate sensitivity of the validation loss / trivial loss"),
    "tuned_heldout_loss": Metric(_record_metric(_at_lr("final_heldout_loss", math.inf)), +1, True,
                                 "held-out loss at the arm's tuned (or the stated) learning rate; failed = inf"),
    "steps_to_converge": Metric(_record_metric(_steps), +1, True,
                                "steps to the target at the tuned (or stated) learning rate; never = inf"),
    "generalization_gap": Metric(_record_metric(_gap), +1, False,
                                 "held-out minus training loss at the tuned (or stated) learning rate, trained seeds"),
    "max_attn_logit": Metric(_record_metric(lambda r: _recorded(r, "max_attn_logit")), +1, True,
                             "largest attention logit during training at the tuned (or stated) learning rate; "
                             "overflow = inf"),
    "max_abs_log_z": Metric(_record_metric(lambda r: _recorded(r, "max_abs_log_z")), +1, True,
                            "largest mean |log Z| of the output softmax during training at the tuned (or stated) "
                            "learning rate; overflow = inf"),
}


def _linear_scale(result: dict, trivial_loss: float) -> float:
    """What a difference is relative to: the baseline's median (at least 1% of the trivial loss)."""
    base_median = result["median"][0]
    return max(abs(base_median) if base_median is not None and math.isfinite(base_median) else 0.0,
               0.01 * trivial_loss)


def judge(result: dict, expected_sign: int, threshold: float, alpha: float = ALPHA) -> str:
    """The verdict of one tested question, given its Holm-corrected p-value."""
    if result.get("p") is None or result.get("note"):
        return INCONCLUSIVE
    effect, (low, high) = result["effect_raw"], result["ci_raw"]
    if result["p_adjusted"] < alpha and abs(effect) >= threshold and effect != 0:
        return SUPPORTED if np.sign(effect) == expected_sign else CONTRADICTED
    if -threshold < low and high < threshold:
        return NO_EFFECT
    return INCONCLUSIVE


def _questions(comp: dict, base: Arm, var: Arm) -> dict:
    """The three questions' per-seed data for one comparison on one dataset: values, scale, direction,
    per-seed censoring, what was measured."""
    metric = METRICS[comp.get("metric", "critical_lr")]
    lr, at = comp.get("lr"), comp.get("at", 0.5)
    out = {}
    init_lr = base.lrs[0] if lr is None else lr
    n_b, n_v = len(base.records[0]["per_seed"]["trained"]), len(var.records[0]["per_seed"]["trained"])
    no_censoring = ([None] * n_b, [None] * n_v)
    out["init"] = dict(values=(_explosion(base.at(init_lr), 0.0), _explosion(var.at(init_lr), 0.0)),
                       log_scale=True, worse_when=+1, censored=no_censoring,
                       what="end-to-end gradient ratio at initialisation")
    b_rec, v_rec = base.at(lr), var.at(lr)
    where = f"lr {lr:g}" if lr is not None else f"tuned lr {_lr(b_rec):g} / {_lr(v_rec):g}"
    out["training"] = dict(values=(_explosion(b_rec, at), _explosion(v_rec, at)), log_scale=True, worse_when=+1,
                           censored=no_censoring, what=f"end-to-end gradient ratio at {at:.0%} of training, {where}")
    (b_vals, b_cens), (v_vals, v_cens) = metric.values(base, lr), metric.values(var, lr)
    out["trainability"] = dict(values=(b_vals, v_vals), log_scale=metric.log_scale, worse_when=metric.worse_when,
                               censored=(list(b_cens), list(v_cens)), what=comp.get("metric", "critical_lr"))
    return out


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
    for key in shared:
        b_arm, v_arm = Arm(base_parts[key]), Arm(var_parts.get(key, next(iter(var_parts.values()))))
        for name, q in _questions(comp, b_arm, v_arm).items():
            if name not in pooled:
                pooled[name] = {**q, "values": ([], []), "censored": ([], [])}
            for side in (0, 1):
                pooled[name]["values"][side].extend(q["values"][side])
                pooled[name]["censored"][side].extend(q["censored"][side])
    for q in pooled.values():
        q["values"] = tuple(np.asarray(v, np.float64) for v in q["values"])
        q["censored"] = tuple(_median_censor(v, c) for v, c in zip(q["values"], q["censored"]))
    if len(shared) > 1:
        for q in pooled.values():
            q["what"] += f" ({len(shared)} datasets)"
    return pooled, Arm(base_parts[shared[0]]), Arm(var_parts.get(shared[0], next(iter(var_parts.values()))))


def verdicts(claims: list[dict], records: list[dict], min_effect: float = 1.25, alpha: float = ALPHA) -> list[dict]:
    """Every claim with its comparisons tested on the three questions, Holm-corrected and judged."""
    rows, tests = [], []
    for claim in claims:
        for comp in claim["comparison"]:
            var_experiment = comp.get("variant_experiment") or comp["experiment"]
            base = [r for r in records if r["experiment"] == comp["experiment"] and matches(r["config"], comp["baseline"])]
            var = [r for r in records if r["experiment"] == var_experiment and matches(r["config"], comp["variant"])]
            row = {"claim": claim["id"], **comp, "questions": {}}
            if base and var:
                questions, base_arm, var_arm = _pooled_questions(comp, base, var)
                row["arms"] = {"baseline": base_arm.summary(), "variant": var_arm.summary()}
                expected = 1 if comp["expect"] == "worse" else -1
                for question, q in questions.items():
                    result = compare(*q["values"], log_scale=q["log_scale"], censored=q["censored"],
                                     paired=base_arm.seeds is not None and base_arm.seeds == var_arm.seeds)
                    result.update(what=q["what"], expected_sign=expected * q["worse_when"],
                                  threshold=math.log(min_effect) if q["log_scale"]
                                  else (min_effect - 1) * _linear_scale(result, base_arm.trivial_loss))
                    row["questions"][question] = result
                    if result["p"] is not None:
                        tests.append(result)
            rows.append(row)
    for result, p_adj in zip(tests, holm([t["p"] for t in tests])):
        result["p_adjusted"] = p_adj
    for row in rows:
        for result in row["questions"].values():
            result["verdict"] = judge(result, result["expected_sign"], result["threshold"], alpha)
    return [_claim_verdict(claim, [r for r in rows if r["claim"] == claim["id"]]) for claim in claims]


def _claim_verdict(claim: dict, comparisons: list[dict]) -> dict:
    """The stated rule: decisive answers (supported / contradicted) on the judged questions decide.

    All decisive answers agree: that answer. They disagree: "depends", naming which regime and
    question gave which. None decisive: inconclusive if any answer is, else no detectable effect.
    """
    judged_on = claim.get("judged_on", list(QUESTIONS))
    answers = [(c.get("regime") or c["experiment"], q, c["questions"][q]["verdict"])
               for c in comparisons for q in judged_on if q in c["questions"]]
    decisive = [a for a in answers if a[2] in (SUPPORTED, CONTRADICTED)]
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
    elif not answers:
        verdict = INCONCLUSIVE
    else:
        verdict = INCONCLUSIVE if any(a[2] == INCONCLUSIVE for a in answers) else NO_EFFECT
    return {**{k: v for k, v in claim.items() if k != "comparison"}, "judged_on": judged_on, "verdict": verdict,
            "comparisons": comparisons}
