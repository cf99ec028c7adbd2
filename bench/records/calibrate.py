"""A fixed matrix product's speed, measured in-process: the yardstick that makes throughput comparable.

Throughput (steps/s) depends on the machine; dividing it by the FLOP/s of one
fixed float32 product measured in the same process lets `bench compare`
judge a CI runner's numbers against a baseline made elsewhere.
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

SIZE = 512  # (SIZE x SIZE) @ (SIZE x SIZE), float32
REPEATS = 5


@functools.lru_cache(maxsize=1)
def matmul_flops_per_s(size: int = SIZE, repeats: int = REPEATS) -> float:
    """Median FLOP/s of a jitted float32 size x size matrix product on the default device (cached per process)."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    product = jax.jit(jnp.matmul)
    product(a, b).block_until_ready()  # compile and warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        product(a, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    return float(2 * size**3 / np.median(times))
