"""The engine: all runs (seeds x learning rates x traced hyperparameters and initial scales) of cells
that share a static plan train in ONE compiled program.

Per run, a carry of pure pytrees (params, batch statistics, optimiser state
and the divergence/convergence status) goes through `lax.scan` over a chunk
of steps, `vmap`ped over runs. The host only loops over chunks: for progress,
timing and early stop. A run that diverges is frozen (its updates masked), so
it neither poisons the others nor crashes the program.

The run axis is sharded over every local device (a one-axis `Mesh`, the
compiled programs given their shardings explicitly); a run count that the
device count does not divide is padded with copies of the last run, whose
results are dropped. Per-run results do not depend on the device count.

Explosion is measured by a third program, called between chunks at the
snapshot steps (`metrics.SNAPSHOT_FRACTIONS` of each run's budget; the chunk
length is chosen so that they are chunk boundaries): on that step's batch it
differentiates the loss with respect to the parameters and to a zero shift
added to every layer's pre-activation (every time step's hidden state for
recurrent models), and keeps the per-layer gradient norms, the per-parameter
weight norms and the norm of the update the optimiser makes from that
gradient (docs/METHODS.md). The training step itself carries none of it.

Diagnostics: per run the carry reduces scalars over the steps it trains:
the fractions of exactly-zero and of non-finite gradient entries (largest
over steps: underflow and overflow), and, for a model with `diagnostics`
(models/__init__.py), each of its scalars by its declared reduction (max or
min, starting from the value at initialisation); their per-step values
form traces. Loss scaling (optim.loss_scale_*) multiplies the loss before the
backward pass; a step it skips is counted, not treated as divergence.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bench import build, flops, metrics, optim
from bench.build import make_model, make_task

TRACE_COUNT = {"chunk": 0}  # incremented when a chunk program is traced; tests count compilations
COMPILES = {"programs": 0, "seconds": 0.0}  # Programs compiled in this process and their total compile seconds


def seed_keys(seed):
    """One root key per seed, split once by purpose: (init, data)."""
    k_init, k_data = jax.random.split(jax.random.key(seed))
    return k_init, k_data


def _over_runs(fn, in_axes, n_runs: int):
    """`fn` mapped over the leading run axis of the arguments whose in_axes entry is 0.

    A single run skips vmap: XLA:CPU runs a matrix product with a batch
    dimension of one about 1.4x slower than the plain product.
    """
    if n_runs > 1:
        return jax.vmap(fn, in_axes=in_axes)

    def single(*args):
        args = [a if axis is None else jax.tree.map(lambda x: x[0], a) for a, axis in zip(args, in_axes)]
        return jax.tree.map(lambda x: x[None], fn(*args))

    return single


def run_mesh(n_runs: int) -> Mesh:
    """A one-axis mesh ("runs") over every local device, or over one device when their count does not
    divide `n_runs` (train_group pads the runs so that it does)."""
    devices = jax.local_devices()
    if n_runs % len(devices):
        devices = devices[:1]
    return Mesh(np.array(devices), ("runs",))


def padded_count(n_runs: int) -> int:
    """The run count rounded up to a multiple of the local device count (the extra runs are dropped)."""
    n_devices = jax.local_device_count()
    return -(-n_runs // n_devices) * n_devices


class Program:
    """The compiled init / chunk / evaluate functions of one static plan and run count."""

    def __init__(self, plan: dict, n_runs: int, chunk_steps: int):
        self.plan, self.chunk_steps = plan, chunk_steps
        # Counting zero and non-finite gradient entries is two passes over every parameter per step: done
        # where precision is the question (a low-precision dtype, or loss scaling), else recorded as null.
        self.count_entries = bool(plan.get("loss_scaling")) or plan["model"].get("dtype", "float32") != "float32"
        self.task = make_task(plan["task"])
        # Traced initial scales (None in the static plan): the model is built at 1 and its leaves rescaled.
        self.model_cfg = build.unit_scales(plan["model"])
        self.init_powers = build.init_powers(plan["task"], self.model_cfg)
        abstract = nnx.eval_shape(lambda: make_model(self.model_cfg, self.task, jax.random.key(0)))
        self.graphdef = nnx.split(abstract, nnx.Param, ...)[0]
        lr_groups = getattr(abstract, "lr_groups", None)
        self.lr_groups = lr_groups(optim.adaptive(plan)) if lr_groups else None
        self.model_diagnostics = dict(getattr(abstract, "DIAGNOSTICS", {}))  # name -> ("max" | "min", text)
        x_abstract, _ = jax.eval_shape(lambda: self.task.sample(self.task.data, jax.random.key(0)))
        self.preact_shapes = jax.eval_shape(
            lambda x: make_model(self.model_cfg, self.task, jax.random.key(0)).forward(x, train=True)[1], x_abstract)
        abstract_params = nnx.split(abstract, nnx.Param, ...)[1]
        self.param_names = [jax.tree_util.keystr(path).removesuffix(".value") for path, _ in
                            jax.tree_util.tree_flatten_with_path(abstract_params)[0]]
        # The run axis is sharded over the mesh; the task's data and the chunk's start step are replicated.
        self.mesh = run_mesh(n_runs)
        self.runs_sharding = NamedSharding(self.mesh, PartitionSpec("runs"))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        on_runs, once = self.runs_sharding, self.replicated
        self._init = jax.jit(_over_runs(self._init_one, (0, 0, None), n_runs),
                            in_shardings=(on_runs, on_runs, once), out_shardings=on_runs)
        self._evaluate = jax.jit(_over_runs(self._evaluate_one, (0, None), n_runs),
                                in_shardings=(on_runs, once), out_shardings=on_runs)
        self._chunk = jax.jit(_over_runs(self._chunk_one, (0, 0, 0, None, None), n_runs), donate_argnums=0,
                              in_shardings=(on_runs, on_runs, on_runs, once, once), out_shardings=on_runs)
        self._measure = jax.jit(_over_runs(self._measure_one, (0, 0, 0, 0, 0, None, None), n_runs),
                                donate_argnums=1, in_shardings=(on_runs,) * 5 + (once, once), out_shardings=on_runs)
        self.compiled = {}  # name -> compiled executable
        self.compile_s = 0.0  # init + chunk + measure + evaluate
        self.flops_per_step = None

    # Pure per-run functions -------------------------------------------------
    def _unit_state_one(self, seed):
        """A seed's model parameters and other state, every traced initial scale at 1."""
        k_init, _ = seed_keys(seed)
        return nnx.split(make_model(self.model_cfg, self.task, k_init), nnx.Param, ...)[1:]

    def unit_state(self, seeds: np.ndarray):
        """`_unit_state_one` of every run, made op by op under vmap over the distinct seeds, not compiled.

        The random initialisers (a threefry hash per layer) are most of what an init program would take to
        compile; run op by op, each operation compiles once per shape and every later group with layers of
        that shape reuses it. Runs of one seed share its state.
        """
        unique, index = np.unique(seeds, return_inverse=True)
        state = jax.vmap(self._unit_state_one)(jnp.asarray(unique, jnp.int32))
        return jax.tree.map(lambda x: x[index], state)

    def _init_one(self, hyper, unit_state, data):
        params, rest = unit_state
        params = build.scale_init(params, self.init_powers, {k: hyper[f"model.{k}"] for k in self.init_powers})
        zero = jnp.zeros((), jnp.float32)
        # loss_0: the training loss before the first update on the whole training-evaluation set (in training
        # mode). It is recorded, not a threshold: thresholds are relative to the task's trivial loss.
        loss_0, (_, _, diag_0) = self._loss(params, rest, *data["train_eval"], True)
        return {
            "params": params, "rest": rest, "opt_state": optim.build(self.plan, hyper, self.lr_groups).init(params),
            "loss_0": loss_0, "kernel_rank_0": metrics.kernel_rank(params), "ema": zero, "n_updates": jnp.zeros((), jnp.int32),
            "diverged": jnp.zeros((), bool), "divergence_step": jnp.full((), -1, jnp.int32),
            "converge_step": jnp.full((), -1, jnp.int32), "max_grad_norm": zero,
            "diagnostics": {**diag_0, **dict.fromkeys(("grad_zero_fraction", "grad_nonfinite_fraction"),
                                                      zero if self.count_entries else jnp.full((), jnp.nan))},
            "loss_scale": optim.loss_scale_init(self.plan, hyper), "skipped_steps": jnp.zeros((), jnp.int32),
        }

    def _empty_snapshots(self, n_runs: int) -> dict:
        n_snap = len(metrics.SNAPSHOT_FRACTIONS)
        return {"snap_step": np.full((n_runs, n_snap), -1, np.int32),
                "snap_log_preact_grad": np.full((n_runs, n_snap, len(self.preact_shapes)), np.nan, np.float32),
                "snap_weight_norm": np.full((n_runs, n_snap, len(self.param_names)), np.nan, np.float32),
                "snap_update_norm": np.full((n_runs, n_snap, len(self.param_names)), np.nan, np.float32)}

    def snapshots(self, n_runs: int) -> dict:
        """The empty snapshot arrays (runs x snapshots [x layers | parameters]) that `measure` fills."""
        return jax.device_put(self._empty_snapshots(n_runs), self.runs_sharding)

    def _loss(self, params, rest, x, y, train, shifts=None):
        """(task loss, (prediction, non-parameter state, model diagnostics)); shifts as in `forward`."""
        model = nnx.merge(self.graphdef, params, rest, copy=True)
        if self.model_diagnostics:
            pred, diag = model.diagnostics(x, train=train, shifts=shifts)
        elif shifts is not None:
            pred, diag = model.forward(x, train=train, shifts=shifts)[0], {}
        else:
            pred, diag = model(x, train=train), {}
        return self.task.loss(pred, y), (pred, nnx.split(model, nnx.Param, ...)[2], diag)

    def _objective(self, hyper, scale, params, rest, x, y, shifts):
        """The training objective (task loss plus auxiliary losses) times the loss scale."""
        loss, aux = self._loss(params, rest, x, y, True, shifts)
        return (loss + optim.aux_loss(self.plan, hyper, aux[0])) * scale, (loss, aux)

    def _reduce(self, old: dict, new: dict, active) -> dict:
        """Folds one step's diagnostics into the running ones (NaN steps leave them unchanged)."""
        out = {}
        for name, value in new.items():
            kind = self.model_diagnostics.get(name, ("max",))[0]
            folded = jnp.minimum(old[name], value) if kind == "min" else jnp.maximum(old[name], value)
            out[name] = jnp.where(active & ~jnp.isnan(value), folded, old[name])
        return out

    @staticmethod
    def _stopped(c, hyper):
        """Whether a run is done training early: it diverged, or converged when it stops there."""
        return c["diverged"] | ((c["converge_step"] >= 0) & (hyper["stop_at_convergence"] > 0))

    def _measure_one(self, c, snaps, hyper, seed, snap_at, data, t):
        """Takes the snapshots due at step `t` (where `snap_at == t`) on the parameters the run holds.

        On step t's batch: the norm of the loss's gradient with respect to every layer's pre-activation (a
        zero shift added there), the norm of every parameter, and the norm of the update the optimiser makes
        from the parameter gradient (null for a run that no longer updates). A run that stopped earlier
        (converged with early stop, diverged, or ran its budget) holds the parameters of its last applied
        update; `snap_step` says from which step they are (for a diverged run, those whose loss exploded).
        """
        _, data_key = seed_keys(seed)
        x, y = self.task.sample(data, jax.random.fold_in(data_key, t))
        shifts = [jnp.zeros(s.shape, s.dtype) for s in self.preact_shapes]
        scale = c["loss_scale"]["scale"]
        (grads, g_shifts), _ = jax.grad(self._objective, argnums=(2, 6), has_aux=True)(
            hyper, scale, c["params"], c["rest"], x, y, shifts)
        if self.plan.get("loss_scaling"):
            grads, g_shifts = jax.tree.map(lambda g: g / scale, (grads, g_shifts))
        updates, _ = optim.build(self.plan, hyper, self.lr_groups).update(grads, c["opt_state"], c["params"])
        leaf_norms = lambda tree: jnp.stack([jnp.linalg.norm(x) for x in jax.tree.leaves(tree)])  # noqa: E731
        stopped = self._stopped(c, hyper)
        at = snap_at == t
        held_from = jnp.where(c["diverged"], c["divergence_step"],
                              jnp.where(stopped, c["converge_step"] + 1, jnp.minimum(t, hyper["budget"])))
        return {
            "snap_step": jnp.where(at, held_from, snaps["snap_step"]),
            "snap_log_preact_grad": jnp.where(at[:, None], jnp.stack([metrics.log_norm(g) for g in g_shifts]),
                                              snaps["snap_log_preact_grad"]),
            "snap_weight_norm": jnp.where(at[:, None], leaf_norms(c["params"]), snaps["snap_weight_norm"]),
            "snap_update_norm": jnp.where(at[:, None] & ~stopped, leaf_norms(updates), snaps["snap_update_norm"]),
        }

    def _step(self, hyper, tx, data_key, data, c, t):
        x, y = self.task.sample(data, jax.random.fold_in(data_key, t))
        scale = c["loss_scale"]["scale"]
        (_, (loss, (_, rest, diag))), grads = jax.value_and_grad(self._objective, argnums=2, has_aux=True)(
            hyper, scale, c["params"], c["rest"], x, y, None)
        if self.plan.get("loss_scaling"):
            grads = jax.tree.map(lambda g: g / scale, grads)
        grads_finite = jnp.ones((), bool)  # only dynamic loss scaling, which counts entries, needs it
        if self.count_entries:
            leaves = jax.tree.leaves(grads)
            n_entries = sum(g.size for g in leaves)
            nonfinite = sum(jnp.sum(~jnp.isfinite(g)) for g in leaves)
            diag = {**diag, "grad_zero_fraction": sum(jnp.sum(g == 0) for g in leaves) / n_entries,
                    "grad_nonfinite_fraction": nonfinite / n_entries}
            grads_finite = nonfinite == 0
        else:
            diag = {**diag, **dict.fromkeys(("grad_zero_fraction", "grad_nonfinite_fraction"),
                                            jnp.full((), jnp.nan))}
        loss_scale, skip = optim.loss_scale_update(self.plan, hyper, c["loss_scale"], grads_finite)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, c["opt_state"], c["params"])
        params = optax.apply_updates(c["params"], updates)

        # A run is done once it diverged, ran its budget, or converged when it stops there: then
        # its results do not depend on which other runs share the program.
        active = ~self._stopped(c, hyper) & (t < hyper["budget"])
        # A step that dynamic loss scaling skips (non-finite gradients) is not divergence; its loss still counts.
        boom = active & metrics.exploded(loss, jnp.where(skip, 0.0, grad_norm), self.task.trivial_loss,
                                         hyper["factor"], t, c["loss_0"])
        keep = active & ~boom & ~skip
        ema = jnp.where(keep, metrics.ema_update(c["ema"], loss, hyper["smoothing"]), c["ema"])
        n_updates = c["n_updates"] + keep
        smoothed = metrics.debiased(ema, hyper["smoothing"], n_updates)
        converged = keep & (c["converge_step"] < 0) & (smoothed <= self.task.target)
        pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, old)  # noqa: E731
        safe_norm = jnp.where(jnp.isfinite(grad_norm), grad_norm, jnp.inf)
        carry = {
            "params": pick(params, c["params"]), "rest": pick(rest, c["rest"]),
            "opt_state": pick(opt_state, c["opt_state"]),
            "loss_0": c["loss_0"], "kernel_rank_0": c["kernel_rank_0"], "ema": ema, "n_updates": n_updates,
            "diverged": c["diverged"] | boom,
            "divergence_step": jnp.where(boom, t, c["divergence_step"]),
            "converge_step": jnp.where(converged, t, c["converge_step"]),
            "max_grad_norm": jnp.where(active, jnp.maximum(c["max_grad_norm"], safe_norm), c["max_grad_norm"]),
            "diagnostics": self._reduce(c["diagnostics"], diag, active),
            "loss_scale": jax.tree.map(lambda a, b: jnp.where(active & ~boom, a, b), loss_scale, c["loss_scale"]),
            "skipped_steps": c["skipped_steps"] + (active & ~boom & skip),
        }
        traced = {k: jnp.where(active, diag[k], jnp.nan) for k in self.model_diagnostics}
        return carry, (jnp.where(active, loss, jnp.nan), jnp.where(active, grad_norm, jnp.nan), traced)

    def _chunk_one(self, carry, hyper, seed, data, start):
        TRACE_COUNT["chunk"] += 1
        _, data_key = seed_keys(seed)
        tx = optim.build(self.plan, hyper, self.lr_groups)
        step = functools.partial(self._step, hyper, tx, data_key, data)
        return jax.lax.scan(step, carry, start + jnp.arange(self.chunk_steps))

    def _evaluate_one(self, carry, data):
        out = {}
        for split in ("train_eval", "validation", "heldout"):
            x, y = data[split]
            loss, (pred, _, _) = self._loss(carry["params"], carry["rest"], x, y, False)
            out[split] = (loss, self.task.metric(pred, y))
        out["kernel_rank"] = metrics.kernel_rank(carry["params"])
        return out

    # Host side ----------------------------------------------------------------
    def _compile(self, name: str, jitted, *args) -> None:
        """Compiles `jitted` for `args` (arrays or ShapeDtypeStructs) once (timed into compile_s and COMPILES)."""
        if name in self.compiled:
            return
        COMPILES["programs"] += not self.compiled
        t0 = time.perf_counter()
        traced = jitted.trace(*args)
        self.compiled[name] = traced.lower().compile()
        seconds = time.perf_counter() - t0
        self.compile_s += seconds
        COMPILES["seconds"] += seconds
        if name == "chunk":  # FLOPs counted from the jaxpr
            self.flops_per_step = flops.count(traced.jaxpr) / self.chunk_steps or None

    def _run(self, name: str, jitted, *args):
        """Calls `jitted`, compiled ahead of time on first use."""
        self._compile(name, jitted, *args)
        return self.compiled[name](*args)

    def compile_all(self, hyper, seeds, snap_at, unit_state, data) -> None:
        """Compiles init, chunk, measure and evaluate for these inputs without running anything."""
        carry = jax.eval_shape(self._init, hyper, unit_state, data)
        snaps = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.runs_sharding),
                             self._empty_snapshots(len(seeds)))
        step = jax.ShapeDtypeStruct((), jnp.int32)
        self._compile("init", self._init, hyper, unit_state, data)
        self._compile("chunk", self._chunk, carry, hyper, seeds, data, step)
        self._compile("measure", self._measure, carry, snaps, hyper, seeds, snap_at, data, step)
        self._compile("evaluate", self._evaluate, carry, data)

    def init(self, seeds, hyper, data, unit_state=None):
        """The initial carry of every run (`unit_state`: `unit_state(seeds)` on the devices, if made already)."""
        if unit_state is None:
            unit_state = jax.device_put(self.unit_state(np.asarray(seeds)), self.runs_sharding)
        return self._run("init", self._init, hyper, unit_state, data)

    def chunk(self, carry, hyper, seeds, data, start):
        """Runs one chunk of steps from step `start` (the carry is donated)."""
        return self._run("chunk", self._chunk, carry, hyper, seeds, data, jnp.int32(start))

    def measure(self, carry, snaps, hyper, seeds, snap_at, data, t):
        """Takes the snapshots due at step `t` (the snapshot arrays are donated)."""
        return self._run("measure", self._measure, carry, snaps, hyper, seeds, snap_at, data, jnp.int32(t))

    def evaluate(self, carry, data):
        """Loss and metric of every run on the training-evaluation, validation and held-out sets."""
        return self._run("evaluate", self._evaluate, carry, data)


_PROGRAMS: dict = {}


def program(plan: dict, n_runs: int, chunk_steps: int) -> Program:
    """The Program of a static plan, shared by every group with the same structure."""
    key = (json.dumps(plan, sort_keys=True), n_runs, chunk_steps)
    if key not in _PROGRAMS:
        _PROGRAMS[key] = Program(plan, n_runs, chunk_steps)
    return _PROGRAMS[key]


def snapshot_plan(budgets, chunk_steps: int) -> tuple[int, np.ndarray]:
    """The chunk length and every run's snapshot steps (runs x snapshots).

    Snapshot k of a run is due at step round(f_k x budget), f_k in `metrics.SNAPSHOT_FRACTIONS`. The
    chunk length is the largest up to `chunk_steps` that divides every such step, so that each is a chunk
    boundary; where that would take more than 5x as many chunks, the length is `chunk_steps` and a snapshot
    is taken at the first boundary at or after its step (`snap_step` records where it was taken).
    """
    due = np.round(np.asarray(metrics.SNAPSHOT_FRACTIONS)[None] * np.asarray(budgets)[:, None]).astype(np.int64)
    common = int(np.gcd.reduce(due[due > 0])) if (due > 0).any() else chunk_steps
    length = max(d for d in range(1, chunk_steps + 1) if common % d == 0)
    if 5 * length < chunk_steps:
        length = chunk_steps
    return length, (-(-due // length) * length).astype(np.int32)


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
    n_real: int  # runs before padding
    chunk_steps: int
    inputs: tuple  # (hyper, seeds, snap_at, unit_state, data) on the devices
    stops: np.ndarray  # per padded run: stops training at convergence
    due: list[int]  # the steps at which some run takes a snapshot


def prepare(plan: dict, runs: list[Run], *, steps: int, chunk_steps: int) -> Prepared:
    """Builds and compiles the program of one group and puts its inputs on the devices (no training).

    Thread-safe: the runner prepares the next groups in a background thread while one trains, so that
    compiling (one core on a CPU) overlaps training.
    """
    # Padding: copies of the last run fill the run axis up to a multiple of the device count; they finish
    # when it does, and their results are dropped.
    padded = runs + [runs[-1]] * (padded_count(len(runs)) - len(runs))
    chunk_steps, snap_at = snapshot_plan([r.hyper["budget"] for r in padded], min(chunk_steps, steps))
    prog = program(plan, len(padded), chunk_steps)
    hyper = {k: np.asarray([r.hyper[k] for r in padded], np.int32 if k == "budget" else np.float32)
             for k in runs[0].hyper}
    seeds = np.asarray([r.seed for r in padded], np.int32)
    due = sorted(set(snap_at.flat))
    inputs = (*jax.device_put((hyper, seeds, snap_at, prog.unit_state(seeds)), prog.runs_sharding),
              jax.device_put(prog.task.data, prog.replicated))
    prog.compile_all(*inputs)
    return Prepared(prog, len(runs), chunk_steps, inputs,
                    np.array([r.hyper["stop_at_convergence"] > 0 for r in padded]), due)


def train_group(plan: dict, runs: list[Run], *, steps: int, chunk_steps: int,
                on_chunk: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
                prepared: Prepared | None = None) -> GroupResult:
    """Trains every run of one static plan together and returns their per-run results.

    Args:
      plan: the static plan (traced values blanked) the runs share.
      runs: the runs; their hyperparameters hold lr, transform parameters,
        budget, factor, smoothing and stop_at_convergence (1: a converged run
        stops training, so its final numbers are those at convergence).
      steps: the largest budget among the runs.
      chunk_steps: steps per compiled chunk (the host stops early once every run is done).
      on_chunk: called after every chunk with (steps done, diverged, converged) per run.
      prepared: `prepare`'s result for these arguments, if made ahead.
    """
    p = prepared or prepare(plan, runs, steps=steps, chunk_steps=chunk_steps)
    prog, n_real, chunk_steps, stops, due = p.prog, p.n_real, p.chunk_steps, p.stops, p.due
    hyper, seeds, snap_at, unit_state, data = p.inputs
    carry, snaps = prog.init(seeds, hyper, data, unit_state), prog.snapshots(len(stops))
    losses, norms, diag_traces, chunk_times = [], [], [], []
    done = 0
    while True:
        if done in due:  # finished before the next chunk's clock starts
            snaps = jax.block_until_ready(prog.measure(carry, snaps, hyper, seeds, snap_at, data, done))
        if done >= steps:
            break
        t0 = time.perf_counter()
        carry, (loss, norm, diag) = prog.chunk(carry, hyper, seeds, data, done)
        status = jax.device_get({k: carry[k] for k in ("diverged", "converge_step")})
        chunk_times.append(time.perf_counter() - t0)
        losses.append(np.asarray(loss)[:n_real])
        norms.append(np.asarray(norm)[:n_real])
        diag_traces.append({k: np.asarray(v)[:n_real] for k, v in diag.items()})
        done += chunk_steps
        if on_chunk:
            on_chunk(min(done, steps), status["diverged"][:n_real], status["converge_step"][:n_real] >= 0)
        if np.all(status["diverged"] | ((status["converge_step"] >= 0) & stops)):
            break
    for t in due:  # every run stopped early: the snapshots still due measure the parameters they hold
        if t > done:
            snaps = prog.measure(carry, snaps, hyper, seeds, snap_at, data, t)
    evaluation = jax.tree.map(lambda x: np.asarray(x)[:n_real], jax.device_get(prog.evaluate(carry, data)))
    host, arrays = jax.tree.map(lambda x: np.asarray(x)[:n_real], jax.device_get((carry, snaps)))
    arrays.update({k: host[k] for k in ("loss_0", "kernel_rank_0", "diverged", "divergence_step", "converge_step",
                                        "max_grad_norm", "skipped_steps")})
    arrays.update({k: np.asarray(v) for k, v in host["diagnostics"].items()})
    arrays["final_loss_scale"] = np.asarray(host["loss_scale"]["scale"])
    # The first call of a compiled program pays one-off costs (on a GPU, seconds): throughput is timed on
    # the calls after it, with one extra (discarded) chunk when the runs were all done after the first.
    if len(chunk_times) == 1:
        t0 = time.perf_counter()
        jax.block_until_ready(prog.chunk(carry, hyper, seeds, data, done))
        chunk_times.append(time.perf_counter() - t0)
    # Per timed chunk steps/s: the median is the throughput, the quartiles its spread (a shared machine's noise).
    rates = chunk_steps / np.asarray(chunk_times[1:])
    steps_per_s = float(np.median(rates))
    q25, q75 = (float(q) for q in np.percentile(rates, [25, 75]))
    batch = plan["task"].get("batch_size", 1)
    arrays.update({
        "final_train_loss": np.asarray(evaluation["train_eval"][0]),
        "final_train_metric": np.asarray(evaluation["train_eval"][1]),
        "final_validation_loss": np.asarray(evaluation["validation"][0]),
        "final_validation_metric": np.asarray(evaluation["validation"][1]),
        "final_heldout_loss": np.asarray(evaluation["heldout"][0]),
        "final_heldout_metric": np.asarray(evaluation["heldout"][1]),
        "final_kernel_rank": np.asarray(evaluation["kernel_rank"]),
    })
    return GroupResult(
        runs=runs, arrays=arrays, param_names=prog.param_names,
        loss_trace=np.concatenate(losses, 1)[:, :steps], grad_norm_trace=np.concatenate(norms, 1)[:, :steps],
        diagnostic_traces={k: np.concatenate([d[k] for d in diag_traces], 1)[:, :steps]
                           for k in prog.model_diagnostics},
        diagnostics=prog.model_diagnostics,
        throughput={
            "steps_per_s": steps_per_s,  # median over the timed chunks
            "steps_per_s_iqr": [q25, q75],
            "timed_chunks": len(rates),
            "examples_per_s": steps_per_s * batch * len(runs),
            "runs_per_program": len(runs),
            "devices": prog.mesh.size,  # the run axis (padded to a multiple of it) is sharded over these
            "compile_s": prog.compile_s,
            "flops_per_step": prog.flops_per_step,
            "achieved_flops_per_s": prog.flops_per_step * steps_per_s if prog.flops_per_step else None,
            "chunk_steps": chunk_steps,
        },
    )
