"""Batch invariance and compaction: a run's numbers do not depend on the runs that share its program, on where
it sits among them, or on whether finished runs are still computed; snapshots survive an early stop."""
import numpy as np
import pytest

from gradbench.engine import loop, program, runner
from gradbench.spec import suite
from tests.conftest import tiny_suite


@pytest.fixture(scope="module")
def group(module_tmp):
    """A tiny MLP group of 300 seeds x 2 learning rates (0.05 trains, 0.5 diverges for most seeds)."""
    path = tiny_suite(module_tmp, seeds=300, steps=40, lr="[0.05, 0.5]")
    return runner.group_cells(suite.load(path).cells)[0]


def per_run(result, i):
    """Every per-run array of run i, and its traces."""
    out = {k: v[i] for k, v in result.arrays.items()}
    out.update(loss_trace=result.loss_trace[i], grad_norm_trace=result.grad_norm_trace[i])
    return out


def assert_identical(a, b):
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        if key.endswith("_trace"):  # a group that stops early keeps shorter traces: the rest is NaN (stopped)
            n = min(len(x), len(y))
            assert np.isnan(x[n:]).all() and np.isnan(y[n:]).all()
            x, y = x[:n], y[:n]
        np.testing.assert_array_equal(x, y, err_msg=key)  # NaN equals NaN: bit for bit


def train(group, runs, compact=True):
    return loop.train_group(loop.prepare(group.plan, runs, steps=40, chunk_steps=20), compact=compact)


@pytest.mark.parametrize("tile", [None, 1])  # the plan's own tile (16), and one run a tile (no vmap: large models)
def test_a_run_gives_the_same_bits_alone_among_64_and_among_300_runs(group, tile, monkeypatch):
    if tile:
        monkeypatch.setenv("GRADBENCH_TILE_RUNS", str(tile))
    assert program.tile_runs(group.plan) == (tile or 16)
    # Two probes: seed 7 at lr 0.05 (trains) and seed 11 at lr 0.5; each placed at different positions.
    probes = [r for r in group.runs if (r.seed, r.cell_index) in ((7, 0), (11, 1))]
    others = [r for r in group.runs if r not in probes]
    alone = [per_run(train(group, [p]), 0) for p in probes]
    assert not alone[0]["diverged"] and alone[1]["diverged"]  # one of each kind
    for n, positions in ((64, (37, 5)), (300, (211, 16))):
        runs = others[:n - 2]
        for p, at in sorted(zip(probes, positions), key=lambda x: x[1]):
            runs.insert(at, p)
        result = train(group, runs)
        assert result.throughput["tile_runs"] == program.tile_runs(group.plan)
        for p, at, a in zip(probes, positions, alone):
            assert runs[at] is p
            assert_identical(per_run(result, at), a)


def test_compaction_computes_less_and_changes_no_number(group):
    runs = group.runs[:150] + group.runs[300:450]  # 150 seeds at each learning rate
    on, off = train(group, runs, compact=True), train(group, runs, compact=False)
    assert on.arrays["diverged"].sum() > 100  # most runs at lr 0.5 diverge in the first chunk
    assert on.throughput["computed_fraction"] < 0.8 and off.throughput["computed_fraction"] == 1.0
    for i in range(len(runs)):
        assert_identical(per_run(on, i), per_run(off, i))
    np.testing.assert_array_equal(on.loss_trace, off.loss_trace)


def test_a_group_that_stops_exactly_at_a_snapshot_step_keeps_that_snapshot(module_tmp):
    # Budget 100, chunks of 10: snapshots at steps 0, 10, 50 and 100. At lr 1e4 every run diverges in the
    # first chunk, so the host stops at step 10, a snapshot step, which must still be measured.
    path = tiny_suite(module_tmp, name="stop.toml", seeds=3, steps=100, lr="1e4")
    g = runner.group_cells(suite.load(path).cells)[0]
    prepared = loop.prepare(g.plan, g.runs, steps=100, chunk_steps=10)
    assert prepared.due == [0, 10, 50, 100]
    result = loop.train_group(prepared)
    a = result.arrays
    assert a["diverged"].all() and (a["divergence_step"] < 10).all()
    assert result.loss_trace.shape[1] == 10  # stopped after the first chunk
    assert (a["snap_step"] >= 0).all()  # every snapshot taken
    # From step 10 on, each snapshot measures the parameters held since the divergence.
    np.testing.assert_array_equal(a["snap_step"][:, 1:], np.repeat(a["divergence_step"][:, None], 3, 1))
    assert np.isfinite(a["snap_weight_norm"]).all()
    np.testing.assert_array_equal(a["snap_weight_norm"][:, 1], a["snap_weight_norm"][:, 3])


DATASETS = """
[[experiment]]
name = "data"
task = { data_seed = [0, 1, 2] }
"""


def test_datasets_of_one_shape_share_one_program_and_train_as_alone(module_tmp):
    # 3 datasets x 2 learning rates: one group, one program (data_seed is traced: the datasets are stacked).
    path = tiny_suite(module_tmp, name="data.toml", seeds=3, steps=20, extra=DATASETS)
    cells = suite.load(path).cells
    assert len(cells) == 6 and len(runner.group_cells(cells)) == 1
    before = program.TRACE_COUNT["chunk"]
    records = runner.run_suite(suite.load(path), module_tmp / "data")
    assert program.TRACE_COUNT["chunk"] - before == 1
    by_seed = {(r["config"]["task"]["data_seed"], r["config"]["optimizer"]["lr"]): r for r in records}
    trivial = {s: by_seed[(s, 0.05)]["thresholds"]["trivial_loss"] for s in range(3)}
    assert len(set(trivial.values())) == 3  # each record has its own dataset's trivial loss
    assert len({by_seed[(s, 0.05)]["per_seed"]["loss_0"][0] for s in range(3)}) == 3  # really other data
    # Dataset 1 alone (its own group and program) gives the same bits as among the three.
    alone = runner.run_suite(suite.load(tiny_suite(module_tmp, name="one.toml", seeds=3, steps=20,
                                                   extra=DATASETS.replace("[0, 1, 2]", "1"))), module_tmp / "one")
    for r in alone:
        twin = by_seed[(1, r["config"]["optimizer"]["lr"])]
        assert r["cell_id"] == twin["cell_id"]
        assert r["per_seed"] == twin["per_seed"] and r["trace"] == twin["trace"]
        assert r["explosion"] == twin["explosion"]
