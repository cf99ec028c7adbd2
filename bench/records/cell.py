"""Per-run engine output -> one results record per cell (definitions: docs/METHODS.md)."""
from __future__ import annotations

import math
import warnings

import numpy as np

from gradbench.records import metrics
from gradbench.records.validate import PER_SEED, SCHEMA_VERSION  # declared beside the record's shape
from gradbench.spec.schema import SNAPSHOT_FRACTIONS


def json_number(x):
    """A JSON-safe number: None for NaN/Inf."""
    x = float(x)
    return x if math.isfinite(x) else None


def json_extended(x):
    """A JSON-safe number that keeps infinities as the strings "inf" / "-inf" (None for NaN)."""
    x = float(x)
    return x if math.isfinite(x) else None if math.isnan(x) else ("inf" if x > 0 else "-inf")


def read_extended(x) -> float:
    """The float of a `json_extended` value (NaN for None)."""
    return math.nan if x is None else float(x)


def explosion(a: dict, param_names: list[str], axis: str) -> dict:
    """The `explosion` object of a record: gradient norms per layer at each snapshot, and their summaries.

    Args:
      a: this cell's per-seed engine arrays (snap_* with axes seeds x snapshots [x layers | parameters]).
      param_names: the parameter leaves of the weight and update norms.
      axis: "layers" or "steps" (time steps of a recurrent model).
    """
    log_g = np.asarray(a["snap_log_preact_grad"], np.float64)  # S x K x L, natural log
    n_seeds, n_snap, _ = log_g.shape
    e2e = np.exp(np.stack([metrics.log_e2e_ratio(log_g[:, k]) for k in range(n_snap)], 1))  # S x K
    growth = np.stack([metrics.fit_growth(log_g[:, k]) for k in range(n_snap)], 1)
    degenerate = ~np.isfinite(log_g).all(axis=2)  # a layer's norm is zero, infinite or NaN
    steps = np.asarray(a["snap_step"])
    median = lambda x: np.nanmedian(np.where(np.isfinite(x), x, np.nan), axis=0)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a snapshot no seed reached is all-NaN
        weight, update = median(a["snap_weight_norm"]), median(a["snap_update_norm"])
        profile = median(log_g) / math.log(10)
    table = lambda m: [[json_extended(v) for v in row] for row in m]  # noqa: E731
    return {
        "axis": axis,
        "fractions": list(SNAPSHOT_FRACTIONS),
        "e2e_ratio_init": [json_extended(v) for v in e2e[:, 0]],
        "growth_init": [json_extended(v) for v in growth[:, 0]],
        "per_seed": {
            "step": [[int(s) if s >= 0 else None for s in row] for row in steps],
            "e2e_ratio": table(e2e),
            "growth_per_layer": table(growth),
            "degenerate": degenerate.tolist(),
            "log10_preact_grad_init": table(log_g[:, 0] / math.log(10)),
        },
        "degenerate_seeds": [int(degenerate[:, k].sum()) for k in range(n_snap)],
        "median_log10_preact_grad": table(profile),
        "params": param_names,
        "median_weight_norm": table(weight),
        "median_update_norm": table(update),
        "n_seeds": n_seeds,
    }


def _median(values):
    finite = [v for v in values if v is not None]
    return float(np.median(finite)) if finite else None


def _downsample(n_steps: int, points: int) -> np.ndarray:
    return np.unique(np.linspace(0, n_steps - 1, min(points, n_steps)).round().astype(int))


def cell_record(cell, run_indices, group, env: dict, trace_points: int, task) -> dict:
    """The results record of one cell, from its runs (one per seed, in seed order) of a group."""
    a = {k: v[run_indices] for k, v in group.arrays.items()}
    config = cell.config
    collapse_fraction = config.get("collapse_fraction", 0.5)
    diverged = [bool(d) for d in a["diverged"]]
    divergence_step = [int(s) if d else None for s, d in zip(a["divergence_step"], diverged)]
    steps = [int(s) if s >= 0 and not d else None for s, d in zip(a["converge_step"], diverged)]
    per_seed = {
        "seed": [group.runs[i].seed for i in run_indices],
        "diverged": diverged,
        "divergence_step": divergence_step,
        "steps_to_converge": steps,
        **{f.name: [None if f.alive and d else int(v) if f.kind is int else json_number(v)
                    for v, d in zip(a[f.source], diverged)] for f in PER_SEED},
    }
    per_seed.update({name: [json_number(v) for v in a[name]] for name in group.diagnostics})
    outcomes = [metrics.outcome(d, loss, task.trivial_loss, collapse_fraction)
                for d, loss in zip(diverged, per_seed["final_train_loss"])]
    per_seed["collapsed"] = [o == metrics.COLLAPSED for o in outcomes]
    per_seed["trained"] = [o == metrics.TRAINED for o in outcomes]
    gaps = [h - t if h is not None and t is not None else None
            for h, t in zip(per_seed["final_heldout_loss"], per_seed["final_train_loss"])]
    n, k_div, k_fail = len(diverged), sum(diverged), len(diverged) - sum(per_seed["trained"])
    median, ci = metrics.censored_median(steps)
    kept = _downsample(group.loss_trace.shape[1], trace_points)
    axis = "steps" if cell.plan["model"]["family"] == "rnn" else "layers"
    return {
        "schema_version": SCHEMA_VERSION,
        "cell_id": cell.cell_id,
        "suite": cell.suite,
        "experiment": cell.experiment,
        "label": cell.label,
        "config": config,
        "plan": cell.plan,
        "thresholds": {"trivial_loss": task.trivial_loss, "divergence_factor": config["divergence_factor"],
                       "collapse_fraction": collapse_fraction, "smoothing": config["smoothing"],
                       "target": task.target},
        "divergence_rate": k_div / n,
        "divergence_rate_ci": list(metrics.wilson_interval(k_div, n)),
        "failure_rate": k_fail / n,
        "failure_rate_ci": list(metrics.wilson_interval(k_fail, n)),
        "converged": sum(s is not None for s in steps),
        "median_steps_to_converge": median,
        "steps_to_converge_ci": list(ci),
        "quality": {
            "final_train_loss": _median(per_seed["final_train_loss"]),
            "final_heldout_loss": _median(per_seed["final_heldout_loss"]),
            "final_heldout_metric": _median(per_seed["final_heldout_metric"]),
        "final_validation_loss": _median(per_seed["final_validation_loss"]),
            "generalization_gap": _median(gaps),
            "over": "median over non-diverged seeds",
        },
        "max_grad_norm": _median(per_seed["max_grad_norm"]),
        "diagnostics": {name: {"reduction": kind, "description": text, "median": _median(per_seed[name])}
                        for name, (kind, text) in group.diagnostics.items()},
        "per_seed": per_seed,
        "explosion": explosion(a, group.param_names, axis),
        "trace": {
            "step": kept.tolist(),
            "loss": [[json_number(v) for v in group.loss_trace[i, kept]] for i in run_indices],
            "grad_norm": [[json_number(v) for v in group.grad_norm_trace[i, kept]] for i in run_indices],
            **{name: [[json_number(v) for v in trace[i, kept]] for i in run_indices]
               for name, trace in group.diagnostic_traces.items()},
        },
        "throughput": group.throughput,
        "env": env,
    }
