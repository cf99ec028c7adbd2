"""Two fixed float32 workloads timed in-process: the yardsticks that make throughput comparable across runs.

Throughput (steps/s) depends on the machine. `bench compare` divides each run's steps/s by a yardstick timed
in the same process:

- `scan_flops_per_s`: a `lax.scan` of SCAN_LENGTH dependent 64 x 64 products (each followed by tanh), the
  shape of a small training step: many small operations in sequence, run on one thread. compare uses it
  where both records hold it.
- `matmul_flops_per_s`: one 512 x 512 product, which XLA splits over every core (older records hold only
  this one). On 2 cores with another process spinning on one, it falls to about x0.6 while the CI suite's
  steps/s does not move, so as a yardstick it made an unchanged run look x1.4 to x2.0 faster (docs/CI.md).

Each is the median of REPEATS calls after WARMUP untimed ones: the first calls in a process run slower
(measured: 5 calls gave 177 to 192 GFLOP/s in some processes and 310 in others; 50 give 324 to 331).
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

SIZE = 512  # (SIZE x SIZE) @ (SIZE x SIZE), float32
SCAN_SIZE, SCAN_LENGTH = 64, 256
WARMUP, REPEATS = 3, 50


def _median_seconds(fn, *args) -> float:
    for _ in range(WARMUP):  # the first call compiles
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


@functools.lru_cache(maxsize=1)
def matmul_flops_per_s() -> float:
    """FLOP/s of a jitted float32 SIZE x SIZE product on the default device (cached per process)."""
    a = jax.random.normal(jax.random.key(0), (SIZE, SIZE), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (SIZE, SIZE), jnp.float32)
    return 2 * SIZE**3 / _median_seconds(jax.jit(jnp.matmul), a, b)


@functools.lru_cache(maxsize=1)
def scan_flops_per_s() -> float:
    """FLOP/s of SCAN_LENGTH dependent SCAN_SIZE x SCAN_SIZE products in one jitted scan (cached per process)."""
    a = jax.random.normal(jax.random.key(0), (SCAN_SIZE, SCAN_SIZE), jnp.float32) / SCAN_SIZE**0.5
    chain = jax.jit(lambda a: jax.lax.scan(lambda h, _: (jnp.tanh(h @ a), None), a, None, length=SCAN_LENGTH)[0])
    return 2 * SCAN_SIZE**3 * SCAN_LENGTH / _median_seconds(chain, a)
