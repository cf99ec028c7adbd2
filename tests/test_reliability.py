"""Reliability: every bad input ends in one line and exit 2 with nothing written; faults lose nothing."""
import pytest

from bench.__main__ import main
from bench.schema import log_grid
from tests.conftest import TINY

GOOD = dict(seeds=2, steps=20, lr="0.05", extra="")
BASE = TINY.format(**GOOD)
COMPARE = ('\n[[claim]]\nid = 1\ncomparison = [{{ experiment = "tiny", baseline = {{ name = "none" }}, '
           'variant = {{ name = "none" }}, expect = "better"{} }}]\n')


def edit(old, new):
    assert old in BASE, old
    return BASE.replace(old, new, 1)


def mitigation(text):
    return BASE + "\n[[mitigation]]\n" + text + "\n"


# (suite text, words the one-line message must contain)
BAD_SUITES = {
    "lr nan": (edit("lr = 0.05", "lr = nan"), ["optimizer.lr", "finite"]),
    "lr inf": (edit("lr = 0.05", "lr = inf"), ["optimizer.lr", "finite"]),
    "weight_var nan": (edit('activation = "tanh"', 'init = "normal"\nweight_var = nan'), ["model.weight_var"]),
    "target inf": (edit("target = 0.4", "target = inf"), ["task.target", "finite"]),
    "noise nan": (edit("target = 0.4", "target = 0.4\nnoise = nan"), ["task.noise", "finite"]),
    "divergence_factor inf": (edit("[suite]", "[suite]\ndivergence_factor = inf"), ["suite.divergence_factor"]),
    "max_norm nan": (mitigation('name = "clip_by_global_norm"\nmax_norm = nan'), ["mitigation[0].max_norm"]),
    "suite = 5": ("suite = 5\n[task]" + BASE.split("[task]", 1)[1], ["top level.suite", "a table"]),
    "claim = 5": ("claim = 5\n" + BASE, ["top level.claim", "a list of tables"]),
    "claim = [5]": ("claim = [5]\n" + BASE, ["top level.claim", "a list of tables"]),
    "experiment = [1, 2]": ("experiment = [1, 2]\n" + BASE, ["top level.experiment"]),
    "top-level task string": ('task = "teacher_student"\n' + BASE.replace("[task]", "[unused]"), ["top level"]),
    "top-level model = 5": ("model = 5\n" + BASE.replace("[model]", "[x]"), ["top level"]),
    "experiment model string": (BASE + '\n[[experiment]]\nname = "a"\nmodel = "mlp"\n',
                                ["experiment[0].model", "a table"]),
    "mitigation = [5]": ("mitigation = [5]\n" + BASE, ["top level.mitigation", "a list of tables"]),
    "comparison = 5": (BASE + '\n[[claim]]\nid = 1\ncomparison = 5\n', ["claim[0].comparison"]),
    "comparison = [5]": (BASE + '\n[[claim]]\nid = 1\ncomparison = [5]\n', ["claim[0].comparison"]),
    "optimizer typo": (mitigation('name = "optimizer"\noptimizer = "adamm"'), ["mitigation[0].optimizer", "did you mean 'adam'"]),
    "optimizer = 5": (mitigation('name = "optimizer"\noptimizer = 5'), ["mitigation[0].optimizer", "a string"]),
    "warmup_steps abc": (mitigation('name = "warmup"\nwarmup_steps = "abc"'), ["mitigation[0].warmup_steps"]),
    "warmup_steps < 0": (mitigation('name = "warmup"\nwarmup_steps = -5'), ["mitigation[0].warmup_steps", ">= 1"]),
    "max_consecutive_errors x": (mitigation('name = "skip_nonfinite"\nmax_consecutive_errors = "x"'),
                                 ["mitigation[0].max_consecutive_errors"]),
    "optimizer lr fast": (mitigation('name = "optimizer"\noptimizer = "adam"\nlr = "fast"'), ["mitigation[0].lr"]),
    "optimizer lr < 0": (mitigation('name = "optimizer"\noptimizer = "adam"\nlr = -1.0'), ["mitigation[0].lr", "> 0"]),
    "steps 2**31": (edit("steps = 20", "steps = 2147483648"), ["suite.steps", "2**31"]),
    "seeds 10**9": (edit("seeds = 2", "seeds = 1000000000"), ["suite.seeds", "10000"]),
    "too many runs": (edit("seeds = 2", "seeds = 10000").replace("lr = 0.05", "lr = {min=1e-4, max=1, per_decade=100}"),
                      ["seeds", "runs"]),
    "experiment name = 5": (BASE + '\n[[experiment]]\nname = 5\n', ["experiment[0].name", "a string"]),
    "duplicate experiment": (BASE + '\n[[experiment]]\nname = "a"\n[[experiment]]\nname = "a"\n',
                             ["experiment[1].name"]),
    "max_norm = true": (mitigation('name = "clip_by_global_norm"\nmax_norm = true'), ["mitigation[0].max_norm"]),
    "max_norm = []": (mitigation('name = "clip_by_global_norm"\nmax_norm = []'), ["mitigation[0].max_norm", "empty"]),
    "adam eps < 0": (edit('name = "sgd"', 'name = "adam"\neps = -1'), ["optimizer.eps", "> 0"]),
    "weight_var with lecun": (edit('activation = "tanh"', 'weight_var = 2.0'), ["model.weight_var", "lecun"]),
    "weight_var with he (mitigation)": (mitigation('name = "init"\ninit = "he"\nweight_var = 2.0'),
                                        ["mitigation[0].weight_var", "'he'"]),
    "grid max < min": (edit("lr = 0.05", "lr = { min = 1.0, max = 0.1, per_decade = 4 }"), ["optimizer.lr", "min"]),
    "grid without max": (edit("lr = 0.05", "lr = { min = 0.1, per_decade = 4 }"), ["optimizer.lr", "max"]),
    "grid per_decade 0": (edit("lr = 0.05", "lr = { min = 0.1, max = 1, per_decade = 0 }"), ["per_decade"]),
    "grid too large": (edit("lr = 0.05", "lr = { min = 1e-300, max = 1e300, per_decade = 1000 }"), ["at most"]),
    "collapse_fraction 0": (edit("[suite]", "[suite]\ncollapse_fraction = 0"), ["suite.collapse_fraction"]),
    "min_effect 1": (edit("[suite]", "[suite]\nmin_effect = 1.0"), ["suite.min_effect", "> 1"]),
    "claim expect": (BASE + COMPARE.format("").replace("better", "higher"), ["expect", "worse, better"]),
    "claim lr off the grid": (BASE + COMPARE.format(", lr = 0.3"), ["comparison[0].lr", "0.05"]),
    "claim at": (BASE + COMPARE.format(", at = 0.3"), ["comparison[0].at"]),
    "claim metric": (BASE + COMPARE.format(', metric = "speed"'), ["comparison[0].metric"]),
    "claim experiment": (BASE + COMPARE.format("").replace('"tiny"', '"tny"'), ["did you mean 'tiny'"]),
    "claim judged_on": (BASE + COMPARE.format("").replace("id = 1", 'id = 1\njudged_on = ["x"]'), ["judged_on"]),
}


@pytest.mark.parametrize("name", BAD_SUITES)
def test_bad_suite_exits_2_in_one_line_and_writes_nothing(tmp_path, capsys, name):
    text, words = BAD_SUITES[name]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert str(path) in err
    for word in words:
        assert word in err, err
    assert not out.exists()


def test_log_spaced_grid_has_both_ends_and_exact_values():
    assert log_grid({"min": 1e-3, "max": 1.0, "per_decade": 8}) == [float(f"{10 ** (-3 + k / 8):.12g}")
                                                                    for k in range(25)]
    assert log_grid({"min": 0.5, "max": 0.5, "per_decade": 3}) == [0.5]
    assert log_grid({"min": 0.01, "max": 1, "per_decade": 1}) == [0.01, 0.1, 1.0]


def test_grid_table_in_a_suite_expands_to_cells(tmp_path):
    from bench import suite

    path = tmp_path / "grid.toml"
    path.write_text(edit("lr = 0.05", "lr = { min = 0.01, max = 1.0, per_decade = 2 }"))
    s = suite.load(path)
    assert [c.config["optimizer"]["lr"] for c in s.cells] == [0.01, 0.0316227766017, 0.1, 0.316227766017, 1.0]
    assert all(c.config["collapse_fraction"] == 0.5 for c in s.cells) and s.settings["min_effect"] == 1.25
