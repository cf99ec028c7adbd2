"""The shapes of a results directory's files, checked where they are read (results.jsonl, suite.json).

Everything downstream (reports, verdicts, compare, export, merge, resume) trusts a record that passed here:
a file that breaks a shape is refused in one line naming the file, the line, the key and what is allowed.
A shape is a type (str, int, bool, NUMBER: an int or float, never a bool), `Opt(shape)` (or null or absent), `[shape]`
(a list of such items), `Seeds(shape)` (such a list with one item per seed), or a dict of key -> shape (those
keys required, others allowed).

JSON's non-standard NaN and Infinity tokens are refused everywhere (records write a non-finite number as null,
or an infinity as the string "inf"/"-inf"): `loads` is the one JSON reader of these files.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any


SCHEMA_VERSION = 2  # of the records bench/records/cell.py writes (CURRENT below)


class Invalid(ValueError):
    """A value that breaks its shape; the message names the key and what is allowed (the caller adds the file)."""


NUMBER = "number"
POSITIVE = "positive number"


@dataclasses.dataclass(frozen=True)
class Opt:
    shape: Any


@dataclasses.dataclass(frozen=True)
class Seeds:
    """A list with one item (of `shape`) per seed of the record's config.seeds."""

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


_NAMES = {str: "a string", int: "an integer", bool: "true or false", float: "a number", dict: "an object",
          list: "a list", NUMBER: "a number", POSITIVE: "a number > 0"}


def _describe(shape) -> str:
    if isinstance(shape, Opt):
        return f"{_describe(shape.shape)} or null"
    if isinstance(shape, (list, Seeds)):
        inner = shape[0] if isinstance(shape, list) else shape.shape
        return f"a list of {_describe(inner).removeprefix('a ').removeprefix('an ')}s" if not isinstance(
            inner, (Opt, list, Seeds, dict)) else f"a list (of {_describe(inner)})"
    if isinstance(shape, dict):
        return "an object"
    if isinstance(shape, tuple):
        return " or ".join(map(_describe, shape))
    return _NAMES[shape]


def _got(value) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check(value, shape, where: str, seeds: int | None = None) -> None:
    """Invalid (naming `where`, the key path) unless `value` has `shape`."""
    if isinstance(shape, Opt):
        if value is not None:
            check(value, shape.shape, where, seeds)
        return
    if isinstance(shape, tuple):  # any one of these shapes
        for one in shape:
            try:
                return check(value, one, where, seeds)
            except Invalid:
                pass
        raise Invalid(f"{where or 'top level'}: expected {_describe(shape)}, got {_got(value)}")
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            raise Invalid(f"{where or 'top level'}: expected {_describe(shape)}, got {_got(value)}")
        for key, inner in shape.items():
            if key not in value and isinstance(inner, Opt):
                continue  # an optional key may be absent
            if key not in value:
                raise Invalid(f"{where}.{key}: missing; allowed: {_describe(inner)}".lstrip("."))
            check(value[key], inner, f"{where}.{key}".lstrip("."), seeds)
        return
    if isinstance(shape, (list, Seeds)):
        inner = shape[0] if isinstance(shape, list) else shape.shape
        if not isinstance(value, list):
            raise Invalid(f"{where or 'top level'}: expected {_describe(shape)}, got {_got(value)}")
        if isinstance(shape, Seeds) and seeds is not None and len(value) != seeds:
            raise Invalid(f"{where}: {len(value)} values for the record's {seeds} seeds (config.seeds); allowed: "
                          "one value per seed")
        for i, item in enumerate(value):
            check(item, inner, f"{where}[{i}]", seeds)
        return
    ok = {NUMBER: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          POSITIVE: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}.get(
        shape, lambda v: isinstance(v, shape))(value)
    if not ok:
        raise Invalid(f"{where or 'top level'}: expected {_describe(shape)}, got {_got(value)}")


NUM = Opt(NUMBER)  # a recorded number: null where it was not finite
EXTENDED = Opt((NUMBER, str))  # json_extended: a number, "inf"/"-inf", or null

# What every record of every schema version holds (compare reads schema 1 too).
CORE = {
    "cell_id": str,
    "schema_version": int,
    "suite": str,
    "experiment": str,
    "label": str,
    "config": {"seeds": int, "steps": int, "task": dict, "model": dict, "optimizer": dict, "mitigation": dict},
    "per_seed": {"diverged": Seeds(bool)},
    "throughput": {"steps_per_s": Opt(POSITIVE)},
    "env": {"timestamp": str, "versions": dict},
}
# A record of the current schema (bench/records/cell.py writes it).
CURRENT = {
    **CORE,
    "plan": dict,
    "thresholds": {"trivial_loss": NUMBER, "divergence_factor": NUMBER, "collapse_fraction": NUMBER,
                   "smoothing": NUMBER, "target": NUMBER},
    "divergence_rate": NUMBER, "divergence_rate_ci": [NUMBER],
    "failure_rate": NUMBER, "failure_rate_ci": [NUMBER],
    "converged": int, "median_steps_to_converge": NUM, "steps_to_converge_ci": [NUM],
    "quality": dict,
    "per_seed": {
        "seed": Seeds(int), "diverged": Seeds(bool), "divergence_step": Seeds(Opt(int)),
        "steps_to_converge": Seeds(Opt(int)), "collapsed": Seeds(bool), "trained": Seeds(bool),
        **{k: Seeds(NUM) for k in ("loss_0", "final_train_loss", "final_heldout_loss", "final_train_metric",
                                   "final_heldout_metric", "final_validation_loss", "final_validation_metric",
                                   "max_grad_norm", "kernel_rank_init", "kernel_rank_final")},
    },
    "explosion": {"axis": str, "fractions": [NUMBER], "per_seed": dict},
    "trace": {"step": [int], "loss": Seeds([NUM]), "grad_norm": Seeds([NUM])},
    "throughput": {"steps_per_s": Opt(POSITIVE), "chunk_steps": int},
    "env": {"timestamp": str, "python": str, "backend": str, "device_kind": str, "device_count": int,
            "xla_flags": str, "git_dirty": bool, "git_commit": Opt(str),
            "versions": {k: str for k in ("jax", "jaxlib", "flax", "optax", "numpy")}},
}

# suite.json (bench.engine.runner.suite_record writes it; older ones may lack suite_from_out and experiments).
SUITE = {
    "name": str,
    "path": str,
    "settings": {"seeds": int, "steps": Opt(int), "chunk_steps": int, "trace_points": int},
    "claims": [{"id": (str, int), "comparison": [{"experiment": str}]}],
    "experiments": Opt([dict]),
    "suite_from_out": Opt(str),
}


# replication.json (bench replicate writes it beside the results; the report reads it).
REPLICATION = {
    "init_perturbation": NUMBER,
    "cells": int,
    "claims": [{"claim": (str, int), "verdict": str}],
    "answers": [{"claim": (str, int), "comparison": int, "question": str, "verdict": str,
                 "stability": Opt(NUMBER), "effect": EXTENDED, "ci": Opt([EXTENDED])}],
}


def record(value, current: bool) -> None:
    """Invalid unless `value` is a results record (of the current schema when `current`)."""
    if not isinstance(value, dict):
        raise Invalid(f"expected a results record (a JSON object), got {_got(value)}")
    config = value.get("config")
    seeds = config.get("seeds") if isinstance(config, dict) else None
    seeds = seeds if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1 else None
    check(value, CORE, "", None)
    if seeds is None:
        raise Invalid(f"config.seeds: {_got(config.get('seeds'))} is not a seed count; allowed: an integer >= 1")
    check(value, CURRENT if current else CORE, "", seeds)


def suite(value) -> None:
    """Invalid unless `value` is a suite.json object."""
    check(value, SUITE, "")
