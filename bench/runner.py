"""Suite -> groups of cells that share a compiled program -> engine -> records in the store."""
from __future__ import annotations

import concurrent.futures
import json
from typing import Callable

from bench import engine, optim, records
from bench.build import make_task
from bench.store import ResultsStore, environment, suite_from
from bench.suite import Cell, Suite


def shard_cells(cells: list[Cell], shard: tuple[int, int]) -> list[Cell]:
    """Cells of shard i of n (round-robin, so shards get similar work)."""
    index, count = shard
    return cells[index::count]


def group_cells(cells: list[Cell]) -> list[list[Cell]]:
    """Cells with the same static plan train in one program (groups in file order)."""
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        key = json.dumps(optim.static_plan(cell.plan), sort_keys=True)
        groups.setdefault(key, []).append(cell)
    return list(groups.values())


def _runs(group: list[Cell]) -> list[engine.Run]:
    runs = []
    for index, cell in enumerate(group):
        hyper = {**optim.traced_values(cell.plan), "budget": cell.config["steps"],
                 "factor": cell.config["divergence_factor"], "smoothing": cell.config["smoothing"],
                 "stop_at_convergence": float(cell.config["early_stop"])}
        runs += [engine.Run(index, seed, hyper) for seed in range(cell.config["seeds"])]
    return runs


def suite_record(suite: Suite, out_dir) -> dict:
    """What suite.json holds: the validated suite beside its results (and its path as seen from out_dir)."""
    return {"path": suite.path, "suite_from_out": suite_from(out_dir, suite.path), "name": suite.name,
            "settings": suite.settings, "experiments": suite.experiments, "claims": suite.claims,
            "cells": len(suite.cells)}


def run_suite(suite: Suite, out_dir, shard: tuple[int, int] = (0, 1),
              progress=None, force: bool = False, stop: Callable[[], bool] | None = None) -> list[dict]:
    """Trains every cell of the suite (this shard) not yet in `out_dir`; returns this shard's records.

    Args:
      progress: None, or an object with begin([(group label, steps, runs)]), group(label, steps, runs) ->
        on_chunk callback or None, and group_done(records of the group) (bench.console.GroupProgress).
      force: take over a directory holding another suite's records (they are discarded).
      stop: checked after every chunk and group; when it returns True the run raises KeyboardInterrupt
        there (between compiled calls), keeping every finished group.
    """
    store = ResultsStore.open(out_dir, suite_record(suite, out_dir), [c.cell_id for c in suite.cells], force)
    cells = shard_cells(suite.cells, shard)
    todo = [c for c in cells if c.cell_id not in store.done()]
    groups = [(group, _runs(group), max(c.config["steps"] for c in group),
               f"{group[0].experiment}: " + "; ".join(c.label for c in group)) for group in group_cells(todo)]
    # The longest budgets train first, so that the other groups compile while they do.
    groups.sort(key=lambda g: -g[2])

    def check_stop():
        if stop is not None and stop():
            raise KeyboardInterrupt

    def chunk_callback(shown):
        def on_chunk(*args):
            if shown:
                shown(*args)
            check_stop()
        return on_chunk

    if progress:
        progress.begin([(label, steps, len(runs)) for _, runs, steps, label in groups])
    # One background thread compiles the groups' programs in order while the main thread trains: on a CPU,
    # compiling takes one core and training about one more, so most compile time is hidden.
    compiler = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="compile")
    try:
        ready = [compiler.submit(engine.prepare, optim.static_plan(group[0].plan), runs, steps=steps,
                                 chunk_steps=suite.settings["chunk_steps"]) for group, runs, steps, _ in groups]
        for (group, runs, steps, label), prepared in zip(groups, ready):
            check_stop()
            on_chunk = chunk_callback(progress.group(label, steps, runs) if progress else None)
            new = _train(suite, store, group, runs, steps, on_chunk, prepared.result())
            if progress:
                progress.group_done(new)
    finally:
        compiler.shutdown(wait=False, cancel_futures=True)
    by_id = {r["cell_id"]: r for r in store.records}
    return [by_id[c.cell_id] for c in cells if c.cell_id in by_id]


def _train(suite: Suite, store: ResultsStore, group: list[Cell], runs, steps: int, on_chunk, prepared) -> list[dict]:
    """Trains one group, adds its records to the store and returns them."""
    result = engine.train_group(optim.static_plan(group[0].plan), runs, steps=steps,
                                chunk_steps=suite.settings["chunk_steps"], on_chunk=on_chunk, prepared=prepared)
    task, env = make_task(group[0].plan["task"]), environment()
    new = [records.cell_record(cell, [i for i, r in enumerate(runs) if r.cell_index == index], result, env,
                               suite.settings["trace_points"], task) for index, cell in enumerate(group)]
    store.add(new)
    return new
