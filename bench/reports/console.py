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