"""Throughput benchmarks (pytest-benchmark; skipped in the normal test run).

    python -m pytest tests/benchmarks -n 0 -m benchmark --benchmark-enable --benchmark-columns=median,ops
    python -m tests.benchmarks.test_throughput    # the same pairs interleaved, printed as ratios

Pairs to read side by side (same group, one process):
- harness vs a bare jax.jit'ed lax.scan of the same training step (MLP depth 8,
  width 256, batch 128, Adam after clip_by_global_norm, one seed): the
  harness's divergence and convergence bookkeeping should cost under 10%.
- 64 seeds in one program vs 64 single-seed programs run one after another
  (MLP depth 4, width 32): the vmapped program should be >= 1.5x faster.
- batch generation: indices into a stored training set vs a fresh Gaussian
  batch per step, with the threefry and rbg PRNGs.
- efficiency: an MLP of width 1024 and batch 512 (plain SGD, one seed): the
  harness's FLOP/s (FLOPs counted from the jaxpr) over the FLOP/s of a
  1024 x 1024 matrix product timed alternately in the same process.
"""
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gradbench.engine import loop, program
from gradbench.records import calibrate
from gradbench.spec import optim
from gradbench.spec.build import make_model, make_task

pytestmark = pytest.mark.benchmark
STEPS = 100  # steps per chunk


def plan(depth, width, batch, transforms=()):
    task = {"name": "teacher_student", "input_dim": 16, "output_dim": 1, "teacher_width": 32, "n_train": 4096,
            "n_heldout": 256, "noise": 0.1, "batch_size": batch, "target": 1e-9, "data_seed": 0}
    model = {"family": "mlp", "depth": depth, "width": width, "activation": "tanh", "init": "lecun",
             "weight_var": 1.0, "bias_var": 0.0, "norm": "none", "residual": False}
    optimizer = {"name": "adam", "lr": 1e-3, "warmup_steps": 0, **optim.optimizer_defaults("adam")}
    return {"task": task, "model": model, "optimizer": optimizer, "transforms": list(transforms), "skip_nonfinite": 0}


CLIP = ({"name": "clip_by_global_norm", "max_norm": 1.0},)


def harness_chunk(p, seeds):
    """A callable running one compiled harness chunk over `seeds` runs (state carried across calls)."""
    hyper = {**optim.traced_values(p), "budget": 10**9, "factor": 10.0, "smoothing": 0.9,
             "stop_at_convergence": 0.0}
    runs = [loop.Run(0, s, hyper) for s in range(seeds)]
    prepared = loop.prepare(optim.static_plan(p), runs, steps=10**9, chunk_steps=STEPS)
    prog, (hyper, seeds_arr, _, unit_state, data) = prepared.prog, prepared.inputs
    state = {"carry": prog.init(seeds_arr, hyper, data, unit_state), "start": 0}

    def run():
        state["carry"], *out = prog.chunk(state["carry"], hyper, seeds_arr, data, state["start"])
        state["start"] += STEPS
        jax.block_until_ready(out)

    run()
    run.prog = prog
    return run


def bare_chunk(p, batch_fn=None):
    """The same training step as a bare jitted lax.scan, with no bookkeeping."""
    task = make_task(p["task"])
    k_init, k_data = program.seed_keys(0)
    graphdef, params = nnx.split(make_model(p["model"], task, k_init), nnx.Param)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    sample = batch_fn or task.sample

    def step(carry, t):
        params, opt_state = carry
        x, y = sample(task.data, jax.random.fold_in(k_data, t))
        loss, grads = jax.value_and_grad(lambda q: task.loss(nnx.merge(graphdef, q)(x), y))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    # compiled with the harness's options (gradbench.engine.program.COMPILER_OPTIONS): the harness's own cost alone
    @functools.partial(jax.jit, donate_argnums=0,
                       compiler_options=program.COMPILER_OPTIONS.get(jax.default_backend()))
    def chunk(carry, start):
        return jax.lax.scan(step, carry, start + jnp.arange(STEPS))

    state = {"carry": (params, tx.init(params)), "start": 0}

    def run():
        state["carry"], losses = chunk(state["carry"], state["start"])
        state["start"] += STEPS
        jax.block_until_ready(losses)

    run()
    return run


@pytest.mark.parametrize("variant", ["harness", "bare_scan"])
def test_one_seed_overhead(benchmark, variant):
    benchmark.group = "mlp d8 w256 b128 adam+clip, 1 seed, 100 steps"
    p = plan(8, 256, 128, CLIP)
    run = harness_chunk(p, 1) if variant == "harness" else bare_chunk(p)
    benchmark.pedantic(run, rounds=15, warmup_rounds=2)


@pytest.mark.parametrize("variant", ["64_seeds_one_program", "64_programs_in_sequence"])
def test_seed_batching(benchmark, variant):
    benchmark.group = "mlp d4 w32 b64, 64 seeds x 100 steps"
    p = plan(4, 32, 64)
    if variant == "64_seeds_one_program":
        run = harness_chunk(p, 64)
    else:
        one = harness_chunk(p, 1)
        run = lambda: [one() for _ in range(64)]  # noqa: E731
    benchmark.pedantic(run, rounds=5, warmup_rounds=1)


def _fresh_gaussian(impl):
    def sample(data, key):
        del data
        key = jax.random.wrap_key_data(jax.random.key_data(key)[..., :2] if impl == "threefry2x32" else
                                       jnp.tile(jax.random.key_data(key), 2), impl=impl)
        x = jax.random.normal(key, (128, 16))
        return x, jnp.sum(x, axis=1, keepdims=True)
    return sample


@pytest.mark.parametrize("batches", ["indices_threefry", "gaussian_threefry", "gaussian_rbg"])
def test_batch_generation(benchmark, batches):
    benchmark.group = "mlp d8 w256 b128: batch generation"
    p = plan(8, 256, 128, CLIP)
    fn = {"indices_threefry": None, "gaussian_threefry": _fresh_gaussian("threefry2x32"),
          "gaussian_rbg": _fresh_gaussian("rbg")}[batches]
    benchmark.pedantic(bare_chunk(p, fn), rounds=10, warmup_rounds=2)


def interleaved_ratios(rounds: int = 15) -> dict[str, float]:
    """Each pair timed alternately in one process (robust on a shared machine): median time ratios."""
    p_big, p_small = plan(8, 256, 128, CLIP), plan(4, 32, 64)
    one = harness_chunk(p_small, 1)
    pairs = {
        "harness / bare scan (1 seed, d8 w256 b128)": (harness_chunk(p_big, 1), bare_chunk(p_big)),
        "64 sequential runs / 64 seeds in one program (d4 w32 b64)": (lambda: [one() for _ in range(64)],
                                                                     harness_chunk(p_small, 64)),
        "fresh Gaussian batch (threefry) / index sampling": (bare_chunk(p_big, _fresh_gaussian("threefry2x32")),
                                                             bare_chunk(p_big)),
        "fresh Gaussian batch (rbg) / index sampling": (bare_chunk(p_big, _fresh_gaussian("rbg")), bare_chunk(p_big)),
    }
    ratios = {}
    for name, (a, b) in pairs.items():
        times = {"a": [], "b": []}
        for _ in range(rounds if "64" not in name else 5):
            for key, fn in (("a", a), ("b", b)):
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
        ratios[name] = float(np.median(times["a"]) / np.median(times["b"]))
        print(f"{name}: {ratios[name]:.3f}  (medians {np.median(times['a']):.4f} s / {np.median(times['b']):.4f} s)")
    return ratios


def efficiency(rounds: int = 10) -> float:
    """Achieved FLOP/s of the harness (MLP depth 4, width 1024, batch 512, SGD, one seed) over the FLOP/s of a
    1024 x 1024 float32 matrix product, the two timed alternately; prints and returns the median ratio."""
    p = plan(4, 1024, 512)
    p["optimizer"] = {"name": "sgd", "lr": 1e-3, "warmup_steps": 0, **optim.optimizer_defaults("sgd")}
    run = harness_chunk(p, 1)
    flops_per_chunk = run.prog.flops_per_run_step * STEPS
    a, b = (jax.random.normal(jax.random.key(i), (1024, 1024), jnp.float32) for i in (0, 1))
    product = jax.jit(jnp.matmul)
    ratios = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        run()
        achieved = flops_per_chunk / (time.perf_counter() - t0)
        ratios.append(achieved / (2 * 1024**3 / calibrate._median_seconds(product, a, b)))
    print(f"MLP w1024 b512, SGD: {np.median(ratios):.2f} of the matrix product's FLOP/s "
          f"(rounds: {min(ratios):.2f} to {max(ratios):.2f}; {achieved / 1e9:.1f} GFLOP/s last)")
    return float(np.median(ratios))


if __name__ == "__main__":
    print(jax.devices())
    interleaved_ratios()
    efficiency()
