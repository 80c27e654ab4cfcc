"""MCAV modules: Condense / Recall / ConvLSTM against numpy, masked memory == growing memory,
rollout index alignment, CAR starting as the identity, ablation switches, shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avjax.models.mcav import model as mcav_model
from avjax.models.mcav.motion import (
    Condense,
    ConvLSTMStack,
    MotionEstimator,
    Recall,
    attention,
)
from avjax.models.mcav.refine import ContextRefiner
from avjax.video.flow import warp

B, T, K, S = 2, 5, 2, 32
TINY_MME = dict(
    image_size=S,
    encoder_channels=(4, 4, 8, 8),
    audio_nf=4,
    lstm_features=8,
    lstm_layers=2,
    decoder_channels=(8, 4, 4),
)
TINY_CAR = dict(image_size=S, widths=(4, 4, 8, 8), mlp_hidden=8)


def _clip(seed=0, size=S, ch=1, audio=(23, 21), t=T):
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    frames = jax.random.uniform(k[0], (B, t, size, size, ch))
    flows = 2.0 * jax.random.normal(k[1], (B, t, size, size, 2))
    return frames, flows.at[:, 0].set(0.0), jax.random.normal(k[2], (B, t, *audio))


def _scaled(params, factor=4.0):
    """Larger weights, so that every input (the audio too) visibly moves the outputs."""
    return jax.tree.map(lambda p: p * factor if p.ndim > 1 else p, params)


@pytest.fixture(scope="module")
def mcav():
    """A tiny MME (recall over the masked memory) and CAR with their variables."""
    mme = MotionEstimator(recall_keys="memory", **TINY_MME)
    car = ContextRefiner(**TINY_CAR)
    frames, flows, audio = _clip()

    @jax.jit
    def make():
        mv = mme.init(jax.random.PRNGKey(0), frames, flows, audio)
        m = jnp.zeros((B, 2 * mme.dim))
        cv = car.init(jax.random.PRNGKey(1), frames[:, 0], frames[:, 0], m)
        params = _scaled(mv["params"])
        flow = params["decoder"]["flow"]  # flows of about a pixel, not N(0, 0.02)-small
        flow = {**flow, "kernel": flow["kernel"] * 100.0}
        params = {**params, "decoder": {**params["decoder"], "flow": flow}}
        return {**mv, "params": params}, cv

    mv, cv = make()
    return mme, car, {"mme": mv, "car": cv}


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _dense(p, x):
    return x @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)


@pytest.mark.parametrize("scale", ["none", "rsqrt_dim"])
def test_condense_equals_numpy(scale):
    """x~_a = x_a[t+1] + last row of softmax(Q K^T [/sqrt d]) V, Q K V kernel-1 convs of MM."""
    mem = jax.random.normal(jax.random.PRNGKey(0), (B, 4, 6))
    cond = Condense(6, scale)
    v = cond.init(jax.random.PRNGKey(1), mem)
    v = {"params": _scaled(v["params"], 3.0)}
    got = cond.apply(v, mem)[:, -1] + mem[:, -1]
    p, m = v["params"], np.asarray(mem, np.float64)
    q, k, val = _dense(p["query"], m), _dense(p["key"], m), _dense(p["value"], m)
    logits = q @ k.transpose(0, 2, 1) / (np.sqrt(6) if scale == "rsqrt_dim" else 1.0)
    want = m[:, -1] + (_softmax(logits) @ val)[:, -1]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert np.abs(want - m[:, -1]).max() > 0.1  # the attention term is not negligible


def test_recall_equals_numpy():
    """x~_v = x_v + softmax(Q(x_v) K(a)^T) V(a); masked keys get no weight; with one key the
    softmax is 1 and Recall adds V(a) everywhere (the paper's text)."""
    kx = jax.random.split(jax.random.PRNGKey(2), 3)
    xv = jax.random.normal(kx[0], (B, 3, 3, 6))
    keys = jax.random.normal(kx[1], (B, 4, 6))
    valid = jnp.asarray([True, True, True, False])[None, None, :]
    rec = Recall(6)
    v = rec.init(kx[2], xv, keys, valid)
    v = {"params": _scaled(v["params"], 3.0)}
    got = rec.apply(v, xv, keys, valid)
    p = v["params"]
    x, a = np.asarray(xv, np.float64), np.asarray(keys, np.float64)
    q = x.reshape(B, 9, 6) @ np.asarray(p["query"]["kernel"], np.float64)[0, 0] + np.asarray(
        p["query"]["bias"], np.float64
    )
    k, val = _dense(p["key"], a), _dense(p["value"], a)
    logits = q @ k.transpose(0, 2, 1)
    logits[..., 3] = -np.inf
    want = x + (_softmax(logits) @ val).reshape(B, 3, 3, 6)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # The masked key does not matter; one key: softmax == 1.
    keys2 = keys.at[:, 3].set(100.0)
    np.testing.assert_allclose(rec.apply(v, xv, keys2, valid), got, atol=1e-6)
    one = rec.apply(v, xv, keys[:, :1])
    np.testing.assert_allclose(one, x + _dense(p["value"], a[:, :1])[:, None], atol=1e-5)
    # The attention function's scaling switch.
    qq, kk = jnp.ones((1, 2, 4)), jnp.arange(8.0).reshape(1, 2, 4)
    w = attention(qq, kk, jnp.eye(2)[None], scale="rsqrt_dim")
    np.testing.assert_allclose(w[0, 0], _softmax(np.array([6.0, 22.0]) / 2.0), rtol=1e-5)


def _conv_same(x, w, b):
    """[B, H, W, Ci] (*) [3, 3, Ci, Co] 'SAME' correlation, numpy."""
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, wd = x.shape[1:3]
    out = np.zeros((*x.shape[:3], w.shape[-1]))
    for dy in range(3):
        for dx in range(3):
            out += xp[:, dy : dy + h, dx : dx + wd] @ w[dy, dx]
    return out + (0 if b is None else b)


def test_convlstm_stack_equals_numpy_step():
    """The 4-layer ConvLSTM stack, one step from a non-zero state, == numpy LSTM equations
    (gates i, f, g, o; layer l+1 reads layer l's new h)."""
    sig = lambda z: 1 / (1 + np.exp(-z))
    stack = ConvLSTMStack(features=3, num_layers=4, kernel=3)
    ks = jax.random.split(jax.random.PRNGKey(5), 10)
    x = jax.random.normal(ks[0], (B, 3, 3, 5))
    carry = tuple(
        (
            jax.random.normal(ks[2 * i + 1], (B, 3, 3, 3)),
            jax.random.normal(ks[2 * i + 2], (B, 3, 3, 3)),
        )
        for i in range(4)
    )
    v = stack.init(ks[9], carry, x)
    (new, top) = stack.apply(v, carry, x)
    h_in = np.asarray(x, np.float64)
    for i in range(4):
        p = v["params"][f"layer_{i}"]
        f64 = lambda a: np.asarray(a, np.float64)
        h, c = (f64(a) for a in carry[i])
        gates = _conv_same(h_in, f64(p["ih"]["kernel"]), f64(p["ih"]["bias"])) + _conv_same(
            h, f64(p["hh"]["kernel"]), None
        )
        gi, gf, gg, go = np.split(gates, 4, axis=-1)
        c = sig(gf) * c + sig(gi) * np.tanh(gg)
        h = sig(go) * np.tanh(c)
        np.testing.assert_allclose(new[i][0], h, atol=1e-5)
        np.testing.assert_allclose(new[i][1], c, atol=1e-5)
        h_in = h
    np.testing.assert_allclose(top, h_in, atol=1e-5)


def test_masked_buffer_equals_growing_memory(mcav):
    """Condense over the fixed [B, T, c] buffer (causal mask) == Condense of the memory grown
    one slot a step; the scanned MME (Recall over the masked buffer) == a Python loop of
    steps whose memory holds exactly x_a[0..i+1]."""
    mme, _, var = mcav
    mv = var["mme"]
    frames, flows, audio = _clip(seed=1)
    xa = mme.apply(mv, audio, False, method=MotionEstimator.encode_audio)
    masked = mme.apply(mv, xa, method=MotionEstimator.condense_memory)
    for i in range(T - 1):
        grown = mme.apply(mv, xa[:, : i + 2], method=MotionEstimator.condense_growing)
        np.testing.assert_allclose(masked[:, i], grown, rtol=1e-5, atol=1e-5)

    use_gt = jnp.arange(T - 1) < K
    got, _ = jax.jit(lambda v: mcav_model.run_motion(mme, v, frames, flows, audio, use_gt))(mv)
    carry = mme.initial_carry(B)
    step = jax.jit(lambda c, inp: mme.apply(mv, c, inp, False, method=MotionEstimator.step))
    want = []
    for i in range(T - 1):
        memory = xa[:, : i + 2]  # the growing memory, no padding slots
        inp = {
            "frame": frames[:, i],
            "flow": flows[:, i],
            "use_gt": jnp.asarray(i < K),
            "audio": mme.apply(mv, memory, method=MotionEstimator.condense_growing),
            "memory": memory,
            "pos": jnp.asarray(i, jnp.int32),
        }
        carry, out = step(carry, inp)
        want.append(out["flow"])
    np.testing.assert_allclose(got["flow"], jnp.stack(want, 1), rtol=1e-4, atol=1e-4)
    assert float(jnp.abs(got["flow"]).max()) > 0.1
    # The unrolled loop (`scan_unroll=0`, the CPU setting) computes the same.
    unrolled, _ = jax.jit(
        lambda v: mcav_model.run_motion(mme, v, frames, flows, audio, use_gt, unroll=0)
    )(mv)
    np.testing.assert_allclose(unrolled["flow"], got["flow"], rtol=1e-5, atol=1e-5)


def test_rollout_index_alignment_and_no_future_reads(mcav):
    """predict: MME's frames are the warp chain of V[K-1] by F_hat[K], F_hat[K+1], ...;
    future frames / flows are never read; an untrained CAR (zero-init residual) returns
    exactly the warp chain, so CAR consumes the right flow at every step; the audio matters."""
    mme, car, var = mcav
    frames, flows, audio = _clip(seed=2)
    run = jax.jit(lambda v, f, fl, a: mcav_model.predict(mme, car, v, f, fl, a, K))
    run_mme = jax.jit(lambda v, f, fl, a: mcav_model.predict(mme, None, v, f, fl, a, K))
    full, alone = run(var, frames, flows, audio), run_mme(var, frames, flows, audio)
    assert full["frames"].shape == (B, T - K, S, S, 1)
    assert full["flows"].shape == (B, T - K, S, S, 2)
    prev = frames[:, K - 1]
    for j in range(T - K):
        prev = warp(prev, alone["flows"][:, j])
        np.testing.assert_allclose(alone["frames"][:, j], prev, atol=1e-5)
    np.testing.assert_allclose(full["flows"], alone["flows"], atol=1e-6)
    np.testing.assert_allclose(full["frames"], alone["frames"], atol=1e-6)
    np.testing.assert_allclose(full["warped"], alone["frames"], atol=1e-6)

    changed = run(var, frames.at[:, K:].set(1.0), flows.at[:, K:].set(9.0), audio)
    for key in ("frames", "flows"):
        np.testing.assert_array_equal(changed[key], full[key])
    other = run(var, frames, flows, audio.at[:, K:].multiply(-1.0))
    assert float(jnp.abs(other["flows"] - full["flows"]).max()) > 1e-3

    # The first predicted flow equals the teacher-forced pass's (same inputs up to V[K-1]).
    tf, _ = jax.jit(
        lambda v: mcav_model.run_motion(mme, v, frames, flows, audio, jnp.ones(T - 1, bool))
    )(var["mme"])
    np.testing.assert_allclose(full["flows"][:, 0], tf["flow"][:, K - 1], atol=1e-5)
    assert float(jnp.abs(full["flows"][:, -1] - tf["flow"][:, -1]).max()) > 1e-3


def test_trained_car_changes_frames_and_reads_the_context(mcav):
    """A CAR with non-zero output conv and modulation MLPs: frames differ from the warps,
    and the context frame V[K-1] and the motion feature change them."""
    mme, car, var = mcav
    frames = _clip(seed=3)[0]
    # The zero-initialised layers (output conv, last MLP layers) set to random values.
    leaves, tree = jax.tree_util.tree_flatten_with_path(var["car"]["params"])
    keys = jax.random.split(jax.random.PRNGKey(8), len(leaves))
    zero_init = lambda path: "out" in str(path) or "_1" in str(path)
    cv = jax.tree_util.tree_unflatten(
        tree,
        [
            jax.random.normal(kk, p.shape) if zero_init(path) else p
            for (path, p), kk in zip(leaves, keys)
        ],
    )
    v = {**var, "car": {**var["car"], "params": cv}}
    k = jax.random.split(jax.random.PRNGKey(9), 2)
    warped = jax.random.uniform(k[0], (B, S, S, 1))
    encode = jax.jit(lambda f: car.apply(v["car"], f, False, method=ContextRefiner.encode_context))
    ctx, ctx2 = encode(frames[:, 0]), encode(frames[:, 1])
    m = jax.random.normal(k[1], (B, 2 * mme.dim))
    refine = jax.jit(
        lambda c, m: car.apply(v["car"], warped, c, m, False, method=ContextRefiner.refine)
    )
    y = refine(ctx, m)
    assert float(jnp.abs(y - warped).max()) > 1e-2
    assert float(jnp.abs(refine(ctx2, m) - y).max()) > 1e-4
    assert float(jnp.abs(refine(ctx, -m) - y).max()) > 1e-4
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


@pytest.mark.parametrize("size,ch,audio,feat", [(48, 1, (23, 21), 3), (64, 3, (45, 17), 4)])
def test_paper_shapes_48_and_64(size, ch, audio, feat):
    """Paper-size modules (abstractly): x_v is feat x feat x 128, flows and frames full size."""
    mme = MotionEstimator(image_size=size, channels=ch, audio_shape=audio)
    car = ContextRefiner(image_size=size, channels=ch)
    frames, flows, a = _clip(size=size, ch=ch, audio=audio, t=4)

    def go(f, fl, a):
        mv = mme.init(jax.random.PRNGKey(0), f, fl, a)
        cv = car.init(jax.random.PRNGKey(1), f[:, 0], f[:, 0], jnp.zeros((B, 256)))
        xv = mme.apply(mv, f[:, 0], fl[:, 0], False, method=MotionEstimator.encode_motion)
        return xv, mcav_model.predict(mme, car, {"mme": mv, "car": cv}, f, fl, a, 2)

    xv, out = jax.eval_shape(go, frames, flows, a)
    assert xv.shape == (B, feat, feat, 128)
    assert out["frames"].shape == (B, 2, size, size, ch)
    assert out["flows"].shape == (B, 2, size, size, 2)


def _param_names(module, *args):
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args))
    return set(shapes["params"])


def test_ablation_switches_remove_their_modules():
    frames, flows, audio = _clip(t=3)
    full = _param_names(MotionEstimator(**TINY_MME), frames, flows, audio)
    assert {"memory", "recall_attention"} <= full
    assert "memory" not in _param_names(
        MotionEstimator(condense=False, **TINY_MME), frames, flows, audio
    )
    assert "recall_attention" not in _param_names(
        MotionEstimator(recall=False, **TINY_MME), frames, flows, audio
    )
    args = (frames[:, 0], frames[:, 0], jnp.zeros((B, 16)))
    assert {"context_encoder", "modulate", "unet"} == _param_names(
        ContextRefiner(**TINY_CAR), *args
    )
    assert _param_names(ContextRefiner(context=False, **TINY_CAR), *args) == {"unet"}
    assert _param_names(ContextRefiner(modulation=False, **TINY_CAR), *args) == {
        "context_encoder",
        "unet",
    }

    # "add" merges the context into the skip (same width); "concat" widens the decoder input.
    def dec_in(merge):
        shapes = jax.eval_shape(
            lambda: ContextRefiner(merge=merge, **TINY_CAR).init(jax.random.PRNGKey(0), *args)
        )
        return shapes["params"]["unet"]["dec3"]["conv1"]["conv"]["kernel"].shape[2]

    assert (dec_in("concat"), dec_in("add")) == (16, 8)
    with pytest.raises(ValueError, match="recall_keys"):
        _param_names(MotionEstimator(recall_keys="nope", **TINY_MME), frames, flows, audio)


def test_auto_unroll_has_no_loop_on_cpu_and_the_same_gradients(mcav):
    """`scan_unroll=-1` (AUTO_UNROLL): no while loop when lowered for CPU (XLA:CPU's slow
    convolution gradients in loop bodies) but a fusion barrier per step, a loop for GPU, and
    the CAR loss and gradients of a one-step-per-iteration scan."""
    mme, car, var = mcav
    frames, flows, audio = _clip(seed=3)
    m, _ = jax.jit(
        lambda v: mcav_model.run_motion(mme, v, frames, flows, audio, jnp.arange(T - 1) < K)
    )(var["mme"])
    use_gt = jnp.arange(T - K) == 0

    def loss(params, unroll):
        out, _ = mcav_model.run_refine(
            car,
            {**var["car"], "params": params},
            mme,
            var["mme"],
            frames,
            m["flow"],
            m["audio"],
            K,
            use_gt,
            train=True,
            unroll=unroll,
        )
        return jnp.mean((out["frame"] - frames[:, K:]) ** 2)

    params = _scaled(var["car"]["params"])
    # One trace per unroll; the unrolled one is lowered for the CPU and for CUDA alike.
    traced = {
        u: jax.jit(jax.value_and_grad(lambda p, u=u: loss(p, u))).trace(params)
        for u in (1, mcav_model.AUTO_UNROLL)
    }
    compiled = {u: t.lower().compile() for u, t in traced.items()}
    grads = {u: fn(params) for u, fn in compiled.items()}
    # The unrolled steps' carries pass through `fusion_barrier`'s conditionals, which XLA
    # keeps (tests/test_conv.py checks the barrier itself).
    unrolled_cpu = compiled[mcav_model.AUTO_UNROLL].as_text()
    assert " conditional(" in unrolled_cpu and " while(" not in unrolled_cpu
    assert " while(" in compiled[1].as_text()
    (l1, g1), (la, ga) = grads[1], grads[mcav_model.AUTO_UNROLL]
    assert float(l1) > 1e-4  # the scaled CAR changes the frames: a real loss
    np.testing.assert_allclose(la, l1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(g1), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g1)) > 1e-3

    cuda = traced[mcav_model.AUTO_UNROLL].lower(lowering_platforms=("cuda",)).as_text()
    assert "stablehlo.while" in cuda
