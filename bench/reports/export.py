"""Results records -> what other tools read (`gradbench export`).

Throughput is a property of a compiled program, not of a cell: the cells of
one program (one `bench run` group, whose records carry one throughput
measurement; it may span experiments) are one series, named by the
experiment and its cells' labels (`EXPERIMENT: LABEL; LABEL; ...`, with ` | `
between experiments; id: a hash of its cell ids). Its value is
**normalised** the way compare judges it: steps/s divided by the run's own
yardstick (env.scan_flops_per_s, else env.matmul_flops_per_s) in GFLOP/s, so
"program steps per yardstick GFLOP", with the raw steps/s beside it; a
runner of other speed moves both the program and the yardstick, not the
normalised figure.

pytest-benchmark: one saved run, one benchmark per program whose time is the
normalised seconds per program step (seconds x yardstick GFLOP/s: yardstick
GFLOP per step), one round per timed chunk, so rounds, stddev and IQR are the
chunks' spread; `stats.ops` is the normalised steps/s; `extra_info` holds the
raw steps/s, the CPU-time rate, the yardstick and the cells; `machine_info`
and `commit_info` are the record's env. github-action-benchmark: two arrays
of {name, unit, value, range, extra}: `customBiggerIsBetter` (per program,
normalised steps/s; raw steps/s in `extra`) and `customSmallerIsBetter` (per
cell: divergence rate, failure rate where recorded, median steps to
converge), the smaller-is-better values with a +1 offset (1 + rate, 1 +
steps) so that none is 0 and the action's current/previous ratio is always
defined. tidy: one row per cell x seed, the config flattened into columns,
the program's throughput (raw and normalised) and the environment's versions,
as CSV (`--output X.csv`; and X.parquet beside it where pyarrow is installed)
or Parquet alone (`--output X.parquet`). tensorboard: per cell, its median
loss and gradient-norm traces and per-seed scalars (tensorboardX, the
`tensorboard` extra). Records are checked as they are read (gradbench.records.
validate): a throughput that is null or not above 0 is refused, never exported. No value is
ever NaN or infinite in a JSON file (strict parsers reject the tokens): such
values are null, or the entry is left out.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import warnings
from pathlib import Path

import numpy as np

PYTEST_BENCHMARK_LAYOUT = "5.1.0"  # the pytest-benchmark release whose saved-run layout this writes
FORMATS = ("pytest-benchmark", "github-action-benchmark", "tidy", "tensorboard")


class MissingExtra(Exception):
    """An optional dependency of a format is not installed (exit 2, one line)."""


def _finite(x):
    """x as a float when it is a finite number, else None."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def strict(obj):
    """obj with every NaN or infinite float replaced by None (so `json.dumps(..., allow_nan=False)` succeeds)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def _name(record: dict) -> str:
    return f"{record['experiment']}: {record['label']}"


def program_id(records: list[dict]) -> str:
    """A program's stable id: sha256 of its cells' ids (sorted), first 16 hex digits."""
    return hashlib.sha256(" ".join(sorted(r["cell_id"] for r in records)).encode()).hexdigest()[:16]


def programs(records: list[dict]) -> list[list[dict]]:
    """The records grouped by compiled program, in file order: cells of one suite whose records carry one
    throughput measurement (the engine times a program once and writes it to each of its cells, which may
    belong to several experiments)."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        key = json.dumps([r["suite"], r["throughput"]], sort_keys=True)
        groups.setdefault(key, []).append(r)
    return list(groups.values())


def program_name(records: list[dict]) -> str:
    """`EXPERIMENT: LABEL; LABEL; ...` (experiments in order, ` | ` between them where a program spans several)."""
    by_experiment: dict[str, list[str]] = {}
    for r in records:
        by_experiment.setdefault(r["experiment"], []).append(r["label"])
    return " | ".join(f"{e}: " + "; ".join(labels) for e, labels in by_experiment.items())


YARDSTICKS = ("scan", "matmul")  # env.{name}_flops_per_s, in the order compare prefers them


def yardstick(record: dict) -> tuple[str, float] | None:
    """(name, GFLOP/s) of the run's yardstick that normalises its throughput, or None when it has none."""
    for name in YARDSTICKS:
        value = _finite(record["env"].get(f"{name}_flops_per_s"))
        if value and value > 0:
            return name, value / 1e9
    return None


def normalised(record: dict, steps_per_s: float) -> float | None:
    """Steps/s over the run's yardstick GFLOP/s (program steps per yardstick GFLOP); None without a yardstick."""
    stick = yardstick(record)
    return None if stick is None else steps_per_s / stick[1]


NORMALISED_UNIT = "steps per yardstick GFLOP (steps/s / the run's yardstick GFLOP/s)"


def _rates(record: dict) -> list[float]:
    """The finite per-timed-chunk steps/s (the median alone in records older than chunk_steps_per_s)."""
    t = record["throughput"]
    return [v for v in map(_finite, t.get("chunk_steps_per_s") or [t.get("steps_per_s")]) if v and v > 0]


def _cell_summary(record: dict) -> dict:
    return {"cell_id": record["cell_id"], "label": record["label"], "seeds": len(record["per_seed"]["diverged"]),
            "divergence_rate": record["divergence_rate"], "divergence_rate_ci": record["divergence_rate_ci"],
            "converged": record["converged"], "median_steps_to_converge": record["median_steps_to_converge"]}


def _extra(cells: list[dict]) -> dict:
    """A program's raw throughput, its yardstick and its cells (pytest-benchmark's extra_info)."""
    r, t = cells[0], cells[0]["throughput"]
    stick = yardstick(r)
    return {"program_id": program_id(cells), "suite": r["suite"], "experiment": r["experiment"],
            "normalised_steps_per_s": normalised(r, t["steps_per_s"]), "normalised_unit": NORMALISED_UNIT,
            "steps_per_s": t["steps_per_s"], "cpu_steps_per_s": t.get("cpu_steps_per_s"),
            "yardstick": stick and f"{stick[0]} ({stick[1]:.4g} GFLOP/s)",
            "run_steps_per_s": t.get("run_steps_per_s"), "runs_per_program": t.get("runs_per_program"),
            "examples_per_s": t.get("examples_per_s"), "flops_per_step": t.get("flops_per_step"),
            "compile_s": t.get("compile_s"), "cells": [_cell_summary(c) for c in cells]}


def _stats(seconds: np.ndarray, ops: float) -> dict:
    """pytest-benchmark's statistics of the rounds `seconds` (one per timed chunk); `ops` the cell's steps/s."""
    q1, median, q3 = (float(q) for q in np.percentile(seconds, [25, 50, 75]))
    iqr, mean = q3 - q1, float(seconds.mean())
    stddev = float(seconds.std(ddof=1)) if len(seconds) > 1 else 0.0
    inside = seconds[(seconds >= q1 - 1.5 * iqr) & (seconds <= q3 + 1.5 * iqr)]
    iqr_outliers = len(seconds) - len(inside)
    stddev_outliers = int(((seconds < mean - stddev) | (seconds > mean + stddev)).sum())
    return {"min": float(seconds.min()), "max": float(seconds.max()), "mean": mean, "stddev": stddev,
            "rounds": len(seconds), "median": median, "iqr": iqr, "q1": q1, "q3": q3,
            "iqr_outliers": iqr_outliers, "stddev_outliers": stddev_outliers,
            "outliers": f"{stddev_outliers};{iqr_outliers}", "ld15iqr": float(inside.min()),
            "hd15iqr": float(inside.max()), "ops": ops, "total": float(seconds.sum()), "iterations": 1}


def machine_info(env: dict) -> dict:
    """pytest-benchmark's machine_info from a record's env (the machine that made the numbers)."""
    return {"node": "", "processor": env.get("cpu") or "", "machine": env.get("platform", ""),
            "python_implementation": "CPython", "python_version": env.get("python"),
            "system": env.get("platform", ""), "cpu": {"brand_raw": env.get("cpu"), "count": env.get("cpu_count")},
            "backend": env.get("backend"), "device_kind": env.get("device_kind"),
            "device_count": env.get("device_count"), "matmul_flops_per_s": env.get("matmul_flops_per_s"),
            "scan_flops_per_s": env.get("scan_flops_per_s"),
            "versions": env.get("versions")}


def pytest_benchmark(records: list[dict]) -> dict:
    """A pytest-benchmark saved run: one benchmark per compiled program, time = normalised seconds per step
    (seconds x the run's yardstick GFLOP/s; raw seconds where a record has no yardstick, said in its unit)."""
    env = records[0]["env"]
    benchmarks = []
    for cells in programs(records):
        r = cells[0]
        rates, ops = np.asarray(_rates(r)), r["throughput"]["steps_per_s"]
        stick = yardstick(r)
        scale = stick[1] if stick else 1.0
        unit = ("seconds x yardstick GFLOP/s per program step (yardstick GFLOP per step; one round per timed chunk)"
                if stick else "seconds per program step (raw: the record has no yardstick; one round per timed chunk)")
        benchmarks.append({
            "group": r["experiment"], "name": program_name(cells),
            "fullname": f"{r['suite']}::{r['experiment']}::{program_name(cells)}",
            "params": {"program_id": program_id(cells)}, "param": program_id(cells), "extra_info": _extra(cells),
            "options": {"timer": "perf_counter", "unit": unit},
            "stats": _stats(scale / rates, ops / scale)})
    return strict({
        "machine_info": machine_info(env),
        "commit_info": {"id": env.get("git_commit"), "dirty": env.get("git_dirty"), "project": "gradbench",
                        "package_version": env.get("package_version"), "code_sha256": env.get("code_sha256")},
        "benchmarks": benchmarks,
        "datetime": max(r["env"]["timestamp"] for r in records),
        "version": PYTEST_BENCHMARK_LAYOUT,
    })


def _entry(name: str, unit: str, value, range_: str | None, extra: str) -> dict | None:
    value = _finite(value)
    if value is None:
        return None
    entry = {"name": name, "unit": unit, "value": value}
    if range_:
        entry["range"] = range_
    entry["extra"] = extra
    return entry


def github_action_benchmark(records: list[dict]) -> dict[str, list[dict]]:
    """github-action-benchmark inputs: {"customBiggerIsBetter": [...], "customSmallerIsBetter": [...]}.

    Bigger-is-better: one entry per compiled program, its normalised steps/s (the raw steps/s in `extra`).
    Smaller-is-better, per cell: 1 + the rate or 1 + the steps (never 0: the action alerts on the ratio
    current / previous); an entry whose value is not finite is left out.
    """
    bigger, smaller = [], []
    for cells in programs(records):
        r, t = cells[0], cells[0]["throughput"]
        env, rates, stick = r["env"], _rates(r), yardstick(r)
        machine = f"{env.get('backend')} {env.get('device_kind')}; commit {(env.get('git_commit') or 'unknown')[:10]}"
        raw = (f"raw {t['steps_per_s']:.6g} steps/s (timed chunks {min(rates):.4g}-{max(rates):.4g})"
               + (f", {t['cpu_steps_per_s']:.6g} per CPU second" if _finite(t.get("cpu_steps_per_s")) else ""))
        where = f"program {program_id(cells)}; {len(cells)} cells, {t.get('runs_per_program')} runs; {machine}"
        if stick:
            low, high = (normalised(r, x) for x in (min(rates), max(rates)))
            bigger.append(_entry(f"{program_name(cells)} normalised steps/s", NORMALISED_UNIT,
                                 normalised(r, t["steps_per_s"]), f"timed chunks {low:.4g}-{high:.4g}",
                                 f"{raw}; yardstick {stick[0]} {stick[1]:.4g} GFLOP/s; {where}"))
        else:
            bigger.append(_entry(f"{program_name(cells)} steps/s (raw, no yardstick)", "steps/s", t["steps_per_s"],
                                 f"timed chunks {min(rates):.4g}-{max(rates):.4g}", f"{raw}; {where}"))
    for r in records:
        env, n = r["env"], len(r["per_seed"]["diverged"])
        where = f"cell {r['cell_id']}; {n} seeds; {env.get('backend')} {env.get('device_kind')}; commit " \
                f"{(env.get('git_commit') or 'unknown')[:10]}"
        low, high = r["divergence_rate_ci"]
        smaller.append(_entry(f"{_name(r)} divergence rate", "1 + fraction of seeds", 1 + r["divergence_rate"],
                              f"95% CI {1 + low:.2f}-{1 + high:.2f}", where))
        trained = r["per_seed"].get("trained")
        if trained is not None:
            smaller.append(_entry(f"{_name(r)} failure rate", "1 + fraction of seeds",
                                  1 + sum(not x for x in trained) / len(trained), None, where))
        median = r["median_steps_to_converge"]
        if median is None:  # fewer than half the seeds converged: the budget is a lower bound
            smaller.append(_entry(f"{_name(r)} steps to converge", "1 + steps", 1.0 + r["config"]["steps"], None,
                                  f"{where}; censored: fewer than half the seeds converged within the budget"))
        else:
            low, high = r["steps_to_converge_ci"]
            smaller.append(_entry(f"{_name(r)} steps to converge", "1 + steps", 1.0 + median,
                                  f"95% CI {1 + low:g}-{'never' if high is None else f'{1 + high:g}'}"
                                  if low is not None else None, where))
    return {"customBiggerIsBetter": [e for e in bigger if e], "customSmallerIsBetter": [e for e in smaller if e]}


GITHUB_FILES = {"bigger": "customBiggerIsBetter", "smaller": "customSmallerIsBetter"}  # file suffix -> tool

# tidy: per-seed columns (record key in per_seed -> column)
PER_SEED = ("seed", "diverged", "divergence_step", "collapsed", "trained", "steps_to_converge", "loss_0",
            "final_train_loss", "final_heldout_loss", "final_validation_loss", "final_heldout_metric",
            "max_grad_norm")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else value
    return out


def _number(x):
    """A per-seed value for a table: float for the JSON-extended "inf"/"-inf", None kept."""
    return float(x) if isinstance(x, str) and x in ("inf", "-inf") else x


ENV_COLUMNS = ("python", "backend", "device_kind", "device_count", "cpu", "cpu_count", "xla_flags", "code_sha256",
               "git_commit", "git_dirty", "timestamp")  # env.* columns of the tidy table, after env.versions


def tidy_rows(records: list[dict]) -> list[dict]:
    """One row per cell x seed: the cell's identity and config flattened (task.*, model.*, optimizer.lr,
    mitigation.name and its parameters, ...), its program and the program's throughput (throughput.*: raw
    and normalised steps/s, the yardstick), the environment (env.jax, env.jaxlib, ... env.python,
    env.backend, env.cpu, env.code_sha256, ...), then the seed's outcomes and its end-to-end gradient ratio
    at each snapshot (e2e_ratio@FRACTION of the budget)."""
    rows = []
    program = {r["cell_id"]: cells for cells in programs(records) for r in cells}
    for r in records:
        cells, t, env = program[r["cell_id"]], r["throughput"], r["env"]
        stick = yardstick(r)
        cell = {"suite": r["suite"], "experiment": r["experiment"], "cell_id": r["cell_id"], "label": r["label"],
                **_flatten(r["config"]),
                "program": program_name(cells), "program_id": program_id(cells),
                "throughput.normalised_steps_per_s": normalised(r, t["steps_per_s"]),
                "throughput.steps_per_s": t["steps_per_s"], "throughput.cpu_steps_per_s": t.get("cpu_steps_per_s"),
                "throughput.yardstick": stick and stick[0], "throughput.yardstick_gflops": stick and stick[1],
                "throughput.runs_per_program": t.get("runs_per_program"), "throughput.compile_s": t.get("compile_s"),
                **{f"env.{k}": v for k, v in (env.get("versions") or {}).items()},
                **{f"env.{k}": env.get(k) for k in ENV_COLUMNS}}
        ps, ex = r["per_seed"], r.get("explosion", {})
        fractions = ex.get("fractions", [])
        e2e = ex.get("per_seed", {}).get("e2e_ratio", [])
        for i in range(len(ps["diverged"])):
            row = {**cell, **{k: ps[k][i] for k in PER_SEED if k in ps}}
            for k, fraction in enumerate(fractions):
                row[f"e2e_ratio@{fraction:g}"] = _number(e2e[i][k]) if i < len(e2e) else None
            rows.append(row)
    return rows


def tidy_csv(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def write_parquet(rows: list[dict], path: Path) -> bool:
    """Writes the rows as Parquet when pyarrow is installed; returns whether it did."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return False
    columns = list(dict.fromkeys(k for row in rows for k in row))
    data = {}
    for c in columns:
        values = [row.get(c) for row in rows]
        kinds = {type(v) for v in values if v is not None}
        if kinds <= {int, float} and float in kinds:
            values = [None if v is None else float(v) for v in values]
        elif len(kinds) > 1:
            values = [None if v is None else str(v) for v in values]
        data[c] = values
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")  # written whole, then renamed: never half a file at `path`
    try:
        pq.write_table(pa.table(data), tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def write_tensorboard(records: list[dict], directory: Path) -> list[Path]:
    """One event-file directory per cell (DIRECTORY/EXPERIMENT/CELL_ID): its median loss and gradient-norm
    traces over seeds (NaN where every seed diverged) and per-seed scalars (step = seed). MissingExtra when
    tensorboardX is not installed; an OSError names `directory` as given (never a path tensorboardX chose)."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise MissingExtra("--format tensorboard needs tensorboardX: pip install 'gradbench[tensorboard]'") from None
    written = []
    for r in records:
        logdir = directory / r["experiment"] / r["cell_id"]
        try:
            _write_cell(SummaryWriter(str(logdir)), r)
        except OSError as e:
            raise OSError(e.errno, e.strerror or str(e), str(directory)) from None
        written.append(logdir)
    return written


def _write_cell(writer, r: dict) -> None:
    """One cell's event file (see `write_tensorboard`)."""
    writer.add_text("cell", f"{_name(r)} ({r['suite']})", 0)
    steps = r["trace"]["step"]
    for key in ("loss", "grad_norm"):
        traces = np.array([[np.nan if v is None else v for v in seed] for seed in r["trace"][key]], float)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a step where every seed diverged: NaN, left out
            median = np.nanmedian(np.where(np.isfinite(traces), traces, np.nan), axis=0) if traces.size else []
        for step, value in zip(steps, median):
            if math.isfinite(value):
                writer.add_scalar(f"median/{key}", float(value), int(step))
    ps = r["per_seed"]
    for key in ("diverged", "steps_to_converge", "final_train_loss", "final_heldout_loss", "max_grad_norm"):
        for seed, value in zip(ps["seed"], ps.get(key, [])):
            value = _finite(value)
            if value is not None:
                writer.add_scalar(f"per_seed/{key}", value, int(seed))
    writer.add_scalar("cell/divergence_rate", r["divergence_rate"], 0)
    writer.add_scalar("cell/steps_per_s", r["throughput"]["steps_per_s"], 0)  # validated: a number > 0
    writer.close()


SUFFIXES = {"pytest-benchmark": (".json",), "github-action-benchmark": (".json",), "tidy": (".csv", ".parquet")}


def check_output(fmt: str, output: Path) -> None:
    """ValueError (one line) unless `output` ends in a suffix the format writes: a path is honoured as given,
    never written under another suffix."""
    allowed = SUFFIXES.get(fmt)
    if allowed and output.suffix.lower() not in allowed:
        raise ValueError(f"--output {output}: --format {fmt} writes {' or '.join(allowed)}; allowed: a path "
                         f"ending in {' or '.join(allowed)}")


def outputs(records: list[dict], fmt: str, output: Path) -> dict[Path, str]:
    """The JSON or CSV files to write for a format (path -> text): pytest-benchmark to `output`,
    github-action-benchmark to OUTPUT-bigger.json (customBiggerIsBetter) and OUTPUT-smaller.json
    (customSmallerIsBetter), tidy to OUTPUT.csv (nothing here for OUTPUT.parquet: `write_parquet`)."""
    check_output(fmt, output)
    if fmt == "tidy":
        return {output: tidy_csv(tidy_rows(records))} if output.suffix.lower() == ".csv" else {}
    dump = lambda data: json.dumps(strict(data), indent=1, allow_nan=False) + "\n"  # noqa: E731
    if fmt == "pytest-benchmark":
        return {output: dump(pytest_benchmark(records))}
    arrays = github_action_benchmark(records)
    return {output.with_name(f"{output.stem}-{suffix}{output.suffix}"): dump(arrays[tool])
            for suffix, tool in GITHUB_FILES.items()}
