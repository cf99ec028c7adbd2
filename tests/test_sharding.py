"""The run axis sharded over 4 (forced host) devices gives the same per-seed results as one device."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from gradbench.engine import cluster, runner
from gradbench.spec import suite
from tests.conftest import tiny_suite

ROOT = Path(__file__).resolve().parent.parent


def test_four_devices_with_padding_equal_one_device(tmp_path):
    # 3 seeds x 2 learning rates = 6 runs: padded to 8 on 4 devices, the 2 extra runs dropped.
    path = tiny_suite(tmp_path, seeds=3, steps=40, lr="[0.05, 0.3]")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "PYTHONPATH": str(ROOT), "GRADBENCH_COMPILE_CACHE": "1", "GRADBENCH_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "four"
    done = subprocess.run([sys.executable, "-m", "gradbench", "run", str(path), "--out", str(out), "--quiet",
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
    from gradbench.engine import cluster

    assert not cluster.launched({})
    assert not cluster.launched({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"})  # one task: nothing to coordinate
    assert cluster.launched({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"})
    assert cluster.launched({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
    assert cluster.initialize({}) == (0, 1)


def test_shards_deal_whole_compiled_groups_and_processes_split_a_shard(tmp_path):
    ci = suite.load(ROOT / "bench" / "suites" / "ci.toml")
    parts = [runner.shard_cells(ci.cells, (i, 2)) for i in range(2)]
    # ci.toml: 2 groups (none, clip) of 3 learning rates x 20 seeds: each shard one whole program of 60 runs.
    assert [[len(g.runs) for g in runner.group_cells(p)] for p in parts] == [[60], [60]]
    # 3 groups of 2 cells, the clip_by_value group 4x the cost (8 seeds, not 2).
    path = tiny_suite(tmp_path, seeds=2, steps=10, lr="[0.05, 0.5]", extra="\n".join(
        f'[[mitigation]]\nname = "{m}"' for m in ("none", "clip_by_global_norm")) +
        '\n[[experiment]]\nname = "small"\n[[experiment]]\nname = "big"\nseeds = 8\n[[experiment.mitigation]]\nname = "clip_by_value"')
    cells = suite.load(path).cells
    groups = runner.group_cells(cells)
    assert sorted(len(g.runs) * g.steps for g in groups) == [40, 40, 160]
    two = [runner.shard_cells(cells, (i, 2)) for i in range(2)]
    assert [len(runner.group_cells(p)) for p in two] == [1, 2]  # the big group alone, the two small together
    for shard in ((0, 1), (1, 2), (0, 3)):
        whole = runner.shard_cells(cells, shard)
        for g in groups:  # a group is wholly in or wholly out of a shard
            assert len({c.cell_id in {w.cell_id for w in whole} for c in g.cells}) == 1
        processes = [runner.shard_cells(cells, cluster.compose(shard, (p, 2))) for p in range(2)]
        assert sorted(c.cell_id for part in processes for c in part) == sorted(c.cell_id for c in whole)
        assert not {c.cell_id for c in processes[0]} & {c.cell_id for c in processes[1]}


def test_compile_cache_directory_follows_the_environment(tmp_path):
    from gradbench.engine import compile_cache

    assert compile_cache.directory({"XDG_CACHE_HOME": "/x"}) == Path("/x/gradbench/jax")
    assert compile_cache.directory({"HOME": "/h"}).parts[-2:] == ("gradbench", "jax")
    assert compile_cache.directory({"GRADBENCH_CACHE_DIR": str(tmp_path)}) == tmp_path
    assert compile_cache.directory({"GRADBENCH_COMPILE_CACHE": "0", "XDG_CACHE_HOME": "/x"}) is None
    assert compile_cache.enable(False, {"XDG_CACHE_HOME": "/x"}) is None
    # conftest: the tests share a cache of their own, never the user's
    assert compile_cache.directory() == Path(os.environ["GRADBENCH_CACHE_DIR"]) != compile_cache.directory({"HOME": "/h"})
    assert Path(os.environ["GRADBENCH_CACHE_DIR"]).name.startswith("gradbench-test-cache-")
