"""MelGAN vocoder: architecture facts, torch import vs a numpy forward, losses, data, training."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avjax.audio import io as audio_io
from avjax.audio import mel as mel_lib
from avjax.audio.vocoder import GriffinLimVocoder, MelGANVocoder, load_vocoder
from avjax.checkpoints import save_imported
from avjax.convert.melgan import PAPER, melgan_from_torch
from avjax.errors import UserError
from avjax.models.specvqgan import melgan
from avjax.runs import load_run
from avjax.train import loop
from avjax.train.tasks import make_task
from configs import melgan_vggsound
from data_pipelines import wave_inputs
from data_pipelines.inputs import make_inputs

count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# ------------------------------------------------------------------ independent numpy MelGAN
def np_conv1d(x, w, b, stride=1, pad=0, dil=1, groups=1):
    """torch Conv1d: x [C, T], w [O, C / groups, K] -> [O, T']."""
    x = np.pad(x, ((0, 0), (pad, pad)))
    o_ch, i_g, k = w.shape
    t_out = (x.shape[1] - dil * (k - 1) - 1) // stride + 1
    out = np.zeros((o_ch, t_out))
    o_g = o_ch // groups
    for g in range(groups):
        xs = x[g * i_g : (g + 1) * i_g]
        for j in range(k):
            seg = xs[:, j * dil : j * dil + stride * (t_out - 1) + 1 : stride]
            out[g * o_g : (g + 1) * o_g] += w[g * o_g : (g + 1) * o_g, :, j] @ seg
    return out + b[:, None]


def np_conv_transpose1d(x, w, b, stride, pad, out_pad):
    """torch ConvTranspose1d by scatter-add: x [I, T], w [I, O, K] -> [O, T']."""
    _, o_ch, k = w.shape
    t = x.shape[1]
    full = np.zeros((o_ch, (t - 1) * stride + k + out_pad))
    for n in range(t):
        full[:, n * stride : n * stride + k] += np.einsum("i,iok->ok", x[:, n], w)
    length = (t - 1) * stride - 2 * pad + k + out_pad
    return full[:, pad : pad + length] + b[:, None]


def np_weight(sd, prefix):
    """torch weight_norm(dim=0): w = g v / ||v||, the norm over all axes but 0."""
    g, v = sd[prefix + ".weight_g"], sd[prefix + ".weight_v"]
    return g * v / np.sqrt(np.sum(v**2, axis=(1, 2), keepdims=True)), sd[prefix + ".bias"]


lrelu = lambda x: np.where(x > 0, x, 0.2 * x)
rpad = lambda x, p: np.pad(x, ((0, 0), (p, p)), mode="reflect")


def np_generator(sd, mel, ratios=(8, 8, 2, 2), n_res=3):
    """The official `Generator.forward` on one mel [80, T] -> [256 T]."""
    h = np_conv1d(rpad(mel, 3), *np_weight(sd, "model.1"))
    i = 3
    for r in ratios:
        w, b = np_weight(sd, f"model.{i}")
        h = np_conv_transpose1d(lrelu(h), w, b, r, r // 2 + r % 2, r % 2)
        for j in range(n_res):
            p, d = f"model.{i + 1 + j}", 3**j
            y = np_conv1d(rpad(lrelu(h), d), *np_weight(sd, p + ".block.2"), dil=d)
            y = np_conv1d(lrelu(y), *np_weight(sd, p + ".block.4"))
            h = np_conv1d(h, *np_weight(sd, p + ".shortcut")) + y
        i += n_res + 2
    h = np_conv1d(rpad(lrelu(h), 3), *np_weight(sd, f"model.{i + 1}"))
    return np.tanh(h)[0]


def np_avgpool(x):
    """AvgPool1d(4, 2, 1, count_include_pad=False) on [C, T]."""
    xp = np.pad(x, ((0, 0), (1, 1)))
    valid = np.pad(np.ones(x.shape[1]), (1, 1))
    n = (x.shape[1] + 2 - 4) // 2 + 1
    return np.stack(
        [xp[:, 2 * i : 2 * i + 4].sum(1) / valid[2 * i : 2 * i + 4].sum() for i in range(n)], 1
    )


def np_discriminator(sd, x, num_d, n_layers, s=4):
    """The official `Discriminator.forward` on one wave [1, N] -> per scale, all outputs."""
    results = []
    for i in range(num_d):
        p = f"model.disc_{i}.model.layer_"
        outs = [lrelu(np_conv1d(rpad(x, 7), *np_weight(sd, p + "0.1")))]
        for n in range(1, n_layers + 1):
            w, b = np_weight(sd, p + f"{n}.0")
            groups = outs[-1].shape[0] // 4
            outs.append(lrelu(np_conv1d(outs[-1], w, b, stride=s, pad=5 * s, groups=groups)))
        outs.append(lrelu(np_conv1d(outs[-1], *np_weight(sd, p + f"{n_layers + 1}.0"), pad=2)))
        outs.append(np_conv1d(outs[-1], *np_weight(sd, p + f"{n_layers + 2}"), pad=1))
        results.append(outs)
        x = np_avgpool(x)
    return results


def torch_layout_state_dict(rng, ngf, n_res=3, ratios=(8, 8, 2, 2), n_mels=80, disc=None):
    """Random weights under the official keys and torch shapes (g not equal to ||v||)."""
    sd = {}

    def conv(key, o, i, k):
        sd[key + ".weight_v"] = rng.normal(0, 1, (o, i, k))
        sd[key + ".weight_g"] = rng.uniform(0.5, 1.5, (o, 1, 1))
        sd[key + ".bias"] = rng.normal(0, 0.1, (o,))

    mult = 2 ** len(ratios)
    conv("model.1", mult * ngf, n_mels, 7)
    i = 3
    for r in ratios:
        c_in, c_out = mult * ngf, mult * ngf // 2
        sd[f"model.{i}.weight_v"] = rng.normal(0, 1, (c_in, c_out, 2 * r))
        sd[f"model.{i}.weight_g"] = rng.uniform(0.5, 1.5, (c_in, 1, 1))
        sd[f"model.{i}.bias"] = rng.normal(0, 0.1, (c_out,))
        for j in range(n_res):
            conv(f"model.{i + 1 + j}.block.2", c_out, c_out, 3)
            conv(f"model.{i + 1 + j}.block.4", c_out, c_out, 1)
            conv(f"model.{i + 1 + j}.shortcut", c_out, c_out, 1)
        i += n_res + 2
        mult //= 2
    conv(f"model.{i + 1}", 1, ngf, 7)
    if disc is not None:
        num_d, ndf, n_layers = disc
        for d in range(num_d):
            p = f"model.disc_{d}.model.layer_"
            conv(p + "0.1", ndf, 1, 15)
            nf = ndf
            for n in range(1, n_layers + 1):
                prev, nf = nf, min(nf * 4, 1024)
                conv(p + f"{n}.0", nf, 4, 41)  # groups = prev // 4: 4 input channels per group
                assert prev % 4 == 0
            conv(p + f"{n_layers + 1}.0", min(nf * 2, 1024), nf, 5)
            conv(p + f"{n_layers + 2}", 1, min(nf * 2, 1024), 3)
    return sd


def small_config(ngf=2, ndf=4, n_layers=2, num_d=2):
    c = melgan_vggsound.get_config()
    c.model.ngf, c.disc.ndf, c.disc.n_layers, c.disc.num_D = ngf, ndf, n_layers, num_d
    return c


# ------------------------------------------------------------------------- architecture
def test_param_counts_and_shapes_of_the_paper_model():
    g, d = melgan.Generator(), melgan.Discriminator()
    gv = jax.eval_shape(g.init, jax.random.key(0), jnp.zeros((1, 848, 80)))
    dv = jax.eval_shape(d.init, jax.random.key(0), jnp.zeros((1, 8192, 1)))
    assert count(gv) == 4_266_050 and len(jax.tree.leaves(gv)) == 126
    assert count(dv) == 16_924_086
    # 80 x 848 -> 217088 samples; 860 frames -> 220160.
    assert jax.eval_shape(g.apply, gv, jnp.zeros((1, 848, 80))).shape == (1, 217088, 1)
    assert jax.eval_shape(g.apply, gv, jnp.zeros((2, 860, 80))).shape == (2, 220160, 1)
    outs = jax.eval_shape(d.apply, dv, jnp.zeros((2, 8192, 1)))
    assert len(outs) == 3 and all(len(scale) == 7 for scale in outs)
    for i, scale in enumerate(outs):
        n = 8192 // 2**i  # AvgPool1d(4, 2, 1) halves the audio between scales
        want = [(n, 16), (n // 4, 64), (n // 16, 256), (n // 64, 1024)]
        want += [(n // 256, 1024), (n // 256, 1024), (n // 256, 1)]
        assert [tuple(o.shape) for o in scale] == [(2, *w) for w in want]
    # Grouped convs: 4 input channels per group in every strided layer (groups 4, 16, 64, 256).
    p = dv["params"]["disc_0"]
    assert [p[f"layer_{n}"]["weight_v"].shape for n in range(1, 5)] == [
        (41, 4, 64),
        (41, 4, 256),
        (41, 4, 1024),
        (41, 4, 1024),
    ]


def generator_span(ratios=(8, 8, 2, 2), n_res=3) -> tuple[int, int]:
    """Analytic influence of one input frame t: output samples [hop t - a, hop t + b].

    Frames [lo, hi] -> after the k7 conv [lo - 3, hi + 3]; a transposed conv (stride r,
    kernel 2r, padding p = r // 2 + r % 2) maps input n to outputs r n - p + [0, 2r - 1];
    the ResnetBlocks widen by sum of dilations (1 + 3 + 9) on both sides; the last k7 conv
    by 3. Returned as offsets relative to hop * t.
    """
    lo, hi = -3, 3
    for r in ratios:
        p = r // 2 + r % 2
        widen = sum(3**j for j in range(n_res))
        lo, hi = r * lo - p - widen, r * hi - p + 2 * r - 1 + widen
    return lo - 3, hi + 3


def test_generator_receptive_field():
    """One perturbed input frame changes exactly the analytic span of output samples.

    The span is read from the directional derivative (jvp) along that frame: the edge
    samples change by ~1e-19 relative to outputs of ~1e-2, below float rounding of a finite
    difference, but the derivative is exactly zero only outside the receptive field. A
    finite perturbation must leave every sample outside the span bit-identical.
    """
    assert generator_span() == (-1425, 1680)  # 3106 samples = 12.1 frames of 256
    g = melgan.Generator(ngf=2)
    mel = jnp.asarray(np.random.RandomState(0).uniform(0, 1, (1, 40, 80)), jnp.float32)
    params = jax.jit(g.init)(jax.random.key(1), mel)
    t = 20
    lo, hi = generator_span()
    lo, hi = 256 * t + lo, 256 * t + hi
    tangent = jnp.zeros_like(mel).at[0, t].set(1.0)
    f = jax.jit(
        lambda m, dm: (
            g.apply(params, m + dm),
            jax.jvp(lambda x: g.apply(params, x), (m,), (tangent,))[1],
        )
    )
    y0, dy = f(mel, jnp.zeros_like(mel))
    y1, _ = f(mel, tangent)
    dy = np.asarray(dy)[0, :, 0]
    assert dy.shape == (40 * 256,)
    changed = np.nonzero(dy)[0]
    assert (changed.min(), changed.max()) == (lo, hi)
    outside = np.r_[0:lo, hi + 1 : 40 * 256]
    np.testing.assert_array_equal(np.asarray(y1)[0, outside], np.asarray(y0)[0, outside])
    assert np.abs(np.asarray(y1) - np.asarray(y0)).max() > 0


@pytest.mark.parametrize(
    "k,stride,pad,out_pad",
    [(6, 3, 2, 1), (16, 8, 4, 0), (5, 2, 1, 1), (4, 2, 0, 1)],
    ids=["odd_ratio_3", "ratio_8", "k_not_multiple", "out_pad_past_end"],
)
def test_conv_transpose_matches_torch_semantics(k, stride, pad, out_pad):
    """MelGAN's k = 2r, padding r//2 + r%2, output_padding r%2 (r = 3, 8; polyphase path),
    and the dilated-input path for kernels that are not a multiple of the stride."""
    c_in, c_out, t = 3, 2, 7
    conv = melgan.WNConvTranspose1d(c_out, k, stride, padding=pad, output_padding=out_pad)
    x = np.random.RandomState(0).normal(size=(1, t, c_in)).astype(np.float32)
    params = conv.init(jax.random.key(0), jnp.asarray(x))["params"]
    params = {**params, "weight_g": params["weight_g"] * jnp.asarray([0.5, 1.0, 2.0])}
    y = np.asarray(conv.apply({"params": params}, jnp.asarray(x)))[0].T
    v = np.transpose(np.asarray(params["weight_v"], np.float64), (1, 2, 0))  # torch (in, out, k)
    g = np.asarray(params["weight_g"], np.float64)[:, None, None]
    w = g * v / np.linalg.norm(v, axis=(1, 2), keepdims=True)
    want = np_conv_transpose1d(x[0].T, w, np.asarray(params["bias"]), stride, pad, out_pad)
    assert y.shape == want.shape == (c_out, (t - 1) * stride - 2 * pad + k + out_pad)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_avg_pool_excludes_padding():
    x = np.random.RandomState(0).normal(size=(1, 9, 2)).astype(np.float32)
    got = np.asarray(melgan.avg_pool_exclude_pad(jnp.asarray(x)))[0].T
    want = np_avgpool(x[0].T)
    assert got.shape == (2, 4)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # Edge windows average 3 real samples, not 4 (count_include_pad=False).
    np.testing.assert_allclose(got[:, 0], x[0, :3].mean(0), rtol=1e-6)


# -------------------------------------------------------------------------------- import
def test_converter_matches_numpy_forward():
    rng = np.random.default_rng(0)
    cfg = small_config(ngf=2, ndf=4, n_layers=2, num_d=2)
    sd = torch_layout_state_dict(rng, ngf=2, disc=(2, 4, 2))
    state = melgan_from_torch(sd, cfg)
    gp, dp = state["params"]["generator"], state["params"]["discriminator"]
    assert len(jax.tree.leaves(gp)) == 126 and count(gp) == sum(
        v.size for k, v in sd.items() if not k.startswith("model.disc_")
    )

    mel = rng.uniform(0, 1, (80, 12))
    want = np_generator(sd, mel)
    gen, disc = melgan.make_model(cfg)
    got = np.asarray(gen.apply({"params": gp}, jnp.asarray(mel.T[None], jnp.float32)))[0, :, 0]
    assert got.shape == want.shape == (12 * 256,)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

    wave = rng.uniform(-1, 1, (1, 1024))
    want_d = np_discriminator(sd, wave, num_d=2, n_layers=2)
    got_d = disc.apply({"params": dp}, jnp.asarray(wave.T[None], jnp.float32))
    for scale_got, scale_want in zip(got_d, want_d, strict=True):
        assert len(scale_got) == len(scale_want) == 5
        for a, b in zip(scale_got, scale_want, strict=True):
            np.testing.assert_allclose(np.asarray(a)[0].T, b, rtol=1e-4, atol=1e-4)


def test_converter_full_size_keys_and_errors():
    sd = torch_layout_state_dict(np.random.default_rng(1), ngf=32)
    assert len(sd) == 126
    sd = {k: v.astype(np.float32) for k, v in sd.items()}
    params = melgan_from_torch(sd, PAPER)["params"]
    assert set(params) == {"generator"} and count(params) == 4_266_050
    assert params["generator"]["model_3"]["weight_v"].shape == (16, 512, 256)
    assert params["generator"]["model_3"]["weight_g"].shape == (512,)  # per input channel
    bad = dict(sd)
    bad.pop("model.24.bias")
    bad["model.1.weight_v"] = bad["model.1.weight_v"][:, :40]
    bad["model.99.foo"] = np.zeros(3)
    with pytest.raises(ValueError) as e:
        melgan_from_torch(bad)
    msg = str(e.value)
    assert "model_24/bias" in msg and "model.1.weight_v" in msg and "model.99.foo" in msg


def test_imported_vocoder_from_workdir(tmp_path):
    """Import -> save as a run -> load_vocoder: the numpy forward's output, [B, 256 T]."""
    rng = np.random.default_rng(2)
    cfg = small_config(ngf=2)
    sd = torch_layout_state_dict(rng, ngf=2)
    save_imported(tmp_path / "voc", cfg.to_json(), melgan_from_torch(sd, cfg))
    voc = load_vocoder(tmp_path / "voc")
    assert isinstance(voc, MelGANVocoder)
    mel = rng.uniform(0, 1, (2, 80, 10)).astype(np.float32)
    wave = voc(mel)
    assert wave.shape == (2, 2560) and wave.dtype == np.float32
    np.testing.assert_allclose(wave[1], np_generator(sd, mel[1].astype(np.float64)), atol=1e-4)
    with pytest.raises(ValueError, match="batch"):
        voc(mel[0])
    with pytest.raises(UserError, match=r"config\.json"):  # a folder that is not a run
        load_vocoder(tmp_path)


def test_griffin_lim_fallback():
    voc = load_vocoder(None, n_iter=4)
    assert isinstance(voc, GriffinLimVocoder)
    mel = np.random.RandomState(0).uniform(0, 1, (2, 80, 20)).astype(np.float32)
    wave = voc(mel)
    assert wave.shape == (2, 20 * 256) and wave.dtype == np.float32
    assert np.all(np.isfinite(wave)) and np.abs(wave).max() > 0
    with pytest.raises(ValueError, match=r"\[B, 80, T\]"):
        voc(np.zeros((2, 64, 20)))


# -------------------------------------------------------------------------------- losses
def test_losses_on_hand_checkable_tensors():
    a = lambda *v: jnp.asarray(v, jnp.float32)
    # One scale: features [f0, logits].
    real = [[a(1.0, 2.0), a(0.5, 2.0)]]
    fake = [[a(2.0, 2.0), a(-2.0, 0.5)]]
    # relu(1 - [0.5, 2]) = [0.5, 0] -> 0.25; relu(1 + [-2, 0.5]) = [0, 1.5] -> 0.75.
    assert float(melgan.discriminator_loss(real, fake)) == pytest.approx(1.0)
    assert float(melgan.generator_adv_loss(fake)) == pytest.approx(0.75)
    # FM: (4 / (4 + 1)) * (1 / 1) * mean|[2, 2] - [1, 2]| = 0.8 * 0.5.
    assert float(melgan.feature_matching_loss(real, fake, n_layers=4)) == pytest.approx(0.4)
    # Scales add up (not averaged); the FM weight has 1 / num_D.
    assert float(melgan.discriminator_loss(real * 2, fake * 2)) == pytest.approx(2.0)
    assert float(melgan.feature_matching_loss(real * 2, fake * 2, 4)) == pytest.approx(0.4)
    # No gradient flows into the real features.
    g = jax.grad(lambda r: melgan.feature_matching_loss([[r, a(0.0)]], fake, 4))(a(1.0, 2.0))
    assert np.all(np.asarray(g) == 0)


# ---------------------------------------------------------------------------------- data
def _write_clip(d: pathlib.Path, vid: str, wave, mel_frames=None):
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / f"{vid}_audio.npy", np.asarray(wave, np.float32))
    frames = mel_frames or 1 + len(wave) // 256
    np.save(d / f"{vid}_mel.npy", np.zeros((80, frames), np.float32))


@pytest.fixture()
def wave_dir(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "data" / "dog" / "melspec_10s_22050hz"
    for k in range(3):
        _write_clip(d, f"v{k}", 0.1 * (k + 1) * rng.standard_normal(20000))
    (tmp_path / "data" / "vas_train.txt").write_text("dog/v0\ndog/v1\ndog/v2\n")
    (tmp_path / "data" / "vas_valid.txt").write_text("dog/v2\n")
    return tmp_path / "data"


def _source(root, split="train", **data):
    c = melgan_vggsound.get_config("tiny")
    for k, v in data.items():
        c.data[k] = v
    spec = wave_inputs.WaveSpec(min_samples=c.data.seq_len, audio_source=c.data.audio_source)
    return wave_inputs.open_wave_source(root, split, c.data, spec)


def test_wave_windows_seeded_checkpointable_and_fixed_in_eval(wave_dir):
    src = _source(wave_dir)
    kw = dict(global_batch_size=2, seed=3, seq_len=4096, process_index=0, process_count=1)
    it = iter(wave_inputs.make_wave_dataset(src, train=True, **kw))
    first = next(it)["wave"]
    assert first.shape == (2, 4096) and first.dtype == np.float32
    # Peak 0.95 times a gain in [0.3, 1] (the peak may fall outside the window).
    assert np.abs(first).max() <= 0.95 + 1e-6
    state = it.get_state()
    after = [next(it)["wave"] for _ in range(2)]
    again = iter(wave_inputs.make_wave_dataset(src, train=True, **kw))
    again.set_state(state)
    for a in after:
        np.testing.assert_array_equal(a, next(again)["wave"])
    ev = lambda: list(wave_inputs.make_wave_dataset(src, train=False, **kw))
    e1, e2 = ev(), ev()
    assert len(e1) == 2 and e1[1]["mask"].tolist() == [True, False]
    np.testing.assert_array_equal(e1[0]["wave"], e2[0]["wave"])
    raw = np.load(wave_dir / "dog" / "melspec_10s_22050hz" / "v0_audio.npy")
    start = (20000 - 4096) // 2
    want = raw[start : start + 4096] * 0.95 / np.abs(raw).max()
    np.testing.assert_allclose(e1[0]["wave"][0], want, rtol=1e-5)


def test_wave_errors_name_the_file(wave_dir, tmp_path):
    d = wave_dir / "dog" / "melspec_10s_22050hz"
    _write_clip(d, "short", np.zeros(1000))
    _write_clip(d, "nan", np.full(20000, np.nan))
    _write_clip(d, "rate", np.zeros(20000), mel_frames=120)  # mel of 30k samples: other rate
    (wave_dir / "vas_valid.txt").write_text("dog/short\ndog/nan\ndog/rate\n")
    src = _source(wave_dir, "valid")
    with pytest.raises(ValueError, match=r"short_audio\.npy.*fewer than"):
        src[0]
    with pytest.raises(ValueError, match=r"nan_audio\.npy.*NaN"):
        src[1]
    with pytest.raises(ValueError, match=r"rate_audio\.npy.*not at 22050 Hz"):
        src[2]
    (d / "v1_audio.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"v1_audio\.npy"):
        _source(wave_dir, "train")
    # Media files: decoded at 22050 Hz, or refused at another rate without resampling.
    media = tmp_path / "media" / "dog"
    media.mkdir(parents=True)
    for k in range(3):
        audio_io.write_wav(media / f"v{k}.wav", 0.1 * np.ones(16000, np.float32), 16000)
    src = _source(wave_dir, "train", audio_source="media", media_dir=str(tmp_path / "media"))
    assert src[0]["wave"].shape == (22050,)
    src.spec = wave_inputs.WaveSpec(min_samples=4096, audio_source="media", media_resample=False)
    with pytest.raises(ValueError, match=r"v0\.wav.*16000 Hz"):
        src[0]
    with pytest.raises(ValueError, match="media_dir"):
        _source(wave_dir, "train", audio_source="media")


# ------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    c = melgan_vggsound.get_config("tiny")
    c.train.num_steps = 2
    c.train.log_every = 1
    c.train.checkpoint_every = 2
    c.train.eval_every = 2
    c.train.eval_batches = 1
    c.train.sample_every = 2
    c.data.num_sample_clips = 1
    c.data.seq_len = 2048  # half the :tiny window: this machine has 2 shared cores
    work = tmp_path_factory.mktemp("melgan") / "run"
    inputs = make_inputs(c)
    assert inputs.stats["sample_mel"].shape == (1, 80, 860)
    task = make_task(c, inputs.stats)
    last = loop.train(c, work, task, inputs.train_iter, inputs.eval_iter_fn)
    return c, work, last


def test_tiny_training_run(tiny_run):
    c, work, last = tiny_run
    assert last["step"] == 2
    for k in ("d_loss", "g_loss", "fm_loss", "g_total_loss", "mel_l1"):
        assert np.isfinite(last[f"train/{k}"])
    for k in ("d_loss", "g_loss", "fm_loss", "mel_l1"):  # what eval_step computes
        assert np.isfinite(last[f"eval/{k}"])
    np.testing.assert_allclose(
        last["train/g_total_loss"],
        last["train/g_loss"] + c.loss.lambda_feat * last["train/fm_loss"],
        rtol=1e-5,
    )
    assert 0.0 < last["train/mel_l1"] < 1.0 and 0.0 < last["eval/mel_l1"] < 1.0
    params = load_run(work).params
    assert set(params) == {"generator", "discriminator"}
    wav = work / "samples" / "2" / "0_vocoded.wav"
    assert wav.is_file() and (work / "samples" / "0_real.wav").is_file()
    assert len(audio_io.load_audio(wav, None)) == 860 * 256
    voc = load_vocoder(work)
    assert voc(np.zeros((1, 80, 5), np.float32)).shape == (1, 1280)


def test_train_step_updates_both_networks_from_a_shared_forward():
    c = small_config(ngf=2, ndf=4, n_layers=1, num_d=1)
    c.data.seq_len = 2048
    task = make_task(c, {})
    state = jax.jit(task.init)(jax.random.PRNGKey(0))
    wave = jnp.asarray(0.5 * np.sin(np.arange(2 * 2048) * 0.05).reshape(2, 2048), jnp.float32)
    new, m = jax.jit(task.train_step)(state, {"wave": wave})
    moved = lambda a, b: any(np.any(x != y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert moved(state["params"]["generator"], new["params"]["generator"])
    assert moved(state["params"]["discriminator"], new["params"]["discriminator"])
    assert int(new["step"]) == 1
    # The reported D loss is the hinge of the pre-update critic on the step's x̂.

    @jax.jit
    def reference(params, wave):
        s = mel_lib.log_mel_spectrogram_jax(wave)[:, :, :8]  # 2048 // 256 frames
        x_pred = task.vocode(params["generator"], s)
        d_real = task._critic(params["discriminator"], wave)
        d_fake = task._critic(params["discriminator"], x_pred)
        return melgan.discriminator_loss(d_real, d_fake)

    want = reference(state["params"], wave)
    np.testing.assert_allclose(m["d_loss"], want, rtol=1e-5)
