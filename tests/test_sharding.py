"""The run axis sharded over 4 (forced host) devices gives the same per-seed results as one device."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench import runner, suite
from tests.conftest import tiny_suite

ROOT = Path(__file__).resolve().parent.parent


def test_four_devices_with_padding_equal_one_device(tmp_path):
    # 3 seeds x 2 learning rates = 6 runs: padded to 8 on 4 devices, the 2 extra runs dropped.
    path = tiny_suite(tmp_path, seeds=3, steps=40, lr="[0.05, 0.3]")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "PYTHONPATH": str(ROOT), "GRADBENCH_COMPILE_CACHE": "1", "GRADBENCH_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "four"
    done = subprocess.run([sys.executable, "-m", "bench", "run", str(path), "--out", str(out), "--quiet",
                           "--no-report"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    compiled = re.search(r"compiled (\d+) programs in ([\d.]+) s", done.stdout)
    assert compiled and compiled[1] == "1" and float(compiled[2]) > 0  # both learning rates share one program
    assert any(p.name.startswith("jit__chunk_one") for p in (tmp_path / "cache").iterdir())  # persistent cache
    four = {r["label"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    one = {r["label"]: r for r in runner.run_suite(suite.load(path), tmp_path / "one")}
    assert set(four) == set(one) and len(one) == 2
    for label, r in one.items():
        f = four[label]
        assert f["throughput"]["devices"] == 4 and r["throughput"]["devices"] == 1
        assert f["per_seed"]["diverged"] == r["per_seed"]["diverged"]
        assert f["per_seed"]["steps_to_converge"] == r["per_seed"]["steps_to_converge"]
        for key in ("final_train_loss", "final_heldout_loss", "loss_0"):
            a, b = (np.array(x[key], dtype=float) for x in (f["per_seed"], r["per_seed"]))
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=f"{label} {key}")
    assert any(s is not None for r in one.values() for s in r["per_seed"]["steps_to_converge"])


def test_cluster_launch_detection_and_shard_composition():
    from bench import cluster

    assert not cluster.launched({})
    assert not cluster.launched({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"})  # one task: nothing to coordinate
    assert cluster.launched({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"})
    assert cluster.launched({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
    assert cluster.initialize({}) == (0, 1)
    cells = list(range(23))
    for shard in ((0, 1), (1, 3)):
        parts = [runner.shard_cells(cells, cluster.compose(shard, (p, 4))) for p in range(4)]
        assert sorted(c for part in parts for c in part) == runner.shard_cells(cells, shard)


def test_compile_cache_directory_follows_the_environment(tmp_path):
    from bench import compile_cache

    assert compile_cache.directory({"XDG_CACHE_HOME": "/x"}) == Path("/x/gradbench/jax")
    assert compile_cache.directory({"HOME": "/h"}).parts[-2:] == ("gradbench", "jax")
    assert compile_cache.directory({"GRADBENCH_CACHE_DIR": str(tmp_path)}) == tmp_path
    assert compile_cache.directory({"GRADBENCH_COMPILE_CACHE": "0", "XDG_CACHE_HOME": "/x"}) is None
    assert compile_cache.enable(False, {"XDG_CACHE_HOME": "/x"}) is None
    assert os.environ["GRADBENCH_COMPILE_CACHE"] == "0"  # conftest: tests never write the user's cache
