"""Multi-host runs: `jax.distributed.initialize()` under a cluster launcher, each process a shard of the cells.

Every process trains its own part of the cells (whole compiled groups) on its local devices (the run axis sharded over them) and
merges its records into the shared results directory under its lock, like `--shard i/n` jobs.
"""
from __future__ import annotations

import os
from typing import Mapping


def launched(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether a multi-process launch is described: SLURM with more than one task, or JAX_COORDINATOR_ADDRESS."""
    if environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    try:
        return bool(environ.get("SLURM_JOB_ID")) and int(environ.get("SLURM_NTASKS", "1")) > 1
    except ValueError:
        return False


def initialize(environ: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """(process index, process count): initialises jax.distributed when `launched`, else (0, 1).

    With JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID give the count and this process's
    index where no cluster (SLURM, Open MPI, ...) is detected.
    """
    if not launched(environ):
        return 0, 1
    import jax

    count, index = environ.get("JAX_NUM_PROCESSES"), environ.get("JAX_PROCESS_ID")
    jax.distributed.initialize(num_processes=int(count) if count else None,
                               process_id=int(index) if index else None)
    return jax.process_index(), jax.process_count()


def compose(shard: tuple[int, int], process: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Shard i of n split further over P processes: process p runs part p of P of shard i of n.

    Returns the levels that `gradbench.engine.runner.shard_cells` takes: it deals shard i's compiled groups (whole, by
    cost) over the P processes, so the P processes together run exactly the cells of shard i of n.
    """
    return tuple(shard), tuple(process)
