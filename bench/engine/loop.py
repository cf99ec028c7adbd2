"""The engine's host side: a group of runs prepared (its program compiled, its inputs on the devices) and
trained chunk by chunk into per-run host arrays (`gradbench.engine.program` holds the compiled programs).

The host only loops over chunks: for progress, timing, early stop and the
explosion snapshots, taken between chunks at `SNAPSHOT_FRACTIONS` of
each run's budget (the chunk length is chosen so that they are chunk
boundaries).
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import threading
import time
from typing import Callable

import jax
import numpy as np

from gradbench.engine.program import Program, padded_count, program, tile_runs
from gradbench.spec.schema import SNAPSHOT_FRACTIONS


MIN_TIMED = 3  # timed chunks per group at least (extra chunks, results discarded, make up the count)


class _Clock:
    """Wall and process CPU seconds since it was made."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


class Quiet:
    """Whether anything else compiles while a group trains: throughput is timed only on chunks with nothing
    compiling beside them (on a CPU a compile takes a core that training would otherwise use).

    The compiling thread wraps each compile in `compiling()`; the training thread asks `mark()` before a
    chunk and `clean(mark)` after it, and `hold()` keeps new compiles from starting (waiting for the one in
    flight) while it times extra chunks.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._compiling = self._held = self._epoch = 0

    @contextlib.contextmanager
    def compiling(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._held)
            self._compiling += 1
            self._epoch += 1
        try:
            yield
        finally:
            with self._cond:
                self._compiling -= 1
                self._epoch += 1
                self._cond.notify_all()

    def mark(self) -> int | None:
        """None while something compiles, else a token that `clean` checks."""
        with self._cond:
            return None if self._compiling else self._epoch

    def clean(self, mark: int | None) -> bool:
        """Whether nothing compiled at any time since `mark`."""
        with self._cond:
            return mark is not None and mark == self._epoch and not self._compiling

    @contextlib.contextmanager
    def hold(self):
        with self._cond:
            self._held += 1
            self._cond.wait_for(lambda: not self._compiling)
        try:
            yield
        finally:
            with self._cond:
                self._held -= 1
                self._cond.notify_all()


def snapshot_plan(budgets, chunk_steps: int) -> tuple[int, np.ndarray]:
    """The chunk length and every run's snapshot steps (runs x snapshots).

    Snapshot k of a run is due at step round(f_k x budget), f_k in `SNAPSHOT_FRACTIONS`. The
    chunk length is the largest up to `chunk_steps` that divides every such step, so that each is a chunk
    boundary; where that would take more than 5x as many chunks, the length is `chunk_steps` and a snapshot
    is taken at the first boundary at or after its step (`snap_step` records where it was taken).
    """
    due = np.round(np.asarray(SNAPSHOT_FRACTIONS)[None] * np.asarray(budgets)[:, None]).astype(np.int64)
    common = int(np.gcd.reduce(due[due > 0])) if (due > 0).any() else chunk_steps
    length = max(d for d in range(1, chunk_steps + 1) if common % d == 0)
    if 5 * length < chunk_steps:
        length = chunk_steps
    return length, (-(-due // length) * length).astype(np.int32)


def _dtype(values) -> type:
    """A traced input's dtype, from every run's value: int32 when all are integers (a budget, a data_seed), else
    float32 (every plan value the spec declares traced is a float: gradbench.spec.optim.traced_values), so one run's
    integral value never truncates another's."""
    integral = all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in values)
    return np.int32 if integral else np.float32


@dataclasses.dataclass
class Run:
    """What one run contributes: a cell, a seed, traced hyperparameters."""

    cell_index: int
    seed: int
    hyper: dict


@dataclasses.dataclass
class GroupResult:
    """Per-run host arrays (first axis: runs) and the group's throughput."""

    runs: list[Run]
    arrays: dict[str, np.ndarray]  # per run; snap_* arrays have a snapshot axis after the run axis
    param_names: list[str]  # the leaves of snap_weight_norm / snap_update_norm
    loss_trace: np.ndarray  # runs x steps run
    grad_norm_trace: np.ndarray
    throughput: dict
    diagnostic_traces: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # model diagnostics
    diagnostics: dict[str, tuple] = dataclasses.field(default_factory=dict)  # name -> (reduction, description)


@dataclasses.dataclass
class Prepared:
    """A group's compiled program and its inputs on the devices, ready to train (made by `prepare`)."""

    prog: Program
    runs: list[Run]  # before padding
    steps: int  # the largest budget among the runs
    chunk_steps: int
    inputs: tuple  # (hyper, seeds, snap_at, unit_state, data) on the devices
    stops: np.ndarray  # per padded run: stops training at convergence
    due: list[int]  # the steps at which some run takes a snapshot
    budgets: np.ndarray  # per padded run: its step budget


def prepare(plan: dict, runs: list[Run], *, steps: int, chunk_steps: int,
            compiling: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> Prepared:
    """Builds and compiles the program of one group and puts its inputs on the devices (no training).

    Args:
      plan: the static plan (traced values blanked) the runs share.
      runs: the runs; their hyperparameters hold lr, transform parameters,
        budget, factor, smoothing and stop_at_convergence (1: a converged run
        stops training, so its final numbers are those at convergence).
      steps: the largest budget among the runs.
      chunk_steps: steps per compiled chunk (at most; see `snapshot_plan`).
      compiling: wraps each step that compiles (`Quiet.compiling`): building the program, the initial
        weights, and each of its four programs, so that a training thread timing extra chunks
        (`Quiet.hold`) waits for one such step, not for the whole preparation.

    Thread-safe: the runner prepares the next groups in a background thread while one trains, so that
    compiling (one core on a CPU) overlaps training.
    """
    # Padding: copies of the last run fill the run axis up to whole tiles on every device; their results are
    # dropped (and compacted chunks do not compute them).
    padded = runs + [runs[-1]] * (padded_count(len(runs), tile_runs(plan)) - len(runs))
    chunk_steps, snap_at = snapshot_plan([r.hyper["budget"] for r in padded], min(chunk_steps, steps))
    data_seeds = sorted({int(r.hyper["data_seed"]) for r in padded}) if "data_seed" in runs[0].hyper else [0]
    with compiling():
        prog = program(plan, len(padded), chunk_steps, max(len(data_seeds), 2))
    columns = {k: [r.hyper[k] for r in padded] for k in runs[0].hyper}
    hyper = {k: np.asarray(values, _dtype(values)) for k, values in columns.items()}
    if prog.per_run_data:  # each run's index into the stacked datasets
        hyper["dataset"] = np.searchsorted(data_seeds, hyper.pop("data_seed")).astype(np.int32)
    seeds = np.asarray([r.seed for r in padded], np.int32)
    with compiling():
        inputs = (*jax.device_put((hyper, seeds, snap_at, prog.unit_state(seeds)), prog.runs_sharding),
                  jax.device_put(prog.stack_data(data_seeds), prog.replicated))
    prog.compile_all(*inputs, compiling=compiling)
    return Prepared(prog, runs, steps, chunk_steps, inputs,
                    np.array([r.hyper["stop_at_convergence"] > 0 for r in padded]), sorted(set(snap_at.flat)),
                    hyper["budget"])


@dataclasses.dataclass
class _Chunk:
    """A chunk dispatched and not yet read: its outputs (being copied to the host) and how it was run."""

    start: int
    traces: tuple  # (loss, grad norm, model diagnostics), runs x steps
    status: tuple  # (diverged, converge_step) per run after the chunk
    share: float  # the tiles it computed over the program's (per device, the most): 1 when every run
    measured: bool  # a snapshot was taken just before it (its time is not the chunk's alone)


def train_group(prepared: Prepared,
                on_chunk: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
                quiet: Quiet | None = None, compact: bool = True) -> GroupResult:
    """Trains every run of a prepared group together and returns their per-run results.

    on_chunk: called after every chunk with (steps done, diverged, converged) per run; the host stops
    early once every run is done.
    quiet: tells which chunks ran with nothing compiling beside them (None: every chunk did); only those
    are timed, and extra chunks timed under `quiet.hold()` make up MIN_TIMED.
    compact: each chunk computes only the tiles of the runs still training (those that have not diverged,
    converged where they stop there, or run their budget), packed together; off: every run, every chunk.
    Either way every number is the same (a run that stopped is never changed again, and a run's numbers
    do not depend on the tile it is computed in).

    The host dispatches the next chunk before it reads the previous chunk's status and traces: it decides
    which runs a chunk computes from the status one chunk old (a run that stopped in the last chunk is
    computed once more, masked), and stops one chunk late (that chunk changes nothing and is not kept).
    """
    prog, runs, steps, chunk_steps, stops, due = (prepared.prog, prepared.runs, prepared.steps,
                                                  prepared.chunk_steps, prepared.stops, prepared.due)
    n_real = len(runs)
    hyper, seeds, snap_at, unit_state, data = prepared.inputs
    carry, snaps = prog.init(seeds, hyper, data, unit_state), prog.snapshots(len(stops))
    measured: set[int] = set()

    def snapshot(t: int) -> bool:
        """Takes the snapshots due at step t on the carry the runs hold now (dispatched, not waited for)."""
        nonlocal snaps
        if t not in due or t in measured:
            return False
        snaps = prog.measure(carry, snaps, hyper, seeds, snap_at, data, t)
        measured.add(t)
        return True

    losses, norms, diag_traces = [], [], []
    chunk_times = []  # (wall s, process CPU s) per timed chunk, of the whole program (compacted chunks scaled)
    quiet = quiet or Quiet()
    stopped = np.zeros(len(stops), bool)  # as the host last read it (one chunk behind the devices)
    real = np.arange(len(stops)) < n_real  # the padding runs are computed only where a chunk computes every run
    inflight: collections.deque[_Chunk] = collections.deque()
    dispatched = 0  # steps dispatched
    computed = 0  # run-steps computed (tiles x tile runs x steps)

    def dispatch():
        nonlocal carry, dispatched, computed
        measured_before = snapshot(dispatched)
        active = ~stopped & (dispatched < prepared.budgets) & real
        if not compact or active.all():
            table, count = None, np.full(prog.mesh.size, prog.max_tiles)
        else:
            table = prog.table(active)
            count, table = table[1], jax.device_put(table, prog.runs_sharding)
        computed += int(count.sum()) * prog.tile * chunk_steps
        carry, traces, status = prog.chunk(carry, hyper, seeds, data, dispatched, table)
        for x in jax.tree.leaves((traces, status)):
            x.copy_to_host_async()
        inflight.append(_Chunk(dispatched, traces, status, int(count.max()) / prog.max_tiles, measured_before))
        dispatched += chunk_steps

    snapshot(0)
    jax.block_until_ready(snaps)  # the first chunk's clock starts with nothing else queued
    clock, mark = _Clock(), quiet.mark()
    last = clock.read()
    dispatch()
    read = 0  # steps whose results the host has read
    first = True
    while inflight:
        if dispatched < steps:
            dispatch()
        c = inflight.popleft()
        diverged, converge_step = (np.asarray(x) for x in c.status)
        now = clock.read()
        if not first and c.share > 0 and not c.measured and quiet.clean(mark):
            # a compacted chunk's time scaled to the whole program's (the tiles run one after another)
            chunk_times.append(((now[0] - last[0]) / c.share, (now[1] - last[1]) / c.share))
        first = False
        last, mark = now, quiet.mark()
        loss, norm, diag = c.traces
        losses.append(np.asarray(loss)[:n_real])
        norms.append(np.asarray(norm)[:n_real])
        diag_traces.append({k: np.asarray(v)[:n_real] for k, v in diag.items()})
        read = c.start + chunk_steps
        stopped = diverged | ((converge_step >= 0) & stops)
        if on_chunk:
            on_chunk(min(read, steps), diverged[:n_real], converge_step[:n_real] >= 0)
        if np.all(stopped[:n_real]):
            break  # a chunk still in flight changes nothing: every run is masked
    for t in due:  # the snapshots not yet taken (every run stopped early) measure the parameters the runs hold
        snapshot(t)
    # A diverged run has no final numbers (its record says null): only the others are evaluated (the rest NaN).
    evaluation = jax.tree.map(lambda x: np.asarray(x)[:n_real], jax.device_get(prog.evaluate(
        carry, hyper, data, jax.device_put(prog.table(~diverged & real), prog.runs_sharding))))
    host, arrays = jax.tree.map(lambda x: np.asarray(x)[:n_real], jax.device_get((carry, snaps)))
    arrays.update({**host.tally._asdict(), **host.diagnostics, "final_loss_scale": host.loss_scale["scale"],
                   **evaluation})
    # The first call of a compiled program pays one-off costs (on a GPU, seconds): throughput is timed on
    # the calls after it that ran with nothing compiling beside them, with extra (discarded) chunks, timed
    # while no compile runs, when fewer than MIN_TIMED such calls were made. An extra chunk computes one tile
    # per device and its time is scaled to the whole program's, as a compacted chunk's is (the tiles run one
    # after another): timing costs a few tiles' steps, not a few chunks of every run.
    timed = chunk_times
    if len(timed) < MIN_TIMED:
        table, count = prog.table()
        one_tile = jax.device_put((table, np.minimum(count, 1)), prog.runs_sharding)
        with quiet.hold():
            for _ in range(MIN_TIMED - len(timed)):
                clock = _Clock()
                carry, *_ = jax.block_until_ready(prog.chunk(carry, hyper, seeds, data, dispatched, one_tile))
                timed.append(tuple(t * prog.max_tiles for t in clock.read()))
    # Per timed chunk steps/s: the median is the throughput, the quartiles its spread (a shared machine's noise).
    wall, cpu = np.asarray(timed).T
    rates, cpu_rates = chunk_steps / wall, chunk_steps / np.maximum(cpu, 1e-9)
    steps_per_s = float(np.median(rates))
    q25, q75 = (float(q) for q in np.percentile(rates, [25, 75]))
    batch = prog.plan["task"].get("batch_size", 1)
    flops_per_step = prog.flops_per_run_step * len(runs) if prog.flops_per_run_step else None
    return GroupResult(
        runs=runs, arrays=arrays, param_names=prog.param_names,
        loss_trace=np.concatenate(losses, 1)[:, :steps], grad_norm_trace=np.concatenate(norms, 1)[:, :steps],
        diagnostic_traces={k: np.concatenate([d[k] for d in diag_traces], 1)[:, :steps]
                           for k in prog.model_diagnostics},
        diagnostics=prog.model_diagnostics,
        throughput={
            "steps_per_s": steps_per_s,  # program steps/s: median over the timed chunks
            "steps_per_s_iqr": [q25, q75],
            "timed_chunks": len(rates),
            "chunk_steps_per_s": [float(r) for r in rates],  # each timed chunk's program steps/s
            # Program steps per second of the process's CPU time (all its threads), per timed chunk and their
            # median: on a CPU backend the work a step costs, which a busy machine slows far less than the wall.
            "cpu_steps_per_s": float(np.median(cpu_rates)),
            "chunk_cpu_steps_per_s": [float(r) for r in cpu_rates],
            "run_steps_per_s": steps_per_s * len(runs),  # steps of real runs (seeds x cells) per second
            "examples_per_s": steps_per_s * batch * len(runs),
            "runs_per_program": len(runs),
            "devices": prog.mesh.size,  # the run axis (padded to a multiple of it) is sharded over these
            "compile_s": prog.compile_s,
            "flops_per_step": flops_per_step,  # of the real runs (not the padding)
            "achieved_flops_per_s": flops_per_step * steps_per_s if flops_per_step else None,
            "chunk_steps": chunk_steps,
            "tile_runs": prog.tile,  # runs are computed in tiles of this many (batch invariance)
            # the run-steps the chunks computed, over those of every run for every chunk (compaction's saving)
            "computed_fraction": computed / (len(stops) * dispatched) if dispatched else 1.0,
            "runs_padded": len(stops),  # the run axis: the runs padded to whole tiles on every device
        },
    )
