"""Markdown tables of a results directory's cells and arms, and the number formats the reports share."""
from __future__ import annotations

from gradbench.analysis import claims as claims_lib
from gradbench.reports.figures import median_e2e, variant


def _fmt(x, digits=3, sign=""):
    """x to `digits` significant digits, read first at 10: a value that lies on a rounding boundary (a median of
    two, 0.9375) prints the same on a CPU whose last bits put it a hair below (docs/METHODS.md, "Statistics")."""
    return "–" if x is None else f"{float(f'{float(x):.10g}'):{sign}.{digits}g}"


def _interval(ci, digits=3):
    low, high = ci
    return f"[{_fmt(low, digits)}, {'∞' if high is None else _fmt(high, digits)}]"


def _ratio(x) -> str:
    return "∞" if x == "inf" or x == float("inf") else _fmt(x)


def _median_rank(per_seed: dict, key: str) -> str:
    """Median over the seeds that have it of a per-seed kernel rank (symmetry), or a dash."""
    values = sorted(v for v in per_seed.get(key, []) if v is not None)
    return f"{values[(len(values) - 1) // 2]:.2f}" if values else "–"


def cells_table(records: list[dict], marks: dict[str, str] | None = None) -> list[str]:
    """One row per cell: outcomes, convergence, quality, explosion at init and mid-training, throughput.

    marks: cell_id -> environment name for rows from another environment than the main one (E1).
    """
    marks = marks or {}
    mark = lambda r: f" [{marks[r['cell_id']]}]" if r["cell_id"] in marks else ""  # noqa: E731
    lines = ["| cell | failed (95% CI) | diverged | collapsed | converged | median steps (95% CI) | "
             "validation loss | held-out loss | e2e ratio at init | e2e at 50% | unit rank init → end | "
             "steps/s median [IQR] |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        ps, n = r["per_seed"], len(r["per_seed"]["diverged"])
        median = "not reached" if r["median_steps_to_converge"] is None else _fmt(r["median_steps_to_converge"])
        lines.append(
            f"| {r['label']}{mark(r)} | {r['failure_rate']:.2f} {_interval(r['failure_rate_ci'], 2)} | "
            f"{sum(ps['diverged'])} | "
            f"{sum(ps['collapsed'])} | {r['converged']}/{n} | {median} {_interval(r['steps_to_converge_ci'])} | "
            f"{_fmt(r['quality']['final_validation_loss'])} | {_fmt(r['quality']['final_heldout_loss'])} | "
            f"{_ratio(median_e2e(r, 0.0))} | {_ratio(median_e2e(r, 0.5))} | "
            f"{_median_rank(ps, 'kernel_rank_init')} → {_median_rank(ps, 'kernel_rank_final')} | "
            f"{_speed(r['throughput'])} |")
    return lines


def _speed(throughput: dict) -> str:
    """Steps/s: the median over timed chunks and its interquartile range (older records: the median alone)."""
    iqr = throughput.get("steps_per_s_iqr")
    spread = f" [{iqr[0]:.0f}, {iqr[1]:.0f}]" if iqr else ""
    return f"{throughput['steps_per_s']:.0f}{spread}"


def _censored(value: float, edge: str | None) -> str:
    return {"above": f"> {value:g} (top)", "below": f"< {value:g} (bottom)"}.get(edge, f"{value:g}")


def arms_table(records: list[dict]) -> list[str]:
    """Per arm (one variant over the learning-rate grid): outcomes per learning rate, divergence-free and
    critical learning rates, trained range, sensitivity, tuned quality."""
    by_variant: dict[str, list] = {}
    for r in records:
        by_variant.setdefault(variant(r), []).append(r)
    lines = ["| variant | learning rates | diverged / collapsed of seeds, per lr | median divergence-free lr | "
             "median critical lr | trained decades | lr sensitivity | tuned lr | converged at it | "
             "tuned held-out loss | tuned held-out metric |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, recs in by_variant.items():
        s = claims_lib.Arm(recs).summary()
        lrs = s["lrs"]
        grid = f"{len(lrs)}: {lrs[0]:g} to {lrs[-1]:g}" if len(lrs) > 3 else ", ".join(f"{x:g}" for x in lrs)
        outcomes = " ".join(f"{d}/{c}" for d, c in zip(s["diverged"], s["collapsed"])) + f" of {s['seeds']}"
        lines.append(f"| {name} | {grid} | {outcomes} | {_censored(s['stable_lr'], s['stable_lr_censored'])} | "
                     f"{_censored(s['critical_lr'], s['critical_lr_censored'])} | {_fmt(s['trained_decades'])} | "
                     f"{_fmt(s['lr_sensitivity'])} | {s['tuned_lr']:g} | {s['tuned_reached']}/{s['seeds']} | "
                     f"{_fmt(s['tuned_heldout_loss'])} | {_fmt(s['tuned_heldout_metric'])} |")
    return lines


def _selector(selector: dict) -> str:
    """key=value, ...; a nested table in parentheses, a list of them joined by +."""
    def value(v):
        return f"({_selector(v)})" if isinstance(v, dict) else " + ".join(map(value, v)) if isinstance(v, list) \
            else str(v)
    return ", ".join(f"{k}={value(v)}" for k, v in selector.items())
