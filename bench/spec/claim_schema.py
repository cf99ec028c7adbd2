"""A suite's `[[claim]]` tables, validated against its cells (bench/spec/suite.py calls this once the cells exist).

A `[[claim]]` has an `id`, `title`, `text`, `note` (what a reader needs to
judge its answers that the tables do not say: how the experiment poses the
question, what the rule cannot see; printed under the text), `judged_on` (questions of
QUESTIONS, the default of its comparisons' `questions`: init, training and
trainability) and `comparison`s: `experiment`, `regime`, `baseline` and
`variant` (selectors matched against the cells' mitigation, each selecting at
least one cell, not the same arm), `expect` (EXPECT), `questions` (the judged
ones), `gradient` (what the init and training answers read: explosion,
vanishing or either), `metric` (default stable_lr), `lr` (a learning rate of
both arms' grids; needed by the `rate` question), `rate` (divergence or
failure) and `at` (a fraction of the budget in SNAPSHOT_FRACTIONS, default
0.5). The vocabulary of claims (QUESTIONS, EXPECT, ...) and `matches` live
here, below bench/analysis/claims.py, which judges them.
"""
from __future__ import annotations

import math

from bench.spec.schema import SNAPSHOT_FRACTIONS, Key, SuiteError, check_choice, check_table

EXPECT = ("worse", "better")  # what the claim says the variant does
QUESTIONS = ("init", "training", "trainability", "rate", "symmetry")
JUDGED_BY_DEFAULT = ("init", "training", "trainability")
GRADIENT = ("explosion", "vanishing", "either")
RATES = ("divergence", "failure")
# The metrics a comparison may name: the keys of bench.analysis.claims.METRICS, which computes them.
METRIC_NAMES = ("stable_lr", "critical_lr", "trained_decades", "lr_sensitivity", "tuned_heldout_loss",
                "steps_to_converge", "steps_at_fastest_lr", "generalization_gap", "max_attn_logit", "max_abs_log_z", "grad_zero_fraction")

CLAIM = {
    "id": Key((str, int)),
    "title": Key(str, ""),
    "text": Key(str, ""),
    "note": Key(str, ""),
    "judged_on": Key(list, list(JUDGED_BY_DEFAULT), of=str, choices=tuple(QUESTIONS), nonempty=True),
    "comparison": Key(list, of=dict, nonempty=True),
}
COMPARISON = {
    "experiment": Key(str),
    "variant_experiment": Key(str, None),  # the variant arm's experiment, when not `experiment`
    "regime": Key(str, None),
    "baseline": Key(dict),
    "variant": Key(dict),
    "expect": Key(str, choices=tuple(EXPECT)),
    "questions": Key(list, None, of=str, choices=tuple(QUESTIONS), nonempty=True),
    "gradient": Key(str, "explosion", choices=GRADIENT),
    "metric": Key(str, "stable_lr", choices=METRIC_NAMES),
    "rate": Key(str, "failure", choices=RATES),
    "lr": Key(float, None, gt=0),
    "at": Key(float, 0.5, choices=tuple(SNAPSHOT_FRACTIONS)),
}


def validate_claims(path, tables, cells) -> list[dict]:
    """Validates `[[claim]]` tables: every comparison names an experiment and selects cells in it."""
    experiments = list(dict.fromkeys(c.experiment for c in cells))
    claims, ids = [], {}
    for i, table in enumerate(tables):
        key = f"claim[{i}]"
        claim = check_table(path, key, table, CLAIM)
        claim["id"] = str(claim["id"])
        if claim["id"] in ids:
            raise SuiteError(path, f"{key}.id", f"{claim['id']!r} is already the id of {ids[claim['id']]}")
        ids[claim["id"]] = key
        comparisons = []
        for j, comp_table in enumerate(claim["comparison"]):
            ckey = f"{key}.comparison[{j}]"
            comp = check_table(path, ckey, comp_table, COMPARISON)
            check_choice(path, f"{ckey}.experiment", comp["experiment"], experiments)
            sides = {"baseline": comp["experiment"], "variant": comp["variant_experiment"] or comp["experiment"]}
            for side, experiment in sides.items():
                check_choice(path, f"{ckey}.variant_experiment", experiment, experiments)
                arm = _arm(cells, experiment, comp[side])
                if not arm:
                    raise SuiteError(path, f"{ckey}.{side}", f"{comp[side]!r} selects no cell of experiment "
                                     f"{experiment!r} (it is matched against the cells' mitigation)")
                # One configuration per dataset over the learning rates as run (data_seed: the datasets are
                # replicates; a mitigation that sets its own lr runs every grid point at it).
                lrs = [(c.config["task"].get("data_seed"), c.plan["optimizer"]["lr"]) for c in arm]
                if len(lrs) != len(set(lrs)):
                    raise SuiteError(path, f"{ckey}.{side}", f"{comp[side]!r} selects several cells at one learning "
                                     "rate as run; an arm is one configuration over the learning-rate grid (name "
                                     "every mitigation parameter that varies; a mitigation that sets its own lr "
                                     "belongs in an experiment whose grid has one point)")
            judged = comp["questions"] or claim["judged_on"]
            if "rate" in judged and comp["lr"] is None:
                raise SuiteError(path, f"{ckey}.lr", "the rate question is judged at a stated learning rate; "
                                 "allowed: a learning rate of both arms' grids, as run")
            if comp["lr"] is not None:
                comp["lr"] = _grid_lr(path, ckey, comp, sides, cells)
            if comp["experiment"] == sides["variant"] and comp["baseline"] == comp["variant"]:
                raise SuiteError(path, f"{ckey}.variant", f"{comp['variant']!r} is the baseline's arm of experiment "
                                 f"{comp['experiment']!r}: a comparison needs two different arms")
            comparisons.append(comp)
        claims.append({**claim, "comparison": comparisons})
    return claims


def matches(config: dict, selector: dict) -> bool:
    """Whether a cell config's mitigation has every key/value of the selector."""
    mitigation = config["mitigation"]
    return all(mitigation.get(k) == v for k, v in selector.items())


def _arm(cells, experiment: str, selector: dict) -> list:
    """The cells of an experiment that a comparison's baseline or variant selector matches."""
    return [c for c in cells if c.experiment == experiment and matches(c.config, selector)]


def _grid_lr(path, ckey, comp, sides, cells) -> float:
    """The stated learning rate as it is on both arms' grids, as run (a mitigation may set its own): each arm
    is read there, never at a neighbour."""
    found = {}
    for side, experiment in sides.items():
        grid = sorted({c.plan["optimizer"]["lr"] for c in _arm(cells, experiment, comp[side])})
        same = [lr for lr in grid if math.isclose(lr, comp["lr"], rel_tol=1e-9)]
        if not same:
            raise SuiteError(path, f"{ckey}.lr", f"{comp['lr']:g} is not on the {side} arm's grid as run (experiment "
                             f"{experiment!r}: {', '.join(f'{x:g}' for x in grid)}); allowed: a learning rate of "
                             f"both arms' grids (baseline in {sides['baseline']!r}, variant in {sides['variant']!r})")
        found[side] = same[0]
    return found["baseline"]
