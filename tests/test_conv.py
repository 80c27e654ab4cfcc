"""The CPU matmul convolutions (im2col, chunked kernel gradient, col2im transpose) equal lax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from avjax.nn import conv
from avjax.nn.conv import conv_general_dilated
from avjax.train.sharding import make_mesh

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
@pytest.mark.parametrize("path", ["im2col", "chunked_kernel_grad", "phase_input_grad"])
def test_values_and_gradients_match_lax(x_shape, k, strides, padding, path, monkeypatch):
    if path == "im2col":
        monkeypatch.setattr(conv, "IM2COL_MIN_FEATURES", 0)  # im2col at test sizes
    else:
        monkeypatch.setattr(conv, "IM2COL_MAX_ELEMENTS", 0)
        monkeypatch.setattr(conv, "STRIDED_MIN_ELEMENTS", 0)  # the custom VJP at test sizes
        if path == "chunked_kernel_grad":
            monkeypatch.setattr(conv, "CHUNKED_MIN_WORK", 0)
        n, _, wd, ci = x_shape  # chunks of 2 output rows; Ho is odd in most cases here
        monkeypatch.setattr(conv, "CHUNK_ELEMENTS", 2 * n * (wd + 2) * ci)
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


def test_chunked_kernel_gradient_on_a_batch_sharded_mesh(monkeypatch):
    """Batch sharded over 8 devices: row-chunk matmuls sum over devices; phase-conv dx too."""
    monkeypatch.setattr(conv, "IM2COL_MAX_ELEMENTS", 0)
    monkeypatch.setattr(conv, "STRIDED_MIN_ELEMENTS", 0)
    monkeypatch.setattr(conv, "CHUNKED_MIN_WORK", 0)
    monkeypatch.setattr(conv, "CHUNK_ELEMENTS", 200)
    mesh = make_mesh([("data", -1), ("fsdp", 1)])
    x = jax.random.normal(jax.random.PRNGKey(0), (mesh.size, 7, 10, 3))
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4))
    pad = ((1, 1), (1, 1))

    def grads(conv_fn, x, w):
        loss = lambda x, w: jnp.sum(conv_fn(x, w, (2, 1), pad, dimension_numbers=DN) ** 2)
        return jax.grad(loss, (0, 1))(x, w)

    xs = jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"))))
    got = jax.jit(lambda x, w: grads(conv_general_dilated, x, w))(xs, w)
    for g, r in zip(got, grads(lax.conv_general_dilated, x, w), strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


def test_other_convolutions_fall_through_to_lax(monkeypatch):
    monkeypatch.setattr(conv, "CHUNKED_MIN_WORK", 0)
    x = jnp.ones((1, 6, 6, 4))
    w = jnp.ones((3, 3, 2, 4))
    y = conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN, feature_group_count=2)
    ref = lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=DN, feature_group_count=2
    )
    np.testing.assert_array_equal(y, ref)


@pytest.fixture
def thresholds(monkeypatch):
    """Small stand-ins for the tuned constants: the tests pin the rules, not the values."""
    for name, value in dict(
        IM2COL_MAX_OUTPUT_PIXELS=4,
        IM2COL_MAX_IN_FEATURES=2,
        IM2COL_MIN_FEATURES=8,
        IM2COL_MAX_ELEMENTS=10_000,
        STRIDED_MIN_ELEMENTS=1000,
        CHUNKED_MIN_WORK=20_000,
    ).items():
        monkeypatch.setattr(conv, name, value)


def _route(x_shape, w_shape, stride=1, pad=1):
    return conv._route(x_shape, w_shape, (stride, stride), ((pad, pad), (pad, pad)))


def test_im2col_for_small_maps_and_raw_inputs_with_wide_outputs(thresholds):
    # 2x2 output (4 pixels, at the limit), 8 outputs (at the minimum): im2col.
    assert _route((1, 2, 2, 4), (3, 3, 4, 8)) == "im2col"
    assert _route((1, 2, 2, 4), (3, 3, 4, 7)) == "lax"  # too thin
    assert _route((1, 3, 2, 4), (3, 3, 4, 8)) == "lax"  # 6 output pixels
    # A raw-input first layer (<= 2 channels) on a larger map.
    assert _route((1, 10, 10, 2), (3, 3, 2, 8)) == "im2col"
    assert _route((1, 10, 10, 3), (3, 3, 3, 8)) == "lax"
    # The patch matrix cap: 1*10*10*9*2 = 1800 patch values; over the cap -> not im2col.
    assert _route((6, 10, 10, 2), (3, 3, 2, 8)) == "lax"  # 10,800 > 10,000


def test_matmul_gradients_for_large_strided_and_large_wide_convs(thresholds):
    # Strided: 1 * 16 * 16 * 4 = 1024 input values >= 1000.
    assert _route((1, 16, 16, 4), (3, 3, 4, 4), stride=2) == "matmul_grad"
    assert _route((1, 15, 16, 4), (3, 3, 4, 4), stride=2) == "lax"  # 960
    # Stride 1: size(x) * min(Ci, Co) = 1 * 32 * 32 * 5 * 4 = 20,480 > 20,000.
    assert _route((1, 32, 32, 5), (3, 3, 5, 4)) == "matmul_grad"
    assert _route((1, 32, 32, 5), (3, 3, 5, 3)) == "lax"  # 15,360: narrow output


def test_im2col_patch_matrix_cap(monkeypatch):
    monkeypatch.setattr(conv, "IM2COL_MAX_ELEMENTS", 10)
    assert conv._route((2, 5, 4, 8), (4, 4, 8, 64), (2, 2), ((1, 1), (1, 1))) == "lax"


@pytest.mark.parametrize(
    "hw, k, s, p",
    [
        ((5, 6), 4, 2, 1),  # k - 2p == s: per-phase overlap-add (DCGAN upconv)
        ((1, 1), 6, 1, 0),  # 1x1 -> 6x6 (Sound2Sight decoder input)
        ((3, 4), 3, 2, 1),  # strided pad placement, odd output
        ((3, 3), 4, 1, 0),
        ((4, 3), 5, 3, 1),  # k - 2p == s with stride 3
    ],
)
def test_conv_transpose_matches_pytorch_formula_and_lax_gradients(hw, k, s, p):
    """out[s*i + t - p] += x[i] w[t] (PyTorch ConvTranspose2d); gradients equal lax's."""
    kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (2, *hw, 3))
    w = jax.random.normal(kw, (k, k, 3, 4))
    y = jax.jit(conv.conv_transpose, static_argnums=(2, 3))(x, w, (s, s), (p, p))
    xn, wn = np.asarray(x, np.float64), np.asarray(w, np.float64)
    size = [(n - 1) * s + k - 2 * p for n in hw]
    want = np.zeros((2, *size, 4))
    for i in range(hw[0]):
        for j in range(hw[1]):
            for ty in range(k):
                for tx in range(k):
                    oy, ox = s * i + ty - p, s * j + tx - p
                    if 0 <= oy < size[0] and 0 <= ox < size[1]:
                        want[:, oy, ox] += xn[:, i, j] @ wn[ty, tx]
    np.testing.assert_allclose(y, want, atol=1e-4)

    def ref(x, w):  # the same operator as an lhs-dilated convolution
        pad = [(k - 1 - p, k - 1 - p)] * 2
        return lax.conv_general_dilated(
            x, w[::-1, ::-1], (1, 1), pad, lhs_dilation=(s, s), dimension_numbers=DN
        )

    g = jax.random.normal(kg, y.shape)
    got = jax.grad(lambda x, w: jnp.sum(conv.conv_transpose(x, w, (s, s), (p, p)) * g), (0, 1))
    want_g = jax.grad(lambda x, w: jnp.sum(ref(x, w) * g), (0, 1))
    for a, b in zip(got(x, w), want_g(x, w), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
