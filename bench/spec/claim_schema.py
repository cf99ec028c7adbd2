"""A suite's `[[claim]]` tables, validated against its cells (bench/spec/suite.py calls this once the cells exist).

A claim is pre-registered, as a careful paper states its design before it
runs: one `primary` question that is the claim's real question, with a
`rationale` (why this question, in this regime, decides the claim), and
`secondary` questions shown beside it that decide nothing. A claim the article
joins but whose parts can disagree (depth and width, Adam and Adagrad) is
split into sub-claims with ids of their own ("3a", "3b").

A question compares a `baseline` arm of an `experiment` with a `variant` arm
(of `variant_experiment` where the variant ran elsewhere) on one `measure` of
MEASURES (bench/analysis/claims.py computes them), where the claim `expect`s the
variant to be worse or better. `lr` reads both arms at one learning rate of
their grids (default: each arm at its own tuned one, chosen on the validation
split); `at` is the fraction of training the gradient is read at (0: at
initialisation). The vocabulary of claims and `matches` live here, below
bench/analysis/claims.py, which judges them.
"""
from __future__ import annotations

import math

from gradbench.spec.schema import SNAPSHOT_FRACTIONS, Key, SuiteError, check_choice, check_table

EXPECT = ("worse", "better")  # what the claim says the variant does
# The measures a question may name: the keys of gradbench.analysis.claims.MEASURES, which computes them.
MEASURES = ("gradient", "gradient_distance", "reach", "reach_range", "steps", "heldout_loss", "overfitting_gap", "divergence",
            "critical_lr", "stable_lr", "lr_sensitivity", "max_attn_logit", "max_abs_log_z", "grad_zero_fraction")

CLAIM = {
    "id": Key((str, int)),
    "title": Key(str),
    "question": Key(str, doc="the primary question in words"),
    "rationale": Key(str, doc="one sentence: why this question, in this regime, decides the claim"),
    "note": Key(str, ""),
    "primary": Key(dict),
    "secondary": Key(list, [], of=dict),
}
QUESTION = {
    "label": Key(str, None),  # how a secondary question is named in tables (default: its measure and arms)
    "experiment": Key(str),
    "variant_experiment": Key(str, None),  # the variant arm's experiment, when not `experiment`
    "baseline": Key(dict),
    "variant": Key(dict),
    "measure": Key(str, choices=MEASURES),
    "expect": Key(str, choices=EXPECT),
    "lr": Key(float, None, gt=0),
    "at": Key(float, 0.0, choices=tuple(SNAPSHOT_FRACTIONS)),
}


def validate_claims(path, tables, cells) -> list[dict]:
    """Validates `[[claim]]` tables: every question names an experiment and selects cells in it."""
    experiments = list(dict.fromkeys(c.experiment for c in cells))
    claims, ids = [], {}
    for i, table in enumerate(tables):
        key = f"claim[{i}]"
        claim = check_table(path, key, table, CLAIM)
        claim["id"] = str(claim["id"])
        if claim["id"] in ids:
            raise SuiteError(path, f"{key}.id", f"{claim['id']!r} is already the id of {ids[claim['id']]}")
        ids[claim["id"]] = key
        claim["primary"] = _question(path, f"{key}.primary", claim["primary"], cells, experiments)
        claim["secondary"] = [_question(path, f"{key}.secondary[{j}]", q, cells, experiments)
                              for j, q in enumerate(claim["secondary"])]
        claims.append(claim)
    return claims


def _question(path, qkey: str, table: dict, cells, experiments: list[str]) -> dict:
    q = check_table(path, qkey, table, QUESTION)
    check_choice(path, f"{qkey}.experiment", q["experiment"], experiments)
    sides = {"baseline": q["experiment"], "variant": q["variant_experiment"] or q["experiment"]}
    for side, experiment in sides.items():
        check_choice(path, f"{qkey}.variant_experiment", experiment, experiments)
        arm = _arm(cells, experiment, q[side])
        if not arm:
            raise SuiteError(path, f"{qkey}.{side}", f"{q[side]!r} selects no cell of experiment {experiment!r} "
                             "(it is matched against the cells' mitigation)")
        # One configuration per dataset and replicate block over the learning rates as run.
        lrs = [(c.config["task"].get("data_seed"), c.config.get("replicate", 0), c.plan["optimizer"]["lr"])
               for c in arm]
        if len(lrs) != len(set(lrs)):
            raise SuiteError(path, f"{qkey}.{side}", f"{q[side]!r} selects several cells at one learning rate as "
                             "run; an arm is one configuration over the learning-rate grid (name every mitigation "
                             "parameter that varies; a mitigation that sets its own lr belongs in an experiment "
                             "whose grid has one point)")
    if q["measure"] == "divergence" and q["lr"] is None:
        raise SuiteError(path, f"{qkey}.lr", "the divergence measure is read at a stated learning rate; allowed: a "
                         "learning rate of both arms' grids, as run")
    if q["lr"] is not None:
        q["lr"] = _grid_lr(path, qkey, q, sides, cells)
    if q["experiment"] == sides["variant"] and q["baseline"] == q["variant"]:
        raise SuiteError(path, f"{qkey}.variant", f"{q['variant']!r} is the baseline's arm of experiment "
                         f"{q['experiment']!r}: a question needs two different arms")
    return q


SECTIONS = ("task", "model", "optimizer")  # a selector's tables that match a config section, not the mitigation


def matches(config: dict, selector: dict) -> bool:
    """Whether a cell config has every key/value of the selector: its mitigation's, and for a `task`, `model`
    or `optimizer` table in the selector, that section's (an arm of an experiment swept over model keys)."""
    mitigation = config["mitigation"]
    return all(all(config[k].get(kk) == vv for kk, vv in v.items()) if k in SECTIONS and isinstance(v, dict)
               else mitigation.get(k) == v for k, v in selector.items())


def _arm(cells, experiment: str, selector: dict) -> list:
    """The cells of an experiment that a question's baseline or variant selector matches."""
    return [c for c in cells if c.experiment == experiment and matches(c.config, selector)]


def _grid_lr(path, qkey, q, sides, cells) -> float:
    """The stated learning rate as it is on both arms' grids, as run: each arm is read there, never at a
    neighbour."""
    found = {}
    for side, experiment in sides.items():
        grid = sorted({c.plan["optimizer"]["lr"] for c in _arm(cells, experiment, q[side])})
        same = [lr for lr in grid if math.isclose(lr, q["lr"], rel_tol=1e-9)]
        if not same:
            raise SuiteError(path, f"{qkey}.lr", f"{q['lr']:g} is not on the {side} arm's grid as run (experiment "
                             f"{experiment!r}: {', '.join(f'{x:g}' for x in grid)}); allowed: a learning rate of "
                             f"both arms' grids (baseline in {sides['baseline']!r}, variant in {sides['variant']!r})")
        found[side] = same[0]
    return found["baseline"]
