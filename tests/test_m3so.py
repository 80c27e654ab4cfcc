"""M3SO / M3SO-NB generator: physics, audio, official switch, determinism, IDX, TFDS, inputs."""

from __future__ import annotations

import gzip
import os
import re

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from data_pipelines import inputs, m3so, m3so_tfds, video_inputs

S = m3so.SAMPLES_PER_FRAME
NORM = np.sqrt(2.0) * 20.0


@pytest.fixture(scope="module")
def pools():
    return m3so.load_digits(None)


@pytest.fixture(scope="module")
def nb(pools):
    return m3so.generate(pools, "train", range(48), seed=3)


@pytest.fixture(scope="module")
def blk(pools):
    cfg = m3so.M3soConfig(block=True, num_frames=30, block_start_frame=10)
    return m3so.generate(pools, "train", range(32), seed=5, config=cfg)


@pytest.fixture(scope="module")
def official(pools):
    cfg = m3so.M3soConfig(block=True, official=True, num_frames=30)
    return m3so.generate(pools, "train", range(32), seed=5, config=cfg)


def _chord(symbol: int, official: bool = False) -> np.ndarray:
    """Independent chord: the two sines of the symbol's frequencies at 4400 Hz."""
    f1, f2 = m3so.symbol_frequencies_hz(symbol, official)
    t = np.arange(S) / m3so.SAMPLE_RATE
    return (np.sin(2 * np.pi * f1 * t) + np.sin(2 * np.pi * f2 * t)) / 2


# ----------------------------------------------------------------------------- physics


def test_shapes_and_dtypes(nb):
    assert nb["frames"].shape == (48, 30, 48, 48, 1) and nb["frames"].dtype == np.uint8
    assert nb["audio"].shape == (48, 30, 23, 21) and nb["audio"].dtype == np.float32
    assert nb["waveform"].shape == (48, 30 * S)
    assert nb["positions"].shape == (48, 31, 2)
    assert (nb["block"] == 0).all() and (nb["block_start"] == -1).all()
    assert (nb["block_bounce"] == 0).all()


def test_motion_steps_by_constant_speed_and_stays_in_bounds(nb):
    step = np.diff(nb["positions"].astype(np.float64), axis=1)  # [N, T, 2]
    speed = np.linalg.norm(step, axis=-1)
    np.testing.assert_allclose(
        speed, np.broadcast_to(speed[:, :1], speed.shape), atol=1e-4
    )  # |v| constant through bounces
    assert set(np.round(speed[:, 0]).astype(int)) <= {2, 3, 4, 5, 6}
    np.testing.assert_allclose(speed[:, 0], np.round(speed[:, 0]), atol=1e-4)
    p = nb["positions"]
    assert p.min() >= -2 - 1e-4 and p.max() <= 22 + 1e-4
    assert np.all(nb["positions"][:, 0] >= 0) and np.all(nb["positions"][:, 0] <= 20)


def test_wall_bounce_timing(nb):
    """Flag t <=> the unbounced move p_t + v_{t-1} leaves [-2, 22] on some axis; v flips there."""
    p = nb["positions"].astype(np.float64)
    step = np.diff(p, axis=1)
    assert nb["wall_bounce"].sum() > 10
    for t in range(1, 30):
        ahead = p[:, t] + step[:, t - 1]  # where the digit would go without a bounce
        out = (ahead < -2 + 1e-6) | (ahead > 22 - 1e-6)
        strictly = (ahead < -2 - 1e-4) | (ahead > 22 + 1e-4)
        flipped = np.sign(step[:, t]) != np.sign(step[:, t - 1])
        flag = nb["wall_bounce"][:, t].astype(bool)
        assert np.all(flag[strictly.any(-1)]), t
        assert np.all(out.any(-1)[flag]), t
        np.testing.assert_array_equal(flipped[flag], out[flag])
        assert not flipped[~flag].any(), t


def test_frames_match_pil_paste(pools, nb):
    """Each frame is the digit pasted (PIL, as the official code) at the truncated position."""
    for n in range(0, 48, 7):
        digit = Image.fromarray(pools.images["train"][nb["digit_index"][n]])
        for t in (0, 9, 29):
            canvas = Image.new("L", (48, 48))
            canvas.paste(digit, tuple(nb["positions"][n, t].astype(np.float64).astype(int)))
            np.testing.assert_array_equal(nb["frames"][n, t, :, :, 0], np.asarray(canvas))


# ----------------------------------------------------------------------------- audio


def test_digit_tone_frequencies_by_fft(pools):
    """Default tones: two peaks at the symbol's frequencies, all below Nyquist (2200 Hz)."""
    clips = m3so.generate(pools, "test", range(60), seed=1)
    seen = set()
    for n in range(60):
        t = int(np.flatnonzero(clips["wall_bounce"][n] == 0)[0])
        spec = np.abs(np.fft.rfft(clips["waveform"][n, t * S : (t + 1) * S]))
        peaks = sorted(np.argsort(spec)[-2:] * 10.0)  # 440 samples at 4400 Hz: 10 Hz bins
        label = int(clips["label"][n])
        assert peaks == sorted(m3so.symbol_frequencies_hz(label)), (label, peaks)
        assert max(peaks) < m3so.SAMPLE_RATE / 2
        seen.add(label)
    assert len(seen) >= 8
    hz = {m3so.symbol_frequencies_hz(s) for s in (*range(10), 11, 12)}
    assert len(hz) == 12  # every symbol distinct


def test_amplitude_follows_distance_from_corner(nb):
    """Audio frame t = A_t * chord(symbol), A_t = |p_{t+1}| / |(20, 20)| (sound leads by one)."""
    wave = nb["waveform"].reshape(48, 30, S).astype(np.float64)
    for n in range(0, 48, 5):
        for t in range(30):
            sym = 11 if nb["wall_bounce"][n, t] else int(nb["label"][n])
            ch = _chord(sym)
            amp = wave[n, t] @ ch / (ch @ ch)
            expect = np.linalg.norm(nb["positions"][n, t + 1].astype(np.float64)) / NORM
            np.testing.assert_allclose(amp, expect, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(wave[n, t], amp * ch, atol=1e-5)
    np.testing.assert_allclose(
        nb["amplitude"], np.linalg.norm(nb["positions"][:, 1:], axis=-1) / NORM, rtol=1e-5
    )


def test_bounce_tones(nb, blk):
    """Wall bounce alone -> symbol 11; block bounce alone -> 12; both -> the digit."""
    for clips in (nb, blk):
        wave = clips["waveform"].reshape(len(clips["label"]), -1, S)
        for sym, mask in (
            (11, (clips["wall_bounce"] == 1) & (clips["block_bounce"] == 0)),
            (12, (clips["block_bounce"] == 1) & (clips["wall_bounce"] == 0)),
        ):
            if clips is nb and sym == 12:
                continue
            idx = np.argwhere(mask)
            assert len(idx) > 0, sym
            for n, t in idx[:20]:
                np.testing.assert_allclose(
                    wave[n, t], clips["amplitude"][n, t] * _chord(sym), atol=1e-5
                )
        both = np.argwhere((clips["wall_bounce"] == 1) & (clips["block_bounce"] == 1))
        for n, t in both[:10]:
            ch = _chord(int(clips["label"][n]))
            np.testing.assert_allclose(wave[n, t], clips["amplitude"][n, t] * ch, atol=1e-5)


def test_block_appears_at_its_frame_in_the_spec_region(blk):
    start = 11  # block_start_frame=10: drawn from frame index 11
    assert (blk["block_start"] == start).all()
    b = blk["block"]
    assert (b[:, 2] == 32).all() and (b[:, 3] == 1).all()
    assert ((b[:, :2] >= 12) & (b[:, :2] < 16)).all()
    for n in range(len(b)):
        x, y = b[n, :2]
        region = blk["frames"][n, :, y : y + 32, x : x + 32, 0]
        assert (region[start:] == 255).all()
        assert not (region[:start] == 255).all(axis=(1, 2)).any()
        assert (blk["block_bounce"][n, : start - 1] == 0).all()
    # the official box test fires from the appearance on (the digit box always meets the block)
    assert blk["block_bounce"][:, start:].mean() > 0.5


def test_block_always_overlaps_digit_box():
    """The spec geometry: any block in [12, 16)^2 meets any digit box with corner in [-2, 22]^2,
    so the official rejection search can never succeed (documented in m3so's module doc)."""
    rng = np.random.default_rng(0)
    corners = m3so._box_corners(rng.uniform(-2, 22, (5000, 2)), m3so.DIGIT)
    bp = rng.uniform(12, 16, (5000, 2))
    blocks = np.concatenate([bp, bp + m3so.BLOCK], -1)
    assert m3so._corner_inside(blocks, corners).any(-1).all()


def _reference_bounce_dir(blk, prev_tl, next_tl):
    """Loop transcription of the official `get_bounce_dir` (2x2 inverse per block face)."""
    x0, y0, x1, y1 = blk
    b = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)
    faces = [b[0] - b[1], b[1] - b[2], b[2] - b[3], b[3] - b[0]]
    p12 = np.asarray(prev_tl) - np.asarray(next_tl)
    sol = []
    for t in range(4):
        m = np.stack([p12, -faces[t]]).T
        a, c = np.linalg.inv(m) @ (np.asarray(next_tl) - b[(t + 1) % 4])
        sol.append(a > 0 and c > 0)
    if sum(sol) == 1:
        return [1.0, -1.0] if (sol[0] or sol[2]) else [-1.0, 1.0]
    return [-1.0, -1.0]


def test_bounce_signs_match_official_rule():
    rng = np.random.default_rng(0)
    n = 400
    bp = rng.integers(12, 16, (n, 2))
    blk = np.concatenate([bp, bp + 32], -1)
    prev = rng.uniform(-2, 22, (n, 2))
    ang = rng.uniform(-np.pi, np.pi, n)
    nxt = prev + rng.integers(2, 7, n)[:, None] * np.stack([np.cos(ang), np.sin(ang)], -1)
    got = m3so._bounce_signs(blk, prev, nxt)
    want = np.array([_reference_bounce_dir(blk[i], prev[i], nxt[i]) for i in range(n)])
    np.testing.assert_array_equal(got, want)
    assert len({tuple(r) for r in want}) == 3  # all three outcomes occur


def test_audio_features_scale_and_rows():
    t = np.arange(S) / m3so.SAMPLE_RATE
    sine = np.sin(2 * np.pi * 500 * t).astype(np.float32)  # bin 5 of n_fft 44 at 4400 Hz
    feats = m3so.audio_features(np.concatenate([sine, np.zeros(S, np.float32)]))
    assert feats.shape == (2, 23, 21)
    assert (feats[1] == 0).all()
    interior = feats[0][:, 2:-2]
    assert (interior.argmax(0) == 5).all()
    np.testing.assert_allclose(interior[5], 1.0, atol=0.02)
    with pytest.raises(ValueError, match="multiple of 440"):
        m3so.audio_features(np.zeros(441))


# ----------------------------------------------------------------------------- official switch


def test_official_int16_wraparound_and_aliasing(official):
    wave = official["waveform"].reshape(32, 30, S).astype(np.float64)
    chords = m3so.tone_table(official=True)
    n, t = 0, 2
    sym = int(official["label"][n])
    if official["wall_bounce"][n, t] and not official["block_bounce"][n, t]:
        sym = 11
    elif official["block_bounce"][n, t] and not official["wall_bounce"][n, t]:
        sym = 12
    raw = np.trunc(32767 + official["amplitude"][n, t].astype(np.float64) * chords[sym] * 32767)
    expect = ((raw.astype(np.int64) + 32768) % 65536 - 32768) / 32768
    np.testing.assert_allclose(wave[n, t], expect, atol=1e-4)
    # wrap-around: the stored int16 values jump by ~65536 where the tone crosses zero
    ints = np.round(wave * 32768).astype(np.int64)
    assert (np.abs(np.diff(ints[n, t])) > 40000).any()
    # aliasing: 20480 Hz (digit 3's F2) folds to |20480 - 5 * 4400| = 1520 Hz
    _, f2 = m3so.symbol_frequencies_hz(3, official=True)
    assert f2 > m3so.SAMPLE_RATE / 2


def test_fixed_mode_has_no_wraparound(blk):
    w = blk["waveform"]
    assert np.abs(w).max() <= blk["amplitude"].max() + 1e-5
    frames = w.reshape(len(w), -1, S)
    assert np.abs(frames.mean(-1)).max() < 0.02  # zero-centred (official: offset by 32767)


def test_official_test_split_uses_train_labels(pools):
    off = m3so.load_digits(None, official=True)
    np.testing.assert_array_equal(
        off.labels["test"], off.labels["train"][: len(off.images["test"])]
    )
    assert not np.array_equal(off.labels["test"], pools.labels["test"])
    np.testing.assert_array_equal(off.images["test"], pools.images["test"])
    assert m3so.M3soConfig(block=True, official=True).block_start == 10
    assert m3so.M3soConfig(block=True).block_start == 40
    assert m3so.M3soConfig(block=True).frames == 70 and m3so.M3soConfig().frames == 30


# ----------------------------------------------------------------------------- determinism


def test_deterministic_and_independent_of_count(pools, blk):
    cfg = m3so.M3soConfig(block=True, num_frames=30, block_start_frame=10)
    again = m3so.generate(pools, "train", range(32), seed=5, config=cfg)
    one = m3so.generate(pools, "train", [17], seed=5, config=cfg)
    for k in blk:
        np.testing.assert_array_equal(again[k], blk[k], err_msg=k)
        np.testing.assert_array_equal(one[k][0], blk[k][17], err_msg=k)
    chunks = list(m3so.iter_chunks(pools, "train", 32, seed=5, config=cfg, chunk=10))
    np.testing.assert_array_equal(np.concatenate([c["frames"] for c in chunks]), blk["frames"])
    other = m3so.generate(pools, "train", range(32), seed=6, config=cfg)
    assert not np.array_equal(other["frames"], blk["frames"])
    val = m3so.generate(pools, "val", range(32), seed=5, config=cfg)
    assert not np.array_equal(val["positions"], blk["positions"])


# ----------------------------------------------------------------------------- digits


def _write_idx(path, arr):
    header = bytes([0, 0, 8, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_idx_parsing_roundtrip_and_errors(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (7, 28, 28)).astype(np.uint8)
    _write_idx(tmp_path / "x.gz", imgs)
    np.testing.assert_array_equal(m3so.read_idx(tmp_path / "x.gz"), imgs)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x09\x01\x00\x00\x00\x01\x05")
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        m3so.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05\x01")
    with pytest.raises(ValueError, match="header says"):
        m3so.read_idx(tmp_path / "short")
    with pytest.raises(FileNotFoundError, match="mnist_dir"):
        m3so.load_digits(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"t10k|train"):
        m3so.load_digits(tmp_path)


def test_mnist_idx_files(shared_data):
    mnist = shared_data / "mnist"
    if not mnist.is_dir():
        pytest.skip(f"no MNIST at {mnist}")
    p = m3so.load_digits(mnist)
    assert p.images["train"].shape == (50000, 28, 28) and p.images["test"].shape == (10000, 28, 28)
    assert p.images["val"].shape == (10000, 28, 28)
    assert set(np.unique(p.labels["test"])) == set(range(10))
    counts = np.bincount(m3so.read_idx(mnist / "train-labels-idx1-ubyte.gz"))
    assert counts.sum() == 60000 and counts.min() > 5000
    # a digit's ink sits in MNIST's centred 20x20 box
    assert p.images["train"][:100, :2].max() == 0
    off = m3so.load_digits(mnist, official=True)
    np.testing.assert_array_equal(off.labels["test"], off.labels["train"][:10000])
    clips = m3so.generate(p, "test", range(4))
    np.testing.assert_array_equal(clips["label"], p.labels["test"][clips["digit_index"]])


# ----------------------------------------------------------------------------- TFDS and inputs


@pytest.fixture(scope="module")
def tfds_dir(pools, tmp_path_factory):
    out = tmp_path_factory.mktemp("m3so_tfds")
    m3so_tfds.write_m3so(out, pools=pools, seed=2, num_train=6, num_val=0, num_test=3, chunk=4)
    return out


def test_tfds_roundtrip(pools, tfds_dir):
    ds = tfds.data_source("avjax_m3so", data_dir=os.fspath(tfds_dir))
    assert set(ds) == {"train", "test"} and len(ds["train"]) == 6 and len(ds["test"]) == 3
    ref = m3so.generate(pools, "test", range(3), seed=2)
    for i in range(3):
        ex = ds["test"][i]
        assert ex["id"] == f"test/{i:06d}".encode()
        for k in ("frames", "audio", "waveform", "block", "positions", "wall_bounce"):
            np.testing.assert_array_equal(ex[k], ref[k][i], err_msg=k)
        assert ex["label"] == ref["label"][i]
    src = m3so_tfds.open_clips(tfds_dir, "test")
    assert src.kind == "m3so" and src.num_frames == 30 and src.frame_shape == (48, 48, 1)
    assert src.metadata["generator"]["official"] is False
    with pytest.raises(ValueError, match="no split 'val'"):
        m3so_tfds.open_clips(tfds_dir, "valid")
    # same settings: reused; other settings: refused
    m3so_tfds.write_m3so(tfds_dir, pools=pools, seed=2, num_train=6, num_val=0, num_test=3)
    with pytest.raises(ValueError, match="made differently"):
        m3so_tfds.write_m3so(tfds_dir, pools=pools, seed=3, num_train=6, num_val=0, num_test=3)


def _config(**data):
    d = dict(
        dir="",
        kind="m3so",
        block=False,
        synthetic=True,
        flow=False,
        n_past=5,
        n_future=15,
        n_eval=25,
        image_size=48,
        channels=1,
        audio_shape=(23, 21),
        global_batch_size=8,
        read_threads=2,
        train_split="train",
        eval_split="test",
    )
    d.update(data)
    return ml_collections.ConfigDict({"task": "sound2sight", "seed": 0, "data": d})


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    old = os.environ.get("AVJAX_CACHE")
    os.environ["AVJAX_CACHE"] = os.fspath(tmp_path_factory.mktemp("cache"))
    try:
        yield inputs.make_inputs(_config())
    finally:
        if old is None:
            os.environ.pop("AVJAX_CACHE")
        else:
            os.environ["AVJAX_CACHE"] = old


def test_make_inputs_batches_and_resume(tiny_inputs):
    it = tiny_inputs.train_iter
    b = next(it)
    assert b["frames"].shape == (8, 20, 48, 48, 1) and b["frames"].dtype == np.uint8
    assert b["audio"].shape == (8, 20, 23, 21) and b["audio"].dtype == np.float32
    assert b["block"].shape == (8, 4) and b["block"].dtype == np.int32
    assert tiny_inputs.stats == {}
    state = it.get_state()
    nxt = [next(it) for _ in range(3)]
    it.set_state(state)
    for ref in nxt:
        got = next(it)
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k])
    evals = list(tiny_inputs.eval_iter_fn())
    assert len(evals) == 2  # 16 test clips, global batch 8
    assert evals[0]["frames"].shape == (8, 30, 48, 48, 1)
    assert evals[0]["mask"].dtype == np.float32 and evals[0]["mask"].sum() == 8
    # eval = the first n_past + n_eval frames of clips 0..7, in order
    src = m3so_tfds.open_clips(tiny_inputs.data_dir, "test")
    np.testing.assert_array_equal(evals[0]["frames"][3], src[3]["frames"][:30])
    # synthetic data is made once and reused
    assert video_inputs.synthetic_dir(30) == tiny_inputs.data_dir


def test_make_inputs_windows_are_clip_slices(tiny_inputs):
    """Train windows are contiguous 20-frame slices of some training clip."""
    src = m3so_tfds.open_clips(tiny_inputs.data_dir, "train")
    clips = np.stack([src[i]["frames"] for i in range(len(src))])
    b = next(tiny_inputs.train_iter)
    for w in b["frames"]:
        hit = [
            (i, s)
            for i in range(len(clips))
            for s in range(11)
            if np.array_equal(clips[i, s : s + 20], w)
        ]
        assert hit


def test_make_inputs_padding_and_errors(tiny_inputs, tmp_path):
    cfg = _config(dir=os.fspath(tiny_inputs.data_dir), synthetic=False, global_batch_size=24)
    ev = list(inputs.make_inputs(cfg).eval_iter_fn())
    assert len(ev) == 1 and ev[0]["mask"].tolist() == [1.0] * 16 + [0.0] * 8
    assert (ev[0]["frames"][16:] == 0).all()
    with pytest.raises(FileNotFoundError, match=re.escape("config.data.dir")):
        inputs.make_inputs(_config(dir=os.fspath(tmp_path / "nope")))
    with pytest.raises(FileNotFoundError, match="no prepared clip dataset"):
        inputs.make_inputs(_config(dir=os.fspath(tmp_path)))
    d = os.fspath(tiny_inputs.data_dir)
    with pytest.raises(ValueError, match=re.escape("config.data.image_size=64")):
        inputs.make_inputs(_config(dir=d, image_size=64))
    with pytest.raises(ValueError, match=re.escape("config.data.channels=3")):
        inputs.make_inputs(_config(dir=d, channels=3))
    with pytest.raises(ValueError, match=re.escape("config.data.audio_shape")):
        inputs.make_inputs(_config(dir=d, audio_shape=(45, 17)))
    with pytest.raises(ValueError, match=re.escape("config.data.n_past + config.data.n_eval = 45")):
        inputs.make_inputs(_config(dir=d, n_eval=40))
    with pytest.raises(
        ValueError, match=re.escape("config.data.n_past + config.data.n_future = 35")
    ):
        inputs.make_inputs(_config(dir=d, n_future=30, eval_split=""))
    with pytest.raises(ValueError, match=re.escape("config.data.dir is not set")):
        inputs.make_inputs(_config(synthetic=False))


def test_tiny_frames_kind(tiny_inputs):
    """`:tiny` for the 64x64 configs: M3SO-NB as 64x64 RGB at 30 fps with 45x17 patches."""
    cfg = _config(
        kind="frames",
        n_past=15,
        n_future=15,
        n_eval=30,
        image_size=64,
        channels=3,
        audio_shape=(45, 17),
    )
    inp = inputs.make_inputs(cfg)  # the module fixture points AVJAX_CACHE at a temp dir
    assert inp.data_dir.name == "frames_tiny_T45"
    b = next(inp.train_iter)
    assert b["frames"].shape == (8, 30, 64, 64, 3) and b["audio"].shape == (8, 30, 45, 17)
    ev = next(inp.eval_iter_fn())
    assert ev["frames"].shape == (8, 45, 64, 64, 3) and ev["mask"].sum() == 8
    # each 10 fps M3SO frame is shown three times
    f = ev["frames"][0]
    np.testing.assert_array_equal(f[0], f[2])
    assert b["audio"].max() > 0.3
