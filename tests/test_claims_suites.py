"""The claims suites as shipped: every comparison selects its arms, and every experiment trains (shrunk)."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from gradbench.spec.claim_schema import matches
from gradbench.engine import runner
from gradbench.spec import suite

SUITES = Path(__file__).resolve().parents[1] / "bench" / "suites"


@pytest.fixture(scope="module")
def both():
    return suite.load(SUITES / "claims.toml"), suite.load(SUITES / "claims_large.toml")


def test_the_large_suite_is_the_claims_suite_with_its_scale_knobs_turned_up(both):
    cpu, large = both
    assert large.claims == cpu.claims and len(cpu.claims) == 17  # the same pre-registered claims, not a copy
    assert {e["name"] for e in large.experiments} == {e["name"] for e in cpu.experiments}
    for s in both:
        for claim in s.claims:
            for q in (claim["primary"], *claim["secondary"]):
                for side, experiment in (("baseline", q["experiment"]),
                                         ("variant", q["variant_experiment"] or q["experiment"])):
                    assert any(matches(c.config, q[side]) for c in s.cells if c.experiment == experiment), \
                        (s.name, claim["id"], side)
    per_decade = lambda s: len([c for c in s.cells if c.experiment == "deep-tanh" and  # noqa: E731
                                c.config["mitigation"] == {"name": "none"} and not c.config.get("replicate")])
    assert per_decade(large) == 41 and per_decade(cpu) == 21  # 5 decades at 8 and 4 points per decade
    assert large.settings["seeds"] == 4 * cpu.settings["seeds"] and large.settings["replicates"] == 2


def test_a_suite_that_extends_another_merges_tables_and_experiments_by_name(tmp_path):
    (tmp_path / "base.toml").write_text(SUITES.joinpath("example.toml").read_text())
    base = suite.load(tmp_path / "base.toml")
    first = base.experiments[0]["name"]
    (tmp_path / "big.toml").write_text(f'extends = "base.toml"\n[suite]\nname = "big"\nseeds = 3\n'
                                       f'[[experiment]]\nname = "{first}"\nsteps = 7\n')
    big = suite.load(tmp_path / "big.toml")
    assert big.name == "big" and {c.config["seeds"] for c in big.cells} == {3}
    assert {c.config["steps"] for c in big.cells if c.experiment == first} == {7}
    assert len(big.cells) == len(base.cells) and big.claims == base.claims
    (tmp_path / "loop.toml").write_text('extends = "loop.toml"\n[suite]\nname = "x"\n')
    with pytest.raises(suite.SuiteError, match="cycle"):
        suite.load(tmp_path / "loop.toml")


def _depth(cell, depth):
    """The cell with its MLP `depth` layers deep (plan and config alike)."""
    if "depth" not in cell.plan["model"]:
        return cell
    return dataclasses.replace(cell, plan={**cell.plan, "model": {**cell.plan["model"], "depth": depth}},
                               config={**cell.config, "model": {**cell.config["model"], "depth": depth}})


def test_every_model_and_task_of_the_large_suite_trains_shrunk(tmp_path):
    # 2 seeds, 3 steps, the first cell of every task, model family and layer structure (normalisation, skips)
    # the suite trains: one program each through the harness (experiments that differ only in a scale, an
    # optimiser or a mitigation train the same layers; those are tested on tiny suites). The MLPs are 2
    # layers deep: compiling 24 is the default run's work (the claims suite trains the same layers), not a test's.
    s = suite.load(SUITES / "claims_large.toml", seeds=2, steps=3)
    first = {}
    for cell in s.cells:
        model = cell.plan["model"]
        first.setdefault((cell.plan["task"]["name"], model["family"], model.get("norm"), model.get("residual")),
                         _depth(cell, 2))
    assert {c.plan["model"]["family"] for c in first.values()} == {"mlp", "rnn", "resnet"} and len(first) == 8
    records = runner.run_suite(dataclasses.replace(s, cells=list(first.values())), tmp_path / "out")
    assert [r["experiment"] for r in records] == [c.experiment for c in first.values()]
    for r in records:
        assert len(r["per_seed"]["loss_0"]) == 2 and np.all(np.isfinite(r["per_seed"]["loss_0"]))
        assert r["explosion"]["e2e_ratio_init"][0] is not None


def test_replicate_blocks_run_seeds_of_their_own_and_the_first_block_is_the_plain_run(tmp_path):
    # 2 seeds, 5 steps, the CI suite's first cell: once without blocks, once with 2 blocks (one program).
    plain = suite.load(SUITES / "ci.toml", seeds=2, steps=5)
    blocks = suite.load(SUITES / "ci.toml", seeds=2, steps=5, overrides={"replicates": 2})
    first = plain.cells[0]
    twins = [c for c in blocks.cells if c.config["mitigation"] == first.config["mitigation"]
             and c.config["optimizer"] == first.config["optimizer"]]
    assert [c.config.get("replicate", 0) for c in twins] == [0, 1]
    assert twins[1].config["init_perturbation"] == blocks.settings["replicate_perturbation"] == 1e-6
    a = runner.run_suite(dataclasses.replace(plain, cells=[first]), tmp_path / "a")[0]
    b0, b1 = runner.run_suite(dataclasses.replace(blocks, cells=twins), tmp_path / "b")
    assert b0["per_seed"]["seed"] == [0, 1] and b1["per_seed"]["seed"] == [2, 3]
    assert b0["per_seed"]["final_train_loss"] == a["per_seed"]["final_train_loss"]  # block 0: no perturbation
    assert b1["per_seed"]["final_train_loss"] != b0["per_seed"]["final_train_loss"]
