"""SpecVQGAN GPT: sizes, KV cache == full forward, sampling filters and samplers, long audio,
the official-checkpoint converter (against a numpy minGPT), and Video2Sound end to end."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy.special import erf

from avjax.checkpoints import save_imported
from avjax.convert.gpt import transformer_from_torch
from avjax.models.specvqgan import sampling
from avjax.models.specvqgan.gpt import GPT, decay_mask
from configs import specvqgan_transformer_vas, specvqgan_transformer_vggsound

V, TC, D = 32, 6, 12


def _n(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _abstract(model, num_feats):
    feats = jnp.zeros((1, num_feats, model.feat_dim)) if model.feat_dim else None
    labels = jnp.zeros((1,), jnp.int32) if model.num_classes else None
    return jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32), feats, labels)
    )["params"]


def test_parameter_counts_match_official():
    paper = GPT(1024, 477, 24, 16, 1024, feat_dim=2048)
    assert _n(_abstract(paper, 212)) == 306_995_200
    small = GPT(1024, 270, 4, 8, 256, feat_dim=2048)
    assert _n(_abstract(small, 5)) == 4_277_504
    c = specvqgan_transformer_vggsound.get_config()
    assert (c.model.vocab_size, c.model.block_size, c.optim.base_lr) == (1024, 477, 5e-6)
    vas = specvqgan_transformer_vas.get_config()
    assert (vas.model.vocab_size, vas.optim.base_lr, vas.data.global_batch_size) == (128, 1e-6, 2)
    tiny = specvqgan_transformer_vggsound.get_config("tiny")
    assert tiny.data.global_batch_size % 8 == 0 and tiny.train.checkpoint_every <= 10


@pytest.fixture(scope="module")
def tiny():
    """A 2-layer GPT conditioned on features and a class token, with params."""
    model = GPT(V, TC + 1 + 40, n_layer=2, n_head=4, n_embd=32, feat_dim=D, num_classes=3)
    feats = jax.random.normal(jax.random.PRNGKey(1), (2, TC, D))
    labels = jnp.array([0, 2])
    params = jax.jit(model.init)(
        jax.random.PRNGKey(0), jnp.zeros((1, 3), jnp.int32), feats[:1], labels[:1]
    )
    # Non-zero positional embeddings, so a wrong cache position would show.
    params = jax.tree.map(lambda x: x, params["params"])
    params["pos_emb"] = 0.1 * jax.random.normal(jax.random.PRNGKey(3), params["pos_emb"].shape)
    return model, params, feats, labels


def test_kv_cache_logits_equal_full_forward(tiny):
    model, params, feats, labels = tiny
    tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 30), 0, V)
    full = model.apply({"params": params}, tokens, feats, labels)  # [2, 7 + 30, V]
    cond = model.apply({"params": params}, feats, labels, method=GPT.embed_condition)
    tc = cond.shape[1]
    assert tc == TC + 1  # features then the class token
    step = jax.jit(lambda p, t, c, pos: model.apply({"params": p}, t, cache=c, pos=pos))
    logits, cache = model.apply(
        {"params": params}, tokens[:, :4], cond=cond, cache=model.init_cache(2), pos=0
    )
    outs = [logits]
    for i in range(4, 30):
        logits, cache = step(params, tokens[:, i : i + 1], cache, tc + i)
        outs.append(logits)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, rtol=1e-5, atol=1e-5)


def test_top_k_and_top_p_masks():
    x = jnp.array([[1.0, 3.0, 2.0, 3.0, 0.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    ninf = -np.inf
    np.testing.assert_array_equal(
        sampling.top_k_filter(x, 2), [[ninf, 3, ninf, 3, ninf], [5, 4, ninf, ninf, ninf]]
    )
    np.testing.assert_array_equal(  # ties with the k-th largest stay, as torch's top_k_logits
        sampling.top_k_filter(x, 3), [[ninf, 3, 2, 3, ninf], [5, 4, 3, ninf, ninf]]
    )
    np.testing.assert_array_equal(sampling.top_k_filter(x, 0), x)
    logp = jnp.log(jnp.array([[0.1, 0.5, 0.3, 0.1]]))
    keep = lambda p: np.isfinite(np.asarray(sampling.top_p_filter(logp, p)))[0].tolist()
    assert keep(0.5) == [False, True, False, False]  # 0.5 reached by the first token
    assert keep(0.6) == [False, True, True, False]
    assert keep(0.85) == [True, True, True, True]  # 0.8 < 0.85: the 0.1 tie comes along
    assert keep(0.01) == [False, True, False, False]  # the most likely token always stays
    assert keep(1.0) == [True] * 4
    f = sampling.filter_logits(logp, temperature=2.0, top_k=2, top_p=1.0)
    np.testing.assert_allclose(f[0, 1:3], logp[0, 1:3] / 2.0)
    assert np.isneginf(f[0, 0]) and np.isneginf(f[0, 3])
    g = sampling.draw(logp, jax.random.PRNGKey(0), temperature=0.0)
    assert int(g[0]) == 1  # temperature 0: argmax


def test_samplers_agree_are_deterministic_and_keep_the_prime(tiny):
    model, params, feats, labels = tiny
    key = jax.random.PRNGKey(7)
    kw = dict(num_tokens=40, num_samples=3, top_k=16, top_p=0.95)
    a = sampling.sample(model, params, key, feats, labels, **kw)
    assert a.shape == (6, 40) and a.dtype == jnp.int32
    np.testing.assert_array_equal(a, sampling.sample(model, params, key, feats, labels, **kw))
    b = sampling.sample_no_cache(model, params, key, feats, labels, **kw)
    np.testing.assert_array_equal(a, b)  # cached == official full-forward sampler
    other = sampling.sample(model, params, jax.random.PRNGKey(8), feats, labels, **kw)
    assert np.any(np.asarray(other) != np.asarray(a))
    assert len({tuple(r) for r in np.asarray(a)}) == 6  # parallel samples differ
    prime = a[::3, :12]
    c = sampling.sample(model, params, key, feats, labels, prime, num_tokens=40, num_samples=2)
    np.testing.assert_array_equal(c[:, :12], np.repeat(prime, 2, axis=0))
    d = sampling.sample_no_cache(
        model, params, key, feats, labels, prime, num_tokens=40, num_samples=2
    )
    np.testing.assert_array_equal(c, d)
    with pytest.raises(ValueError, match="exceeds block_size"):
        sampling.sample(model, params, key, feats, labels, num_tokens=42)


def test_sliding_window_long_audio(tiny):
    model, params, feats, labels = tiny
    rows, window, hop = 5, 8, 3  # 40-token windows
    key = jax.random.PRNGKey(3)
    per_frame = jax.random.normal(jax.random.PRNGKey(4), (2, 4 * 21, D))
    kw = dict(rows=rows, window_columns=window, hop_columns=hop, feat_len=TC, num_samples=2)
    codes = sampling.sample_long(model, params, key, per_frame, labels, num_columns=21, **kw)
    assert codes.shape == (4, rows * 21)
    # Window 0 is exactly what `sample` gives for the first window's features.
    first = sampling.sample(
        model,
        params,
        jax.random.fold_in(key, 0),
        sampling.window_features(per_frame, 0, window, TC),
        labels,
        num_tokens=rows * window,
        num_samples=2,
    )
    np.testing.assert_array_equal(codes[:, : rows * window], first)
    # A fixed [B, Tc, D] condition is reused by every window; a prime is kept.
    prime = codes[::2, :7]
    fixed = sampling.sample_long(model, params, key, feats, labels, prime, num_columns=13, **kw)
    assert fixed.shape == (4, rows * 13)
    np.testing.assert_array_equal(fixed[:, :7], np.repeat(prime, 2, axis=0))
    with pytest.raises(ValueError, match="per-frame features"):
        sampling.sample_long(model, params, key, per_frame[:, :9], labels, num_columns=21, **kw)
    # Feature windows: frames [4s, 4s + 4W), resampled with the official rule.
    np.testing.assert_array_equal(sampling.resample_indices(212, 5), [35, 77, 119, 162, 204])
    np.testing.assert_array_equal(sampling.resample_indices(212, 212), np.arange(212))
    ramp = jnp.arange(100.0)[None, :, None]
    w = sampling.window_features(ramp, 3, 8, 32)[0, :, 0]
    np.testing.assert_array_equal(w, 12 + np.arange(32))
    # Another codebook's columns (`:tiny`: 1 frame each; 2.5): frames [round(F s), + round(F W)).
    w = sampling.window_features(ramp, 3, 8, 8, frames_per_column=1.0)[0, :, 0]
    np.testing.assert_array_equal(w, 3 + np.arange(8))
    w = sampling.window_features(ramp, 3, 8, 20, frames_per_column=2.5)[0, :, 0]
    np.testing.assert_array_equal(w, 8 + np.arange(20))  # round(7.5) = 8, 20 frames
    # 1 frame per column: 21 columns need 21 frames (4 * 21 at the default), and window k
    # starting at column s is conditioned on frames [s, s + 8).
    one = dict(kw, frames_per_column=1.0)
    codes1 = sampling.sample_long(
        model, params, key, per_frame[:, :21], labels, num_columns=21, **one
    )
    assert codes1.shape == (4, rows * 21)
    s1 = hop  # window 1: its first window - hop columns primed, conditioned on frames [3, 11)
    second = sampling.sample(
        model,
        params,
        jax.random.fold_in(key, 1),
        jnp.repeat(sampling.window_features(per_frame[:, :21], s1, window, TC, 1.0), 2, 0),
        jnp.repeat(labels, 2, 0),
        codes1[:, rows * s1 : rows * window],
        num_tokens=rows * window,
    )
    np.testing.assert_array_equal(
        codes1[:, rows * window : rows * (window + hop)], second[:, rows * (window - hop) :]
    )
    with pytest.raises(ValueError, match="frames_per_column"):
        sampling.sample_long(
            model, params, key, per_frame, labels, num_columns=21, **dict(kw, frames_per_column=0)
        )


def test_bf16_weights_sample(tiny):
    model, params, feats, labels = tiny
    m16, p16 = sampling.for_inference(model, params, jnp.bfloat16)
    kernels = [x for path, x in jax.tree_util.tree_leaves_with_path(p16) if "kernel" in str(path)]
    assert kernels and all(x.dtype == jnp.bfloat16 for x in kernels)
    assert p16["pos_emb"].dtype == jnp.float32  # only the Dense kernels are reduced
    codes = sampling.sample(m16, p16, jax.random.PRNGKey(0), feats, labels, num_tokens=10)
    assert codes.shape == (2, 10) and int(codes.max()) < V and int(codes.min()) >= 0


def test_decay_mask_is_linear_kernels_only(tiny):
    _, params, _, _ = tiny
    flat = {
        "/".join(getattr(k, "key", str(k)) for k in path): v
        for path, v in jax.tree_util.tree_flatten_with_path(decay_mask(params))[0]
    }
    decayed = sorted(k for k, v in flat.items() if v)
    assert "head/kernel" in decayed and "blocks_0/attn/query/kernel" in decayed
    assert "blocks_1/mlp_2/kernel" in decayed and len(decayed) == 2 * 6 + 1
    for k in ("feat_embedder/kernel", "pos_emb", "tok_emb/embedding", "cls_embedder/embedding"):
        assert not flat[k]


# ------------------------------------------------------------------------ converter
def _official_state_dict(rng, n_layer, c, vocab, block, feat_dim, n_classes=0):
    """A `Net2NetTransformer` state dict in the official key layout (random values)."""
    w = lambda *s: (0.1 * rng.standard_normal(s)).astype(np.float32)
    sd = {
        "transformer.tok_emb.weight": w(vocab, c),
        "transformer.pos_emb": w(1, block, c),
        "transformer.ln_f.weight": 1 + w(c),
        "transformer.ln_f.bias": w(c),
        "transformer.head.weight": w(vocab, c),
        "first_stage_permuter.forward_shuffle_idx": np.arange(265),
        "first_stage_permuter.backward_shuffle_idx": np.arange(265),
        "first_stage_model.quantize.embedding.weight": w(vocab, 4),
    }
    if feat_dim:
        sd["transformer.embedder.weight"] = w(c, feat_dim, 1)
        sd["transformer.embedder.bias"] = w(c)
    else:
        sd["transformer.embedder.weight"] = w(n_classes, c)
    for i in range(n_layer):
        p = f"transformer.blocks.{i}."
        for ln in ("ln1", "ln2"):
            sd[p + ln + ".weight"], sd[p + ln + ".bias"] = 1 + w(c), w(c)
        for lin in ("key", "query", "value", "proj"):
            sd[p + f"attn.{lin}.weight"], sd[p + f"attn.{lin}.bias"] = w(c, c), w(c)
        sd[p + "attn.mask"] = np.tril(np.ones((block, block), np.float32))[None, None]
        sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"] = w(4 * c, c), w(4 * c)
        sd[p + "mlp.2.weight"], sd[p + "mlp.2.bias"] = w(c, 4 * c), w(c)
    return sd


def _numpy_mingpt(sd, idx, cond_emb, n_layer, n_head):
    """Independent numpy forward of minGPT (`GPT.forward` with prepended embeddings)."""
    g = lambda k: sd["transformer." + k].astype(np.float64)
    lin = lambda x, k: x @ g(k + ".weight").T + (g(k + ".bias") if k != "head" else 0.0)

    def ln(x, k):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * g(k + ".weight") + g(k + ".bias")

    x = np.concatenate([cond_emb, g("tok_emb.weight")[idx]], axis=1)
    b, t, c = x.shape
    x = x + g("pos_emb")[:, :t]
    hd = c // n_head
    mask = np.tril(np.ones((t, t), bool))
    for i in range(n_layer):
        p = f"blocks.{i}."
        h = ln(x, p + "ln1")
        heads = lambda y: y.reshape(b, t, n_head, hd).transpose(0, 2, 1, 3)
        q, k, v = (heads(lin(h, p + "attn." + n)) for n in ("query", "key", "value"))
        att = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
        att = np.where(mask, att, -np.inf)
        att = np.exp(att - att.max(-1, keepdims=True))
        att = att / att.sum(-1, keepdims=True)
        y = (att @ v).transpose(0, 2, 1, 3).reshape(b, t, c)
        x = x + lin(y, p + "attn.proj")
        m = lin(ln(x, p + "ln2"), p + "mlp.0")
        m = 0.5 * m * (1.0 + erf(m / np.sqrt(2.0)))
        x = x + lin(m, p + "mlp.2")
    return ln(x, "ln_f") @ g("head.weight").T


def _config(**model):
    c = specvqgan_transformer_vggsound.get_config("tiny")
    for k, v in model.items():
        c.model[k] = v
    return c


def test_converter_matches_numpy_mingpt():
    rng = np.random.default_rng(0)
    n_layer, c, vocab, block, fd = 2, 16, 20, 30, 24
    sd = _official_state_dict(rng, n_layer, c, vocab, block, fd)
    config = _config(
        n_layer=n_layer, n_head=4, n_embd=c, vocab_size=vocab, block_size=block, feat_dim=fd
    )
    state = transformer_from_torch(sd, config)
    assert set(state) == {"params"} and "feat_embedder" in state["params"]
    model = GPT(vocab, block, n_layer, 4, c, feat_dim=fd)
    feats = rng.standard_normal((2, 5, fd)).astype(np.float32)
    idx = rng.integers(0, vocab, (2, 9))
    got = model.apply(state, jnp.asarray(idx), jnp.asarray(feats))
    # Official conditioning: Conv1d(k=1) over (B, D, T), permuted to (B, T, C).
    w, bias = sd["transformer.embedder.weight"][..., 0], sd["transformer.embedder.bias"]
    cond = np.einsum("cd,bdt->btc", w, feats.transpose(0, 2, 1).astype(np.float64)) + bias
    want = _numpy_mingpt(sd, idx, cond, n_layer, 4)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

    # GPTClass: `embedder` is an Embedding of the class label (B, 1).
    sd = _official_state_dict(rng, 1, c, vocab, block, 0, n_classes=3)
    config = _config(
        n_layer=1, n_head=2, n_embd=c, vocab_size=vocab, block_size=block, feat_dim=0, num_classes=3
    )
    state = transformer_from_torch(sd, config)
    labels = np.array([2, 0])
    got = GPT(vocab, block, 1, 2, c, feat_dim=0, num_classes=3).apply(
        state, jnp.asarray(idx), None, jnp.asarray(labels)
    )
    cond = sd["transformer.embedder.weight"][labels][:, None].astype(np.float64)
    np.testing.assert_allclose(got, _numpy_mingpt(sd, idx, cond, 1, 2), rtol=1e-4, atol=1e-4)

    with pytest.raises(ValueError, match="missing"):
        transformer_from_torch(
            sd,
            _config(
                n_layer=2,
                n_head=2,
                n_embd=c,
                vocab_size=vocab,
                block_size=block,
                feat_dim=0,
                num_classes=3,
            ),
        )


# ---------------------------------------------------------------------- Video2Sound
def _codebook_run(path):
    """A random tiny codebook with the paper's 16x downsampling: 80 x 64 mels -> 5 x 4."""
    from avjax.models.specvqgan.vqgan import make_model

    m = dict(
        ch=8,
        ch_mult=(1, 1, 1, 1, 1),
        num_res_blocks=1,
        attn_resolutions=(4,),
        resolution=64,
        z_channels=8,
        embed_dim=8,
        n_embed=V,
        beta=0.25,
        dropout=0.0,
        num_groups=4,
    )
    vq = make_model(m)
    ae = jax.jit(vq.init)(jax.random.PRNGKey(0), jnp.zeros((1, 80, 64, 1)))["params"]
    config = {"task": "vqgan", "model": m, "data": {"crop_frames": 64}}
    save_imported(path, json.dumps(config), {"params": {"ae": ae}})
    return path


def test_video2sound_end_to_end(tmp_path):
    from avjax.models.specvqgan.video2sound import Video2Sound

    feat_len, tokens = 4, 5 * 4
    c = _config(
        vocab_size=V, block_size=tokens + feat_len, n_layer=1, n_head=2, n_embd=16, feat_dim=D
    )
    c.data.feat_sample_size = feat_len
    c.codebook.workdir = str(_codebook_run(tmp_path / "codebook"))
    c.sampling.top_k = 8
    model = GPT(V, tokens + feat_len, 1, 2, 16, feat_dim=D)
    params = model.init(
        jax.random.PRNGKey(1), jnp.zeros((1, 2), jnp.int32), jnp.zeros((1, feat_len, D))
    )
    save_imported(tmp_path / "gpt", c.to_json(), params)

    v2s = Video2Sound.from_workdir(tmp_path / "gpt")
    assert (v2s.rows, v2s.window_columns, v2s.feat_len) == (5, 4, feat_len)
    feats = jax.random.uniform(jax.random.PRNGKey(2), (1, feat_len, D))
    codes = v2s.sample_codes(feats, jax.random.PRNGKey(0), num_samples=2)
    assert codes.shape == (2, tokens) and codes.max() < V
    np.testing.assert_array_equal(codes, v2s.sample_codes(feats, jax.random.PRNGKey(0), 2))
    mels = v2s.decode(codes)
    assert mels.shape == (2, 80, 64) and mels.min() >= 0 and mels.max() <= 1
    # One column: 16 mel hops of 256 samples at 22050 Hz = 3.99 feature frames (21.5 fps).
    assert v2s.frames_per_column == 16
    assert v2s.feature_frames_per_column == pytest.approx(16 * 256 / 22050 * 21.5)
    # Longer than one window: 9 columns from per-frame features (4 per column), hop 2.
    per_frame = jax.random.uniform(jax.random.PRNGKey(3), (1, 4 * 9, D))
    long = v2s.sample_mels(per_frame, jax.random.PRNGKey(1), num_columns=9)
    assert long.shape == (1, 80, 16 * 9)
    with pytest.raises(ValueError, match=r"features must be \[B, T, 12\]"):
        v2s.sample_codes(jnp.zeros((1, 4, 3)), jax.random.PRNGKey(0))
    bad = ml_collections.ConfigDict(json.loads((tmp_path / "gpt" / "config.json").read_text()))
    bad.task = "vqgan"
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(bad.to_json())
    with pytest.raises(ValueError, match="not a 'transformer' run"):
        Video2Sound.from_workdir(tmp_path / "bad")
