"""Tasks and models from canonical configs (shared by validation and the engine)."""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os

import jax
import numpy as np
from flax import nnx

from gradbench.models import FAMILIES
from gradbench.tasks import TASKS


@functools.lru_cache(maxsize=None)
def _task(task_json: str):
    cfg = json.loads(task_json)
    module = TASKS[cfg.pop("name")]
    config = module.Config(**cfg)
    _check_data_size(module, config)  # before `make` allocates anything
    return module.make(config)


class TooLarge(ValueError):
    """A task or model that cannot fit in memory, refused before anything is allocated; the message names the key."""


def _grown(config, defaults) -> list[str]:
    """The integer keys of a config set above their defaults (what made it large), in field order."""
    return [f.name for f in dataclasses.fields(config) if isinstance(getattr(config, f.name), int)
            and not isinstance(getattr(config, f.name), bool) and isinstance(getattr(defaults, f.name), int)
            and getattr(config, f.name) > getattr(defaults, f.name)]


def _check_data_size(module, config) -> None:
    """TooLarge if making the task's data (`data_bytes`, the task's own count) would not fit in memory."""
    size = module.data_bytes(config)
    if size <= 2**28 or os.environ.get("GRADBENCH_MEMORY_CHECK", "1") == "0":
        return
    available, where = available_memory()
    if size > available:
        keys = _grown(config, module.Config()) or ["n_train"]
        given = ", ".join(f"{k}={getattr(config, k)}" for k in keys if hasattr(config, k))
        raise TooLarge(f"task.{keys[0]}: making this task's data ({given}) needs about {_gib(size)}, more than "
                       f"the {_gib(available)} of {where}; allowed: a task that fits (fewer examples, shorter "
                       "sequences, a smaller vocabulary)")


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**27 else f"{n / 2**20:.3g} MiB"


def make_task(task_cfg: dict):
    """The task of a canonical task config (cached: its data is made once per process)."""
    return _task(json.dumps(task_cfg, sort_keys=True))


def structure_task(task_cfg: dict) -> dict:
    """A task config with a traced `data_seed` (None in a static plan) at 0: a task of the same shapes."""
    return {**task_cfg, "data_seed": 0} if task_cfg.get("data_seed", 0) is None else task_cfg


def make_model(model_cfg: dict, task, key):
    """A fresh Flax model of a canonical model config, shaped for `task`."""
    cfg = dict(model_cfg)
    module = FAMILIES[cfg.pop("family")]
    return module.Model(module.Config(**cfg), task.input_shape, task.output_dim,
                        sequence_output=task.sequence_output, rngs=nnx.Rngs(params=key))


# Compile-time guard: XLA's compile time grows faster than the program, so a very deep model would compile for
# minutes or hang. A model's layer counts and its prediction's traced operations are refused beyond these.
MAX_LAYERS = 256  # each of LAYER_KEYS (tracing alone grows faster than linearly: depth 300 takes ~15 s on a CPU)
LAYER_KEYS = ("depth", "layers", "stages", "blocks_per_stage")
MAX_OPS = 20_000  # operations of one prediction, nested ones counted (the largest suite's: about 3,100)


def count_ops(jaxpr) -> int:
    """Operations of a jaxpr, those of nested jaxprs (scan, cond, pjit, custom_vjp) counted too."""
    n = 0
    for eqn in jaxpr.eqns:
        n += 1
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", None)
                inner = getattr(inner, "jaxpr", inner)
                if inner is not None and hasattr(inner, "eqns"):
                    n += count_ops(inner)
    return n


def _traced(task, model_cfg: dict):
    """(init, forward, params, rest): the jaxprs of the model's initialisation and of its prediction on a training
    batch, and its abstract parameters and other state. Traced once for both guards: the model's initialisation,
    the costly part of tracing, is not traced again for the memory estimate."""
    graphdef = []

    def init():
        definition, params, rest = nnx.split(make_model(model_cfg, task, jax.random.key(0)), nnx.Param, ...)
        graphdef.append(definition)  # static: the structure merge needs, no arrays
        return params, rest

    init_jaxpr, (params, rest) = jax.make_jaxpr(init, return_shape=True)()
    x, _ = jax.eval_shape(lambda: task.sample(task.data, jax.random.key(0)))
    forward = jax.make_jaxpr(lambda p, r, x: nnx.merge(graphdef[0], p, r, copy=True)(x, train=True))(params, rest, x)
    return init_jaxpr, forward, params, rest


@functools.lru_cache(maxsize=None)
def _check(task_json: str, model_json: str) -> None:
    task, model_cfg = _task(task_json), json.loads(model_json)
    init, forward, params, rest = _traced(task, model_cfg)
    ops = count_ops(init.jaxpr) + count_ops(forward.jaxpr)  # initialisation and prediction, as one program
    if ops > MAX_OPS:
        raise ValueError(f"the model's prediction traces to {ops:,} operations, more than {MAX_OPS:,} (compiling it "
                         f"would take minutes or hang); allowed: a smaller model (fewer layers)")
    _check_run_size(_sizes(task, forward, params, rest), model_cfg)


def _sizes(task, forward, params, rest) -> dict[str, int]:
    activations, _ = _intermediates(forward.jaxpr)
    return {"params": _nbytes(params), "activations": activations, "data": _nbytes(task.data),
            "per_run": 3 * _nbytes(params) + _nbytes(rest) + activations}


def _run_bytes(task, model_cfg: dict) -> dict[str, int]:
    _, forward, params, rest = _traced(task, model_cfg)
    return _sizes(task, forward, params, rest)


def run_bytes(task_cfg: dict, model_cfg: dict) -> dict[str, int]:
    """Bytes of one run without its optimiser (per_run: parameters x3 for their gradient and update, one training
    step's activations) and of the task's data, traced abstractly (nothing allocated beyond the task's data)."""
    return _run_bytes(make_task(task_cfg), unit_scales(model_cfg))


def refuse_if_too_large(size: dict, runs: int, key: str, what: str) -> None:
    """TooLarge (naming `key`) if `runs` runs and the data (`run_bytes`' sizes) exceed the memory available."""
    total = runs * size["per_run"] + 2 * size["data"]
    if total <= 2**28 or os.environ.get("GRADBENCH_MEMORY_CHECK", "1") == "0":
        return
    available, where = available_memory()
    if total > available:
        raise TooLarge(f"{key}: {what} needs about {_gib(total)} ({runs} run(s) of {_gib(size['per_run'])}: "
                       f"parameters {_gib(size['params'])} x3, activations {_gib(size['activations'])}; data "
                       f"{_gib(size['data'])} x2), more than the {_gib(available)} of {where}; allowed: "
                       f"{'fewer seeds, ' if runs > 1 else ''}a smaller model (width, depth) or batch")


def _check_run_size(size: dict, model_cfg: dict) -> None:
    """TooLarge if one run and the task's data (`_sizes`, traced abstractly: nothing allocated) would not fit."""
    if os.environ.get("GRADBENCH_MEMORY_CHECK", "1") == "0":
        return
    family = FAMILIES[model_cfg["family"]]
    config = family.Config(**{k: v for k, v in model_cfg.items() if k != "family"})
    keys = _grown(config, family.Config()) or ["width"]
    given = ", ".join(f"{k}={getattr(config, k)}" for k in keys if hasattr(config, k))
    refuse_if_too_large(size, 1, f"model.{keys[0]}", f"one run of this model ({given})")


def check(task_cfg: dict, model_cfg: dict) -> None:
    """Builds the task and (abstractly) the model and its prediction on a batch; raises ValueError/OSError if they
    do not fit. Initial scales change no shape: configs that differ only there are checked once."""
    structure = {k: (1.0 if k in INIT_SCALES else v) for k, v in model_cfg.items()}
    _check(json.dumps(task_cfg, sort_keys=True), json.dumps(structure, sort_keys=True))


# Initial scales that can be traced inputs: a sweep over them trains in one compiled program. The model is
# initialised with every one of them at 1, and each parameter leaf is multiplied by value ** power.
INIT_SCALES = ("weight_var", "bias_var", "recurrent_weight_var", "recurrent_scale", "readout_scale")
_PROBES = (4.0, 16.0)


def unit_scales(model_cfg: dict) -> dict:
    """The model config with every traced initial scale (None in a static plan) at 1."""
    return {k: (1.0 if k in INIT_SCALES and v is None else v) for k, v in model_cfg.items()}


def _param_leaves(model_cfg: dict, task) -> list[np.ndarray]:
    model = make_model(model_cfg, task, jax.random.key(0))
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(nnx.split(model, nnx.Param, ...)[1])]


def _power(base: np.ndarray, probes: list[np.ndarray]) -> float | None:
    """p with probe_v == v ** p * base for every probe value v, or None if there is no such power."""
    scale = np.linalg.norm(base)
    if scale == 0:
        return 0.0 if not any(np.any(x) for x in probes) else None
    p = math.log(np.linalg.norm(probes[0]) / scale) / math.log(_PROBES[0])
    fits = all(np.allclose(x, v ** p * base, rtol=1e-5, atol=1e-6 * scale / math.sqrt(base.size))
               for v, x in zip(_PROBES, probes))
    return p if fits else None


@functools.lru_cache(maxsize=None)
def _init_powers(task_json: str, model_json: str) -> dict[str, tuple[float, ...]]:
    task, unit = _task(task_json), json.loads(model_json)
    base = _param_leaves(unit, task)
    powers = {}
    for knob in (k for k in INIT_SCALES if k in unit):
        probes = [_param_leaves({**unit, knob: v}, task) for v in _PROBES]
        found = [_power(b, [p[i] for p in probes]) for i, b in enumerate(base)]
        if None not in found and any(found):
            powers[knob] = tuple(found)
    return powers


def init_powers(task_cfg: dict, model_cfg: dict) -> dict[str, tuple[float, ...]]:
    """Initial scale -> per parameter leaf, the power of its value that the leaf scales with.

    Found by initialising the model (with one fixed key) at 1 and at two larger values of each scale in
    INIT_SCALES that the config has: a scale is traced only where every leaf is exactly value ** power
    times its unit initialisation (the normal, orthogonal and constant initialisers: power 1/2 for a
    variance, 1 for a spectral scale; 0 for leaves it does not touch); otherwise it stays static.
    """
    unit = unit_scales({**model_cfg, **{k: None for k in INIT_SCALES if k in model_cfg}})
    return _init_powers(json.dumps(structure_task(task_cfg), sort_keys=True), json.dumps(unit, sort_keys=True))


def scale_init(params, powers: dict[str, tuple[float, ...]], values: dict):
    """Unit-scale initial parameters times value ** power per leaf (values: initial scale -> traced value)."""
    leaves, treedef = jax.tree.flatten(params)
    for knob, per_leaf in powers.items():
        leaves = [x if p == 0 else x * values[knob] ** p for x, p in zip(leaves, per_leaf)]
    return jax.tree.unflatten(treedef, leaves)


# Memory ------------------------------------------------------------------------------------------------------

def _itemsize(dtype) -> int:
    try:
        return np.dtype(dtype).itemsize
    except TypeError:  # a PRNG key
        return 8


def _nbytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * _itemsize(x.dtype) for x in jax.tree.leaves(tree) if hasattr(x, "shape"))


def _intermediates(jaxpr) -> tuple[int, int]:
    """(sum, largest) bytes of the values a jaxpr's operations make (nested ones counted)."""
    total = largest = 0
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            aval = v.aval
            if hasattr(aval, "shape"):
                size = int(np.prod(aval.shape)) * _itemsize(aval.dtype)
                total, largest = total + size, max(largest, size)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", None)
                inner = getattr(inner, "jaxpr", inner)
                if inner is not None and hasattr(inner, "eqns"):
                    t, m = _intermediates(inner)
                    total, largest = total + t, max(largest, m)
    return total, largest


def memory_estimate(plan: dict, hyper: dict, n_runs: int) -> dict[str, int]:
    """Bytes a group's programs hold at once (traced abstractly, nothing compiled or allocated).

    Per run: parameters (x3: the parameters, their gradient and the updated ones), optimiser state (x2: old and
    new), the activations of one training step (every value the prediction makes on a batch, kept for the
    backward pass) or of one evaluation (twice the largest value the prediction makes on the largest split),
    whichever is larger. Once: the task's data (x2: a host and a device copy). total = data + runs x per run.
    """
    from gradbench.spec import optim

    task = make_task(structure_task(plan["task"]))
    model_cfg = unit_scales(plan["model"])
    abstract = nnx.eval_shape(lambda: make_model(model_cfg, task, jax.random.key(0)))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    lr_groups = getattr(abstract, "lr_groups", None)
    lr_groups = lr_groups(optim.adaptive(plan)) if lr_groups else None
    opt_state = jax.eval_shape(lambda p: optim.build(plan, {k: np.float32(v) for k, v in hyper.items()},
                                                         lr_groups).init(p), params)
    x, _ = jax.eval_shape(lambda: task.sample(task.data, jax.random.key(0)))
    traced = jax.make_jaxpr(lambda p, r, x: nnx.merge(graphdef, p, r, copy=True)(x, train=True))(params, rest, x)
    step_sum, step_max = _intermediates(traced.jaxpr)
    batch = max(int(x.shape[0]), 1)
    largest_split = max(int(jax.tree.leaves(split)[0].shape[0]) for split in task.data.values())
    activations = max(step_sum, 2 * step_max * largest_split // batch)
    sizes = {"params": 3 * _nbytes(params) + _nbytes(rest), "optimizer": 2 * _nbytes(opt_state),
             "activations": activations, "data": 2 * _nbytes(task.data)}
    sizes["per_run"] = sizes["params"] + sizes["optimizer"] + sizes["activations"]
    sizes["total"] = sizes["data"] + n_runs * sizes["per_run"]
    return sizes


def available_memory() -> tuple[int, str]:
    """(bytes, where) the programs may use: on a GPU/TPU the first device's free memory (memory_stats); on a CPU
    the system's available memory (/proc/meminfo MemAvailable, else sysconf), less where an address-space limit
    (RLIMIT_AS) leaves this process less."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0)), f"{device.platform} device memory"
    available, where = None, "available system memory"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        pass
    if available is None:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/status") as f:
                used = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
            if soft - used < available:
                available, where = max(soft - used, 0), "address space left under this process's limit (RLIMIT_AS)"
    except (OSError, ValueError, StopIteration):
        pass
    return int(available), where
