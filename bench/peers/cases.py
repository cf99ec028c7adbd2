"""`bench peers`: the suite against an idiomatic PyTorch eager loop on the same case, in one process.

Each case is a one-cell suite (the same TOML a user would write). The suite trains it through the
ordinary runner (its steps/s: the median over timed chunks); PyTorch trains the same model (the same
layers, activation and initial-weight variances: bench/peers/pytorch.py), on the same data (rows drawn
uniformly with replacement from the stored training set, or fresh batches drawn as the task draws
them), with the same optimiser chain (clip by global norm, then Adam with optax's defaults) for the
same number of steps per seed. PyTorch is probed briefly with one thread and with one per CPU and, for
several seeds, one seed after another ("loop") and all seeds at once under torch.func.vmap ("vmap");
the fastest setting trains the case and counts. Both report seed-steps per second: steps/s times the
seeds trained together. PyTorch is optional (`pip install 'gradbench[peers]'`).
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np

# Every case: one cell, the same optimiser chain (clip by global norm, then Adam with optax's defaults).
_HEAD = """
[suite]
name = "peer"
seeds = {seeds}
steps = {steps}
chunk_steps = {chunk}
trace_points = 2
early_stop = false
"""
_CHAIN = """
[optimizer]
name = "adam"
lr = 1e-3

[[mitigation]]
name = "clip_by_global_norm"
max_norm = 1.0
"""

MLP_CASE = _HEAD + """
[task]
name = "teacher_student"
input_dim = 16
teacher_width = 32
n_train = 4096
n_heldout = 256
noise = 0.1
batch_size = {batch}
target = 1e-9

[model]
family = "mlp"
depth = {depth}
width = {width}
activation = "tanh"
init = "lecun"

""" + _CHAIN


RNN_CASE = _HEAD + """
[task]
name = "adding"
length = {length}
batch_size = {batch}
n_heldout = 64
target = 1e-9

[model]
family = "rnn"
cell = "tanh"
hidden = {hidden}
recurrent_init = "normal"
recurrent_weight_var = 1.0
init = "lecun"

""" + _CHAIN

# The small ResNet of bench/suites/resnet_example.toml (2 stages of 1 block, width 8, relu, He init) with the
# family's default structure: BatchNorm after every conv and the skip connections on.
RESNET_CASE = _HEAD + """
[task]
name = "digits"
batch_size = {batch}
target = 1e-9

[model]
family = "resnet"
stages = {stages}
blocks_per_stage = 1
width = {width}
norm = "batch"
residual = true
activation = "relu"
init = "he"

""" + _CHAIN


@dataclasses.dataclass(frozen=True)
class Case:
    """One side-by-side comparison: a one-cell suite and how long to train it."""

    description: str
    toml: str
    seeds: int
    steps: int  # per seed, suite and PyTorch alike
    chunk: int  # steps per timed chunk (the first chunk, with compilation or warm-up, is not timed)
    # How PyTorch trains the seeds: "loop" (one model and optimiser per seed, one after another) and, for
    # several seeds, "vmap" (torch.func.vmap over the stacked seeds); each is measured, the faster counts.
    strategies: tuple = ("loop",)


CASES = {
    "mlp-d8-w256-b128-1seed": Case("MLP depth 8 width 256 batch 128, Adam after clip_by_global_norm, 1 seed",
                                   MLP_CASE.format(seeds=1, steps=1000, chunk=100, batch=128, depth=8, width=256),
                                   seeds=1, steps=1000, chunk=100),
    "mlp-d4-w32-b32-64seeds": Case("MLP depth 4 width 32 batch 32, Adam after clip_by_global_norm, 64 seeds",
                                   MLP_CASE.format(seeds=64, steps=200, chunk=40, batch=32, depth=4, width=32),
                                   seeds=64, steps=200, chunk=40, strategies=("loop", "vmap")),
    "rnn-h128-adding100-b64-16seeds": Case("tanh RNN hidden 128, adding task length 100, batch 64, Adam after "
                                           "clip_by_global_norm, 16 seeds",
                                           RNN_CASE.format(seeds=16, steps=20, chunk=5, length=100, batch=64,
                                                           hidden=128),
                                           seeds=16, steps=20, chunk=5, strategies=("loop", "vmap")),
    "resnet-digits-b64-1seed": Case("small ResNet (2 stages x 1 block, width 8, BatchNorm, skips) on digits, "
                                    "batch 64, Adam after clip_by_global_norm, 1 seed",
                                    RESNET_CASE.format(seeds=1, steps=600, chunk=100, batch=64, stages=2, width=8),
                                    seeds=1, steps=600, chunk=100),
}


def torch_available() -> bool:
    """Whether PyTorch can be imported."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _rates(seconds: list[float], seed_steps: int) -> dict:
    """Seed-steps/s per timed chunk: the median and its interquartile range."""
    rates = seed_steps / np.asarray(seconds)
    q25, median, q75 = np.percentile(rates, [25, 50, 75])
    return {"seed_steps_per_s": float(median), "iqr": [float(q25), float(q75)], "timed_chunks": len(rates)}


def run_suite_side(case: Case) -> dict:
    """Trains the case's one-cell suite with the harness; its seed-steps/s and the cell's plan."""
    from gradbench.engine import runner
    from gradbench.spec import suite

    with tempfile.TemporaryDirectory(prefix="gradbench-peers-") as scratch:
        path = Path(scratch) / "case.toml"
        path.write_text(case.toml)
        loaded = suite.load(str(path))
        (cell,) = loaded.cells
        (record,) = runner.run_suite(loaded, Path(scratch) / "out")
    t = record["throughput"]
    iqr = t.get("steps_per_s_iqr", [t["steps_per_s"]] * 2)
    return {"seed_steps_per_s": t["steps_per_s"] * case.seeds, "iqr": [v * case.seeds for v in iqr],
            "timed_chunks": t.get("timed_chunks"), "compile_s": t["compile_s"], "plan": cell.plan}


def _torch_trainer(case: Case, plan: dict, threads: int, strategy: str):
    """train(steps) -> per-seed last losses, for PyTorch on `threads` threads (`strategy`: pytorch.TRAINERS)."""
    import torch
    import torch.nn.functional as F

    from gradbench.peers import pytorch
    from gradbench.spec.build import make_task

    torch.set_num_threads(threads)
    task = make_task(plan["task"])
    batches, loss_name = pytorch.TORCH_TASKS[plan["task"]["name"]]
    sample = batches(task, plan["task"], pytorch.TORCH_MODELS[plan["model"]["family"]][1])
    return pytorch.TRAINERS[strategy](plan, case.seeds, sample, getattr(F, loss_name))


def probe_torch(case: Case, plan: dict, threads: int, strategy: str) -> float:
    """A quick seed-steps/s of one PyTorch setting: a warm-up step, then the median of 2 to 10 single steps
    (at most about 2 s of them, so a setting that collapses on a busy machine costs little). The loop over
    seeds is probed on one seed: its seeds train one after another, each at the same rate."""
    probe_case = dataclasses.replace(case, seeds=1) if strategy == "loop" else case
    train = _torch_trainer(probe_case, plan, threads, strategy)
    train(1)
    seconds, deadline = [], time.perf_counter() + 2.0
    while len(seconds) < 2 or (len(seconds) < 10 and time.perf_counter() < deadline):
        t0 = time.perf_counter()
        train(1)
        seconds.append(time.perf_counter() - t0)
    return probe_case.seeds / float(np.median(seconds))


def run_torch_side(case: Case, plan: dict, threads: int, strategy: str = "loop") -> dict:
    """Trains the same model, data, optimiser chain and steps in a PyTorch eager loop, timed per chunk."""
    import torch

    train = _torch_trainer(case, plan, threads, strategy)
    seconds, last = [], []
    for chunk in range(case.steps // case.chunk):
        t0 = time.perf_counter()
        last = train(case.chunk)
        if chunk:  # the first chunk warms PyTorch up, like the suite's first (compiling) chunk
            seconds.append(time.perf_counter() - t0)
    return {**_rates(seconds, case.seeds * case.chunk), "final_batch_loss": float(np.median(last)),
            "threads": torch.get_num_threads(), "strategy": strategy, "torch": torch.__version__}


def compare(names: list[str], cases: dict | None = None) -> list[dict]:
    """Runs every named case (of `cases`, default CASES) on both sides; one row per case, ratio suite / PyTorch."""
    cases = CASES if cases is None else cases
    rows = []
    for name in names:
        case = cases[name]
        ours = run_suite_side(case)
        plan = ours.pop("plan")
        # PyTorch at its fastest thread count and strategy: one thread can beat all cores on small matrices or
        # a busy machine (there, all cores can be many times slower); vmap over seeds can beat a loop over
        # them, or not. A short probe of each picks the one that trains the whole case.
        settings = [(strategy, n) for strategy in case.strategies for n in sorted({1, os.cpu_count() or 1})]
        probed = {s: probe_torch(case, plan, s[1], s[0]) for s in settings} if len(settings) > 1 else {}
        strategy, threads = max(probed, key=probed.get) if probed else settings[0]
        theirs = run_torch_side(case, plan, threads, strategy)
        theirs["probed"] = {f"{s}, {n} threads": rate for (s, n), rate in probed.items()}
        rows.append({"case": name, "description": case.description, "seeds": case.seeds, "steps": case.steps,
                     "suite": ours, "pytorch": theirs,
                     "ratio": ours["seed_steps_per_s"] / theirs["seed_steps_per_s"]})
    return rows
