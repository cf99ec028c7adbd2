"""bench compare: a run against itself, a doctored copy, a change within noise, garbage; records' environment."""
import copy
import json
import re

import pytest

from bench import compare, store
from bench.__main__ import main


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    """The session's tiny run (2 cells, 16 seeds, 30 steps)."""
    return tiny_run


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def write(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def stable_cell(recs):
    return next(r for r in recs if r["config"]["optimizer"]["lr"] == 0.05)


def test_records_carry_the_environment(run_dir):
    env = records(run_dir)[0]["env"]
    assert re.fullmatch(r"[0-9a-f]{64}", env["code_sha256"]) and env["package_version"]
    assert env["matmul_flops_per_s"] > 1e6 and env["cpu"] and env["cpu_count"] >= 1
    assert "default_matmul_precision" in env and isinstance(env["jax_plugins"], dict)


def test_a_run_against_itself_is_unchanged(run_dir, capsys):
    assert main(["compare", str(run_dir), str(run_dir / "results.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "Nothing regressed" in out and "same machine" in out


def test_a_divergence_rate_raised_to_8_of_16_regresses_that_cell(run_dir, tmp_path, capsys):
    recs = records(run_dir)
    cell = stable_cell(recs)
    assert sum(cell["per_seed"]["diverged"]) == 0 and len(cell["per_seed"]["diverged"]) == 16
    ps = cell["per_seed"]
    for i in range(8):
        ps["diverged"][i], ps["steps_to_converge"][i], ps["final_heldout_loss"][i] = True, None, None
        ps["trained"][i] = False
    cell["divergence_rate"] = 0.5
    doctored = write(tmp_path / "doctored.jsonl", recs)
    assert main(["compare", str(run_dir), str(doctored), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["regressed"] == [cell["cell_id"]]
    worst = result["rows"][0]
    assert (worst["metric"], worst["verdict"], worst["baseline"], worst["current"]) == \
        ("divergence_rate", "worse", "0/16", "8/16")
    assert worst["p"] == pytest.approx(0.00245, abs=1e-5) and worst["p_adjusted"] < 0.05
    assert main(["compare", str(run_dir), str(doctored)]) == 1
    assert "REGRESSED: 1 cells (tiny: none lr=0.05)" in capsys.readouterr().out
    assert main(["compare", str(run_dir), str(doctored), "--markdown"]) == 1
    md = capsys.readouterr().out
    assert "| worse | tiny | none lr=0.05 | divergence_rate | 0/16 | 8/16 |" in md
    # The other way round the same cell got better: nothing regressed.
    assert main(["compare", str(doctored), str(run_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"][0]["verdict"] == "better"


def test_a_change_within_noise_is_unchanged(run_dir, tmp_path, capsys):
    recs = records(run_dir)
    cell = stable_cell(recs)
    cell["per_seed"]["diverged"][0] = True  # 0/16 -> 1/16
    cell["per_seed"]["final_heldout_loss"] = [None if v is None else v * 1.01 for v in
                                              cell["per_seed"]["final_heldout_loss"]]
    for r in recs:
        r["throughput"]["steps_per_s"] *= 0.9
    assert main(["compare", str(run_dir), str(write(tmp_path / "noise.jsonl", recs)), "--all"]) == 0
    out = capsys.readouterr().out
    assert "Nothing regressed" in out and "1/16" in out and "x0.90" in out


def test_throughput_is_normalised_by_the_calibration_when_machines_differ(run_dir):
    base = records(run_dir)
    slower = copy.deepcopy(base)
    for r in slower:
        r["throughput"]["steps_per_s"] /= 2
        r["env"]["matmul_flops_per_s"] /= 2
    worse = compare.compare(base, slower)
    assert {r["verdict"] for r in worse["rows"] if r["metric"] == "steps_per_s"} == {"worse"}
    for r in slower:
        r["env"]["cpu"] = "another CPU"
    normalised = compare.compare(base, slower)
    rows = [r for r in normalised["rows"] if r["metric"] == "steps_per_s"]
    assert {r["verdict"] for r in rows} == {"unchanged"} and rows[0]["ratio"] == pytest.approx(1.0)
    assert normalised["throughput"] == ["normalised by matmul FLOP/s (machines differ)"]
    assert not compare.compare(base, slower, throughput_threshold=0.0)["regressed"]


def test_failure_rate_and_critical_lr_when_records_carry_them(run_dir):
    base = records(run_dir)
    for r in base:
        r["per_seed"]["trained"] = [True] * 16
        r["per_seed"]["critical_lr"] = [1.0 + 0.01 * i for i in range(16)]
    cur = copy.deepcopy(base)
    cell = stable_cell(cur)
    cell["per_seed"]["trained"] = [i % 2 == 0 for i in range(16)]
    cell["per_seed"]["critical_lr"] = [0.1 + 0.01 * i for i in range(16)]
    result = compare.compare(base, cur)
    worse = {r["metric"]: r for r in result["rows"] if r["verdict"] == "worse"}
    assert set(worse) == {"failure_rate", "critical_lr"} and result["regressed"] == [cell["cell_id"]]
    assert worse["critical_lr"]["test"] == "MW exact" and worse["critical_lr"]["effect"].endswith("0.00")
    assert worse["failure_rate"]["current"] == "8/16"


def test_rank_test_ranks_never_converged_last():
    result = compare.rank_test([10.0, 12.0, 14.0, 16.0], [float("inf")] * 4)
    assert result["direction"] == 1 and result["test"] == "MW permutation" and result["p"] < 0.05
    assert result["current"] == "median never"


@pytest.mark.parametrize("content, words", [
    (b"\x89PNG\x00\xff\xfe", ["cannot read"]),
    (b"hello\n", ["line 1", "not JSON"]),
    (b"[1, 2]\n", ["line 1", "not a results record"]),
    (b"", ["no results records"]),
])
def test_garbage_exits_2_on_one_line(run_dir, tmp_path, capsys, content, words):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    assert main(["compare", str(run_dir), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and str(bad) in err
    assert all(w in err for w in words)


def test_unknown_schema_other_suites_and_missing_files_exit_2(run_dir, tmp_path, capsys):
    recs = records(run_dir)
    future = [{**r, "schema_version": 99} for r in recs]
    assert main(["compare", str(run_dir), str(write(tmp_path / "future.jsonl", future))]) == 2
    assert "schema_version 99 is unknown" in capsys.readouterr().err
    older = [{**r, "schema_version": 1} for r in recs]  # compare reads every schema it knows
    assert main(["compare", str(write(tmp_path / "older.jsonl", older)), str(run_dir)]) == 0
    capsys.readouterr()
    other = [{**r, "suite": "other"} for r in recs]
    assert main(["compare", str(run_dir), str(write(tmp_path / "other.jsonl", other))]) == 2
    assert "different suites: baseline tiny, current other" in capsys.readouterr().err
    assert main(["compare", str(run_dir), str(tmp_path / "nowhere")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cells_on_one_side_are_listed(run_dir, tmp_path, capsys):
    recs = records(run_dir)
    assert main(["compare", str(run_dir), str(write(tmp_path / "one.jsonl", recs[:1]))]) == 0
    assert "only in baseline (1): tiny: none lr=0.5" in capsys.readouterr().out
    assert store.read_results(run_dir)[0]["cell_id"] == recs[0]["cell_id"]
