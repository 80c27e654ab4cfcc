"""Sound2Sight modules: scan == unrolled, causal transformer == prefix re-runs, BN, negatives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avjax.models.sound2sight import discriminator as dl
from avjax.models.sound2sight.convnets import AudioEncoder, FrameDecoder, FrameEncoder
from avjax.models.sound2sight.discriminator import Discriminator
from avjax.models.sound2sight.layers import ConvTranspose, FrameBatchNorm
from avjax.models.sound2sight.model import Sound2Sight, rollout
from avjax.models.sound2sight.transformer import CausalTransformer

TINY = dict(g_dim=16, z_dim=4, rnn_size=32, nf=8, audio_nf=8, dim_ff=16, num_heads=2)
B, T, N_PAST = 2, 7, 3


def _inputs(size=48, ch=1, audio=(23, 21), seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.uniform(k[0], (B, T, size, size, ch))
    a = jax.random.normal(k[1], (B, T, *audio))
    eps = jax.random.normal(k[2], (B, T - 1, TINY["z_dim"]))
    return x, a, eps


@pytest.fixture(scope="module")
def gen48():
    """A tiny 48-px generator whose weights are scaled up so every input matters."""
    m = Sound2Sight(n_past=N_PAST, **TINY)
    x, a, eps = _inputs()

    @jax.jit
    def make(x, a, eps):
        v = m.init({"params": jax.random.PRNGKey(0)}, x, a, eps, train=False)
        params = jax.tree.map(lambda p: p * 8.0 if p.ndim > 1 else p, v["params"])
        # Non-trivial running statistics, as after training.
        _, upd = m.apply(
            {"params": params, "batch_stats": v["batch_stats"]},
            x,
            a,
            eps,
            train=True,
            rngs={"dropout": jax.random.PRNGKey(1)},
            mutable=["batch_stats"],
        )
        return {"params": params, "batch_stats": upd["batch_stats"]}

    return m, make(x, a, eps)


@pytest.mark.parametrize(
    "size,ch,audio,skip_sizes",
    [(48, 1, (23, 21), (24, 12, 6)), (64, 3, (45, 17), (32, 16, 8, 4))],
)
def test_shapes_48_and_64(size, ch, audio, skip_sizes):
    """Shapes of every module for both variants (abstractly: `jax.eval_shape`, no compute)."""
    x, a, eps = _inputs(size, ch, audio)
    key = jax.random.PRNGKey(0)
    shape = lambda f, *args: jax.eval_shape(f, *args)
    enc = FrameEncoder(16, 8, size)
    h, skips = shape(lambda x: enc.apply(enc.init(key, x, False), x, False), x)
    assert h.shape == (B, T, 16)
    assert tuple(s.shape[2] for s in skips) == skip_sizes
    dec = FrameDecoder(ch, 8, size)
    hz, sz = jnp.zeros(h.shape), [jnp.zeros(s.shape) for s in skips]
    y = shape(lambda h, s: dec.apply(dec.init(key, h, s, False), h, s, False), hz, sz)
    assert y.shape == x.shape
    aenc = AudioEncoder(16, 8, audio)
    assert shape(lambda a: aenc.apply(aenc.init(key, a, False), a, False), a).shape == (B, T, 16)

    m = Sound2Sight(image_size=size, channels=ch, audio_shape=audio, n_past=N_PAST, **TINY)

    def train_pass(x, a, eps):
        v = m.init({"params": key}, x, a, eps, train=False)
        out, _ = m.apply(v, x, a, eps, train=True, rngs={"dropout": key}, mutable=["batch_stats"])
        return out, rollout(m, v, x, a, eps)

    out, free = shape(train_pass, x, a, eps)
    assert out["pred"].shape == (B, T - 1, size, size, ch)
    assert all(out[k].shape == (B, T - 1, 4) for k in ("mu", "logvar", "mu_p", "logvar_p"))
    assert free.shape == (B, T - N_PAST, size, size, ch)

    d = Discriminator(image_size=size, audio_shape=audio, dim=16, nf=8, audio_nf=8, rnn_size=32)
    seq, frame = shape(lambda x, a: d.apply(d.init(key, x, a), x, a), x, a)
    assert seq.shape == (B, T - 2, 2) and frame.shape == (B, T, 2)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="audio patches"):
        _, a, _ = _inputs()
        AudioEncoder(16, 8, (45, 17)).init(jax.random.PRNGKey(0), a, False)
    with pytest.raises(ValueError, match="image_size"):
        FrameEncoder(16, 8, 32).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)), False)


def test_scan_rollout_equals_unrolled_steps(gen48):
    """`rollout` (two lax.scans) == a Python loop over `Sound2Sight.step`."""
    m, v = gen48
    x, a, eps = _inputs(seed=3)
    got = jax.jit(lambda v, x, a, e: rollout(m, v, x, a, e))(v, x, a, eps)

    a_tr = m.apply(v, a, method=Sound2Sight.audio_features)
    carry = m.apply(v, B, T - 1, method=Sound2Sight.initial_state)
    step = jax.jit(
        lambda v, c, inp, decode: m.apply(v, c, inp, decode, method=Sound2Sight.step),
        static_argnums=3,
    )
    preds = []
    for i in range(1, T):
        inp = {
            "frame": x[:, i - 1],
            "use_gt": jnp.asarray(i <= N_PAST),
            "audio": a_tr[:, i - 1],
            "eps": eps[:, i - 1],
            "pos": jnp.asarray(i - 1, jnp.int32),
        }
        carry, out = step(v, carry, inp, i >= N_PAST)
        if out is not None:
            preds.append(out)
    want = jnp.stack(preds, 1)
    np.testing.assert_allclose(got, want, atol=2e-5)
    # Autoregressive: frames after n_past are ignored.
    x2 = x.at[:, N_PAST:].set(0.0)
    np.testing.assert_allclose(
        jax.jit(lambda v, x, a, e: rollout(m, v, x, a, e))(v, x2, a, eps), got, atol=1e-6
    )


def test_teacher_forced_rollout_equals_parallel_pass(gen48):
    """Per-step generation fed ground truth == the batched-over-time pass in eval mode.

    This is what makes the one-pass causal transformers and batched conv stacks the
    official per-step computation (docs/sound2sight.md 1.6).
    """
    m, v = gen48
    x, a, eps = _inputs(seed=4)
    par = jax.jit(lambda v, x, a, e: m.apply(v, x, a, e, train=False)["pred"])(v, x, a, eps)
    tf = jax.jit(lambda v, x, a, e: rollout(m, v, x, a, e, teacher_forced=True))(v, x, a, eps)
    np.testing.assert_allclose(tf, par[:, N_PAST - 1 :], atol=2e-5)
    free = jax.jit(lambda v, x, a, e: rollout(m, v, x, a, e))(v, x, a, eps)
    np.testing.assert_allclose(free[:, 0], par[:, N_PAST - 1], atol=2e-5)  # same first step
    assert float(jnp.max(jnp.abs(free[:, -1] - par[:, -1]))) > 1e-3  # then it diverges


def test_causal_transformer_equals_prefix_reruns_and_cache():
    tr = CausalTransformer(d_model=32, output=16, dim_ff=16, num_heads=4)
    x = jax.random.normal(jax.random.PRNGKey(0), (B, 6, 16))
    v = tr.init(jax.random.PRNGKey(1), x)
    run = jax.jit(tr.apply)
    full = run(v, x)
    cache = tr.apply(v, B, 6, method=CausalTransformer.init_cache)
    step = jax.jit(lambda v, x, c, t: tr.apply(v, x, c, t, method=CausalTransformer.step))
    for t in range(6):
        prefix = run(v, x[:, : t + 1])  # the official per-step re-run
        np.testing.assert_allclose(full[:, t], prefix[:, -1], atol=1e-5)
        out, cache = step(v, x[:, t], cache, jnp.asarray(t))
        np.testing.assert_allclose(out, full[:, t], atol=1e-5)
    # Train mode: dropout is active (different outputs for different keys).
    drop = jax.jit(lambda v, x, k: tr.apply(v, x, True, rngs={"dropout": k}))
    d1 = drop(v, x, jax.random.PRNGKey(2))
    d2 = drop(v, x, jax.random.PRNGKey(3))
    assert float(jnp.max(jnp.abs(d1 - d2))) > 1e-3


def test_frame_batchnorm_is_per_frame():
    """[B, T, H, W, C] in train mode == T separate BatchNorm2d calls (normalised outputs and
    the PyTorch running-stat updates, momentum 0.1 with the unbiased variance)."""
    x = (
        jax.random.normal(jax.random.PRNGKey(0), (4, 3, 5, 5, 2))
        * jnp.arange(1, 4)[None, :, None, None, None]
    )
    bn = FrameBatchNorm()
    v = bn.init(jax.random.PRNGKey(1), x, False)
    y, upd = bn.apply(v, x, True, mutable=["batch_stats"])
    mean, var = np.zeros(2), np.ones(2)
    xs = np.asarray(x, np.float64)
    for t in range(3):
        f = xs[:, t]
        m, s2 = f.mean((0, 1, 2)), f.var((0, 1, 2))
        want = (f - m) / np.sqrt(s2 + 1e-5) * np.asarray(v["params"]["scale"])
        np.testing.assert_allclose(y[:, t], want, atol=1e-4)
        n = f.shape[0] * f.shape[1] * f.shape[2]
        mean = 0.9 * mean + 0.1 * m
        var = 0.9 * var + 0.1 * s2 * n / (n - 1)
    np.testing.assert_allclose(upd["batch_stats"]["mean"], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(upd["batch_stats"]["var"], var, rtol=1e-5)
    # Eval mode uses the running averages.
    y_eval = bn.apply({**v, "batch_stats": upd["batch_stats"]}, x, False)
    want = (xs - mean) / np.sqrt(var + 1e-5) * np.asarray(v["params"]["scale"])
    np.testing.assert_allclose(y_eval, want, atol=1e-4)


def test_discriminator_negatives_on_hand_built_tensors():
    """Windows are [real_{i-2}, real_{i-1}, last_i]; the audio mismatch rolls the batch by one."""
    b, length = 3, 5
    # Embedding value = 100 * sample + frame index (+ 50 for fakes), so every entry is traceable.
    real = (100 * jnp.arange(b)[:, None] + jnp.arange(length)[None, :]).astype(jnp.float32)
    real = real[..., None]
    fake = real + 50
    np.testing.assert_array_equal(dl.window_index(length, 3), [[0, 1, 2], [1, 2, 3], [2, 3, 4]])
    w = dl.make_windows(real, fake, 3)[..., 0]
    assert w.shape == (b, 3, 3)
    np.testing.assert_array_equal(w[0], [[0, 1, 52], [1, 2, 53], [2, 3, 54]])
    np.testing.assert_array_equal(w[2], [[200, 201, 252], [201, 202, 253], [202, 203, 254]])
    np.testing.assert_array_equal(
        dl.make_windows(real, real, 3)[1, :, :, 0],
        [[100, 101, 102], [101, 102, 103], [102, 103, 104]],
    )
    rolled = dl.roll_batch(real)[..., 0]
    np.testing.assert_array_equal(rolled[:, 0], [100, 200, 0])  # official cat[A[1:], A[:1]]
    # Buffer 2: [real_{i-1}, last_i] from i = 1.
    np.testing.assert_array_equal(dl.make_windows(real, fake, 2)[0, :, :, 0][0], [0, 51])


@pytest.mark.parametrize("k,s,p,hw", [(4, 2, 1, 5), (6, 1, 0, 1), (4, 1, 0, 1)])
def test_conv_transpose_equals_pytorch_formula(k, s, p, hw):
    """The col2im ConvTranspose module (with bias) == PyTorch's out[s*i + t - p] += x[i] w[t]."""
    x = jax.random.normal(jax.random.PRNGKey(0), (2, hw, hw, 3))
    m = ConvTranspose(5, k, (s, s), (p, p))
    v = m.init(jax.random.PRNGKey(1), x)
    v = {"params": {**v["params"], "bias": jnp.arange(5.0)}}
    y = jax.jit(m.apply)(v, x)
    xn, wn = np.asarray(x, np.float64), np.asarray(v["params"]["kernel"], np.float64)
    size = (hw - 1) * s + k - 2 * p
    want = np.zeros((2, size, size, 5)) + np.arange(5.0)
    for i in range(hw):
        for j in range(hw):
            for ty in range(k):
                for tx in range(k):
                    oy, ox = s * i + ty - p, s * j + tx - p
                    if 0 <= oy < size and 0 <= ox < size:
                        want[:, oy, ox] += xn[:, i, j] @ wn[ty, tx]
    np.testing.assert_allclose(y, want, atol=1e-5)
