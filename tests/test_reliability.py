"""Reliability: every bad input ends in one line and exit 2 with nothing written; faults lose nothing."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gradbench.cli import main
from gradbench.spec.schema import log_grid
from tests.conftest import TINY

GOOD = dict(seeds=2, steps=20, lr="0.05", extra="")
BASE = TINY.format(**GOOD)
COMPARE = ('\n[[claim]]\nid = 1\ntitle = "t"\nquestion = "q"\nrationale = "r"\nprimary = {{ experiment = "tiny", '
           'baseline = {{ name = "none" }}, variant = {{ name = "none" }}, measure = "reach", '
           'expect = "better"{} }}\n')


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
    "primary = 5": (BASE + '\n[[claim]]\nid = 1\ntitle = "t"\nquestion = "q"\nrationale = "r"\nprimary = 5\n',
                    ["claim[0].primary"]),
    "secondary = [5]": (BASE + COMPARE.format("") + 'secondary = [5]\n', ["claim[0].secondary"]),
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
    "grid too large": (edit("lr = 0.05", "lr = { min = 1e-30, max = 1e30, per_decade = 1000 }"), ["at most"]),
    "grid min of 13 digits": (edit("lr = 0.05", "lr = { min = 0.1234567890123, max = 1, per_decade = 2 }"),
                              ["optimizer.lr", "12 significant digits"]),
    # float32, the dtype every traced value becomes: no overflow, no flush to zero, the range kept after rounding
    "lr 5e-324": (edit("lr = 0.05", "lr = 5e-324"), ["optimizer.lr", "float32", "allowed:"]),
    "lr 1e300": (edit("lr = 0.05", "lr = 1e300"), ["optimizer.lr", "overflows float32", "allowed:"]),
    "weight_var 1e-100": (edit('activation = "tanh"', 'init = "normal"\nweight_var = 1e-100'),
                          ["model.weight_var", "float32"]),
    "smoothing 0.99999999": (edit("[suite]", "[suite]\nsmoothing = 0.99999999"),
                             ["suite.smoothing", "1.0 in float32", "< 1"]),
    "loss scale 1e39": (mitigation('name = "loss_scaling"\nmode = "static"\nscale = 1e39'),
                        ["mitigation[0].scale", "overflows float32"]),
    "divergence_factor 1 + 1e-9": (edit("[suite]", "[suite]\ndivergence_factor = 1.000000001"),
                                   ["suite.divergence_factor", "float32", "> 1"]),
    # tasks too small to have a trivial loss above zero
    "n_train 1": (edit("n_train = 64", "n_train = 1"), ["task.n_train", "trivial loss of 0"]),
    "digits n_train 1": (edit('name = "teacher_student"\ninput_dim = 4\nteacher_width = 8\nn_train = 64\n'
                              'n_heldout = 64\nbatch_size = 8', 'name = "digits"\nn_train = 1\nbatch_size = 8'),
                         ["task.n_train", "'train' split"]),
    # names whose plots would overwrite each other's
    "experiment slugs collide": (BASE + '\n[[experiment]]\nname = "a b"\n[[experiment]]\nname = "a-b"\n',
                                 ["experiment[1].name", "'a-b'", "'a b'", "experiment[0]"]),
    # compile-time guard
    "depth beyond the limit": (edit("depth = 2", "depth = 5000"), ["model.depth", "at most 256"]),
    "layers beyond the limit (mitigation)": (mitigation('name = "depth"\ndepth = 257'), ["model.depth", "256"]),
    "collapse_fraction 0": (edit("[suite]", "[suite]\ncollapse_fraction = 0"), ["suite.collapse_fraction"]),
    "min_effect 1": (edit("[suite]", "[suite]\nmin_effect = 1.0"), ["suite.min_effect", "> 1"]),
    "claim expect": (BASE + COMPARE.format("").replace("better", "higher"), ["expect", "worse, better"]),
    "claim lr off the grid": (BASE + COMPARE.format(", lr = 0.3"), ["primary.lr", "0.05"]),
    "claim at": (BASE + COMPARE.format(", at = 0.3"), ["primary.at"]),
    "claim measure": (BASE + COMPARE.format("").replace('"reach"', '"speed"'), ["primary.measure"]),
    "claim experiment": (BASE + COMPARE.format("").replace('"tiny"', '"tny"'), ["did you mean 'tiny'"]),
    "claim without a rationale": (BASE + COMPARE.format("").replace('rationale = "r"\n', ''), ["rationale"]),
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
    from gradbench.spec import suite

    path = tmp_path / "grid.toml"
    path.write_text(edit("lr = 0.05", "lr = { min = 0.01, max = 1.0, per_decade = 2 }"))
    s = suite.load(path)
    assert [c.config["optimizer"]["lr"] for c in s.cells] == [0.01, 0.0316227766017, 0.1, 0.316227766017, 1.0]
    assert all(c.config["collapse_fraction"] == 0.5 for c in s.cells) and s.settings["min_effect"] == 1.25


# ---- command-line misuse and broken files: one line, exit 2, nothing written --------------------------------------

def suite_file(tmp_path, text=BASE, name="suite.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _symlink_loop(tmp_path):
    (tmp_path / "loop.toml").symlink_to(tmp_path / "loop.toml")
    return str(tmp_path / "loop.toml")


def _write(tmp_path, name, data: bytes):
    (tmp_path / name).write_bytes(data)
    return str(tmp_path / name)


SUITE_JSON = {"path": "suite.toml", "name": "tiny", "claims": [], "experiments": [], "cells": 1,
              "settings": {"seeds": 2, "steps": 20, "chunk_steps": 20, "trace_points": 1000}}


def _done_dir(tmp_path, lines: bytes):
    """A results directory of the tiny suite whose results.jsonl holds `lines`."""
    out = tmp_path / "done"
    out.mkdir()
    (out / "suite.json").write_text(json.dumps(SUITE_JSON))
    (out / "results.jsonl").write_bytes(lines)
    return str(out)


def _broken_suite_json(tmp_path):
    out = _done_dir(tmp_path, RECORD)
    (tmp_path / "done" / "suite.json").write_text("{")
    return out


RECORD = b'{"cell_id": "0123456789abcdef", "suite": "tiny"}\n'
CIFAR_OVERFLOW = b"\x80\x04\x95" + b"\xff" * 8  # a FRAME longer than any machine can hold: OverflowError
CIFAR_MEMORY = b"\x80\x04\x8e" + (2**62).to_bytes(8, "little")  # BINBYTES8 of 2**62 bytes: MemoryError


def _cifar_dir(tmp_path, data):
    root = tmp_path / "cifar"
    root.mkdir()
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        (root / name).write_bytes(data)
    text = edit('name = "teacher_student"\ninput_dim = 4\nteacher_width = 8\nn_train = 64\nn_heldout = 64\n'
                'batch_size = 8', f'name = "cifar10"\npath = "{root}"\nbatch_size = 8')
    return str(suite_file(tmp_path, text.replace('family = "mlp"', 'family = "mlp"')))


# (argv builder from tmp_path, words the one-line message must contain)
BAD_COMMANDS = {
    "suite is a directory": (lambda t: ["run", str(t)], ["is a directory"]),
    "suite is binary": (lambda t: ["run", _write(t, "b.toml", bytes(range(256)))], ["not UTF-8"]),
    "suite is UTF-16": (lambda t: ["run", _write(t, "u.toml", BASE.encode("utf-16"))], ["UTF-16"]),
    "suite is Latin-1": (lambda t: ["run", _write(t, "l.toml", 'name = "café"'.encode("latin-1"))], ["UTF-8"]),
    "suite is NUL bytes": (lambda t: ["run", _write(t, "n.toml", b"\0" * 10)], ["NUL"]),
    "suite symlink loop": (lambda t: ["run", _symlink_loop(t)], ["symbolic links"]),
    "--seeds 0": (lambda t: ["run", str(suite_file(t)), "--seeds", "0"], ["--seeds", ">= 1"]),
    "--steps 0": (lambda t: ["run", str(suite_file(t)), "--steps", "0"], ["--steps", ">= 1"]),
    "--steps -5": (lambda t: ["run", str(suite_file(t)), "--steps", "-5"], ["--steps"]),
    "--steps 2**31": (lambda t: ["run", str(suite_file(t)), "--steps", str(2**31)], ["--steps", "2**31"]),
    "--seeds x": (lambda t: ["run", str(suite_file(t)), "--seeds", "x"], ["--seeds", "integer"]),
    "--shard 3/4 of 1 cell": (lambda t: ["run", str(suite_file(t)), "--shard", "3/4"], ["--shard", "1 cells"]),
    "probe --batch 0": (lambda t: ["probe", "--model", "mlp", "--batch", "0"], ["--batch", ">= 1"]),
    "probe --seeds 0": (lambda t: ["probe", "--model", "mlp", "--seeds", "0"], ["--seeds"]),
    "probe weight_var nan": (lambda t: ["probe", "--model", "mlp", "--set", "init=normal", "--set",
                                        "weight_var=nan", "--json"], ["weight_var", "finite"]),
    "probe --plot format": (lambda t: ["probe", "--model", "mlp", "--plot", str(t / "p.xyz")], ["--plot", "xyz"]),
    "probe --plot under a file": (lambda t: ["probe", "--model", "mlp", "--plot", str(suite_file(t) / "p.png")],
                                  ["--plot", "directory"]),
    "name escapes runs/": (lambda t: ["run", str(suite_file(t, edit('name = "tiny"', 'name = "../../x"')))],
                           ["suite.name", "--out"]),
    "absolute name": (lambda t: ["run", str(suite_file(t, edit('name = "tiny"', 'name = "/tmp/x"')))],
                      ["suite.name"]),
    "NUL in name": (lambda t: ["run", str(suite_file(t, edit('name = "tiny"', 'name = "a\\u0000b"')))],
                    ["suite.name"]),
    "long name": (lambda t: ["run", str(suite_file(t, edit('name = "tiny"', f'name = "{"x" * 101}"')))],
                  ["suite.name", "100"]),
    "--out is a file": (lambda t: ["run", str(suite_file(t)), "--out", str(suite_file(t, name="f"))],
                        ["not a directory"]),
    "--out unwritable": (lambda t: ["run", str(suite_file(t)), "--out", "/sys/gradbench-test-out"],
                         ["/sys/gradbench-test-out", "cannot be used"]),
    "report of garbage": (lambda t: ["report", _done_dir(t, RECORD + b"garbage\n")], ["results.jsonl", "line 1"]),
    "report of truncated": (lambda t: ["report", _done_dir(t, RECORD[:20])], ["results.jsonl", "line 1"]),
    "report of empty": (lambda t: ["report", _done_dir(t, b"")], ["no results records"]),
    "report of bad suite.json": (lambda t: ["report", _broken_suite_json(t)], ["suite.json", "corrupt"]),
    "resume from garbage": (lambda t: ["run", str(suite_file(t)), "--out", _done_dir(t, b"\x00\xff\n")],
                            ["results.jsonl", "corrupt"]),
    "resume another suite": (lambda t: ["run", str(suite_file(t, edit('name = "tiny"', 'name = "other"'))),
                                        "--out", _done_dir(t, RECORD)], ["suite 'tiny'", "--force"]),
    "resume other seeds": (lambda t: ["run", str(suite_file(t)), "--seeds", "3", "--out", _done_dir(t, RECORD)],
                           ["seeds=2", "seeds=3", "--force"]),
    "CIFAR OverflowError": (lambda t: ["run", _cifar_dir(t, CIFAR_OVERFLOW)], ["OverflowError", "data_batch_1"]),
    "CIFAR MemoryError": (lambda t: ["run", _cifar_dir(t, CIFAR_MEMORY)], ["MemoryError", "data_batch_1"]),
}


def _tree(path):
    return sorted((str(p.relative_to(path)), p.stat().st_mtime_ns if p.is_file() else 0)
                  for p in path.rglob("*") if not p.is_symlink() and p.name != "results.jsonl.lock")


@pytest.mark.parametrize("name", BAD_COMMANDS)
def test_bad_command_exits_2_in_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, name):
    if name == "--out unwritable" and not os.path.isdir("/sys"):
        pytest.skip("needs a read-only /sys")
    make_args, words = BAD_COMMANDS[name]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    args = make_args(tmp_path)
    before = _tree(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    assert _tree(tmp_path) == before  # nothing written, not even runs/ in the working directory


def test_command_line_seeds_and_steps_beat_an_experiments_own(tmp_path):
    from gradbench.spec import suite

    path = suite_file(tmp_path, BASE + '\n[[experiment]]\nname = "own"\nseeds = 5\nsteps = 300\n')
    assert {(c.config["seeds"], c.config["steps"]) for c in suite.load(path).cells} == {(5, 300)}
    assert {(c.config["seeds"], c.config["steps"]) for c in suite.load(path, seeds=3, steps=7).cells} == {(3, 7)}


def test_plot_directory_is_created(tmp_path):
    from gradbench.cli import _plot_path

    _plot_path(str(tmp_path / "a" / "b" / "profile.png"))
    assert (tmp_path / "a" / "b").is_dir()


def test_list_shows_every_mitigation_parameter(capsys):
    assert main(["list"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in ("max_norm: a number > 0, finite in float32 (default 1.0)", "warmup_steps: an integer >= 1 (default 100)",
                 "max_consecutive_errors: an integer >= 1 (default 5)", "{min, max, per_decade}"):
        assert text in out


def test_a_full_disk_keeps_the_old_results_file(tmp_path, monkeypatch):
    from gradbench.records import store

    s = store.ResultsStore(tmp_path)
    s.add([{"cell_id": "a", "x": 1}])
    before = (tmp_path / "results.jsonl").read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.os, "fsync", full)
    with pytest.raises(store.StoreError, match="disk is full.*kept"):
        s.add([{"cell_id": "b", "x": 2}])
    assert (tmp_path / "results.jsonl").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl", "results.jsonl.lock"]


def test_a_run_whose_gradients_overflow_at_init_writes_its_report(tmp_path, monkeypatch, capsys):
    text = edit('depth = 2\nwidth = 8\nactivation = "tanh"', 'depth = 4\nwidth = 4\nactivation = "linear"\n'
                'init = "normal"\nweight_var = 1e30').replace("steps = 20", "steps = 4")
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(suite_file(tmp_path, text)), "--out", "o", "--quiet"]) == 0
    record = json.loads((tmp_path / "o" / "results.jsonl").read_text())
    assert record["per_seed"]["diverged"] == [True, True]
    report = (tmp_path / "o" / "REPORT.md").read_text()
    for png in sorted((tmp_path / "o" / "plots").iterdir()):
        assert png.read_bytes()[:4] == b"\x89PNG" and f"plots/{png.name}" in report


# ---- real processes: interrupted and concurrent runs ---------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
GROUPS = '\n'.join(f'[[mitigation]]\nname = "{m}"' for m in ("none", "clip_by_global_norm", "clip_by_value"))


@pytest.fixture(scope="module")
def process_env(tmp_path_factory):
    """Environment of the subprocesses: this checkout first, a compilation cache shared by the module's runs."""
    cache = tmp_path_factory.mktemp("jax-cache")
    return {**os.environ, "PYTHONPATH": str(ROOT), "JAX_COMPILATION_CACHE_DIR": str(cache),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def _start(args, env, cwd):
    return subprocess.Popen([sys.executable, "-m", "gradbench", *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _records(out) -> list[dict]:
    path = out / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait_for_records(proc, out, count):
    """Waits until `out` holds at least `count` records (the process must still be running then)."""
    while len(_records(out)) < count:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)


def test_killed_and_interrupted_runs_resume_without_losing_or_retraining(tmp_path, process_env):
    # Three groups (one compiled program each), 2000 steps: killed after the first, interrupted after the second.
    text = edit("steps = 20", "steps = 2000\nearly_stop = false") + GROUPS
    args = ["run", str(suite_file(tmp_path, text)), "--out", "o", "--quiet", "--no-report"]
    out = tmp_path / "o"

    proc = _start(args, process_env, tmp_path)
    _wait_for_records(proc, out, 1)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    first = _records(out)
    assert 1 <= len(first) < 3

    proc = _start(args, process_env, tmp_path)
    _wait_for_records(proc, out, len(first) + 1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "interrupted" in err and "rerun the same command" in err
    second = _records(out)
    assert second[: len(first)] == first  # what the killed run finished was not retrained
    assert len(second) < 3, "the interrupted run finished every cell: nothing was left to interrupt"

    proc = _start(args, process_env, tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    final = _records(out)
    assert final[: len(second)] == second
    assert len(final) == 3 and len({r["cell_id"] for r in final}) == 3
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_two_shards_writing_into_one_directory_at_once_keep_every_record(tmp_path, process_env):
    # The programs of the test above (same shapes): from the compilation cache, so both start training at once.
    path = suite_file(tmp_path, edit("steps = 20", "steps = 2000\nearly_stop = false") + GROUPS)
    procs = [_start(["run", str(path), "--out", "o", "--quiet", "--no-report", "--shard", f"{i}/2"], process_env,
                    tmp_path) for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    records = _records(tmp_path / "o")
    assert len(records) == 3 and len({r["cell_id"] for r in records}) == 3


# ---- issue 23 as real processes: one line, exit 2, nothing written -------------------------------------------------

SUBPROCESS_CASES = {  # name -> (suite text, extra arguments, words)
    "lr 5e-324": (BAD_SUITES["lr 5e-324"][0], [], ["optimizer.lr", "float32"]),
    "smoothing 0.99999999": (BAD_SUITES["smoothing 0.99999999"][0], [], ["suite.smoothing", "float32"]),
    "n_train 1": (BAD_SUITES["n_train 1"][0], [], ["task.n_train"]),
    "experiment slugs collide": (BAD_SUITES["experiment slugs collide"][0], [], ["'a b'", "'a-b'"]),
    "depth beyond the limit": (BAD_SUITES["depth beyond the limit"][0], [], ["model.depth"]),
    "--set unknown": (BASE, ["--set", "wat=1"], ["--set wat", "init_perturbation"]),
    "--set init_perturbation < 0": (BASE, ["--set", "init_perturbation=-1"], ["--set init_perturbation", ">= 0"]),
    "--set init_perturbation 1e-50": (BASE, ["--set", "init_perturbation=1e-50"], ["float32"]),
}


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_issue_23_refusals_as_real_processes(tmp_path, process_env, name):
    text, extra, words = SUBPROCESS_CASES[name]
    path = suite_file(tmp_path, text)
    proc = subprocess.run([sys.executable, "-m", "gradbench", "run", str(path), "--out", "o", "--quiet", *extra],
                          env=process_env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{path.name}: " in proc.stderr and "allowed" in proc.stderr, proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["suite.toml"]


def test_grid_keeps_both_ends_and_values_are_canonical(tmp_path):
    from gradbench.spec import suite

    grid = suite.load(suite_file(tmp_path, edit("lr = 0.05", "lr = { min = 1.0, max = 1.1, per_decade = 1 }")))
    assert [c.config["optimizer"]["lr"] for c in grid.cells] == [1.0, 1.1]
    ids = {}
    for name, change in (("plain", ""), ("signed zero", "bias_var = -0.0"), ("zero", "bias_var = 0.0"),
                         ("integral float", "depth = 2.0")):
        text = edit('activation = "tanh"', f'activation = "tanh"\ninit = "normal"\n{change}')
        if change.startswith("depth"):
            text = text.replace("depth = 2\n", "", 1)
        ids[name] = suite.load(suite_file(tmp_path, text)).cells[0].cell_id
    assert len(set(ids.values())) == 1, ids
