"""Rerun recorded cells from their stored config and say whether the numbers came back (`bench reproduce`).

Each record holds its canonical config (which hashes to its cell_id) and its
plan, so a cell is rebuilt as it was and trained the normal way
(gradbench.engine.runner). Per metric the rerun is `identical` (every per-seed value
equal), `within noise` (not equal, but the tests of bench compare find no
difference) or `different`. Throughput is reported, not judged: `within
noise`, `slower` or `faster` against the threshold, or `not comparable` when
the rerun's compiled program holds another number of runs (one cell of a
group). Where the environment differs
(versions, commit, code hash, machine), the report says which keys.
"""
from __future__ import annotations

import os
from pathlib import Path

from gradbench.analysis import compare
from gradbench.engine import runner
from gradbench.records.store import SUITE_FILE, read_suite
from gradbench.spec import plugins
from gradbench.spec.suite import Cell, Suite, cell_id

IDENTICAL, NOISE, DIFFERENT = "identical", "within noise", "different"
SLOWER, FASTER, NOT_COMPARABLE = "slower", "faster", "not comparable"  # throughput only
MEASURED = {"timestamp", "matmul_flops_per_s"}  # env keys that differ on every run
HASHES = {"git_commit", "code_sha256"}  # shown by their first 12 characters
PER_SEED = {"divergence_rate": "diverged", "failure_rate": "trained", "steps_to_converge": "steps_to_converge",
            "final_heldout_loss": "final_heldout_loss", "critical_lr": "critical_lr"}


def cells(records: list[dict], wanted: list[str] | None = None) -> list[Cell]:
    """The recorded cells (all, or those whose cell_id is in `wanted`); ValueError on an unknown id or a
    config that no longer hashes to its cell_id."""
    by_id = {r["cell_id"]: r for r in records}
    for cid in wanted or []:
        if cid not in by_id:
            raise ValueError(f"--cell {cid}: no such cell_id among the {len(by_id)} records "
                             f"(e.g. {', '.join(list(by_id)[:3])})")
    chosen = [by_id[c] for c in dict.fromkeys(wanted)] if wanted else records
    out = []
    for r in chosen:
        if cell_id(r["config"]) != r["cell_id"]:
            raise ValueError(f"cell {r['cell_id']}: its config does not hash to its cell_id (edited record?)")
        out.append(Cell(r["cell_id"], r["suite"], r["experiment"], r["label"], r["config"], r["plan"]))
    return out


def suite_info(records: list[dict], results_path: Path) -> dict:
    """The suite path and run settings the cells need: suite.json beside the results, else the records'."""
    directory = results_path if results_path.is_dir() else results_path.parent
    if (directory / SUITE_FILE).exists():
        info = read_suite(directory)  # validated: StoreError (one line) if corrupt
        where = info.get("suite_from_out")
        path = os.path.relpath(directory / where) if where and not os.path.isabs(where) else where or info["path"]
        # The suite's plugins, imported again (a file plugin: relative to the suite file); SuiteError if one fails.
        loaded = plugins.load_recorded(info.get("plugins"), path, directory / SUITE_FILE)
        return {"path": path, "settings": info["settings"], "plugins": loaded}
    r = records[0]
    # Without suite.json: the plugins the cells name, imported as modules (a file plugin needs its suite.json).
    names = sorted({name for rec in records for name in rec["config"].get("plugins", {})})
    return {"path": f"(cells of {results_path})", "plugins": plugins.load(names, directory, results_path),
            "settings": {"chunk_steps": r["throughput"]["chunk_steps"], "trace_points": len(r["trace"]["step"])}}


def rerun(cells_: list[Cell], info: dict, out_dir, progress=None) -> list[dict]:
    """Trains the cells again into `out_dir` (gradbench.engine.runner, as `bench run` does) and returns their new records."""
    suite = Suite(path=info["path"], name=cells_[0].suite, settings=info["settings"], experiments=[],
                  cells=cells_, claims=[], plugins=tuple(info.get("plugins", ())))
    return runner.run_suite(suite, out_dir, progress=progress)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def env_differences(old: dict, new: dict) -> list[str]:
    """`key: old -> new` for every environment key that differs (measurements and timestamps left out)."""
    a, b = _flat(old), _flat(new)
    show = {k: (lambda v: repr(v[:12] if isinstance(v, str) else v)) if k in HASHES else repr for k in set(a) | set(b)}
    return [f"{k}: {show[k](a.get(k))} -> {show[k](b.get(k))}" for k in sorted(show)
            if k.split(".")[0] not in MEASURED and a.get(k) != b.get(k)]


def judge(recorded: list[dict], rerun_records: list[dict], throughput_threshold: float) -> list[dict]:
    """Per cell and metric: identical, within noise or different (with bench compare's tests)."""
    result = compare.compare(recorded, rerun_records, throughput_threshold=throughput_threshold)
    old_by, new_by = {r["cell_id"]: r for r in recorded}, {r["cell_id"]: r for r in rerun_records}
    rows = []
    for row in result["rows"]:
        old, new = old_by[row["cell_id"]], new_by[row["cell_id"]]
        key = PER_SEED.get(row["metric"])
        same = key is not None and old["per_seed"].get(key) == new["per_seed"].get(key)
        if row["metric"] == "steps_per_s":  # reported, not judged: speed depends on the machine's load
            verdict = {compare.WORSE: SLOWER, compare.BETTER: FASTER, compare.UNTESTED: NOT_COMPARABLE}.get(
                row["verdict"], NOISE)
        else:
            verdict = (IDENTICAL if same else DIFFERENT if row["verdict"] in (compare.WORSE, compare.BETTER)
                       else NOISE)
        rows.append({**row, "reproduced": verdict,
                     "env_differences": env_differences(old["env"], new["env"])})
    order = {DIFFERENT: 0, NOISE: 1, SLOWER: 2, FASTER: 2, NOT_COMPARABLE: 2, IDENTICAL: 3}
    rows.sort(key=lambda r: (order[r["reproduced"]], r["experiment"], r["label"]))
    return rows


def not_reproduced(rows: list[dict]) -> list[str]:
    """`experiment: cell (metric)` for every metric that came back different (throughput is not judged)."""
    return sorted({f"{r['experiment']}: {r['label']} ({r['metric']})" for r in rows if r["reproduced"] == DIFFERENT})


def table(rows: list[dict], title: str):
    """A rich table of the rows, different first."""
    from rich.table import Table

    tbl = Table(title=title)
    for column in ("reproduced", "experiment", "cell", "metric", "recorded", "rerun", "effect", "test"):
        tbl.add_column(column)
    style = {DIFFERENT: "bold red", IDENTICAL: "green"}
    for row in rows:
        tbl.add_row(row["reproduced"], row["experiment"], row["label"], row["metric"], row["baseline"],
                    row["current"], row["effect"], row["test"], style=style.get(row["reproduced"]))
    return tbl


def summary_lines(rows: list[dict]) -> list[str]:
    """The environment differences (once per distinct set) and the counts with the verdict."""
    lines = ["environment differs: " + ("; ".join(d) if d else "no (same versions, commit, code and machine)")
             for d in dict.fromkeys(tuple(r["env_differences"]) for r in rows)]
    judged = [r["reproduced"] for r in rows if r["metric"] != "steps_per_s"]
    counts = {v: judged.count(v) for v in (IDENTICAL, NOISE, DIFFERENT)}
    failed = not_reproduced(rows)
    speed = sorted({r["reproduced"] for r in rows if r["metric"] == "steps_per_s"})
    lines.append(", ".join(f"{n} {v}" for v, n in counts.items()) + f" (cell-metrics); throughput {'/'.join(speed)}. "
                 + (f"NOT REPRODUCED: {'; '.join(failed)}." if failed else "Reproduced."))
    return lines
