"""The type-and-range primitive of suite validation: one `Key` per key, stated once.

Below it, the checks of a value, a choice and a table against their Keys,
raising `SuiteError` (file, key, what is allowed). bench/spec/suite.py holds the
tables of keys of [suite] and [[experiment]], bench/spec/claim_schema.py those of
[[claim]]; bench/spec/optim.py declares its optimiser keys and each mitigation's
parameters with the same `Key`; model and task keys come from their Config
dataclasses (type hints, CHOICES, __post_init__). Adding a key is one line:
`"name": Key(float, 1.0, gt=0)`.

Every float must be finite (NaN and Inf are results, never inputs) and must
survive its conversion to float32, the dtype every traced value becomes: a
value beyond float32's range, a nonzero value below its smallest normal number
(XLA flushes subnormals to zero), or one whose float32 rounding breaks the
key's range (smoothing 0.99999999 is 1.0) is refused. A bool is never a
number; an int is accepted where a float is wanted (3 and 3.0 are one value);
-0.0 is 0.0.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
from typing import Any

REQUIRED = ...  # the default of a key the suite must give
INT_LIMIT = 2**31  # ints (steps, sizes, counts) must stay below this: XLA indexes with int32
FLOAT32_MAX = 3.4028234663852886e38  # the largest finite float32
FLOAT32_TINY = 1.1754943508222875e-38  # the smallest normal float32: XLA flushes smaller magnitudes to zero
# Fractions of the step budget at which explosion is measured during training (docs/METHODS.md); a claim's
# `at` is one of them.
SNAPSHOT_FRACTIONS = (0.0, 0.1, 0.5, 1.0)


class Invalid(ValueError):
    """A value that breaks its key's rule; the message says what is allowed."""


@dataclasses.dataclass(frozen=True)
class Key:
    """One key: its type, default, range and allowed values.

    Attributes:
      type: bool, int, float, str, dict (a table), or list (with `of`: the type of its items).
      default: REQUIRED, None (optional, no value), or the value used when the key is absent.
      gt, ge, lt, le: the range of a number (strict or not).
      choices: the allowed values (a tuple), or None for any.
      of: for type list, the type of each item.
      nonempty: a list must have at least one item.
      log_grid: a float that may also be a log-spaced grid table {min, max, per_decade}.
      doc: a few words for `bench list`.
      traced: for a parameter of the training plan (an optimiser key, a transform's, an auxiliary loss's, the
        loss scaling's): True, an input of the compiled program (a float32 however it is typed: sweeping it never
        recompiles); False, part of the compiled program's identity (cells that differ in it compile apart).
        bench/spec/optim.py derives both halves of a plan (`traced_values`, `static_plan`) from it.
    """

    type: Any
    default: Any = REQUIRED
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: tuple | None = None
    of: Any = None
    nonempty: bool = False
    log_grid: bool = False
    doc: str = ""
    traced: bool = False

    def allowed(self) -> str:
        """What the key accepts, in words (for messages and `bench list`)."""
        name = f"a list of {_PLURAL.get(self.of, 'values')}" if self.type is list else _name(self.type)
        parts = []
        if self.type in (int, float):
            bounds = [f"> {self.gt:g}" if self.gt is not None else None, f">= {self.ge:g}" if self.ge is not None
                      else None, f"< {self.lt:g}" if self.lt is not None else None,
                      f"<= {self.le:g}" if self.le is not None else None]
            parts = [b for b in bounds if b]
            if self.type is float:
                parts.append("finite in float32")
        if self.choices is not None:
            parts.append("(one of " + ", ".join(map(str, self.choices)) + ")")
        text = name + (" " + ", ".join(parts) if parts else "")
        return text + (" (or a log-spaced grid {min, max, per_decade})" if self.log_grid else "")

    def check(self, value):
        """The value converted (int -> float) and checked; Invalid saying what is allowed otherwise."""
        if self.type is list:
            if not isinstance(value, list) or (self.of is not None and not all(_is(v, self.of) for v in value)):
                raise Invalid(f"expected {self.allowed()}, got {_show(value)}")
            if self.nonempty and not value:
                raise Invalid("must not be empty")
            item = dataclasses.replace(self, type=self.of, of=None) if self.of is not None else None
            return [item.check(v) for v in value] if item else value
        if self.log_grid and isinstance(value, dict):
            return log_grid(value)
        if self.type is int and isinstance(value, float) and value.is_integer():
            value = int(value)  # 3.0 where a key is integral is 3: one value, one cell id
        if not _is(value, self.type):
            raise Invalid(f"expected {self.allowed()}, got {_show(value)}")
        if self.type is float:
            value = float(value) + 0.0  # an int -> float; -0.0 -> 0.0
            if not math.isfinite(value):
                raise Invalid(f"must be finite, got {value}; allowed: {self.allowed()}")
            if abs(value) > FLOAT32_MAX:
                raise Invalid(f"{value!r} overflows float32 (largest {FLOAT32_MAX:.4g}), the dtype it is traced "
                              f"as; allowed: {self.allowed()}")
            if value != 0 and abs(value) < FLOAT32_TINY:
                raise Invalid(f"{value!r} is below float32's smallest normal number ({FLOAT32_TINY:.4g}), so it "
                              f"would be 0 in the compiled program; allowed: {self.allowed()}")
        if self.type in (int, float) and not isinstance(value, bool):
            limit = INT_LIMIT if self.type is int else math.inf
            if not self._in_range(value) or abs(value) >= limit:
                below = " (below 2**31)" if self.type is int and self.lt is None and self.le is None else ""
                raise Invalid(f"{value!r} is out of range; allowed: {self.allowed()}{below}")
            if self.type is float and not self._in_range(float32(value)):
                raise Invalid(f"{value!r} is {float32(value)!r} in float32, the dtype it is traced as, which is "
                              f"out of range; allowed: {self.allowed()}")
        if self.choices is not None and value not in self.choices:
            raise Invalid(f"{value!r} is not allowed; allowed: {', '.join(map(str, self.choices))}")
        return value


    def _in_range(self, value) -> bool:
        return not ((self.gt is not None and not value > self.gt) or (self.ge is not None and not value >= self.ge)
                    or (self.lt is not None and not value < self.lt) or (self.le is not None and not value <= self.le))


def float32(value: float) -> float:
    """`value` rounded to float32 (and back to a Python float)."""
    import numpy as np

    return float(np.float32(value))


_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a table"}
_PLURAL = {bool: "booleans", int: "integers", float: "numbers", str: "strings", dict: "tables"}


SLUG_BYTES = 96  # an experiment's part of its plots' file names (a file name holds at most 255 bytes)


def slug(name: str) -> str:
    """An experiment's name as a file name (its plots'): letters and digits kept, every other character '-'; a
    name longer than SLUG_BYTES (UTF-8) is cut and ends in a hash of the whole name, so any valid name gives file
    names a file system accepts, and different names different ones."""
    text = "".join(c if c.isalnum() else "-" for c in name).strip("-")
    if len(text.encode()) <= SLUG_BYTES:
        return text
    import hashlib

    head = text.encode()[:SLUG_BYTES - 13].decode("utf-8", "ignore").rstrip("-")
    return f"{head}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"


def _name(typ) -> str:
    if isinstance(typ, tuple):
        return " or ".join(map(_name, typ))
    return _NAMES.get(typ, getattr(typ, "__name__", str(typ)))


def _is(value, typ) -> bool:
    if isinstance(typ, tuple):
        return any(_is(value, t) for t in typ)
    if typ is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, typ)


def _show(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


GRID_KEYS = {"min": Key(float, gt=0), "max": Key(float, gt=0), "per_decade": Key(int, ge=1, le=1000)}
MAX_GRID = 10_000  # values in one log-spaced grid


def log_grid(table: dict) -> list[float]:
    """{min, max, per_decade} -> log-spaced values, both ends included, each rounded to 12 significant digits.

    n = round(per_decade * log10(max / min)), at least 1 when max > min (so max is never dropped); values =
    10 ** linspace(log10(min), log10(max), n + 1), the ends exactly min and max (each must have at most 12
    significant digits).
    """
    import numpy as np

    extra = set(table) - set(GRID_KEYS)
    if extra:
        raise Invalid(f"unknown grid key {sorted(extra)[0]!r}; a log-spaced grid is {{min, max, per_decade}}")
    values = {}
    for k, key in GRID_KEYS.items():
        if k not in table:
            raise Invalid(f"a log-spaced grid needs min, max and per_decade (missing {k})")
        try:
            values[k] = key.check(table[k])
        except Invalid as e:
            raise Invalid(f"grid {k}: {e}") from None
    lo, hi, per_decade = values["min"], values["max"], values["per_decade"]
    if hi < lo:
        raise Invalid(f"grid max ({hi:g}) must be >= min ({lo:g})")
    for k, v in (("min", lo), ("max", hi)):
        if float(f"{v:.12g}") != v:
            raise Invalid(f"grid {k} {v!r} has more than 12 significant digits (grid values are rounded to 12, so "
                          f"it would not be a grid point); allowed: a number with at most 12 significant digits")
    # Both ends always: a max less than half a step above min still gives its own point.
    n = max(round(per_decade * (math.log10(hi) - math.log10(lo))), 1 if hi > lo else 0)
    if n + 1 > MAX_GRID:
        raise Invalid(f"the grid has {n + 1} values; at most {MAX_GRID}")
    values = [float(f"{v:.12g}") for v in 10.0 ** np.linspace(math.log10(lo), math.log10(hi), n + 1)]
    values[0], values[-1] = lo, hi  # exactly as given (10 ** log10(x) can differ from x in the last digit)
    return values


class SuiteError(Exception):
    """Bad input: names the file, the key and what is allowed."""

    def __init__(self, path, key: str, message: str):
        super().__init__(f"{path}: {key}: {message}")


def suggest(value, allowed) -> str:
    """The hint ' (did you mean ...?)' naming the allowed value closest to `value`, or ''."""
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_choice(path, key, value, allowed):
    """SuiteError unless `value` is one of `allowed`."""
    if value not in allowed:
        raise SuiteError(path, key, f"{value!r} is not allowed; allowed: {', '.join(map(str, allowed))}"
                         f"{suggest(value, allowed)}")


def check_value(path, key: str, value, spec: Key):
    """One value against its Key; SuiteError naming the file and key otherwise."""
    try:
        return spec.check(value)
    except Invalid as e:
        if spec.choices is not None and isinstance(value, str):
            check_choice(path, key, value, spec.choices)
        raise SuiteError(path, key, str(e)) from None


def check_keys(path, prefix, table, allowed):
    """SuiteError for the first key of `table` not in `allowed`."""
    for key in table:
        if key not in allowed:
            raise SuiteError(path, f"{prefix}.{key}", f"unknown key; allowed: {', '.join(allowed)}"
                             f"{suggest(key, allowed)}")


def check_table(path, prefix: str, table: dict, schema: dict[str, Key], what: str = "") -> dict:
    """A table checked against a schema: no unknown keys, required keys present, defaults filled in."""
    check_keys(path, prefix, table, schema)
    out = {}
    for key, spec in schema.items():
        if key in table:
            out[key] = check_value(path, f"{prefix}.{key}", table[key], spec)
        elif spec.default is REQUIRED:
            raise SuiteError(path, f"{prefix}.{key}", f"missing{what}; expected {spec.allowed()}")
        else:
            out[key] = copy.deepcopy(spec.default)
    return out
