"""The transformer family, the language-modelling tasks, mixed precision and the instability mitigations."""
import dataclasses
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gradbench import cli as cli
from gradbench.analysis import claims
from gradbench.spec.claim_schema import matches
from gradbench.engine import probe, runner
from gradbench.spec import optim, suite
from gradbench.spec.build import make_task
from gradbench.models import mlp, transformer
from gradbench.tasks import assoc_recall, markov_lm

SUITES = Path(__file__).resolve().parent.parent / "bench" / "suites"

HEADER = """
[suite]
name = "tiny-transformer"
seeds = 2
steps = 40
early_stop = false
"""

# 2^24 overflows float16 in the backward pass of this tiny MLP.
FLOAT16 = """
[task]
name = "teacher_student"
input_dim = 4
teacher_width = 4
n_train = 64
n_heldout = 16
batch_size = 8

[model]
family = "mlp"
depth = 2
width = 8
activation = "tanh"
dtype = "float16"

[optimizer]
name = "sgd"
lr = 0.05

[[mitigation]]
name = "loss_scaling"
mode = "dynamic"
scale = 16777216.0
period = 5
"""


@pytest.fixture(scope="module")
def stability(module_tmp):
    """The stability suite's learning-rate experiment (a 2-layer Transformer on markov_lm, Adam at lr 0.003
    and 0.1), shrunk to 2 seeds and 200 steps, through the real harness; with the loaded suite."""
    loaded = suite.load(SUITES / "transformer_stability.toml", seeds=2, steps=200)
    shrunk = dataclasses.replace(loaded, cells=[c for c in loaded.cells if c.experiment == "learning-rate"],
                                 claims=[c for c in loaded.claims if c["id"] == "T1"])
    return loaded, shrunk, runner.run_suite(shrunk, module_tmp / "stability")


@pytest.fixture(scope="module")
def float16_record(module_tmp):
    """The tiny float16 MLP with dynamic loss scaling through the real harness."""
    path = module_tmp / "float16.toml"
    path.write_text(HEADER + FLOAT16)
    return runner.run_suite(suite.load(path), module_tmp / "float16")[0]


def test_markov_entropy_rate_matches_a_long_sample():
    task = make_task({"name": "markov_lm", **dataclasses.asdict(markov_lm.Config(vocab=12, data_seed=3))})
    x, y = markov_lm.sequences(jax.random.key(7), 1000, 64, task.data["log_p"], task.data["log_pi"])
    nll = -np.asarray(task.data["log_p"])[np.asarray(x), np.asarray(y)]
    # The mean surprisal of the true chain estimates the entropy rate; successive tokens are dependent, so
    # the tolerance is 6 naive standard errors (the chain mixes in a few steps).
    assert abs(nll.mean() - task.best_loss) < 6 * nll.std() / math.sqrt(nll.size)
    counts = np.bincount(np.asarray(x).ravel(), minlength=12) / x.size
    unigram = -np.sum(counts[counts > 0] * np.log(counts[counts > 0]))
    chain = markov_lm.transition_matrix(markov_lm.Config(vocab=12, data_seed=3))
    assert abs(unigram - markov_lm.unigram_entropy(chain)) < 0.01  # the closed form H(pi)
    assert abs(task.trivial_loss - markov_lm.unigram_entropy(chain)) < 0.05
    assert task.best_loss < task.trivial_loss


def test_assoc_recall_examples_pair_the_query_with_its_value():
    config = assoc_recall.Config(n_keys=6, n_values=5, n_pairs=3)
    x, y = assoc_recall.examples(jax.random.key(0), 64, config)
    x, y = np.asarray(x), np.asarray(y)
    assert x.shape == (64, 7)
    for row, target in zip(x, y):
        keys, values = row[0:6:2], row[1:6:2]
        assert len(set(keys)) == 3 and np.all(keys < 6) and np.all(values >= 6)
        assert target == values[list(keys).index(row[-1])]
    assert assoc_recall.make(config).trivial_loss == pytest.approx(math.log(5), abs=0.02)


def test_a_trained_tiny_model_approaches_the_entropy_rate(stability):
    baseline = stability[2][0]
    assert baseline["config"]["optimizer"]["lr"] == 0.003
    task = make_task(baseline["config"]["task"])
    for loss in baseline["per_seed"]["final_heldout_loss"]:
        assert loss < task.best_loss + 0.1  # within 0.1 nats of the best achievable loss
    assert max(baseline["per_seed"]["loss_0"]) > task.trivial_loss  # it started above the unigram loss


def test_instability_diagnostics_are_recorded_per_seed_and_traced(stability):
    baseline = stability[2][0]
    ps, trace = baseline["per_seed"], baseline["trace"]
    for name in transformer.DIAGNOSTICS:
        assert len(ps[name]) == 2 and all(v is not None for v in ps[name])
        assert len(trace[name]) == 2 and len(trace[name][0]) == len(trace["step"])
    for seed in range(2):
        # Max-reduced over training (from the value at init): at least every step's value.
        assert ps["max_attn_logit"][seed] >= max(trace["max_attn_logit"][seed]) - 1e-6
        assert ps["min_attn_entropy"][seed] <= min(trace["min_attn_entropy"][seed]) + 1e-6
        assert 0.0 <= ps["min_attn_entropy"][seed] <= 1.0
        assert ps["skipped_steps"][seed] == 0
        # Gradient entries are counted only where precision is the question (low precision or loss scaling).
        assert ps["grad_nonfinite_fraction"][seed] is None and ps["grad_zero_fraction"][seed] is None


def test_combined_mitigations_apply_every_change(tmp_path):
    combo = ('{name = "combo", apply = [{name = "qk_norm"}, {name = "z_loss", coefficient = 1e-3}, '
             '{name = "warmup", warmup_steps = 20}, {name = "weight_decay"}, {name = "clip_by_global_norm"}]}')
    path = tmp_path / "combo.toml"
    path.write_text(BASE + f'\n[[experiment]]\nname = "e"\nmitigation = [{{name = "none"}}, {combo}]\n')
    cells = suite.load(path).cells
    assert len(cells) == 2
    baseline, plan = cells[0].plan, cells[1].plan
    assert baseline["model"]["qk_norm"] is False and baseline["aux_losses"] == [] and baseline["transforms"] == []
    assert plan["model"]["qk_norm"] is True
    assert plan["aux_losses"] == [{"name": "z_loss", "coefficient": 1e-3}]
    assert plan["optimizer"]["warmup_steps"] == 20
    assert plan["transforms"] == [{"name": "weight_decay", "weight_decay": 1e-4},
                                  {"name": "clip_by_global_norm", "max_norm": 1.0}]
    # Every traced value of the combo is an input of the compiled program: a sweep does not recompile.
    assert optim.traced_values(plan) == {"lr": 0.01, "transforms.0.weight_decay": 1e-4,
                                         "transforms.1.max_norm": 1.0, "aux_losses.0.coefficient": 1e-3,
                                         "model.weight_var": 1.0, "model.bias_var": 0.0}


def test_dynamic_loss_scaling_skips_float16_overflow_and_trains(float16_record):
    ps = float16_record["per_seed"]
    assert ps["diverged"] == [False, False]
    for seed in range(2):
        # 2^24 overflows float16 in the backward pass: those steps are skipped and the scale halved.
        assert ps["skipped_steps"][seed] >= 3
        assert ps["grad_nonfinite_fraction"][seed] > 0
        assert ps["final_loss_scale"][seed] < 2.0**24
        assert ps["final_train_loss"][seed] < ps["loss_0"][seed]


def test_dynamic_loss_scale_halves_and_skips_on_overflow_and_grows_after_its_period():
    plan = {"loss_scaling": {"mode": "dynamic", "scale": None, "period": None}}
    hyper = {"loss_scaling.scale": 8.0, "loss_scaling.period": 3.0}
    state = optim.loss_scale_init(plan, hyper)
    state, skip = optim.loss_scale_update(plan, hyper, state, jnp.asarray(False))  # injected overflow
    assert bool(skip) and float(state["scale"]) == 4.0 and int(state["good_steps"]) == 0
    scales = []
    for _ in range(6):
        state, skip = optim.loss_scale_update(plan, hyper, state, jnp.asarray(True))
        assert not bool(skip)
        scales.append(float(state["scale"]))
    assert scales == [4.0, 4.0, 8.0, 8.0, 8.0, 16.0]
    static = {"loss_scaling": {"mode": "static", "scale": None, "period": None}}
    state, skip = optim.loss_scale_update(static, hyper, optim.loss_scale_init(static, hyper), jnp.asarray(False))
    assert not bool(skip) and float(state["scale"]) == 8.0


def test_z_loss_gradient_matches_the_hand_computation():
    logits = jax.random.normal(jax.random.key(0), (4, 3, 5)) * 3.0
    coef = 0.3
    z_loss = optim.AUX_LOSSES["z_loss"][0]
    log_z = jax.nn.logsumexp(logits, axis=-1)
    assert float(z_loss(logits, coef)) == pytest.approx(coef * float(jnp.mean(log_z**2)), rel=1e-6)
    # d/dlogit_j of coef * mean(log^2 Z) = coef * 2 log Z * softmax_j / (number of predictions)
    expected = coef * 2.0 * log_z[..., None] * jax.nn.softmax(logits, axis=-1) / 12
    np.testing.assert_allclose(jax.grad(z_loss)(logits, coef), expected, rtol=1e-5, atol=1e-7)


def test_qk_norm_gives_unit_rms_queries_and_keys_per_head():
    x = jax.random.normal(jax.random.key(1), (3, 6, 16)) * 5.0 + 2.0
    rms = lambda a: jnp.sqrt(jnp.mean(a**2, axis=-1))  # noqa: E731  per (batch, position, head)
    for qk_norm in (True, False):
        attn = transformer.Attention(transformer.Config(d_model=16, heads=4, qk_norm=qk_norm), nnx.Rngs(params=0))
        q, k, _ = attn.queries_keys(x)
        assert q.shape == (3, 6, 4, 4)
        if qk_norm:
            np.testing.assert_allclose(rms(q), 1.0, atol=1e-3)
            np.testing.assert_allclose(rms(k), 1.0, atol=1e-3)
        else:
            assert float(jnp.max(jnp.abs(rms(q) - 1.0))) > 0.1


@pytest.mark.parametrize("a", [0.0, 1.5])
def test_max_attention_logit_and_entropy_on_hand_set_weights(a):
    """Embedding = identity, no position, q = a x, k = x, v = 0: logit(t, s) = a <x_t, x_s> / sqrt(2)."""
    config = transformer.Config(layers=1, d_model=2, heads=1, mlp_ratio=1, norm="none")
    model = transformer.Model(config, (5, 2), 3, rngs=nnx.Rngs(params=0))
    model.embed.linear.kernel[...] = jnp.eye(2)
    model.position[...] = jnp.zeros((5, 2))
    model.blocks[0].attn.qkv.linear.kernel[...] = jnp.concatenate([a * jnp.eye(2), jnp.eye(2), jnp.zeros((2, 2))], 1)
    x = np.asarray(jax.random.normal(jax.random.key(2), (2, 5, 2)))
    graphdef, state = nnx.split(model)
    diag = jax.jit(lambda s, x: nnx.merge(graphdef, s).diagnostics(x)[1])(state, jnp.asarray(x))
    logits = a * np.einsum("btf,bsf->bts", x, x) / math.sqrt(2)
    expected = max(logits[b, t, s] for b in range(2) for t in range(5) for s in range(t + 1))
    assert float(diag["max_attn_logit"]) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    if a == 0.0:  # equal logits: uniform attention, normalised entropy exactly 1
        assert float(diag["min_attn_entropy"]) == pytest.approx(1.0, abs=1e-5)
    else:
        assert float(diag["min_attn_entropy"]) < 1.0


def _dot_dtypes(jaxpr):
    """Operand dtypes of every dot_general in a jaxpr, sub-jaxprs included."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            out += [str(v.aval.dtype) for v in eqn.invars]
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    out += _dot_dtypes(inner)
    return out


@pytest.mark.parametrize("family, dtype", [("transformer", "bfloat16"), ("transformer", "float16"),
                                           ("mlp", "bfloat16")])
def test_low_precision_programs_compute_in_that_dtype(dtype, family):
    if family == "transformer":
        model = transformer.Model(transformer.Config(layers=1, d_model=8, heads=2, dtype=dtype), (4,), 5,
                                  sequence_output=True, rngs=nnx.Rngs(params=0))
        x, y = jnp.zeros((2, 4), jnp.int32), jnp.zeros((2, 4), jnp.int32)
    else:
        model = mlp.Model(mlp.Config(depth=2, width=8, dtype=dtype), (3,), 5, rngs=nnx.Rngs(params=0))
        x, y = jnp.ones((2, 3)), jnp.zeros((2,), jnp.int32)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype("float32")}

    def loss(params):
        logits = nnx.merge(graphdef, params, rest)(x)
        assert logits.dtype == jnp.float32  # the loss is computed in float32
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[..., None], -1)[..., 0])

    dots = _dot_dtypes(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)
    assert len(dots) >= 6  # forward and backward matrix products
    assert set(dots) == {dtype}


def test_attention_dtype_computes_only_the_attention_logits_in_it():
    config = transformer.Config(layers=1, d_model=8, heads=2, dtype="float16", attention_dtype="float32")
    model = transformer.Model(config, (4,), 5, sequence_output=True, rngs=nnx.Rngs(params=0))
    jaxpr = jax.make_jaxpr(lambda x: model(x))(jnp.zeros((3, 4), jnp.int32)).jaxpr
    dots = [([str(v.aval.dtype) for v in e.invars], e.outvars[0].aval.shape)
            for e in jaxpr.eqns if e.primitive.name == "dot_general"]
    wide = [shape for dtypes, shape in dots if dtypes == ["float32", "float32"]]
    assert wide == [(3, 2, 4, 4)]  # queries x keys: (batch, heads, queries, keys)
    assert all(dtypes == ["float16", "float16"] for dtypes, shape in dots if shape != (3, 2, 4, 4))
    assert len(dots) == 7  # q/k/v, logits, probabilities x values, output, MLP up and down, read-out
    exps = [e.outvars[0].aval for e in jaxpr.eqns if e.primitive.name == "exp"]
    assert any(a.shape == (3, 2, 4, 4) and str(a.dtype) == "float32" for a in exps)  # the softmax


def test_probe_gives_one_entry_per_block_with_residual_stream_rms():
    task = {"name": "markov_lm", "vocab": 3, "length": 3, "batch_size": 2, "n_heldout": 2}
    model = {"family": "transformer",
             **dataclasses.asdict(transformer.Config(layers=2, d_model=4, heads=1, mlp_ratio=1))}
    result = probe.probe(task, model, seeds=1)
    assert result["axis"] == "layers" and len(result["layers"]) == 2
    for row in result["layers"]:
        assert row["activation_rms"] > 0 and row["preact_grad_norm"] > 0 and row["weight_grad_norm"] > 0


def _exit_status(tmp_path, text, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    out = tmp_path / "out"
    status = cli.main(["run", str(path), "--out", str(out), "--quiet"])
    return status, capsys.readouterr().err, out


BASE = HEADER + """
[task]
name = "markov_lm"
vocab = 4
length = 4

[model]
family = "transformer"
d_model = 8
heads = 2

[optimizer]
name = "adam"
"""


@pytest.mark.parametrize("mitigation, words", [
    ('{name = "combo", apply = [{name = "qk_norm"}, {name = "z_los"}]}', ["combo", "z_los", "allowed"]),
    ('{name = "combo", apply = [{name = "z_loss", coefficient = -1.0}]}', ["z_loss", "coefficient", "> 0"]),
    ('{name = "loss_scaling", mode = "sometimes"}', ["mode", "sometimes", "dynamic"]),
])
def test_bad_mitigations_exit_2_naming_the_key(tmp_path, capsys, mitigation, words):
    text = BASE + f'\n[[experiment]]\nname = "e"\nmitigation = [{mitigation}]\n'
    status, err, out = _exit_status(tmp_path, text, capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert all(w in err for w in words), err
    assert not (out / "results.jsonl").exists()


def test_transformer_keys_are_validated(tmp_path, capsys):
    status, err, out = _exit_status(tmp_path, BASE.replace("heads = 2", "heads = 3"), capsys)
    assert status == 2 and "heads" in err and not (out / "results.jsonl").exists()


def test_a_float_task_is_refused_not_read_as_tokens(tmp_path, capsys):
    # teacher_student's examples are shaped (input_dim,) like a token sequence, but they are floats.
    text = BASE.replace('name = "markov_lm"\nvocab = 4\nlength = 4', 'name = "teacher_student"') + '\n[[experiment]]\nname = "e"\n'
    status, err, out = _exit_status(tmp_path, text, capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert all(w in err for w in ("teacher_student", "transformer", "integer tokens", "float32")), err
    assert not (out / "results.jsonl").exists()


def test_stability_suites_load_with_every_claim_selecting_cells(stability):
    large = suite.load(SUITES / "transformer_stability_large.toml")
    assert large.claims == stability[0].claims  # the large suite extends the small one: the same claims
    for loaded in (stability[0], large):
        assert [c["id"] for c in loaded.claims] == ["T1", "T2", "T3", "T4", "T5", "T6a", "T6b", "T7"]
        for claim in loaded.claims:
            for q in (claim["primary"], *claim["secondary"]):
                for side, experiment in (("baseline", q["experiment"]),
                                         ("variant", q["variant_experiment"] or q["experiment"])):
                    cells = [c for c in loaded.cells if c.experiment == experiment]
                    assert any(matches(c.config, q[side]) for c in cells), (claim["id"], side)


def test_higher_learning_rate_grows_attention_logits_in_the_shrunk_experiment(stability):
    _, shrunk, records = stability
    (verdict,) = claims.verdicts(shrunk.claims, records)
    assert verdict["primary"]["measure"] == "max_attn_logit" and verdict["primary"]["expect"] == "worse"
    by_lr = {claims.run_lr(r): r for r in records}
    low, high = by_lr[0.003], by_lr[0.1]
    # Already in 200 steps, every seed at lr 0.1 has larger attention logits and a more collapsed head.
    assert min(high["per_seed"]["max_attn_logit"]) > max(low["per_seed"]["max_attn_logit"])
    assert max(high["per_seed"]["min_attn_entropy"]) < min(low["per_seed"]["min_attn_entropy"])


def test_report_plots_every_model_diagnostic_against_step_and_learning_rate(stability, module_tmp):
    from gradbench.reports import figures, report

    _, _, records = stability
    text = report.write(module_tmp / "stability", module_tmp / "REPORT.md").read_text()
    plot_dir = module_tmp / "stability" / "plots"
    for name in transformer.DIAGNOSTICS:
        for kind in ("steps", "lr"):
            path = plot_dir / f"learning-rate-{name}-{kind}.png"
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"](stability/plots/{path.name})" in text
    # One-line captions name the learning rate of the traces: the grid's, shared by both arms here.
    assert text.count("per variant at lr=0.003 (the learning rate of the loss curves)") == len(transformer.DIAGNOSTICS)
    jobs = figures.plot_jobs("learning-rate", records, plot_dir)
    by_lr = {claims.run_lr(r): r for r in records if not r["config"].get("replicate")}  # block 0's cells
    low, high = by_lr[0.003], by_lr[0.1]
    _, traces, _, _ = jobs[str(plot_dir / "learning-rate-max_attn_logit-steps.png")]
    assert traces["none"] == (low["trace"]["step"], low["trace"]["max_attn_logit"])
    assert traces["optimizer(optimizer=adam,lr=0.1) (run at lr=0.1)"] == \
        (high["trace"]["step"], high["trace"]["max_attn_logit"])
    # Against the learning rate as run: the optimizer mitigation's 0.1, not the grid's 0.003.
    _, reduced, _, caption = jobs[str(plot_dir / "learning-rate-min_attn_entropy-lr.png")]
    assert reduced["none"] == [(0.003, low["per_seed"]["min_attn_entropy"])]
    assert reduced["optimizer(optimizer=adam,lr=0.1)"] == [(0.1, high["per_seed"]["min_attn_entropy"])]
    assert "min over the training steps" in caption
    # A family without DIAGNOSTICS (records without diagnostics) gets only the three usual figures.
    bare = [{**r, "diagnostics": {}} for r in records]
    assert sorted(Path(p).name for p in figures.plot_jobs("x", bare, plot_dir)) == \
        ["x-failure.png", "x-gradients.png", "x-loss.png"]
