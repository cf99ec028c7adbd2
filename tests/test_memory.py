"""The memory estimate against a real out-of-memory: subprocesses of `gradbench run` under RLIMIT_AS."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gradbench.spec import build, suite
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parent.parent
HEADROOM_GIB = 1.0  # address space the run may use beyond what Python with JAX started holds
# Started under the limit: JAX's CPU backend first (its own reservations), then the limit, then the command line.
LAUNCH = """
import resource, sys
import jax
jax.numpy.zeros(1).block_until_ready()
used = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
limit = used + int(float(sys.argv[1]) * 2**30)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from gradbench.cli import main
sys.exit(main(sys.argv[2:]))
"""
BIG = TINY.format(seeds=16, steps=5, lr="0.05", extra="").replace("width = 8", "width = 2048").replace(
    'name = "sgd"', 'name = "adam"')  # about 1.9 GiB by the estimate
SMALL = TINY.format(seeds=2, steps=5, lr="0.05", extra="")
# The big group first, then a small one: the small one still trains after the big one ran out of memory.
BOTH = SMALL + ('[[experiment]]\nname = "big"\nseeds = 16\nmodel = { family = "mlp", width = 2048 }\n'
                'optimizer = { name = "adam", lr = 0.05 }\n[[experiment]]\nname = "small"\n')

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and RLIMIT_AS")


def _run(tmp_path, text, check=True):
    path = tmp_path / "suite.toml"
    path.write_text(text)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADBENCH_MEMORY_CHECK": "1" if check else "0"}
    proc = subprocess.run([sys.executable, "-c", LAUNCH, str(HEADROOM_GIB), "run", str(path), "--out",
                           str(tmp_path / "o"), "--quiet", "--no-report"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    return proc, path


def test_estimate_of_the_big_suite_is_above_the_headroom_and_of_the_small_one_far_below(tmp_path):
    for text, low, high in ((BIG, 1.5, 3.0), (SMALL, 0, 0.05)):
        (tmp_path / "s.toml").write_text(text)
        cells = suite.load(tmp_path / "s.toml").cells
        from gradbench.engine import runner

        group = runner.group_cells(cells)[0]
        total = build.memory_estimate(group.plan, group.runs[0].hyper, len(group.runs))["total"] / 2**30
        assert low < total < high, total


def test_a_group_beyond_the_memory_limit_is_refused_before_compiling(tmp_path):
    proc, path = _run(tmp_path, BIG)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for word in (path.name + ": ", "seeds", "GiB", "RLIMIT_AS", "allowed:"):
        assert word in err, err
    assert not (tmp_path / "o").exists()


def test_forced_past_the_refusal_the_big_group_really_runs_out_of_memory_in_one_line(tmp_path):
    proc, _ = _run(tmp_path, BOTH, check=False)
    err = proc.stderr
    assert proc.returncode == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err and "ran out of memory" in err and "'big'" in err, err
    not_run = json.loads((tmp_path / "o" / "not_run.json").read_text())
    assert [(g["experiment"], g["runs"]) for g in not_run["groups"]] == [("big", 16)]
    records = [json.loads(line) for line in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    assert [r["experiment"] for r in records] == ["small"]  # the group that fits trained and is kept


def test_a_group_the_estimate_fits_runs_under_the_same_limit(tmp_path):
    proc, _ = _run(tmp_path, SMALL)
    assert proc.returncode == 0, proc.stderr
    assert len((tmp_path / "o" / "results.jsonl").read_text().splitlines()) == 1
    assert not (tmp_path / "o" / "not_run.json").exists()


def test_a_long_suite_keeps_only_a_few_compiled_programs_alive(tmp_path, monkeypatch):
    # Every compiled program holds executables and memory maps: kept for the whole run, a suite of 44
    # programs passed Linux's 65,530 maps and crashed in LLVM. Five structures with at most two programs
    # cached and one group prepared ahead: every cell trains, and a finished group's program is let go.
    import gc
    import weakref

    from gradbench.engine import program, runner
    from gradbench.spec import suite
    from tests.conftest import tiny_suite

    monkeypatch.setattr(program, "MAX_PROGRAMS", 2)
    monkeypatch.setattr(runner, "AHEAD", 1)
    monkeypatch.setattr(program, "_PROGRAMS", program._PROGRAMS.__class__())
    made = []
    real = program.Program
    monkeypatch.setattr(program, "Program", lambda *a: made.append(real(*a)) or made[-1])
    path = tiny_suite(tmp_path, seeds=2, steps=4, lr="[0.05]", extra="[[experiment]]\nname = \"d\"\n"
                      "model = { depth = [1, 2, 3, 4, 5] }\n")
    records = runner.run_suite(suite.load(path), tmp_path / "out")
    assert len(records) == 5 and len(made) == 5 and len(program._PROGRAMS) <= 2
    first = weakref.ref(made[0])
    made.clear()
    gc.collect()
    assert first() is None  # nothing of the run holds the first group's program any more
