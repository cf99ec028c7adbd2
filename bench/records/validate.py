"""The shapes of a results directory's files, checked where they are read (results.jsonl, suite.json).

Everything downstream (reports, verdicts, compare, export, merge, resume) trusts a record that passed here:
a file that breaks a shape is refused in one line naming the file, the line, the key and what is allowed.
This module is the one place a record's shape is declared (CORE, CURRENT, SUITE); gradbench.records.store applies
it to every file it reads, so run (resume), merge, report, compare and export refuse the same things with the same
words: `FILE: line N: KEY: VALUE; allowed: WHAT`, exit status 2, nothing written.

A shape is a type (str, int, bool, dict), a named scalar (NUMBER: an int or float, never a bool; POSITIVE, RATE,
COUNT, INF), a tuple (any one of its shapes), `Opt(shape)` (or null or absent), `[shape]` (a list of such items),
`Seeds(shape)` (such a list with one item per seed), `Two(shape)` (exactly two), or a dict of key -> shape (those
keys required, others allowed).

JSON's non-standard NaN and Infinity tokens are refused everywhere (records write a non-finite number as null,
or an infinity as the string "inf"/"-inf"): `loads` is the one JSON reader of these files.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from gradbench.spec.claim_schema import EXPECT, MEASURES


SCHEMA_VERSION = 2  # of the records bench/records/cell.py writes (CURRENT below)


class Invalid(ValueError):
    """A value that breaks its shape; the message names the key and what is allowed (the caller adds the file)."""


NUMBER = "number"
POSITIVE = "positive number"  # finite: a file's non-finite tokens are refused as it is read (`loads`)
RATE = "rate"  # a number from 0 to 1
COUNT = "count"  # an integer >= 1
INF = "inf"  # the string "inf" or "-inf" (json_extended's infinity)


@dataclasses.dataclass(frozen=True)
class Opt:
    shape: Any


@dataclasses.dataclass(frozen=True)
class Seeds:
    """A list with one item (of `shape`) per seed of the record's config.seeds."""

    shape: Any


@dataclasses.dataclass(frozen=True)
class OneOf:
    """One of these values (a measure's or an expectation's name)."""

    values: tuple


@dataclasses.dataclass(frozen=True)
class Two:
    """A list of exactly two items of `shape` (an interval, a pair of quartiles)."""

    shape: Any


class _Constant(str):
    """A NaN, Infinity or -Infinity token where `loads` found one."""


class _Found(Exception):
    pass


def _raise(name: str):
    raise _Found(name)


def _where(value, path: str = "") -> str | None:
    """The key path of the first _Constant in a decoded value."""
    if isinstance(value, _Constant):
        return path or "top level"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _where(item, f"{path}.{key}".lstrip(".") if isinstance(key, str) else f"{path}[{key}]")
        if found:
            return found
    return None


def loads(text: str):
    """json.loads refusing NaN, Infinity and -Infinity (Invalid, naming the key); json.JSONDecodeError for text
    that is not JSON."""
    try:
        return json.loads(text, parse_constant=_raise)
    except _Found as e:
        where = _where(json.loads(text, parse_constant=_Constant))
        raise Invalid(f"{where}: {e} is not a JSON number (records write a non-finite number as null, an infinity "
                      "as \"inf\" where kept); allowed: a number or null") from None


def _real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# What each scalar shape accepts, its name, and its name in the plural (a list of them).
_SCALARS = {
    str: (lambda v: isinstance(v, str), "a string", "strings"),
    int: (_integer, "an integer", "integers"),
    bool: (lambda v: isinstance(v, bool), "true or false", "true/false values"),
    dict: (lambda v: isinstance(v, dict), "an object", "objects"),
    NUMBER: (_real, "a number", "numbers"),
    POSITIVE: (lambda v: _real(v) and v > 0, "a number > 0", "numbers > 0"),
    RATE: (lambda v: _real(v) and 0 <= v <= 1, "a number from 0 to 1", "numbers from 0 to 1"),
    COUNT: (lambda v: _integer(v) and v >= 1, "an integer >= 1", "integers >= 1"),
    INF: (lambda v: v in ("inf", "-inf"), '"inf" or "-inf"', '"inf"/"-inf" strings'),
    None: (lambda v: v is None, "null", "nulls"),  # in a tuple: a key that must be present, and may be null
}


def _describe(shape, plural: bool = False) -> str:
    if isinstance(shape, Opt):
        return f"{_describe(shape.shape, plural)} or null" if not plural else f"{_describe(shape.shape, True)} or nulls"
    if isinstance(shape, tuple):
        return " or ".join(_describe(one, plural) for one in shape)
    if isinstance(shape, (list, Seeds, Two)):
        inner = shape[0] if isinstance(shape, list) else shape.shape
        count = {Seeds: " (one per seed)", Two: ""}.get(type(shape), "")
        text = f"{'two' if isinstance(shape, Two) else 'a list of'} {_describe(inner, True)}{count}"
        return text if not plural else f"lists ({text})"
    if isinstance(shape, dict):
        return "objects" if plural else "an object"
    if isinstance(shape, OneOf):
        return f"one of {', '.join(shape.values)}"
    return _SCALARS[shape][2 if plural else 1]


def _got(value) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _refuse(where: str, value, shape):
    return Invalid(f"{where or 'top level'}: {_got(value)}; allowed: {_describe(shape)}")


def check(value, shape, where: str, seeds: int | None = None) -> None:
    """Invalid (naming `where`, the key path, the value and what is allowed) unless `value` has `shape`."""
    if isinstance(shape, Opt):
        if value is None:
            return
        if isinstance(shape.shape, (dict, list, Seeds, Two)) and isinstance(value, (dict, list)):
            return check(value, shape.shape, where, seeds)  # the error names the key inside
        try:
            return check(value, shape.shape, where, seeds)
        except Invalid:
            raise _refuse(where, value, shape) from None
    if isinstance(shape, tuple):  # any one of these shapes
        for one in shape:
            try:
                return check(value, one, where, seeds)
            except Invalid:
                pass
        raise _refuse(where, value, shape)
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            raise _refuse(where, value, shape)
        for key, inner in shape.items():
            if key not in value and isinstance(inner, Opt):
                continue  # an optional key may be absent
            if key not in value:
                raise Invalid(f"{where}.{key}: missing; allowed: {_describe(inner)}".lstrip("."))
            check(value[key], inner, f"{where}.{key}".lstrip("."), seeds)
        return
    if isinstance(shape, (list, Seeds, Two)):
        inner = shape[0] if isinstance(shape, list) else shape.shape
        if not isinstance(value, list):
            raise _refuse(where, value, shape)
        if isinstance(shape, Two) and len(value) != 2:
            raise Invalid(f"{where}: {len(value)} value{'s' if len(value) != 1 else ''}; allowed: {_describe(shape)}")
        if isinstance(shape, Seeds) and seeds is not None and len(value) != seeds:
            raise Invalid(f"{where}: {len(value)} values for the record's {seeds} seeds (config.seeds); allowed: "
                          f"{_describe(shape)}")
        for i, item in enumerate(value):
            check(item, inner, f"{where}[{i}]", seeds)
        return
    if not (value in shape.values if isinstance(shape, OneOf) else _SCALARS[shape][0](value)):
        raise _refuse(where, value, shape)


NUM = Opt(NUMBER)  # a recorded number: null where it was not finite
EXTENDED = Opt((NUMBER, INF))  # json_extended: a number, "inf"/"-inf", or null


@dataclasses.dataclass(frozen=True)
class SeedField:
    """A per-seed value of a record copied from the engine: `per_seed[name]` holds the group's array `array`
    (gradbench.engine.loop.GroupResult.arrays) for each seed, as an int or a number (null where not finite),
    and null for a seed that diverged where `alive` (a diverged run has no final numbers)."""

    name: str
    array: str = ""  # default: the same name
    kind: type = float
    alive: bool = False

    @property
    def source(self) -> str:
        return self.array or self.name

    @property
    def shape(self):
        return Seeds(int if self.kind is int else NUM)


# The per-seed values a record copies from its runs: bench/records/cell.py writes them in this order and CURRENT
# requires them. A new per-seed quantity is a field of the engine's run state or evaluation
# (gradbench.engine.program: RunState.tally, Program._evaluate_one) and one line here.
PER_SEED = (
    SeedField("loss_0"),
    SeedField("final_train_loss", alive=True),
    SeedField("final_heldout_loss", alive=True),
    SeedField("final_train_metric", alive=True),
    SeedField("final_heldout_metric", alive=True),
    SeedField("final_validation_loss", alive=True),
    SeedField("final_validation_metric", alive=True),
    SeedField("max_grad_norm"),
    SeedField("kernel_rank_init", "kernel_rank_0"),
    SeedField("kernel_rank_final", "final_kernel_rank", alive=True),
    SeedField("grad_zero_fraction"),
    SeedField("grad_nonfinite_fraction"),
    SeedField("skipped_steps", kind=int),
    SeedField("final_loss_scale"),
)

# What every record of every schema version holds, and what compare reads of it (compare reads schema 1 too).
# The engine always times a program and calibrates its yardsticks: a rate that is null, 0 or negative is a
# damaged record. A per-seed value compare ranks may be a number, "inf"/"-inf" or null (ranked last).
CORE = {
    "cell_id": str,
    "schema_version": int,
    "suite": str,
    "experiment": str,
    "label": str,
    "config": {"seeds": COUNT, "steps": COUNT, "task": dict, "model": dict, "optimizer": dict, "mitigation": dict},
    "per_seed": {"diverged": Seeds(bool), "trained": Opt(Seeds(bool)),
                 **{k: Opt(Seeds(EXTENDED)) for k in ("steps_to_converge", "final_heldout_loss", "critical_lr")}},
    "throughput": {"steps_per_s": POSITIVE, "steps_per_s_iqr": Opt(Two(POSITIVE)), "cpu_steps_per_s": Opt(POSITIVE),
                   "chunk_steps_per_s": Opt([POSITIVE]), "chunk_cpu_steps_per_s": Opt([POSITIVE])},
    "env": {"timestamp": str, "versions": dict, "scan_flops_per_s": Opt(POSITIVE),
            "matmul_flops_per_s": Opt(POSITIVE)},
}
# A record of the current schema (bench/records/cell.py writes it): what report, export, merge and resume read.
CURRENT = {
    **CORE,
    "plan": dict,
    "thresholds": {"trivial_loss": NUMBER, "divergence_factor": NUMBER, "collapse_fraction": NUMBER,
                   "smoothing": NUMBER, "target": NUMBER},
    "divergence_rate": RATE, "divergence_rate_ci": Two(RATE),
    "failure_rate": RATE, "failure_rate_ci": Two(RATE),
    "converged": int, "median_steps_to_converge": NUM, "steps_to_converge_ci": Two(NUM),
    "quality": dict,
    "per_seed": {
        **CORE["per_seed"],
        "seed": Seeds(int), "divergence_step": Seeds(Opt(int)),
        "steps_to_converge": Seeds(Opt(int)), "collapsed": Seeds(bool), "trained": Seeds(bool),
        **{f.name: f.shape for f in PER_SEED},
    },
    "explosion": {"axis": str, "fractions": [NUMBER], "per_seed": dict},
    "trace": {"step": [int], "loss": Seeds([NUM]), "grad_norm": Seeds([NUM])},
    "throughput": {**CORE["throughput"], "chunk_steps": int},
    "env": {**CORE["env"], "python": str, "backend": str, "device_kind": str, "device_count": int,
            "xla_flags": str, "git_dirty": bool, "git_commit": Opt(str),
            "versions": {k: str for k in ("jax", "jaxlib", "flax", "optax", "numpy")}},
}

# A claim's question as bench/spec/claim_schema.py validates it (every key written, null where not set).
QUESTION = {"experiment": str, "variant_experiment": (str, None), "baseline": dict, "variant": dict,
            "measure": OneOf(MEASURES), "expect": OneOf(EXPECT), "lr": (POSITIVE, None), "at": NUMBER,
            "label": (str, None)}
# suite.json (gradbench.engine.runner.suite_record writes it; older ones may lack suite_from_out and experiments).
SUITE = {
    "name": str,
    "path": str,
    "settings": {"seeds": COUNT, "steps": Opt(COUNT), "chunk_steps": COUNT, "trace_points": int,
                 "min_effect": Opt(POSITIVE)},
    "claims": [{"id": (str, int), "title": str, "question": str, "rationale": str, "note": Opt(str),
                "primary": QUESTION, "secondary": [QUESTION]}],
    "experiments": Opt([dict]),
    "suite_from_out": Opt(str),
    "plugins": Opt([{"name": str, "module": str, "sha256": str}]),  # gradbench.spec.plugins, imported again on reading
}


def record(value, current: bool) -> None:
    """Invalid unless `value` is a results record (of the current schema when `current`)."""
    if not isinstance(value, dict):
        raise Invalid(f"expected a results record (a JSON object), got {_got(value)}")
    config = value.get("config")
    seeds = config.get("seeds") if isinstance(config, dict) else None
    # config.seeds (checked before any per-seed list: config comes first) sets the length of every per-seed list.
    check(value, CURRENT if current else CORE, "", seeds if _SCALARS[COUNT][0](seeds) else None)


def suite(value) -> None:
    """Invalid unless `value` is a suite.json object."""
    check(value, SUITE, "")
