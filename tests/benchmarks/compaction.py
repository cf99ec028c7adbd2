"""Finished runs cost (almost) nothing: a 4-point learning-rate grid whose three top points diverge within a few
steps against its one trainable point alone, both compiled first (warm), trained alternately.

    python -m tests.benchmarks.compaction [repeats]

Prints each repeat's wall seconds and their ratio (grid / alone; the issue's bound: at most 1.6), then checks
that the trainable point's per-seed numbers are bit-identical in both.
"""
import sys
import time

import numpy as np

from gradbench.engine import loop, runner
from gradbench.spec import suite

SUITE = """
[suite]
name = "compaction"
seeds = 16
steps = 1000
chunk_steps = 50

[task]
name = "teacher_student"
input_dim = 8
n_train = 256
batch_size = 32
target = 0.01

[model]
family = "mlp"
depth = 8
width = 32
activation = "tanh"

[optimizer]
name = "sgd"
lr = {lr}
"""


def groups(tmp, lr):
    path = tmp / f"{len(lr)}.toml"
    path.write_text(SUITE.format(lr=lr))
    group, = runner.group_cells(suite.load(path).cells)
    return group, loop.prepare(group.plan, group.runs, steps=group.steps, chunk_steps=50)


def main(repeats: int = 5):
    import tempfile
    from pathlib import Path

    tmp = Path(tempfile.mkdtemp())
    grid, alone = groups(tmp, "[0.02, 100.0, 1000.0, 10000.0]"), groups(tmp, "[0.02]")
    results, ratios = {}, []
    for i in range(repeats + 1):  # the first pair warms up (first calls), not reported
        seconds = {}
        for name, (group, prepared) in (("alone", alone), ("grid", grid)) if i % 2 else (("grid", grid), ("alone", alone)):
            t0 = time.perf_counter()
            results[name] = loop.train_group(prepared)
            seconds[name] = time.perf_counter() - t0
        if i:
            ratios.append(seconds["grid"] / seconds["alone"])
            print(f"repeat {i}: grid {seconds['grid']:.2f} s, alone {seconds['alone']:.2f} s, ratio {ratios[-1]:.2f} "
                  f"(grid computed {results['grid'].throughput.get('computed_fraction', 1.0):.2f} of its run-steps)", flush=True)
    print(f"median ratio {np.median(ratios):.2f} over {repeats} repeats")
    grid_result, alone_result = results["grid"], results["alone"]
    first = [i for i, r in enumerate(grid_result.runs) if r.cell_index == 0]
    assert grid_result.arrays["diverged"][len(first):].all(), "the top three points should all diverge"
    for key, value in alone_result.arrays.items():
        np.testing.assert_array_equal(grid_result.arrays[key][first], value, err_msg=key)
    np.testing.assert_array_equal(grid_result.loss_trace[first], alone_result.loss_trace)
    print("the trainable point's per-seed numbers are bit-identical in both")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
