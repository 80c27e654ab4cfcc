"""Torch -> Flax import of official Sound2Sight checkpoints, checked on outputs.

The state dicts are built in the official key layout from the module definitions of the
official `models/` (`dcgan_48.py` / `drums_dcgan_64.py` encoder, decoder and
`encoder_audio_stft`, `lstm`, `gaussian_lstm`, `transformer`), independently
of the converter. The references are NCHW numpy versions of PyTorch's semantics: Conv2d
cross-correlation, ConvTranspose2d out[s*i + t - p] += x[i] w[t], eval BatchNorm2d,
LSTMCell with gates i, f, g, o and state (h, c), and a post-LN TransformerEncoderLayer
whose MultiheadAttention splits `in_proj` rows as [q; k; v] under a causal float mask.
"""

import argparse
import json
import math
import re
import sys

import grain
import jax
import numpy as np
import pytest
import torchfiles
from test_convert_cli import run_convert_cli

from avjax import checkpoints
from avjax.convert import torch_io
from avjax.convert.sound2sight import sound2sight_from_torch
from avjax.train import checkpoint as ckpt_lib
from avjax.train.tasks.sound2sight import Sound2SightTask, state_from_torch
from configs import sound2sight_drums, sound2sight_m3so_nb

BUFFERS = ("running_mean", "running_var", "num_batches_tracked", "pe")
# Parameters per official module of one M3SO-NB model (counted on the official models/).
SPEC_PARAMS = {
    "encoder": 1_837_760,
    "decoder": 2_493_761,
    "audio_enc": 3_018_944,
    "frame_predictor": 1_121_152,
    "video_rnn_posterior": 726_144,
    "video_rnn_prior": 726_144,
    "audio_rnn": 726_144,
    "posterior": 597_268,
    "prior": 597_268,
    "disc": 592_642,
    "disc_std": 258,
    "disc_encoder": 1_837_760,
    "disc_audio_enc": 3_018_944,
}


# --- the official key layout ------------------------------------------------------------------


def conv_stacks(c) -> dict[str, list]:
    """Official conv stacks, (prefix, in, out, kernel, stride, padding) per block.

    `dcgan_48.py` (M3SO) or `drums_dcgan_64.py` (Drums / Painting); `.main` marks a
    `dcgan_conv` / `dcgan_upconv` (k4 s2 p1), other blocks are plain Sequentials.
    """
    m, d = c.model, c.data
    g, nf, anf, ch = m.g_dim, m.nf, m.audio_nf, d.channels
    s2 = ((2, 2), (1, 1))
    if d.image_size == 48:
        enc = [("c2.main", ch, nf, 4, *s2), ("c3.main", nf, 2 * nf, 4, *s2)]
        enc += [("c4.main", 2 * nf, 4 * nf, 4, *s2), ("c5", 4 * nf, g, 6, (1, 1), (0, 0))]
        dec = [("upc1", g, 4 * nf, 6, (1, 1), (0, 0)), ("upc2.main", 8 * nf, 2 * nf, 4, *s2)]
        dec += [("upc3.main", 4 * nf, nf, 4, *s2)]
    else:
        enc = [
            (f"c{i + 1}.main", nf * 2 ** (i - 1) if i else ch, nf * 2**i, 4, *s2) for i in range(4)
        ]
        enc += [("c5", 8 * nf, g, 4, (1, 1), (0, 0))]
        dec = [("upc1", g, 8 * nf, 4, (1, 1), (0, 0))]
        dec += [(f"upc{i}.main", nf * 2 ** (6 - i), nf * 2 ** (4 - i), 4, *s2) for i in (2, 3, 4)]
    dec += [("upc5", 2 * nf, ch, 4, *s2)]
    if tuple(d.audio_shape) == (23, 21):
        aud = [("c1", 1, anf, 4, (1, 1), (0, 0)), ("c2.main", anf, 2 * anf, 4, *s2)]
    else:
        aud = [("c1", 1, anf, 4, (2, 1), (0, 0)), ("c2", anf, 2 * anf, 4, (2, 1), (2, 0))]
    aud += [("c3.main", 2 * anf, 4 * anf, 4, *s2), ("c4.main", 4 * anf, 8 * anf, 4, *s2)]
    aud += [("c5", 8 * anf, g, 2, (1, 1), (0, 0))]
    return {"encoder": enc, "decoder": dec, "audio_encoder": aud}


def official_shapes(c) -> dict[str, tuple[int, ...]]:
    """`<module>.<key>` -> shape of every parameter and buffer of the official model."""
    m = c.model
    g, z, r = m.g_dim, m.z_dim, m.rnn_size
    stacks = conv_stacks(c)
    s = {}

    def conv(p, cin, cout, k, bn=True, transpose=False):  # Sequential(conv, BN, act)
        s[f"{p}.0.weight"] = (cin, cout, k, k) if transpose else (cout, cin, k, k)
        s[f"{p}.0.bias"] = (cout,)
        if bn:
            for leaf in ("weight", "bias", "running_mean", "running_var"):
                s[f"{p}.1.{leaf}"] = (cout,)
            s[f"{p}.1.num_batches_tracked"] = ()

    def linear(p, i, o):
        s[f"{p}.weight"], s[f"{p}.bias"] = (o, i), (o,)

    def encoder(p, stack="encoder"):
        for name, cin, cout, k, _, _ in stacks[stack]:
            conv(f"{p}.{name}", cin, cout, k)

    def decoder(p):  # the last block (upc5) has no BatchNorm
        for name, cin, cout, k, _, _ in stacks["decoder"]:
            conv(f"{p}.{name}", cin, cout, k, bn=name != "upc5", transpose=True)

    def lstm(p, inp, hidden, out, layers, gaussian=False):
        linear(f"{p}.embed", inp, hidden)
        for i in range(layers):
            s[f"{p}.lstm.{i}.weight_ih"] = s[f"{p}.lstm.{i}.weight_hh"] = (4 * hidden, hidden)
            s[f"{p}.lstm.{i}.bias_ih"] = s[f"{p}.lstm.{i}.bias_hh"] = (4 * hidden,)
        if gaussian:
            linear(f"{p}.mu_net", hidden, out)
            linear(f"{p}.logvar_net", hidden, out)
        else:
            linear(f"{p}.output.0", hidden, out)

    def transformer(p):  # the template `encoder_layer` is registered too (unused copy)
        linear(f"{p}.embed", g, r)
        s[f"{p}.pos_encoder.pe"] = (5000, 1, r)
        for layer in (f"{p}.transformer_encoder.layers.0", f"{p}.encoder_layer"):
            s[f"{layer}.self_attn.in_proj_weight"] = (3 * r, r)
            s[f"{layer}.self_attn.in_proj_bias"] = (3 * r,)
            linear(f"{layer}.self_attn.out_proj", r, r)
            linear(f"{layer}.linear1", r, m.dim_ff)
            linear(f"{layer}.linear2", m.dim_ff, r)
            for norm in ("norm1", "norm2"):
                s[f"{layer}.{norm}.weight"] = s[f"{layer}.{norm}.bias"] = (r,)
        linear(f"{p}.output_trans.0", r, g)

    encoder("encoder")
    decoder("decoder")
    encoder("audio_enc", "audio_encoder")
    for name in ("video_rnn_posterior", "video_rnn_prior", "audio_rnn"):
        transformer(name)
    lstm("frame_predictor", g + z, r, g, m.predictor_layers)
    lstm("posterior", 2 * g, r, z, m.posterior_layers, gaussian=True)
    lstm("prior", 2 * g, r, z, m.prior_layers, gaussian=True)
    lstm("disc", 2 * g, c.disc.rnn_size, 2, 1)
    linear("disc_std", g, 2)
    encoder("disc_encoder")
    encoder("disc_audio_enc", "audio_encoder")
    return s


def torch_pe(max_len: int, d: int) -> np.ndarray:
    """`PositionalEncoding.pe` [max_len, 1, d]: sin on even, cos on odd dims."""
    pos = np.arange(max_len, dtype=np.float64)[:, None]
    div = np.exp(np.arange(0, d, 2) * (-math.log(10000.0) / d))
    pe = np.zeros((max_len, d))
    pe[:, 0::2], pe[:, 1::2] = np.sin(pos * div), np.cos(pos * div)
    return pe[:, None, :]


def official_state_dict(c, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights in the official layout, scaled so that activations stay O(1)."""
    rs = np.random.RandomState(seed)
    sd = {}
    for key, shape in official_shapes(c).items():
        leaf = key.rsplit(".", 1)[1]
        if leaf == "num_batches_tracked":
            sd[key] = np.asarray(7, np.int64)
            continue
        if leaf == "pe":
            v = torch_pe(shape[0], shape[2])
        elif leaf == "running_var":
            v = rs.uniform(0.5, 1.5, shape)
        elif len(shape) == 1:
            v = (1.0 if leaf == "weight" else 0.0) + 0.2 * rs.randn(*shape)
        else:
            if key.startswith("decoder."):  # ConvTranspose2d (I, O, k, k): I x (k/s)^2 taps
                fan_in = shape[0] * (1 if ".upc1." in key else 4)
            else:
                fan_in = int(np.prod(shape[1:]))
            v = rs.randn(*shape) / math.sqrt(fan_in)
        sd[key] = v.astype(np.float32)
    return sd


# --- numpy references of the torch modules (NCHW, float64) ------------------------------------


def lrelu(x, slope):
    return np.where(x > 0, x, slope * x)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_conv2d(x, w, b, stride, pad):
    """torch Conv2d: x [N, C, H, W], w [O, C, kh, kw] (cross-correlation)."""
    (sh, sw), (ph, pw) = stride, pad
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    _, _, kh, kw = w.shape
    ho, wo = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
    out = np.zeros((x.shape[0], w.shape[0], ho, wo))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out + b[None, :, None, None]


def np_conv_transpose2d(x, w, b, stride, pad):
    """torch ConvTranspose2d: w [C, O, kh, kw]; out[s*i + t - p] += x[i] w[t] per axis."""
    n, _, h, wd = x.shape
    _, o, kh, kw = w.shape
    full = np.zeros((n, o, (h - 1) * stride + kh, (wd - 1) * stride + kw))
    for i in range(h):
        for j in range(wd):
            tap = np.einsum("nc,cokl->nokl", x[:, :, i, j], w)
            full[:, :, stride * i : stride * i + kh, stride * j : stride * j + kw] += tap
    ho, wo = full.shape[2] - 2 * pad, full.shape[3] - 2 * pad
    return full[:, :, pad : pad + ho, pad : pad + wo] + b[None, :, None, None]


def np_block(sd, p, x, stride, pad, act, transpose=False):
    """Sequential(conv, BatchNorm2d (eval, eps 1e-5), act) of the official `<p>.0` / `<p>.1`."""
    w, b = sd[f"{p}.0.weight"], sd[f"{p}.0.bias"]
    if transpose:
        y = np_conv_transpose2d(x, w, b, stride[0], pad[0])
    else:
        y = np_conv2d(x, w, b, stride, pad)
    if f"{p}.1.weight" in sd:
        col = lambda v: sd[f"{p}.1.{v}"][None, :, None, None]
        y = (y - col("running_mean")) / np.sqrt(col("running_var") + 1e-5)
        y = y * col("weight") + col("bias")
    return {"lrelu": lambda v: lrelu(v, 0.2), "tanh": np.tanh, "sigmoid": sigmoid}[act](y)


def np_encoder(sd, p, blocks, x):
    """`encoder` / `encoder_audio_stft`: x [N, C, H, W] -> (h [N, g], skips)."""
    skips = []
    for name, _, _, _, stride, pad in blocks:
        x = np_block(sd, f"{p}.{name}", x, stride, pad, "tanh" if name == "c5" else "lrelu")
        skips.append(x)
    return x.reshape(len(x), -1), skips[:-1]


def np_decoder(sd, p, blocks, vec, skips):
    """`decoder`: (vec [N, g], skips) -> frames [N, C, S, S]; skips enter from the deepest."""
    d = vec[:, :, None, None]
    for j, (name, _, _, _, stride, pad) in enumerate(blocks):
        if j:  # [decoder feature, skip] on channels
            d = np.concatenate([d, skips[-j]], 1)
        act = "sigmoid" if name == "upc5" else "lrelu"
        d = np_block(sd, f"{p}.{name}", d, stride, pad, act, transpose=True)
    return d


def np_linear(sd, p, x):
    return x @ sd[f"{p}.weight"].T + sd[f"{p}.bias"]


def np_lstm_step(sd, p, carry, x, gaussian=False):
    """`lstm` / `gaussian_lstm` forward: embed -> LSTMCells (gates i, f, g, o) -> head."""
    h_in, new = np_linear(sd, f"{p}.embed", x), []
    for i, (h, c) in enumerate(carry):
        gates = (
            h_in @ sd[f"{p}.lstm.{i}.weight_ih"].T
            + sd[f"{p}.lstm.{i}.bias_ih"]
            + h @ sd[f"{p}.lstm.{i}.weight_hh"].T
            + sd[f"{p}.lstm.{i}.bias_hh"]
        )
        gi, gf, gg, go = np.split(gates, 4, axis=-1)
        c = sigmoid(gf) * c + sigmoid(gi) * np.tanh(gg)
        h = sigmoid(go) * np.tanh(c)
        new.append((h, c))
        h_in = h
    if gaussian:
        return new, (np_linear(sd, f"{p}.mu_net", h_in), np_linear(sd, f"{p}.logvar_net", h_in))
    return new, np.tanh(np_linear(sd, f"{p}.output.0", h_in))


def np_layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def np_transformer(sd, p, src, heads):
    """models/transformers.transformer, eval: src [T, B, in] (time-major) -> [T, B, out]."""
    lay = f"{p}.transformer_encoder.layers.0."
    t, b, _ = src.shape
    d = sd[f"{p}.embed.weight"].shape[0]
    e = lrelu(np_linear(sd, f"{p}.embed", src), 0.01) * math.sqrt(d)
    e = e + sd[f"{p}.pos_encoder.pe"][:t]
    # nn.MultiheadAttention: in_proj rows [q; k; v], q scaled by 1/sqrt(head dim).
    w, bias = sd[lay + "self_attn.in_proj_weight"], sd[lay + "self_attn.in_proj_bias"]
    q, k, v = (e @ w[i * d : (i + 1) * d].T + bias[i * d : (i + 1) * d] for i in range(3))
    dh = d // heads
    q, k, v = (u.reshape(t, b, heads, dh) for u in (q, k, v))
    mask = np.triu(np.full((t, t), -np.inf), 1)  # 0 on/below the diagonal, -inf above
    logits = np.einsum("tbhd,sbhd->bhts", q / math.sqrt(dh), k) + mask
    att = np.exp(logits - logits.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    o = np.einsum("bhts,sbhd->tbhd", att, v).reshape(t, b, d)
    o = np_linear(sd, lay + "self_attn.out_proj", o)
    norm = lambda x, n: np_layer_norm(x, sd[f"{lay}{n}.weight"], sd[f"{lay}{n}.bias"])
    y = norm(e + o, "norm1")
    ff = np_linear(sd, lay + "linear2", np.maximum(np_linear(sd, lay + "linear1", y), 0))
    y = norm(y + ff, "norm2")
    return np.tanh(np_linear(sd, f"{p}.output_trans.0", y))


# --- fixtures and helpers ---------------------------------------------------------------------


def tiny_config():
    return sound2sight_m3so_nb.get_config("tiny")


def shapes(task, c):
    """The task state's shapes and dtypes: the tree the converter fills."""
    return jax.eval_shape(task.init, jax.random.PRNGKey(c.seed))


@pytest.fixture(scope="module")
def converted():
    c = tiny_config()
    sd = official_state_dict(c)
    task = Sound2SightTask.from_config(c)
    return c, sd, task, sound2sight_from_torch(sd, c, shapes(task, c))


def _variables(w, part):
    return {"params": w["params"][part], "batch_stats": w["batch_stats"][part]}


def _apply(model, variables, fn, *args):
    """`model.apply(variables, *args, method=fn)`, jitted: one compile beats op-by-op here."""
    return jax.jit(lambda v, *a: model.apply(v, *a, method=fn))(variables, *args)


def _nchw(x):
    return np.moveaxis(np.asarray(x, np.float64), -1, 1)


def _close(ours, ref, tol=1e-4):
    np.testing.assert_allclose(np.asarray(ours, np.float64), ref, rtol=tol, atol=tol)


# --- tests ------------------------------------------------------------------------------------


def test_official_layout_matches_the_spec_inventory():
    """The test's torch layout at paper size has the spec's parameter count per module."""
    counts = {}
    for key, shape in official_shapes(sound2sight_m3so_nb.get_config()).items():
        if key.rsplit(".", 1)[1] not in BUFFERS:
            module = key.split(".")[0]
            counts[module] = counts.get(module, 0) + int(np.prod(shape))
    assert counts == SPEC_PARAMS


def test_full_size_checkpoint_converts():
    """Paper-size M3SO-NB: every official key finds its place (shapes only)."""
    c = sound2sight_m3so_nb.get_config()
    sd = {k: np.zeros(s, np.float32) for k, s in official_shapes(c).items()}
    w = sound2sight_from_torch(sd, c, shapes(Sound2SightTask.from_config(c), c))
    n = sum(x.size for x in jax.tree.leaves(w["params"]))
    dropped = 3 * (726_144 - 396_032)  # each transformer's unused template layer
    folded = 5 * 4 * 256  # bias_hh of the 5 LSTM cells, added into bias_ih
    assert n == sum(SPEC_PARAMS.values()) - dropped - folded


@pytest.mark.parametrize("variant", ["m3so_48", "drums_64"])
def test_conv_stacks_match_torch(converted, variant):
    """Conv + BN(eval) + LeakyReLU / Tanh stacks and the transposed-conv decoder, NCHW refs.

    48 px (`dcgan_48.py`, 23x21 audio) and 64 px RGB (`drums_dcgan_64.py`, 45x17 audio).
    """
    if variant == "m3so_48":
        c, sd, task, w = converted
    else:
        c = sound2sight_drums.get_config("tiny")
        sd = official_state_dict(c)
        task = Sound2SightTask.from_config(c)
        w = sound2sight_from_torch(sd, c, shapes(task, c))
    stacks = conv_stacks(c)
    gv, dv = _variables(w, "gen"), _variables(w, "disc")
    rs = np.random.RandomState(1)
    size, ch = c.data.image_size, c.data.channels
    x = rs.uniform(0, 1, (2, size, size, ch)).astype(np.float32)
    a = rs.uniform(0, 1, (2, *c.data.audio_shape)).astype(np.float32)

    h, skips = _apply(task.gen, gv, lambda m, x: m.encoder(x, False), x)
    h_ref, skips_ref = np_encoder(sd, "encoder", stacks["encoder"], _nchw(x))
    _close(h, h_ref)
    for s, s_ref in zip(skips, skips_ref, strict=True):
        _close(_nchw(s), s_ref)
    assert np.std(h_ref) > 0.05 and np.median(np.abs(h_ref)) < 0.9  # tanh mostly unsaturated

    g = np.tanh(rs.randn(2, c.model.g_dim)).astype(np.float32)
    out = _apply(task.gen, gv, lambda m, g, s: m.decoder(g, s, False), g, skips)
    out_ref = np_decoder(sd, "decoder", stacks["decoder"], g.astype(np.float64), skips_ref)
    _close(_nchw(out), out_ref)
    assert out_ref.shape == (2, ch, size, size) and np.std(out_ref) > 0.05

    a_nchw = a[:, None].astype(np.float64)
    for model, v, fn, official in (
        (task.gen, gv, lambda m, a: m.audio_encoder(a, False), "audio_enc"),
        (task.disc, dv, lambda m, a: m.embed_audio(a, False), "disc_audio_enc"),
    ):
        e = _apply(model, v, fn, a)
        _close(e, np_encoder(sd, official, stacks["audio_encoder"], a_nchw)[0])
    r = _apply(task.disc, dv, lambda m, x: m.embed_frames(x, False), x)
    _close(r, np_encoder(sd, "disc_encoder", stacks["encoder"], _nchw(x))[0])


@pytest.mark.parametrize(
    "part, ours, official, gaussian",
    [
        ("gen", "predictor", "frame_predictor", False),
        ("gen", "prior", "prior", True),
        ("gen", "posterior", "posterior", True),
        ("disc", "seq", "disc", False),
    ],
)
def test_lstm_steps_match_torch(converted, part, ours, official, gaussian):
    """Two steps from a non-zero (h, c): torch gate order i, f, g, o, bias_ih + bias_hh."""
    _, sd, task, w = converted
    model = task.gen if part == "gen" else task.disc
    rs = np.random.RandomState(2)
    d_in = sd[f"{official}.embed.weight"].shape[1]
    hidden = sd[f"{official}.embed.weight"].shape[0]
    layers = sum(k.startswith(f"{official}.lstm.") and k.endswith("weight_ih") for k in sd)
    carry = [tuple(0.5 * rs.randn(2, 2, hidden)) for _ in range(layers)]
    ref_carry = [(h.astype(np.float64), c_.astype(np.float64)) for h, c_ in carry]
    ours_carry = tuple((h.astype(np.float32), c_.astype(np.float32)) for h, c_ in carry)
    step = lambda m, cy, x: getattr(m, ours)(cy, x)
    for _ in range(2):
        x = rs.randn(2, d_in)
        ref_carry, ref_out = np_lstm_step(sd, official, ref_carry, x, gaussian)
        ours_carry, out = model.apply(
            _variables(w, part), ours_carry, x.astype(np.float32), method=step
        )
        for (h, c_), (h_ref, c_ref) in zip(ours_carry, ref_carry):
            _close(h, h_ref)
            _close(c_, c_ref)
        for o, o_ref in zip(jax.tree.leaves(out), jax.tree.leaves(ref_out)):
            _close(o, o_ref)


def test_transformers_match_torch(converted):
    """Causal post-LN encoder layer: [q; k; v] in_proj, out_proj, heads, PE, LayerNorm eps."""
    c, sd, task, w = converted
    gv = _variables(w, "gen")
    rs = np.random.RandomState(3)
    src = rs.randn(6, 2, c.model.g_dim)  # [T, B, g] as torch
    heads = c.model.num_heads
    names = (
        ("prior_transformer", "video_rnn_prior"),
        ("posterior_transformer", "video_rnn_posterior"),
        ("audio_transformer", "audio_rnn"),
    )
    x = np.moveaxis(src, 0, 1).astype(np.float32)
    ys = _apply(task.gen, gv, lambda m, x: [getattr(m, n)(x, False) for n, _ in names], x)
    for y, (_, official) in zip(ys, names):
        _close(np.moveaxis(np.asarray(y), 1, 0), np_transformer(sd, official, src, heads))

    # LayerNorm eps: norm1 outputs 0, so norm2 sees the FFN alone, variance ~1e-7 << 1e-5.
    lay = "video_rnn_prior.transformer_encoder.layers.0."
    small = dict(sd)
    small[lay + "norm1.weight"] = np.zeros_like(sd[lay + "norm1.weight"])
    small[lay + "norm1.bias"] = np.zeros_like(sd[lay + "norm1.bias"])
    small[lay + "linear2.weight"] = 1e-3 * sd[lay + "linear2.weight"]
    small[lay + "linear2.bias"] = 1e-4 * sd[lay + "linear2.bias"]
    ws = sound2sight_from_torch(small, c, shapes(task, c))
    y = _apply(task.gen, _variables(ws, "gen"), lambda m, x: m.prior_transformer(x, False), x)
    ref = np_transformer(small, "video_rnn_prior", src, heads)
    _close(np.moveaxis(np.asarray(y), 1, 0), ref, tol=2e-3)


def test_linear_frame_classifier(converted):
    c, sd, task, w = converted
    e = np.random.RandomState(4).randn(3, c.model.g_dim)
    out = task.disc.apply(
        {"params": w["params"]["disc"]},
        e.astype(np.float32),
        method=lambda m, e: m.classify_frames(e),
    )
    _close(out, np_linear(sd, "disc_std", e))


def test_converted_state_samples_in_the_task(converted):
    """The whole converted state is the task's state tree and its prior samples are finite."""
    c, sd, task, _ = converted
    state = state_from_torch(sd, c)
    abstract = jax.eval_shape(task.init, jax.random.PRNGKey(c.seed))
    assert jax.tree.structure(state) == jax.tree.structure(abstract)
    assert int(state["step"]) == 0
    rs = np.random.RandomState(5)
    t = c.data.n_past + c.data.n_eval
    x = rs.uniform(0, 1, (2, t, 48, 48, 1)).astype(np.float32)
    a = rs.uniform(0, 1, (2, t, 23, 21)).astype(np.float32)
    sample = jax.jit(task.sample_futures, static_argnames="num_samples")
    out = sample(state, x, a, jax.random.PRNGKey(0), num_samples=2)
    assert out.shape == (2, 2, c.data.n_eval, 48, 48, 1)
    assert np.all(np.isfinite(np.asarray(out)))


def test_errors_name_the_torch_keys(converted):
    c, sd, task, _ = converted
    abstract = shapes(task, c)
    missing = "frame_predictor.lstm.1.bias_hh"
    bad = {k: v for k, v in sd.items() if k != missing}
    with pytest.raises(ValueError, match=re.escape(f"missing keys (1):\n    {missing} (128,)")):
        sound2sight_from_torch(bad, c, abstract)
    bad = {**sd, "encoder.c2.main.0.weight": np.zeros((8, 3, 4, 4), np.float32)}
    msg = "encoder.c2.main.0.weight: got (8, 3, 4, 4), expected (8, 1, 4, 4)"
    with pytest.raises(ValueError, match=re.escape(msg)):
        sound2sight_from_torch(bad, c, abstract)
    extra = "video_rnn_prior.transformer_encoder.layers.1.linear1.weight"  # a second layer
    with pytest.raises(ValueError, match=re.escape(f"unexpected keys (1):\n    {extra}")):
        sound2sight_from_torch({**sd, extra: np.zeros((32, 32), np.float32)}, c, abstract)


@pytest.mark.slow
def test_cli_npz_run_dir_evaluates_and_resumes(converted, tmp_path):
    """`--kind sound2sight` on an .npz: evaluate's restore and training resume both load it."""
    from avjax.runs import load_run

    c, sd, task, w = converted
    np.savez(tmp_path / "model.npz", **sd)
    out = tmp_path / "imported"
    run_convert_cli("sound2sight", tmp_path / "model.npz", out, "sound2sight_m3so_nb.py:tiny")
    assert json.loads((out / "config.json").read_text())["task"] == "sound2sight"

    run = load_run(out, "sound2sight")  # what launch/evaluate.py reads
    assert run.step == 0
    for part in ("params", "batch_stats"):
        for a, b in zip(jax.tree.leaves(w[part]["gen"]), jax.tree.leaves(run.state[part]["gen"])):
            np.testing.assert_array_equal(a, b)

    # What launch/train.py does on a workdir with a checkpoint: restore state + iterator.
    abstract = jax.eval_shape(task.init, jax.random.PRNGKey(c.seed))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = checkpoints.abstract_with_shardings(abstract, jax.tree.map(lambda _: device, abstract))
    data_iter = iter(grain.MapDataset.range(4).to_iter_dataset())
    ckpt = ckpt_lib.Checkpointer(out / "checkpoints", every=10, keep=3, async_save=False)
    state, step = ckpt.restore_latest(target, data_iter)
    ckpt.close()
    assert step == 0 and next(data_iter) == 0
    for a, b in zip(jax.tree.leaves(w["params"]), jax.tree.leaves(state["params"])):
        np.testing.assert_array_equal(a, b)
    assert int(state["opt_state"]["gen"][0].count) == 0


def test_load_module_checkpoint_reads_pickled_modules_without_the_official_repo(tmp_path):
    """Pickled modules (classes of the repo's models/ and torch.nn) flattened like
    state_dict(); `opt` (argparse.Namespace) and `loss` (MSELoss) add nothing; nothing is
    imported: the classes exist only while the file is written."""
    names = (
        "models.toy.Net",
        "torch.nn.modules.batchnorm.BatchNorm2d",
        "torch.nn.modules.loss.MSELoss",
    )
    with torchfiles.fake_globals(*names) as cls:
        bn = torchfiles.module(
            cls["BatchNorm2d"],
            params={"weight": np.ones(2, np.float32), "bias": np.zeros(2, np.float32)},
            buffers={"num_batches_tracked": np.array(3)},
        )
        net = torchfiles.module(
            cls["Net"], params={"w": np.ones((2, 1, 4, 4), np.float32)}, modules={"bn": bn}
        )
        ckpt = {
            "encoder": net,
            "loss": torchfiles.module(cls["MSELoss"]),
            "opt": argparse.Namespace(lr=2e-3),
        }
        torchfiles.save_legacy(ckpt, tmp_path / "model.pth")
    assert "models.toy" not in sys.modules
    flat = torch_io.load_module_checkpoint(tmp_path / "model.pth")
    assert sorted(flat) == [
        "encoder.bn.bias", "encoder.bn.num_batches_tracked", "encoder.bn.weight", "encoder.w",
    ]  # fmt: skip
    np.testing.assert_array_equal(flat["encoder.w"], np.ones((2, 1, 4, 4)))
    assert flat["encoder.bn.num_batches_tracked"] == 3

    np.savez(tmp_path / "flat.npz", **flat)
    again = torch_io.load_module_checkpoint(tmp_path / "flat.npz")
    assert sorted(again) == sorted(flat)


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_whole_module_pth_of_the_official_layout_reads_back_exactly(converted, tmp_path, legacy):
    """Every key of the official layout, pickled as nested modules with BN buffers."""
    _, sd, _, _ = converted
    with torchfiles.fake_globals("models.dcgan_48.encoder") as cls:
        torchfiles.mark_module_classes(cls["encoder"])
        ckpt = torchfiles.modules_from_flat(sd, cls["encoder"], BUFFERS)
        ckpt["opt"] = argparse.Namespace(lr=2e-3, n_past=5)
        save = torchfiles.save_legacy if legacy else torchfiles.save_zip
        save(ckpt, tmp_path / "model.pth")
    flat = torch_io.load_module_checkpoint(tmp_path / "model.pth")
    assert sorted(flat) == sorted(sd)
    for k, v in sd.items():
        np.testing.assert_array_equal(flat[k], v, err_msg=k)
        assert flat[k].dtype == np.asarray(v).dtype, k
