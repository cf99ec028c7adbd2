"""A suite's `[[claim]]` tables, validated against its cells (bench/suite.py calls this once the cells exist).

A `[[claim]]` has an `id`, `title`, `text`, `judged_on` (questions of
bench.claims.QUESTIONS, default all) and `comparison`s: `experiment`,
`regime`, `baseline` and `variant` (selectors matched against the cells'
mitigation, each selecting at least one cell), `expect` (bench.claims.EXPECT),
`metric` (default critical_lr), `lr` (one of the experiment's learning rates)
and `at` (a fraction of the budget in bench.metrics.SNAPSHOT_FRACTIONS,
default 0.5).
"""
from __future__ import annotations

import math

from bench.claims import EXPECT, METRICS, QUESTIONS, matches
from bench.metrics import SNAPSHOT_FRACTIONS
from bench.schema import Key, SuiteError, check_choice, check_table

CLAIM = {
    "id": Key((str, int)),
    "title": Key(str, ""),
    "text": Key(str, ""),
    "judged_on": Key(list, list(QUESTIONS), of=str, choices=tuple(QUESTIONS)),
    "comparison": Key(list, of=dict, nonempty=True),
}
COMPARISON = {
    "experiment": Key(str),
    "variant_experiment": Key(str, None),  # the variant arm's experiment, when not `experiment`
    "regime": Key(str, None),
    "baseline": Key(dict),
    "variant": Key(dict),
    "expect": Key(str, choices=tuple(EXPECT)),
    "metric": Key(str, "critical_lr", choices=tuple(METRICS)),
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
            in_exp = [c for c in cells if c.experiment == comp["experiment"]]
            sides = {"baseline": comp["experiment"], "variant": comp["variant_experiment"] or comp["experiment"]}
            for side, experiment in sides.items():
                check_choice(path, f"{ckey}.variant_experiment", experiment, experiments)
                in_exp = [c for c in cells if c.experiment == experiment]
                if not any(matches(c.config, comp[side]) for c in in_exp):
                    raise SuiteError(path, f"{ckey}.{side}", f"{comp[side]!r} selects no cell of experiment "
                                     f"{experiment!r} (it is matched against the cells' mitigation)")
                # One configuration per dataset over the grid (data_seed: the datasets are replicates).
                lrs = [(c.config["task"].get("data_seed"), c.config["optimizer"]["lr"]) for c in in_exp
                       if matches(c.config, comp[side])]
                if len(lrs) != len(set(lrs)):
                    raise SuiteError(path, f"{ckey}.{side}", f"{comp[side]!r} selects several cells at one learning "
                                     "rate; an arm is one configuration over the learning-rate grid (name every "
                                     "mitigation parameter that varies)")
            if comp["lr"] is not None:
                grid = sorted({c.config["optimizer"]["lr"] for c in in_exp}
                              | {c.plan["optimizer"]["lr"] for c in in_exp})
                same = [lr for lr in grid if math.isclose(lr, comp["lr"], rel_tol=1e-9)]
                if not same:
                    raise SuiteError(path, f"{ckey}.lr", f"{comp['lr']:g} is not a learning rate of experiment "
                                     f"{comp['experiment']!r}; its grid: {', '.join(f'{x:g}' for x in grid)}")
                comp["lr"] = same[0]
            comparisons.append(comp)
        claims.append({**claim, "comparison": comparisons})
    return claims
