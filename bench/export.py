"""Results records -> the JSON that CI benchmark tools read (`python -m bench export`).

pytest-benchmark: one benchmark per cell whose time is seconds per training
step (1 / steps_per_s; the record holds one throughput measurement per
group, so every statistic is that one value and stddev is 0), with the
cell's divergence rate and steps-to-converge in `extra_info`;
`pytest-benchmark compare FILE...` loads it. github-action-benchmark: two
arrays of {name, unit, value, range, extra}, one for the
`customBiggerIsBetter` tool (steps/s) and one for `customSmallerIsBetter`
(divergence rate, failure rate where recorded, median steps to converge).
"""
from __future__ import annotations

import platform
from pathlib import Path

PYTEST_BENCHMARK_LAYOUT = "5.1.0"  # the pytest-benchmark release whose saved-run layout this writes


def _name(record: dict) -> str:
    return f"{record['experiment']}: {record['label']}"


def _extra(record: dict) -> dict:
    n = len(record["per_seed"]["diverged"])
    return {"cell_id": record["cell_id"], "suite": record["suite"], "seeds": n,
            "divergence_rate": record["divergence_rate"], "divergence_rate_ci": record["divergence_rate_ci"],
            "converged": record["converged"], "median_steps_to_converge": record["median_steps_to_converge"],
            "examples_per_s": record["throughput"].get("examples_per_s"),
            "flops_per_step": record["throughput"].get("flops_per_step")}


def _stats(seconds: float) -> dict:
    """pytest-benchmark's statistics of one measurement."""
    return {"min": seconds, "max": seconds, "mean": seconds, "stddev": 0.0, "rounds": 1, "median": seconds,
            "iqr": 0.0, "q1": seconds, "q3": seconds, "iqr_outliers": 0, "stddev_outliers": 0, "outliers": "0;0",
            "ld15iqr": seconds, "hd15iqr": seconds, "ops": 1.0 / seconds, "total": seconds, "iterations": 1}


def pytest_benchmark(records: list[dict]) -> dict:
    """A pytest-benchmark saved run: one benchmark per cell, time = seconds per training step."""
    env = records[0]["env"]
    benchmarks = [{
        "group": r["experiment"], "name": _name(r), "fullname": f"{r['suite']}::{r['experiment']}::{r['label']}",
        "params": {"cell_id": r["cell_id"]}, "param": r["cell_id"], "extra_info": _extra(r),
        "options": {"timer": "perf_counter", "unit": "seconds per training step"},
        "stats": _stats(1.0 / r["throughput"]["steps_per_s"]),
    } for r in records]
    return {
        "machine_info": {"node": platform.node(), "processor": env.get("cpu", ""), "machine": platform.machine(),
                         "python_implementation": platform.python_implementation(), "python_version": env["python"],
                         "system": env["platform"], "cpu": {"brand_raw": env.get("cpu"), "count": env.get("cpu_count")},
                         "backend": env["backend"], "device_kind": env["device_kind"], "versions": env["versions"]},
        "commit_info": {"id": env["git_commit"], "dirty": env["git_dirty"], "project": "gradbench",
                        "package_version": env.get("package_version"), "code_sha256": env.get("code_sha256")},
        "benchmarks": benchmarks,
        "datetime": max(r["env"]["timestamp"] for r in records),
        "version": PYTEST_BENCHMARK_LAYOUT,
    }


def _entry(name: str, unit: str, value: float, range_: str | None, extra: str) -> dict:
    entry = {"name": name, "unit": unit, "value": value}
    if range_:
        entry["range"] = range_
    entry["extra"] = extra
    return entry


def github_action_benchmark(records: list[dict]) -> dict[str, list[dict]]:
    """github-action-benchmark inputs: {"customBiggerIsBetter": [...], "customSmallerIsBetter": [...]}."""
    bigger, smaller = [], []
    for r in records:
        env, n = r["env"], len(r["per_seed"]["diverged"])
        where = f"cell {r['cell_id']}; {n} seeds; {env['backend']} {env['device_kind']}; commit " \
                f"{(env['git_commit'] or 'unknown')[:10]}"
        bigger.append(_entry(f"{_name(r)} steps/s", "steps/s", r["throughput"]["steps_per_s"], None, where))
        low, high = r["divergence_rate_ci"]
        smaller.append(_entry(f"{_name(r)} divergence rate", "fraction of seeds", r["divergence_rate"],
                              f"95% CI {low:.2f}-{high:.2f}", where))
        trained = r["per_seed"].get("trained")
        if trained is not None:
            smaller.append(_entry(f"{_name(r)} failure rate", "fraction of seeds",
                                  sum(not t for t in trained) / len(trained), None, where))
        median = r["median_steps_to_converge"]
        if median is None:  # fewer than half the seeds converged: the budget is a lower bound
            smaller.append(_entry(f"{_name(r)} steps to converge", "steps", float(r["config"]["steps"]), None,
                                  f"{where}; censored: fewer than half the seeds converged within the budget"))
        else:
            low, high = r["steps_to_converge_ci"]
            smaller.append(_entry(f"{_name(r)} steps to converge", "steps", median,
                                  f"95% CI {low:g}-{'never' if high is None else f'{high:g}'}"
                                  if low is not None else None, where))
    return {"customBiggerIsBetter": bigger, "customSmallerIsBetter": smaller}


FORMATS = ("pytest-benchmark", "github-action-benchmark")
GITHUB_FILES = {"bigger": "customBiggerIsBetter", "smaller": "customSmallerIsBetter"}  # file suffix -> tool


def outputs(records: list[dict], fmt: str, output: Path) -> dict[Path, object]:
    """The files to write for a format: pytest-benchmark to `output`, github-action-benchmark to
    OUTPUT-bigger.json (customBiggerIsBetter) and OUTPUT-smaller.json (customSmallerIsBetter)."""
    if fmt == "pytest-benchmark":
        return {output: pytest_benchmark(records)}
    arrays = github_action_benchmark(records)
    return {output.with_name(f"{output.stem}-{suffix}{output.suffix}"): arrays[tool]
            for suffix, tool in GITHUB_FILES.items()}
