"""bench export: pytest-benchmark reads the saved run back (one benchmark per compiled program, normalised);
github-action-benchmark arrays hold every program and cell; strict JSON with diverged and NaN cells; NaN
throughput refused; the tidy table (CSV, Parquet) with throughput and versions; --output suffixes honoured or
refused; TensorBoard event files read back."""
import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from pytest_benchmark import cli
from pytest_benchmark.logger import Logger
from pytest_benchmark.storage.file import FileStorage

from gradbench.cli import main

ROOT = Path(__file__).resolve().parent.parent


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def _null_nonfinite(value):
    if isinstance(value, dict):
        return {k: _null_nonfinite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_null_nonfinite(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


@pytest.fixture(scope="module")
def nan_dir(tiny_run, module_tmp):
    """The tiny run's records with NaN losses and an infinite gradient ratio, as records keep them."""
    recs = records(tiny_run)
    assert recs[1]["divergence_rate"] > 0.5  # lr 0.5: most seeds diverged
    recs[0]["per_seed"]["final_heldout_loss"][0] = math.nan
    recs[0]["quality"]["final_heldout_loss"] = math.inf
    recs[0]["explosion"]["per_seed"]["e2e_ratio"][0][0] = "inf"
    out = module_tmp / "nan"
    out.mkdir()
    # As records keep non-finite numbers: null (NaN, Infinity tokens are refused when the file is read)
    (out / "results.jsonl").write_text("".join(json.dumps(_null_nonfinite(r)) + "\n" for r in recs))
    (out / "suite.json").write_text((tiny_run / "suite.json").read_text())
    return out


def test_pytest_benchmark_loads_the_export(tiny_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "pb.json"
    assert main(["export", str(tiny_run), "--format", "pytest-benchmark", "--output", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    storage = FileStorage(tmp_path, Logger(Logger.QUIET))
    loaded = list(storage.load_benchmarks(str(out)))
    recs = records(tiny_run)
    # The two cells (lr 0.05 and 0.5) are one compiled program: one benchmark, not two identical ones.
    assert [b["name"] for b in loaded] == ["tiny: none lr=0.05; none lr=0.5"]
    bench, t = loaded[0], recs[0]["throughput"]
    assert recs[1]["throughput"] == t and t["runs_per_program"] == 32
    gflops = recs[0]["env"]["scan_flops_per_s"] / 1e9
    rates = np.asarray(t["chunk_steps_per_s"])
    assert math.isclose(bench["ops"], t["steps_per_s"] / gflops)  # normalised: what compare judges
    assert bench["rounds"] == t["timed_chunks"] == len(rates) >= 3
    assert math.isclose(bench["stddev"], float(np.std(gflops / rates, ddof=1)))
    assert bench["stddev"] > 0 and bench["iqr"] > 0 and bench["min"] < bench["max"]
    extra = bench["extra_info"]
    assert extra["steps_per_s"] == t["steps_per_s"] and extra["cpu_steps_per_s"] == t["cpu_steps_per_s"]  # raw
    assert math.isclose(extra["normalised_steps_per_s"], bench["ops"]) and extra["yardstick"].startswith("scan ")
    assert [c["cell_id"] for c in extra["cells"]] == [r["cell_id"] for r in recs]
    assert [c["divergence_rate"] for c in extra["cells"]] == [r["divergence_rate"] for r in recs]
    assert bench["param"] == extra["program_id"] and len(bench["param"]) == 16
    machine = json.loads(out.read_text())["machine_info"]
    env = recs[0]["env"]
    assert machine["processor"] == env["cpu"] and machine["cpu"]["count"] == env["cpu_count"]
    assert machine["matmul_flops_per_s"] == env["matmul_flops_per_s"]
    # The tool's own command line compares it with another saved run (here a copy).
    copy = tmp_path / "pb-copy.json"
    copy.write_text(out.read_text())
    monkeypatch.setattr(sys, "argv", ["pytest-benchmark", "compare", str(out), str(copy)])
    monkeypatch.chdir(tmp_path)
    cli.main()
    table = capsys.readouterr().out
    assert "tiny: none lr=0.05; none lr=0.5" in table


def test_a_faster_runner_moves_raw_steps_not_the_normalised_series(tiny_run, tmp_path, capsys):
    """A runner twice as fast runs the program and its yardstick twice as fast: the dashboards' value stays."""
    recs = records(tiny_run)
    for r in recs:
        t = r["throughput"]
        for key in ("steps_per_s", "cpu_steps_per_s"):
            t[key] *= 2
        t["chunk_steps_per_s"] = [v * 2 for v in t["chunk_steps_per_s"]]
        r["env"]["scan_flops_per_s"] *= 2
    fast = tmp_path / "fast"
    fast.mkdir()
    (fast / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    values = []
    for directory in (tiny_run, fast):
        out = tmp_path / f"{directory.name}.json"
        assert main(["export", str(directory), "--format", "github-action-benchmark", "--output", str(out)]) == 0
        values.append(json.loads((tmp_path / f"{directory.name}-bigger.json").read_text()))
    capsys.readouterr()
    (slow,), (quick,) = values
    assert slow["name"] == quick["name"] and math.isclose(slow["value"], quick["value"])
    raw = records(tiny_run)[0]["throughput"]["steps_per_s"]
    assert f"raw {raw:.6g} steps/s" in slow["extra"] and f"raw {2 * raw:.6g} steps/s" in quick["extra"]


def test_a_program_is_one_series_whatever_the_experiments_its_cells_belong_to():
    from gradbench.reports import export

    recs = [json.loads(line) for line in (ROOT / "results" / "claims" / "results.jsonl").read_text().splitlines()]
    groups = export.programs(recs)
    assert sum(map(len, groups)) == len(recs) and len({export.program_id(g) for g in groups}) == len(groups)
    for cells in groups:  # one measurement, one compiled program: same runs, same static model
        assert len({json.dumps(c["throughput"], sort_keys=True) for c in cells}) == 1
        assert sum(c["config"]["seeds"] for c in cells) == cells[0]["throughput"]["runs_per_program"]
    # Cells of several experiments (the effects suite's) trained in one program: one series, not one per experiment.
    shared = [g for g in groups if len({c["experiment"] for c in g}) > 1]
    assert shared and all(" | " in export.program_name(g) for g in shared)
    assert len(groups) < len({(c["experiment"], json.dumps(c["throughput"])) for c in recs})


def test_github_action_benchmark_arrays(tiny_run, tmp_path, capsys):
    out = tmp_path / "gab.json"
    assert main(["export", str(tiny_run / "results.jsonl"), "--format", "github-action-benchmark",
                 "--output", str(out)]) == 0
    bigger = json.loads((tmp_path / "gab-bigger.json").read_text())
    smaller = json.loads((tmp_path / "gab-smaller.json").read_text())
    capsys.readouterr()
    for array in (bigger, smaller):
        assert isinstance(array, list) and len({e["name"] for e in array}) == len(array)
        for entry in array:
            assert set(entry) <= {"name", "unit", "value", "range", "extra"}
            assert isinstance(entry["value"], float) and isinstance(entry["unit"], str)
            assert entry["value"] > 0  # the action alerts on current / previous: never a 0
    recs = {f"tiny: {r['label']}": r for r in records(tiny_run)}
    r = recs["tiny: none lr=0.05"]
    assert [(e["name"], e["value"]) for e in bigger] == [  # one series per program, normalised
        ("tiny: none lr=0.05; none lr=0.5 normalised steps/s",
         r["throughput"]["steps_per_s"] / (r["env"]["scan_flops_per_s"] / 1e9))]
    assert f"raw {r['throughput']['steps_per_s']:.6g} steps/s" in bigger[0]["extra"]
    by_name = {e["name"]: e for e in smaller}
    for name, r in recs.items():
        assert by_name[f"{name} divergence rate"]["value"] == 1 + r["divergence_rate"]  # the +1 offset
        steps = by_name[f"{name} steps to converge"]
        expected = r["median_steps_to_converge"]
        assert steps["value"] == 1 + (r["config"]["steps"] if expected is None else expected)
        assert ("censored" in steps["extra"]) == (expected is None)
    assert by_name["tiny: none lr=0.05 divergence rate"]["value"] == 1.0  # no seed diverged


def _strict(text):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def test_exports_of_diverged_and_nan_cells_are_strict_json(nan_dir, capsys):
    assert main(["export", str(nan_dir), "--format", "pytest-benchmark"]) == 0
    assert main(["export", str(nan_dir), "--format", "github-action-benchmark"]) == 0
    capsys.readouterr()
    pb = _strict((nan_dir / "pytest-benchmark.json").read_text())
    assert [b["name"] for b in pb["benchmarks"]] == ["tiny: none lr=0.05; none lr=0.5"]
    bigger = _strict((nan_dir / "github-action-benchmark-bigger.json").read_text())
    smaller = _strict((nan_dir / "github-action-benchmark-smaller.json").read_text())
    assert [e["name"] for e in bigger] == ["tiny: none lr=0.05; none lr=0.5 normalised steps/s"]
    assert {e["name"] for e in smaller} >= {"tiny: none lr=0.5 divergence rate", "tiny: none lr=0.5 steps to converge"}
    assert all(math.isfinite(e["value"]) for e in bigger + smaller)


@pytest.mark.parametrize("fmt", ["pytest-benchmark", "github-action-benchmark", "tidy", "tensorboard"])
@pytest.mark.parametrize("key, value", [("steps_per_s", math.nan), ("steps_per_s", 0.0), ("steps_per_s", None),
                                        ("chunk_steps_per_s", [math.nan, math.inf])])
def test_a_throughput_that_is_nan_zero_or_null_is_refused_never_exported(tiny_run, tmp_path, capsys, fmt, key,
                                                                         value):
    recs = records(tiny_run)
    recs[1]["throughput"][key] = value
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    before = sorted(tmp_path.iterdir())
    assert main(["export", str(tmp_path), "--format", fmt]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {tmp_path / 'results.jsonl'}: line 2: ") and f"throughput.{key}" in err
    assert "allowed: " in err
    assert sorted(tmp_path.iterdir()) == before  # nothing written


@pytest.mark.parametrize("doctor, key", [
    (lambda r: r["per_seed"].pop("diverged"), "per_seed.diverged"),
    (lambda r: r.pop("divergence_rate"), "divergence_rate"),
    (lambda r: r.update(median_steps_to_converge=math.nan), "median_steps_to_converge"),
    (lambda r: r["config"].update(steps="many"), "config.steps"),
    (lambda r: r["config"].update(steps=0), "config.steps"),
    (lambda r: r.update(divergence_rate=1.5), "divergence_rate"),
    (lambda r: r.update(divergence_rate_ci=[0.0, 0.5, 1.0]), "divergence_rate_ci"),
    (lambda r: r.update(steps_to_converge_ci=[1]), "steps_to_converge_ci"),
    (lambda r: r.update(converged=1.5), "converged"),
    (lambda r: r["env"].pop("timestamp"), "env.timestamp"),
])
def test_records_export_cannot_read_are_refused_on_one_line(tiny_run, tmp_path, capsys, doctor, key):
    recs = records(tiny_run)
    doctor(recs[0])
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main(["export", str(tmp_path), "--format", "github-action-benchmark"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'results.jsonl'}: line 1: ") and err.count("\n") == 1
    assert f" {key}: " in err and "allowed: " in err
    assert not list(tmp_path.glob("github-action-benchmark*"))


def test_tidy_export_has_a_row_per_cell_and_seed(nan_dir, capsys):
    pandas = pytest.importorskip("pandas")
    assert main(["export", str(nan_dir), "--format", "tidy"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[0] == str(nan_dir / "tidy.csv")
    recs = records(nan_dir)
    frame = pandas.read_csv(nan_dir / "tidy.csv")
    assert len(frame) == sum(len(r["per_seed"]["diverged"]) for r in recs) == 32
    for column in ("experiment", "model.family", "mitigation.name", "optimizer.lr", "seed", "diverged",
                   "divergence_step", "collapsed", "steps_to_converge", "final_train_loss", "final_heldout_loss",
                   "e2e_ratio@0", "e2e_ratio@1"):
        assert column in frame.columns, column
    by_lr = frame.groupby("optimizer.lr")["diverged"].mean()
    assert by_lr[0.5] == recs[1]["divergence_rate"] and by_lr[0.05] == 0
    first = frame.iloc[0]
    assert math.isinf(first["e2e_ratio@0"]) and math.isnan(first["final_heldout_loss"])
    # The program's throughput (raw and normalised) and the environment's versions, on every row.
    env, t = recs[0]["env"], recs[0]["throughput"]
    assert set(frame["throughput.steps_per_s"]) == {t["steps_per_s"]}
    assert np.allclose(frame["throughput.normalised_steps_per_s"], t["steps_per_s"] / (env["scan_flops_per_s"] / 1e9))
    assert set(frame["program"]) == {"tiny: none lr=0.05; none lr=0.5"} and set(frame["throughput.yardstick"]) == {"scan"}
    for name in ("jax", "jaxlib", "flax", "optax", "numpy"):
        assert set(frame[f"env.{name}"].astype(str)) == {env["versions"][name]}, name
    assert set(frame["env.python"].astype(str)) == {env["python"]} and set(frame["env.cpu"]) == {env["cpu"]}
    assert set(frame["env.code_sha256"]) == {env["code_sha256"]} and set(frame["env.backend"]) == {"cpu"}
    with (nan_dir / "tidy.csv").open() as f:
        assert sum(1 for _ in csv.DictReader(f)) == 32
    if (nan_dir / "tidy.parquet").exists():
        assert printed[1] == str(nan_dir / "tidy.parquet")
        assert len(pandas.read_parquet(nan_dir / "tidy.parquet")) == 32


@pytest.mark.parametrize("fmt, name", [("tidy", "table.json"), ("tidy", "table"), ("tidy", "results.jsonl"),
                                       ("pytest-benchmark", "pb.csv"), ("github-action-benchmark", "gab"),
                                       ("pytest-benchmark", "results.jsonl")])
def test_an_output_suffix_the_format_does_not_write_is_refused(tiny_run, tmp_path, capsys, fmt, name):
    out = tmp_path / name
    assert main(["export", str(tiny_run), "--format", fmt, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--output {out}: --format {fmt} writes " in err and "allowed: a path ending" in err
    assert list(tmp_path.iterdir()) == []  # nothing written under any name


def test_an_output_suffix_is_honoured(tiny_run, tmp_path, capsys, monkeypatch):
    assert main(["export", str(tiny_run), "--format", "tidy", "--output", str(tmp_path / "table.CSV")]) == 0
    assert capsys.readouterr().out.split()[0] == str(tmp_path / "table.CSV")
    assert (tmp_path / "table.CSV").read_text().startswith("suite,experiment,cell_id,label,")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    assert main(["export", str(tiny_run), "--format", "tidy", "--output", str(tmp_path / "t.parquet")]) == 2
    assert "Parquet needs pyarrow: pip install 'gradbench[parquet]'" in capsys.readouterr().err
    assert not (tmp_path / "t.parquet").exists()
    monkeypatch.undo()
    if importlib.util.find_spec("pyarrow"):
        pandas = pytest.importorskip("pandas")
        assert main(["export", str(tiny_run), "--format", "tidy", "--output", str(tmp_path / "t.parquet")]) == 0
        assert len(pandas.read_parquet(tmp_path / "t.parquet")) == 32 and not (tmp_path / "t.csv").exists()


def _events(path):
    """The scalar values of a TensorBoard event file ({tag: {step: value}}), read with tensorboardX's protobuf."""
    import struct

    from tensorboardX.proto import event_pb2

    data, scalars, at = path.read_bytes(), {}, 0
    while at < len(data):  # TFRecord: length (8 bytes), its CRC (4), the record, its CRC (4)
        (length,) = struct.unpack("<Q", data[at:at + 8])
        event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
        at += 16 + length
        for value in event.summary.value:
            if value.HasField("simple_value"):
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def test_tensorboard_export_reads_back(nan_dir, tmp_path, capsys):
    pytest.importorskip("tensorboardX")
    out = tmp_path / "tb"
    assert main(["export", str(nan_dir), "--format", "tensorboard", "--output", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"2 cells in {out}")
    recs = records(nan_dir)
    for r in recs:
        files = list((out / r["experiment"] / r["cell_id"]).glob("events.out.tfevents.*"))
        assert len(files) == 1
        scalars = _events(files[0])
        assert scalars["cell/divergence_rate"] == {0: pytest.approx(r["divergence_rate"])}
        assert scalars["per_seed/diverged"] == {s: float(d) for s, d in zip(r["per_seed"]["seed"],
                                                                             r["per_seed"]["diverged"])}
        loss = np.array([[np.nan if v is None else v for v in seed] for seed in r["trace"]["loss"]], float)
        first = r["trace"]["step"][0]
        assert scalars["median/loss"][first] == pytest.approx(float(np.nanmedian(loss[:, 0])), rel=1e-6)
        assert scalars["cell/steps_per_s"] == {0: pytest.approx(r["throughput"]["steps_per_s"])}


def test_tensorboard_without_the_extra_exits_2(tiny_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if not installed
    assert main(["export", str(tiny_run), "--format", "tensorboard", "--output", str(tmp_path / "tb")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'gradbench[tensorboard]'" in err
    assert not (tmp_path / "tb").exists()


def test_a_tensorboard_write_that_fails_names_the_users_path(tiny_run, tmp_path, capsys, monkeypatch):
    import types

    def full(logdir):  # as a writer fails on a full disk: naming a file of its own choosing
        raise OSError(28, "No space left on device", "/tmp/tbx-scratch/events.out.tfevents.0")

    monkeypatch.setitem(sys.modules, "tensorboardX", types.SimpleNamespace(SummaryWriter=full))
    out = tmp_path / "tb"
    assert main(["export", str(tiny_run), "--format", "tensorboard", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {out}: No space left on device\n"


def test_export_of_garbage_exits_2(tmp_path, capsys):
    (tmp_path / "results.jsonl").write_text("{not json\n")
    assert main(["export", str(tmp_path), "--format", "pytest-benchmark"]) == 2
    err = capsys.readouterr().err
    assert "not JSON" in err and err.count("\n") == 1
    assert not (tmp_path / "pytest-benchmark.json").exists()
