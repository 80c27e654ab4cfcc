"""Optical flow: warping, AEPE, colour wheel and losses by hand; TV-L1 ground truth; datasets.

The JAX functions are checked against hand-computed values (and OpenCV's `remap`); the
TV-L1 flow against the rule MCAV needs (warping frame t by flow t+1 gives frame t+1); the
companion flow dataset through `launch/add_flow.py`'s library call and the input pipeline.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys

import cv2
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from avjax.errors import UserError
from avjax.losses.flow import flow_mse, smoothness
from avjax.video.flow import aepe, end_point_error, flow_to_rgb, make_colorwheel, warp
from data_pipelines import clip_flow, inputs, m3so, m3so_tfds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _const_flow(h, w, dx, dy, lead=()):
    f = np.zeros((*lead, h, w, 2), np.float32)
    f[..., 0], f[..., 1] = dx, dy
    return f


# ----------------------------------------------------------------------------- warp


def test_warp_integer_shifts_and_borders():
    rng = np.random.default_rng(0)
    img = rng.random((2, 5, 6, 3), dtype=np.float32)
    # dx = +1: out(y, x) = img(y, x + 1); the last column repeats (replicate) or is 0 (zeros)
    out = np.asarray(warp(img, _const_flow(5, 6, 1.0, 0.0)))
    np.testing.assert_allclose(out[:, :, :-1], img[:, :, 1:], rtol=0, atol=1e-6)
    np.testing.assert_allclose(out[:, :, -1], img[:, :, -1], rtol=0, atol=1e-6)
    out = np.asarray(warp(img, _const_flow(5, 6, 1.0, 0.0), border="zeros"))
    np.testing.assert_allclose(out[:, :, :-1], img[:, :, 1:], rtol=0, atol=1e-6)
    assert (out[:, :, -1] == 0).all()
    # dy = -2: out(y, x) = img(y - 2, x); rows 0, 1 read row 0 (replicate)
    out = np.asarray(warp(img, _const_flow(5, 6, 0.0, -2.0)))
    np.testing.assert_allclose(out[:, 2:], img[:, :-2], rtol=0, atol=1e-6)
    np.testing.assert_allclose(out[:, :2], np.repeat(img[:, :1], 2, axis=1), rtol=0, atol=1e-6)
    # far outside: the edge pixel, or zeros
    far = _const_flow(5, 6, -10.0, 0.0)
    np.testing.assert_allclose(warp(img, far), np.repeat(img[:, :, :1], 6, axis=2), atol=1e-6)
    assert (np.asarray(warp(img, far, border="zeros")) == 0).all()
    np.testing.assert_allclose(warp(img, np.zeros((5, 6, 2), np.float32)), img, atol=1e-6)
    with pytest.raises(ValueError, match="border"):
        warp(img, far, border="reflect")


def test_warp_sub_pixel_by_hand():
    row = np.array([0.0, 4.0, 8.0], np.float32).reshape(1, 3, 1)
    half = _const_flow(1, 3, 0.5, 0.0)
    # x + 0.5: (0 + 4) / 2, (4 + 8) / 2, then 8 clamped (replicate) or (8 + 0) / 2 (zeros)
    np.testing.assert_allclose(np.asarray(warp(row, half))[0, :, 0], [2.0, 6.0, 8.0])
    np.testing.assert_allclose(np.asarray(warp(row, half, "zeros"))[0, :, 0], [2.0, 6.0, 4.0])
    # x - 0.25 at x = 0: 0.75 * 0 + 0.25 * (zero surround) = 0 / replicate 0; at x = 2: 7
    quarter = _const_flow(1, 3, -0.25, 0.0)
    np.testing.assert_allclose(np.asarray(warp(row, quarter))[0, :, 0], [0.0, 3.0, 7.0])
    # 2-D: the centre of [[0, 1], [2, 3]] is their mean; per-pixel flows differ
    sq = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32).reshape(2, 2, 1)
    f = np.zeros((2, 2, 2), np.float32)
    f[0, 0] = (0.5, 0.5)  # -> 1.5
    f[0, 1] = (-1.0, 0.25)  # (0.25, x=0): 0.75 * 0 + 0.25 * 2 = 0.5
    f[1, 0] = (0.75, -1.0)  # (y=0, 0.75): 0.25 * 0 + 0.75 * 1 = 0.75
    out = np.asarray(warp(sq, f))[..., 0]
    np.testing.assert_allclose(out, [[1.5, 0.5], [0.75, 3.0]], atol=1e-6)
    # integer frames are read as float32
    assert warp(sq.astype(np.uint8), f).dtype == jnp.float32


def test_warp_matches_opencv_remap():
    rng = np.random.default_rng(1)
    img = rng.random((9, 11, 3), dtype=np.float32)
    flow = rng.normal(0, 2.5, (9, 11, 2)).astype(np.float32)
    gx, gy = np.meshgrid(np.arange(11, dtype=np.float32), np.arange(9, dtype=np.float32))
    for border, mode in (("replicate", cv2.BORDER_REPLICATE), ("zeros", cv2.BORDER_CONSTANT)):
        ref = cv2.remap(img, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR, None, mode)
        # OpenCV rounds the sub-pixel weights to 1/32: agreement to ~1/64 of the local range
        np.testing.assert_allclose(np.asarray(warp(img, flow, border)), ref, atol=2e-2)


def test_warp_gradients_jit_vmap_and_broadcast():
    row = jnp.array([0.0, 4.0, 8.0]).reshape(1, 3, 1)
    flow = jnp.asarray(_const_flow(1, 3, 0.5, 0.0))
    # d out / d dx = right minus left neighbour (4, 4, and 0 where clamped)
    g = jax.grad(lambda f: warp(row, f).sum())(flow)
    np.testing.assert_allclose(g[0, :, 0], [4.0, 4.0, 0.0])
    np.testing.assert_allclose(g[0, :, 1], [0.0, 0.0, 0.0])
    # d sum(out) / d frames: how much each pixel is read: 0.5, 0.5 + 0.5, 0.5 + 1
    gf = jax.grad(lambda v: warp(v, flow).sum())(row)
    np.testing.assert_allclose(gf[0, :, 0], [0.5, 1.0, 1.5])
    rng = np.random.default_rng(2)
    frames = rng.random((4, 3, 6, 5, 2), dtype=np.float32)  # [B, T, H, W, C]
    flows = rng.normal(0, 1.5, (4, 3, 6, 5, 2)).astype(np.float32)
    eager = warp(frames, flows, "zeros")
    jitted = jax.jit(warp, static_argnames="border")(frames, flows, border="zeros")
    vmapped = jax.vmap(lambda a, b: warp(a, b, "zeros"))(frames, flows)
    np.testing.assert_allclose(jitted, eager, atol=1e-6)
    np.testing.assert_allclose(vmapped, eager, atol=1e-6)
    # one frame, many flows
    one = warp(frames[0, 0], flows[:, 0])
    np.testing.assert_allclose(one[2], warp(frames[0, 0], flows[2, 0]), atol=1e-6)
    assert one.shape == (4, 6, 5, 2)


# ----------------------------------------------------------------------------- AEPE, losses


def test_aepe_by_hand():
    pred = np.zeros((2, 1, 2, 2), np.float32)  # [T, H, W, 2]
    true = np.zeros_like(pred)
    pred[0, 0, 0] = (3.0, 4.0)  # EPE 5
    pred[1, 0, 1] = (1.0, -1.0)  # EPE sqrt(2)
    np.testing.assert_allclose(end_point_error(pred, true)[0, 0], [5.0, 0.0])
    np.testing.assert_allclose(aepe(pred, true), (5.0 + math.sqrt(2)) / 4, rtol=1e-6)
    np.testing.assert_allclose(aepe(pred, true, per_frame=True), [2.5, math.sqrt(2) / 2])
    g = jax.grad(lambda p: aepe(p, true))(jnp.asarray(pred))
    assert np.isfinite(np.asarray(g)).all()  # zero differences: gradient 0, not NaN
    np.testing.assert_allclose(g[0, 0, 0], [0.6 / 4, 0.8 / 4], rtol=1e-6)


def test_flow_mse_and_smoothness_by_hand():
    np.testing.assert_allclose(flow_mse(np.array([[[1.0, 2.0]]]), np.zeros((1, 1, 2))), 2.5)
    # H=2, W=3: u = [[0, 1, 1], [0, 0, 0]], v = [[0, 0, 2], [0, 0, 0]]; grey frame with one
    # bright pixel at (0, 2)
    f = np.zeros((2, 3, 2), np.float32)
    f[0, 1:, 0] = 1.0
    f[0, 2, 1] = 2.0
    v = np.zeros((2, 3, 1), np.float32)
    v[0, 2] = 1.0
    # x: |dF|_1 row 0: |1-0| + 0, |1-1| + |2-0| = 1, 2 (weights 1, e^-1); row 1: 0, 0
    sx = (1.0 + 2.0 * math.exp(-1.0)) / 4
    # y: |dF|_1 per column: 0, |0-1|, |0-1| + |0-2| = 0, 1, 3 (weights 1, 1, e^-1)
    sy = (0.0 + 1.0 + 3.0 * math.exp(-1.0)) / 3
    np.testing.assert_allclose(smoothness(f, v), sx + sy, rtol=1e-6)
    # RGB: the edge weight is exp(-mean over channels of |dV|) = exp(-(1 + 0 + 0.5) / 3)
    rgb = np.zeros((2, 3, 3), np.float32)
    rgb[0, 2] = (1.0, 0.0, 0.5)
    e = math.exp(-0.5)
    np.testing.assert_allclose(
        smoothness(f[None], rgb[None]), (1 + 2 * e) / 4 + (1 + 3 * e) / 3, rtol=1e-6
    )
    # a constant flow is smooth whatever the frame
    assert float(smoothness(np.ones((4, 5, 2)), np.random.default_rng(0).random((4, 5, 1)))) == 0


# ----------------------------------------------------------------------------- colour wheel


def test_flow_colour_wheel_known_colours():
    wheel = make_colorwheel()
    assert wheel.shape == (55, 3)
    np.testing.assert_array_equal(wheel[0], [255, 0, 0])  # red
    np.testing.assert_array_equal(wheel[15], [255, 255, 0])  # yellow starts YG
    np.testing.assert_array_equal(wheel[21], [0, 255, 0])  # green starts GC
    np.testing.assert_array_equal(wheel[25], [0, 255, 255])  # cyan starts CB
    np.testing.assert_array_equal(wheel[36], [0, 0, 255])  # blue starts BM
    np.testing.assert_array_equal(wheel[49], [255, 0, 255])  # magenta starts MR
    flow = np.array(
        [[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [0.5, 0.0], [2.0, 0.0]]],
        np.float32,
    )
    rgb = flow_to_rgb(flow, max_norm=1.0)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 7, 3)
    expected = [
        [255, 255, 255],  # zero flow: white
        [255, 0, 0],  # +x: red (wheel[0])
        [255, 229, 0],  # +y (down): between wheel[13] (255, 221, 0) and [14] (255, 238, 0)
        [0, 209, 255],  # -x: wheel[27] = (0, 255 - floor(255 * 2 / 11), 255)
        [88, 0, 255],  # -y: between wheel[40] (78, 0, 255) and [41] (98, 0, 255)
        [255, 127, 127],  # +x at half the norm: half saturated
        [191, 0, 0],  # beyond max_norm: the colour at 75 %
    ]
    np.testing.assert_array_equal(rgb[0], expected)
    # default scale: the largest norm in the array is fully saturated
    np.testing.assert_array_equal(flow_to_rgb(flow[:, :2] * 7.0)[0], expected[:2])
    np.testing.assert_array_equal(flow_to_rgb(np.zeros((2, 3, 4, 2))), 255)


# ----------------------------------------------------------------------------- TV-L1


def _moving_square(T=6, size=48, v=(2, 1)):
    """A textured 12x12 square moving by v = (dx, dy) px per frame over a faint texture."""
    rng = np.random.default_rng(0)
    back = (rng.random((size, size)) * 40).astype(np.uint8)
    tex = (80 + rng.random((12, 12)) * 175).astype(np.uint8)
    frames = np.empty((T, size, size, 1), np.uint8)
    for t in range(T):
        f = back.copy()
        x, y = 10 + v[0] * t, 12 + v[1] * t
        f[y : y + 12, x : x + 12] = tex
        frames[t, ..., 0] = f
    return frames


@pytest.fixture(scope="module")
def square_flow():
    frames = _moving_square()
    return frames, clip_flow.clip_flow(frames)


def test_tvl1_backward_flow_warps_frame_t_into_t_plus_1(square_flow):
    frames, flow = square_flow
    assert flow.shape == (6, 48, 48, 2) and flow.dtype == np.float32
    assert (flow[0] == 0).all()
    v = frames.astype(np.float32) / 255.0
    warped = np.asarray(warp(v[:-1], flow[1:]))
    err_warp = np.abs(warped - v[1:]).mean(axis=(1, 2, 3))
    err_still = np.abs(v[:-1] - v[1:]).mean(axis=(1, 2, 3))
    assert (err_warp < 0.35 * err_still).all(), (err_warp, err_still)
    # inside the square, the content at p in frame t+1 was at p - (2, 1) in frame t
    for t in range(1, 6):
        x, y = 10 + 2 * t, 12 + t
        inner = flow[t, y + 3 : y + 9, x + 3 : x + 9].reshape(-1, 2)
        np.testing.assert_allclose(np.median(inner, axis=0), [-2.0, -1.0], atol=0.25)


def test_tvl1_repeated_frames_and_rgb():
    frames = np.repeat(_moving_square(T=3), 2, axis=0)  # each frame twice
    rgb = np.repeat(frames, 3, axis=-1)
    flow = clip_flow.clip_flow(rgb)  # RGB -> grey; equal neighbours -> exactly 0
    assert (flow[[0, 1, 3, 5]] == 0).all() and np.abs(flow[2]).max() > 1
    np.testing.assert_array_equal(clip_flow.grey(rgb), frames[..., 0])
    with pytest.raises(ValueError, match="uint8 frames"):
        clip_flow.grey(frames.astype(np.float32))


# ----------------------------------------------------------------------------- datasets


@pytest.fixture(scope="module")
def flow_data(tmp_path_factory):
    """Two tiny M3SO-NB datasets (8-frame clips): `with` gets flow, `other` (other seed) not."""
    pools = m3so.load_digits(None)
    cfg = m3so.M3soConfig(num_frames=8)
    root = tmp_path_factory.mktemp("flowdata")
    for name, seed in (("with", 0), ("other", 1)):
        m3so_tfds.write_m3so(
            root / name, pools=pools, config=cfg, seed=seed, num_train=3, num_val=0, num_test=2
        )
    summary = clip_flow.add_flow(root / "with", params=clip_flow.TVL1_TINY)
    return root, summary


def test_add_flow_writes_the_companion_dataset(flow_data):
    root, summary = flow_data
    assert summary["clips"] == 5 and summary["pairs"] == 5 * 7 and not summary["reused"]
    assert summary["ms_per_pair"] > 0 and summary["path"] == root / "with" / "flow"
    ds = tfds.data_source("avjax_clip_flow", data_dir=os.fspath(root / "with" / "flow"))
    clips = m3so_tfds.open_clips(root / "with", "test")
    for i in range(2):
        ex = ds["test"][i]
        assert ex["flow"].dtype == np.float16 and ex["flow"].shape == (8, 48, 48, 2)
        assert ex["id"] == f"test/{i:06d}".encode()
        ref = clip_flow.clip_flow(clips[i]["frames"], clip_flow.TVL1_TINY)
        np.testing.assert_allclose(ex["flow"], ref, atol=2e-3 * (1 + np.abs(ref).max()))
    again = clip_flow.add_flow(root / "with" / "avjax_m3so" / "1.0.0", params=clip_flow.TVL1_TINY)
    assert again["reused"] and again["path"] == summary["path"]
    with pytest.raises(UserError, match="other TV-L1 parameters; pass --overwrite"):
        clip_flow.add_flow(root / "with")  # default parameters differ from TVL1_TINY
    with pytest.raises(UserError, match="unknown TV-L1 parameter"):
        clip_flow.add_flow(root / "with", params={"lambda": 0.1})
    with pytest.raises(FileNotFoundError, match="no prepared clip dataset"):
        clip_flow.add_flow(root)


def _config(data_dir, **data):
    d = dict(
        dir=os.fspath(data_dir),
        kind="m3so",
        block=False,
        synthetic=False,
        flow=True,
        n_past=2,
        n_future=3,
        n_eval=5,
        image_size=48,
        channels=1,
        audio_shape=(23, 21),
        global_batch_size=4,
        read_threads=2,
        train_split="train",
        eval_split="test",
    )
    d.update(data)
    return ml_collections.ConfigDict({"task": "mcav", "seed": 0, "data": d})


def test_pipeline_batches_carry_aligned_flow(flow_data):
    root, _ = flow_data
    inp = inputs.make_inputs(_config(root / "with", global_batch_size=2))
    b = next(inp.train_iter)
    assert b["flow"].shape == (2, 5, 48, 48, 2) and b["flow"].dtype == np.float32
    assert b["frames"].shape == (2, 5, 48, 48, 1)
    assert (b["flow"][:, 0] == 0).all()  # the window's first frame has no flow
    src = clip_flow.with_flow(m3so_tfds.open_clips(root / "with", "train"))
    for frames, flow in zip(b["frames"], b["flow"]):
        hits = [
            (i, s)
            for i in range(len(src))
            for s in range(4)
            if np.array_equal(src[i]["frames"][s : s + 5], frames)
        ]
        assert hits
        i, s = hits[0]
        np.testing.assert_array_equal(flow[1:], src[i]["flow"][s + 1 : s + 5].astype(np.float32))
    ev = list(inp.eval_iter_fn())
    assert len(ev) == 1 and ev[0]["flow"].shape == (2, 7, 48, 48, 2)
    test = clip_flow.with_flow(m3so_tfds.open_clips(root / "with", "test"))
    np.testing.assert_array_equal(ev[0]["flow"][1], test[1]["flow"][:7].astype(np.float32))
    # padding clips (global batch 4 > 2 test clips) carry zero flow
    ev = list(inputs.make_inputs(_config(root / "with")).eval_iter_fn())
    assert ev[0]["mask"].tolist() == [1.0, 1.0, 0.0, 0.0] and (ev[0]["flow"][2:] == 0).all()
    # without the switch: no flow key (Sound2Sight's batches)
    plain = next(inputs.make_inputs(_config(root / "with", flow=False)).train_iter)
    assert "flow" not in plain


def test_missing_and_stale_flow_are_named(flow_data):
    root, _ = flow_data
    with pytest.raises(
        UserError,
        match=re.escape(f"add it with `python launch/add_flow.py --data_dir {root / 'other'}"),
    ):
        inputs.make_inputs(_config(root / "other"))
    stale = root / "stale"
    shutil.copytree(root / "other", stale)
    shutil.copytree(root / "with" / "flow", stale / "flow")  # flow of other clips
    with pytest.raises(UserError, match=r"computed for other clips.*--overwrite"):
        inputs.make_inputs(_config(stale))


@pytest.mark.slow
def test_add_flow_cli_workers_and_tiny_inputs(flow_data, tmp_path, monkeypatch):
    """The launcher with 2 spawned workers, previews; the `:tiny` data get flow on first use."""
    root, _ = flow_data
    data = tmp_path / "data"
    shutil.copytree(root / "other", data)
    cmd = [sys.executable, "launch/add_flow.py", f"--data_dir={data}", "--num_workers=2"]
    cmd += ["--tvl1=epsilon=0.05,warps=2", "--previews=1"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "5 clips, 35 frame pairs" in res.stdout and "ms per pair" in res.stdout
    assert (data / "flow" / "previews" / "0.gif").is_file()
    # the same clips and parameters in-process: identical flow (workers change nothing)
    ref = tmp_path / "ref"
    shutil.copytree(root / "other", ref)
    clip_flow.add_flow(ref, params=clip_flow.TVL1_TINY)
    a = clip_flow.with_flow(m3so_tfds.open_clips(data, "train"))
    b = clip_flow.with_flow(m3so_tfds.open_clips(ref, "train"))
    np.testing.assert_array_equal(a[2]["flow"], b[2]["flow"])
    bad = subprocess.run(
        [*cmd[:2], f"--data_dir={data}", "--tvl1=lambda=1"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert bad.returncode == 1 and "error: --tvl1: 'lambda=1'" in bad.stderr
    # :tiny (embedded M3SO-NB): flow computed once into the cache, then read like any other
    monkeypatch.setenv("AVJAX_CACHE", os.fspath(tmp_path / "cache"))
    cfg = _config("", synthetic=True, n_past=5, n_future=5, n_eval=10, global_batch_size=8)
    inp = inputs.make_inputs(cfg)
    b = next(inp.train_iter)
    assert b["flow"].shape == (8, 10, 48, 48, 2) and (b["flow"][:, 0] == 0).all()
    assert np.abs(b["flow"][:, 1:]).mean() > 0.1
    assert (inp.data_dir / "flow" / clip_flow.ClipFlowBuilder.name).is_dir()
