"""Explosion and trainability as measured: trivial losses, collapse, end-to-end ratios, underflow."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradbench.engine import loop, probe, program, runner
from gradbench.spec import optim, suite
from gradbench.spec.build import make_model, make_task
from gradbench.tasks import TASKS

# name -> (config overrides that keep it small, closed form of the trivial loss, tolerance of the closed form)
TRIVIAL = {
    "teacher_student": ({"n_train": 2000, "noise": 0.3}, 1.0 + 0.3**2, 0.1),
    "clusters": ({"n_train": 4000, "n_classes": 5}, math.log(5), 0.01),
    "adding": ({"n_heldout": 4000, "length": 6}, 1 / 6, 0.01),
    "copy_memory": ({"n_heldout": 2000, "length": 2, "n_symbols": 6}, math.log(6), 0.01),
    "digits": ({}, math.log(10), 0.01),
}


@pytest.mark.parametrize("name", TRIVIAL)
def test_trivial_loss_is_the_best_constant_predictors_loss(name):
    overrides, closed_form, tolerance = TRIVIAL[name]
    module = TASKS[name]
    task = module.make(module.Config(**overrides))
    x, y = task.data["train_eval"]
    if task.metric_name == "accuracy":  # the best constant logits are the log label frequencies
        freq = np.bincount(np.asarray(y).ravel(), minlength=task.output_dim) / np.asarray(y).size
        shape = (len(y), x.shape[1], task.output_dim) if task.sequence_output else (len(y), task.output_dim)
        constant = jnp.broadcast_to(jnp.log(jnp.asarray(freq, jnp.float32) + 1e-30), shape)
    else:  # the best constant prediction is the mean target
        constant = jnp.broadcast_to(jnp.mean(y, axis=0), y.shape)
    direct = float(task.loss(constant, y))
    assert task.trivial_loss == pytest.approx(direct, rel=1e-4)
    assert abs(task.trivial_loss - closed_form) < tolerance
    for worse in (0.9, 1.1):  # a constant off the optimum does worse
        assert float(task.loss(constant * worse + (1 - worse) * 0.5, y)) >= direct - 1e-6


SUITE = """
[suite]
name = "measure"
seeds = 4
steps = 120
chunk_steps = 40

[task]
name = "teacher_student"
input_dim = 8
teacher_width = 8
n_train = 128
n_heldout = 64
n_validation = 64
batch_size = 16
target = 0.05

[optimizer]
name = "sgd"
lr = 0.05

[[experiment]]
name = "sigmoid"
model = { family = "mlp", depth = 8, width = 16, activation = "sigmoid", init = "normal", weight_var = 1.0 }

[[experiment]]
name = "linear"
model = { family = "mlp", depth = 4, width = 8, activation = "linear", init = "normal", weight_var = 1.0 }

[[experiment]]
name = "constant"
model = { family = "mlp", depth = 4, width = 8, activation = "tanh", init = "constant", weight_var = 1.0 }
"""


@pytest.fixture(scope="module")
def measured(module_tmp):
    path = module_tmp / "measure.toml"
    path.write_text(SUITE)
    s = suite.load(path)
    return s, {r["experiment"]: r for r in runner.run_suite(s, module_tmp / "out")}


def test_a_sigmoid_mlp_that_never_learns_is_collapsed_not_stable(measured):
    r = measured[1]["sigmoid"]
    trivial = r["thresholds"]["trivial_loss"]
    assert r["divergence_rate"] == 0.0 and r["failure_rate"] == 1.0  # nothing diverged, nothing trained
    assert all(r["per_seed"]["collapsed"]) and not any(r["per_seed"]["trained"])
    assert all(loss >= 0.5 * trivial for loss in r["per_seed"]["final_train_loss"])
    assert r["thresholds"]["collapse_fraction"] == 0.5


def test_e2e_ratio_of_a_linear_network_is_the_product_of_its_weights(measured):
    s, records = measured
    r = records["linear"]
    cell = next(c for c in s.cells if c.experiment == "linear")
    task = make_task(cell.plan["task"])
    for seed in range(2):
        k_init, k_data = program.seed_keys(seed)
        model = make_model(cell.plan["model"], task, k_init)
        x, y = task.sample(task.data, jax.random.fold_in(k_data, 0))  # the batch of step 0
        pred = model(x)
        g_last = 2 * (pred - y) / pred.size @ model.readout.kernel[...].T  # dL/dh at the last hidden layer
        g_first = g_last
        for layer in reversed(list(model.layers)[1:]):
            g_first = g_first @ layer.kernel[...].T
        expected = float(jnp.linalg.norm(g_first) / jnp.linalg.norm(g_last))
        assert r["explosion"]["e2e_ratio_init"][seed] == pytest.approx(expected, rel=1e-4)
    # The probe measures the same thing on the same batch.
    result = probe.probe(cell.plan["task"], cell.plan["model"], 4)
    np.testing.assert_allclose(result["e2e_ratio_per_seed"], r["explosion"]["e2e_ratio_init"], rtol=1e-4)


def test_explosion_is_measured_during_training_at_fixed_fractions(measured):
    r = measured[1]["linear"]
    e = r["explosion"]
    assert e["fractions"] == [0.0, 0.1, 0.5, 1.0]
    ps = r["per_seed"]
    for steps, converged, diverged_at in zip(e["per_seed"]["step"], ps["steps_to_converge"], ps["divergence_step"]):
        # A run stops when it converges (after that step's update) or diverges (that step's update is not applied);
        # later snapshots measure the parameters it holds, first used at the step after convergence or at the
        # step whose loss crossed the threshold.
        last = diverged_at if diverged_at is not None else 120 if converged is None else converged + 1
        expected = [0] + [min(b, last) for b in (12, 60, 120)]  # round(f x budget); 120: after the last update
        assert steps == expected
    assert len(e["params"]) == len(e["median_weight_norm"][0]) == 10  # 4 hidden layers + readout, kernel + bias
    kernels = [v for name, v in zip(e["params"], e["median_weight_norm"][0]) if "kernel" in name]
    assert len(kernels) == 5 and all(v > 0 for v in kernels)  # biases start at exactly zero (bias_var 0)


def test_snapshots_fall_on_chunk_boundaries():
    assert loop.snapshot_plan([200], 50) == (20, pytest.approx(np.array([[0, 20, 100, 200]])))
    length, due = loop.snapshot_plan([100, 200], 50)  # budgets of one group may differ
    assert length == 10 and due.tolist() == [[0, 10, 50, 100], [0, 20, 100, 200]]
    # No length of at least a fifth of chunk_steps divides 14, 68 and 137: the next boundary is taken.
    length, due = loop.snapshot_plan([137], 50)
    assert length == 50 and due.tolist() == [[0, 50, 100, 150]]


def test_snapshot_update_is_the_sgd_step_on_that_steps_batch(module_tmp):
    # Plain SGD: the update the snapshot measures is -lr x the gradient of the training step at the same step,
    # so the norms of its parts make lr x that step's gradient norm (measured by the training step itself).
    path = module_tmp / "sgd.toml"
    path.write_text(SUITE.replace("target = 0.05", "target = 1e-9").split("[[experiment]]")[0]
                    + '[[experiment]]\nname = "linear"\nmodel = { family = "mlp", depth = 3, width = 8, '
                      'activation = "tanh", init = "normal", weight_var = 1.0 }\n')
    cell = suite.load(path, seeds=2).cells[0]
    group = runner.Group(optim.static_plan(cell.plan), [cell])
    result = loop.train_group(loop.prepare(group.plan, group.runs, steps=120, chunk_steps=40))
    a = result.arrays
    assert a["snap_step"].tolist() == [[0, 12, 60, 120]] * 2
    for run in range(2):
        for k, step in enumerate((0, 12, 60)):
            update = np.sqrt(np.sum(a["snap_update_norm"][run, k] ** 2))
            assert update == pytest.approx(0.05 * result.grad_norm_trace[run, step], rel=1e-4)
    assert np.all(np.isfinite(a["snap_update_norm"][:, 3]))  # at the end: the update one more step would make


def test_no_seed_is_dropped_when_gradients_underflow():
    # A deep linear net with weight_var 0.01 shrinks the gradient 10x per layer: 1e-25 at the input, whose
    # squared entries underflow float32. Every seed still gets a growth and a ratio (growth = weight_var).
    model = {"family": "mlp", "depth": 26, "width": 32, "activation": "linear", "init": "normal",
             "weight_var": 0.01, "bias_var": 0.0, "norm": "none", "residual": False}
    task = {"name": "teacher_student", **dataclasses.asdict(TASKS["teacher_student"].Config(n_train=64,
                                                                                                batch_size=32))}
    result = probe.probe(task, model, seeds=4)
    assert result["degenerate_seeds"] == 0
    assert all(isinstance(g, float) for g in result["growth_per_layer_per_seed"])
    assert result["growth_per_layer"] == pytest.approx(0.01, rel=0.25)
    assert all(0 < r < 1e-20 for r in result["e2e_ratio_per_seed"])


def test_matched_scale_sigmoid_is_a_rescaled_tanh_network_plus_a_bias():
    # sigmoid(x) = 1/2 + tanh(x/2)/2: a sigmoid layer V sigmoid(W x) is the tanh layer (V/2) tanh((W/2) x) plus
    # the bias V 1/2. Halving both W and V (the next layer's weights) is a factor 4 in variance each: a sigmoid
    # network at 16 x the weight variance computes a tanh network at the baseline's, plus a bias per layer.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 7))
    w, v = rng.normal(size=(7, 6)), rng.normal(size=(6, 3))
    sigmoid_net = jax.nn.sigmoid(x @ w) @ v
    tanh_net = np.tanh(x @ (w / 2)) @ (v / 2) + 0.5 * np.ones(6) @ v
    np.testing.assert_allclose(sigmoid_net, tanh_net, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.nn.sigmoid(x), 0.5 + 0.5 * np.tanh(x / 2), rtol=1e-6)


def test_equal_initial_weights_stay_symmetric_through_training(measured):
    # Equal units get equal gradients: every weight matrix stays rank 1 (rank / 8 = 1/8), while a random
    # initialisation starts (and stays) spread (about 1/2 for a square Gaussian matrix).
    constant, random = measured[1]["constant"]["per_seed"], measured[1]["linear"]["per_seed"]
    assert constant["kernel_rank_init"] == pytest.approx([1 / 8] * 4, rel=1e-3)
    assert constant["kernel_rank_final"] == pytest.approx([1 / 8] * 4, rel=1e-3)
    assert constant["final_train_loss"] != pytest.approx(constant["loss_0"], rel=1e-3)  # it did train
    finished = [v for v in random["kernel_rank_final"] if v is not None]  # diverged seeds have no final rank
    assert min(random["kernel_rank_init"]) > 0.3 and finished and min(finished) > 0.3
