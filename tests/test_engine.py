"""The engine end to end on a tiny MLP: divergence, convergence, seeds, determinism, compilation."""
import json

import jax
import numpy as np
import pytest

from gradbench.engine import program, runner
from gradbench.records import metrics
from gradbench.records.store import ResultsStore
from gradbench.reports import report
from gradbench.spec import suite
from tests.conftest import tiny_suite

CLIP = """
[[mitigation]]
name = "none"

[[mitigation]]
name = "clip_by_global_norm"
max_norm = [0.5, 2.0]

[[claim]]
id = 7
title = "clipping cures explosion"
question = "does clipping widen the learning rates at which the tiny MLP reaches its target?"
rationale = "a test of the report, not of clipping"
note = "a tiny MLP: too small to explode"
primary = { experiment = "tiny", baseline = { name = "none" }, variant = { name = "clip_by_global_norm", max_norm = 2.0 }, measure = "reach_range", expect = "better" }
"""


@pytest.fixture(scope="module")
def first_run(module_tmp):
    """Runs the tiny suite once: 2 lrs x (none + clip at 2 thresholds) x 4 seeds."""
    path = tiny_suite(module_tmp, extra=CLIP)
    before = program.TRACE_COUNT["chunk"]
    records = runner.run_suite(suite.load(path), module_tmp / "a")
    return path, records, program.TRACE_COUNT["chunk"] - before


def by_label(records):
    return {r["label"]: r for r in records}


def test_every_cell_has_a_record_with_the_public_fields(first_run):
    _, records, _ = first_run
    assert len(records) == 6
    for r in records:
        for key in ("schema_version", "cell_id", "suite", "config", "divergence_rate", "divergence_rate_ci",
                    "converged", "median_steps_to_converge", "steps_to_converge_ci", "per_seed", "throughput", "env"):
            assert key in r
        assert set(r["per_seed"]) >= {"diverged", "divergence_step", "steps_to_converge", "final_train_loss",
                                     "final_heldout_loss", "max_grad_norm"}
        assert all(len(v) == 4 for v in r["per_seed"].values())
        assert r["config"]["task"]["batch_size"] == 8 and r["config"]["model"]["bias_var"] == 0.0
        assert r["throughput"]["steps_per_s"] > 0 and r["throughput"]["compile_s"] > 0
        low, high = r["throughput"]["steps_per_s_iqr"]
        assert 0 < low <= r["throughput"]["steps_per_s"] <= high  # median over timed chunks, within its IQR
        assert r["throughput"]["timed_chunks"] >= 1
        assert r["env"]["versions"]["jax"] and r["env"]["backend"] == jax.default_backend()


def test_huge_learning_rate_diverges_every_seed_without_crashing(first_run):
    r = by_label(first_run[1])["none lr=10000.0"]
    assert r["divergence_rate"] == 1.0
    assert r["divergence_rate_ci"][0] > 0.39  # Wilson lower bound for 4/4
    assert all(s is not None and s >= 1 for s in r["per_seed"]["divergence_step"])
    assert r["per_seed"]["final_train_loss"] == [None] * 4
    assert r["converged"] == 0 and r["median_steps_to_converge"] is None


def test_small_learning_rate_converges_with_steps(first_run):
    r = by_label(first_run[1])["none lr=0.05"]
    assert r["divergence_rate"] == 0.0 and r["converged"] == 4
    steps = r["per_seed"]["steps_to_converge"]
    assert all(0 < s < 60 for s in steps)
    assert r["median_steps_to_converge"] == sorted(steps)[1]
    assert all(0 < v < 2 for v in r["per_seed"]["final_train_loss"])


def test_clipping_keeps_the_huge_learning_rate_finite(first_run):
    # With clipping, the step is at most lr x max_norm: at lr 1e4 it still explodes, which the
    # divergence rule must catch as a loss jump rather than a crash.
    r = by_label(first_run[1])["clip_by_global_norm(max_norm=0.5) lr=10000.0"]
    assert r["divergence_rate"] == 1.0
    assert all(np.isfinite(v) for v in r["per_seed"]["max_grad_norm"] if v is not None)


def test_engine_criteria_agree_with_the_trace_functions(first_run):
    for r in first_run[1]:
        for seed in range(4):
            loss, norm = r["trace"]["loss"][seed], r["trace"]["grad_norm"][seed]
            loss = [np.nan if v is None else v for v in loss]
            norm = [np.nan if v is None else v for v in norm]
            step = r["per_seed"]["divergence_step"][seed]
            if step is None:
                converged = r["per_seed"]["steps_to_converge"][seed]
                if converged is not None:  # a converged seed stops: its trace ends there
                    assert np.all(np.isnan(loss[converged + 1:]))
                    loss, norm = loss[: converged + 1], norm[: converged + 1]
                assert metrics.divergence_step(loss, norm, 10.0, r["thresholds"]["trivial_loss"],
                                               r["per_seed"]["loss_0"][seed]) is None
                assert metrics.steps_to_converge(loss, 0.4, 0.9) == r["per_seed"]["steps_to_converge"][seed]
            else:  # the trace stops (NaN) after the divergence step
                assert metrics.divergence_step(loss, norm, 10.0, r["thresholds"]["trivial_loss"],
                                               r["per_seed"]["loss_0"][seed]) == step
                assert np.all(np.isnan(loss[step + 1:]))


def test_all_learning_rates_and_thresholds_share_one_compilation(first_run, module_tmp):
    _, _, traced = first_run
    assert traced == 2  # one program for `none`, one for clipping (both thresholds, both lrs)
    before = program.TRACE_COUNT["chunk"]
    path = tiny_suite(module_tmp, name="other_lrs.toml", lr="[0.2, 3.0]", extra=CLIP)
    runner.run_suite(suite.load(path), module_tmp / "b")
    assert program.TRACE_COUNT["chunk"] == before  # new values, same shapes: no retrace


def test_one_seed_alone_equals_the_same_seed_in_a_batch(first_run, module_tmp):
    path, records, _ = first_run
    alone = by_label(runner.run_suite(suite.load(path, seeds=1), module_tmp / "alone"))
    for label, r in by_label(records).items():
        a = alone[label]["per_seed"]
        b = r["per_seed"]
        assert a["diverged"][0] == b["diverged"][0]
        for key in ("divergence_step", "steps_to_converge"):
            if b[key][0] is None:
                assert a[key][0] is None
            else:
                assert abs(a[key][0] - b[key][0]) <= 2
        if b["final_train_loss"][0] is not None:
            assert a["final_train_loss"][0] == pytest.approx(b["final_train_loss"][0], rel=1e-3)


def test_the_same_command_twice_gives_identical_numbers(first_run, module_tmp):
    path, records, _ = first_run
    again = runner.run_suite(suite.load(path), module_tmp / "again")
    for a, b in zip(records, again):
        assert a["cell_id"] == b["cell_id"]
        assert a["per_seed"] == b["per_seed"]
        assert a["trace"] == b["trace"]


def test_rerun_resumes_and_trains_only_missing_cells(first_run, module_tmp):
    path, records, _ = first_run
    out = module_tmp / "resume"
    runner.run_suite(suite.load(path), out)
    store = ResultsStore(out)
    # Simulate an interruption after 4 of 6 cells: drop two records from the file.
    kept = store.records[:4]
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    stamps = [r["env"]["timestamp"] for r in kept]
    resumed = runner.run_suite(suite.load(path), out)
    assert [r["cell_id"] for r in resumed] == [r["cell_id"] for r in records]
    assert [r["env"]["timestamp"] for r in ResultsStore(out).records[:4]] == stamps
    # The resumed cells trained in a smaller program: same results up to floating-point reassociation.
    for a, b in zip(resumed[4:], records[4:]):
        assert a["per_seed"]["diverged"] == b["per_seed"]["diverged"]
        for x, y in zip(a["per_seed"]["final_train_loss"], b["per_seed"]["final_train_loss"]):
            assert x == y or x == pytest.approx(y, rel=1e-3)


def test_flops_per_step_matches_an_analytic_count(first_run):
    r = first_run[1][0]
    # 8 runs x batch 8 x (4*8 + 8*8 + 8*1) multiply-adds x 2 flops, forward; the backward pass adds a weight
    # gradient per layer and an input gradient for all but the first layer.
    forward = 8 * 8 * (4 * 8 + 8 * 8 + 8) * 2
    backward = 8 * 8 * (2 * 4 * 8 + 2 * 8 * 8 + 2 * 8) * 2 - 8 * 8 * 4 * 8 * 2
    assert r["throughput"]["flops_per_step"] == forward + backward


def test_results_file_is_strict_json(first_run, module_tmp):
    for line in (module_tmp / "a" / "results.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_report_has_verdicts_tables_and_plots(first_run, module_tmp):
    stale = module_tmp / "a" / "plots" / "gone-failure.png"  # an experiment the results no longer hold
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"\x89PNG")
    path = report.write(module_tmp / "a")
    assert not stale.exists()
    text = path.read_text()
    assert text.index("## Answers at a glance") < text.index("### Claim 7")
    assert "| [7. clipping cures explosion](#claim-7-clipping-cures-explosion) | **" in text
    assert "### Claim 7: clipping cures explosion\n\n**Question (pre-registered):** does clipping" in text
    assert "*Reading it:* a tiny MLP: too small to explode\n" in text
    assert "<summary>its arms, every cell and its figures</summary>" in text and "median critical lr" in text
    assert (module_tmp / "a" / "plots" / "forest.png").read_bytes()[:4] == b"\x89PNG" and "(plots/forest.png)" in text
    assert "none lr=10000.0 | 1.00 [0.51, 1] | 4 | 0 |" in text  # 4/4 diverged, Wilson interval
    settings = json.loads((module_tmp / "a" / "suite.json").read_text())["settings"]
    assert (f"Reproduce (paths relative to the directory of this report): `gradbench run {first_run[0]} "
            f"--seeds {settings['seeds']} --steps {settings['steps']} --out .`") in text
    for name in ("tiny-failure.png", "tiny-loss.png", "tiny-gradients.png"):
        png = module_tmp / "a" / "plots" / name
        assert png.read_bytes()[:4] == b"\x89PNG" and f"(plots/{name})" in text


INIT_SWEEP = """
[[experiment]]
name = "scales"
model = { family = "mlp", depth = 3, width = 8, activation = "tanh", init = "normal", weight_var = [0.5, 2.0, 8.0], bias_var = [0.0, 0.3] }

[[experiment]]
name = "rnn"
steps = 30
task = { name = "adding", length = 6, n_heldout = 32, batch_size = 8 }
model = { family = "rnn", cell = "tanh", hidden = 8, recurrent_init = "orthogonal", recurrent_scale = [0.5, 1.5] }
"""


class _Order:
    """A progress object that records the order in which groups train."""

    def __init__(self):
        self.trained = []

    def begin(self, groups):
        pass

    def group(self, label, steps, runs):
        self.trained.append(label.split(":")[0])

    def group_done(self, records):
        pass


def test_a_sweep_of_initial_scales_is_one_program_with_the_same_initial_weights(module_tmp):
    from gradbench.engine import probe

    path = tiny_suite(module_tmp, name="init_sweep.toml", seeds=2, steps=20, extra=INIT_SWEEP)
    s = suite.load(path)
    before = program.TRACE_COUNT["chunk"]
    order = _Order()
    records = runner.run_suite(s, module_tmp / "init_sweep", progress=order)
    # 6 (weight_var, bias_var) cells x 2 lrs, and 2 recurrent scales x 2 lrs: one program per architecture.
    assert program.TRACE_COUNT["chunk"] - before == 2
    assert len({r["cell_id"] for r in records}) == 16
    # Groups train in the suite's order, and the file keeps it.
    assert order.trained == ["scales", "rnn"]
    assert [r["cell_id"] for r in ResultsStore(module_tmp / "init_sweep").records] == [c.cell_id for c in s.cells]
    # Traced scales give the initialisation a static config gives: the record's ratio at init is the probe's.
    checked = [r for r in records if r["config"]["model"].get("weight_var") in (0.5, 8.0)
               or r["config"]["model"].get("recurrent_scale") == 1.5]
    for r in {json.dumps(r["config"]["model"], sort_keys=True): r for r in checked}.values():
        cfg = r["config"]
        expected = probe.probe(cfg["task"], cfg["model"], 2)["e2e_ratio_per_seed"]
        np.testing.assert_allclose(r["explosion"]["e2e_ratio_init"], expected, rtol=1e-4)
    ratios = {r["config"]["model"].get("weight_var"): r["explosion"]["e2e_ratio_init"][0]
              for r in records if r["experiment"] == "scales"}
    assert ratios[8.0] > ratios[2.0] > ratios[0.5]  # the scales really differ inside the one program


def test_every_compile_of_a_preparation_is_one_step_inside_compiling(module_tmp, monkeypatch):
    # The runner's compiling thread wraps each compiling step in Quiet.compiling, so that a training thread
    # timing extra chunks (Quiet.hold) waits for the step in flight, not for the whole preparation.
    import contextlib

    from gradbench.engine import loop

    quiet, steps = loop.Quiet(), []
    original = program.Program._compile

    def compile_inside(self, name, jitted, *args):
        assert quiet.mark() is None, f"{name} compiled outside Quiet.compiling"
        return original(self, name, jitted, *args)

    @contextlib.contextmanager
    def counted():
        with quiet.compiling():
            steps.append(len(steps))
            yield

    monkeypatch.setattr(program.Program, "_compile", compile_inside)
    path = tiny_suite(module_tmp, name="quiet.toml", seeds=3, steps=21, lr="0.05")
    group = runner.group_cells(suite.load(path).cells)[0]
    prepared = loop.prepare(group.plan, group.runs, steps=21, chunk_steps=7, compiling=counted)
    # the program, the initial weights, tracing, and each of the four programs: a step apiece
    assert len(steps) == 7 and set(prepared.prog.compiled) == {"init", "chunk", "measure", "evaluate"}
    assert quiet.mark() is not None  # nothing compiles once it is prepared
