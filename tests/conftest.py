"""Shared helpers: tiny suite files written to a temporary directory; one compilation cache for the test run."""
import os
import shutil
import tempfile

import pytest

# One persistent compilation cache for the whole test run, in a temporary directory removed at its end: this process,
# the pytest-xdist workers it starts and every `python -m gradbench` subprocess a test starts (they all inherit the
# environment) reuse each other's compiled programs, and no test reads or writes the user's cache. A cached program
# is the same executable, so no number changes; tests that count compilations count programs built in their
# process, cached or not. (A worker that reads an entry another is still writing gets an unreadable entry, which
# JAX reports in a warning and compiles again.)
if "GRADBENCH_TEST_CACHE" not in os.environ:  # the test run; its workers inherit the directory
    os.environ["GRADBENCH_TEST_CACHE"] = tempfile.mkdtemp(prefix="gradbench-test-cache-")
TEST_CACHE = os.environ["GRADBENCH_TEST_CACHE"]
os.environ["GRADBENCH_COMPILE_CACHE"] = "1"
os.environ["GRADBENCH_CACHE_DIR"] = TEST_CACHE


def pytest_configure(config):
    from gradbench.engine import compile_cache

    compile_cache.enable()  # before this process compiles anything


def pytest_unconfigure(config):
    if not hasattr(config, "workerinput"):  # the test run itself, not one of its xdist workers
        shutil.rmtree(TEST_CACHE, ignore_errors=True)

TINY = """
[suite]
name = "tiny"
seeds = {seeds}
steps = {steps}
chunk_steps = 20
trace_points = 1000

[task]
name = "teacher_student"
input_dim = 4
teacher_width = 8
n_train = 64
n_heldout = 64
batch_size = 8
target = 0.4

[model]
family = "mlp"
depth = 2
width = 8
activation = "tanh"

[optimizer]
name = "sgd"
lr = {lr}

{extra}
"""


def tiny_suite(tmp_path, name="suite.toml", seeds=4, steps=60, lr="[0.05, 1e4]", extra="", suite_extra=""):
    """Writes the tiny suite (optionally with extra TOML, and extra [suite] keys) and returns its path."""
    path = tmp_path / name
    text = TINY.format(seeds=seeds, steps=steps, lr=lr, extra=extra)
    path.write_text(text.replace("\n[task]", f"{suite_extra}\n\n[task]", 1) if suite_extra else text)
    return path


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory):
    """A temporary directory shared by one test module."""
    return tmp_path_factory.mktemp("m")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One tiny run shared by the session: lr 0.05 (no seed diverges) and 0.5 (most do), 16 seeds, 30 steps."""
    from gradbench.cli import main

    directory = tmp_path_factory.mktemp("tiny_run")
    path = tiny_suite(directory, seeds=16, steps=30, lr="[0.05, 0.5]")
    out = directory / "run"
    assert main(["run", str(path), "--out", str(out), "--quiet", "--no-report"]) == 0
    return out
