"""The citation template: the default suite, loaded as `bench run` loads it without overrides, holds every committed
cell of results/claims; CITATION.cff is complete and matches the package version."""
import datetime
import re
import tomllib
from pathlib import Path

from gradbench.records import store
from gradbench.spec import suite

ROOT = Path(__file__).resolve().parent.parent


def test_the_default_suite_without_overrides_holds_every_committed_claims_cell():
    # `python -m bench run bench/suites/claims.toml --out results/claims` (no --seeds/--steps): the suite as loaded.
    loaded = {c.cell_id for c in suite.load(ROOT / "bench" / "suites" / "claims.toml").cells}
    committed = [r["cell_id"] for r in store.read_results(ROOT / "results" / "claims")]
    missing = [c for c in committed if c not in loaded]
    assert committed and not missing, f"{len(missing)} of {len(committed)} committed cells not in the suite"


def test_citation_cff_is_complete():
    cff = (ROOT / "CITATION.cff").read_text()
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    fields = dict(re.findall(r"^([a-z-]+): *\"?([^\"\n]*)\"?$", cff, re.M))
    assert fields["version"] == version
    datetime.date.fromisoformat(fields["date-released"])
    assert fields["repository-code"].startswith("https://")
    assert fields["cff-version"] == "1.2.0" and fields["title"] and "authors:" in cff
