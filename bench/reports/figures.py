"""An experiment's figures for the report: which plots it gets and the data each is drawn from.

Cells over a learning-rate grid get curves against the learning rate; an experiment run at one learning rate
over two numeric factors (the phase diagram) gets annotated maps instead.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from gradbench.analysis import claims as claims_lib
from gradbench.reports import plots
from gradbench.spec import schema

_lr = claims_lib.run_lr


def variant(record: dict) -> str:
    """A record's label without its learning rate: the line it belongs to across the LR grid."""
    return " ".join(t for t in record["label"].split() if not t.startswith("lr=")) or record["label"]


def median_e2e(record: dict, fraction: float):
    """Median over seeds of the end-to-end gradient ratio at a snapshot, read as the verdicts read it
    (`gradbench.analysis.claims.e2e_ratio`: 0/0 is total vanishing, a gradient that is not finite explosion), over
    the seeds that have one (None: none has)."""
    values = claims_lib.e2e_ratio(record, fraction)
    values = values[~np.isnan(values)]  # seeds without a value (underflow, a norm not computed) left out
    return float(np.quantile(values, 0.5, method="lower")) if len(values) else None


def _contrast_lr(records: list[dict]) -> float:
    """The grid learning rate of the loss curves and diagnostic traces: among those every variant was run at,
    the one where the variants' failure rates differ most (ties: nearest the middle of the grid)."""
    grid = lambda r: r["config"]["optimizer"]["lr"]  # noqa: E731
    lrs = sorted({grid(r) for r in records})
    by_variant: dict[str, set] = {}
    for r in records:
        by_variant.setdefault(variant(r), set()).add(grid(r))
    shared = [lr for lr in lrs if all(lr in v for v in by_variant.values())] or lrs
    spread = {lr: [r["failure_rate"] for r in records if grid(r) == lr] for lr in lrs}
    return max(shared, key=lambda x: (max(spread[x]) - min(spread[x]), -abs(lrs.index(x) - len(lrs) // 2)))


def _diagnostic_jobs(experiment: str, slug: str, records: list[dict], lr: float) -> dict[str, tuple]:
    """Per model diagnostic the records carry (a family's DIAGNOSTICS): its trace against the step at the
    grid learning rate `lr`, and its per-seed value reduced over training against the learning rate."""
    declared: dict[str, dict] = {}
    for r in records:
        for name, d in (r.get("diagnostics") or {}).items():
            declared.setdefault(name, d)
    jobs = {}
    for name, d in declared.items():
        have = [r for r in records if name in r["per_seed"]]
        traces = {}
        for r in have:
            if r["config"]["optimizer"]["lr"] == lr and name in r["trace"]:
                ran = f" (run at lr={_lr(r):g})" if _lr(r) != lr else ""
                traces[variant(r) + ran] = (r["trace"]["step"], r["trace"][name])
        reduced: dict[str, list] = {}
        for r in have:
            reduced.setdefault(variant(r), []).append((_lr(r), r["per_seed"][name]))
        keywords = dict(name=name, description=d.get("description", ""))
        if traces:
            jobs[f"{slug}-{name}-steps.png"] = (
                functools.partial(plots.diagnostic_trace, **keywords), traces,
                f"{experiment}: {name} during training at lr={lr:g}",
                f"{name} at each training step, median over seeds with the 25–75% band, per variant at "
                f"lr={lr:g} (the learning rate of the loss curves); a seed is left out at steps where it has "
                f"diverged or its value is not finite.")
        reduction = d.get("reduction", "max")
        jobs[f"{slug}-{name}-lr.png"] = (
            functools.partial(plots.diagnostic_vs_lr, reduction=reduction, **keywords), reduced,
            f"{experiment}: {name} ({reduction} over training) against learning rate",
            f"{name} per seed ({reduction} over the training steps) against the learning rate as run: median "
            f"and 25–75% bars per variant, at every learning rate of the grid.")
    return jobs


def grid_factors(records: list[dict]) -> tuple[str, str, str | None] | None:
    """(row, column, panel) model or task keys of an experiment run at one learning rate over a grid of two
    numeric factors (and at most one other): its figures are maps, not one line per cell."""
    if len({r["config"]["optimizer"]["lr"] for r in records}) != 1 or len(records) < 9:
        return None
    varying = {}
    for section in ("model", "task"):
        for key in records[0]["config"][section]:
            values = {json.dumps(r["config"][section].get(key)) for r in records}
            if len(values) > 1:
                varying[(section, key)] = [json.loads(v) for v in values]
    numeric = [k for k, v in varying.items() if all(isinstance(x, (int, float)) for x in v)]
    other = [k for k in varying if k not in numeric]
    if len(numeric) != 2 or len(other) > 1:
        return None
    rows, cols = sorted(numeric, key=lambda k: len(varying[k]))
    return rows, cols, other[0] if other else None


def _grid_map_jobs(experiment: str, slug: str, records: list[dict], factors) -> dict[str, tuple]:
    """Maps of the gradient ratio at initialisation and at the end, and of the failure rate, over the grid."""
    (rs, rk), (cs, ck), panel = factors
    at = lambda r, f: r["config"][f[0]][f[1]]  # noqa: E731
    row_values = sorted({at(r, (rs, rk)) for r in records})
    col_values = sorted({at(r, (cs, ck)) for r in records})
    labels = list(dict.fromkeys(str(at(r, panel)) for r in records)) if panel else [experiment]

    def panels(value):
        out = {}
        for label in labels:
            matrix = [[None] * len(col_values) for _ in row_values]
            for r in records:
                if not panel or str(at(r, panel)) == label:
                    matrix[row_values.index(at(r, (rs, rk)))][col_values.index(at(r, (cs, ck)))] = value(r)
            out[f"{panel[1]} {label}" if panel else label] = (row_values, col_values, matrix)
        return out

    lr = _lr(records[0])
    keywords = dict(rows=rk, cols=ck)
    end = records[0]["explosion"]["fractions"][-1]
    return {
        f"{slug}-e2e-init-map.png": (
            functools.partial(plots.grid_maps, value="median e2e ratio", log10=True, **keywords),
            panels(lambda r: median_e2e(r, 0.0)), f"{experiment}: gradient ratio at initialisation",
            "Median over seeds of the end-to-end gradient ratio at initialisation (input-side over output-side "
            "gradient norm; colour on a log scale, above 1 explodes towards the input, below 1 vanishes), per cell "
            "of the grid."),
        f"{slug}-e2e-end-map.png": (
            functools.partial(plots.grid_maps, value="median e2e ratio", log10=True, **keywords),
            panels(lambda r: median_e2e(r, end)), f"{experiment}: gradient ratio after training at lr={lr:g}",
            f"The same after the budget at lr={lr:g} (a diverged seed counts as infinity)."),
        f"{slug}-failure-map.png": (
            functools.partial(plots.grid_maps, value="failure rate", vmin=0.0, vmax=1.0, **keywords),
            panels(lambda r: r["failure_rate"]), f"{experiment}: failure rate at lr={lr:g}",
            f"Fraction of seeds that diverged or collapsed at lr={lr:g}, per cell of the grid."),
    }


def plot_jobs(experiment: str, records: list[dict], plot_dir: Path) -> dict[str, tuple]:
    """The experiment's figures: path -> (function, data, title, one-line caption)."""
    slug = schema.slug(experiment)
    factors = grid_factors(records)
    if factors:
        return {str(plot_dir / name): job for name, job in _grid_map_jobs(experiment, slug, records, factors).items()}
    lines: dict[str, list] = {}
    for r in records:
        lo, hi = r["failure_rate_ci"]
        lines.setdefault(variant(r), []).append((_lr(r), r["failure_rate"], lo, hi))
    # Loss curves (and diagnostic traces) at the learning rate where the variants differ most in failure rate.
    lr = _contrast_lr(records)
    curves = {}
    for r in records:
        if r["config"]["optimizer"]["lr"] == lr:
            ran = f" (run at lr={_lr(r):g})" if _lr(r) != lr else ""
            curves[variant(r) + ran] = (r["trace"]["step"], r["trace"]["loss"])
    profiles = {}
    for r in records:
        if variant(r) not in profiles:
            e = r["explosion"]
            profiles[variant(r)] = (e["axis"], e["per_seed"]["log10_preact_grad_init"])
    jobs = {
        f"{slug}-failure.png": (plots.failure_vs_lr, lines, f"{experiment}: failure rate vs learning rate",
                                "Failure rate (diverged or collapsed, 95% Wilson interval) per variant against "
                                "the learning rate as run."),
        f"{slug}-loss.png": (plots.loss_curves, curves, f"{experiment}: training loss at lr={lr:g}",
                             f"Training loss per step, median over seeds with the 25–75% band, at lr={lr:g} (where "
                             f"the variants' failure rates differ most)."),
        f"{slug}-gradients.png": (plots.gradient_profile, profiles, f"{experiment}: gradient norms at init",
                                  "Pre-activation gradient norm per layer at initialisation (median over seeds, "
                                  "10–90% band), per variant."),
        **_diagnostic_jobs(experiment, slug, records, lr),
    }
    return {str(plot_dir / name): job for name, job in jobs.items()}
