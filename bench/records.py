"""Per-run engine output -> one results record per cell (DESIGN.md section 6)."""
from __future__ import annotations

import math

import numpy as np

from bench import metrics

SCHEMA_VERSION = 1


def json_number(x):
    """A JSON-safe number: None for NaN/Inf."""
    x = float(x)
    return x if math.isfinite(x) else None


def _median(values):
    finite = [v for v in values if v is not None]
    return float(np.median(finite)) if finite else None


def _downsample(n_steps: int, points: int) -> np.ndarray:
    return np.unique(np.linspace(0, n_steps - 1, min(points, n_steps)).round().astype(int))


def cell_record(cell, run_indices, group, env: dict, trace_points: int, target: float) -> dict:
    """The results record of one cell, from its runs (one per seed, in seed order) of a group."""
    a = {k: v[run_indices] for k, v in group.arrays.items()}
    diverged = [bool(d) for d in a["diverged"]]
    divergence_step = [int(s) if d else None for s, d in zip(a["divergence_step"], diverged)]
    steps = [int(s) if s >= 0 and not d else None for s, d in zip(a["converge_step"], diverged)]
    alive = lambda key: [None if d else json_number(v) for v, d in zip(a[key], diverged)]  # noqa: E731
    per_seed = {
        "seed": [group.runs[i].seed for i in run_indices],
        "diverged": diverged,
        "divergence_step": divergence_step,
        "steps_to_converge": steps,
        "loss_0": [json_number(v) for v in a["loss_0"]],
        "final_train_loss": alive("final_train_loss"),
        "final_heldout_loss": alive("final_heldout_loss"),
        "final_train_metric": alive("final_train_metric"),
        "final_heldout_metric": alive("final_heldout_metric"),
        "max_grad_norm": [json_number(v) for v in a["max_grad_norm"]],
        "grad_zero_fraction": [json_number(v) for v in a["grad_zero_fraction"]],
        "grad_nonfinite_fraction": [json_number(v) for v in a["grad_nonfinite_fraction"]],
        "skipped_steps": [int(v) for v in a["skipped_steps"]],
        "final_loss_scale": [json_number(v) for v in a["final_loss_scale"]],
    }
    per_seed.update({name: [json_number(v) for v in a[name]] for name in group.diagnostics})
    gaps = [h - t if h is not None and t is not None else None
            for h, t in zip(per_seed["final_heldout_loss"], per_seed["final_train_loss"])]
    n, k_div = len(diverged), sum(diverged)
    median, ci = metrics.censored_median(steps)
    kept = _downsample(group.loss_trace.shape[1], trace_points)
    config = cell.config
    return {
        "schema_version": SCHEMA_VERSION,
        "cell_id": cell.cell_id,
        "suite": cell.suite,
        "experiment": cell.experiment,
        "label": cell.label,
        "config": config,
        "plan": cell.plan,
        "thresholds": {"divergence_factor": config["divergence_factor"], "smoothing": config["smoothing"],
                       "target": target, "max_divergence_rate_for_stable_lr": 0.1},
        "divergence_rate": k_div / n,
        "divergence_rate_ci": list(metrics.wilson_interval(k_div, n)),
        "converged": sum(s is not None for s in steps),
        "median_steps_to_converge": median,
        "steps_to_converge_ci": list(ci),
        "quality": {
            "final_train_loss": _median(per_seed["final_train_loss"]),
            "final_heldout_loss": _median(per_seed["final_heldout_loss"]),
            "final_heldout_metric": _median(per_seed["final_heldout_metric"]),
            "generalization_gap": _median(gaps),
            "over": "median over non-diverged seeds",
        },
        "max_grad_norm": _median(per_seed["max_grad_norm"]),
        "diagnostics": {name: {"reduction": kind, "description": text, "median": _median(per_seed[name])}
                        for name, (kind, text) in group.diagnostics.items()},
        "per_seed": per_seed,
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
