"""JAX's persistent compilation cache: compiled programs kept on disk, so a second run of a suite skips XLA.

On by default in the user's cache directory ($XDG_CACHE_HOME/gradbench/jax, else ~/.cache/gradbench/jax;
GRADBENCH_CACHE_DIR overrides it). Off with `--no-compile-cache` or GRADBENCH_COMPILE_CACHE=0 (the tests set it).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping


def directory(environ: Mapping[str, str] = os.environ) -> Path | None:
    """Where compiled programs are cached, or None when caching is turned off by the environment."""
    if environ.get("GRADBENCH_COMPILE_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if environ.get("GRADBENCH_CACHE_DIR"):
        return Path(environ["GRADBENCH_CACHE_DIR"])
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gradbench" / "jax"


def enable(enabled: bool = True, environ: Mapping[str, str] = os.environ) -> Path | None:
    """Turns the persistent cache on (before the first compile) unless disabled; returns its directory or None."""
    path = directory(environ) if enabled else None
    if path is None:
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # every program, however quick
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # and however small
    return path
