"""Melception (docs/specvqgan.md A3): structure, converter vs numpy Inception-v3, scorer, train."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avjax.convert import torchvision_names as tvn
from avjax.convert.melception import load_official_mel_stats, melception_from_torch
from avjax.metrics.melception_scorer import MelceptionScorer
from avjax.models.specvqgan.melception import Melception
from avjax.train import loop
from avjax.train.tasks import make_task
from configs import melception_vggsound
from data_pipelines.inputs import make_inputs

# ---- the torchvision Inception3 layout, written out independently of the Flax module ----


def inception3_layout(width=1.0, num_classes=309):
    """[(torch module name, in, out, (kh, kw), stride, (ph, pw))] of every BasicConv2d, plus fcs.

    Mirrors torchvision's Inception3 with SpecVQGAN's 1-channel Conv2d_1a_3x3; `width` scales
    every channel count like `Melception.width`.
    """
    c = lambda n: max(1, round(n * width))
    convs = []

    def conv(name, cin, cout, k=1, s=1, p=0):
        k = (k, k) if isinstance(k, int) else k
        p = (p, p) if isinstance(p, int) else p
        convs.append((name, cin, c(cout), k, s, p))
        return c(cout)

    conv("Conv2d_1a_3x3", 1, 32, 3, 2)
    conv("Conv2d_2a_3x3", c(32), 32, 3)
    conv("Conv2d_2b_3x3", c(32), 64, 3, 1, 1)
    conv("Conv2d_3b_1x1", c(64), 80)
    cin = conv("Conv2d_4a_3x3", c(80), 192, 3)
    for name, pf in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
        conv(f"{name}.branch1x1", cin, 64)
        conv(f"{name}.branch5x5_1", cin, 48)
        conv(f"{name}.branch5x5_2", c(48), 64, 5, 1, 2)
        conv(f"{name}.branch3x3dbl_1", cin, 64)
        conv(f"{name}.branch3x3dbl_2", c(64), 96, 3, 1, 1)
        conv(f"{name}.branch3x3dbl_3", c(96), 96, 3, 1, 1)
        conv(f"{name}.branch_pool", cin, pf)
        cin = c(64) + c(64) + c(96) + c(pf)
    conv("Mixed_6a.branch3x3", cin, 384, 3, 2)
    conv("Mixed_6a.branch3x3dbl_1", cin, 64)
    conv("Mixed_6a.branch3x3dbl_2", c(64), 96, 3, 1, 1)
    conv("Mixed_6a.branch3x3dbl_3", c(96), 96, 3, 2)
    cin = c(384) + c(96) + cin
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        conv(f"{name}.branch1x1", cin, 192)
        conv(f"{name}.branch7x7_1", cin, c7)
        conv(f"{name}.branch7x7_2", c(c7), c7, (1, 7), 1, (0, 3))
        conv(f"{name}.branch7x7_3", c(c7), 192, (7, 1), 1, (3, 0))
        conv(f"{name}.branch7x7dbl_1", cin, c7)
        conv(f"{name}.branch7x7dbl_2", c(c7), c7, (7, 1), 1, (3, 0))
        conv(f"{name}.branch7x7dbl_3", c(c7), c7, (1, 7), 1, (0, 3))
        conv(f"{name}.branch7x7dbl_4", c(c7), c7, (7, 1), 1, (3, 0))
        conv(f"{name}.branch7x7dbl_5", c(c7), 192, (1, 7), 1, (0, 3))
        conv(f"{name}.branch_pool", cin, 192)
        cin = 4 * c(192)
    c768 = cin
    conv("AuxLogits.conv0", c768, 128)
    conv("AuxLogits.conv1", c(128), 768, 5)
    conv("Mixed_7a.branch3x3_1", cin, 192)
    conv("Mixed_7a.branch3x3_2", c(192), 320, 3, 2)
    conv("Mixed_7a.branch7x7x3_1", cin, 192)
    conv("Mixed_7a.branch7x7x3_2", c(192), 192, (1, 7), 1, (0, 3))
    conv("Mixed_7a.branch7x7x3_3", c(192), 192, (7, 1), 1, (3, 0))
    conv("Mixed_7a.branch7x7x3_4", c(192), 192, 3, 2)
    cin = c(320) + c(192) + cin
    for name in ("Mixed_7b", "Mixed_7c"):
        conv(f"{name}.branch1x1", cin, 320)
        conv(f"{name}.branch3x3_1", cin, 384)
        conv(f"{name}.branch3x3_2a", c(384), 384, (1, 3), 1, (0, 1))
        conv(f"{name}.branch3x3_2b", c(384), 384, (3, 1), 1, (1, 0))
        conv(f"{name}.branch3x3dbl_1", cin, 448)
        conv(f"{name}.branch3x3dbl_2", c(448), 384, 3, 1, 1)
        conv(f"{name}.branch3x3dbl_3a", c(384), 384, (1, 3), 1, (0, 1))
        conv(f"{name}.branch3x3dbl_3b", c(384), 384, (3, 1), 1, (1, 0))
        conv(f"{name}.branch_pool", cin, 192)
        cin = c(320) + 2 * c(384) + 2 * c(384) + c(192)
    fcs = [("AuxLogits.fc", c(768), num_classes), ("fc", cin, num_classes)]
    return convs, fcs


def torch_state_dict(width=1.0, num_classes=309, rng=None):
    """Official-layout state dict: zeros (rng None) or random weights and BN statistics."""
    convs, fcs = inception3_layout(width, num_classes)
    sd = {}
    draw = lambda shape, scale: (
        np.zeros(shape, np.float32) if rng is None else rng.normal(0, scale, shape).astype("f4")
    )
    for name, cin, cout, (kh, kw), _, _ in convs:
        sd[f"{name}.conv.weight"] = draw((cout, cin, kh, kw), math.sqrt(2 / (cin * kh * kw)))
        sd[f"{name}.bn.weight"] = draw((cout,), 0.2) + 1.0
        sd[f"{name}.bn.bias"] = draw((cout,), 0.2)
        sd[f"{name}.bn.running_mean"] = draw((cout,), 0.2)
        sd[f"{name}.bn.running_var"] = (
            np.ones(cout, np.float32) if rng is None else rng.uniform(0.5, 2.0, cout).astype("f4")
        )
        sd[f"{name}.bn.num_batches_tracked"] = np.array(7, np.int64)
    for name, cin, cout in fcs:
        sd[f"{name}.weight"] = draw((cout, cin), 1 / math.sqrt(cin))
        sd[f"{name}.bias"] = draw((cout,), 0.1)
    return sd


# ---- independent numpy forward of the torch model (NCHW, float64, eval mode) ----


def np_conv(x, w, stride, pad):
    b = x.shape[0]
    o, _, kh, kw = w.shape
    x = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    oh, ow = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
    out = np.zeros((b, o, oh, ow))
    for dy in range(kh):
        for dx in range(kw):
            patch = x[
                :,
                :,
                dy : dy + stride * (oh - 1) + 1 : stride,
                dx : dx + stride * (ow - 1) + 1 : stride,
            ]
            out += np.einsum("bihw,oi->bohw", patch, w[:, :, dy, dx])
    return out


def np_basic(sd, name, x, spec):
    _, _, _, _, stride, pad = spec[name]
    y = np_conv(x, sd[f"{name}.conv.weight"].astype(np.float64), stride, pad)
    g = lambda k: sd[f"{name}.bn.{k}"].astype(np.float64)[None, :, None, None]
    y = (y - g("running_mean")) / np.sqrt(g("running_var") + 1e-3) * g("weight") + g("bias")
    return np.maximum(y, 0)


def np_avg3(x):
    """F.avg_pool2d(3, 1, padding=1), count_include_pad=True."""
    h, w = x.shape[2:]
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    return sum(p[:, :, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9


def np_max3s2(x):
    h, w = x.shape[2:]
    oh, ow = (h - 3) // 2 + 1, (w - 3) // 2 + 1
    return np.max(
        [
            x[:, :, dy : dy + 2 * (oh - 1) + 1 : 2, dx : dx + 2 * (ow - 1) + 1 : 2]
            for dy in range(3)
            for dx in range(3)
        ],
        axis=0,
    )


def np_melception(sd, x, spec):
    f = lambda name, h: np_basic(sd, name, h, spec)
    cat = lambda *hs: np.concatenate(hs, axis=1)
    gap = lambda h: h.mean(axis=(2, 3))
    out = {}
    h = x[:, None].astype(np.float64)
    h = f("Conv2d_2b_3x3", f("Conv2d_2a_3x3", f("Conv2d_1a_3x3", h)))
    out["64"] = gap(h)
    h = f("Conv2d_4a_3x3", f("Conv2d_3b_1x1", h))
    out["192"] = gap(h)
    for m in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        h = cat(
            f(f"{m}.branch1x1", h),
            f(f"{m}.branch5x5_2", f(f"{m}.branch5x5_1", h)),
            f(f"{m}.branch3x3dbl_3", f(f"{m}.branch3x3dbl_2", f(f"{m}.branch3x3dbl_1", h))),
            f(f"{m}.branch_pool", np_avg3(h)),
        )
    m = "Mixed_6a"
    h = cat(
        f(f"{m}.branch3x3", h),
        f(f"{m}.branch3x3dbl_3", f(f"{m}.branch3x3dbl_2", f(f"{m}.branch3x3dbl_1", h))),
        np_max3s2(h),
    )
    for m in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        b7 = h
        for i in (1, 2, 3):
            b7 = f(f"{m}.branch7x7_{i}", b7)
        bd = h
        for i in (1, 2, 3, 4, 5):
            bd = f(f"{m}.branch7x7dbl_{i}", bd)
        h = cat(f(f"{m}.branch1x1", h), b7, bd, f(f"{m}.branch_pool", np_avg3(h)))
    out["768"] = gap(h)
    m = "Mixed_7a"
    b3 = f(f"{m}.branch3x3_2", f(f"{m}.branch3x3_1", h))
    b7 = h
    for i in (1, 2, 3, 4):
        b7 = f(f"{m}.branch7x7x3_{i}", b7)
    h = cat(b3, b7, np_max3s2(h))
    for m in ("Mixed_7b", "Mixed_7c"):
        b3 = f(f"{m}.branch3x3_1", h)
        b3 = cat(f(f"{m}.branch3x3_2a", b3), f(f"{m}.branch3x3_2b", b3))
        bd = f(f"{m}.branch3x3dbl_2", f(f"{m}.branch3x3dbl_1", h))
        bd = cat(f(f"{m}.branch3x3dbl_3a", bd), f(f"{m}.branch3x3dbl_3b", bd))
        h = cat(f(f"{m}.branch1x1", h), b3, bd, f(f"{m}.branch_pool", np_avg3(h)))
    out["2048"] = gap(h)
    out["logits_unbiased"] = out["2048"] @ sd["fc.weight"].astype(np.float64).T
    out["logits"] = out["logits_unbiased"] + sd["fc.bias"]
    return out


# ---- full-size structure (eval_shape only) ----


@pytest.fixture(scope="module")
def full_abstract():
    return tvn.abstract_variables(Melception(), (1, 80, 848))


def test_param_count_and_feature_shapes(full_abstract):
    params = full_abstract["params"]
    count = lambda t: sum(math.prod(p.shape) for p in jax.tree.leaves(t))
    assert count(params) == 25_213_450
    assert count(params) - count(params["AuxLogits"]) == 22_418_133
    assert params["fc"]["kernel"].shape == (2048, 309)
    assert params["AuxLogits"]["fc"]["kernel"].shape == (768, 309)
    out = jax.eval_shape(lambda v: Melception().apply(v, jnp.zeros((2, 80, 848))), full_abstract)
    assert {k: v.shape for k, v in out.items()} == {
        "64": (2, 64),
        "192": (2, 192),
        "768": (2, 768),
        "2048": (2, 2048),
        "logits_unbiased": (2, 309),
        "logits": (2, 309),
    }


def test_too_small_input_for_aux_head_is_explained():
    init = lambda m: jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 80, 64))))
    with pytest.raises(ValueError, match=r"at least 17x17 \(input >= 80x80\), got 17x13"):
        init(Melception(width=WIDTH))
    assert "AuxLogits" not in init(Melception(width=WIDTH, aux_logits=False))["params"]
    with pytest.raises(ValueError, match="unknown features"):
        Melception().apply({}, jnp.zeros((1, 80, 848)), features=("pool",))


def test_full_official_layout_maps_one_to_one(full_abstract):
    """The 580-entry official layout (written out in this test) converts without leftovers."""
    sd = torch_state_dict()
    assert len(sd) == 580
    n_params = sum(
        v.size
        for k, v in sd.items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    assert n_params == 25_213_450
    # Same key set and torch shapes as the converter derives from the Flax model.
    want = {k: v.shape for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    assert tvn.torch_layout(full_abstract) == want
    state = melception_from_torch({"model": sd})
    got = jax.tree.map(lambda x: x.shape, {c: state[c] for c in ("params", "batch_stats")})
    assert got == jax.tree.map(lambda x: x.shape, dict(full_abstract))
    k = state["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"]
    assert k.shape == (1, 7, 128, 128)  # OIHW (128, 128, 1, 7) -> HWIO


# ---- converter on a reduced-width network vs the numpy forward ----

WIDTH = 1 / 16


class _Cfg(dict):
    """Minimal config stand-in: attribute and .get access."""

    __getattr__ = dict.__getitem__


def test_converter_matches_numpy_forward():
    """Reduced width (1/16), every block type and key of the real network, on a 40x48 input.

    The whole net's features are compared (not only a few blocks): at this width a float64
    numpy forward takes ~1 s, and it exercises each conv/BN mapping and every pooling rule
    (count-include-pad avg pools, stride-2 max pools, the 1x7/7x1 paddings) end to end.
    """
    rng = np.random.default_rng(0)
    sd = torch_state_dict(WIDTH, num_classes=7, rng=rng)
    cfg = _Cfg(model=_Cfg(num_classes=7, width=WIDTH), data=_Cfg())
    state = melception_from_torch({"model": sd, "epoch": 3}, cfg)
    assert set(state) == {"params", "batch_stats"}
    x = rng.normal(size=(2, 40, 48)).astype(np.float32)
    model = Melception(num_classes=7, width=WIDTH)
    got = jax.jit(model.apply)(state, jnp.asarray(x))
    convs, _ = inception3_layout(WIDTH, 7)
    want = np_melception(sd, x, {c[0]: c for c in convs})
    for name, value in want.items():
        np.testing.assert_allclose(np.asarray(got[name]), value, rtol=2e-4, atol=2e-4, err_msg=name)


def test_converter_errors_and_stats_file(tmp_path):
    sd = torch_state_dict(WIDTH, num_classes=7)
    cfg = _Cfg(model=_Cfg(num_classes=7, width=WIDTH), data=_Cfg())
    bad = dict(sd)
    del bad["Mixed_5b.branch1x1.bn.running_var"]
    bad["fc.weight"] = np.zeros((7, 3), np.float32)
    bad["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as e:
        melception_from_torch(bad, cfg)
    msg = str(e.value)
    assert "missing keys ['Mixed_5b.branch1x1.bn.running_var']" in msg
    assert "unexpected keys ['extra.weight']" in msg
    assert "fc.weight: got (7, 3), expected (7, 128)" in msg
    # The official stats table: 80 rows "mean std".
    table = np.stack([np.linspace(0.1, 0.5, 80), np.linspace(0.2, 0.3, 80)], axis=1)
    np.savetxt(tmp_path / "stats.txt", table)
    cfg.data["mel_stats_file"] = str(tmp_path / "stats.txt")
    state = melception_from_torch(sd, cfg)
    np.testing.assert_allclose(state["mel_stats"]["mean"], table[:, 0], rtol=1e-6)
    np.testing.assert_allclose(state["mel_stats"]["std"], table[:, 1], rtol=1e-6)
    with pytest.raises(ValueError, match="mean std"):
        np.savetxt(tmp_path / "bad.txt", table[:, :1])
        load_official_mel_stats(tmp_path / "bad.txt")


def test_scorer_needs_stats_for_official_checkpoint(tmp_path):
    np.savez(tmp_path / "melception.npz", x=np.zeros(1))
    with pytest.raises(ValueError, match=r"train_means_stds_melspec_10s_22050hz\.txt"):
        MelceptionScorer.from_path(tmp_path / "melception.npz")
    with pytest.raises(FileNotFoundError, match="no such file"):
        MelceptionScorer.from_path(tmp_path / "missing.pt", mel_stats=tmp_path / "s.txt")


# ---- tiny training through the generic loop, then scoring from the workdir ----


@pytest.mark.slow
def test_tiny_melception_trains_and_scores(tmp_path):
    """arch='melception' through `loop.train` (BatchNorm batch_stats in the state), then the
    scorer from the workdir. Eval is left out of the loop: it is the scorer's forward below."""
    c = melception_vggsound.get_config("tiny")
    c.train.num_steps, c.train.log_every, c.train.eval_every = 2, 1, 0
    inputs = make_inputs(c)
    task = make_task(c, inputs.stats)
    workdir = tmp_path / "mel"
    last = loop.train(c, workdir, task, inputs.train_iter, None)
    assert last["step"] == 2 and np.isfinite(last["train/loss"])
    assert json.loads((workdir / "config.json").read_text())["model"]["arch"] == "melception"

    scorer = MelceptionScorer.from_path(workdir, batch_size=2)
    # BatchNorm running statistics moved away from their init (mean 0, var 1) in training.
    bn = scorer.variables["batch_stats"]["Mixed_7c"]["branch1x1"]["bn"]
    assert np.abs(np.asarray(bn["mean"])).max() > 1e-4
    assert np.abs(np.asarray(bn["var"]) - 1).max() > 1e-4
    np.testing.assert_allclose(scorer.mean, inputs.stats["mean"])
    mel01 = np.random.default_rng(0).uniform(0, 1, (3, 80, 860)).astype(np.float32)
    feats = scorer.features(mel01)
    assert feats["2048"].shape == (3, 128) and feats["logits"].shape == (3, 5)
    assert feats["logits_unbiased"].shape == (3, 5)
    # The same as standardising and centre-cropping to the run's 64 training frames (columns
    # 398..461) by hand; identity stats reuse the compiled function.
    assert scorer.crop_frames == c.data.crop_frames == 64
    mean, std = inputs.stats["mean"], inputs.stats["std"]
    x = (mel01[:, :, 398:462] - mean[:, None]) / std[:, None]
    ident = {"mean": np.zeros(80, np.float32), "std": np.ones(80, np.float32)}
    by_hand = MelceptionScorer(scorer.model, scorer.variables, ident, 2, 64).features(x)
    for k in feats:
        np.testing.assert_allclose(feats[k], by_hand[k], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        feats["logits"] - feats["logits_unbiased"],
        np.broadcast_to(np.asarray(scorer.variables["params"]["fc"]["bias"]), (3, 5)),
        rtol=1e-5,
        atol=1e-5,
    )


def test_imported_checkpoint_scores_through_workdir(tmp_path):
    """converter -> `save_imported` (what `convert_checkpoint.py --kind melception` does) ->
    `MelceptionScorer.from_path`, with the official stats table from the config."""
    from avjax.checkpoints import save_imported

    c = melception_vggsound.get_config("tiny")
    table = np.stack([np.full(80, 0.4), np.full(80, 0.2)], axis=1)
    np.savetxt(tmp_path / "stats.txt", table)
    c.data.mel_stats_file = str(tmp_path / "stats.txt")
    sd = torch_state_dict(c.model.width, c.model.num_classes, rng=np.random.default_rng(1))
    assert not c.model.aux_logits  # :tiny (80x64 crops) has no aux head: drop its weights
    sd = {k: v for k, v in sd.items() if not k.startswith("AuxLogits.")}
    state = melception_from_torch({"model": sd}, c)
    save_imported(tmp_path / "imported", c.to_json(indent=2), state)
    scorer = MelceptionScorer.from_path(tmp_path / "imported", batch_size=2)
    np.testing.assert_allclose(scorer.mean, 0.4, rtol=1e-6)
    np.testing.assert_allclose(scorer.std, 0.2, rtol=1e-6)
    restored = {k: scorer.variables[k] for k in ("params", "batch_stats")}
    jax.tree.map(
        np.testing.assert_array_equal,
        restored,
        {k: state[k] for k in ("params", "batch_stats")},
    )
    mel01 = np.random.default_rng(2).uniform(0, 1, (2, 80, 848)).astype(np.float32)
    feats = scorer.features(mel01)
    assert feats["logits"].shape == (2, 5) and np.isfinite(feats["logits"]).all()
