"""The [suite] settings and the reading of a suite file: what the command line needs before jax is imported.

bench/spec/suite.py validates and expands the rest; this module imports neither jax nor the models and tasks,
so `gradbench --help` and a bad suite file's one-line error are fast.
"""
from __future__ import annotations

import tomllib
from pathlib import Path

from gradbench.spec import files
from gradbench.spec.schema import Key, SuiteError

MAX_SEEDS = 10_000  # seeds of one cell
MAX_RUNS = 1_000_000  # seeds x cells of one suite: every run's state is held in memory at once per group

# [suite] keys
SETTINGS = {
    "name": Key(str, doc="names the default output directory runs/NAME"),
    "description": Key(str, ""),
    "seeds": Key(int, 8, ge=1, le=MAX_SEEDS),
    "steps": Key(int, None, ge=1),  # None: the task's DEFAULT_STEPS
    "divergence_factor": Key(float, 10.0, gt=1),
    "collapse_fraction": Key(float, 0.5, gt=0, le=1, doc="a finished seed whose training loss is >= this x the "
                             "trivial loss collapsed"),
    "min_effect": Key(float, 1.25, gt=1, doc="the smallest ratio a supported/contradicted verdict must clear"),
    "smoothing": Key(float, 0.9, ge=0, lt=1),
    "early_stop": Key(bool, True),  # a converged seed stops training (final numbers at convergence)
    "chunk_steps": Key(int, 100, ge=1),
    "trace_points": Key(int, 100, ge=2, le=1_000_000),
    "replicates": Key(int, 1, ge=1, le=16, doc="independent replicate blocks: every cell runs once per block, on seeds "
                      "of its own and, past the first, with replicate_perturbation; a claim is settled only when "
                      "every block answers as the pooled seeds do"),
    "replicate_perturbation": Key(float, 1e-6, ge=0, le=1, doc="added to init_perturbation in every replicate block "
                                  "past the first"),
    "init_perturbation": Key(float, 0.0, ge=0, le=1, doc="every initial parameter x (1 + this x N(0, 1)), drawn per "
                             "seed from its own key (imitates another machine's rounding); 0: none"),
    "plugins": Key(list, [], of=str, doc="modules to import before the cells are made, each an importable module name "
                   "or a .py file relative to the suite file: they register mitigations, transforms, model families "
                   "and tasks (gradbench.spec.register; docs/EXTENDING.md)"),
}


def read_toml(path) -> dict:
    """A suite file's TOML; SuiteError (one line) for a missing, unreadable, binary or non-UTF-8 file."""
    path = Path(path)
    try:
        data = files.read_bytes(path, "suite")
    except files.InputError as e:
        raise SuiteError(path, "-", str(e).removeprefix(f"{path}: ")) from None
    except FileNotFoundError:
        raise SuiteError(path, "-", "no such file") from None
    except IsADirectoryError:
        raise SuiteError(path, "-", "is a directory; give a suite file (.toml)") from None
    except PermissionError:
        raise SuiteError(path, "-", "not readable (permission denied)") from None
    except OSError as e:
        raise SuiteError(path, "-", f"cannot be read ({e.strerror or type(e).__name__})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        hint = " (it looks like UTF-16)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise SuiteError(path, "-", f"not UTF-8 text{hint}: byte {e.start}; save the suite as UTF-8") from None
    if "\x00" in text:
        raise SuiteError(path, "-", "not a text file (it holds NUL bytes); give a suite file (.toml)")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SuiteError(path, "-", f"not valid TOML: {e}") from None
