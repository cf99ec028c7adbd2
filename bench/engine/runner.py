"""Suite -> groups of cells that share a compiled program -> engine -> records in the store."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
from pathlib import Path
from typing import Callable

from gradbench.engine import loop
from gradbench.records import calibrate
from gradbench.records.cell import cell_record
from gradbench.records.env import environment
from gradbench.records.store import ResultsStore, suite_from
from gradbench.spec import optim
from gradbench.spec.build import make_task
from gradbench.spec.suite import Cell, Suite


def _levels(shard) -> list[tuple[int, int]]:
    """(i, n), or a sequence of such levels: shard i of n, then part p of P of it, ..."""
    return [tuple(shard)] if isinstance(shard[0], int) else [tuple(level) for level in shard]


def shard_cells(cells: list[Cell], shard) -> list[Cell]:
    """Cells of shard i of n: whole compiled groups, dealt greedily by cost (runs x steps, largest first, each
    to the shard with the least so far), never a group split; in file order.

    shard: (i, n), or levels ((i, n), (p, P), ...): part p of P of shard i of n (`gradbench.engine.cluster.compose`).
    """
    groups = group_cells(cells)
    for index, count in _levels(shard):
        load, dealt = [0] * count, [[] for _ in range(count)]
        for group in sorted(groups, key=lambda g: -len(g.runs) * g.steps):  # stable: ties in file order
            k = load.index(min(load))
            load[k] += len(group.runs) * group.steps
            dealt[k].append(group)
        groups = dealt[index]
    kept = {c.cell_id for g in groups for c in g.cells}
    return [c for c in cells if c.cell_id in kept]


def group_count(cells: list[Cell]) -> int:
    """How many compiled groups (the most useful shards) the cells make."""
    return len(group_cells(cells))


# Plan values the engine traces beside those gradbench.spec.optim declares traced (`traced_values`): name -> (the plan
# section holding it, None for the plan itself; what the static plan keeps in its place). init_perturbation: every
# value > 0 shares one program (True: the program perturbs); data_seed: every dataset of one shape shares one (None:
# the program stacks the group's datasets). Group.runs reads them, group_cells blanks them.
PLAN_TRACED = {"init_perturbation": (None, True), "data_seed": ("task", None)}


@dataclasses.dataclass
class Group:
    """Cells with the same static plan: they train together in one program."""

    plan: dict
    cells: list[Cell]

    @functools.cached_property
    def runs(self) -> list[loop.Run]:
        """Every (cell, seed) run with its traced hyperparameters, cell by cell."""
        runs = []
        for index, cell in enumerate(self.cells):
            hyper = {**optim.traced_values(cell.plan), "budget": cell.config["steps"],
                     "factor": cell.config["divergence_factor"], "smoothing": cell.config["smoothing"],
                     "stop_at_convergence": float(cell.config["early_stop"])}
            for name, (section, _) in PLAN_TRACED.items():
                table = cell.plan[section] if section else cell.plan
                if name in table:
                    hyper[name] = table[name]
            if "data_seed" in hyper:  # the group stacks its datasets (Program.stack_data); thresholds per dataset
                task = make_task(cell.plan["task"])
                hyper.update(trivial_loss=float(task.trivial_loss), target=float(task.target))
            first = cell.config.get("first_seed", 0)  # a replicate block's seeds follow the blocks before it
            runs += [loop.Run(index, seed, hyper) for seed in range(first, first + cell.config["seeds"])]
        return runs

    @property
    def steps(self) -> int:
        return max(c.config["steps"] for c in self.cells)

    def memory(self, devices: int = 1) -> dict:
        """gradbench.spec.build.memory_estimate for the runs one of `devices` devices holds (traced, not compiled)."""
        from gradbench.spec import build

        return build.memory_estimate(self.plan, self.runs[0].hyper, -(-len(self.runs) // max(devices, 1)))

    @property
    def label(self) -> str:
        return f"{self.cells[0].experiment}: " + "; ".join(c.label for c in self.cells)


def group_cells(cells: list[Cell]) -> list[Group]:
    """The cells' groups, in file order."""
    groups: dict[str, Group] = {}
    for cell in cells:
        plan = optim.static_plan(cell.plan)
        for name, (section, blank) in PLAN_TRACED.items():
            table = plan[section] if section else plan
            if name in table:
                table[name] = blank
        groups.setdefault(json.dumps(plan, sort_keys=True), Group(plan, [])).cells.append(cell)
    return list(groups.values())


def cost(cells: list[Cell], devices: int = 1) -> list[dict]:
    """What training the cells would take, per compiled group (one program), in run order; nothing is compiled or
    trained (the model and optimiser are traced abstractly, as the run's memory check does).

    Each: experiment, cells (ids), labels, runs (cells x seeds), steps (the group's budget), run_steps (runs x
    steps: an upper bound, a seed that converges or diverges stops early), flops_per_run_step (model FLOPs of one
    run's training step: 3 x the forward pass's matrix products, gradbench.engine.program.forward_flops) and memory
    (gradbench.spec.build.memory_estimate for the runs one of `devices` devices holds: params, optimizer,
    activations, data, per_run, total; bytes).
    """
    from gradbench.engine import program

    out = []
    for group in group_cells(cells):
        runs = len(group.runs)
        out.append({"experiment": group.cells[0].experiment, "cells": [c.cell_id for c in group.cells],
                    "labels": [c.label for c in group.cells], "runs": runs, "steps": group.steps,
                    "run_steps": runs * group.steps, "flops_per_run_step": 3 * program.forward_flops(group.plan),
                    "memory": group.memory(devices)})
    return out


def suite_record(suite: Suite, out_dir) -> dict:
    """What suite.json holds: the validated suite beside its results (and its path as seen from out_dir)."""
    record = {"path": suite.path, "suite_from_out": suite_from(out_dir, suite.path), "name": suite.name,
              "settings": suite.settings, "experiments": suite.experiments, "claims": suite.claims,
              "cells": len(suite.cells)}
    if suite.plugins:  # what `reproduce` imports again, and what the run's code hash joins
        record["plugins"] = [p.record() for p in suite.plugins]
    return record


def run_suite(suite: Suite, out_dir, shard=(0, 1),
              progress=None, force: bool = False, stop: Callable[[], bool] | None = None) -> list[dict]:
    """Trains every cell of the suite (this shard) not yet in `out_dir`; returns this shard's records.

    Args:
      progress: None, or an object with begin([(group label, steps, runs)]), group(label, steps, runs) ->
        on_chunk callback or None, and group_done(records of the group) (gradbench.reports.console.GroupProgress).
      force: take over a directory holding another suite's records (they are discarded).
      stop: checked after every chunk and group; when it returns True the run raises KeyboardInterrupt
        there (between compiled calls), keeping every finished group.
    """
    store = ResultsStore.open(out_dir, suite_record(suite, out_dir), [c.cell_id for c in suite.cells], force)
    cells = shard_cells(suite.cells, shard)
    todo = [c for c in cells if c.cell_id not in store.done()]
    groups = group_cells(todo)

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
        progress.begin([(g.label, g.steps, len(g.runs)) for g in groups])
    # One background thread compiles the groups' programs in order while the main thread trains: on a CPU,
    # compiling takes one core and training about one more, so most compile time is hidden. Throughput is
    # timed only on chunks with no compile beside them (`loop.Quiet`), and the yardsticks (`calibrate`) of
    # the records' env are timed here, before any compile starts.
    calibrate.matmul_flops_per_s()
    calibrate.scan_flops_per_s()
    quiet = loop.Quiet()

    def prepare(group):
        return loop.prepare(group.plan, group.runs, steps=group.steps, chunk_steps=suite.settings["chunk_steps"],
                            compiling=quiet.compiling)

    compiler = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="compile")
    try:
        # At most AHEAD groups are prepared beyond the one training, and a trained group's program and device
        # inputs are let go: memory stays that of a few groups however long the suite.
        ready = {}
        failed = []  # groups that ran out of memory: the others still train
        for i, group in enumerate(groups):
            check_stop()
            for j in range(i, min(i + AHEAD + 1, len(groups))):
                if j not in ready:
                    ready[j] = compiler.submit(prepare, groups[j])
            prepared = ready.pop(i)
            on_chunk = chunk_callback(progress.group(group.label, group.steps, group.runs) if progress else None)
            try:
                new = _train(suite, store, group, prepared.result(), on_chunk, quiet)
            except Exception as e:  # noqa: BLE001 (only an out-of-memory is caught; anything else is raised)
                if not out_of_memory(e):
                    raise
                failed.append({"experiment": group.cells[0].experiment, "cells": [c.cell_id for c in group.cells],
                               "labels": [c.label for c in group.cells], "runs": len(group.runs),
                               "error": (str(e).strip().splitlines() or [type(e).__name__])[0][:300]})
                continue
            if progress:
                progress.group_done(new)
    finally:
        compiler.shutdown(wait=False, cancel_futures=True)
    not_run = Path(out_dir) / NOT_RUN_FILE
    if failed:
        not_run.write_text(json.dumps({"groups": failed}, indent=1) + "\n")
        raise OutOfMemory(not_run, failed)
    not_run.unlink(missing_ok=True)
    by_id = {r["cell_id"]: r for r in store.records}
    return [by_id[c.cell_id] for c in cells if c.cell_id in by_id]


AHEAD = 2  # groups compiled ahead of the one training (compiling on one core overlaps training on the other)
NOT_RUN_FILE = "not_run.json"  # the groups of the last run that could not run (out of memory)


class OutOfMemory(Exception):
    """Some groups ran out of memory (the others' records are kept); the groups are in OUT/not_run.json."""

    def __init__(self, path, failed: list[dict]):
        cells = sum(len(f["cells"]) for f in failed)
        first = failed[0]
        super().__init__(f"{path}: {len(failed)} compiled group(s) ({cells} cells) ran out of memory and were not "
                         f"run, the first of experiment {first['experiment']!r} ({first['runs']} runs: "
                         f"{first['error']}); every other cell is kept; allowed: fewer seeds or grid points, a smaller "
                         "model or batch, or a machine with more memory")


def out_of_memory(error: BaseException) -> bool:
    """Whether an exception is an allocation failure (XLA's RESOURCE_EXHAUSTED, Python's MemoryError)."""
    text = str(error)
    return isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in text or "Out of memory" in text \
        or "out of memory" in text


def _train(suite: Suite, store: ResultsStore, group: Group, prepared: loop.Prepared, on_chunk,
           quiet: loop.Quiet | None = None) -> list[dict]:
    """Trains one prepared group, adds its records to the store and returns them."""
    result = loop.train_group(prepared, on_chunk, quiet)
    env = environment(suite.plugins)
    new = [cell_record(cell, [i for i, r in enumerate(result.runs) if r.cell_index == index], result, env,
                       suite.settings["trace_points"], make_task(cell.plan["task"]))
           for index, cell in enumerate(group.cells)]
    store.add(new)
    return new
