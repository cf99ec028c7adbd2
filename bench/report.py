"""Results directory -> Markdown report with plots (verdicts first, then the evidence per claim).

The text is a pure function of the directory's records and suite.json, so a
committed report can be checked against the raw results it came from.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from bench import claims as claims_lib
from bench import metrics, plots
from bench.store import SUITE_FILE, ResultsStore


def variant(record: dict) -> str:
    """A record's label without its learning rate: the line it belongs to across the LR grid."""
    return " ".join(t for t in record["label"].split() if not t.startswith("lr=")) or record["label"]


def _fmt(x, digits=3):
    return "–" if x is None else f"{x:.{digits}g}"


def _interval(ci, digits=3):
    low, high = ci
    return f"[{_fmt(low, digits)}, {'∞' if high is None else _fmt(high, digits)}]"


def environment_line(records: list[dict]) -> str:
    """Versions, backend, devices, commit and time span of the records."""
    env = records[0]["env"]
    v = env["versions"]
    stamps = sorted(r["env"]["timestamp"] for r in records)
    commit = (env["git_commit"] or "unknown")[:10] + (" (dirty)" if env["git_dirty"] else "")
    return (f"jax {v['jax']}, jaxlib {v['jaxlib']}, flax {v['flax']}, optax {v['optax']}, numpy {v['numpy']}, "
            f"Python {env['python']}; backend {env['backend']} ({env['device_kind']} x{env['device_count']}); "
            f"XLA_FLAGS '{env['xla_flags']}'; commit {commit}; run {stamps[0]} to {stamps[-1]}")


def cells_table(records: list[dict]) -> list[str]:
    """One row per cell: divergence rate, convergence, quality, gradient growth at init, throughput."""
    lines = ["| cell | diverged (95% CI) | converged | median steps (95% CI) | held-out loss | gap | "
             "growth/layer at init | steps/s |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        n = len(r["per_seed"]["diverged"])
        growth = (r.get("probe") or {}).get("growth_per_layer")
        lines.append(
            f"| {r['label']} | {r['divergence_rate']:.2f} {_interval(r['divergence_rate_ci'], 2)} | "
            f"{r['converged']}/{n} | {_fmt(r['median_steps_to_converge'])} {_interval(r['steps_to_converge_ci'])} | "
            f"{_fmt(r['quality']['final_heldout_loss'])} | {_fmt(r['quality']['generalization_gap'])} | "
            f"{_fmt(growth)} | {r['throughput']['steps_per_s']:.0f} |")
    return lines


def lr_view(records: list[dict]) -> list[str]:
    """Largest learning rate with divergence rate <= 10%, per variant."""
    by_variant: dict[str, dict] = {}
    for r in records:
        by_variant.setdefault(variant(r), {})[r["config"]["optimizer"]["lr"]] = r["divergence_rate"]
    lines = ["| variant | learning rates tried | largest with divergence rate <= 10% |", "|---|---|---|"]
    for name, rates in by_variant.items():
        stable = metrics.largest_stable_lr(rates)
        lines.append(f"| {name} | {', '.join(f'{lr:g}' for lr in sorted(rates))} | "
                     f"{'none' if stable is None else f'{stable:g}'} |")
    return lines


def _plot_jobs(experiment: str, records: list[dict], plot_dir: Path) -> dict[str, tuple]:
    """The experiment's figures: name -> (function, args)."""
    slug = "".join(c if c.isalnum() else "-" for c in experiment).strip("-")
    lines: dict[str, list] = {}
    for r in records:
        lo, hi = r["divergence_rate_ci"]
        lines.setdefault(variant(r), []).append((r["config"]["optimizer"]["lr"], r["divergence_rate"], lo, hi))
    lrs = sorted({r["config"]["optimizer"]["lr"] for r in records})
    # Loss curves at the learning rate where the variants differ most in divergence rate.
    spread = {lr: [r["divergence_rate"] for r in records if r["config"]["optimizer"]["lr"] == lr] for lr in lrs}
    lr = max(lrs, key=lambda x: (max(spread[x]) - min(spread[x]), -abs(lrs.index(x) - len(lrs) // 2)))
    curves = {variant(r): (r["trace"]["step"], r["trace"]["loss"]) for r in records
              if r["config"]["optimizer"]["lr"] == lr}
    probes = {}
    for r in records:
        if r.get("probe") and variant(r) not in probes:
            probes[variant(r)] = r["probe"]
    jobs = {
        f"{slug}-divergence.png": (plots.divergence_vs_lr, lines, f"{experiment}: divergence rate vs learning rate"),
        f"{slug}-loss.png": (plots.loss_curves, curves, f"{experiment}: training loss at lr={lr:g}"),
    }
    if probes:
        jobs[f"{slug}-gradients.png"] = (plots.probe_profile, probes, f"{experiment}: gradient norms at init")
    return {str(plot_dir / name): job for name, job in jobs.items()}


def render(results_dir, output) -> tuple[str, dict]:
    """The report's Markdown text for `output`, and the plots it links (path -> job)."""
    results_dir, output = Path(results_dir), Path(output)
    suite = json.loads((results_dir / SUITE_FILE).read_text())
    records = ResultsStore(results_dir).records
    if not records:
        raise ValueError(f"{results_dir}: no results records")
    plot_dir = results_dir / "plots"
    link = lambda p: os.path.relpath(p, output.parent)  # noqa: E731
    shown = link(results_dir)  # paths as seen from the report, so the text does not depend on the cwd
    command = f"python -m bench run {suite['path']} --out {shown}"
    env = environment_line(records)
    by_experiment: dict[str, list] = {}
    for r in records:
        by_experiment.setdefault(r["experiment"], []).append(r)
    jobs: dict = {}
    figures = {}
    for experiment, recs in by_experiment.items():
        exp_jobs = _plot_jobs(experiment, recs, plot_dir)
        jobs.update(exp_jobs)
        figures[experiment] = [f"![{Path(p).stem}]({link(p)})" for p in exp_jobs]

    out = [f"# Results: {suite['name']}", "",
           f"Generated by `python -m bench report {shown}` from `{shown}/results.jsonl`; "
           "do not edit by hand.", "", f"Reproduce: `{command}`", "", f"Environment: {env}", ""]
    settings = suite["settings"]
    out += [f"Thresholds: a seed diverges at the first step whose loss or gradient norm is non-finite or whose "
            f"loss exceeds {settings['divergence_factor']:g} x its initial loss; it converges when its training "
            f"loss (moving average, smoothing {settings['smoothing']:g}) reaches the task's target. Tests: "
            f"Fisher's exact test (rates) and Mann-Whitney U (per-seed values), two-sided, Holm-corrected over "
            f"all comparisons, alpha {claims_lib.ALPHA:g}.", ""]
    judged = claims_lib.verdicts(suite["claims"], records) if suite["claims"] else []
    if judged:
        out += ["## Verdicts", "", "| claim | experiments | verdict | evidence |", "|---|---|---|---|"]
        for c in judged:
            evidence = "<br>".join(f"{x.get('regime') or x['experiment']}: {x['metric']} {x['effect']}, "
                                   f"p={x['p']:.2g} (Holm {x['p_adjusted']:.2g})" for x in c["comparisons"])
            exps = ", ".join(dict.fromkeys(x["experiment"] for x in c["comparisons"]))
            out.append(f"| {c['id']}. {c.get('title', '')} | {exps} | **{c['verdict']}** | {evidence} |")
        out.append("")
    sections = [(f"Claim {c['id']}: {c.get('title', '')}", c) for c in judged] or \
               [(f"Experiment: {e}", None) for e in by_experiment]
    for title, claim in sections:
        out += [f"## {title}", ""]
        if claim:
            if claim.get("text"):
                out += [claim["text"], ""]
            out += ["| experiment | baseline | variant | metric | claim expects variant | effect | p | "
                    "p (Holm) | verdict |", "|---|---|---|---|---|---|---|---|---|"]
            for x in claim["comparisons"]:
                out.append(f"| {x.get('regime') or x['experiment']} | {_selector(x['baseline'])} | "
                           f"{_selector(x['variant'])} | {x['metric']} | {x['expect']} | {x['effect']} | "
                           f"{x['p']:.3g} | {x['p_adjusted']:.3g} | {x['verdict']} |")
            out.append("")
            experiments = dict.fromkeys(x["experiment"] for x in claim["comparisons"])
        else:
            experiments = [title.split(": ", 1)[1]]
        for experiment in experiments:
            recs = by_experiment[experiment]
            if claim:
                selectors = [x[s] for x in claim["comparisons"] if x["experiment"] == experiment
                             for s in ("baseline", "variant")]
                recs = [r for r in recs if any(claims_lib.matches(r["config"], s) for s in selectors)]
            out += [f"### {experiment}", "", *cells_table(recs), "", *lr_view(recs), "", *figures[experiment], "",
                    f"Reproduce: `{command}`  ", f"Environment: {environment_line(recs)}", ""]
    return "\n".join(out), jobs


def _selector(selector: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in selector.items())


def write(results_dir, output=None) -> Path:
    """Writes the report (default DIR/REPORT.md) and its plots; returns the report's path."""
    from bench.store import atomic_write

    output = Path(output or Path(results_dir) / "REPORT.md")
    text, jobs = render(results_dir, output)
    Path(results_dir, "plots").mkdir(parents=True, exist_ok=True)
    for path, (fn, data, title) in jobs.items():
        fn(data, path, title)
    atomic_write(output, text + "\n")
    return output
