"""gradbench, the gradient-explosion benchmark harness, in layers: spec (suite -> cells) -> engine -> records ->
analysis -> reports, the Python API (api) and the command line (cli) on top; the model families and tasks are
gradbench.models and gradbench.tasks. In the repository the package is bench/ (models/ and tasks/ beside it),
installed as gradbench (pyproject.toml) (docs/REFERENCE.md, "Layout"; tests/test_layers.py).

The API's functions are names of the package, imported when first used (so `gradbench --help` imports no
jax): `load(dir)` (a DataFrame, one row per cell x seed), `results(dir)`, `run(path, out, **overrides)`,
`cells(path, **overrides)`, `suite(path, **overrides)`; see bench/api.py and docs/USAGE.md.
"""
import os

# XLA's CPU runtime (jaxlib 0.10) deadlocks now and then, at 0% CPU, running programs that its
# concurrency-optimised scheduler ordered: an LSTM's initialisation hung in about half of the runs with it,
# in none of 16 without it. It is off unless XLA_FLAGS set it (read when the first program compiles).
_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"
if _SCHEDULER_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_SCHEDULER_FLAG}=false".strip()

__all__ = ["load", "results", "run", "cells", "suite", "UsageError"]


def __getattr__(name):
    """The API's functions (bench/api.py), imported on first use."""
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
