"""Terminal presentation: progress per group of cells and the summary table (rich)."""
from __future__ import annotations

import time

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


class GroupProgress:
    """A rich progress display; `factory` makes the per-group on_chunk callback for the runner."""

    def __init__(self, console: Console):
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                                 console=console, transient=False)

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def factory(self, label: str, total: int, runs):
        task = self.progress.add_task(label if len(label) < 70 else label[:67] + "...", total=total,
                                      status="compiling")
        start = {"t": None, "steps": 0}

        def on_chunk(done: int, diverged: np.ndarray, converged: np.ndarray):
            now = time.perf_counter()
            if start["t"] is None:  # the first chunk includes compilation
                start["t"], start["steps"] = now, done
                rate = "compiled"
            else:
                rate = f"{(done - start['steps']) / (now - start['t']):.0f} steps/s"
            finished = int(np.sum(diverged | converged))
            self.progress.update(task, completed=done, status=f"seeds done {finished}/{len(runs)} "
                                 f"diverged {int(np.sum(diverged))} | {rate}")

        return on_chunk


def _fmt(x, digits=3):
    return "-" if x is None else f"{x:.{digits}g}"


def summary_table(records: list[dict]) -> Table:
    """One row per cell: divergence rate with its interval, converged k/S, median steps, steps/s."""
    table = Table(title="results", show_lines=False)
    for column in ("experiment", "cell", "diverged", "95% CI", "converged", "median steps", "held-out loss",
                   "steps/s"):
        table.add_column(column, justify="left" if column in ("experiment", "cell") else "right")
    for r in records:
        low, high = r["divergence_rate_ci"]
        n = len(r["per_seed"]["diverged"])
        table.add_row(r["experiment"], r["label"], f"{r['divergence_rate']:.2f}", f"[{low:.2f}, {high:.2f}]",
                      f"{r['converged']}/{n}", _fmt(r["median_steps_to_converge"]),
                      _fmt(r["quality"]["final_heldout_loss"]), f"{r['throughput']['steps_per_s']:.0f}")
    return table
