"""The claims' verdicts as Markdown: one quotable row per (sub-)claim, the forest plot of the primary effects,
the mitigations side by side, and (folded) each claim's design and evidence."""
from __future__ import annotations

import functools
import math

from gradbench.analysis import claims as claims_lib
from gradbench.reports import plots
from gradbench.reports.tables import _fmt, _selector, arms_table
from gradbench.spec.claim_schema import matches

GLANCE = "## Answers at a glance"  # the heading of the first page's table, one row per claim
FINDING_MAX = 320  # characters of a first-page finding
VERDICT_MAX = 40  # characters of a first-page verdict cell
FOREST = "forest.png"
REACH = "reach.png"



def anchor(title: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return "#" + "".join(c for c in title.lower().replace(" ", "-") if c.isalnum() or c in "-_")


def _number(x: float, ratio: bool) -> str:
    return f"x{_fmt(x)}" if ratio else _fmt(x, sign="+")


def effect_text(q: dict) -> str:
    """The effect of the variant against the baseline with its 95% interval: x a ratio, Δ a difference of shares,
    + or - a difference. A bound (infinite values in an arm, a median seed censored at the grid's end) is marked
    ≥ or ≤ (~: both ways), and its interval has no end on the open side (…); an interval with no spread says so
    instead of printing [x, x]; a grid measure's effect is said in grid steps."""
    if q.get("effect") is None:
        return "–"
    if q.get("kind") == "rate":
        return f"Δ{q['effect']:+.2f} [{q['ci'][0]:+.2f}, {q['ci'][1]:+.2f}]"
    ratio = q["log_scale"]
    if q.get("every_seed") and ratio:  # an arm all 0 or all infinite: the ratio is 0 or infinite, no interval
        arm, value = q["every_seed"]
        return f"x{'∞' if _infinite_ratio(q) else '0'} (every {arm} seed {value})"
    text = q.get("bound", "") + _number(q["effect"], ratio) + q.get("unit", "")
    low, high = q["ci"]
    if "grid_step" in q and ratio and q["effect"] > 0:
        steps = math.log(q["effect"]) / math.log(q["grid_step"])
        if abs(steps - round(steps)) < 1e-6 and round(steps) != 0:
            n = abs(round(steps))
            text += f" ({'at least ' if q.get('bound') else ''}{n} grid step{'s' if n > 1 else ''})"
    bound = q.get("bound", "")
    if bound == "~":
        return text + " (open both ways)"
    if math.isclose(low, high, rel_tol=1e-12, abs_tol=0.0) and not bound:
        return text + ", the same on every resample of seeds"
    ends = [_number(low, ratio).lstrip("x+"), _number(high, ratio).lstrip("x+")]
    if bound:  # the side a bound leaves open has no end
        ends[1 if bound == "≥" else 0] = "…"
    return text + f" [{ends[0]}, {ends[1]}]"


def verdict_cell(c: dict) -> str:
    """The verdict in at most VERDICT_MAX characters: the word, and for an unsettled one the way it leans."""
    if c["verdict"] == claims_lib.UNSETTLED and c["leans"]:
        return f"**unsettled** (leans {c['leans']})"
    return f"**{c['verdict']}**"


def agreement(c: dict) -> str:
    """The replicate blocks' words beside the pooled one."""
    blocks = [b["word"] for b in c["primary"].get("blocks", [])]
    if c["primary"]["word"] == claims_lib.DEGENERATE:
        return "–"
    if len(blocks) < 2:
        return "one block: not replicated"
    same = sum(b == c["primary"]["word"] for b in blocks)
    word = c["primary"]["word"]
    pooled = "" if same == len(blocks) else " also unsettled" if word == claims_lib.UNSETTLED \
        else f" give the pooled {word}"
    return f"{same} of {len(blocks)} blocks{pooled}: " + ", ".join(blocks)


def _medians(q: dict) -> str:
    """Both arms' medians (shares reaching for a rate; raw gradient ratios behind a distance)."""
    if q.get("kind") == "rate":
        return " vs ".join(f"{k}/{n}" for k, n in zip(q["counts"], q["n"]))
    medians = q.get("ratio_median") or q.get("median") or []
    return " -> ".join("–" if m is None else _fmt(m) for m in medians)


def _direction(q: dict) -> str:
    """What a gradient answer says beyond its word: explosion or vanishing of the variant."""
    ratios = q.get("ratio_median")
    if not ratios or None in ratios:
        return ""
    base, var = ratios
    if var < 1 / 1.25 and (q["measure"] == "gradient" and var < base or
                           q["measure"] == "gradient_distance" and 1 / var >= max(base, 1 / base)):
        return " (vanishing)"
    return " (explosion)" if var > 1.25 and var > base else ""


def finding(c: dict) -> str:
    """The first page's finding: the primary measure, both arms' medians, the effect with its interval and
    seeds, at most FINDING_MAX characters."""
    q = c["primary"]
    if q["word"] == claims_lib.DEGENERATE and q.get("effect") is None:
        text = f"degenerate: {q['reason']}"
    else:
        seeds = "/".join(str(n) for n in dict.fromkeys(q["n"]))
        text = (f"{q['label'] + ': ' if q.get('label') else ''}{q['what']}: {_medians(q)}{_direction(q)}; "
                f"{effect_text(q)}, p={q['p']:.2g}, {seeds} seeds")
        if q["word"] == claims_lib.DEGENERATE:
            text = f"degenerate: {q['reason']}; {text}"
        elif q["measure"] not in claims_lib.LEARNING and "arms" in q and \
                not any(sum(a["reached"]) for a in q["arms"].values()):
            text += "; neither arm reaches the target at any learning rate"
    text = text if len(text) <= FINDING_MAX else text[:FINDING_MAX - 1] + "…"
    return cell(text)


def cell(text: str) -> str:
    """Text for a Markdown table cell: a "|" of its own escaped."""
    return text.replace("|", "\\|")


def glance_table(judged: list[dict]) -> list[str]:
    """One row per (sub-)claim: the verdict word, the finding and the replicate blocks' agreement."""
    lines = ["| claim | verdict | finding (primary question) | replicate blocks |", "|---|---|---|---|"]
    for c in judged:
        title = f"Claim {c['id']}: {c['title']}"
        lines.append(f"| [{c['id']}. {c['title']}]({anchor(title)}) | {verdict_cell(c)} | {finding(c)} | "
                     f"{agreement(c)} |")
    return lines


def _infinite_ratio(q: dict) -> bool:
    """Whether an effect whose arm is all 0 or all infinite (`every_seed`) is an infinite ratio (else 0)."""
    arm, value = q["every_seed"]
    return (value == "∞") == (arm == "variant")


def _scaled_effect(q: dict, scale):
    """An effect in margins; an infinite ratio (an arm all 0 or all infinite) at infinity, drawn at the edge."""
    if q.get("every_seed") and q.get("log_scale"):
        return scale(math.inf if _infinite_ratio(q) else -math.inf)
    return scale(q.get("effect_raw"))


def forest_job(judged: list[dict], plot_dir) -> dict:
    """The forest plot of the primary effects, in margins, oriented so that right is what each claim says."""
    rows = []
    for c in judged:
        q = c["primary"]
        scale = lambda x, q=q: None if x is None else q["expected_sign"] * x / q["margin"]  # noqa: E731
        if q.get("effect_raw") is None or "margin" not in q:
            rows.append({"label": f"{c['id']}. {c['title']}", "effect": None})
            continue
        low, high = sorted(scale(x) for x in q["ci_raw"])
        effect = _scaled_effect(q, scale)
        if q.get("every_seed") and q["log_scale"]:
            low = high = effect
        bound = q.get("bound", "")
        if bound in ("≥", "≤") and q["expected_sign"] < 0:  # oriented so that right is as the claim says
            bound = "≤" if bound == "≥" else "≥"
        rows.append({"label": f"{c['id']}. {c['title']}"[:60], "effect": effect, "low": low,
                     "high": high, "bound": bound,
                     "blocks": [_scaled_effect({**b, "log_scale": q["log_scale"]}, scale)
                                for b in q.get("blocks", [])]})
    path = str(plot_dir / FOREST)
    return {path: (functools.partial(plots.forest), rows, "Primary effects, in margins",
                   "Each claim's primary effect (dot; a triangle for a bound, pointing the way it is open) and "
                   "95% interval in units of its margin (a ratio of 1.25, a difference of 0.25 in a share, one "
                   "grid step for a range of learning rates), right when the variant does what the claim says; "
                   "the grey band is the margin (negligible inside it); blue ticks are the replicate blocks' "
                   "estimates. The axis ends at 8 margins: an effect or interval end beyond it (an infinite ratio "
                   "included) is drawn at the edge with an arrow.")}


def reach_job(judged: list[dict], plot_dir) -> dict:
    """One panel per claim whose primary question is about learning: the share of seeds reaching the target
    against the learning rate, baseline against variant, each arm's tuned learning rate marked."""
    panels = []
    for c in judged:
        q = c["primary"]
        if q["measure"] in claims_lib.LEARNING and "arms" in q:
            arms = {side: (s["lrs"], [k / s["seeds"] for k in s["reached"]], s["tuned_lr"])
                    for side, s in q["arms"].items()}
            panels.append((f"{c['id']}. {q.get('label') or c['title']}", arms))
    if not panels:
        return {}
    return {str(plot_dir / REACH): (functools.partial(plots.reach_panels), panels, "Seeds reaching the target",
                                    "Per claim whose primary question is about learning, the share of seeds that "
                                    "reach the target at each learning rate, baseline (dashed) against variant; "
                                    "the marks on the axis are each arm's tuned learning rate.")}


def _arm(q: dict, side: str) -> str:
    """An arm's selector, with the experiment it comes from where the two arms come from different ones."""
    other = q.get("variant_experiment")
    where = f" (experiment {q['experiment'] if side == 'baseline' else other})" if other else ""
    return cell(_selector(q[side]) + where)


def mitigations_table(judged: list[dict]) -> list[str]:
    """Per cure (a claim that expects the variant to be better), its primary arms side by side at each arm's
    tuned learning rate: diverged and reaching the target of the seeds, median steps to the target, the width
    of the learning rates where at least half reach it, and run-steps/s against the baseline's."""
    lines = ["| claim | arm | gradient ratio at init | tuned lr | diverged | reach the target | median steps to "
             "it | lr range where half reach it (decades) | run-steps/s vs baseline |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in judged:
        q = c["primary"]
        if q["expect"] != "better" or "arms" not in q:
            continue
        base_speed = q["arms"]["baseline"]["run_steps_per_s"]
        for side in ("baseline", "variant"):
            s = q["arms"][side]
            speed = s["run_steps_per_s"]
            relative = "1" if side == "baseline" else f"{speed / base_speed:.2f}" if speed and base_speed else "–"
            steps = "never" if not math.isfinite(s["tuned_steps"]) else _fmt(s["tuned_steps"])
            lines.append(f"| {c['id'] if side == 'baseline' else ''} | {side}: {_arm(q, side)} | "
                         f"{_fmt(s['e2e_init'])} | {_fmt(s['tuned_lr'])} | {s['tuned_diverged']}/{s['seeds']} | "
                         f"{s['tuned_reached']}/{s['seeds']} "
                         f"| {steps} | {_fmt(s['reach_decades'])} | {relative} |")
    return lines


def _question_row(name: str, q: dict) -> str:
    what = cell(q.get("what", "–"))
    p = f"{q['p']:.2g}" if q.get("p") is not None else "–"
    word = q["word"] + (f" ({q['reason']})" if q.get("reason") else "")
    return (f"| {name} | {_arm(q, 'baseline')} | {_arm(q, 'variant')} | {q['expect']} | {what} | "
            f"{_medians(q) if 'n' in q and q.get('median') is not None else '–'} | {effect_text(q)} | "
            f"{q.get('test', '–')} | {p} | {word} |")


def claim_section(claim: dict, by_experiment: dict) -> list[str]:
    """A claim's design and evidence: its question and rationale, the primary answer pooled and per replicate
    block, the secondary answers, and the arms."""
    q = claim["primary"]
    out = [f"### Claim {claim['id']}: {claim['title']}", "",
           f"**Question (pre-registered):** {claim['question']}", "", f"**Rationale:** {claim['rationale']}", ""]
    if claim.get("note"):
        out += [f"*Reading it:* {claim['note']}", ""]
    out += [f"**Verdict:** {verdict_cell(claim)}; replicate blocks: {agreement(claim)}.", "",
            "| question | baseline | variant | claim expects variant | measured | medians (baseline, variant) | "
            "effect [95% CI] | test | p | answer |", "|---|---|---|---|---|---|---|---|---|---|"]
    out.append(_question_row("primary, pooled", q))
    for i, b in enumerate(q.get("blocks", [])):
        out.append(_question_row(f"primary, block {i}", {**q, **b}))
    for s in claim["secondary"]:
        out.append(_question_row(f"secondary: {s.get('label') or s['measure']}", s))
    out.append("")
    sides = [(x["experiment"], x["baseline"]) for x in (q, *claim["secondary"])] + \
        [(x.get("variant_experiment") or x["experiment"], x["variant"]) for x in (q, *claim["secondary"])]
    for experiment in dict.fromkeys(e for e, _ in sides):
        selectors = [s for e, s in sides if e == experiment]
        recs = [r for r in by_experiment.get(experiment, []) if any(matches(r["config"], s) for s in selectors)]
        if recs:
            title = f"Experiment: {experiment}"
            out += [f"Arms of [{experiment}]({anchor(title)}):", "", *arms_table(recs), ""]
    return out


def how_to_read(min_effect: float, thresholds: dict) -> list[str]:
    """The vocabulary and the rule, one definition each (docs/METHODS.md, "Claims")."""
    return [
        "Effects: x a ratio (variant over baseline, Hodges-Lehmann), Δ a difference of shares of seeds, + or - a "
        "difference (in the unit named); ≥ or ≤ mark a bound, where infinite values (a seed that never reached "
        "the target, a diverged one) or a seed censored at the grid's end leave one side open (its interval end "
        "printed …).",
        "",
        "Each claim asks one pre-registered primary question in its own regime; its answer is one word, from the "
        f"effect's 95% interval, a rank test (p < {claims_lib.ALPHA:g}; exact, or from random sign patterns where "
        f"the seeds are many) and a margin, the smallest effect that matters ({min_effect:g}x for a ratio, "
        f"{claims_lib.MIN_RATE_EFFECT:g} for a difference of shares, one grid step for a range of learning rates, "
        f"{(min_effect - 1) * claims_lib.LOSS_MARGIN:g} x the trivial loss for a difference of losses):",
        "",
        "- **yes**: detected, as the claim says, at least the margin;",
        "- **opposite**: detected, the other way, at least the margin;",
        "- **negligible**: the whole interval inside the margin both ways, detected or not;",
        "- **no**: the claimed effect of the margin's size is excluded, and neither of the above;",
        "- **unsettled**: none of these;",
        "- **degenerate**: the comparison cannot be made (an arm that fails on every seed at every learning "
        "rate, neither arm reaching the target anywhere for a measure of learning, both arms censored at one "
        "end of the grid, fewer than half the seeds reaching the target for steps).",
        "",
        "The suite runs its seeds as independent replicate blocks (seeds of their own and, past the first, every "
        "initial parameter x (1 + 1e-6 x N(0, 1))). A verdict is settled only when every block answers as the "
        "pooled seeds do; otherwise it is **unsettled** and leans to the pooled word. *Reaching the target* "
        f"means the smoothed training loss fell to the task's target and the run did not diverge (a loss above "
        f"{thresholds['divergence_factor']:g} x the trivial loss, or not finite); a seed that never reaches it is "
        "never given a finite number of steps. Explosion is the end-to-end gradient ratio ||dL/dh_first|| / "
        "||dL/dh_last|| (below 1: vanishing); an underflowed gradient is no value, never explosion.",
        "",
    ]


def sections(judged: list[dict], by_experiment: dict, thresholds: dict, min_effect: float, plot_dir,
             link) -> tuple[list[str], dict]:
    """The report's part on the claims: the glance table, the forest plot, the mitigations, then (folded) each
    claim's design and evidence; and the forest plot's job."""
    job = forest_job(judged, plot_dir)
    path, (_fn, _rows, _title, caption) = next(iter(job.items()))
    out = [GLANCE, "", *how_to_read(min_effect, thresholds), *glance_table(judged), "",
           "## Primary effects", "", f"![forest]({link(path)})", "", f"*{caption}*", "",
           "## Mitigations", "", "Each cure's primary arms side by side, each at its own tuned learning rate (the "
           "lowest median validation loss).", "", *mitigations_table(judged), ""]
    reach = reach_job(judged, plot_dir)
    for path, (_fn, _data, _title, caption) in reach.items():
        out += [f"![reach]({link(path)})", "", f"*{caption}*", ""]
    job.update(reach)
    out += ["## Claims: design and evidence", "", "<details><summary>each claim's question, rationale, primary "
            "answer per replicate block, secondary answers and arms</summary>", ""]
    for claim in judged:
        out += claim_section(claim, by_experiment)
    out += ["</details>", ""]
    return out, job
