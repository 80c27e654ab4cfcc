"""The CPU kernels (im2col, chunked kernel gradient, col2im transpose, select max-pool
gradient) equal lax, and the routed layers of `avjax.nn` take them only for CPU."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import avjax.nn
from avjax.nn import cpu_kernels
from avjax.nn.layers import conv_general_dilated
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
        monkeypatch.setattr(cpu_kernels, "IM2COL_MIN_FEATURES", 0)  # im2col at test sizes
    else:
        monkeypatch.setattr(cpu_kernels, "IM2COL_MAX_ELEMENTS", 0)
        monkeypatch.setattr(cpu_kernels, "STRIDED_MIN_ELEMENTS", 0)  # the custom VJP at test sizes
        if path == "chunked_kernel_grad":
            monkeypatch.setattr(cpu_kernels, "CHUNKED_MIN_WORK", 0)
        n, _, wd, ci = x_shape  # chunks of 2 output rows; Ho is odd in most cases here
        monkeypatch.setattr(cpu_kernels, "CHUNK_ELEMENTS", 2 * n * (wd + 2) * ci)
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
    monkeypatch.setattr(cpu_kernels, "IM2COL_MAX_ELEMENTS", 0)
    monkeypatch.setattr(cpu_kernels, "STRIDED_MIN_ELEMENTS", 0)
    monkeypatch.setattr(cpu_kernels, "CHUNKED_MIN_WORK", 0)
    monkeypatch.setattr(cpu_kernels, "CHUNK_ELEMENTS", 200)
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
    monkeypatch.setattr(cpu_kernels, "CHUNKED_MIN_WORK", 0)
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
        monkeypatch.setattr(cpu_kernels, name, value)


def _route(x_shape, w_shape, stride=1, pad=1):
    return cpu_kernels._route(x_shape, w_shape, (stride, stride), ((pad, pad), (pad, pad)))


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
    monkeypatch.setattr(cpu_kernels, "IM2COL_MAX_ELEMENTS", 10)
    assert cpu_kernels._route((2, 5, 4, 8), (4, 4, 8, 64), (2, 2), ((1, 1), (1, 1))) == "lax"


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
    y = jax.jit(cpu_kernels.conv_transpose, static_argnums=(2, 3))(x, w, (s, s), (p, p))
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
    got = jax.grad(
        lambda x, w: jnp.sum(cpu_kernels.conv_transpose(x, w, (s, s), (p, p)) * g), (0, 1)
    )
    want_g = jax.grad(lambda x, w: jnp.sum(ref(x, w) * g), (0, 1))
    for a, b in zip(got(x, w), want_g(x, w), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


# ---- the routed layers: CPU kernels when lowered for CPU, XLA's own ops elsewhere ----


def _hlo(fn, *args, platform):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()


def _ops(text):
    return {op: text.count(f"stablehlo.{op}") for op in ("convolution", "dot_general")}


def test_conv_lowers_to_matmuls_for_cpu_and_to_xla_convolutions_elsewhere():
    """A tiny-map wide conv (im2col on CPU): dots for CPU, one convolution for GPU / TPU."""
    x = jnp.ones((2, 4, 4, 8))
    m = avjax.nn.Conv(64, (3, 3), padding=((1, 1), (1, 1)))
    v = m.init(jax.random.PRNGKey(0), x)
    fwd_bwd = jax.grad(lambda v, x: jnp.sum(m.apply(v, x) ** 2), (0, 1))
    cpu = _ops(_hlo(fwd_bwd, v, x, platform="cpu"))
    assert cpu["convolution"] == 0 and cpu["dot_general"] > 0
    for platform in ("cuda", "rocm", "tpu"):
        assert _ops(_hlo(fwd_bwd, v, x, platform=platform)) == {"convolution": 3, "dot_general": 0}


def test_conv_transpose_and_max_pool_lower_to_xla_ops_off_cpu():
    x = jnp.ones((2, 5, 6, 3))
    w = jnp.ones((4, 4, 3, 4))
    up = jax.grad(lambda x, w: jnp.sum(avjax.nn.conv_transpose(x, w, (2, 2), (1, 1)) ** 2), (0, 1))
    cpu, gpu = (_ops(_hlo(up, x, w, platform=p)) for p in ("cpu", "cuda"))
    assert cpu["convolution"] == 0 and cpu["dot_general"] > 0
    assert gpu == {"convolution": 3, "dot_general": 0}  # lhs-dilated conv and its gradients
    pool = jax.grad(lambda x: jnp.sum(avjax.nn.max_pool(x, (2, 2), (2, 2)) ** 2))
    assert "select_and_scatter" not in _hlo(pool, x, platform="cpu")
    assert "select_and_scatter" in _hlo(pool, x, platform="cuda")


@pytest.mark.parametrize("strides", [(1, 1), (2, 2)])
def test_conv_module_is_flax_conv_with_routes(strides, monkeypatch):
    """Same parameters and initial values as `nn.Conv`; "plain" is lax bit for bit; "auto"
    (CPU here) is the CPU route bit for bit and equals lax to rounding."""
    monkeypatch.setattr(cpu_kernels, "IM2COL_MIN_FEATURES", 0)  # im2col at test sizes
    kw = dict(features=6, kernel_size=(3, 3), strides=strides, padding=((1, 1), (1, 1)))
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 3))
    ref = nn.Conv(**kw)
    v = ref.init(jax.random.PRNGKey(1), x)
    got = {r: avjax.nn.Conv(**kw, route=r) for r in ("auto", "cpu", "plain")}
    v_got = got["auto"].init(jax.random.PRNGKey(1), x)
    for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(v_got), strict=True):
        np.testing.assert_array_equal(a, b)
    assert jax.tree.structure(v) == jax.tree.structure(v_got)

    def fwd_bwd(m):
        return jax.jit(jax.value_and_grad(lambda v, x: jnp.sum(jnp.sin(m.apply(v, x))), (0, 1)))

    want = fwd_bwd(ref)(v, x)
    ys = {r: fwd_bwd(m)(v, x) for r, m in got.items()}
    for a, b in zip(jax.tree.leaves(ys["plain"]), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b, c in zip(*(jax.tree.leaves(ys[r]) for r in ("auto", "cpu")), jax.tree.leaves(want)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-5)
    plain = got["auto"].clone(route="plain")  # a clone takes its own route
    np.testing.assert_array_equal(plain.apply(v, x), ref.apply(v, x))
    with pytest.raises(ValueError, match="route"):
        avjax.nn.Conv(4, (3, 3), route="gpu")


def _np_conv_transpose(x, w, s, p, op):
    """PyTorch ConvTranspose2d by scatter-add: out[s*i + t - p] += x[i] w[t], float64."""
    n, h, wd, _ = x.shape
    k = w.shape[0]
    size = [(m - 1) * s + k - 2 * p + op for m in (h, wd)]
    out = np.zeros((n, *size, w.shape[-1]))
    for i in range(h):
        for j in range(wd):
            for ty in range(k):
                for tx in range(k):
                    oy, ox = s * i + ty - p, s * j + tx - p
                    if 0 <= oy < size[0] and 0 <= ox < size[1]:
                        out[:, oy, ox] += x[:, i, j] @ w[ty, tx]
    return out


@pytest.mark.parametrize(
    "hw, k, s, p, op",
    [
        ((5, 6), 4, 2, 1, 0),  # DCGAN upconv (Sound2Sight decoder)
        ((1, 1), 6, 1, 0, 0),  # 1x1 -> 6x6 (Sound2Sight decoder input)
        ((3, 4), 3, 2, 1, 1),  # output_padding: odd kernel back to 2x
        ((4, 3), 5, 3, 2, 2),
        ((3, 3), 3, 1, 2, 0),  # p = k - 1: no padding left in the lhs-dilated form
    ],
)
def test_conv_transpose_module_routes_agree_with_pytorch(hw, k, s, p, op):
    """The CPU col2im route and the plain lhs-dilated conv (GPU / TPU) give the same
    values and gradients, PyTorch's padding / output_padding included."""
    kx, kg = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, (2, *hw, 3))
    m = {r: avjax.nn.ConvTranspose(4, k, s, p, op, route=r) for r in ("auto", "cpu", "plain")}
    v = m["plain"].init(jax.random.PRNGKey(1), x)
    v = {"params": {**v["params"], "bias": jnp.arange(4.0)}}
    assert v["params"]["kernel"].shape == (k, k, 3, 4)
    want = _np_conv_transpose(
        np.asarray(x, np.float64), np.asarray(v["params"]["kernel"]), s, p, op
    )
    want = want + np.arange(4.0)
    g = jax.random.normal(kg, want.shape)
    res = {}
    for r, mod in m.items():
        y, vjp = jax.vjp(jax.jit(mod.apply), v, x)
        np.testing.assert_allclose(y, want, atol=1e-5)
        res[r] = (y, *vjp(g))
    for a, b, c in zip(*(jax.tree.leaves(res[r]) for r in ("auto", "cpu", "plain")), strict=True):
        np.testing.assert_array_equal(a, b)  # auto is the CPU route here
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "window, strides, padding, hw",
    [
        ((2, 2), (2, 2), "VALID", (7, 9)),  # VGGish-ish: the CPU select gradient
        ((3, 3), (2, 2), ((1, 1), (1, 1)), (8, 7)),  # ResNet stem: Flax's everywhere
        ((2, 2), None, "VALID", (5, 6)),  # stride 1 (Flax's default): Flax's everywhere
    ],
)
def test_max_pool_routes_equal_flax(window, strides, padding, hw):
    """Non-overlapping pools use the select gradient on CPU, overlapping ones Flax's: both
    equal `nn.max_pool` bit for bit, ties included (first maximum)."""
    x = jnp.maximum(jax.random.normal(jax.random.PRNGKey(0), (2, *hw, 3)), 0)  # ReLU ties
    ref = lambda x: nn.max_pool(x, window, strides=strides, padding=padding)
    want = jax.value_and_grad(lambda x: jnp.sum(jnp.sin(ref(x))))(x)
    for route in ("auto", "cpu", "plain"):
        pool = lambda x, r=route: avjax.nn.max_pool(x, window, strides, padding, route=r)
        got = jax.jit(jax.value_and_grad(lambda x, p=pool: jnp.sum(jnp.sin(p(x)))))(x)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)


def _np_conv_same(x, w):
    """Stride-1 "SAME" cross-correlation with an odd kernel, float64: [N,H,W,I] x [k,k,I,O]."""
    k = w.shape[0]
    xp = np.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
    h, wd = x.shape[1:3]
    return sum(xp[:, i : i + h, j : j + wd] @ w[i, j] for i in range(k) for j in range(k))


def test_conv_lstm_cell_step_matches_numpy_and_scans():
    b, h, w, ci, f, steps = 2, 5, 6, 3, 4, 3
    xs = jax.random.normal(jax.random.PRNGKey(0), (b, steps, h, w, ci))
    cell = avjax.nn.ConvLSTMCell(f, (3, 3), bias_init=nn.initializers.normal(0.1))
    carry = cell.initialize_carry(jax.random.PRNGKey(1), xs[:, 0].shape)
    assert [c.shape for c in carry] == [(b, h, w, f)] * 2
    v = cell.init(jax.random.PRNGKey(2), carry, xs[:, 0])
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), v["params"])
    assert p["ih"]["kernel"].shape == (3, 3, ci, 4 * f) and "bias" not in p["hh"]
    sig = lambda z: 1 / (1 + np.exp(-z))

    def np_step(hc, x):
        hh, cc = hc
        gates = _np_conv_same(x, p["ih"]["kernel"]) + p["ih"]["bias"]
        gates = gates + _np_conv_same(hh, p["hh"]["kernel"])
        i, fg, g, o = np.split(gates, 4, axis=-1)
        cc = sig(fg) * cc + sig(i) * np.tanh(g)
        return sig(o) * np.tanh(cc), cc

    hc = (np.zeros((b, h, w, f)), np.zeros((b, h, w, f)))
    want = []
    for t in range(steps):
        hc = np_step(hc, np.asarray(xs[:, t], np.float64))
        want.append(hc[0])
    (h1, _), y1 = jax.jit(cell.apply)(v, carry, xs[:, 0])
    np.testing.assert_allclose(y1, want[0], atol=1e-5)
    np.testing.assert_array_equal(h1, y1)
    # Over time with nn.RNN (a scan), the same parameters at every step.
    rnn = nn.RNN(cell, return_carry=True)
    (h_t, c_t), ys = jax.jit(rnn.apply)({"params": {"cell": v["params"]}}, xs)
    np.testing.assert_allclose(ys, np.stack(want, axis=1), atol=1e-5)
    np.testing.assert_allclose(h_t, hc[0], atol=1e-5)
    np.testing.assert_allclose(c_t, hc[1], atol=1e-5)


def test_fusion_barrier_is_the_identity_and_survives_xla():
    """Values and gradients pass unchanged; the compiled CPU program keeps a conditional
    forward and backward (identical branches or a foldable predicate would be removed);
    a carry holding NaN comes back all NaN."""
    x = {"a": jnp.arange(6.0).reshape(2, 3), "b": jnp.linspace(-1.0, 1.0, 4)}

    def f(x, barrier):
        for _ in range(3):  # a toy recurrence, unrolled
            x = {"a": jnp.tanh(x["a"]) * 1.5, "b": x["b"] * x["a"].sum()}
            x = cpu_kernels.fusion_barrier(x) if barrier else x
        return jnp.sum(x["a"] ** 2) + jnp.sum(x["b"])

    got = jax.jit(jax.value_and_grad(lambda x: f(x, True)))
    want = jax.value_and_grad(lambda x: f(x, False))(x)
    for a, b in zip(jax.tree.leaves(got(x)), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert got.lower(x).compile().as_text().count(" conditional(") == 6
    poisoned = cpu_kernels.fusion_barrier({"a": x["a"], "b": x["b"].at[0].set(jnp.nan)})
    assert all(bool(jnp.isnan(v).all()) for v in jax.tree.leaves(poisoned))
