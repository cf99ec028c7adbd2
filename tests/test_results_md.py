"""RESULTS.md is generated: it must equal the report of the committed raw results it came from."""
from pathlib import Path

import pytest

from bench import report

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results" / "claims"


def test_results_md_matches_the_committed_results():
    if not (RESULTS / "results.jsonl").exists():
        pytest.fail("results/claims/results.jsonl is missing: run `python -m bench run --out results/claims`")
    text, plots = report.render(RESULTS, ROOT / "RESULTS.md")
    assert (ROOT / "RESULTS.md").read_text() == text + "\n", (
        "RESULTS.md is stale: run `python -m bench report results/claims --output RESULTS.md`")
    for path in plots:
        assert Path(path).exists(), f"{path} is linked from RESULTS.md but missing"


def test_every_claim_has_a_computed_verdict():
    text = (ROOT / "RESULTS.md").read_text()
    verdicts = text.split("## Verdicts", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in verdicts.splitlines() if line.startswith("| ") and "**" in line]
    assert len(rows) == 12
    assert all(any(v in row for v in ("supported", "contradicted", "no detectable effect")) for row in rows)
