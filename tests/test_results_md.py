"""RESULTS.md is generated: it must equal the report of the committed raw results it came from."""
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from gradbench.analysis import claims
from gradbench.records import env, store
from gradbench.reports import report
from gradbench.reports import verdicts
from gradbench.reports.verdicts import anchor
from gradbench.spec.claim_schema import matches

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results" / "claims"
BEYOND = ROOT / "results" / "transformer_stability"


def test_results_md_matches_the_committed_results():
    if not (RESULTS / "results.jsonl").exists():
        pytest.fail("results/claims/results.jsonl is missing: run `gradbench run --out results/claims`")
    text, plots = report.render_all([RESULTS, BEYOND], ROOT / "RESULTS.md")
    assert (ROOT / "RESULTS.md").read_text() == text + "\n", (
        "RESULTS.md is stale: run `gradbench report results/claims --also results/transformer_stability "
        "--output RESULTS.md`")
    for path in plots:
        assert Path(path).exists(), f"{path} is linked from RESULTS.md but missing"


def test_the_first_page_is_one_quotable_row_per_claim():
    text = (ROOT / "RESULTS.md").read_text()
    glance = text.split(verdicts.GLANCE, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in glance.splitlines() if line.startswith("| [")]
    assert len(rows) == 17 + 8 and text.count(verdicts.GLANCE) == 1  # the article's 17 (sub-)claims, T1-T7b's 8
    headings = {anchor(line.lstrip("#").strip()) for line in text.splitlines() if line.startswith("#")}
    for row in rows:
        _, claim, verdict, finding, blocks, _ = [c.strip() for c in re.split(r"(?<!\\)\|", row)]
        assert claim.split("](", 1)[1].rstrip(")") in headings
        assert len(verdict) <= verdicts.VERDICT_MAX and verdict.split("**")[1] in claims.WORDS, verdict
        assert len(finding) <= verdicts.FINDING_MAX
        # no interval of zero width printed as one, and no censored value printed as a point
        for low, high in re.findall(r"\[([-+0-9.e]+), ([-+0-9.e]+)\]", finding):
            assert low != high, finding
        assert "censored" not in finding or finding.startswith("degenerate"), finding
        assert blocks.startswith(("2 of 2 blocks", "1 of 2 blocks", "0 of 2 blocks", "–")), blocks


# The committed results are checked by reproduction, not by the hash of the code that made them: a refactor that
# changes no number needs no regeneration, and one that does is caught. The cheapest whole compiled programs
# (all the cells that trained together, so the rerun is the same program whatever the engine's batching) of each
# committed suite are rerun at HEAD; every per-seed value must come back bit for bit.
PROGRAMS_RERUN = {RESULTS: 1, BEYOND: 1}  # 5-10 s each on 2 idle CPU cores (compile included), 20-30 s loaded
NUMERIC = ("jax", "jaxlib", "numpy")  # the libraries whose rounding the numbers are
MACHINE = ("backend", "device_kind", "cpu")
OUTCOMES = ("diverged", "divergence_step", "steps_to_converge", "collapsed", "trained", "skipped_steps", "seed")


def cheapest_programs(records: list[dict], count: int) -> list[list[dict]]:
    """The `count` programs of the records that cost least to rerun (recorded compile seconds plus steps over
    steps/s), ties by their first cell id."""
    from gradbench.reports.export import programs

    def cost(cells):
        t = cells[0]["throughput"]
        return (t["compile_s"] + max(c["config"]["steps"] for c in cells) / t["steps_per_s"], cells[0]["cell_id"])

    return sorted(programs(records), key=cost)[:count]


def _same_numbers(recorded: dict, rerun: dict, exact: bool) -> list[str]:
    """Per-seed keys whose values differ: any bit (exact), else outcomes or floats beyond 1e-4 relative."""
    differ = []
    for key, values in recorded["per_seed"].items():
        new = rerun["per_seed"].get(key)
        if exact or key in OUTCOMES:
            if json.dumps(values) != json.dumps(new):
                differ.append(key)
        elif not isinstance(new, list) or len(new) != len(values) or any(
                (a is None) != (b is None) or (a is not None and not math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-9))
                for a, b in zip(values, new) if not isinstance(a, str)):
            differ.append(key)
    return differ


@pytest.mark.parametrize("source", list(PROGRAMS_RERUN), ids=lambda p: p.name)
def test_committed_results_are_reproduced_at_head(source, tmp_path):
    from gradbench.analysis import reproduce

    records = store.read_results(source)
    here = env.environment()
    made = records[0]["env"]
    versions = [f"{k} {made['versions'][k]} (here {here['versions'][k]})" for k in NUMERIC
                if made["versions"][k] != here["versions"][k]]
    if versions:
        pytest.skip(f"{source.name} was made with other numeric libraries: {', '.join(versions)}; install "
                    "them with `pip install -c .ci/constraints.txt -e .`")
    # Bit for bit where the machine kind is the one that made them; another CPU model rounds differently (its
    # vector width changes XLA's summation order), so there outcomes must match and floats agree to 1e-4.
    exact = all(made[k] == here[k] for k in MACHINE)
    info = reproduce.suite_info(records, source)
    failures = []
    for number, cells in enumerate(cheapest_programs(records, PROGRAMS_RERUN[source])):
        wanted = [c["cell_id"] for c in cells]
        new = {r["cell_id"]: r for r in reproduce.rerun(reproduce.cells(records, wanted), info,
                                                         tmp_path / f"program{number}")}
        assert set(new) == set(wanted)
        for old in cells:
            differ = _same_numbers(old, new[old["cell_id"]], exact)
            if differ:
                failures.append(f"{old['experiment']}: {old['label']} ({', '.join(differ)})")
    assert not failures, (
        f"{source.relative_to(ROOT)}: rerun at HEAD, these cells' per-seed numbers changed "
        f"({'bit for bit' if exact else 'beyond rounding, on another CPU model'}): {'; '.join(failures)}. If the "
        "change is meant, regenerate: `gradbench run --out results/claims` (and transformer_stability), then "
        "`gradbench report results/claims --also results/transformer_stability --output RESULTS.md`")


def test_committed_results_hold_no_uncommitted_code():
    for source in (RESULTS, BEYOND, ROOT / "results" / "ci"):
        assert not any(r["env"]["git_dirty"] for r in store.read_results(source)), source


def test_every_cure_of_the_exploding_network_starts_from_a_gradient_that_really_explodes():
    records = store.ResultsStore(RESULTS).records
    suite = json.loads((RESULTS / "suite.json").read_text())
    cures = [c["primary"] for c in suite["claims"] if c["primary"]["expect"] == "better"
             and c["primary"]["experiment"] == "deep-tanh" and c["primary"]["baseline"] == {"name": "none"}]
    assert len(cures) >= 6  # Xavier, He, depth, width, Adam, Adagrad
    for q in cures:
        arm = [r for r in records if r["experiment"] == q["experiment"] and matches(r["config"], q["baseline"])]
        e2e = sorted(float(v) for v in arm[0]["explosion"]["e2e_ratio_init"])
        assert e2e[(len(e2e) - 1) // 2] >= 10


def _nudged(value, rng):
    """A non-integral float moved 1 to 3 units in its last place, either way (a CPU whose log or exp rounds
    differently); any other value as it is."""
    if isinstance(value, float) and math.isfinite(value) and value != round(value):
        for _ in range(int(rng.integers(1, 4))):
            value = float(np.nextafter(value, math.inf if rng.random() < 0.5 else -math.inf))
        return value
    if isinstance(value, list):
        return [_nudged(x, rng) for x in value]
    if isinstance(value, dict):
        return {k: _nudged(x, rng) for k, x in value.items()}
    return value


def test_records_that_differ_in_the_last_bits_render_the_same_results_md(tmp_path):
    """The report of the same records is byte-identical on every CPU: values that differ by rounding alone are ties
    (docs/METHODS.md, "Statistics"), so per-seed values nudged in their last bits change no character of it."""
    rng = np.random.default_rng(0)
    copies = []
    for source in (RESULTS, BEYOND):
        target = tmp_path / "results" / source.name
        target.mkdir(parents=True)
        shutil.copy(source / "suite.json", target / "suite.json")
        with open(source / "results.jsonl") as lines, open(target / "results.jsonl", "w") as out:
            for line in lines:
                record = json.loads(line)
                record["per_seed"] = _nudged(record["per_seed"], rng)
                record["explosion"] = {k: v if k == "fractions" else _nudged(v, rng)
                                       for k, v in record["explosion"].items()}
                out.write(json.dumps(record) + "\n")
        copies.append(target)
    text, _ = report.render_all(copies, tmp_path / "RESULTS.md")
    assert text + "\n" == (ROOT / "RESULTS.md").read_text()
