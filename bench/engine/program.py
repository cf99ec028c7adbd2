"""The compiled programs of a static plan: every run (seeds x learning rates x traced hyperparameters and
initial scales) of the cells that share it trains in ONE program.

Per run, a carry (`RunState`: params, batch statistics, optimiser state and
a `Tally` of the divergence/convergence status) goes through `lax.scan` over
a chunk of steps, `vmap`ped over a tile of runs. A run that diverges is frozen (its updates
masked), so it neither poisons the others nor crashes the program.

The run axis is sharded over every local device (a one-axis `Mesh`, the
compiled programs given their shardings explicitly); a run count that the
device count does not divide is padded with copies of the last run (by
`gradbench.engine.loop`), whose results are dropped. Per-run results do not depend
on the device count.

Explosion is measured by a third program, called between chunks at the
snapshot steps: on that step's batch it differentiates the loss with respect
to the parameters and to a zero shift added to every layer's pre-activation
(every time step's hidden state for recurrent models), and keeps the
per-layer gradient norms, the per-parameter weight norms and the norm of the
update the optimiser makes from that gradient (docs/METHODS.md). The training
step itself carries none of it.

Diagnostics: per run the carry reduces scalars over the steps it trains:
the fractions of exactly-zero and of non-finite gradient entries (largest
over steps: underflow and overflow), and, for a model with `diagnostics`
(models/__init__.py), each of its scalars by its declared reduction (max or
min, starting from the value at initialisation); their per-step values
form traces. Loss scaling (optim.loss_scale_*) multiplies the loss before the
backward pass; a step it skips is counted, not treated as divergence.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import json
import threading
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gradbench.engine import flops
from gradbench.records import metrics
from gradbench.spec import build, optim
from gradbench.spec.build import make_model, make_task
from gradbench.spec.schema import SNAPSHOT_FRACTIONS

TRACE_COUNT = {"chunk": 0}  # incremented when a chunk program is traced; tests count compilations
COMPILES = {"programs": 0, "seconds": 0.0}  # Programs compiled in this process and their total compile seconds


class Tally(NamedTuple):
    """A run's outcomes as it trains: per-run scalars that the group's result keeps under these names
    (gradbench.engine.loop) and a record copies per seed (gradbench.records.validate.PER_SEED)."""

    loss_0: jax.Array  # the training loss before the first update (whole training-evaluation set, training mode)
    kernel_rank_0: jax.Array  # the unit rank at initialisation (metrics.kernel_rank)
    diverged: jax.Array
    divergence_step: jax.Array  # -1: never
    converge_step: jax.Array  # -1: never
    max_grad_norm: jax.Array  # over the steps it trained (a non-finite norm counts as infinite)
    skipped_steps: jax.Array  # steps that dynamic loss scaling skipped


class RunState(NamedTuple):
    """One run's carry through training (a pytree: the programs vmap it over a tile's runs)."""

    params: Any
    rest: Any  # the model's other state (batch statistics)
    opt_state: Any
    ema: jax.Array  # the training loss's moving average, read for convergence
    n_updates: jax.Array  # updates applied (the average's debiasing)
    loss_scale: dict  # dynamic loss scaling (optim.loss_scale_*)
    diagnostics: dict  # name -> its reduction over the steps trained (module docstring)
    tally: Tally


def seed_keys(seed):
    """One root key per seed, split once by purpose: (init, data)."""
    k_init, k_data = jax.random.split(jax.random.key(seed))
    return k_init, k_data


PERTURBATION_TAG = 0x9E7B  # folded into a seed's root key: the perturbation's key, independent of (init, data)


def perturb(params, seed, eps):
    """Every parameter entry times (1 + eps x N(0, 1)), the normals drawn from the seed's own perturbation key in
    one draw of as many normals as the parameters have entries, dealt to the leaves in order (one draw compiles
    one random-bits kernel; a draw per leaf compiled one per leaf). eps is traced: eps = 0 leaves every entry bit
    for bit (x * 1.0 == x)."""
    leaves, treedef = jax.tree.flatten(params)
    sizes = [x.size for x in leaves]
    normals = jax.random.normal(jax.random.fold_in(jax.random.key(seed), PERTURBATION_TAG), (sum(sizes),), jnp.float32)
    offsets = np.cumsum([0, *sizes])
    leaves = [(x.astype(jnp.float32) * (1 + eps * normals[a:b].reshape(x.shape))).astype(x.dtype)
              for x, a, b in zip(leaves, offsets[:-1], offsets[1:])]
    return jax.tree.unflatten(treedef, leaves)


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


# Runs per tile. Every run is computed in a tile of exactly `tile_runs(plan)` runs (`Program` docstring), a
# number that depends on the backend and the model alone, never on the group around a run: at most
# TILE_RUNS[backend], halved while a tile's step would exceed TILE_FLOPS[backend] model FLOPs. A larger tile
# wastes less per-operation overhead (XLA:CPU's dominates on small models); a smaller one compiles faster, lets
# finished runs be dropped at a finer grain and costs a group of few runs less (a tile is computed whole: one
# seed alone pays for the tile). On a CPU, a run's throughput stops growing with the tile near 2e8 FLOPs a
# tile-step (docs/PERFORMANCE.md, "Tiles").
TILE_RUNS = {"cpu": 16, "gpu": 64, "tpu": 64}
TILE_FLOPS = {"cpu": 2e8, "gpu": 1e11, "tpu": 1e11}


# XLA options each program is compiled with, per platform. On a CPU, LLVM's default optimisation level (2)
# instead of XLA's aggressive one (3): the suites' programs are small and many, and at level 2 they compile 10-45%
# faster and train no slower (docs/PERFORMANCE.md, "Compiling"). The level changes results in the last bits.
COMPILER_OPTIONS = {"cpu": {"xla_backend_optimization_level": 2}}


@functools.lru_cache(maxsize=None)
def _forward_flops(task_json: str, model_json: str) -> float:
    task = make_task(build.structure_task(json.loads(task_json)))
    x, _ = jax.eval_shape(lambda: task.sample(task.data, jax.random.key(0)))
    model_cfg = build.unit_scales(json.loads(model_json))
    traced = jax.make_jaxpr(lambda x: make_model(model_cfg, task, jax.random.key(0))(x, train=True))(x)
    return flops.count(traced.jaxpr)


def forward_flops(plan: dict) -> float:
    """Model FLOPs of one prediction on a training batch (traced abstractly) of a static plan."""
    return _forward_flops(json.dumps(plan["task"], sort_keys=True), json.dumps(plan["model"], sort_keys=True))


def tile_runs(plan: dict | None = None, backend: str | None = None) -> int:
    """Runs per tile for a static plan on a backend (default: JAX's); GRADBENCH_TILE_RUNS overrides it."""
    import os

    if os.environ.get("GRADBENCH_TILE_RUNS"):
        return int(os.environ["GRADBENCH_TILE_RUNS"])
    backend = backend or jax.default_backend()
    tile = TILE_RUNS.get(backend, 16)
    if plan is not None:
        per_run = 3 * forward_flops(plan)  # forward and backward pass
        while tile > 1 and tile * per_run > TILE_FLOPS.get(backend, 1e11):
            tile //= 2
    return tile


def _gather(tree, idx):
    """Rows `idx` of every leaf (an index past the end reads the last row: a tile's unused slot)."""
    return jax.tree.map(lambda x: jnp.take(x, idx, axis=0, mode="clip"), tree)


def _over_tiles(table, count, state, step):
    """`state` after `step(state, idx)` for the first `count` tiles of `table` (this device's: 1 x tiles x runs)."""
    return jax.lax.fori_loop(0, count[0], lambda i, s: step(s, table[0, i]), state)


def _scatter(tree, idx, rows):
    """`tree` with rows `idx` replaced by `rows` (an index past the end is dropped: a tile's unused slot)."""
    return jax.tree.map(lambda x, y: x.at[idx].set(y, mode="drop"), tree, rows)


def run_mesh(n_runs: int) -> Mesh:
    """A one-axis mesh ("runs") over every local device, or over one device when their count does not
    divide `n_runs` (`gradbench.engine.loop.prepare` pads the runs so that it does)."""
    devices = jax.local_devices()
    if n_runs % len(devices):
        devices = devices[:1]
    return Mesh(np.array(devices), ("runs",))


def padded_count(n_runs: int, tile: int) -> int:
    """The run count rounded up to whole tiles on every local device (the extra runs are dropped).

    Whole tiles: every device holds at least one tile's worth of distinct rows, so XLA never sees a run axis
    of one (which it would simplify, computing that run differently from a run among others)."""
    unit = jax.local_device_count() * tile
    return -(-n_runs // unit) * unit


class Program:
    """The compiled init / chunk / evaluate functions of one static plan and run count."""

    def __init__(self, plan: dict, n_runs: int, chunk_steps: int):
        self.plan, self.chunk_steps = plan, chunk_steps
        # Counting zero and non-finite gradient entries is two passes over every parameter per step: done
        # where precision is the question (a low-precision dtype, or loss scaling), else recorded as null.
        self.count_entries = bool(plan.get("loss_scaling")) or plan["model"].get("dtype", "float32") != "float32"
        # A traced data_seed (None in the plan): the group's datasets are stacked (`stack_data`) and each run
        # trains on its own (hyper["dataset"]); the task of data_seed 0 gives the shapes and functions.
        self.per_run_data = plan["task"].get("data_seed", 0) is None
        self.task = make_task(build.structure_task(plan["task"]))
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
        # Tiles: every program computes its runs in tiles of `tile` runs (a loop over the tiles that a table lists,
        # each tile a vmap over its runs), so a run's numbers do not depend on the run count or on which runs
        # share its tile; the chunk is given only the tiles of runs still training (`full_table`, `table`).
        self.platform = self.mesh.devices.flat[0].platform
        self.tile = tile_runs(plan, self.platform)
        self.n_runs, self.n_local = n_runs, n_runs // self.mesh.size
        self.max_tiles = -(-self.n_local // self.tile)
        per_tile = lambda fn, axes: _over_runs(fn, axes, self.tile)  # noqa: E731
        init_tile = per_tile(self._init_one, (0, 0, 0, None))
        chunk_tile = per_tile(self._chunk_one, (0, 0, 0, None, None))
        measure_tile = per_tile(self._measure_one, (0, 0, 0, 0, 0, None, None))
        evaluate_tile = per_tile(self._evaluate_one, (0, 0, None))

        def rows_like(fn, fill, *args):  # `fill` rows for every local run, shaped like fn's output per run
            shapes = jax.eval_shape(fn, *args)
            return jax.tree.map(lambda x: jnp.full((self.n_local, *x.shape[1:]), fill, x.dtype), shapes)

        def init(table, count, hyper, seeds, unit_state, data):
            first = _gather((hyper, seeds, unit_state), table[0, 0])
            return _over_tiles(table, count, rows_like(init_tile, 0, *first, data), lambda out, idx: _scatter(
                out, idx, init_tile(*_gather((hyper, seeds, unit_state), idx), data)))

        def chunk(table, count, carry, hyper, seeds, data, start):
            TRACE_COUNT["chunk"] += 1
            _, traces = jax.eval_shape(chunk_tile, _gather(carry, table[0, 0]), *_gather((hyper, seeds), table[0, 0]),
                                       data, start)
            traces = jax.tree.map(lambda x: jnp.full((self.n_local, *x.shape[1:]), jnp.nan, x.dtype), traces)

            def step(state, idx):
                rows = chunk_tile(_gather(state[0], idx), *_gather((hyper, seeds), idx), data, start)
                return _scatter(state, idx, rows)

            carry, traces = _over_tiles(table, count, (carry, traces), step)
            return carry, traces, (carry.tally.diverged, carry.tally.converge_step)

        def measure(table, count, carry, snaps, hyper, seeds, snap_at, data, t):
            return _over_tiles(table, count, snaps, lambda out, idx: _scatter(out, idx, measure_tile(
                _gather(carry, idx), _gather(out, idx), *_gather((hyper, seeds, snap_at), idx), data, t)))

        def evaluate(table, count, carry, hyper, data):
            first = _gather((carry, hyper), table[0, 0])
            return _over_tiles(table, count, rows_like(evaluate_tile, jnp.nan, *first, data), lambda out, idx: _scatter(
                out, idx, evaluate_tile(*_gather((carry, hyper), idx), data)))

        on_runs, once = self.runs_sharding, self.replicated
        runs_spec, once_spec = PartitionSpec("runs"), PartitionSpec()

        def sharded(local, name, n_per_run, n_once, donate=()):
            """A jitted program over the run axis, each device looping over its own runs' tiles (`shard_map`)."""
            local.__name__ = local.__qualname__ = name  # the persistent cache's file names
            mapped = jax.shard_map(local, mesh=self.mesh, in_specs=(runs_spec,) * (2 + n_per_run) + (once_spec,) * n_once,
                                   out_specs=runs_spec, check_vma=False)
            return jax.jit(mapped, donate_argnums=donate,
                           in_shardings=(on_runs,) * (2 + n_per_run) + (once,) * n_once, out_shardings=on_runs)

        self._init = sharded(init, "_init_one", 3, 1)
        self._chunk = sharded(chunk, "_chunk_one", 3, 2, donate=(2,))
        self._measure = sharded(measure, "_measure_one", 5, 2, donate=(3,))
        self._evaluate = sharded(evaluate, "_evaluate_one", 2, 1)
        self._full = None
        self.compiled = {}  # name -> compiled executable
        self.compile_s = 0.0  # init + chunk + measure + evaluate
        self.flops_per_run_step = None  # model FLOPs of one run's step

    def stack_data(self, data_seeds: list[int]):
        """The data argument of the programs: the task's data, or, with a traced data_seed, the datasets of
        `data_seeds` stacked on a leading axis (at least two, so that no run's dataset is a constant to XLA)."""
        if not self.per_run_data:
            return self.task.data
        seeds = list(data_seeds) * (2 if len(data_seeds) == 1 else 1)
        tasks = [make_task({**self.plan["task"], "data_seed": int(s)}) for s in seeds]
        return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *[t.data for t in tasks])

    def _data(self, data, hyper):
        """A run's data: its dataset where data_seed is traced."""
        return jax.tree.map(lambda d: d[hyper["dataset"]], data) if self.per_run_data else data

    def _threshold(self, hyper, name):
        """The task's trivial loss or target: per run where the runs carry it (their datasets differ)."""
        return hyper[name] if name in hyper else getattr(self.task, name)

    # Pure per-run functions -------------------------------------------------
    def _unit_state_one(self, seed):
        """A seed's model parameters and other state, every traced initial scale at 1."""
        k_init, _ = seed_keys(seed)
        return nnx.split(make_model(self.model_cfg, self.task, k_init), nnx.Param, ...)[1:]

    def unit_state(self, seeds: np.ndarray):
        """`_unit_state_one` of every run, made op by op under vmap over the distinct seeds, not compiled.

        The random initialisers (a threefry hash per layer) are most of what an init program would take to
        compile; run op by op, each operation compiles once per shape and every later group with layers of
        that shape reuses it. Runs of one seed share its state. Seeds are made `tile` at a time (the last tile
        padded), so a seed's state does not depend on which others are made with it.
        """
        unique, index = np.unique(seeds, return_inverse=True)
        padded = np.resize(unique, -(-len(unique) // self.tile) * self.tile).astype(np.int32)
        tiles = [jax.vmap(self._unit_state_one)(jnp.asarray(padded[i:i + self.tile]))
                 for i in range(0, len(padded), self.tile)]
        state = jax.tree.map(lambda *xs: jnp.concatenate(xs), *tiles)
        return jax.tree.map(lambda x: x[index], state)

    def _init_one(self, hyper, seed, unit_state, data):
        data = self._data(data, hyper)
        params, rest = unit_state
        params = build.scale_init(params, self.init_powers, {k: hyper[f"model.{k}"] for k in self.init_powers})
        if self.plan.get("init_perturbation"):
            params = perturb(params, seed, hyper["init_perturbation"])
        zero = jnp.zeros((), jnp.float32)
        # loss_0: the training loss before the first update on the whole training-evaluation set (in training
        # mode). It is recorded, not a threshold: thresholds are relative to the task's trivial loss.
        loss_0, (_, _, diag_0) = self._loss(params, rest, *data["train_eval"], True)
        never = jnp.full((), -1, jnp.int32)
        return RunState(
            params=params, rest=rest, opt_state=optim.build(self.plan, hyper, self.lr_groups).init(params),
            ema=zero, n_updates=jnp.zeros((), jnp.int32), loss_scale=optim.loss_scale_init(self.plan, hyper),
            diagnostics={**diag_0, **dict.fromkeys(("grad_zero_fraction", "grad_nonfinite_fraction"),
                                                   zero if self.count_entries else jnp.full((), jnp.nan))},
            tally=Tally(loss_0=loss_0, kernel_rank_0=metrics.kernel_rank(params), diverged=jnp.zeros((), bool),
                        divergence_step=never, converge_step=never, max_grad_norm=zero,
                        skipped_steps=jnp.zeros((), jnp.int32)))

    def _empty_snapshots(self, n_runs: int) -> dict:
        n_snap = len(SNAPSHOT_FRACTIONS)
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
        return c.tally.diverged | ((c.tally.converge_step >= 0) & (hyper["stop_at_convergence"] > 0))

    def _measure_one(self, c, snaps, hyper, seed, snap_at, data, t):
        """Takes the snapshots due at step `t` (where `snap_at == t`) on the parameters the run holds.

        On step t's batch: the norm of the loss's gradient with respect to every layer's pre-activation (a
        zero shift added there), the norm of every parameter, and the norm of the update the optimiser makes
        from the parameter gradient (null for a run that no longer updates). A run that stopped earlier
        (converged with early stop, diverged, or ran its budget) holds the parameters of its last applied
        update; `snap_step` says from which step they are (for a diverged run, those whose loss exploded).
        """
        _, data_key = seed_keys(seed)
        x, y = self.task.sample(self._data(data, hyper), jax.random.fold_in(data_key, t))
        shifts = [jnp.zeros(s.shape, s.dtype) for s in self.preact_shapes]
        scale = c.loss_scale["scale"]
        (grads, g_shifts), _ = jax.grad(self._objective, argnums=(2, 6), has_aux=True)(
            hyper, scale, c.params, c.rest, x, y, shifts)
        if self.plan.get("loss_scaling"):
            grads, g_shifts = jax.tree.map(lambda g: g / scale, (grads, g_shifts))
        updates, _ = optim.build(self.plan, hyper, self.lr_groups).update(grads, c.opt_state, c.params)
        leaf_norms = lambda tree: jnp.stack([jnp.linalg.norm(x) for x in jax.tree.leaves(tree)])  # noqa: E731
        stopped = self._stopped(c, hyper)
        at = snap_at == t
        held_from = jnp.where(c.tally.diverged, c.tally.divergence_step,
                              jnp.where(stopped, c.tally.converge_step + 1, jnp.minimum(t, hyper["budget"])))
        return {
            "snap_step": jnp.where(at, held_from, snaps["snap_step"]),
            "snap_log_preact_grad": jnp.where(at[:, None], jnp.stack([metrics.log_norm(g) for g in g_shifts]),
                                              snaps["snap_log_preact_grad"]),
            "snap_weight_norm": jnp.where(at[:, None], leaf_norms(c.params), snaps["snap_weight_norm"]),
            "snap_update_norm": jnp.where(at[:, None] & ~stopped, leaf_norms(updates), snaps["snap_update_norm"]),
        }

    def _step(self, hyper, tx, data_key, data, c, t):
        x, y = self.task.sample(data, jax.random.fold_in(data_key, t))
        scale = c.loss_scale["scale"]
        (_, (loss, (_, rest, diag))), grads = jax.value_and_grad(self._objective, argnums=2, has_aux=True)(
            hyper, scale, c.params, c.rest, x, y, None)
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
        loss_scale, skip = optim.loss_scale_update(self.plan, hyper, c.loss_scale, grads_finite)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, c.opt_state, c.params)
        params = optax.apply_updates(c.params, updates)

        # A run is done once it diverged, ran its budget, or converged when it stops there: then
        # its results do not depend on which other runs share the program.
        active = ~self._stopped(c, hyper) & (t < hyper["budget"])
        # A step that dynamic loss scaling skips (non-finite gradients) is not divergence; its loss still counts.
        boom = active & metrics.exploded(loss, jnp.where(skip, 0.0, grad_norm), self._threshold(hyper, "trivial_loss"),
                                         hyper["factor"], t, c.tally.loss_0)
        keep = active & ~boom & ~skip
        ema = jnp.where(keep, metrics.ema_update(c.ema, loss, hyper["smoothing"]), c.ema)
        n_updates = c.n_updates + keep
        smoothed = metrics.debiased(ema, hyper["smoothing"], n_updates)
        converged = keep & (c.tally.converge_step < 0) & (smoothed <= self._threshold(hyper, "target"))
        pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, old)  # noqa: E731
        safe_norm = jnp.where(jnp.isfinite(grad_norm), grad_norm, jnp.inf)
        tally = c.tally
        carry = RunState(
            params=pick(params, c.params), rest=pick(rest, c.rest), opt_state=pick(opt_state, c.opt_state),
            ema=ema, n_updates=n_updates,
            loss_scale=jax.tree.map(lambda a, b: jnp.where(active & ~boom, a, b), loss_scale, c.loss_scale),
            diagnostics=self._reduce(c.diagnostics, diag, active),
            tally=tally._replace(
                diverged=tally.diverged | boom,
                divergence_step=jnp.where(boom, t, tally.divergence_step),
                converge_step=jnp.where(converged, t, tally.converge_step),
                max_grad_norm=jnp.where(active, jnp.maximum(tally.max_grad_norm, safe_norm), tally.max_grad_norm),
                skipped_steps=tally.skipped_steps + (active & ~boom & skip)))
        traced = {k: jnp.where(active, diag[k], jnp.nan) for k in self.model_diagnostics}
        return carry, (jnp.where(active, loss, jnp.nan), jnp.where(active, grad_norm, jnp.nan), traced)

    def _chunk_one(self, carry, hyper, seed, data, start):
        _, data_key = seed_keys(seed)
        tx = optim.build(self.plan, hyper, self.lr_groups)
        step = functools.partial(self._step, hyper, tx, data_key, self._data(data, hyper))
        return jax.lax.scan(step, carry, start + jnp.arange(self.chunk_steps))

    def _evaluate_one(self, carry, hyper, data):
        data = self._data(data, hyper)
        out = {}
        for split, name in (("train_eval", "train"), ("validation", "validation"), ("heldout", "heldout")):
            x, y = data[split]
            loss, (pred, _, _) = self._loss(carry.params, carry.rest, x, y, False)
            out[f"final_{name}_loss"], out[f"final_{name}_metric"] = loss, self.task.metric(pred, y)
        out["final_kernel_rank"] = metrics.kernel_rank(carry.params)
        return out

    # Compiling and calling the programs -----------------------------------------
    def _compile(self, name: str, jitted, *args) -> None:
        """Compiles `jitted` for `args` (arrays or ShapeDtypeStructs) once (timed into compile_s and COMPILES)."""
        if name in self.compiled:
            return
        COMPILES["programs"] += not self.compiled
        t0 = time.perf_counter()
        traced = jitted.trace(*args)
        self.compiled[name] = traced.lower().compile(compiler_options=COMPILER_OPTIONS.get(self.platform))
        seconds = time.perf_counter() - t0
        self.compile_s += seconds
        COMPILES["seconds"] += seconds
        if name == "chunk":  # FLOPs counted from the jaxpr: one tile's (a loop body counts once), per run
            self.flops_per_run_step = flops.count(traced.jaxpr) / self.chunk_steps / self.tile or None

    def _run(self, name: str, jitted, *args):
        """Calls `jitted`, compiled ahead of time on first use."""
        self._compile(name, jitted, *args)
        return self.compiled[name](*args)

    def table(self, active: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(table, count) of the tiles to compute: per device, its runs that `active` marks (all when None), in
        order, packed into tiles of `tile` runs (`table`: devices x max tiles x tile, an unused slot holding
        the local run count) and how many tiles hold them (`count`: per device)."""
        n, tile, k = self.n_local, self.tile, self.max_tiles
        table = np.full((self.mesh.size, k * tile), n, np.int32)
        count = np.zeros(self.mesh.size, np.int32)
        for d in range(self.mesh.size):
            local = np.arange(n) if active is None else np.flatnonzero(np.asarray(active)[d * n:(d + 1) * n])
            table[d, :len(local)] = local
            count[d] = -(-len(local) // tile)
        return table.reshape(self.mesh.size, k, tile), count

    def full_table(self):
        """`table()` on the devices: every run."""
        if getattr(self, "_full", None) is None:
            self._full = jax.device_put(self.table(), self.runs_sharding)
        return self._full

    def compile_all(self, hyper, seeds, snap_at, unit_state, data, compiling=contextlib.nullcontext) -> None:
        """Compiles init, chunk, measure and evaluate for these inputs without running anything, each inside
        `compiling()`."""
        table = self.full_table()
        with compiling():  # tracing takes a core too
            carry = jax.eval_shape(self._init, *table, hyper, seeds, unit_state, data)
        carry = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.runs_sharding), carry)
        snaps = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.runs_sharding),
                             self._empty_snapshots(len(seeds)))
        step = jax.ShapeDtypeStruct((), jnp.int32)
        for name, jitted, args in (("init", self._init, (hyper, seeds, unit_state, data)),
                                   ("chunk", self._chunk, (carry, hyper, seeds, data, step)),
                                   ("measure", self._measure, (carry, snaps, hyper, seeds, snap_at, data, step)),
                                   ("evaluate", self._evaluate, (carry, hyper, data))):
            with compiling():
                self._compile(name, jitted, *table, *args)

    def init(self, seeds, hyper, data, unit_state=None):
        """The initial carry of every run (`unit_state`: `unit_state(seeds)` on the devices, if made already)."""
        if unit_state is None:
            unit_state = jax.device_put(self.unit_state(np.asarray(seeds)), self.runs_sharding)
        return self._run("init", self._init, *self.full_table(), hyper, seeds, unit_state, data)

    def chunk(self, carry, hyper, seeds, data, start, table=None):
        """Runs one chunk of steps from step `start` (the carry is donated) for the runs of `table` (`table()`,
        on the devices; None: every run): the others keep their carry and have NaN traces.

        Returns (carry, (loss, grad norm, model diagnostics) per run and step, (diverged, converge_step) per
        run): the status is a copy that the next chunk's donation of the carry leaves readable."""
        table = self.full_table() if table is None else table
        return self._run("chunk", self._chunk, *table, carry, hyper, seeds, data, jnp.int32(start))

    def measure(self, carry, snaps, hyper, seeds, snap_at, data, t):
        """Takes the snapshots due at step `t` (the snapshot arrays are donated)."""
        return self._run("measure", self._measure, *self.full_table(), carry, snaps, hyper, seeds, snap_at, data,
                         jnp.int32(t))

    def evaluate(self, carry, hyper, data, table=None):
        """Loss and metric on the training-evaluation, validation and held-out sets of the runs of `table`
        (None: every run; the others' are NaN)."""
        table = self.full_table() if table is None else table
        return self._run("evaluate", self._evaluate, *table, carry, hyper, data)


# The most recently used Programs, shared by groups with the same structure. Bounded: every compiled program
# holds its executables' memory and memory maps (a suite of 44 programs kept alive passed Linux's default
# limit of 65,530 maps per process and crashed in LLVM); one evicted and needed again is compiled again
# (from the persistent compilation cache where it is on).
MAX_PROGRAMS = 4
_PROGRAMS: collections.OrderedDict = collections.OrderedDict()
_PROGRAMS_LOCK = threading.Lock()


def program(plan: dict, n_runs: int, chunk_steps: int, n_datasets: int = 1) -> Program:
    """The Program of a static plan, shared by every group with the same structure (while it is recent).

    n_datasets: where data_seed is traced, how many datasets the group's data stacks (a shape of its inputs)."""
    key = (json.dumps(plan, sort_keys=True), n_runs, chunk_steps, n_datasets, tile_runs(plan))
    with _PROGRAMS_LOCK:
        if key not in _PROGRAMS:
            _PROGRAMS[key] = Program(plan, n_runs, chunk_steps)
        _PROGRAMS.move_to_end(key)
        while len(_PROGRAMS) > MAX_PROGRAMS:
            _PROGRAMS.popitem(last=False)
        return _PROGRAMS[key]
