"""Suite -> groups of cells that share a compiled program -> engine -> records in the store."""
from __future__ import annotations

import json
from pathlib import Path

from bench import engine, optim, records
from bench.build import make_task
from bench.store import SUITE_FILE, ResultsStore, atomic_write, environment, suite_from
from bench.suite import Cell, Suite


def shard_cells(cells: list[Cell], shard: tuple[int, int]) -> list[Cell]:
    """Cells of shard i of n (round-robin, so shards get similar work)."""
    index, count = shard
    return cells[index::count]


def group_cells(cells: list[Cell]) -> list[list[Cell]]:
    """Cells with the same static plan train in one program, in file order."""
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


def run_suite(suite: Suite, out_dir, shard: tuple[int, int] = (0, 1),
              progress=None) -> list[dict]:
    """Trains every cell of the suite (this shard) not yet in `out_dir`; returns this shard's records.

    Args:
      progress: None, or an object with begin([(group label, steps, runs)]), group(label, steps, runs) ->
        on_chunk callback or None, and group_done(records of the group) (bench.console.GroupProgress).
    """
    store = ResultsStore(out_dir)
    atomic_write(Path(out_dir) / SUITE_FILE, json.dumps(
        {"path": suite.path, "suite_from_out": suite_from(out_dir, suite.path), "name": suite.name,
         "settings": suite.settings, "experiments": suite.experiments, "claims": suite.claims,
         "cells": len(suite.cells)}, indent=1))
    cells = shard_cells(suite.cells, shard)
    todo = [c for c in cells if c.cell_id not in store.done()]
    groups = [(group, _runs(group), max(c.config["steps"] for c in group),
               f"{group[0].experiment}: " + "; ".join(c.label for c in group)) for group in group_cells(todo)]
    if progress:
        progress.begin([(label, steps, len(runs)) for _, runs, steps, label in groups])
    for group, runs, steps, label in groups:
        on_chunk = progress.group(label, steps, runs) if progress else None
        result = engine.train_group(optim.static_plan(group[0].plan), runs, steps=steps,
                                    chunk_steps=suite.settings["chunk_steps"], on_chunk=on_chunk)
        task = make_task(group[0].plan["task"])
        env = environment()
        new = []
        for index, cell in enumerate(group):
            record = records.cell_record(cell, [i for i, r in enumerate(runs) if r.cell_index == index], result,
                                         env, suite.settings["trace_points"], task)
            new.append(record)
        store.add(new)
        if progress:
            progress.group_done(new)
    by_id = {r["cell_id"]: r for r in store.records}
    return [by_id[c.cell_id] for c in cells if c.cell_id in by_id]
