"""The resnet family and the image tasks (digits, CIFAR-10 from local files) through the real harness."""
import dataclasses
import math
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gradbench.cli import main
from gradbench.engine import probe, runner
from gradbench.spec import suite
from gradbench.models import common, resnet
from gradbench.tasks import cifar10, digits

ROWS = 20  # images per fixture batch file


def write_cifar(root, skip=(), row_len=3072):
    """A tiny CIFAR-10 directory in the real pickle format; returns (directory, {file: (data, labels)})."""
    root.mkdir(parents=True, exist_ok=True)
    rng, written = np.random.default_rng(0), {}
    for i, name in enumerate(cifar10.TRAIN_FILES + (cifar10.HELDOUT_FILE,)):
        data, labels = rng.integers(0, 256, (ROWS, row_len), dtype=np.uint8), [(i + r) % 10 for r in range(ROWS)]
        written[name] = (data, labels)
        if name not in skip:
            (root / name).write_bytes(pickle.dumps({b"batch_label": name.encode(), b"labels": labels, b"data": data}))
    return root, written


def truncated(root):
    """A fixture whose data_batch_3 stops half way."""
    blob = (root / "data_batch_3").read_bytes()
    (root / "data_batch_3").write_bytes(blob[: len(blob) // 2])
    return root


SUITE = """
optimizer = {{ name = "sgd", lr = 0.01 }}

[suite]
name = "images"
seeds = 2
steps = 4
chunk_steps = 2

[[experiment]]
name = "resnet-digits"
task = {{ name = "digits", batch_size = 8, n_train = 64 }}
model = {{ family = "resnet", stages = 2, blocks_per_stage = 1, width = 4, norm = "batch" }}

[[experiment]]
name = "mlp-digits"
task = {{ name = "digits", batch_size = 8, n_train = 64 }}
model = {{ family = "mlp", depth = 2, width = 8 }}

[[experiment]]
name = "resnet-cifar10"
task = {{ name = "cifar10", path = "{cifar}", batch_size = 4 }}
model = {{ family = "resnet", stages = 1, blocks_per_stage = 1, width = 4, norm = "layer" }}
"""


@pytest.fixture(scope="module")
def cifar_dir(module_tmp):
    """A good fixture directory shared by the module."""
    return write_cifar(module_tmp / "cifar")


@pytest.fixture(scope="module")
def table(module_tmp, cifar_dir):
    """Every family x image task pair through the harness, a few steps each."""
    path = module_tmp / "images.toml"
    path.write_text(SUITE.format(cifar=cifar_dir[0]))
    return {r["experiment"]: r for r in runner.run_suite(suite.load(path), module_tmp / "out")}


@pytest.mark.parametrize("experiment", ["resnet-digits", "mlp-digits", "resnet-cifar10"])
def test_family_task_table_trains_through_the_harness(table, experiment):
    r = table[experiment]
    assert {"cell_id", "config", "divergence_rate", "per_seed", "throughput", "trace"} <= set(r)
    assert all(len(v) == 2 for v in r["per_seed"].values()) and r["divergence_rate"] == 0.0
    for key in ("loss_0", "final_train_loss", "final_heldout_loss", "final_heldout_metric"):
        assert all(v is not None and math.isfinite(v) for v in r["per_seed"][key]), key
    # Untrained 10-class logits: the loss is near log(10), neither tiny nor blown up.
    assert all(0.5 < v < 10 for v in r["per_seed"]["loss_0"])
    assert r["throughput"]["steps_per_s"] > 0


def small(**overrides):
    """A tiny ResNet config."""
    return resnet.Config(**{"stages": 1, "blocks_per_stage": 1, "width": 4, "norm": "batch", **overrides})


def test_batchnorm_uses_batch_statistics_in_training_and_running_averages_held_out():
    model = resnet.Model(small(), (6, 6, 2), 10, rngs=nnx.Rngs(0))
    x = 5.0 + 3.0 * jax.random.normal(jax.random.key(1), (16, 6, 6, 2))  # far from the stored mean 0 / var 1
    conv, eps = np.asarray(model.stem(x)), model.stem_norm.epsilon
    _, pre_eval, _ = model.forward(x, train=False)  # held out: stored mean 0, var 1, no update
    np.testing.assert_allclose(pre_eval[0], conv / np.sqrt(1 + eps), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(model.stem_norm.mean[...], 0.0)
    np.testing.assert_array_equal(model.stem_norm.var[...], 1.0)
    _, pre_train, _ = model.forward(x, train=True)  # training: this batch's statistics, per channel
    np.testing.assert_allclose(np.mean(pre_train[0], (0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.var(pre_train[0], (0, 1, 2)), 1.0, rtol=1e-3)
    # ... and the running averages move towards them: ra = 0.9 ra + 0.1 batch.
    np.testing.assert_allclose(model.stem_norm.mean[...], 0.1 * conv.mean((0, 1, 2)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.stem_norm.var[...], 0.9 + 0.1 * conv.var((0, 1, 2)), rtol=1e-4)
    assert not np.allclose(pre_train[0], pre_eval[0])


def _zero_second_convs(model):
    for block in model.blocks:
        block.conv2.kernel[...] = jnp.zeros_like(block.conv2.kernel[...])
        block.conv2.bias[...] = jnp.zeros_like(block.conv2.bias[...])


def test_residual_false_removes_the_skips():
    x = jax.random.normal(jax.random.key(2), (3, 8, 8, 1))
    # With every block's second conv zeroed, a block's output before its activation is exactly its skip.
    res = resnet.Model(small(stages=2, norm="none"), (8, 8, 1), 10, rngs=nnx.Rngs(0))
    _zero_second_convs(res)
    _, pre, acts = res.forward(x)
    np.testing.assert_allclose(pre[1], acts[0], atol=1e-6)  # identity skip (same shape)
    np.testing.assert_allclose(pre[2], res.blocks[1].proj(acts[1]), atol=1e-6)  # 1x1 projection (stride 2)

    plain = resnet.Model(small(stages=2, norm="none", residual=False), (8, 8, 1), 10, rngs=nnx.Rngs(0))
    assert all(block.proj is None for block in plain.blocks)
    _zero_second_convs(plain)
    _, pre, _ = plain.forward(x)
    assert [p.shape for p in pre] == [(3, 8, 8, 4), (3, 8, 8, 4), (3, 4, 4, 8)]
    np.testing.assert_array_equal(pre[1], 0.0)  # no skip: the zeroed conv is all there is
    np.testing.assert_array_equal(pre[2], 0.0)


@pytest.mark.parametrize("size,kernel,stride", [(8, 3, 1), (8, 3, 2), (7, 3, 2), (8, 1, 2)])
def test_matmul_convolution_equals_xla_convolution(size, kernel, stride):
    kx, kk = jax.random.split(jax.random.key(3))
    x = jax.random.normal(kx, (2, size, size, 3))
    k = jax.random.normal(kk, (kernel, kernel, 3, 5))
    with jax.default_matmul_precision("highest"):  # GPUs otherwise use TF32 for float32 products
        want = jax.lax.conv_general_dilated(x, k, (stride, stride), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        got = resnet.conv_as_matmul(x, k, (stride, stride), "SAME")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("init", [n for n in resnet.Config.CHOICES["init"] if n != "xavier"])
def test_conv_kernels_drawn_flat_have_the_registered_initialisers_values(init):
    key, shape = jax.random.key(4), (3, 3, 4, 6)
    want = common.kernel_init(init, 2.0)(key, shape)
    np.testing.assert_allclose(resnet._conv_kernel_init(init, 2.0)(key, shape), want, rtol=1e-6)


def test_shapes_that_do_not_fit_are_rejected():
    for shape, seq, words in (((16,), False, "image inputs"), ((8, 8, 1), True, "sequence model")):
        with pytest.raises(ValueError, match=words):
            resnet.Model(small(), shape, 4, sequence_output=seq, rngs=nnx.Rngs(0))


def test_probe_reports_one_entry_per_block():
    task = {"name": "digits", **dataclasses.asdict(digits.Config(n_train=64, batch_size=8))}
    model = {"family": "resnet", **dataclasses.asdict(small(stages=2, norm="none"))}
    result = probe.probe(task, model, seeds=2)
    assert len(result["layers"]) == 3  # stem + 2 blocks
    keys = ("preact_grad_norm", "weight_grad_norm", "activation_rms")
    assert all(math.isfinite(row[k]) and row[k] > 0 for row in result["layers"] for k in keys)


def test_digits_split_and_standardisation():
    t = digits.make(digits.Config())
    x, y = t.data["train"]
    # 1797 images: 449 held out, 1348 for training of which the last 10% (135) validate.
    assert x.shape == (1213, 8, 8, 1) and t.data["heldout"][0].shape == (449, 8, 8, 1)
    assert t.data["validation"][0].shape == (135, 8, 8, 1)
    whole = np.concatenate([x, t.data["validation"][0]])  # standardised with every training image's statistics
    assert abs(float(whole.mean())) < 1e-5 and abs(float(whole.std()) - 1) < 1e-5
    # The trivial loss is the entropy of the training labels: close to log(10) for balanced classes.
    freq = np.bincount(np.asarray(t.data["train_eval"][1]), minlength=10) / len(y)
    assert set(np.unique(y).tolist()) == set(range(10))
    assert t.trivial_loss == pytest.approx(-np.sum(freq * np.log(freq))) and abs(t.trivial_loss - math.log(10)) < 0.01
    other = digits.make(digits.Config(data_seed=1, n_train=100))
    assert other.data["train"][0].shape[0] == 90
    assert not np.array_equal(other.data["heldout"][1], t.data["heldout"][1])


def test_cifar_reader_reads_the_pickle_format(cifar_dir):
    root, written = cifar_dir
    images, labels = cifar10.read_batch(root / "data_batch_2")
    data, want = written["data_batch_2"]
    assert images.shape == (ROWS, 32, 32, 3) and labels.tolist() == want
    # Channel-major rows: value (c, h, w) of a row lands at pixel (h, w), channel c.
    assert images[3, 5, 7, 2] == data[3, 2 * 1024 + 5 * 32 + 7] and images[3, 5, 7, 0] == data[3, 5 * 32 + 7]
    task = cifar10.make(cifar10.Config(path=str(root)))
    x, y = task.data["train"]
    assert x.shape == (5 * ROWS - 10, 32, 32, 3) and x.dtype == jnp.float32  # the last 10% validate
    assert task.data["heldout"][0].shape == (ROWS, 32, 32, 3) and task.data["validation"][0].shape[0] == 10
    labels = sum((written[n][1] for n in cifar10.TRAIN_FILES), [])
    assert y.tolist() + task.data["validation"][1].tolist() == labels
    whole = np.concatenate([x, task.data["validation"][0]])  # standardised with all training rows' statistics
    np.testing.assert_allclose(whole.mean((0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(whole.std((0, 1, 2)), 1.0, atol=1e-4)
    capped = cifar10.make(cifar10.Config(path=str(root), n_train=30, n_heldout=5, n_train_eval=10))
    assert capped.data["train"][0].shape[0] == 27 and capped.data["heldout"][0].shape[0] == 5
    assert capped.data["train_eval"][0].shape[0] == 10


def test_cifar_directory_from_the_environment(cifar_dir, monkeypatch):
    monkeypatch.setenv("CIFAR10_DIR", str(cifar_dir[0]))
    assert cifar10.make(cifar10.Config()).data["heldout"][0].shape[0] == ROWS
    monkeypatch.delenv("CIFAR10_DIR")
    with pytest.raises(ValueError, match="CIFAR10_DIR"):
        cifar10.make(cifar10.Config())


BROKEN = [  # (how the fixture is broken, words the error must contain)
    (lambda tmp: write_cifar(tmp / "c", skip=("test_batch",))[0], ["test_batch", "missing"]),
    (lambda tmp: truncated(write_cifar(tmp / "c")[0]), ["data_batch_3", "not a readable pickle"]),
    (lambda tmp: write_cifar(tmp / "c", row_len=3000)[0], ["data_batch_1", "3072", "(20, 3000)"]),
    (lambda tmp: tmp / "nowhere", ["nowhere", "does not exist"]),
]


@pytest.mark.parametrize("broken,words", BROKEN)
def test_broken_cifar_directory_gives_an_error_naming_the_path(tmp_path, broken, words):
    with pytest.raises(ValueError) as e:
        cifar10.make(cifar10.Config(path=str(broken(tmp_path))))
    assert all(word in str(e.value) for word in words + [str(tmp_path)]), str(e.value)


def _run_cli(tmp_path, text, capsys):
    (tmp_path / "bad.toml").write_text(text)
    status = main(["run", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "out"), "--quiet"])
    return status, capsys.readouterr().err, tmp_path / "out"


def test_cli_missing_cifar_directory_exits_2_and_writes_nothing(tmp_path, capsys):
    status, err, out = _run_cli(tmp_path, SUITE.format(cifar=tmp_path / "missing"), capsys)
    assert status == 2 and not out.exists()
    assert "cifar10" in err and str(tmp_path / "missing") in err and len(err.strip().splitlines()) == 1


def test_cli_mitigation_that_does_not_apply_to_resnet_exits_2(tmp_path, capsys):
    top = 'task = { name = "digits" }\nmodel = { family = "resnet" }\nmitigation = [{ name = "depth", depth = 8 }]'
    text = top + SUITE.format(cifar="x").split("[[experiment]]")[0]
    status, err, out = _run_cli(tmp_path, text, capsys)
    assert status == 2 and not out.exists()
    assert "does not apply to family 'resnet'" in err and "depth" in err
