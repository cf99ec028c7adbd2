"""Width sweeps through the real harness: muP keeps the largest stable learning rate, standard moves it."""
import collections

import pytest

from gradbench.engine import runner
from gradbench.spec import suite

WIDTHS = (32, 128, 512)
LRS = (0.0625, 0.125, 0.25, 0.5)

SUITE = f"""
[suite]
name = "width-sweep"
seeds = 1
steps = 10
chunk_steps = 10
early_stop = false

[task]
name = "teacher_student"
input_dim = 8
teacher_width = 8
n_train = 64
n_heldout = 8
batch_size = 32

[model]
family = "mlp"
depth = 2
activation = "tanh"
base_width = 32

[optimizer]
name = "sgd"
lr = {list(LRS)}

# Standard parameterisation at the ends of the sweep only (each width is one more compiled program).
[[experiment]]
name = "standard"
model = {{width = [32, 512]}}

[[experiment]]
name = "mup"
model = {{width = {list(WIDTHS)}}}
mitigation = [{{name = "parameterization", parameterization = "mup"}}]
"""


@pytest.fixture(scope="module")
def stable_lr(module_tmp):
    """(mitigation, width) -> the largest learning rate of the grid up to which no seed diverged (0: none)."""
    path = module_tmp / "widths.toml"
    path.write_text(SUITE)
    records = runner.run_suite(suite.load(path), module_tmp / "out")
    rates = collections.defaultdict(dict)
    for r in records:
        rates[r["config"]["mitigation"]["name"], r["config"]["model"]["width"]][r["config"]["optimizer"]["lr"]] = \
            r["divergence_rate"]
    out = {}
    for key, by_lr in rates.items():
        stable = 0.0
        for lr in sorted(by_lr):
            if by_lr[lr] > 0:
                break
            stable = lr
        out[key] = stable
    return out


def test_standard_parameterisation_moves_the_stable_lr_with_width(stable_lr):
    # SGD's stable step is about 2 / (largest NTK eigenvalue), which grows with width: 32 -> 512 moves it
    # by 4x or more (at 512 not even the smallest step of the grid is stable).
    assert stable_lr["none", 32] >= 4 * stable_lr["none", 512]


def test_mup_keeps_the_stable_lr_within_a_factor_of_two(stable_lr):
    values = [stable_lr["parameterization", w] for w in WIDTHS]
    assert min(values) > 0 and max(values) <= 2 * min(values)
    # At the base width muP is the standard parameterisation.
    assert stable_lr["parameterization", 32] == stable_lr["none", 32]
