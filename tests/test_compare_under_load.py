"""The CI suite run twice from an unchanged checkout, the second time with a busy process beside it: compare
with the unloaded run exits 0 and calls no cell's throughput worse."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_an_unchanged_run_under_load_does_not_regress(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADBENCH_COMPILE_CACHE": "1",
           "GRADBENCH_CACHE_DIR": str(tmp_path / "cache"), "GRADBENCH_MEMORY_CHECK": "0"}

    def bench(*args):
        return subprocess.run([sys.executable, "-m", "gradbench", *args], env=env, capture_output=True, text=True,
                              timeout=600)

    run = ["run", str(ROOT / "bench/suites/ci.toml"), "--quiet", "--no-report", "--out"]
    assert bench(*run, str(tmp_path / "base")).returncode == 0

    def loaded_run(name):
        """The CI suite again with a busy loop on one core, compared with the baseline: (exit status, rows)."""
        spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # one of the cores kept busy
        try:
            loaded = bench(*run, str(tmp_path / name))
        finally:
            spin.kill()
            spin.wait()
        assert loaded.returncode == 0, loaded.stderr[-2000:]
        done = bench("compare", str(tmp_path / "base"), str(tmp_path / name), "--json")
        return done.returncode, [r for r in json.loads(done.stdout)["rows"] if r["metric"] == "steps_per_s"]

    def summary(rows):
        return {r["label"]: (r["verdict"], round(r["ratio"], 2), round(r["cpu_ratio"], 2)) for r in rows}

    status, rows = loaded_run("loaded")
    print(summary(rows))
    if status != 0:
        # Beside the other test worker and the busy loop (3 busy processes on 2 cores), contention for a core
        # once raised the CPU time a step costs as well (x0.64; docs/CI.md, "an unchanged checkout under
        # load"): a regression is believed only when the loaded run, made again, reads worse too.
        status, rows = loaded_run("loaded_again")
        print("again:", summary(rows))
    assert status == 0 and len(rows) == 6 and all(r["verdict"] != "worse" for r in rows), summary(rows)
    # The CPU time a step costs is what keeps the verdict: both records hold it per timed chunk.
    assert all(r["cpu_noise_band"] and "CPU time" in r["test"] for r in rows)
