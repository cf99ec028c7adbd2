"""bench compare: a run against itself, a doctored copy, a change within noise, garbage; records' environment."""
import copy
import json
import math
import re
from pathlib import Path

import pytest

from gradbench.cli import main
from gradbench.analysis import compare
from gradbench.records import store


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
    assert env["matmul_flops_per_s"] > 1e6 and env["scan_flops_per_s"] > 1e6 and env["cpu"] and env["cpu_count"] >= 1
    assert "default_matmul_precision" in env and isinstance(env["jax_plugins"], dict)


def test_a_run_against_itself_is_unchanged(run_dir, capsys):
    assert main(["compare", str(run_dir), str(run_dir / "results.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "Nothing regressed" in out and "normalised by each run's scan FLOP/s" in out
    # 2 cells x 4 metrics = 8 tests: one cell's rise from 0/16 is found at 8/16 (Fisher p 0.0024 < 0.05 / 8).
    assert "divergence_rate: 0/16 -> 8/16 (Fisher, p < 0.0063)" in out


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


def scaled(recs, speed=1.0, calibration=1.0, spread=None, cpu=None):
    """Copies with steps/s (median, quartiles, chunk rates) times `speed`, the calibration times `calibration`,
    the CPU-time rates times `cpu` (None: `speed`, as when a step does more work); `spread`: the chunk rates
    replaced by these multiples of the median."""
    recs = copy.deepcopy(recs)
    for r in recs:
        t = r["throughput"]
        t["steps_per_s"] *= speed
        t["steps_per_s_iqr"] = [v * speed for v in t["steps_per_s_iqr"]]
        t["chunk_steps_per_s"] = [v * speed for v in t["chunk_steps_per_s"]] if spread is None \
            else [t["steps_per_s"] * f for f in spread]
        t["cpu_steps_per_s"] *= speed if cpu is None else cpu
        t["chunk_cpu_steps_per_s"] = [v * (speed if cpu is None else cpu) for v in t["chunk_cpu_steps_per_s"]]
        r["env"]["scan_flops_per_s"] *= calibration
    return recs


def throughput_rows(result):
    return [r for r in result["rows"] if r["metric"] == "steps_per_s"]


def test_throughput_is_normalised_by_the_calibration_and_judged_beyond_its_noise(run_dir):
    base = scaled(records(run_dir), spread=[0.98, 1.0, 1.02])
    assert len(records(run_dir)[0]["throughput"]["chunk_steps_per_s"]) == records(run_dir)[0]["throughput"][
        "timed_chunks"] >= 3
    halved = compare.compare(base, scaled(base, speed=0.5))
    assert {r["verdict"] for r in throughput_rows(halved)} == {"worse"}
    # The same machine under load: the in-run calibration fell as much as the training did.
    loaded = compare.compare(base, scaled(base, speed=0.5, calibration=0.5))
    rows = throughput_rows(loaded)
    assert {r["verdict"] for r in rows} == {"unchanged"} and rows[0]["ratio"] == pytest.approx(1.0)
    assert loaded["throughput"] == ["normalised by each run's scan FLOP/s and by the process's CPU time"]
    # Older records hold only the matmul's FLOP/s: the yardstick both sides have is used.
    old = copy.deepcopy(base)
    for r in old:
        del r["env"]["scan_flops_per_s"]
    assert compare.compare(old, old)["throughput"] == ["normalised by each run's matmul FLOP/s and by the "
                                                       "process's CPU time"]
    # A current run whose chunks spread from 0.4 to 1.2 of their median: x0.6 is within that noise band.
    noisy = compare.compare(base, scaled(base, speed=0.6, spread=[0.4, 1.0, 1.2]))
    rows = throughput_rows(noisy)
    assert {r["verdict"] for r in rows} == {"unchanged"}
    assert rows[0]["noise_band"][0] == pytest.approx(0.4 / 1.02) and "noise band x0.39" in rows[0]["test"]
    assert not compare.compare(base, scaled(base, speed=0.5), throughput_threshold=0.0)["regressed"]


def test_a_loaded_machine_slows_the_wall_clock_not_the_cpu_time_a_step_costs(run_dir):
    base = scaled(records(run_dir), spread=[0.98, 1.0, 1.02])
    assert all(r["throughput"]["cpu_steps_per_s"] > 0 and len(r["throughput"]["chunk_cpu_steps_per_s"]) ==
               r["throughput"]["timed_chunks"] for r in base)
    # Another job took the cores: training fell to x0.5, the yardstick only to x0.8, the CPU time a
    # step costs stayed. The normalised wall ratio (x0.62) alone would say worse.
    loaded = throughput_rows(compare.compare(base, scaled(base, speed=0.5, calibration=0.8, cpu=1.0)))
    assert {r["verdict"] for r in loaded} == {"unchanged"}
    assert loaded[0]["ratio"] == pytest.approx(0.625) and loaded[0]["cpu_ratio"] == pytest.approx(1.0)
    assert "CPU time x1.00" in loaded[0]["test"]
    # A step that does twice the work: both clocks say so.
    slower = throughput_rows(compare.compare(base, scaled(base, speed=0.5, cpu=0.5)))
    assert {r["verdict"] for r in slower} == {"worse"}
    faster = throughput_rows(compare.compare(base, scaled(base, speed=2.0, cpu=2.0)))
    assert {r["verdict"] for r in faster} == {"better"}
    # Records without CPU-time rates (older ones), or of an accelerator, where the host's CPU time is not
    # the work: the wall ratio alone decides.
    old = copy.deepcopy(base)
    for r in old:
        del r["throughput"]["cpu_steps_per_s"]
    assert {r["verdict"] for r in throughput_rows(compare.compare(old, scaled(base, 0.5, 0.8, cpu=1.0)))} \
        == {"worse"}
    gpu = copy.deepcopy(base)
    for r in gpu:
        r["env"]["backend"] = "gpu"
    rows = throughput_rows(compare.compare(gpu, scaled(gpu, 0.5, 0.8, cpu=1.0)))
    assert {r["verdict"] for r in rows} == {"worse"} and rows[0]["cpu_ratio"] is None


def test_the_smallest_detectable_effects():
    # The CI suite: 6 cells x 4 metrics = 24 tests at alpha 0.05. With 8 seeds a cell's divergence must rise
    # from 0/8 to 7/8 to be found; with 20 seeds 0/20 -> 9/20, so a rise from 0 to 0.5.
    assert compare.smallest_rate_rise(8, 8, 0.05 / 24) == 7
    assert compare.smallest_rate_rise(20, 20, 0.05 / 24) == 9
    assert compare.smallest_rate_rise(2, 2, 0.05) is None
    assert compare.smallest_superiority(8, 8, 0.05 / 24) == pytest.approx(60 / 64)
    assert compare.smallest_superiority(2, 2, 0.05) is None


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


# The environment first; throughput across machines; the CI baseline's own gate cases (results/ci, 20 seeds).

CI_BASELINE = Path(__file__).resolve().parent.parent / "results" / "ci"


def committed_ci():
    return records(CI_BASELINE)


def test_compare_names_every_environment_difference(run_dir, tmp_path, capsys):
    recs = records(run_dir)
    for r in recs:
        env = r["env"]
        env["versions"].update(jax="0.11.0", jaxlib="0.11.0", optax="0.3.0")
        env.update(backend="gpu", device_kind="NVIDIA H100", device_count=8, python="3.12.4",
                   xla_flags="--xla_gpu_autotune_level=0", code_sha256="f" * 64)
    doctored = write(tmp_path / "upgraded.jsonl", recs)
    assert main(["compare", str(run_dir), str(doctored), "--markdown"]) == 0  # nothing regressed: reported
    out = capsys.readouterr().out
    head = out.split("cells paired")[0]
    for line in ("- jax: 0.10.2 -> 0.11.0", "- jaxlib: 0.10.2 -> 0.11.0", "- optax: ", " -> 0.3.0", "- Python: ",
                 " -> 3.12.4", "- backend: cpu -> gpu", "- device kind: cpu -> NVIDIA H100", "- device count: 1 -> 8",
                 "- XLA flags: ", " -> '--xla_gpu_autotune_level=0'", "- code sha256: ", " -> ffffffffffff (the "
                 "code under test)", "throughput was not judged across machines (the backend, device kind and "
                 "device count differ)"):
        assert line in head, line
    assert head.index("environment: 9 differences") < head.index("- jax")
    assert main(["compare", str(run_dir), str(doctored), "--fail-on-env-change", "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["failed"] and not result["regressed"] and result["environment"]["changed"]
    assert {d["key"] for d in result["environment"]["differences"]} == {
        "versions.jax", "versions.jaxlib", "versions.optax", "python", "backend", "device_kind", "device_count",
        "xla_flags", "code_sha256"}
    assert {r["verdict"] for r in result["rows"] if r["metric"] == "steps_per_s"} == {"untested"}
    # Only the code changed (what a pull request tests) and the kernel build: no environment change, throughput
    # judged.
    code_only = records(run_dir)
    for r in code_only:
        r["env"]["code_sha256"] = "f" * 64
        r["env"]["platform"] += "-v2"
    assert main(["compare", str(run_dir), str(write(tmp_path / "code.jsonl", code_only)), "--fail-on-env-change",
                 "--throughput-threshold", "0"]) == 0
    out = capsys.readouterr().out
    assert "environment: 2 differences" in out and "ENVIRONMENT CHANGED" not in out and "\n  OS: " in out
    assert "not judged across machines" not in out and "normalised by each run's scan FLOP/s" in out


def test_an_unchanged_run_on_another_cpu_model_passes_and_says_throughput_was_not_judged(tmp_path, capsys):
    # What an unchanged checkout gave on a 2-core AMD EPYC against the Intel Xeon baseline (issue 33): steps/s
    # normalised x0.68-0.77, CPU time x0.40-0.43, so with the default threshold every cell read "worse".
    base = committed_ci()
    cur = copy.deepcopy(base)
    for r in cur:
        r["env"]["cpu"] = "AMD EPYC 7B13"
        t = r["throughput"]
        for key in ("steps_per_s", "cpu_steps_per_s"):
            t[key] *= 0.4
        for key in ("chunk_steps_per_s", "chunk_cpu_steps_per_s", "steps_per_s_iqr"):
            t[key] = [v * 0.4 for v in t[key]]
    amd = write(tmp_path / "amd.jsonl", cur)
    assert main(["compare", str(CI_BASELINE), str(amd)]) == 0
    out = capsys.readouterr().out
    assert "CPU model: Intel(R) Xeon(R) Processor -> AMD EPYC 7B13" in out.splitlines()[1]
    assert "throughput was not judged across machines (the CPU model differs)" in out
    assert "throughput: not judged across machines (reported only). Nothing regressed." in out
    assert main(["compare", str(CI_BASELINE), str(amd), "--json"]) == 0
    rows = [r for r in json.loads(capsys.readouterr().out)["rows"] if r["metric"] == "steps_per_s"]
    assert len(rows) == 6 and {r["verdict"] for r in rows} == {"untested"}
    assert all(r["test"].startswith("not judged: another machine (CPU model)") and r["ratio"] < 0.5 for r in rows)
    assert main(["compare", str(CI_BASELINE), str(amd), "--judge-throughput-across-machines"]) == 1
    assert "REGRESSED: 6 cells" in capsys.readouterr().out
    assert main(["compare", str(CI_BASELINE), str(amd), "--fail-on-env-change"]) == 1
    assert "ENVIRONMENT CHANGED (CPU model)" in capsys.readouterr().out


def test_the_ci_baseline_with_a_divergence_regression_of_0_to_10_of_20_fails(tmp_path, capsys):
    recs = committed_ci()
    cell = next(r for r in recs if r["divergence_rate"] == 0)
    ps = cell["per_seed"]
    assert len(ps["diverged"]) == 20
    for i in range(10):
        ps["diverged"][i], ps["trained"][i], ps["steps_to_converge"][i], ps["final_heldout_loss"][i] = \
            True, False, None, None
    assert main(["compare", str(CI_BASELINE), str(write(tmp_path / "div.jsonl", recs)), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["regressed"] == [cell["cell_id"]] and result["environment"]["differences"] == []
    worst = result["rows"][0]
    assert (worst["metric"], worst["baseline"], worst["current"], worst["verdict"]) == \
        ("divergence_rate", "0/20", "10/20", "worse")


def _without_diverged(recs):
    del recs[0]["per_seed"]["diverged"]


def _zero_throughput(recs):
    recs[0]["throughput"]["steps_per_s"] = 0.0


def _nan_throughput(recs):
    recs[1]["throughput"]["steps_per_s"] = math.nan


def _nan_chunk(recs):
    recs[1]["throughput"]["chunk_steps_per_s"][0] = math.nan


def _two_records_of_one_cell(recs):
    other = copy.deepcopy(recs[0])
    other["per_seed"]["diverged"][0] = not other["per_seed"]["diverged"][0]
    recs.append(other)


def _short_per_seed(recs):
    recs[0]["per_seed"]["steps_to_converge"] = recs[0]["per_seed"]["steps_to_converge"][:3]


def _nan_yardstick(recs):
    recs[0]["env"]["scan_flops_per_s"] = math.nan


def _null_throughput(recs):
    recs[1]["throughput"]["steps_per_s"] = None


def _negative_yardstick(recs):
    recs[0]["env"]["matmul_flops_per_s"] = -1.0


def _word_per_seed(recs):
    recs[1]["per_seed"]["final_heldout_loss"][2] = "lots"


# Each breakage -> the line it is on and the key named (every message also says what is allowed).
@pytest.mark.parametrize("doctor, words", [
    (_without_diverged, ["line 1: ", "per_seed.diverged: missing"]),
    (_zero_throughput, ["line 1: ", "throughput.steps_per_s: 0.0", "> 0"]),
    (_nan_throughput, ["line 2: ", "throughput.steps_per_s: NaN"]),
    (_null_throughput, ["line 2: ", "throughput.steps_per_s: null", "> 0"]),
    (_nan_chunk, ["line 2: ", "throughput.chunk_steps_per_s[0]: NaN"]),
    (_two_records_of_one_cell, ["line 3: ", "repeats line 1", "one record per cell"]),
    (_short_per_seed, ["line 1: ", "per_seed.steps_to_converge: 3 values", "16 seeds"]),
    (_nan_yardstick, ["line 1: ", "env.scan_flops_per_s: NaN"]),
    (_negative_yardstick, ["line 1: ", "env.matmul_flops_per_s: -1.0", "> 0"]),
    (_word_per_seed, ["line 2: ", "per_seed.final_heldout_loss[2]: \"lots\""]),
])
@pytest.mark.parametrize("side", ["baseline", "current"])
def test_records_compare_cannot_judge_are_refused_on_one_line(run_dir, tmp_path, capsys, doctor, words, side):
    recs = records(run_dir)
    doctor(recs)
    bad = write(tmp_path / "bad.jsonl", recs)  # NaN written as the NaN token
    args = [str(run_dir), str(bad)] if side == "current" else [str(bad), str(run_dir)]
    for fmt in ([], ["--json"], ["--markdown"]):
        assert main(["compare", *args, *fmt]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1 and "Traceback" not in captured.err
        assert captured.err.startswith(f"error: {bad}: line ") and "allowed: " in captured.err
        assert all(w in captured.err for w in words), captured.err


def test_a_record_repeated_unchanged_is_refused(run_dir, tmp_path, capsys):
    recs = records(run_dir)
    twice = write(tmp_path / "twice.jsonl", recs + recs[:1])
    assert main(["compare", str(run_dir), str(twice), "--json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {twice}: line 3: ") and "repeats line 1 (the same record)" in err
    assert err.count("\n") == 1 and "allowed: one record per cell" in err


def test_a_nan_per_seed_value_ranks_last_and_json_stays_strict(run_dir, tmp_path, capsys):
    recs = records(run_dir)
    cell = stable_cell(recs)
    nan = [r for r in copy.deepcopy(recs) if r["cell_id"] == cell["cell_id"]]
    nan[0]["per_seed"]["final_heldout_loss"] = [math.nan] * 16  # in memory, NaN is a loss that is no loss at all
    rows = compare.compare(records(run_dir), nan)["rows"]
    assert [r["metric"] for r in rows if r["verdict"] == "worse"] == ["final_heldout_loss"]
    cell["per_seed"]["final_heldout_loss"] = [None] * 16  # as records write a non-finite loss: null
    assert main(["compare", str(run_dir), str(write(tmp_path / "nan.jsonl", recs)), "--json"]) == 1
    result = json.loads(capsys.readouterr().out, parse_constant=lambda token: pytest.fail(token))
    worse = [r for r in result["rows"] if r["verdict"] == "worse"]
    assert [(r["metric"], r["current"]) for r in worse] == [("final_heldout_loss", "median never")]


def test_every_per_seed_key_compare_reads_is_declared_in_the_record_shape():
    from gradbench.records import validate

    assert set(compare.PER_SEED_KEYS) <= set(validate.CORE["per_seed"])
