"""The compiled programs of a static plan: every run (seeds x learning rates x traced hyperparameters and
initial scales) of the cells that share it trains in ONE program.

Per run, a carry of pure pytrees (params, batch statistics, optimiser state
and the divergence/convergence status) goes through `lax.scan` over a chunk
of steps, `vmap`ped over runs. A run that diverges is frozen (its updates
masked), so it neither poisons the others nor crashes the program.

The run axis is sharded over every local device (a one-axis `Mesh`, the
compiled programs given their shardings explicitly); a run count that the
device count does not divide is padded with copies of the last run (by
`bench.engine.loop`), whose results are dropped. Per-run results do not depend
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
import functools
import json
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bench.engine import flops
from bench.records import metrics
from bench.spec import build, optim
from bench.spec.build import make_model, make_task
from bench.spec.schema import SNAPSHOT_FRACTIONS

TRACE_COUNT = {"chunk": 0}  # incremented when a chunk program is traced; tests count compilations
COMPILES = {"programs": 0, "seconds": 0.0}  # Programs compiled in this process and their total compile seconds

def seed_keys(seed):
    """One root key per seed, split once by purpose: (init, data)."""
    k_init, k_data = jax.random.split(jax.random.key(seed))
    return k_init, k_data


PERTURBATION_TAG = 0x9E7B  # folded into a seed's root key: the perturbation's key, independent of (init, data)


def perturb(params, seed, eps):
    """Every parameter entry times (1 + eps x N(0, 1)), the normals drawn from the seed's own perturbation key
    (one per leaf). eps is traced: eps = 0 leaves every entry bit for bit (x * 1.0 == x)."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), PERTURBATION_TAG), len(leaves))
    leaves = [(x.astype(jnp.float32) * (1 + eps * jax.random.normal(k, x.shape, jnp.float32))).astype(x.dtype)
              for x, k in zip(leaves, keys)]
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


def run_mesh(n_runs: int) -> Mesh:
    """A one-axis mesh ("runs") over every local device, or over one device when their count does not
    divide `n_runs` (`bench.engine.loop.prepare` pads the runs so that it does)."""
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
        self._init = jax.jit(_over_runs(self._init_one, (0, 0, 0, None), n_runs),
                            in_shardings=(on_runs, on_runs, on_runs, once), out_shardings=on_runs)
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

    def _init_one(self, hyper, seed, unit_state, data):
        params, rest = unit_state
        params = build.scale_init(params, self.init_powers, {k: hyper[f"model.{k}"] for k in self.init_powers})
        if self.plan.get("init_perturbation"):
            params = perturb(params, seed, hyper["init_perturbation"])
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

    # Compiling and calling the programs -----------------------------------------
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
        carry = jax.eval_shape(self._init, hyper, seeds, unit_state, data)
        snaps = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.runs_sharding),
                             self._empty_snapshots(len(seeds)))
        step = jax.ShapeDtypeStruct((), jnp.int32)
        self._compile("init", self._init, hyper, seeds, unit_state, data)
        self._compile("chunk", self._chunk, carry, hyper, seeds, data, step)
        self._compile("measure", self._measure, carry, snaps, hyper, seeds, snap_at, data, step)
        self._compile("evaluate", self._evaluate, carry, data)

    def init(self, seeds, hyper, data, unit_state=None):
        """The initial carry of every run (`unit_state`: `unit_state(seeds)` on the devices, if made already)."""
        if unit_state is None:
            unit_state = jax.device_put(self.unit_state(np.asarray(seeds)), self.runs_sharding)
        return self._run("init", self._init, hyper, seeds, unit_state, data)

    def chunk(self, carry, hyper, seeds, data, start):
        """Runs one chunk of steps from step `start` (the carry is donated)."""
        return self._run("chunk", self._chunk, carry, hyper, seeds, data, jnp.int32(start))

    def measure(self, carry, snaps, hyper, seeds, snap_at, data, t):
        """Takes the snapshots due at step `t` (the snapshot arrays are donated)."""
        return self._run("measure", self._measure, carry, snaps, hyper, seeds, snap_at, data, jnp.int32(t))

    def evaluate(self, carry, data):
        """Loss and metric of every run on the training-evaluation, validation and held-out sets."""
        return self._run("evaluate", self._evaluate, carry, data)


# The most recently used Programs, shared by groups with the same structure. Bounded: every compiled program
# holds its executables' memory and memory maps (a suite of 44 programs kept alive passed Linux's default
# limit of 65,530 maps per process and crashed in LLVM); one evicted and needed again is compiled again
# (from the persistent compilation cache where it is on).
MAX_PROGRAMS = 4
_PROGRAMS: collections.OrderedDict = collections.OrderedDict()
_PROGRAMS_LOCK = threading.Lock()


def program(plan: dict, n_runs: int, chunk_steps: int) -> Program:
    """The Program of a static plan, shared by every group with the same structure (while it is recent)."""
    key = (json.dumps(plan, sort_keys=True), n_runs, chunk_steps)
    with _PROGRAMS_LOCK:
        if key not in _PROGRAMS:
            _PROGRAMS[key] = Program(plan, n_runs, chunk_steps)
        _PROGRAMS.move_to_end(key)
        while len(_PROGRAMS) > MAX_PROGRAMS:
            _PROGRAMS.popitem(last=False)
        return _PROGRAMS[key]
