"""`bench peers`: the suite against an idiomatic PyTorch eager loop on the same case, in one process.

Each case is a one-cell suite (the same TOML a user would write). The suite trains it through the
ordinary runner (its steps/s: the median over timed chunks); PyTorch trains the same model (the same
layers, activation and initial-weight variance), on the same training set (rows drawn uniformly with
replacement), with the same optimiser chain (clip by global norm, then Adam with optax's defaults) for
the same number of steps per seed, one seed after another, with one thread and with one per CPU (the faster
counts). Both report seed-steps per second: steps/s
times the seeds trained together. PyTorch is optional (`pip install 'gradbench[peers]'`).
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np

MLP_CASE = """
[suite]
name = "peer"
seeds = {seeds}
steps = {steps}
chunk_steps = {chunk}
trace_points = 2
early_stop = false

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

[optimizer]
name = "adam"
lr = 1e-3

[[mitigation]]
name = "clip_by_global_norm"
max_norm = 1.0
"""


@dataclasses.dataclass(frozen=True)
class Case:
    """One side-by-side comparison: a one-cell suite and how long to train it."""

    description: str
    toml: str
    seeds: int
    steps: int  # per seed, suite and PyTorch alike
    chunk: int  # steps per timed chunk (the first chunk, with compilation or warm-up, is not timed)


CASES = {
    "mlp-d8-w256-b128-1seed": Case("MLP depth 8 width 256 batch 128, Adam after clip_by_global_norm, 1 seed",
                                   MLP_CASE.format(seeds=1, steps=1000, chunk=100, batch=128, depth=8, width=256),
                                   seeds=1, steps=1000, chunk=100),
    "mlp-d4-w32-b32-64seeds": Case("MLP depth 4 width 32 batch 32, Adam after clip_by_global_norm, 64 seeds "
                                   "(PyTorch: one seed after another)",
                                   MLP_CASE.format(seeds=64, steps=300, chunk=50, batch=32, depth=4, width=32),
                                   seeds=64, steps=300, chunk=50),
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
    from bench import runner, suite

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


def torch_mlp(model: dict, in_dim: int, out_dim: int, generator):
    """The suite's MLP in PyTorch: Linear + activation per hidden layer, LeCun-normal weights, zero biases."""
    import torch
    from torch import nn

    activations = {"tanh": nn.Tanh, "relu": nn.ReLU}
    widths = [in_dim] + [model["width"]] * model["depth"] + [out_dim]
    layers = []
    for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])):
        linear = nn.Linear(w_in, w_out)
        with torch.no_grad():
            linear.weight.normal_(0.0, (1.0 / w_in) ** 0.5, generator=generator)
            linear.bias.zero_()
        layers.append(linear)
        if i < model["depth"]:
            layers.append(activations[model["activation"]]())
    return nn.Sequential(*layers)


def run_torch_side(case: Case, plan: dict, threads: int) -> dict:
    """Trains the same model, data, optimiser chain and steps in a PyTorch eager loop, seed after seed."""
    import torch

    torch.set_num_threads(threads)
    import torch.nn.functional as F

    from bench.build import make_task

    task = make_task(plan["task"])
    x_np, y_np = (np.array(a) for a in task.data["train"])  # writable copies
    x_all, y_all = torch.from_numpy(x_np.reshape(len(x_np), -1)), torch.from_numpy(y_np)
    opt, (clip,) = plan["optimizer"], plan["transforms"]
    batch = plan["task"]["batch_size"]
    runs = []
    for seed in range(case.seeds):
        generator = torch.Generator().manual_seed(seed)
        net = torch_mlp(plan["model"], x_all.shape[1], y_all.shape[1], generator)
        adam = torch.optim.Adam(net.parameters(), lr=opt["lr"], betas=(opt["b1"], opt["b2"]), eps=opt["eps"])
        runs.append((net, adam, generator))

    def train(net, adam, generator, steps):
        for _ in range(steps):
            idx = torch.randint(0, len(x_all), (batch,), generator=generator)
            loss = F.mse_loss(net(x_all[idx]), y_all[idx])
            adam.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip["max_norm"])
            adam.step()
        return loss.item()

    seconds, last = [], []
    for chunk in range(case.steps // case.chunk):
        t0 = time.perf_counter()
        last = [train(*run, case.chunk) for run in runs]
        if chunk:  # the first chunk warms PyTorch up, like the suite's first (compiling) chunk
            seconds.append(time.perf_counter() - t0)
    return {**_rates(seconds, case.seeds * case.chunk), "final_batch_loss": float(np.median(last)),
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def compare(names: list[str]) -> list[dict]:
    """Runs every named case on both sides; one row per case with the ratio suite / PyTorch."""
    rows = []
    for name in names:
        case = CASES[name]
        ours = run_suite_side(case)
        plan = ours.pop("plan")
        # PyTorch at its faster thread count: one thread can beat all cores on small matrices or a busy machine.
        theirs = max((run_torch_side(case, plan, n) for n in sorted({1, os.cpu_count() or 1})),
                     key=lambda side: side["seed_steps_per_s"])
        rows.append({"case": name, "description": case.description, "seeds": case.seeds, "steps": case.steps,
                     "suite": ours, "pytorch": theirs,
                     "ratio": ours["seed_steps_per_s"] / theirs["seed_steps_per_s"]})
    return rows
