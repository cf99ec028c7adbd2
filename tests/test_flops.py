"""Model FLOPs counted from jaxprs: matrix products, convolutions, loops counted as often as they run."""
import jax
import jax.numpy as jnp
import pytest

from gradbench.engine import flops


def test_matmul_in_a_scan_counts_every_iteration():
    def f(x_BxD, w_DxD):
        return jax.lax.scan(lambda h, _: (jnp.tanh(h @ w_DxD), None), x_BxD, None, length=10)[0].sum()

    forward = 2 * 4 * 8 * 8 * 10
    assert flops.count(jax.make_jaxpr(f)(jnp.ones((4, 8)), jnp.ones((8, 8)))) == forward
    # backward: one product for the weight gradient and one for the carried state, per iteration
    assert flops.count(jax.make_jaxpr(jax.grad(f, argnums=1))(jnp.ones((4, 8)), jnp.ones((8, 8)))) == 3 * forward


def test_convolution():
    x = jnp.ones((2, 8, 8, 3))
    w = jnp.ones((3, 3, 3, 5))
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",  # noqa: E731
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert flops.count(jax.make_jaxpr(conv)(x, w)) == 2 * (2 * 8 * 8 * 5) * (3 * 3 * 3)


def test_vmap_multiplies_by_the_batch():
    f = jax.vmap(lambda a, b: a @ b)
    assert flops.count(jax.make_jaxpr(f)(jnp.ones((6, 4, 8)), jnp.ones((6, 8, 2)))) == pytest.approx(6 * 2 * 4 * 8 * 2)
