"""bench export: pytest-benchmark reads the saved run back; github-action-benchmark arrays hold every cell; strict
JSON with diverged and NaN cells; the tidy table (CSV, Parquet) and TensorBoard event files read back."""
import csv
import json
import math
import sys

import numpy as np
import pytest
from pytest_benchmark import cli
from pytest_benchmark.logger import Logger
from pytest_benchmark.storage.file import FileStorage

from bench.__main__ import main


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
    """The tiny run's records with a NaN throughput, NaN losses and an infinite gradient ratio."""
    recs = records(tiny_run)
    bad = recs[1]
    assert bad["divergence_rate"] > 0.5  # lr 0.5: most seeds diverged
    bad["throughput"]["steps_per_s"] = math.nan
    bad["throughput"]["chunk_steps_per_s"] = [math.nan, math.inf]
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
    loaded = {b["name"]: b for b in storage.load_benchmarks(str(out))}
    recs = records(tiny_run)
    assert set(loaded) == {f"tiny: {r['label']}" for r in recs}
    for r in recs:
        bench = loaded[f"tiny: {r['label']}"]
        rates = np.asarray(r["throughput"]["chunk_steps_per_s"])
        assert math.isclose(bench["ops"], r["throughput"]["steps_per_s"])  # what the benchmark action tracks
        assert bench["rounds"] == r["throughput"]["timed_chunks"] == len(rates) >= 3
        assert math.isclose(bench["stddev"], float(np.std(1 / rates, ddof=1)))
        assert bench["stddev"] > 0 and bench["iqr"] > 0 and bench["min"] < bench["max"]
        assert bench["extra_info"]["divergence_rate"] == r["divergence_rate"]
        assert bench["param"] == r["cell_id"]
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
    assert "tiny: none lr=0.05" in table and "tiny: none lr=0.5" in table


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
    assert {e["name"]: e["value"] for e in bigger} == \
        {f"{n} steps/s": r["throughput"]["steps_per_s"] for n, r in recs.items()}
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
    assert [b["name"] for b in pb["benchmarks"]] == ["tiny: none lr=0.05"]  # the NaN-throughput cell left out
    bigger = _strict((nan_dir / "github-action-benchmark-bigger.json").read_text())
    smaller = _strict((nan_dir / "github-action-benchmark-smaller.json").read_text())
    assert [e["name"] for e in bigger] == ["tiny: none lr=0.05 steps/s"]
    assert {e["name"] for e in smaller} >= {"tiny: none lr=0.5 divergence rate", "tiny: none lr=0.5 steps to converge"}
    assert all(math.isfinite(e["value"]) for e in bigger + smaller)


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
    with (nan_dir / "tidy.csv").open() as f:
        assert sum(1 for _ in csv.DictReader(f)) == 32
    if (nan_dir / "tidy.parquet").exists():
        assert printed[1] == str(nan_dir / "tidy.parquet")
        assert len(pandas.read_parquet(nan_dir / "tidy.parquet")) == 32


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
    assert "cell/steps_per_s" not in _events(next((out / "tiny" / recs[1]["cell_id"]).glob("events.*")))


def test_tensorboard_without_the_extra_exits_2(tiny_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if not installed
    assert main(["export", str(tiny_run), "--format", "tensorboard", "--output", str(tmp_path / "tb")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'gradbench[tensorboard]'" in err
    assert not (tmp_path / "tb").exists()


def test_export_of_garbage_exits_2(tmp_path, capsys):
    (tmp_path / "results.jsonl").write_text("{not json\n")
    assert main(["export", str(tmp_path), "--format", "pytest-benchmark"]) == 2
    err = capsys.readouterr().err
    assert "not JSON" in err and err.count("\n") == 1
    assert not (tmp_path / "pytest-benchmark.json").exists()
