"""Results directory -> Markdown report with plots (verdicts first, then the evidence per claim).

The text is a pure function of the directory's records and suite.json, so a
committed report can be checked against the raw results it came from.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from bench.analysis import claims as claims_lib
from bench.analysis import stats
from bench.records import metrics
from bench.records.store import read_results, read_suite
from bench.reports import replication
from bench.reports.figures import median_e2e, plot_jobs, variant
from bench.spec.claim_schema import matches


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
    measured = ("timestamp", "matmul_flops_per_s", "scan_flops_per_s")  # of the run, not of the environment
    return json.dumps({k: v for k, v in env.items() if k not in measured}, sort_keys=True)


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
    if len(shown) == 1 and len(set(names.values())) == 1:
        return [f"Environment: {environment_line(records)}"]
    return ["Environments (rows marked [E2], [E3], ... come from another environment than E1):", ""] + \
        [f"- {name} ({len(recs)} records): {environment_line(recs)}" for name, recs in sorted(shown.items())]


def _ratio(x) -> str:
    return "–" if x is None else "∞" if x == "inf" or x == float("inf") else f"{float(x):.3g}"


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
                     f"{_fmt(s['lr_sensitivity'])} | {s['tuned_lr']:g} | {s['tuned_converged']}/{s['seeds']} | "
                     f"{_fmt(s['tuned_heldout_loss'])} | {_fmt(s['tuned_heldout_metric'])} |")
    return lines


def _answer(name: str, q: dict) -> str:
    """One answer for a table cell: question, verdict (judged) with effect, interval, corrected p, stability."""
    if q.get("p") is None:
        return f"{name}: {q['verdict']} ({q.get('note', '')})"
    if not q["judged"]:
        return f"*{name}: {_effect(q)}, p={q['p']:.2g}*"
    if q["identical"] or "p_adjusted" not in q:
        return f"{name}: {q['verdict']} ({'identical in both arms' if q['identical'] else q.get('note', '')})"
    mark = " ⚠ fragile" if claims_lib.fragile(q) else ""
    text = f"{name}: **{q['verdict']}**{mark}: {_effect(q)}, p={q['p_adjusted']:.2g}, stability {q['stability']:.2f}"
    return text + (f"; {q['note']}" if q.get("note") else "")


def _effect(q: dict) -> str:
    """Effect [95% CI] (x: ratio, +: difference, Δ: difference of rates); marked "≥" / "≤" (or "~", both
    ways) where infinite values made it a bound."""
    kind = "Δ" if q["kind"] == "rate" else "x" if q["log_scale"] else "+"
    return f"{q.get('bound', '')}{kind}{q['effect']:.3g} [{q['ci'][0]:.3g}, {q['ci'][1]:.3g}]"


def _medians(q: dict) -> str:
    if q["kind"] == "rate":
        return ", ".join(f"{k}/{n}" for k, n in zip(q["counts"], q["n"]))
    return ", ".join(_ratio(m) for m in q["median"])


_lr = claims_lib.run_lr


DECISIVE = (claims_lib.SUPPORTED, claims_lib.CONTRADICTED)


def _anchor(title: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return "#" + "".join(c for c in title.lower().replace(" ", "-") if c.isalnum() or c in "-_")


def _judged(claim: dict):
    """(regime, question, answer) of every judged answer of a claim that was tested."""
    return [(x.get("regime") or x["experiment"], name, q) for x in claim["comparisons"]
            for name, q in x["questions"].items() if q["judged"] and q.get("p") is not None]


def _headline(claim: dict) -> str:
    """The answer a claim's verdict rests on most firmly: the stable decisive judged answer with the smallest
    corrected p (else the judged answer with the smallest p), with its interval and seeds."""
    answers = _judged(claim)
    if not answers:
        return "–"
    firm = [a for a in answers if a[2]["verdict"] in DECISIVE and not claims_lib.fragile(a[2])] or answers
    regime, name, q = min(firm, key=lambda a: (a[2].get("p_adjusted", a[2]["p"]), -abs(a[2]["effect_raw"])))
    seeds = "/".join(str(n) for n in dict.fromkeys(q["n"]))
    return f"{regime}, {name} ({q['what'].split(';')[0]}): {_effect(q)}, {seeds} seeds"


def _can_decide(claim: dict, records: list[dict]) -> str:
    """Whether the design can reach a decisive answer: the smallest corrected p its tests can reach with their
    seeds, and how far the claim's baselines explode at initialisation."""
    answers = _judged(claim)
    reach = [(stats.smallest_p(q) * q.get("family", 1)) for _, _, q in answers]
    parts = [f"smallest reachable p {min(reach):.2g}" + (" (cannot reach 0.05)" if min(reach) >= claims_lib.ALPHA
                                                        else "") if reach else "no test"]
    medians = []
    for x in claim["comparisons"]:
        base = [r for r in records if r["experiment"] == x["experiment"] and matches(r["config"], x["baseline"])]
        if base:
            medians.append(median_e2e(base[0], 0.0))
    if medians:
        parts.append(f"baseline e2e ratio at init {_ratio(max(medians))}")
    return "; ".join(parts)


def glance_table(judged: list[dict], records: list[dict]) -> list[str]:
    """One row per claim: the answer, where it holds, the headline number, whether the design can decide it."""
    lines = ["| claim | answer | headline answer (95% CI) | can the design decide? |", "|---|---|---|---|"]
    for c in judged:
        title = f"Claim {c['id']}: {c.get('title', '')}"
        fragile = f" ({len(c['fragile'])} fragile set aside)" if c["fragile"] else ""
        lines.append(f"| [{c['id']}. {c.get('title', '')}]({_anchor(title)}) | **{c['verdict']}**{fragile} | "
                     f"{_headline(c)} | {_can_decide(c, records)} |")
    return lines


def _run_speed(records: list[dict]) -> float | None:
    """Median over an arm's cells of run-steps per second (steps of each real run per second of its program)."""
    speeds = [r["throughput"].get("run_steps_per_s") for r in records]
    speeds = [s for s in speeds if s]
    return float(sorted(speeds)[(len(speeds) - 1) // 2]) if speeds else None


def mitigations_table(judged: list[dict], records: list[dict]) -> list[str]:
    """Per cure comparison (claims that expect `better`), the variant arm beside its baseline: divergences per
    grid point, the largest lr with at most one seed in 16 diverged, trained range, convergence and quality
    at the tuned lr, and run-steps/s relative to the baseline."""
    lines = ["| claim | comparison | arm | diverged of seeds, per lr (low to high) | largest lr with ≤ 1/16 diverged | "
             "trained decades | converged at its fastest lr | tuned held-out loss | run-steps/s vs baseline |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in judged:
        for x in c["comparisons"]:
            if x["expect"] != "better" or "arms" not in x:
                continue
            sides = {"baseline": (x["experiment"], x["baseline"]),
                     "variant": (x.get("variant_experiment") or x["experiment"], x["variant"])}
            speeds = {side: _run_speed([r for r in records if r["experiment"] == e
                                        and matches(r["config"], sel)]) for side, (e, sel) in sides.items()}
            for side in ("baseline", "variant"):
                s = x["arms"][side]
                rates = {lr: d / s["seeds"] for lr, d in zip(s["lrs"], s["diverged"])}
                stable = metrics.largest_stable_lr(rates, 1 / 16)
                relative = "1" if side == "baseline" else \
                    f"{speeds['variant'] / speeds['baseline']:.2f}" if speeds["variant"] and speeds["baseline"] else "–"
                head = f"{c['id']} | {x.get('regime') or x['experiment']}" if side == "baseline" else " | "
                lines.append(f"| {head} | {side}: {_selector(x[side])} | {' '.join(map(str, s['diverged']))} of "
                             f"{s['seeds']} | {'none' if stable is None else f'{stable:g}'} | "
                             f"{_fmt(s['trained_decades'])} | {s['fastest_converged']}/{s['seeds']} at "
                             f"{s['fastest_lr']:g} | {_fmt(s['tuned_heldout_loss'])} at {s['tuned_lr']:g} | "
                             f"{relative} |")
    return lines


def render(results_dir, output) -> tuple[str, dict]:
    """The report's Markdown text for `output`, and the plots it links (path -> job)."""
    results_dir, output = Path(results_dir), Path(output)
    suite = read_suite(results_dir)
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
        exp_jobs = plot_jobs(experiment, recs, plot_dir)
        jobs.update(exp_jobs)
        figures[experiment] = [line for p, job in exp_jobs.items()
                               for line in (f"![{Path(p).stem}]({link(p)})", "", f"*{job[3]}*", "")]

    out = [f"# Results: {suite['name']}", "",
           f"Generated by `python -m bench report {shown}` from `{shown}/results.jsonl`; "
           "do not edit by hand.", "", f"Reproduce (paths relative to the directory of this report): `{command}`",
           "", *environment_lines(records, env_names), ""]
    settings = suite["settings"]
    min_effect = settings.get("min_effect", 1.25)
    t = records[0]["thresholds"]
    out += [f"How to read it (definitions: `docs/METHODS.md` of the gradbench repository). Per seed, a run "
            f"*diverged* at the first step whose loss or gradient norm is non-finite or whose loss exceeds "
            f"{t['divergence_factor']:g} x the task's trivial loss (the best constant predictor's) and twice its "
            f"initial loss; it *collapsed* "
            f"when it finished with a training loss of at least {t['collapse_fraction']:g} x the trivial loss; "
            f"*failed* is either. Explosion is the end-to-end gradient ratio ||dL/dh_first|| / ||dL/dh_last|| "
            f"(input side over output side; below 1: vanishing), at initialisation and during training (per seed, "
            f"the median over the learning rates both arms ran without diverging). Each "
            f"comparison names the questions it is judged on (in bold below); only those enter the claim's "
            f"Holm correction and its verdict, the others (in italics) are descriptive, with an uncorrected p. "
            f"A judged answer gives the effect of the variant against the baseline (x: ratio of Hodges-Lehmann "
            f"medians, +: difference, Δ: difference of rates) with its 95% interval, the p of an exact test over "
            f"seeds corrected within the claim, and its stability: the fraction of {stats.N_STABILITY} "
            f"resamples of the seeds that give the same answer ('no detectable effect' and 'not supported' "
            f"alike: both exclude the claimed effect). It is decisive only when p < "
            f"{claims_lib.ALPHA:g} and the effect reaches the minimum effect ({min_effect:g}x, or a difference "
            f"of {claims_lib.MIN_RATE_EFFECT:g} in a rate); an answer with a stability under "
            f"{claims_lib.STABLE:g} is fragile (⚠) and no verdict rests on it.", ""]
    judged = claims_lib.verdicts(suite["claims"], records, min_effect=min_effect) if suite["claims"] else []
    if judged:
        out += ["## Answers at a glance", "", *glance_table(judged, records), "",
                "## Mitigations", "", "Every comparison whose claim expects the variant to be better, its arms "
                "side by side (diverged seeds at each learning rate of the grid; the tuned learning rate is the "
                "one with the lowest median validation loss).", "", *mitigations_table(judged, records), "",
                "## Caveats", "", *caveats(t, replication.lines(results_dir, judged)), ""]
        out += ["## Verdicts", "", "| claim | verdict | comparison | judged answers | descriptive |",
                "|---|---|---|---|---|"]
        for c in judged:
            for i, x in enumerate(c["comparisons"]):
                head = f"{c['id']}. {c.get('title', '')} | **{c['verdict']}**" if i == 0 else " | "
                qs = x["questions"]
                shown = lambda judged: "<br>".join(_answer(n, q) for n, q in qs.items()  # noqa: E731
                                                   if q["judged"] == judged) or "–"
                out.append(f"| {head} | {x.get('regime') or x['experiment']} | {shown(True)} | {shown(False)} |")
        out += ["", "A claim's verdict follows from its judged answers that are not fragile: decisive answers "
                "that all agree give it; answers that disagree give `depends`, naming which regime and question "
                "gave which; with no decisive answer it is `inconclusive` if any answer is (or only fragile ones "
                "are decisive), else `not supported` if an answer's interval excludes the claimed effect, else "
                "`no detectable effect`.", ""]
        for claim in judged:
            out += claim_section(claim, by_experiment)
        out += ["## Appendix: experiments", "", "Each experiment once: every arm over its grid, every cell, "
                "the figures.", ""]
    for experiment, recs in by_experiment.items():
        level = "###" if judged else "##"
        out += [f"{level} Experiment: {experiment}", "", *arms_table(recs), "",
                "<details><summary>every cell</summary>", "", *cells_table(recs, marks), "", "</details>", "",
                *figures[experiment]]
        if len(environments(records)) > 1:
            out += [*environment_lines(recs, env_names), ""]
    return "\n".join(out), jobs


def claim_section(claim: dict, by_experiment: dict) -> list[str]:
    """A claim's evidence: its text, every answer with its test, corrections and stability, its arms."""
    out = [f"## Claim {claim['id']}: {claim.get('title', '')}", ""]
    if claim.get("text"):
        out += [claim["text"], ""]
    if claim.get("note"):
        out += [f"*Reading it:* {claim['note']}", ""]
    family = max((q.get("family", 0) for x in claim["comparisons"] for q in x["questions"].values()), default=0)
    out += [f"Judged on: {', '.join(dict.fromkeys(q for x in claim['comparisons'] for q in x['judged']))}; "
            f"{family} distinct judged tests in the claim's Holm family.", ""]
    if claim["fragile"]:
        out += ["Set aside as fragile: " + "; ".join(claim["fragile"]) + ".", ""]
    out += ["| comparison | baseline | variant | claim expects variant | question | measured | medians "
            "(baseline, variant) | effect [95% CI] | test | p | p (Holm, claim) | q (FDR, suite) | "
            "stability | verdict |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in claim["comparisons"]:
        for name, q in x["questions"].items():
            effect = "–" if q.get("effect") is None else _effect(q)
            p = "–" if q.get("p") is None else f"{q['p']:.2g}"
            adjusted = " | ".join(f"{q[k]:.2g}" if k in q else "–" for k in ("p_adjusted", "q_suite"))
            stability = f"{q['stability']:.2f}" if "stability" in q else "–"
            verdict = q["verdict"] + (" ⚠ fragile" if claims_lib.fragile(q) else "") + \
                (" (identical in both arms)" if q.get("identical") else "")
            what = q["what"] + (f"; {q['remark']}" if q.get("remark") else "")
            out.append(f"| {x.get('regime') or x['experiment']} | {_selector(x['baseline'])} | "
                       f"{_selector(x['variant'])} | {x['expect']} | {name} | {what} | {_medians(q)} | "
                       f"{effect} | {q.get('test', '–')} | {p} | {adjusted} | {stability} | {verdict} |")
    out.append("")
    sides = [(x["experiment"], x["baseline"]) for x in claim["comparisons"]] + \
        [(x.get("variant_experiment") or x["experiment"], x["variant"]) for x in claim["comparisons"]]
    for experiment in dict.fromkeys(e for e, _ in sides):
        selectors = [s for e, s in sides if e == experiment]
        recs = [r for r in by_experiment[experiment] if any(matches(r["config"], s) for s in selectors)]
        title = f"Experiment: {experiment}"
        out += [f"Arms of [{experiment}]({_anchor(title)}):", "", *arms_table(recs), ""]
    return out


def caveats(thresholds: dict, rerun: list[str]) -> list[str]:
    """What a reader needs to judge the answers: what the outcomes mean, the family, what a rerun changes."""
    return [
        f"- *Trained* means neither diverged (a non-finite loss or gradient, or a loss above "
        f"{thresholds['divergence_factor']:g} x the trivial loss and twice the initial one) nor collapsed (a final "
        f"training loss of at least {thresholds['collapse_fraction']:g} x the trivial loss: too slow for the budget, "
        f"or back to chance). Divergence is instability; collapse is not. The divergence-free learning rate counts "
        f"divergence only, the critical learning rate both.",
        "- Each claim is its own family: its judged answers are Holm-corrected together (each distinct test once), "
        "so a claim with more judged comparisons needs smaller p-values. The q-value over the whole table "
        "(Benjamini-Hochberg) is in the per-claim tables for a reader who treats the table as one family.",
        "- Descriptive answers (italics) are not corrected and decide nothing.",
        "- A fragile answer (⚠, reproduced by fewer than 80% of resamples of its seeds) is where reruns on other "
        "seeds or machines are expected to disagree; no verdict rests on one.",
        "- The task sizes are those of a 2-core CPU run; `claims_large.toml` asks the same questions at "
        "accelerator scale.",
        *rerun,
    ]


def reproduce_command(suite: dict, results_dir: Path, output: Path) -> str:
    """The exact `bench run` command, seeds and steps as run, paths relative to the report's directory."""
    where = suite.get("suite_from_out")
    if where and not os.path.isabs(where):
        suite_path = os.path.relpath(results_dir / where, output.parent)
    else:
        suite_path = where or suite["path"]  # older suite.json: the path as given on the command line
    settings, experiments = suite["settings"], suite.get("experiments") or []
    # --seeds/--steps set every experiment's: given only where every experiment ran with the suite's value
    # (as after such an override); a suite whose experiments set their own reruns as it is.
    flags = "".join(f" --{key} {settings[key]}" for key in ("seeds", "steps") if settings.get(key)
                    and all(e.get(key, settings[key]) == settings[key] for e in experiments))
    return f"python -m bench run {suite_path}{flags} --out {os.path.relpath(results_dir, output.parent)}"


def _selector(selector: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in selector.items())


def render_all(results_dirs: list, output) -> tuple[str, dict]:
    """The report of the first directory, then each further one as a section "Beyond the article: NAME"."""
    text, jobs = render(results_dirs[0], output)
    for extra in results_dirs[1:]:
        more, more_jobs = render(extra, output)
        lines = more.splitlines()
        title = lines[0].removeprefix("# Results: ")
        demoted = ["#" + line if line.startswith("#") else line for line in lines[1:]]
        text += "\n\n" + "\n".join([f"## Beyond the article: {title}", *demoted])
        jobs.update(more_jobs)
    return text, jobs


def write(results_dir, output=None, also=()) -> Path:
    """Writes the report (default DIR/REPORT.md) and its plots; returns the report's path.

    `also`: further results directories, appended as sections "Beyond the article: NAME".
    """
    from bench.records.store import atomic_write

    output = Path(output or Path(results_dir) / "REPORT.md")
    text, jobs = render_all([results_dir, *also], output)
    for directory in (results_dir, *also):
        Path(directory, "plots").mkdir(parents=True, exist_ok=True)
    for path, (fn, data, title, _caption) in jobs.items():
        fn(data, path, title)
    atomic_write(output, text + "\n")
    return output
