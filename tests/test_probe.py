"""Gradient probes at initialisation against mean-field theory and a hand computation."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradbench.cli import main
from gradbench.engine import probe

TASK = {"name": "teacher_student", "input_dim": 16, "output_dim": 1, "teacher_width": 8, "n_train": 64,
        "n_heldout": 8, "noise": 0.1, "batch_size": 64, "target": 0.15, "data_seed": 0}


def mlp(**kw):
    return {"family": "mlp", "depth": 20, "width": 256, "activation": "relu", "init": "normal", "weight_var": 2.0,
            "bias_var": 0.0, "norm": "none", "residual": False, **kw}


@pytest.mark.parametrize("weight_var", [1.0, 3.0])
def test_relu_growth_matches_mean_field(weight_var):
    # Poole et al. 2016 / Schoenholz et al. 2017: for ReLU, E|d_l|^2 = (weight_var / 2) E|d_{l+1}|^2.
    result = probe.probe(TASK, mlp(weight_var=weight_var), seeds=4)
    assert result["growth_per_layer"] == pytest.approx(weight_var / 2, rel=0.08)
    assert len(result["layers"]) == 20 and result["layers"][0]["layer"] == 1


def test_fit_growth_on_a_made_up_profile():
    norms = np.sqrt(3.0 ** -np.arange(12.0))[None, :]  # squared norm shrinks 3x per layer towards the output
    assert probe.fit_growth(norms)[0] == pytest.approx(3.0)


def test_linear_network_gradients_equal_the_hand_computation():
    # For a linear MLP the gradient at layer l's pre-activation is W_{l+1}^T ... W_out^T dL/dy.
    cfg = mlp(depth=3, width=8, activation="linear", weight_var=1.0)
    task = dict(TASK, batch_size=4)
    result = probe.probe(task, cfg, seeds=1)
    from gradbench.engine import program
    from gradbench.spec.build import make_model, make_task

    t = make_task(task)
    k_init, k_data = program.seed_keys(0)
    model = make_model(cfg, t, k_init)
    x, y = t.sample(t.data, jax.random.fold_in(k_data, 0))
    pred = model(x)
    g = 2 * (pred - y) / pred.size  # d mean squared error / d prediction
    expected = []
    for layer in [model.readout, *reversed(list(model.layers)[1:])]:
        g = g @ layer.kernel[...].T
        expected.append(float(jnp.linalg.norm(g)))
    measured = [row["preact_grad_norm"] for row in result["layers"]]
    assert measured[::-1] == pytest.approx(expected, rel=1e-4)


def test_probe_command_prints_json(capsys):
    args = ["probe", "--model", "mlp", "--set", "depth=4", "--set", "width=16", "--set", "activation=tanh",
            "--set", "init=normal", "--set", "weight_var=2.0", "--set", "bias_var=0.05", "--batch", "8", "--seeds", "2", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["model"]["weight_var"] == 2.0 and out["config"]["task"]["batch_size"] == 8
    assert [row["layer"] for row in out["layers"]] == [1, 2, 3, 4]
    for key in ("preact_grad_norm", "weight_grad_norm", "activation_rms", "preact_grad_norm_std"):
        assert out["layers"][0][key] > 0
    assert out["growth_per_layer"] > 0


def test_probe_command_rejects_an_unknown_key(capsys):
    assert main(["probe", "--model", "mlp", "--set", "widht=3"]) == 2
    assert "did you mean 'width'" in capsys.readouterr().err
