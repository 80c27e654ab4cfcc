"""ResNet-50 (torchvision v1.5) import vs a numpy forward, and per-frame features of a real mp4."""

import math
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avjax.convert import torchvision_names as tvn
from avjax.convert.resnet import INDEXED, resnet50_from_torch
from avjax.models import resnet_features
from avjax.models.resnet import ResNet
from data_pipelines import visual_features
from data_pipelines.safe_pickle import load_array_pickle


def torchvision_resnet_layout(stage_sizes=(3, 4, 6, 3), width=64, num_classes=1000):
    """{key: shape} of torchvision's ResNet(Bottleneck) state dict, written out by hand."""
    sd = {}

    def bn(name, c):
        for k in ("weight", "bias", "running_mean", "running_var"):
            sd[f"{name}.{k}"] = (c,)
        sd[f"{name}.num_batches_tracked"] = ()

    sd["conv1.weight"] = (width, 3, 7, 7)
    bn("bn1", width)
    cin = width
    for i, n in enumerate(stage_sizes):
        planes = width * 2**i
        for j in range(n):
            p = f"layer{i + 1}.{j}"
            sd[f"{p}.conv1.weight"] = (planes, cin, 1, 1)
            bn(f"{p}.bn1", planes)
            sd[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            sd[f"{p}.conv3.weight"] = (4 * planes, planes, 1, 1)
            bn(f"{p}.bn3", 4 * planes)
            if j == 0:
                sd[f"{p}.downsample.0.weight"] = (4 * planes, cin, 1, 1)
                bn(f"{p}.downsample.1", 4 * planes)
            cin = 4 * planes
    if num_classes:
        sd["fc.weight"] = (num_classes, cin)
        sd["fc.bias"] = (num_classes,)
    return sd


def random_sd(rng, layout):
    sd = {}
    for k, shape in layout.items():
        if k.endswith("num_batches_tracked"):
            sd[k] = np.array(10, np.int64)
        elif k.endswith("running_var"):
            sd[k] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        elif k.endswith(("running_mean", "bias")):
            sd[k] = rng.normal(0, 0.2, shape).astype(np.float32)
        elif len(shape) == 1:  # BN weight
            sd[k] = (1 + rng.normal(0, 0.2, shape)).astype(np.float32)
        else:
            fan_in = math.prod(shape[1:])
            sd[k] = rng.normal(0, math.sqrt(1 / fan_in), shape).astype(np.float32)
    return sd


# ---- numpy forward of the torch model (NCHW, float64, eval-mode BatchNorm) ----


def np_conv(x, w, stride, pad):
    o, _, kh, kw = w.shape
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
    out = np.zeros((x.shape[0], o, oh, ow))
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


def np_bn(sd, name, x):
    g = lambda k: sd[f"{name}.{k}"].astype(np.float64)[None, :, None, None]
    return (x - g("running_mean")) / np.sqrt(g("running_var") + 1e-5) * g("weight") + g("bias")


def np_maxpool_3s2p1(x):
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    oh, ow = (x.shape[2] - 1) // 2 + 1, (x.shape[3] - 1) // 2 + 1
    return np.max(
        [
            p[:, :, dy : dy + 2 * oh - 1 : 2, dx : dx + 2 * ow - 1 : 2]
            for dy in range(3)
            for dx in range(3)
        ],
        axis=0,
    )


def np_resnet(sd, x_nhwc, stage_sizes):
    relu = lambda v: np.maximum(v, 0)
    h = x_nhwc.transpose(0, 3, 1, 2).astype(np.float64)
    h = np_maxpool_3s2p1(relu(np_bn(sd, "bn1", np_conv(h, sd["conv1.weight"], 2, 3))))
    for i, n in enumerate(stage_sizes):
        for j in range(n):
            p, s = f"layer{i + 1}.{j}", 2 if (i > 0 and j == 0) else 1
            y = relu(np_bn(sd, f"{p}.bn1", np_conv(h, sd[f"{p}.conv1.weight"], 1, 0)))
            y = relu(np_bn(sd, f"{p}.bn2", np_conv(y, sd[f"{p}.conv2.weight"], s, 1)))
            y = np_bn(sd, f"{p}.bn3", np_conv(y, sd[f"{p}.conv3.weight"], 1, 0))
            if j == 0:
                h = np_bn(sd, f"{p}.downsample.1", np_conv(h, sd[f"{p}.downsample.0.weight"], s, 0))
            h = relu(h + y)
    pooled = h.mean(axis=(2, 3))
    logits = pooled @ sd["fc.weight"].T + sd["fc.bias"] if "fc.weight" in sd else None
    return pooled, logits


SMALL = dict(stage_sizes=(1, 2, 1, 1), width=8)


def test_full_resnet50_layout_and_param_count():
    layout = torchvision_resnet_layout()
    assert len(layout) == 320
    model = ResNet(num_classes=1000)
    abstract = tvn.abstract_variables(model, (1, 224, 224, 3))
    assert sum(math.prod(p.shape) for p in jax.tree.leaves(abstract["params"])) == 25_557_032
    want = {k: v for k, v in layout.items() if not k.endswith("num_batches_tracked")}
    assert tvn.torch_layout(abstract, INDEXED) == want
    sd = {k: np.zeros(s, np.float32) for k, s in layout.items()}
    variables = resnet50_from_torch(sd)  # default model: ResNet-50 with the dict's 1000-way fc
    assert jax.tree.map(lambda x: x.shape, variables) == jax.tree.map(
        lambda x: x.shape, dict(abstract)
    )
    assert variables["params"]["layer1_0"]["downsample_0"]["kernel"].shape == (1, 1, 64, 256)
    assert variables["batch_stats"]["layer4_2"]["bn3"]["var"].shape == (2048,)
    no_fc = resnet50_from_torch(sd, keep_fc=False)
    assert "fc" not in no_fc["params"]


def test_converter_matches_numpy_forward():
    rng = np.random.default_rng(0)
    sd = random_sd(rng, torchvision_resnet_layout(num_classes=10, **SMALL))
    model = ResNet(num_classes=10, **SMALL)
    variables = resnet50_from_torch({"state_dict": sd}, model)
    x = rng.normal(size=(2, 40, 36, 3)).astype(np.float32)
    got = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(x)))
    feat_model = ResNet(num_classes=0, **SMALL)
    feats = np.asarray(
        jax.jit(feat_model.apply)(resnet50_from_torch(sd, feat_model, keep_fc=False), x)
    )
    want_feats, want_logits = np_resnet(sd, x, SMALL["stage_sizes"])
    assert feats.shape == (2, 4 * 8 * 8)
    np.testing.assert_allclose(feats, want_feats, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, want_logits, rtol=1e-4, atol=1e-4)


def test_converter_errors():
    sd = {k: np.zeros(s, np.float32) for k, s in torchvision_resnet_layout(**SMALL).items()}
    del sd["layer2.0.downsample.1.running_mean"]
    sd["layer1.0.conv2.weight"] = np.zeros((8, 8, 1, 1), np.float32)
    with pytest.raises(ValueError) as e:
        resnet50_from_torch(sd, ResNet(num_classes=1000, **SMALL))
    msg = str(e.value)
    assert "missing keys ['layer2.0.downsample.1.running_mean']" in msg
    assert "layer1.0.conv2.weight: got (8, 8, 1, 1), expected (8, 8, 3, 3)" in msg


def test_preprocess_frames_resize_crop_normalise():
    frames = np.full((2, 240, 320, 3), 128, np.uint8)
    frames[1] = 0
    out = resnet_features.preprocess_frames(frames)
    assert out.shape == (2, 224, 224, 3) and out.dtype == np.float32
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(
        out[0], np.broadcast_to((128 / 255 - mean) / std, out[0].shape), atol=1e-5
    )
    np.testing.assert_allclose(out[1], np.broadcast_to(-mean / std, out[1].shape), atol=1e-5)
    # Crop window of Resize(256) + CenterCrop(224) on a 240x320 frame (-> 256x341).
    ramp = np.tile(np.arange(320, dtype=np.uint8)[None, :, None] // 2, (240, 1, 3))[None]
    got = resnet_features.preprocess_frames(ramp)[0, 0, :, 0] * 0.229 + 0.485
    from PIL import Image

    ref = np.asarray(Image.fromarray(ramp[0]).resize((341, 256), Image.BILINEAR), np.float32)
    np.testing.assert_allclose(got, ref[16, 58 : 58 + 224, 0] / 255, atol=1e-5)


def test_loop_or_crop_to_clip_rows():
    feats = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.testing.assert_array_equal(
        visual_features.loop_or_crop(feats, 7)[:, 0], [0, 2, 4, 0, 2, 4, 0]
    )
    np.testing.assert_array_equal(visual_features.loop_or_crop(feats, 2), feats[:2])


def test_missing_weights_are_named(tmp_path, vas_samples):
    video = next((vas_samples / "videos").rglob("*.mp4"))
    with pytest.raises(ValueError, match="need ImageNet weights"):
        resnet_features.resnet50_features(video, None)
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        resnet_features.resnet50_features(video, tmp_path / "nope.pth")


@pytest.mark.slow
def test_features_of_real_vas_clip_match_official_row_count(tmp_path, vas_samples):
    """Random weights (.npz, no torch) on a real clip: one finite feature row per official row.

    A ResNet with one bottleneck per stage, 8 channels wide (256 features, 1/30 of the FLOPs
    of the 2048-wide one, whose width is checked abstractly), keeps CPU time low; the frame
    pipeline is the real one.
    """
    wide = ResNet(stage_sizes=(1, 1, 1, 1), num_classes=0)
    frames = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    variables = jax.eval_shape(wide.init, jax.random.PRNGKey(0), frames)
    assert jax.eval_shape(wide.apply, variables, frames).shape == (2, 2048)

    video = vas_samples / "videos" / "dog" / "video_02754.mp4"
    official = load_array_pickle(
        vas_samples / "features" / "dog" / "feature_resnet50_dim2048_21.5fps" / "video_02754.pkl"
    )
    model = ResNet(stage_sizes=(1, 1, 1, 1), width=8, num_classes=0)
    layout = torchvision_resnet_layout(stage_sizes=(1, 1, 1, 1), width=8, num_classes=1000)
    np.savez(tmp_path / "w.npz", **random_sd(np.random.default_rng(0), layout))
    feats = resnet_features.resnet50_features(video, tmp_path / "w.npz", model=model)
    assert feats.shape == (official.shape[0], 256) == (215, 256)
    assert feats.dtype == np.float32 and np.isfinite(feats).all()
    assert feats.std(axis=0).mean() > 0  # frames differ
    out = visual_features.feature_path(video, tmp_path / "out")
    assert out == tmp_path / "out" / "feature_resnet50_dim2048_21.5fps" / "video_02754.pkl"
    visual_features.write_features(out, feats)
    np.testing.assert_array_equal(load_array_pickle(out), feats)
    with open(out, "rb") as f:
        assert isinstance(pickle.load(f), np.ndarray)

    # The folder tool (what `launch/preprocess.py --resnet50_weights` runs) loops a shorter
    # clip to the official 10 s: the 8 s gun clip gives 172 frames, written as 215 rows.
    import shutil

    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(vas_samples / "videos" / "gun" / "video_00819.mp4", videos)
    np.savez(tmp_path / "w8.npz", **random_sd(np.random.default_rng(1), layout))
    extract = resnet_features.resnet50_extractor(tmp_path / "w8.npz", model=model)
    summary = visual_features.features_folder(videos, tmp_path / "out2", extract)
    assert summary.done == 1 and not summary.failed
    looped = load_array_pickle(
        tmp_path / "out2" / "feature_resnet50_dim2048_21.5fps" / "video_00819.pkl"
    )
    official = load_array_pickle(
        vas_samples / "features" / "gun" / "feature_resnet50_dim2048_21.5fps" / "video_00819.pkl"
    )
    assert looped.shape == (official.shape[0], 256) == (215, 256)
    np.testing.assert_array_equal(looped[172:], looped[: 215 - 172])
    again = visual_features.features_folder(videos, tmp_path / "out2", extract)
    assert again.skipped == 1 and again.done == 0
