"""Terminal presentation: progress per group of cells, the cell table and the verdict table (rich)."""
from __future__ import annotations

import time

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table



def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class GroupProgress:
    """Progress of a suite for the runner: begin(groups), group(label, steps, runs) -> on_chunk, group_done(records).

    On a terminal: a suite-level bar with the estimated time left above one bar per group. Otherwise (a CI
    log, a file): one plain line per finished group: cells, seeds diverged (and failed, where records say
    which seeds trained), steps/s, elapsed time and the estimated time left for the suite.
    """

    def __init__(self, console: Console):
        self.console = console
        self.live = console.is_terminal
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                                 console=console, transient=False)
        self.work: list[int] = []  # steps x runs of each group, in run order
        self.done_work, self.index, self.start, self.group_start = 0, 0, time.perf_counter(), 0.0
        self.suite_task = None

    def __enter__(self):
        if self.live:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc) if self.live else None

    def eta(self, partial: int = 0) -> float | None:
        """Seconds left for the suite, from the work (steps x runs) done so far; None before any is done."""
        done = self.done_work + partial
        if not done:
            return None
        return (time.perf_counter() - self.start) / done * max(sum(self.work) - done, 0)

    def begin(self, groups: list[tuple[str, int, int]]) -> None:
        """The suite's groups to run, as (label, steps, runs)."""
        self.work = [steps * runs for _, steps, runs in groups]
        self.start = time.perf_counter()
        if self.live and groups:
            self.suite_task = self.progress.add_task("suite", total=sum(self.work), count=f"groups 0/{len(groups)}",
                                                     status="ETA ?")

    def group(self, label: str, total: int, runs):
        """The on_chunk callback of the next group."""
        self.group_start = time.perf_counter()
        self.label = label
        if not self.live:
            return None
        task = self.progress.add_task(label if len(label) < 70 else label[:67] + "...", total=total,
                                      count=f"steps 0/{total}", status="compiling")
        start = {"t": None, "steps": 0}

        def on_chunk(done: int, diverged: np.ndarray, converged: np.ndarray):
            now = time.perf_counter()
            if start["t"] is None:  # the first chunk includes compilation
                start["t"], start["steps"] = now, done
                rate = "compiled"
            else:
                rate = f"{(done - start['steps']) / (now - start['t']):.0f} steps/s"
            finished = int(np.sum(diverged | converged))
            self.progress.update(task, completed=done, count=f"steps {done}/{total}",
                                 status=f"seeds done {finished}/{len(runs)} diverged {int(np.sum(diverged))} | {rate}")
            if self.suite_task is not None:
                self.progress.update(self.suite_task, completed=self.done_work + done * len(runs),
                                     status=f"ETA {_duration(self.eta(done * len(runs)))}")

        return on_chunk

    def group_done(self, records: list[dict]) -> None:
        """Called with the records of the group just finished."""
        self.done_work += self.work[self.index] if self.index < len(self.work) else 0
        self.index += 1
        n_groups = len(self.work)
        if self.live:
            if self.suite_task is not None:
                self.progress.update(self.suite_task, completed=self.done_work, count=f"groups {self.index}/{n_groups}",
                                     status=f"ETA {_duration(self.eta())}")
            return
        seeds = sum(len(r["per_seed"]["diverged"]) for r in records)
        diverged = sum(sum(r["per_seed"]["diverged"]) for r in records)
        trained = [t for r in records for t in r["per_seed"].get("trained") or []]
        failed = f", failed {sum(not t for t in trained)}" if trained else ""
        converged = sum(r["converged"] for r in records)
        elapsed = time.perf_counter() - self.group_start
        label = self.label if len(self.label) <= 120 else self.label[:117] + "..."
        self.console.print(
            f"[group {self.index}/{n_groups}] {label}: {len(records)} cells, {seeds} seeds, diverged {diverged}"
            f"{failed}, converged {converged}; {records[0]['throughput']['steps_per_s']:.0f} steps/s; "
            f"{elapsed:.1f} s; suite elapsed {_duration(time.perf_counter() - self.start)}, "
            f"ETA {_duration(self.eta())}", markup=False, highlight=False, soft_wrap=True)


def _fmt(x, digits=3):
    return "-" if x is None else f"{x:.{digits}g}"


TABLE_ROWS = 24  # rows of the table a run ends with (more cells: one row per arm; more arms: the first ones)
COLUMNS = ("experiment", "cell", "diverged", "failed", "failed 95% CI", "converged", "median steps",
           "held-out loss", "steps/s")  # failed: diverged or collapsed (did not train); converged: reached the target


def _tally(records: list[dict]) -> dict:
    """Seeds, and those diverged, failed (diverged or collapsed: did not train) and converged, over the records."""
    seeds = sum(len(r["per_seed"]["diverged"]) for r in records)
    failed = sum(round(r["failure_rate"] * len(r["per_seed"]["diverged"])) for r in records)
    return {"seeds": seeds, "diverged": sum(sum(map(bool, r["per_seed"]["diverged"])) for r in records),
            "failed": failed, "converged": sum(r["converged"] for r in records)}


def _row(experiment: str, name: str, records: list[dict]) -> list[str]:
    from gradbench.records.metrics import wilson_interval

    t = _tally(records)
    n = t["seeds"]
    low, high = (records[0]["failure_rate_ci"] if len(records) == 1 else wilson_interval(t["failed"], n))
    median = records[0]["median_steps_to_converge"] if len(records) == 1 else None
    heldout = [r["quality"]["final_heldout_loss"] for r in records if r["quality"]["final_heldout_loss"] is not None]
    speed = float(np.median([r["throughput"]["steps_per_s"] for r in records]))
    return [experiment, name, f"{t['diverged']}/{n}", f"{t['failed']}/{n}", f"[{low:.2f}, {high:.2f}]",
            f"{t['converged']}/{n}", _fmt(median), _fmt(float(np.median(heldout)) if heldout else None), f"{speed:.0f}"]


def _table(title: str, rows: list[list[str]], cell_column: str = "cell") -> Table:
    """The rows under COLUMNS (an arm's rows have its number of cells after its name); with one experiment, its
    name goes to the title instead of a column."""
    one = len({row[0] for row in rows}) == 1
    columns = list(COLUMNS)
    if cell_column != "cell":  # an arm: its cells' count; no median steps (the cells' budgets and rates differ)
        columns[1:2] = [cell_column, "cells"]
        columns.remove("median steps")
    table = Table(title=f"results{f' of {rows[0][0]}' if one and rows else ''}: {title}", show_lines=False)
    for column in columns[1:] if one else columns:
        table.add_column(column, justify="left" if column in ("experiment", "cell", cell_column) else "right")
    for row in rows:
        table.add_row(*(row[1:] if one else row))
    return table


def summary_table(records: list[dict]) -> Table:
    """One row per cell: seeds diverged, failed (diverged or collapsed) with the failure rate's 95% interval,
    converged (reached the target), median steps to the target, held-out loss (median over seeds), steps/s."""
    return _table("one row per cell (failed = diverged or collapsed: did not train)",
                  [_row(r["experiment"], r["label"], [r]) for r in records])


def arm(record: dict) -> str:
    """The record's arm: its mitigation with its parameters (the cell's label without its grid values)."""
    def label(m: dict) -> str:
        parts = ["+".join(label(t) for t in v) if isinstance(v, list) and v and all(isinstance(t, dict) for t in v)
                 else f"{k}={v}" for k, v in m.items() if k != "name" and v is not None]
        return m["name"] + (f"({','.join(parts)})" if parts else "")

    return label(record["config"]["mitigation"])


def results_table(records: list[dict], limit: int = TABLE_ROWS, more: str = "REPORT.md") -> tuple[Table, str | None]:
    """The table a run ends with, and a line saying what it left out (None: nothing).

    Up to `limit` cells: one row per cell (summary_table). More: one row per arm (experiment x mitigation with
    its parameters) with its number of cells, its seeds pooled over them (every grid value and replicate block;
    no median steps), the first `limit` arms, then the line "N more arms ..., see MORE".
    """
    if len(records) <= limit:
        return summary_table(records), None
    arms: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        arms.setdefault((r["experiment"], arm(r)), []).append(r)
    rows = [[*row[:2], str(len(rs)), *row[2:6], *row[7:]] for (experiment, name), rs in list(arms.items())[:limit]
            for row in [_row(experiment, name, rs)]]
    table = _table(f"{len(records)} cells, one row per arm, its seeds pooled over its cells (failed = "
                   "diverged or collapsed: did not train)", rows, cell_column="arm")
    left = len(arms) - len(rows)
    return table, (f"{left} more arm{'s' if left > 1 else ''} ({sum(len(rs) for rs in list(arms.values())[limit:])} "
                   f"cells), see {more}" if left else f"every cell: see {more}")


def programs_table(rows: list[dict], available: tuple[int, str] | None = None) -> Table:
    """`bench cells`: one row per compiled program (gradbench.engine.runner.cost): its experiment, cells, runs,
    steps, run-steps, model FLOPs and memory estimate."""
    table = Table(title="compiled programs (one per group of cells that differ only in traced values)")
    for column in ("program", "experiment", "cells", "runs", "steps", "run-steps", "model TFLOP", "memory"):
        table.add_column(column, justify="left" if column == "experiment" else "right")
    for i, row in enumerate(rows):
        flops = row["flops_per_run_step"] * row["run_steps"] / 1e12
        table.add_row(str(i), row["experiment"], str(len(row["cells"])), str(row["runs"]), str(row["steps"]),
                      f"{row['run_steps']:,}", f"{flops:.3g}", _bytes(row["memory"]["total"]))
    return table


def cells_table(cells) -> Table:
    """`bench cells`: one row per cell (gradbench.spec.suite.Cell): experiment, label, seeds, steps, program."""
    table = Table(title="cells")
    for column in ("experiment", "cell", "seeds", "steps", "program"):
        table.add_column(column, justify="left" if column in ("experiment", "cell") else "right")
    for cell, program in cells:
        table.add_row(cell.experiment, cell.label, str(cell.config["seeds"]), str(cell.config["steps"]), str(program))
    return table


def _bytes(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"


def verdict_table(judged: list[dict]) -> Table:
    """One row per (sub-)claim: its verdict, the primary answer pooled and per replicate block."""
    table = Table(title="verdicts (the report has each claim's question, effect, interval and p)")
    for column in ("claim", "verdict", "primary answer", "replicate blocks"):
        table.add_column(column, justify="left")
    for c in judged:
        q = c["primary"]
        verdict = c["verdict"] + (f" (leans {c['leans']})" if c.get("leans") else "")
        blocks = ", ".join(b["word"] for b in q.get("blocks", [])) or "–"
        table.add_row(f"{c['id']}. {c['title']}", verdict, f"{q['measure']}: {q['word']}", blocks)
    return table