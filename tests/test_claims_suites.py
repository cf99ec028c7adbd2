"""The claims suites as shipped: every comparison selects its arms, and every experiment trains (shrunk)."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from bench.analysis import claims
from bench.engine import runner
from bench.spec import suite

SUITES = Path(__file__).resolve().parents[1] / "bench" / "suites"


@pytest.fixture(scope="module")
def both():
    return suite.load(SUITES / "claims.toml"), suite.load(SUITES / "claims_large.toml")


def test_the_large_suite_judges_the_same_claims_at_accelerator_scale(both):
    cpu, large = both
    assert [c["id"] for c in large.claims] == [c["id"] for c in cpu.claims] == [str(i) for i in range(1, 13)]
    for s in both:
        for claim in s.claims:
            for comp in claim["comparison"]:
                for side, experiment in (("baseline", comp["experiment"]),
                                         ("variant", comp["variant_experiment"] or comp["experiment"])):
                    assert any(claims.matches(c.config, comp[side]) for c in s.cells
                               if c.experiment == experiment), (s.name, claim["id"], side)
    models = [c.plan["model"] for c in large.cells if c.plan["model"]["family"] == "mlp"]
    assert max(m["depth"] for m in models) == 64 and max(m["width"] for m in models) == 1024
    assert {e["name"] for e in large.experiments} == {e["name"] for e in cpu.experiments}
    per_decade = lambda s: len([c for c in s.cells if c.experiment == "deep-tanh" and  # noqa: E731
                                c.config["mitigation"] == {"name": "none"}])
    assert per_decade(large) == 41 and per_decade(cpu) == 21  # 5 decades at 8 and 4 points per decade


def test_every_experiment_of_the_large_suite_trains_shrunk(tmp_path):
    # 2 seeds, 3 steps, the first cell of every experiment: each family, task and size through the harness.
    s = suite.load(SUITES / "claims_large.toml", seeds=2, steps=3)
    first = {}
    for cell in s.cells:
        first.setdefault(cell.experiment, cell)
    records = runner.run_suite(dataclasses.replace(s, cells=list(first.values())), tmp_path / "out")
    assert [r["experiment"] for r in records] == list(first)
    for r in records:
        assert len(r["per_seed"]["loss_0"]) == 2 and np.all(np.isfinite(r["per_seed"]["loss_0"]))
        assert r["explosion"]["e2e_ratio_init"][0] is not None
