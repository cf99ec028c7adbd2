"""bench export: pytest-benchmark reads the saved run back; github-action-benchmark arrays hold every cell."""
import json
import math
import sys

from pytest_benchmark import cli
from pytest_benchmark.logger import Logger
from pytest_benchmark.storage.file import FileStorage

from bench.__main__ import main


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


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
        assert math.isclose(bench["ops"], r["throughput"]["steps_per_s"])
        assert bench["extra_info"]["divergence_rate"] == r["divergence_rate"]
        assert bench["param"] == r["cell_id"]
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
    recs = {f"tiny: {r['label']}": r for r in records(tiny_run)}
    assert {e["name"]: e["value"] for e in bigger} == \
        {f"{n} steps/s": r["throughput"]["steps_per_s"] for n, r in recs.items()}
    by_name = {e["name"]: e for e in smaller}
    for name, r in recs.items():
        assert by_name[f"{name} divergence rate"]["value"] == r["divergence_rate"]
        steps = by_name[f"{name} steps to converge"]
        expected = r["median_steps_to_converge"]
        assert steps["value"] == (r["config"]["steps"] if expected is None else expected)
        assert ("censored" in steps["extra"]) == (expected is None)


def test_export_of_garbage_exits_2(tmp_path, capsys):
    (tmp_path / "results.jsonl").write_text("{not json\n")
    assert main(["export", str(tmp_path), "--format", "pytest-benchmark"]) == 2
    err = capsys.readouterr().err
    assert "not JSON" in err and err.count("\n") == 1
    assert not (tmp_path / "pytest-benchmark.json").exists()
