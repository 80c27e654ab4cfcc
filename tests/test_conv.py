"""The matmul kernel-gradient convolution equals lax.conv_general_dilated and its gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from avjax.nn import conv
from avjax.nn.conv import conv_general_dilated

DN = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize(
    "x_shape, k, strides, padding",
    [
        ((2, 9, 13, 3), 3, (1, 1), ((1, 1), (1, 1))),
        ((1, 10, 11, 4), 4, (2, 2), ((1, 1), (1, 1))),  # patch-discriminator conv
        ((2, 9, 9, 2), 3, (2, 2), ((0, 1), (0, 1))),  # Downsample: pad right/bottom, stride 2
        ((1, 7, 8, 3), 1, (1, 1), ((0, 0), (0, 0))),  # 1x1 nin_shortcut
        ((1, 8, 8, 2), 3, (1, 2), "SAME"),
    ],
)
def test_values_and_gradients_match_lax(x_shape, k, strides, padding, monkeypatch):
    monkeypatch.setattr(conv, "MIN_ELEMENTS", 0)  # the matmul path at test sizes
    monkeypatch.setattr(conv, "ENABLED", True)
    kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, x_shape)
    w = jax.random.normal(kw, (k, k, x_shape[-1], 5))

    def loss(conv, x, w):
        y = conv(x, w, strides, padding, dimension_numbers=DN)
        return jnp.sum(y * jax.random.normal(kg, y.shape))

    ref = jax.value_and_grad(lambda x, w: loss(lax.conv_general_dilated, x, w), (0, 1))(x, w)
    got = jax.jit(jax.value_and_grad(lambda x, w: loss(conv_general_dilated, x, w), (0, 1)))(x, w)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5)
    for g, r in zip(got[1], ref[1], strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


def test_other_convolutions_fall_through_to_lax(monkeypatch):
    monkeypatch.setattr(conv, "MIN_ELEMENTS", 0)
    monkeypatch.setattr(conv, "ENABLED", True)
    x = jnp.ones((1, 6, 6, 4))
    w = jnp.ones((3, 3, 2, 4))
    y = conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN, feature_group_count=2)
    ref = lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=DN, feature_group_count=2
    )
    np.testing.assert_array_equal(y, ref)
