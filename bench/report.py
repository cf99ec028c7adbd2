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
from bench.store import SUITE_FILE, read_results


def variant(record: dict) -> str:
    """A record's label without its learning rate: the line it belongs to across the LR grid."""
    return " ".join(t for t in record["label"].split() if not t.startswith("lr=")) or record["label"]


def _fmt(x, digits=3):
    return "–" if x is None else f"{x:.{digits}g}"


def _interval(ci, digits=3):
    low, high = ci
    return f"[{_fmt(low, digits)}, {'∞' if high is None else _fmt(high, digits)}]"


def environment_line(records: list[dict]) -> str:
    """Package and library versions, machine, commit and time span of the records (of one environment)."""
    env = records[0]["env"]
    v = env["versions"]
    stamps = sorted(r["env"]["timestamp"] for r in records)
    commit = (env["git_commit"] or "unknown")[:10] + (" (dirty)" if env["git_dirty"] else "")
    package = (f"gradbench {env.get('package_version') or 'unknown'} (code sha256 {env['code_sha256'][:12]}), "
               if env.get("code_sha256") else "")
    machine = (f"; CPU {env['cpu']}" + (f" x{env['cpu_count']}" if env.get("cpu_count") else "")
               if env.get("cpu") else "") + \
        "".join(f", {k} {val}" for k, val in (env.get("cuda") or {}).items()) + \
        "".join(f", {k} {val}" for k, val in (env.get("jax_plugins") or {}).items())
    precision = (f"; matmul precision {env['default_matmul_precision']}"
                 if env.get("default_matmul_precision") else "")
    return (f"{package}jax {v['jax']}, jaxlib {v['jaxlib']}, flax {v['flax']}, optax {v['optax']}, "
            f"numpy {v['numpy']}, Python {env['python']}; backend {env['backend']} ({env['device_kind']} "
            f"x{env['device_count']}){machine}{precision}; XLA_FLAGS '{env['xla_flags']}'; commit {commit}; "
            f"run {stamps[0]} to {stamps[-1]}")


def _env_key(env: dict) -> str:
    return json.dumps({k: v for k, v in env.items() if k not in ("timestamp", "matmul_flops_per_s")}, sort_keys=True)


def environments(records: list[dict]) -> dict[str, list[dict]]:
    """The distinct environments among the records, named E1, E2, ... (E1 the most common) -> their records."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(_env_key(r["env"]), []).append(r)
    ranked = sorted(groups.values(), key=len, reverse=True)
    return {f"E{i + 1}": recs for i, recs in enumerate(ranked)}


def environment_lines(records: list[dict], names: dict[str, str]) -> list[str]:
    """`Environment: ...`, or one line per environment when the records come from several."""
    shown: dict[str, list[dict]] = {}
    for r in records:
        shown.setdefault(names[r["cell_id"]], []).append(r)
    if len(set(names.values())) == 1:
        return [f"Environment: {environment_line(records)}"]
    return ["Environments (rows marked [E2], [E3], ... come from another environment than E1):", ""] + \
        [f"- {name} ({len(recs)} records): {environment_line(recs)}" for name, recs in sorted(shown.items())]


def cells_table(records: list[dict], marks: dict[str, str] | None = None) -> list[str]:
    """One row per cell: divergence rate, convergence, quality, gradient growth at init, throughput.

    marks: cell_id -> environment name for rows from another environment than the main one.
    """
    marks = marks or {}
    mark = lambda r: f" [{marks[r['cell_id']]}]" if r["cell_id"] in marks else ""  # noqa: E731
    lines = ["| cell | diverged (95% CI) | converged | median steps (95% CI) | held-out loss | gap | "
             "growth/layer at init | steps/s |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        n = len(r["per_seed"]["diverged"])
        growth = (r.get("probe") or {}).get("growth_per_layer")
        lines.append(
            f"| {r['label']}{mark(r)} | {r['divergence_rate']:.2f} {_interval(r['divergence_rate_ci'], 2)} | "
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
    records = read_results(results_dir)
    plot_dir = results_dir / "plots"
    link = lambda p: os.path.relpath(p, output.parent)  # noqa: E731
    shown = link(results_dir)  # paths as seen from the report, so the text does not depend on the cwd
    command = reproduce_command(suite, results_dir, output)
    env_names = {r["cell_id"]: name for name, recs in environments(records).items() for r in recs}
    marks = {cid: name for cid, name in env_names.items() if name != "E1"}
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
           "do not edit by hand.", "", f"Reproduce (paths relative to the directory of this report): `{command}`",
           "", *environment_lines(records, env_names), ""]
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
            out += [f"### {experiment}", "", *cells_table(recs, marks), "", *lr_view(recs), "",
                    *figures[experiment], "", f"Reproduce: `{command}`", "",
                    *environment_lines(recs, env_names), ""]
    return "\n".join(out), jobs


def reproduce_command(suite: dict, results_dir: Path, output: Path) -> str:
    """The exact `bench run` command, seeds and steps as run, paths relative to the report's directory."""
    where = suite.get("suite_from_out")
    if where and not os.path.isabs(where):
        suite_path = os.path.relpath(results_dir / where, output.parent)
    else:
        suite_path = where or suite["path"]  # older suite.json: the path as given on the command line
    settings = suite["settings"]
    flags = f" --seeds {settings['seeds']}" + (f" --steps {settings['steps']}" if settings.get("steps") else "")
    return f"python -m bench run {suite_path}{flags} --out {os.path.relpath(results_dir, output.parent)}"


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
