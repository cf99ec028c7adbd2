"""init_perturbation: every initial parameter x (1 + eps N(0, 1)) from the seed's own key, eps traced."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradbench.cli import main
from gradbench.engine import program
from gradbench.spec import suite
from tests.conftest import tiny_suite


def _records(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_perturb_is_exact_at_zero_and_differs_per_seed():
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.arange(3.0)}
    same = program.perturb(params, 0, jnp.float32(0.0))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(params)))
    one, two = (program.perturb(params, s, jnp.float32(1e-3))["w"] for s in (0, 1))
    ratio = np.asarray(one / params["w"]) - 1
    assert 1e-4 < np.std(ratio) < 1e-2 and not np.allclose(one, two, rtol=0, atol=0)
    assert np.array_equal(one, program.perturb(params, 0, jnp.float32(1e-3))["w"])  # its own key: reproducible


def test_perturb_deals_one_draw_over_the_leaves_in_order():
    params = {"a": jnp.full((2, 3), 2.0), "b": jnp.full((2, 3), 2.0)}  # two leaves of one shape: distinct normals
    out = program.perturb(params, 7, jnp.float32(1e-3))
    key = jax.random.fold_in(jax.random.key(7), program.PERTURBATION_TAG)
    normals = np.asarray(jax.random.normal(key, (12,), jnp.float32))
    relative = np.concatenate([(np.asarray(out[k]) / 2.0 - 1).ravel() for k in ("a", "b")]) / 1e-3
    np.testing.assert_allclose(relative, normals, atol=1e-3)
    assert not np.allclose(out["a"], out["b"])


def test_perturbation_enters_the_cell_id_only_when_nonzero(tmp_path):
    path = tiny_suite(tmp_path, seeds=2, steps=10, lr="0.05")
    plain = [c.cell_id for c in suite.load(path).cells]
    assert [c.cell_id for c in suite.load(path, overrides={"init_perturbation": 0.0}).cells] == plain
    perturbed = suite.load(path, overrides={"init_perturbation": 1e-6}).cells
    assert perturbed[0].cell_id not in plain and perturbed[0].config["init_perturbation"] == 1e-6


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The tiny suite (4 seeds, 10 steps) without the setting, at eps 0 (--set), 1e-6 and 1e-3 (one program)."""
    directory = tmp_path_factory.mktemp("perturbation")
    path = tiny_suite(directory, seeds=4, steps=10, lr="0.05")
    out, compiled = {}, {}
    for name, extra in (("plain", []), ("0", ["--set", "init_perturbation=0"]),
                        ("1e-6", ["--set", "init_perturbation=1e-6"]), ("1e-3", ["--set", "init_perturbation=1e-3"])):
        before = program.COMPILES["programs"]
        assert main(["run", str(path), "--out", str(directory / name), "--quiet", "--no-report", *extra]) == 0
        out[name], compiled[name] = _records(directory / name)[0], program.COMPILES["programs"] - before
    return out, compiled


def test_zero_perturbation_is_the_unperturbed_run(runs):
    out, _ = runs
    assert out["0"]["cell_id"] == out["plain"]["cell_id"]
    assert out["0"]["per_seed"] == out["plain"]["per_seed"]  # every per-seed value, bit for bit


def test_perturbation_moves_the_initial_loss_by_about_eps_and_shares_one_program(runs):
    out, compiled = runs
    base = np.asarray(out["plain"]["per_seed"]["loss_0"])
    for eps in ("1e-6", "1e-3"):
        assert out[eps]["cell_id"] != out["plain"]["cell_id"]
        rel = np.abs(np.asarray(out[eps]["per_seed"]["loss_0"]) / base - 1)
        # Moved by the order of eps: at 1e-6 a seed's float32 loss (spacing ~1e-7 near 1) may round to the same value.
        assert np.all(rel < 100 * float(eps)) and np.median(rel) > float(eps) / 100, (eps, rel)
    assert compiled["1e-6"] == 1 and compiled["1e-3"] == 0  # eps is traced: the second value reuses the program
