"""Statistical verdicts on the suite's claims, computed from results records.

A claim (a `[[claim]]` table of a suite) holds comparisons; each compares a
baseline and a variant of one experiment (cells selected by their mitigation)
on one metric, pooled over the experiment's other grid axes (the
learning-rate grid). Tests: Fisher's exact test for divergence rates,
Mann-Whitney U for per-seed values; p-values are Holm-corrected over every
comparison of the suite. A comparison's verdict: `supported` when the
corrected p < alpha and the effect goes the way the claim says,
`contradicted` when it goes the other way, `no detectable effect` otherwise.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

ALPHA = 0.05
EXPECT = ("worse", "better")  # what the claim says the variant does to explosion and trainability
QUESTIONS = ("init", "training", "trainability")  # the three questions every claim is judged on
SUPPORTED, CONTRADICTED, NO_EFFECT = "supported", "contradicted", "no detectable effect"


def _pooled(values_fn):
    """A metric whose per-seed values are pooled over every selected cell (the learning-rate grid)."""
    return lambda records: [v for r in records for v in values_fn(r)]


def _per_seed(key, diverged_value=None):
    """Per-seed values of `key`; a diverged seed counts as `diverged_value` (None: left out)."""
    def values(record):
        out = []
        for v, d in zip(record["per_seed"][key], record["per_seed"]["diverged"]):
            if d:
                if diverged_value is not None:
                    out.append(diverged_value)
            elif v is not None:
                out.append(v)
            elif key == "steps_to_converge":
                out.append(math.inf)  # never converged
        return out
    return _pooled(values)


def _recorded(key, missing=None):
    """Per-seed values of `key` for every seed, diverged or not; a missing (non-finite) value counts as
    `missing` (None: left out)."""
    def values(record):
        return [missing if v is None else v for v in record["per_seed"].get(key, [])
                if v is not None or missing is not None]
    return _pooled(values)


def _gap(record):
    ps = record["per_seed"]
    return [h - t for h, t in zip(ps["final_heldout_loss"], ps["final_train_loss"]) if h is not None and t is not None]


def _growth(records):
    """Per-seed growth at initialisation (it does not depend on the learning rate: read once)."""
    return [g for g in (records[0].get("probe") or {}).get("growth_per_layer_per_seed", []) if g is not None]


def _max_stable_lr(records):
    """Per seed: the largest learning rate of the grid up to which that seed never diverged (0: none)."""
    by_lr = sorted(records, key=lambda r: r["config"]["optimizer"]["lr"])
    out = []
    for seed in range(len(by_lr[0]["per_seed"]["diverged"])):
        stable = 0.0
        for r in by_lr:
            if r["per_seed"]["diverged"][seed]:
                break
            stable = r["config"]["optimizer"]["lr"]
        out.append(stable)
    return out


# metric -> (selected records -> per-seed values, description)
METRICS = {
    "divergence_rate": (_pooled(lambda r: [int(d) for d in r["per_seed"]["diverged"]]),
                        "fraction of seeds that diverged, pooled over the grid (Fisher's exact test)"),
    "max_stable_lr": (_max_stable_lr, "per seed, the largest learning rate up to which it never diverged "
                                      "(Mann-Whitney U)"),
    "steps_to_converge": (_per_seed("steps_to_converge", math.inf),
                          "steps to the convergence target, never = infinity (Mann-Whitney U)"),
    "heldout_loss": (_per_seed("final_heldout_loss", math.inf),
                     "final held-out loss, diverged = infinity (Mann-Whitney U)"),
    "generalization_gap": (_pooled(_gap), "held-out minus training loss, non-diverged seeds (Mann-Whitney U)"),
    "probe_growth": (_growth, "growth per layer of the squared gradient norm at init (Mann-Whitney U)"),
    "max_grad_norm": (_per_seed("max_grad_norm", math.inf),
                      "largest gradient norm during training, diverged = infinity (Mann-Whitney U)"),
    "max_attn_logit": (_recorded("max_attn_logit", math.inf),
                       "largest attention logit during training, overflow = infinity (Mann-Whitney U)"),
    "min_attn_entropy": (_recorded("min_attn_entropy"),
                         "attention entropy of the most collapsed head during training (Mann-Whitney U)"),
    "max_abs_log_z": (_recorded("max_abs_log_z", math.inf),
                      "largest mean |log Z| of the output softmax during training (Mann-Whitney U)"),
    "grad_nonfinite_fraction": (_recorded("grad_nonfinite_fraction"),
                                "largest fraction of non-finite gradient entries in a step (Mann-Whitney U)"),
    "grad_zero_fraction": (_recorded("grad_zero_fraction"),
                           "largest fraction of exactly-zero gradient entries in a step (Mann-Whitney U)"),
    "skipped_steps": (_recorded("skipped_steps"), "updates skipped by dynamic loss scaling (Mann-Whitney U)"),
}


def matches(config: dict, selector: dict) -> bool:
    """Whether a cell config's mitigation has every key/value of the selector."""
    mitigation = config["mitigation"]
    return all(mitigation.get(k) == v for k, v in selector.items())


def sample(records: list[dict], metric: str) -> list:
    """The per-seed values of a metric over the selected records."""
    return METRICS[metric][0](records) if records else []


def test(baseline: list, variant: list, metric: str) -> dict:
    """The two-sided test of a metric: p-value and an effect with its direction (+1 variant higher)."""
    if not baseline or not variant:
        return {"p": 1.0, "direction": 0, "effect": "no data", "n": [len(baseline), len(variant)]}
    if metric == "divergence_rate":
        kb, kv = sum(baseline), sum(variant)
        p = stats.fisher_exact([[kv, len(variant) - kv], [kb, len(baseline) - kb]]).pvalue
        diff = kv / len(variant) - kb / len(baseline)
        return {"p": float(p), "direction": int(np.sign(diff)), "n": [len(baseline), len(variant)],
                "effect": f"rate {kb / len(baseline):.2f} -> {kv / len(variant):.2f} ({diff:+.2f})"}
    b, v = np.asarray(baseline, float), np.asarray(variant, float)
    if np.all(np.concatenate([b, v]) == b[0]):
        p, superiority = 1.0, 0.5
    else:
        u = stats.mannwhitneyu(v, b, alternative="two-sided")
        p, superiority = float(u.pvalue), float(u.statistic) / (len(v) * len(b))
    median = lambda x: float(np.quantile(x, 0.5, method="lower"))  # noqa: E731  (defined with infinities)
    return {"p": p, "direction": int(np.sign(round(superiority - 0.5, 12))), "n": [len(b), len(v)],
            "effect": f"median {median(b):.3g} -> {median(v):.3g}; P(variant > baseline) = {superiority:.2f}"}


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error control)."""
    order = np.argsort(pvalues)
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def verdicts(claims: list[dict], records: list[dict], alpha: float = ALPHA) -> list[dict]:
    """Every claim with its comparisons tested, corrected and judged."""
    rows = []
    for claim in claims:
        for comp in claim["comparison"]:
            cells = [r for r in records if r["experiment"] == comp["experiment"]]
            base = [r for r in cells if matches(r["config"], comp["baseline"])]
            var = [r for r in cells if matches(r["config"], comp["variant"])]
            rows.append({"claim": claim["id"], **comp, **test(sample(base, comp["metric"]),
                                                               sample(var, comp["metric"]), comp["metric"])})
    for row, p_adj in zip(rows, holm([r["p"] for r in rows])):
        expected = 1 if row["expect"] == "higher" else -1
        row["p_adjusted"] = p_adj
        row["verdict"] = (NO_EFFECT if p_adj >= alpha or row["direction"] == 0
                          else SUPPORTED if row["direction"] == expected else CONTRADICTED)
    out = []
    for claim in claims:
        comps = [r for r in rows if r["claim"] == claim["id"]]
        kinds = sorted({c["verdict"] for c in comps})
        verdict = kinds[0] if len(kinds) == 1 else "depends on regime: " + "; ".join(
            f"{c['verdict']} for {c.get('regime') or c['experiment']}" for c in comps)
        out.append({**{k: v for k, v in claim.items() if k != "comparison"}, "verdict": verdict,
                    "comparisons": comps})
    return out
