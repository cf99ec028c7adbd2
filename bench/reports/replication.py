"""A perturbed rerun's answers kept beside the results it replicates (`bench replicate`), and what the report
says of them: which judged answers and claim verdicts came out differently."""
from __future__ import annotations

import math
from pathlib import Path

from bench.analysis import claims as claims_lib
from bench.records.store import read_replication
from bench.reports.verdicts import effect_text

FILE = "replication.json"
EFFECT_KEYS = ("effect", "ci", "kind", "log_scale", "bound")  # what the report needs to print an answer's effect


def _verdict_word(verdict: str) -> str:
    """A claim verdict without the regimes a "depends" names."""
    return verdict.split(":", 1)[0]


def lines(results_dir: Path, judged: list[dict]) -> list[str]:
    """How many answers and verdicts a perturbed rerun (`bench replicate`) gave differently, if one is recorded,
    which of the differing answers either run marked fragile, and how many of the rerun's effects lie inside
    this run's intervals."""
    path = results_dir / FILE
    if not path.exists():
        return ["- No replication run is recorded beside these results (`python -m bench replicate`)."]
    other = read_replication(path)  # validated: StoreError (one line naming the key) if it is not one
    answers = {(a["claim"], a["comparison"], a["question"]): a for a in other["answers"]}
    mine = {(c["id"], i, name): q for c in judged for i, x in enumerate(c["comparisons"])
            for name, q in x["questions"].items() if q["judged"]}
    differ = [k for k, q in mine.items() if k in answers and answers[k]["verdict"] != q["verdict"]]
    # Same label, but fragile in one run only: a verdict that rests on the answer can change with it.
    refragile = [k for k, q in mine.items() if k in answers and k not in differ
                 and claims_lib.fragile(q) != claims_lib.fragile(answers[k])]
    both = [k for k, q in mine.items() if _finite(q.get("effect")) and _finite(answers.get(k, {}).get("effect"))]
    inside = [k for k in both if _inside(answers[k]["effect"], mine[k].get("ci"))]
    warned = [k for k in differ if claims_lib.fragile(mine[k]) or claims_lib.fragile(answers[k])]
    verdicts = {c["claim"]: c["verdict"] for c in other["claims"]}
    changed = [c for c in judged if verdicts.get(c["id"], c["verdict"]) != c["verdict"]]
    words = [c for c in changed if _verdict_word(verdicts[c["id"]]) != _verdict_word(c["verdict"])]
    out = [f"- A rerun with every initial parameter multiplied by 1 + {other['init_perturbation']:g} x N(0, 1) "
             f"(imitating another machine's rounding; {other['cells']} cells): {len(differ)} of {len(mine)} judged "
             f"answers differ from these ({len(warned)} of them marked fragile in one run or both), and "
             f"{len(changed)} of {len(judged)} claim verdicts ({len(words)} in the verdict itself, "
             f"{len(changed) - len(words)} only in which regimes a \"depends\" names)."]
    if refragile:
        kept = "answer keeps its label" if len(refragile) == 1 else "answers keep their label"
        out[0] += f" {len(refragile)} more {kept} but {'is' if len(refragile) == 1 else 'are'} fragile in one run only."
    if both:
        out[0] += (f" The rerun's effect lies inside this run's 95% interval in {len(inside)} of the {len(both)} "
                   "answers both runs could estimate.")
    for key in differ + refragile:
        claim, comparison, question = key
        x = next(c for c in judged if c["id"] == claim)["comparisons"][comparison]
        here, there = (_answer(a) for a in (mine[key], answers[key]))
        label = (f"{mine[key]['verdict']} here{here}, {answers[key]['verdict']} there{there}" if key in differ
                 else f"{mine[key]['verdict']} in both, here{here}, there{there}")
        out.append(f"  - claim {claim}, {x.get('regime') or x['experiment']}, {question}: {label}")
    for c in changed:
        out.append(f"  - claim {c['id']}'s verdict: {c['verdict']} here; {verdicts[c['id']]} there")
    return out


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def _inside(effect: float, ci) -> bool:
    """Whether an effect lies inside a 95% interval (ends included, to rounding)."""
    return ci is not None and (ci[0] <= effect <= ci[1] or any(math.isclose(effect, end, rel_tol=1e-9) for end in ci))


def _answer(a: dict) -> str:
    """A judged answer's " (effect [95% CI], stability S)", as much of it as is known."""
    parts = [effect_text(a)] if a.get("effect") is not None and "kind" in a else []
    parts += [f"stability {a['stability']:.2f}"] if a.get("stability") is not None else []
    return f" ({', '.join(parts)})" if parts else ""


def record(judged: list[dict], records: list[dict], init_perturbation: float) -> dict:
    """What `bench replicate` keeps of a rerun: its judged answers (with their effect, interval and stability)
    and claim verdicts."""
    return {"init_perturbation": init_perturbation, "cells": len(records),
            "claims": [{"claim": c["id"], "verdict": c["verdict"]} for c in judged],
            "answers": [{"claim": c["id"], "comparison": i, "question": name, "verdict": q["verdict"],
                         "stability": q.get("stability"), **{k: q.get(k) for k in EFFECT_KEYS if k in q}}
                        for c in judged for i, x in enumerate(c["comparisons"])
                        for name, q in x["questions"].items() if q["judged"]]}
