"""The rnn family and the sequence tasks (adding, copy_memory): harness runs, gradient scaling, baselines, bad input."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gradbench import cli as cli
from gradbench.engine import runner
from gradbench.spec import suite
from gradbench.models import rnn
from gradbench.tasks import adding

SEEDS = 2

HEADER = """
[suite]
name = "tiny-rnn"
seeds = 2
steps = 4
chunk_steps = 2
"""

# One experiment per cell type; tiny shapes so each program compiles in seconds. The evaluation sets are
# not tiny: the trivial loss, which sets the divergence threshold, is measured on them.
EXPERIMENTS = """
[optimizer]
name = "sgd"
lr = 0.01

[[experiment]]
name = "adding-tanh"
task = {name = "adding", length = 4, batch_size = 32, n_heldout = 256}
model = {family = "rnn", cell = "tanh", hidden = 4}

[[experiment]]
name = "adding-lstm"
task = {name = "adding", length = 4, batch_size = 32, n_heldout = 256}
model = {family = "rnn", cell = "lstm", hidden = 4, recurrent_init = "orthogonal"}

[[experiment]]
name = "copy-gru"
task = {name = "copy_memory", length = 2, n_symbols = 3, n_remember = 2, batch_size = 4, n_heldout = 256}
model = {family = "rnn", cell = "gru", hidden = 4, layers = 2, recurrent_init = "default"}
"""

ADDING_BASE = """
[task]
name = "adding"
length = 4
batch_size = 4
n_heldout = 8

[model]
family = "rnn"
hidden = 4

[optimizer]
name = "sgd"
"""


@pytest.fixture(scope="module")
def records(module_tmp):
    """Runs the three tiny experiments through the real harness once."""
    path = module_tmp / "rnn.toml"
    path.write_text(HEADER + EXPERIMENTS)
    return runner.run_suite(suite.load(path), module_tmp / "out")


def test_every_cell_type_and_task_trains_through_the_harness(records):
    assert [r["experiment"] for r in records] == ["adding-tanh", "adding-lstm", "copy-gru"]
    for r in records:
        for key in ("cell_id", "config", "divergence_rate", "per_seed", "quality", "throughput", "trace"):
            assert key in r
        assert all(len(v) == SEEDS for v in r["per_seed"].values())
        assert r["divergence_rate"] == 0.0
        for key in ("loss_0", "final_train_loss", "final_heldout_loss", "final_heldout_metric"):
            assert all(v is not None and math.isfinite(v) for v in r["per_seed"][key]), key


def test_losses_start_at_the_trivial_scale(records):
    adding_loss_0 = records[0]["per_seed"]["loss_0"]
    copy_loss_0 = records[2]["per_seed"]["loss_0"]
    assert all(0.01 < v < 5.0 for v in adding_loss_0)
    # Small logits at initialisation: cross-entropy near log(n_symbols).
    assert all(abs(v - math.log(3)) < 0.5 for v in copy_loss_0)
    assert all(0.0 <= v <= 1.0 for v in records[2]["per_seed"]["final_heldout_metric"])


def test_explosion_has_one_entry_per_time_step(records):
    # adding: length 4; copy_memory: 2 n_remember + length + 1 = 7 steps.
    for r, steps in zip(records, (4, 4, 7)):
        e = r["explosion"]
        assert e["axis"] == "steps" and len(e["median_log10_preact_grad"][0]) == steps
        assert all(v is not None for v in e["growth_init"] + e["e2e_ratio_init"])


@pytest.mark.parametrize("radius", [0.5, 1.5])
def test_linear_rnn_gradient_scales_as_radius_to_the_distance(radius):
    """For W_h = r Q (Q orthogonal), d<v, h_T>/d h_t = (W_h^T)^(T-t) v has norm exactly r^(T-t) |v|."""
    steps, hidden = 8, 6
    config = rnn.Config(cell="tanh", activation="linear", hidden=hidden, recurrent_init="orthogonal",
                        recurrent_scale=radius, bias_var=0.1)
    model = rnn.Model(config, (steps, 3), 1, rngs=nnx.Rngs(params=0))
    x_BxTxF = jax.random.normal(jax.random.key(1), (2, steps, 3))
    v_BxH = jax.random.normal(jax.random.key(2), (2, hidden))
    zeros = [jnp.zeros((2, hidden))] * steps

    def loss(shifts):
        _, states, _ = model.forward(x_BxTxF, shifts=shifts)
        return jnp.sum(v_BxH * states[-1])

    grads = jax.grad(loss)(zeros)
    norms = np.array([float(jnp.linalg.norm(g)) for g in grads])
    expected = radius ** np.arange(steps - 1, -1, -1) * float(jnp.linalg.norm(v_BxH))
    np.testing.assert_allclose(norms, expected, rtol=1e-4)


@pytest.mark.parametrize("name", ["tanh", "relu", "sigmoid"])
def test_elman_scan_gradients_equal_autodiff_of_the_plain_loop(name):
    """The hand-written backward pass (one product per step, W's gradient after the loop) against autodiff of
    the same recurrence written as a plain scan, for every input, under vmap over runs as the engine uses it."""
    act = rnn.common.activation(name)

    def plain(xw, w, shift):
        def step(h, inputs):
            h = act(inputs[0] + h @ w) + inputs[1]
            return h, h
        return jax.lax.scan(step, jnp.zeros_like(xw[0]), (xw, shift))[1]

    keys = jax.random.split(jax.random.key(3), 4)
    runs, T, B, H = 3, 7, 5, 6
    xw = jax.random.normal(keys[0], (runs, T, B, H))
    w = 1.3 * jax.random.normal(keys[1], (runs, H, H)) / math.sqrt(H)
    shift = 0.1 * jax.random.normal(keys[2], (runs, T, B, H))
    probe = jax.random.normal(keys[3], (T, B, H))

    def grads(scan):
        loss = lambda xw, w, shift: jnp.sum(jnp.tanh(scan(xw, w, shift)) * probe)  # noqa: E731
        return jax.vmap(jax.value_and_grad(loss, argnums=(0, 1, 2)))(xw, w, shift)

    (mine, mine_g), (ref, ref_g) = grads(functools.partial(rnn.elman_scan, act)), grads(plain)
    np.testing.assert_allclose(mine, ref, rtol=1e-6)
    for a, b in zip(mine_g, ref_g):
        assert float(jnp.max(jnp.abs(b))) > 0.1
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_adding_trivial_predictor_has_the_documented_loss():
    task = adding.make(adding.Config(length=10, n_heldout=200_000))
    _, y = task.data["heldout"]
    loss = float(task.loss(jnp.ones_like(y), y))
    # Var((u1 + u2 - 1)^2) = E[d^4] - (1/6)^2 with E[d^4] = 1/15: standard error ~2.4e-4 at n = 200k.
    assert abs(loss - adding.TRIVIAL_LOSS) < 5 * math.sqrt((1 / 15 - 1 / 36) / 200_000)
    # The stated trivial loss is the one measured on the training-evaluation set: the closed form, within noise.
    assert task.trivial_loss == pytest.approx(float(jnp.var(task.data["train_eval"][1])), rel=1e-5)
    assert abs(task.trivial_loss - adding.TRIVIAL_LOSS) < 5 * math.sqrt((1 / 15 - 1 / 36) / 200_000)


def _exit_status(tmp_path, text, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    out = tmp_path / "out"
    status = cli.main(["run", str(path), "--out", str(out), "--quiet"])
    return status, capsys.readouterr().err, out


@pytest.mark.parametrize("mitigation", ["residual", "norm"])
def test_mitigation_that_does_not_apply_exits_2_naming_the_key(tmp_path, capsys, mitigation):
    text = HEADER + ADDING_BASE + f'\n[[mitigation]]\nname = "{mitigation}"\n'
    status, err, out = _exit_status(tmp_path, text, capsys)
    assert status == 2
    assert mitigation in err and "rnn" in err
    assert not (out / "results.jsonl").exists()


def test_rnn_on_a_non_sequence_task_exits_2(tmp_path, capsys):
    text = HEADER + '[task]\nname = "teacher_student"\n\n[model]\nfamily = "rnn"\n\n[optimizer]\nname = "sgd"\n'
    status, err, out = _exit_status(tmp_path, text, capsys)
    assert status == 2
    assert "rnn" in err and "(time, features)" in err and "(16,)" in err
    assert not (out / "results.jsonl").exists()


def test_activation_on_a_gated_cell_is_bad_input(tmp_path, capsys):
    text = HEADER + ADDING_BASE.replace('hidden = 4', 'hidden = 4\ncell = "lstm"\nactivation = "relu"')
    status, err, _ = _exit_status(tmp_path, text, capsys)
    assert status == 2 and "activation" in err
