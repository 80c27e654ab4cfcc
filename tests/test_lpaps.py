"""LPAPS perceptual loss and its converter, against an independent numpy reference (NCHW)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avjax.convert.vggishish import lpaps_from_torch
from avjax.losses.lpaps import LPAPS, lpaps_stats_from_mels

LAYERS = (4, "MP", 8)  # torch features: 0 conv, 1 relu (tap), 2 MP, 3 conv, 4 relu (tap)
F, T = 8, 16


def np_conv3x3(x, w, b):
    """torch Conv2d(k3, p1): x [B,I,H,W], w [O,I,3,3] -> [B,O,H,W]."""
    h, wd = x.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((x.shape[0], w.shape[0], h, wd))
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("bihw,oi->bohw", xp[:, :, dy : dy + h, dx : dx + wd], w[:, :, dy, dx])
    return out + b[None, :, None, None]


def np_lpaps(w, x, y):
    """torch LPAPS.forward for LAYERS; w holds torch-layout arrays, x/y [B,1,F,T] -> [B]."""
    taps = []
    for a in (x, y):
        a = (a - w["shift"][None, None, :, None]) / w["scale"][None, None, :, None]
        r1 = np.maximum(np_conv3x3(a, w["c0"], w["b0"]), 0)
        b, c, h, wd = r1.shape
        p = r1.reshape(b, c, h // 2, 2, wd // 2, 2).max(axis=(3, 5))
        r2 = np.maximum(np_conv3x3(p, w["c3"], w["b3"]), 0)
        taps.append((r1, r2))
    total = 0.0
    for k in range(2):
        fx, fy = (t[k] / (np.sqrt((t[k] ** 2).sum(axis=1, keepdims=True)) + 1e-10) for t in taps)
        lin = np.einsum("bchw,c->bhw", (fx - fy) ** 2, w[f"lin{k}"][0, :, 0, 0])
        total = total + lin.mean(axis=(1, 2))
    return total


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (3, F, T, 1)).astype(np.float32)
    y = np.clip(x + rng.normal(0, 0.3, x.shape), -1, 1).astype(np.float32)
    model = LPAPS(conv_layers=LAYERS, num_bins=F)
    variables = jax.jit(model.init)(jax.random.key(0), x, x)
    apply = jax.jit(model.apply, static_argnames="train")
    return model, variables, apply, x, y


def test_variable_layout(setup):
    _, variables, *_ = setup
    shapes = jax.tree.map(jnp.shape, variables)
    assert shapes["stats"] == {"shift": (F,), "scale": (F,)}
    assert shapes["params"]["net"] == {
        "features_0": {"kernel": (3, 3, 1, 4), "bias": (4,)},
        "features_3": {"kernel": (3, 3, 4, 8), "bias": (8,)},
    }
    assert shapes["params"]["lin0"] == {"model_1": {"kernel": (1, 1, 4, 1)}}
    assert shapes["params"]["lin1"] == {"model_1": {"kernel": (1, 1, 8, 1)}}
    assert not np.any(np.asarray(variables["stats"]["shift"]))
    np.testing.assert_array_equal(variables["stats"]["scale"], 1.0)
    lin = np.asarray(variables["params"]["lin1"]["model_1"]["kernel"])
    assert np.abs(lin).max() <= 1 / np.sqrt(8)  # torch default U(-1/sqrt(fan_in), ...)


def test_identical_inputs_give_zero_and_symmetry(setup):
    _, variables, apply, x, y = setup
    np.testing.assert_allclose(apply(variables, x, x), np.zeros(3), atol=1e-10)  # rounding only
    d_xy, d_yx = apply(variables, x, y), apply(variables, y, x)
    assert d_xy.shape == (3,) and d_xy.dtype == jnp.float32
    np.testing.assert_allclose(d_xy, d_yx, rtol=1e-6)
    assert np.all(np.asarray(d_xy) > 0)


def test_hand_computation_with_stats(setup):
    _, variables, apply, x, y = setup
    rng = np.random.default_rng(1)
    stats = {"shift": rng.normal(0, 0.2, F), "scale": rng.uniform(0.5, 2.0, F)}
    stats = {k: v.astype(np.float32) for k, v in stats.items()}
    p = jax.tree.map(np.asarray, variables["params"])
    to_torch = lambda k: k.transpose(3, 2, 0, 1)  # (kh,kw,I,O) -> (O,I,kh,kw)
    w = dict(
        stats,
        c0=to_torch(p["net"]["features_0"]["kernel"]),
        b0=p["net"]["features_0"]["bias"],
        c3=to_torch(p["net"]["features_3"]["kernel"]),
        b3=p["net"]["features_3"]["bias"],
        lin0=to_torch(p["lin0"]["model_1"]["kernel"]),
        lin1=to_torch(p["lin1"]["model_1"]["kernel"]),
    )
    to_nchw = lambda a: a.transpose(0, 3, 1, 2).astype(np.float64)
    got = apply({"params": variables["params"], "stats": stats}, x, y)
    np.testing.assert_allclose(got, np_lpaps(w, to_nchw(x), to_nchw(y)), rtol=1e-4)
    # Stats are really applied: equal to pre-scaled inputs with identity stats.
    pre = lambda a: (a - stats["shift"][:, None, None]) / stats["scale"][:, None, None]
    np.testing.assert_allclose(got, apply(variables, pre(x), pre(y)), rtol=1e-5)
    assert not np.allclose(got, apply(variables, x, y), rtol=1e-3)


def test_dropout_only_in_train_mode(setup):
    _, variables, apply, x, y = setup
    eval_d = apply(variables, x, y)
    np.testing.assert_array_equal(eval_d, apply(variables, x, y, train=False))
    rngs = lambda s: {"dropout": jax.random.key(s)}
    tr1, tr2 = (apply(variables, x, y, train=True, rngs=rngs(s)) for s in (1, 2))
    assert not np.allclose(tr1, eval_d) and not np.allclose(tr1, tr2)
    no_drop = LPAPS(conv_layers=LAYERS, num_bins=F, dropout_rate=0.0)
    no_drop_d = jax.jit(no_drop.apply, static_argnames="train")(variables, x, y, train=True)
    np.testing.assert_allclose(no_drop_d, eval_d, rtol=1e-6)


def test_gradient_reaches_inputs(setup):
    model, variables, _, x, y = setup
    g = jax.jit(jax.grad(lambda a: model.apply(variables, a, y).sum()))(x)
    assert np.all(np.isfinite(g)) and np.abs(g).sum() > 0


def test_bad_input_shape_is_named(setup):
    model, variables, *_ = setup
    with pytest.raises(ValueError, match=r"num_bins=8"):
        model.apply(variables, np.zeros((1, 7, T, 1)), np.zeros((1, 7, T, 1)))


def test_stats_from_mels():
    mels = np.random.default_rng(2).uniform(0, 1, (4, F, 10))
    stats = lpaps_stats_from_mels(mels)
    for f in range(F):
        np.testing.assert_allclose(stats["shift"][f], 2 * mels[:, f].mean() - 1, rtol=1e-6)
        np.testing.assert_allclose(stats["scale"][f], 2 * mels[:, f].std(), rtol=1e-6)


# ---- converter ----


@pytest.fixture(scope="module")
def torch_sd():
    """Official key layout (inside a SpecVQGAN Lightning checkpoint) with random values."""
    rng = np.random.default_rng(3)
    r = lambda *s: rng.normal(0, 0.3, s).astype(np.float32)
    pre = "loss.perceptual_loss."
    return {
        "encoder.conv_in.weight": r(2, 1, 3, 3),  # outside the prefix: ignored
        pre + "scaling_layer.shift": r(1, 1, F, 1),
        pre + "scaling_layer.scale": rng.uniform(0.5, 2, (1, 1, F, 1)).astype(np.float32),
        pre + "net.slice1.0.weight": r(4, 1, 3, 3),
        pre + "net.slice1.0.bias": r(4),
        pre + "net.slice2.3.weight": r(8, 4, 3, 3),
        pre + "net.slice2.3.bias": r(8),
        pre + "lin0.model.1.weight": r(1, 4, 1, 1),
        pre + "lin1.model.1.weight": r(1, 8, 1, 1),
    }


def test_converter_matches_torch_reference(setup, torch_sd):
    _, _, apply, x, y = setup
    variables = lpaps_from_torch({"state_dict": torch_sd}, conv_layers=LAYERS, num_bins=F)
    s = {k.removeprefix("loss.perceptual_loss."): v for k, v in torch_sd.items()}
    w = {
        "shift": s["scaling_layer.shift"].reshape(F),
        "scale": s["scaling_layer.scale"].reshape(F),
        "c0": s["net.slice1.0.weight"],
        "b0": s["net.slice1.0.bias"],
        "c3": s["net.slice2.3.weight"],
        "b3": s["net.slice2.3.bias"],
        "lin0": s["lin0.model.1.weight"],
        "lin1": s["lin1.model.1.weight"],
    }
    to_nchw = lambda a: a.transpose(0, 3, 1, 2).astype(np.float64)
    got = apply(variables, x, y)
    np.testing.assert_allclose(got, np_lpaps(w, to_nchw(x), to_nchw(y)), rtol=1e-4)


def test_converter_error_messages(torch_sd):
    sd = {k: v for k, v in torch_sd.items() if not k.endswith("lin1.model.1.weight")}
    with pytest.raises(ValueError, match=r"missing keys \['lin1.model.1.weight'\]"):
        lpaps_from_torch(sd, conv_layers=LAYERS, num_bins=F)
    sd = dict(torch_sd, **{"loss.perceptual_loss.scaling_layer.shift": np.zeros((1, 1, 80, 1))})
    with pytest.raises(ValueError, match=r"scaling_layer.shift: got \(1, 1, 80, 1\), expected"):
        lpaps_from_torch(sd, conv_layers=LAYERS, num_bins=F)
