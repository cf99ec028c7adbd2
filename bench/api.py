"""The Python API: what the `gradbench` command does, as functions that return data.

    import gradbench
    df = gradbench.load("results/ci")     # pandas DataFrame: one row per cell x seed
    df = gradbench.run("bench/suites/example.toml", "runs/example-deep", seeds=4, model__depth=8)
    plan = gradbench.cells("bench/suites/example.toml", optimizer__lr=[0.01, 0.1])

Overrides are keyword arguments, one convention everywhere: each is a key of `gradbench run --set`, with
`__` for the dot (`model__depth=8` is `--set model.depth=8`; `**{"model.depth": 8}` says the same). A bare key is
a [suite] setting (`seeds`, `steps`, `init_perturbation`, ...; `seeds` and `steps` are --seeds and --steps: every
experiment's too); SECTION__KEY sets that key of every experiment's [task], [model] or [optimizer] table, or a
parameter of every [[mitigation]] that has it (`mitigation__max_norm=2.0`). A list is a grid axis. Values are
checked as the suite file's are.

Bad input raises `UsageError` (a ValueError) whose message is the one line the command line prints (naming the
file or flag, the key and what is allowed); nothing is written. Nothing here imports jax until it is called,
so `import gradbench` stays fast. The command line (gradbench.cli) is built on the same functions.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

__all__ = ["load", "results", "run", "cells", "suite", "UsageError"]

DEFAULT_SUITE = Path(__file__).parent / "suites" / "claims.toml"
MAX_NAME = 100  # characters of a suite name used as the directory runs/NAME


class UsageError(ValueError):
    """Bad input (a flag, a file, an argument): one line naming it, the key and what is allowed (exit 2)."""


def _one_line(function):
    """Raises the layers' bad-input errors (a suite's SuiteError, a results directory's StoreError, an unreadable
    file's InputError) as UsageError (a ValueError), message unchanged."""
    import functools

    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        from gradbench.records.store import StoreError
        from gradbench.spec.files import InputError
        from gradbench.spec.schema import SuiteError

        try:
            return function(*args, **kwargs)
        except (SuiteError, StoreError, InputError) as e:
            raise UsageError(str(e)) from None
    return wrapped


def overrides(keywords: dict) -> dict:
    """Keyword overrides -> --set keys: `model__depth` -> `model.depth` (a key with a dot is kept as it is)."""
    return {key.replace("__", "."): value for key, value in keywords.items()}


# ---- results -----------------------------------------------------------------------------------------------------

def results(path) -> list[dict]:
    """The results records (one dict per cell, docs/REFERENCE.md "Results records") of a run directory or a
    results.jsonl, each checked against its declared shape; UsageError on an unreadable or malformed file."""
    from gradbench.records import store

    try:
        return store.read_results(path)
    except ValueError as e:
        raise UsageError(str(e)) from None


def to_frame(recs: list[dict]):
    """Records -> a pandas DataFrame, one row per cell x seed (the tidy table, gradbench.reports.export.tidy_rows)."""
    pandas = _pandas()
    from gradbench.reports.export import tidy_rows

    return pandas.DataFrame(tidy_rows(recs))


def load(path):
    """A run's results as a pandas DataFrame: one row per cell x seed.

    Args:
      path: a run directory (holding results.jsonl) or a results.jsonl file.

    Columns (the tidy export's, docs/USAGE.md): suite, experiment, cell_id, label; the cell's config flattened
    with dotted names (task.*, model.depth, optimizer.lr, mitigation.name, seeds, steps, ...); the compiled
    program it trained in and that program's throughput (throughput.steps_per_s: training steps per second of
    the whole program, throughput.normalised_steps_per_s, throughput.cpu_steps_per_s, ...); the environment
    (env.jax, env.jaxlib, env.flax, env.optax, env.numpy, env.scipy, env.python, env.backend, env.device_kind,
    env.cpu, env.code_sha256, env.git_commit, ...); then the seed's outcomes: seed, diverged, collapsed,
    trained, divergence_step, steps_to_converge (NaN: never converged), loss_0, final_train_loss,
    final_heldout_loss, final_validation_loss, final_heldout_metric, max_grad_norm, e2e_ratio@FRACTION.

    Needs pandas (`pip install "gradbench[pandas]"`); without it, UsageError says so. `results(path)` gives the
    records themselves without pandas.
    """
    _pandas()  # before reading: a missing extra is said first
    return to_frame(results(path))


def _pandas():
    try:
        import pandas
    except ImportError:
        raise UsageError("pandas is not installed: `load` and `run` return a pandas DataFrame; install it with "
                         "pip install \"gradbench[pandas]\" (or use results(path) / run(..., frame=False) for the "
                         "plain records)") from None
    return pandas


# ---- a suite, its cells and their cost ---------------------------------------------------------------------------

def suite(path=DEFAULT_SUITE, **keywords):
    """A validated suite (gradbench.spec.suite.Suite: settings, resolved experiments, cells, claims) with the
    overrides applied (see the module's docstring); nothing is trained or compiled."""
    return load_suite(path, overrides=overrides(keywords))


@_one_line
def load_suite(path=DEFAULT_SUITE, seeds=None, steps=None, overrides=None):
    """`suite` with the command line's arguments: --seeds, --steps and the --set keys (dotted) as given."""
    from gradbench.spec import suite as suite_lib
    from gradbench.spec.settings import read_toml

    read_toml(path)  # a missing or malformed file is one line, before jax is imported
    return suite_lib.load(path, seeds=seeds, steps=steps, overrides=overrides)


def cells(path=DEFAULT_SUITE, **keywords) -> dict:
    """What a run of the suite would train and what it would cost, without training or compiling anything.

    Returns a dict:
      suite: the validated suite (see `suite`);
      cells: one dict per cell in run order (cell_id, experiment, label, seeds, steps, program: its index);
      programs: one dict per compiled program (gradbench.engine.runner.cost: experiment, cells, labels, runs,
        steps, run_steps, flops_per_run_step, memory: the bytes estimate per device, `total` among them);
      run_steps: the sum of the programs' run-steps (an upper bound: seeds that converge or diverge stop early);
      available: (bytes, where) of the memory a program may use here; devices: jax's local device count.
    """
    return plan(suite(path, **keywords))


def plan(s) -> dict:
    """`cells` of a validated suite."""
    import jax

    from gradbench.engine import runner
    from gradbench.spec import build

    devices = jax.local_device_count()
    programs = runner.cost(s.cells, devices)
    index = {cell_id: i for i, p in enumerate(programs) for cell_id in p["cells"]}
    rows = [{"cell_id": c.cell_id, "experiment": c.experiment, "label": c.label, "seeds": c.config["seeds"],
             "steps": c.config["steps"], "program": index[c.cell_id]} for c in s.cells]
    return {"suite": s, "cells": rows, "programs": programs, "run_steps": sum(p["run_steps"] for p in programs),
            "available": build.available_memory(), "devices": devices}


# ---- a run -------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Prepared:
    """A run checked and ready to train: the suite, its output directory, this process's cells."""

    suite: object
    out: Path
    shard: tuple
    cells: list
    cache: str | None
    process: int
    processes: int


@_one_line
def prepare(path=DEFAULT_SUITE, out=None, *, seeds=None, steps=None, overrides=None, shard="0/1", force=False,
            compile_cache=True) -> Prepared:
    """Everything `bench run` checks before it trains, in its order: the flags and the suite file (before jax is
    imported), the overrides, the backend and a multi-process launch, the shard, each compiled group's memory,
    and the output directory (opened under its lock: another suite's or stale records are refused unless
    `force`). Raises UsageError with one line; nothing is written.
    `overrides` are --set keys (dotted), as given."""
    from gradbench.spec.settings import read_toml

    if out is not None and not str(out).strip():
        raise UsageError(f"--out {str(out)!r}: an empty path; allowed: a directory (default: runs/SUITE_NAME)")
    index, count = parse_shard(shard)
    read_toml(path)

    from gradbench.engine import cluster, compile_cache as cache_lib, runner
    from gradbench.records import store
    from gradbench.records.env import provenance
    from gradbench.spec import suite as suite_lib

    cache = cache_lib.enable(compile_cache)
    # (0, 1) unless launched by SLURM or with JAX_COORDINATOR_ADDRESS; before anything touches a JAX backend.
    process, processes = start_cluster()
    start_backend()
    relative = os.path.relpath(path)  # as the user would type it again (reports quote it)
    s = suite_lib.load(path if relative.startswith("..") else relative, seeds=seeds, steps=steps,
                       overrides=overrides)
    groups = runner.group_count(s.cells)  # shards deal whole compiled groups
    if index >= groups:
        raise UsageError(f"--shard {shard}: the suite's {len(s.cells)} cells make {groups} compiled groups, so "
                         f"shard {index} of {count} has none; use at most {groups} shards")
    out = Path(out) if out else default_out(s)
    levels = cluster.compose((index, count), (process, processes))
    chosen = runner.shard_cells(s.cells, levels)
    check_memory(s, chosen)  # before anything is compiled or written
    # Opened here first so that a refused directory is one line, before any progress display starts. Records
    # made under other code or library versions are never reused (refused, or with force retrained).
    store.ResultsStore.open(out, runner.suite_record(s, out), [c.cell_id for c in s.cells], force,
                            provenance=provenance())
    return Prepared(s, out, levels, chosen, cache, process, processes)


def train(prepared: Prepared, progress=None, stop=None) -> list[dict]:
    """Trains the prepared cells not yet in its directory (gradbench.engine.runner.run_suite); returns this process's
    records of the suite, in file order. Raises runner.OutOfMemory when a group did not fit (the others kept)."""
    from gradbench.engine import runner

    return runner.run_suite(prepared.suite, prepared.out, prepared.shard, progress=progress, stop=stop)


def run(path=DEFAULT_SUITE, out=None, *, force=False, report=True, progress=False, compile_cache=True, frame=True,
        **keywords):
    """Runs a suite into `out` as `gradbench run PATH --out OUT` does and returns its results.

    Args:
      path: a suite file (default: the claims suite).
      out: the results directory (default: runs/SUITE_NAME); a rerun resumes, training only missing cells.
      force: reuse a directory holding another suite's records or stale ones (--force).
      report: write OUT/REPORT.md and its plots at the end (not under a multi-process launch).
      progress: show the progress bars on stderr.
      compile_cache: use the persistent compilation cache (--no-compile-cache: False).
      frame: return a pandas DataFrame (one row per cell x seed, as `load`); False: the records (no pandas).
      **keywords: overrides, as the module's docstring says (`seeds=4`, `model__depth=8`, `optimizer__lr=[...]`).

    Returns the results of this suite's cells (of this process's part under SLURM). Ctrl-C stops between
    compiled calls and keeps every finished group (KeyboardInterrupt); a group that ran out of memory raises
    gradbench.engine.runner.OutOfMemory after every other group has trained.
    """
    if frame:
        _pandas()  # before training: a missing extra is said first
    prepared = prepare(path, out, overrides=overrides(keywords), force=force, compile_cache=compile_cache)
    shown = None
    if progress:
        from rich.console import Console

        from gradbench.reports import console

        shown = console.GroupProgress(Console(stderr=True))
    import contextlib

    with shown if shown is not None else contextlib.nullcontext():
        recs = train(prepared, progress=shown)
    if report and prepared.processes == 1:
        from gradbench.reports import report as report_lib

        report_lib.write(prepared.out)
    return to_frame(recs) if frame else recs


# ---- the checks a run makes first (shared with the command line) -------------------------------------------------

def parse_shard(text: str) -> tuple[int, int]:
    """--shard i/n -> (i, n); UsageError otherwise."""
    try:
        index, count = (int(p) for p in str(text).split("/"))
    except ValueError:
        raise UsageError(f"--shard: expected i/n such as 0/4, got {text!r}") from None
    if not 0 <= index < count:
        raise UsageError(f"--shard: need 0 <= i < n, got {text!r}")
    return index, count


def default_out(s) -> Path:
    """runs/NAME, refusing a name that is not one plain directory name."""
    name = s.name
    if not name or len(name) > MAX_NAME or len(name.encode()) > 255 or any(c in name for c in "/\\\0") \
            or ".." in name or name == ".":
        raise UsageError(f"{s.path}: suite.name: {name[:MAX_NAME]!r} cannot name the output directory "
                         f"runs/NAME (1 to {MAX_NAME} characters without '/', '\\', '..' or NUL); rename the "
                         "suite or give --out DIR")
    return Path("runs") / name


def gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**27 else f"{n / 2**20:.3g} MiB"


def check_memory(s, chosen) -> None:
    """Refuses (one line) a compiled group whose memory estimate exceeds the device's available memory.

    The estimate (gradbench.spec.build.memory_estimate) is traced, not compiled; GRADBENCH_MEMORY_CHECK=0 skips it.
    """
    if os.environ.get("GRADBENCH_MEMORY_CHECK", "1") == "0":
        return
    import jax

    from gradbench.engine import runner
    from gradbench.spec import build

    available, where = build.available_memory()
    devices = jax.local_device_count()
    for group in runner.group_cells(chosen):
        size = group.memory(devices)
        if size["total"] <= available:
            continue
        keys = "task.n_train" if size["data"] > size["total"] / 2 else \
            ("task.batch_size, seeds" if size["activations"] > size["params"] + size["optimizer"]
             else "model (width, depth), seeds")
        raise UsageError(f"{s.path}: {keys}: experiment {group.cells[0].experiment!r} needs about "
                         f"{gib(size['total'])} for one compiled group of {len(group.runs)} runs "
                         f"({gib(size['per_run'])} a run: parameters {gib(size['params'])}, optimiser state "
                         f"{gib(size['optimizer'])}, activations {gib(size['activations'])}; data "
                         f"{gib(size['data'])}), more than the "
                         f"{gib(available)} of {where}; allowed: a group that fits (fewer seeds or grid points, a "
                         "smaller model or batch)")


def start_cluster() -> tuple[int, int]:
    """(process, processes) of a multi-process launch (gradbench.engine.cluster), one line if it cannot start."""
    from gradbench.engine import cluster

    try:
        return cluster.initialize()
    except (ValueError, RuntimeError) as e:
        described = " ".join(f"{k}={os.environ[k]}" for k in (
            "SLURM_JOB_ID", "SLURM_NTASKS", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
            if os.environ.get(k))
        raise UsageError(f"{described}: a multi-process launch, but jax.distributed could not start "
                         f"({first_line(e)}); allowed: a launch that names its coordinator (srun under SLURM, or "
                         "JAX_COORDINATOR_ADDRESS with JAX_NUM_PROCESSES and JAX_PROCESS_ID), or one process (unset "
                         "SLURM_NTASKS)") from None


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def start_backend() -> None:
    """Starts jax's backend; one line naming JAX_PLATFORMS if none can start (e.g. cuda on a machine without a GPU)."""
    import jax

    try:
        jax.devices()
    except Exception as e:  # noqa: BLE001 (jax raises RuntimeError, or an AssertionError for a missing plugin)
        platforms = os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms or ""
        raise UsageError(f"JAX_PLATFORMS={platforms!r}: no jax backend could start here "
                         f"({first_line(e) if str(e).strip() else 'no such platform or no device for it'}); allowed: "
                         "a platform this machine has a device and jax plugin for (cpu always), or JAX_PLATFORMS unset "
                         "to let jax choose") from None
