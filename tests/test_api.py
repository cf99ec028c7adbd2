"""The Python API (bench/api.py) and the command line built on it: load, run, cells, --set with dotted keys, the
table a run ends with (issue 32)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import gradbench
from gradbench.cli import main
from tests.conftest import TINY, tiny_suite

ROOT = Path(__file__).resolve().parent.parent
CI = ROOT / "results" / "ci"
VERSIONS = ("env.jax", "env.jaxlib", "env.flax", "env.optax", "env.numpy")


# ---- load ----------------------------------------------------------------------------------------------------------

def test_load_gives_one_row_per_cell_and_seed_with_throughput_versions_and_backend():
    pytest.importorskip("pandas")
    df = gradbench.load(CI)
    recs = gradbench.results(CI)
    assert len(df) == sum(len(r["per_seed"]["diverged"]) for r in recs)
    for column in ("experiment", "label", "optimizer.lr", "mitigation.name", "seed", "diverged", "trained",
                   "throughput.steps_per_s", "env.backend", *VERSIONS):
        assert column in df.columns, column
    assert (df["throughput.steps_per_s"] > 0).all()
    assert set(df["env.jax"]) == {recs[0]["env"]["versions"]["jax"]}
    assert df.groupby("cell_id").size().tolist() == [len(r["per_seed"]["diverged"]) for r in
                                                     sorted(recs, key=lambda r: r["cell_id"])]


def test_load_needs_neither_jax_nor_the_command_line():
    pytest.importorskip("pandas")
    code = (f"import sys, gradbench\ndf = gradbench.load({str(CI)!r})\nprint(len(df), 'jax' in sys.modules, "
            "'gradbench.cli' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["False", "False"], proc.stdout


def test_load_without_pandas_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas raises ImportError
    with pytest.raises(gradbench.UsageError, match=r"pandas is not installed.*gradbench\[pandas\]"):
        gradbench.load(CI)
    assert len(gradbench.results(CI)) == 6  # the records need no pandas


def test_load_of_a_directory_without_results_is_one_line(tmp_path):
    with pytest.raises(gradbench.UsageError, match="no such file") as e:
        gradbench.results(tmp_path)
    assert "\n" not in str(e.value)


def test_the_api_is_a_name_of_the_package_imported_lazily():
    code = "import sys, gradbench\nprint('gradbench.api' in sys.modules, callable(gradbench.run), 'gradbench.api' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.split() == ["False", "True", "True"], proc.stderr[-2000:]
    with pytest.raises(AttributeError):
        gradbench.no_such_function  # noqa: B018


# ---- --set with dotted keys, and the API's keywords ----------------------------------------------------------------

def _cells(capsys, path, *args) -> dict:
    assert main(["cells", str(path), "--json", *args]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_set_a_dotted_key_changes_every_cell(tmp_path, capsys):
    path = tiny_suite(tmp_path, seeds=2, steps=20, lr="0.05")
    plain = _cells(capsys, path)
    deeper = _cells(capsys, path, "--set", "model.depth=3", "--set", "task.n_train=32")
    assert [c["label"] for c in plain["cells"]] == [c["label"] for c in deeper["cells"]] == ["none"]
    assert plain["cells"][0]["cell_id"] != deeper["cells"][0]["cell_id"]
    s = gradbench.suite(path, model__depth=3, task__n_train=32)
    assert s.cells[0].config["model"]["depth"] == 3 and s.cells[0].config["task"]["n_train"] == 32
    assert s.cells[0].cell_id == deeper["cells"][0]["cell_id"]
    assert gradbench.suite(path, **{"model.depth": 3, "task.n_train": 32}).cells[0].cell_id == s.cells[0].cell_id


def test_set_a_list_is_a_grid_axis_and_seeds_is_the_seeds_flag(tmp_path, capsys):
    path = tiny_suite(tmp_path, seeds=2, steps=20, lr="0.05",
                      extra='[[mitigation]]\nname = "none"\n[[mitigation]]\nname = "clip_by_global_norm"\n')
    grid = _cells(capsys, path, "--set", "optimizer.lr=[0.01, 0.1]", "--set", "seeds=3",
                  "--set", "mitigation.max_norm=[0.5, 2.0]")
    assert [c["label"] for c in grid["cells"]] == [
        "none lr=0.01", "none lr=0.1", "clip_by_global_norm(max_norm=0.5) lr=0.01",
        "clip_by_global_norm(max_norm=2.0) lr=0.01", "clip_by_global_norm(max_norm=0.5) lr=0.1",
        "clip_by_global_norm(max_norm=2.0) lr=0.1"]
    assert {c["seeds"] for c in grid["cells"]} == {3}
    assert _cells(capsys, path, "--seeds", "3", "--set", "optimizer.lr=[0.01, 0.1]",
                  "--set", "mitigation.max_norm=[0.5, 2.0]")["cells"] == grid["cells"]


def test_set_applies_to_the_experiments_whose_section_has_the_key(tmp_path):
    text = TINY.format(seeds=2, steps=20, lr="0.05", extra=(
        '[[experiment]]\nname = "plain"\n[[experiment]]\nname = "adam"\n[experiment.optimizer]\nname = "adam"\n'
        'lr = 0.01\n'))
    path = tmp_path / "two.toml"
    path.write_text(text)
    s = gradbench.suite(path, optimizer__b1=0.8, model__width=4)
    plain, adam = (c.config for c in s.cells)
    assert "b1" not in plain["optimizer"] and adam["optimizer"]["b1"] == 0.8
    assert plain["model"]["width"] == adam["model"]["width"] == 4
    assert {e["name"]: e["optimizer"].get("b1") for e in s.experiments} == {"plain": None, "adam": 0.8}


BAD_SETS = {  # --set argument -> words of the one line
    "model.detph=3": ["--set model.detph", "no experiment's [model] table has this key", "did you mean 'depth'"],
    "model.depth=x": ["--set model.depth", "expected an integer"],
    "model.depth=0": ["--set model.depth", "depth, width and base_width must be >= 1"],
    "optimizer.lr=[0.1, -1]": ["--set optimizer.lr", "> 0"],
    "modle.depth=3": ["--set modle.depth", "unknown section 'modle'", "did you mean 'model'"],
    "model.depth.x=3": ["--set model.depth.x", "SECTION.KEY"],
    "mitigation.name=x": ["--set mitigation.name", "arms"],
    "mitigation.max_norm=1": ["--set mitigation.max_norm", "no experiment's mitigation has this key"],
    "model.family=mpl": ["--set model.family", "'mpl' is not allowed", "mlp"],
    "wat=1": ["--set wat", "init_perturbation", "model.depth=8"],
    "name=x": ["--set name", "not a [suite] setting"],
}


@pytest.mark.parametrize("command", ["run", "cells"])
@pytest.mark.parametrize("pair", BAD_SETS)
def test_a_bad_set_is_one_line_naming_the_key_and_nothing_is_written(tmp_path, capsys, pair, command):
    path = tiny_suite(tmp_path, seeds=2, steps=20, lr="0.05")
    out = tmp_path / "o"
    args = ["--out", str(out), "--quiet"] if command == "run" else []
    assert main([command, str(path), "--set", pair, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert str(path) in err, err
    for word in BAD_SETS[pair]:
        assert word in err, err
    assert not out.exists()


def test_set_seeds_that_contradicts_the_seeds_flag_is_refused(tmp_path, capsys):
    path = tiny_suite(tmp_path, seeds=2, steps=20, lr="0.05")
    assert main(["cells", str(path), "--seeds", "4", "--set", "seeds=3"]) == 2
    assert "--set seeds: 3 contradicts --seeds 4" in capsys.readouterr().err


def test_the_api_raises_usage_error_with_the_same_line(tmp_path):
    path = tiny_suite(tmp_path, seeds=2, steps=20, lr="0.05")
    with pytest.raises(gradbench.UsageError, match=r"--set model\.detph: .*did you mean 'depth'"):
        gradbench.suite(path, model__detph=3)
    with pytest.raises(ValueError, match="no such file"):
        gradbench.cells(tmp_path / "missing.toml")


# ---- bench cells ---------------------------------------------------------------------------------------------------

def test_cells_lists_cells_programs_and_cost_without_compiling(tmp_path, capsys):
    from gradbench.engine import program

    path = tiny_suite(tmp_path, seeds=3, steps=20, lr="[0.05, 0.5]",
                      extra='[[mitigation]]\nname = "none"\n[[mitigation]]\nname = "clip_by_global_norm"\n')
    before = dict(program.COMPILES)
    assert main(["cells", str(path)]) == 0
    out = capsys.readouterr().out
    assert program.COMPILES == before  # no training program was compiled
    for word in ("cells", "compiled programs", "run-steps", "memory", "clip_by_global_norm(max_norm=1.0) lr=0.5",
                 "4 cells, 12 runs (cells x seeds) in 2 compiled programs", "240 run-steps",
                 "Nothing was compiled or trained"):
        assert word in out, out
    plan = gradbench.cells(path, seeds=5)
    assert [p["runs"] for p in plan["programs"]] == [10, 10] and plan["run_steps"] == 400
    assert all(p["memory"]["total"] > 0 and p["flops_per_run_step"] > 0 for p in plan["programs"])
    assert [c["program"] for c in plan["cells"]] == [0, 0, 1, 1]
    assert not (tmp_path / "runs").exists()


def test_cells_of_a_bad_suite_does_not_import_jax(tmp_path):
    (tmp_path / "s.toml").write_text("not toml [")
    code = ("import sys\nfrom gradbench.cli import main\nrc = main(sys.argv[1:])\nprint('jax' in sys.modules, rc)")
    for argv in (["cells", "s.toml"], ["cells", "missing.toml"], ["cells", "--help"]):
        proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, capture_output=True, text=True,
                              timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.stdout.split()[-2:] == ["False", "0" if argv[-1] == "--help" else "2"], (proc.stdout,
                                                                                              proc.stderr)


# ---- the table a run ends with -------------------------------------------------------------------------------------

def test_the_results_table_has_failed_and_converged_columns():
    from rich.console import Console

    from gradbench.reports import console

    recs = gradbench.results(CI)
    table, more = console.results_table(recs)
    assert more is None and len(table.rows) == len(recs)
    text = _render(Console, table)
    for word in ("diverged", "failed", "failed 95% CI", "converged", "steps/s"):
        assert word in text, text
    clipped = next(r for r in recs if r["label"] == "clip_by_global_norm(max_norm=1.0) lr=10.0")
    n = len(clipped["per_seed"]["diverged"])
    failed = n - sum(clipped["per_seed"]["trained"])
    assert f"{failed}/{n}" in text and f"{clipped['converged']}/{n}" in text


def test_a_big_suite_gets_one_row_per_arm_then_a_line_for_the_rest():
    from rich.console import Console

    from gradbench.reports import console

    recs = gradbench.results(CI)
    table, more = console.results_table(recs, limit=4)  # 6 cells > 4: one row per arm (none, clipping)
    text = _render(Console, table)
    assert len(table.rows) == 2 and "arm" in text and "cells" in text and "/60" in text
    assert [c.header for c in table.columns][:3] == ["arm", "cells", "diverged"]
    assert list(table.columns[0].cells) == ["none", "clip_by_global_norm(max_norm=1.0)"]
    assert list(table.columns[1].cells) == ["3", "3"]
    assert more == "every cell: see REPORT.md"
    table, more = console.results_table(recs, limit=1, more="runs/x/REPORT.md or --cells")
    assert len(table.rows) == 1 and more == "1 more arm (3 cells), see runs/x/REPORT.md or --cells"


def _render(console_cls, table) -> str:
    c = console_cls(width=250, record=True, file=open(os.devnull, "w"))
    c.print(table)
    return c.export_text()


def test_run_from_python_then_the_command_ends_with_the_table(tmp_path, capsys):
    path = tiny_suite(tmp_path, seeds=2, steps=20, lr="[0.05, 1e4]")
    out = tmp_path / "o"
    recs = gradbench.run(path, out, report=False, frame=False, model__width=4)
    assert [r["label"] for r in recs] == ["none lr=0.05", "none lr=10000.0"]
    assert {r["config"]["model"]["width"] for r in recs} == {4}
    assert recs[1]["per_seed"]["diverged"] == [True, True]
    # The same run from the command line: nothing left to train, it ends with the table of every cell.
    assert main(["run", str(path), "--out", str(out), "--quiet", "--no-report", "--set", "model.width=4"]) == 0
    text = capsys.readouterr().out
    for word in ("failed", "converged", "none lr=10000.0", "2/2", "2 records in"):
        assert word in text, text
    # An override that makes other cells is another suite for the directory: refused, one line.
    assert main(["run", str(path), "--out", str(out), "--quiet", "--no-report"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(gradbench.UsageError, match="not in this suite .*--set overrides changed"):
        gradbench.run(path, out, report=False, frame=False)
    try:
        import pandas  # noqa: F401
    except ImportError:
        return
    df = gradbench.run(path, out, report=False, model__width=4)
    assert len(df) == 4 and "throughput.steps_per_s" in df.columns
