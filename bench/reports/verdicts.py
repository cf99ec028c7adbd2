"""The claims' verdicts as Markdown: the one-row-per-claim table, the mitigations side by side, the caveats,
the verdicts table and each claim's evidence."""
from __future__ import annotations

from bench.analysis import claims as claims_lib
from bench.analysis import stats
from bench.records import metrics
from bench.reports.figures import median_e2e
from bench.reports.tables import _fmt, _ratio, _selector, arms_table
from bench.spec.claim_schema import matches


def _answer(name: str, q: dict) -> str:
    """One answer for a table cell: question, verdict (judged) with effect, interval, corrected p, stability."""
    if q.get("p") is None:
        return f"{name}: {q['verdict']} ({q.get('note', '')})"
    if not q["judged"]:
        return f"*{name}: {effect_text(q)}, p={q['p']:.2g}*"
    if q["identical"] or "p_adjusted" not in q:
        return f"{name}: {q['verdict']} ({'identical in both arms' if q['identical'] else q.get('note', '')})"
    mark = " ⚠ fragile" if claims_lib.fragile(q) else ""
    text = (f"{name}: **{q['verdict']}**{mark}: {effect_text(q)}, p={q['p_adjusted']:.2g}, "
            f"stability {q['stability']:.2f}")
    return text + (f"; {q['note']}" if q.get("note") else "")


def effect_text(q: dict) -> str:
    """Effect [95% CI] (x: ratio, a signed number: difference, Δ: difference of rates); marked "≥" / "≤" (or "~", both
    ways) where infinite values made it a bound."""
    effect = (f"Δ{q['effect']:.3g}" if q["kind"] == "rate" else f"x{q['effect']:.3g}" if q["log_scale"]
              else f"{q['effect']:+.3g}")
    return f"{q.get('bound', '')}{effect} [{q['ci'][0]:.3g}, {q['ci'][1]:.3g}]"


def _medians(q: dict) -> str:
    if q["kind"] == "rate":
        return ", ".join(f"{k}/{n}" for k, n in zip(q["counts"], q["n"]))
    return ", ".join(_ratio(m) for m in q["median"])


DECISIVE = (claims_lib.SUPPORTED, claims_lib.CONTRADICTED)
GLANCE = "## Answers at a glance"  # the heading of the first page's table, one row per claim


def anchor(title: str) -> str:
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
    mark = " ⚠ fragile" if claims_lib.fragile(q) else ""
    return f"{regime}, {name} ({q['what'].split(';')[0]}): {effect_text(q)}{mark}, {seeds} seeds"


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
        lines.append(f"| [{c['id']}. {c.get('title', '')}]({anchor(title)}) | **{c['verdict']}**{fragile} | "
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
            effect = "–" if q.get("effect") is None else effect_text(q)
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
        out += [f"Arms of [{experiment}]({anchor(title)}):", "", *arms_table(recs), ""]
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


def sections(judged: list[dict], records: list[dict], by_experiment: dict, thresholds: dict,
             rerun: list[str]) -> list[str]:
    """The report's part on the claims: answers at a glance, mitigations, caveats, verdicts, each claim."""
    out = [GLANCE, "", *glance_table(judged, records), "",
           "## Mitigations", "", "Every comparison whose claim expects the variant to be better, its arms "
           "side by side (diverged seeds at each learning rate of the grid; the tuned learning rate is the "
           "one with the lowest median validation loss).", "", *mitigations_table(judged, records), "",
           "## Caveats", "", *caveats(thresholds, rerun), ""]
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
            "gave which; with no decisive answer it is `inconclusive` if any answer is, or if a fragile answer "
            "would have decided (set aside), else `not supported` if an answer's interval excludes the claimed "
            "effect, else `no detectable effect`.", ""]
    for claim in judged:
        out += claim_section(claim, by_experiment)
    return out
