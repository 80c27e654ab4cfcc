"""VGGishish, torch-exact pooling, and the VGGishish checkpoint converter."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avjax.convert.vggishish import vggishish_from_torch
from avjax.models.specvqgan.classifiers import VGGishish, feature_layout, tap_indices
from avjax.nn import max_pool
from avjax.nn.pooling import adaptive_avg_pool2d

TINY = dict(conv_layers=(8, "MP", 16), num_classes=5, hidden=32, pool_size=(5, 10))


# ---- independent numpy reference of the torch forward (NCHW) ----


def np_conv3x3(x, w, b):
    """torch Conv2d(k3, p1): x [B,I,H,W], w [O,I,3,3] -> [B,O,H,W]."""
    h, wd = x.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((x.shape[0], w.shape[0], h, wd))
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("bihw,oi->bohw", xp[:, :, dy : dy + h, dx : dx + wd], w[:, :, dy, dx])
    return out + b[None, :, None, None]


def np_maxpool2(x):
    b, c, h, w = x.shape
    x = x[:, :, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def np_adaptive_avg_pool(x, out_h, out_w):
    """Hand-coded torch AdaptiveAvgPool2d on NCHW."""
    h, w = x.shape[2:]
    out = np.zeros((*x.shape[:2], out_h, out_w))
    for i in range(out_h):
        h0, h1 = math.floor(i * h / out_h), math.ceil((i + 1) * h / out_h)
        for j in range(out_w):
            w0, w1 = math.floor(j * w / out_w), math.ceil((j + 1) * w / out_w)
            out[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return out


def np_vggishish(sd, x, conv_layers, pool_size):
    """torch VGGishish.forward: x [B,F,T] -> logits."""
    h = x[:, None].astype(np.float64)
    idx = 0
    for v in conv_layers:
        if v == "MP":
            h, idx = np_maxpool2(h), idx + 1
        else:
            h = np.maximum(
                np_conv3x3(h, sd[f"features.{idx}.weight"], sd[f"features.{idx}.bias"]), 0
            )
            idx += 2
    h = np_adaptive_avg_pool(h, *pool_size).reshape(h.shape[0], -1)  # torch flatten of NCHW
    for j in (0, 2, 4):
        h = h @ sd[f"classifier.{j}.weight"].T + sd[f"classifier.{j}.bias"]
        h = np.maximum(h, 0) if j < 4 else h
    return h


def random_torch_sd(rng, conv_layers, num_classes, hidden, pool_size):
    sd, in_ch = {}, 1
    for idx, kind, ch in feature_layout(conv_layers):
        if kind == "conv":
            sd[f"features.{idx}.weight"] = rng.normal(0, 0.3, (ch, in_ch, 3, 3)).astype(np.float32)
            sd[f"features.{idx}.bias"] = rng.normal(0, 0.1, (ch,)).astype(np.float32)
            in_ch = ch
    dims = [in_ch * pool_size[0] * pool_size[1], hidden, hidden, num_classes]
    for j in range(3):
        shape = (dims[j + 1], dims[j])
        sd[f"classifier.{2 * j}.weight"] = rng.normal(0, 0.2, shape).astype(np.float32)
        sd[f"classifier.{2 * j}.bias"] = rng.normal(0, 0.1, (dims[j + 1],)).astype(np.float32)
    return sd


# ---- adaptive pooling ----


@pytest.mark.parametrize(
    "hw, out",
    [((5, 53), (5, 10)), ((7, 13), (3, 4)), ((8, 12), (4, 6)), ((3, 5), (5, 7)), ((6, 6), 4)],
)
def test_adaptive_avg_pool_matches_numpy_loop(hw, out):
    x = np.random.default_rng(0).normal(size=(2, *hw, 3)).astype(np.float32)
    oh, ow = (out, out) if isinstance(out, int) else out
    got = np.asarray(adaptive_avg_pool2d(jnp.asarray(x), out))
    want = np_adaptive_avg_pool(x.transpose(0, 3, 1, 2), oh, ow).transpose(0, 2, 3, 1)
    assert got.shape == (2, oh, ow, 3)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("hw, k", [((6, 8), 2), ((7, 9), 2), ((7, 8), 3)])
def test_max_pool_matches_lax_values_and_first_max_gradient(hw, k):
    """Floor-mode k x k / k pooling; ties (ReLU zeros, repeats) send the gradient to the
    first maximum in row-major order, as `lax.reduce_window` and PyTorch do."""
    rng = np.random.default_rng(0)
    x = np.maximum(rng.normal(size=(2, *hw, 3)), 0).astype(np.float32)
    x[0, 0, 0, 0] = x[0, 0, 1, 0] = x[0, 1, 0, 0] = 5.0  # a three-way tie in one window
    x = jnp.asarray(x)
    g = jnp.asarray(rng.normal(size=(2, hw[0] // k, hw[1] // k, 3)), jnp.float32)
    ref = lambda x: nn.max_pool(x, (k, k), strides=(k, k))
    pool = lambda x: max_pool(x, (k, k), (k, k), route="cpu")  # the select-gradient kernel
    np.testing.assert_array_equal(pool(x), ref(x))
    got = jax.grad(lambda x: jnp.sum(pool(x) * g))(x)
    want = jax.grad(lambda x: jnp.sum(ref(x) * g))(x)
    np.testing.assert_array_equal(got, want)
    assert got[0, 0, 0, 0] == g[0, 0, 0, 0] and got[0, 0, 1, 0] == 0 and got[0, 1, 0, 0] == 0


# ---- full-size model structure (shapes only, no real init) ----


def test_full_model_param_count_and_names():
    model = VGGishish()
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 80, 848))))
    params = variables["params"]
    assert sum(math.prod(p.shape) for p in jax.tree.leaves(params)) == 137_622_517
    conv_idx = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    want = {f"features_{i}" for i in conv_idx} | {f"classifier_{i}" for i in (0, 2, 4)}
    assert set(params) == want
    assert params["classifier_0"]["kernel"].shape == (25600, 4096)
    assert params["features_28"]["kernel"].shape == (3, 3, 512, 512)
    assert tap_indices(model.conv_layers) == [3, 8, 15, 22, 29]
    taps = jax.eval_shape(
        lambda v: model.apply(v, jnp.zeros((1, 80, 848, 1)), method=VGGishish.features), variables
    )
    assert [t.shape for t in taps] == [
        (1, 80, 848, 64),
        (1, 40, 424, 128),
        (1, 20, 212, 256),
        (1, 10, 106, 512),
        (1, 5, 53, 512),
    ]


def test_init_distributions():
    model = VGGishish(conv_layers=(64, "MP", 64), num_classes=7, hidden=64, pool_size=(2, 2))
    params = jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, 4, 4)))["params"]
    k = np.asarray(params["features_3"]["kernel"])
    assert abs(k.std() / math.sqrt(2 / (64 * 9)) - 1) < 0.05  # kaiming normal, fan_out
    assert np.abs(k).max() > 3 * math.sqrt(2 / (64 * 9))  # untruncated normal
    assert abs(np.asarray(params["classifier_0"]["kernel"]).std() / 0.01 - 1) < 0.05
    for leaf in jax.tree.leaves({n: p["bias"] for n, p in params.items()}):
        assert not np.any(np.asarray(leaf))


# ---- converter ----


@pytest.fixture(scope="module")
def tiny_sd():
    return random_torch_sd(np.random.default_rng(0), **TINY)


def test_converter_matches_torch_reference(tiny_sd):
    x = np.random.default_rng(1).normal(size=(2, 14, 26)).astype(np.float32)  # pooled 7x13->5x10
    params = vggishish_from_torch({"model": tiny_sd, "epoch": 3}, **TINY)
    model = VGGishish(**TINY)
    got = np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(x)))
    want = np_vggishish(tiny_sd, x, TINY["conv_layers"], TINY["pool_size"])
    assert got.shape == (2, 5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # The bare state dict gives the same params as the {"model": ...} checkpoint dict.
    bare = vggishish_from_torch(tiny_sd, **TINY)
    jax.tree.map(np.testing.assert_array_equal, bare, params)


def test_converter_error_messages(tiny_sd):
    sd = dict(tiny_sd)
    del sd["features.3.bias"]
    with pytest.raises(ValueError, match=r"missing keys \['features.3.bias'\]"):
        vggishish_from_torch(sd, **TINY)
    sd = dict(tiny_sd, **{"classifier.2.weight": np.zeros((32, 31), np.float32)})
    with pytest.raises(
        ValueError, match=r"classifier.2.weight: got \(32, 31\), expected \(32, 32\)"
    ):
        vggishish_from_torch(sd, **TINY)
    sd = dict(tiny_sd, **{"features.1.weight": np.zeros((8,), np.float32)})
    with pytest.raises(ValueError, match=r"unexpected keys \['features.1.weight'\]"):
        vggishish_from_torch(sd, **TINY)
