"""Real clips -> 64x64 frames at 30 fps + 45x17 audio patches, windows, TFDS, CLI, inputs."""

from __future__ import annotations

import os
import subprocess
import sys

import av
import librosa
import ml_collections
import numpy as np
import pytest

from data_pipelines import inputs, m3so, m3so_tfds, video_frames

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# short clips of different source frame rates: 29.97 fps 6 s, 25 fps 8 s, 15.25 fps 10 s
CLIPS = ("dog/video_02677.mp4", "gun/video_00819.mp4", "cough/video_00331.mp4")


def _duration(path) -> float:
    with av.open(os.fspath(path)) as c:
        v = c.streams.video[0]
        return float(v.duration * v.time_base) if v.duration else c.duration / 1e6


@pytest.fixture(scope="module")
def clips(vas_samples):
    root = vas_samples / "videos"
    return {c: (root / c, video_frames.clip_features(root / c)) for c in CLIPS}


def test_clip_features_shapes_and_rate(clips):
    for name, (path, f) in clips.items():
        T = len(f["frames"])
        assert f["frames"].shape == (T, 64, 64, 3) and f["frames"].dtype == np.uint8, name
        assert abs(T - _duration(path) * 30) <= 1, (name, T, _duration(path))
        assert f["audio"].shape == (T, 45, 17) and f["audio"].dtype == np.float32
        assert np.isfinite(f["audio"]).all() and f["audio"].min() >= 0
        assert f["audio"].max() > 0.1, name  # real sound, not silence
        assert f["waveform"].shape == (T * 800,)
        assert f["frames"].std() > 10  # real pictures


def test_audio_patches_match_librosa(clips):
    """Each patch is librosa's centred STFT (n_fft 88, hop 50, hann, zero pad) of its frame."""
    _, f = clips[CLIPS[0]]
    for t in (0, 37, len(f["frames"]) - 1):
        seg = f["waveform"][t * 800 : (t + 1) * 800]
        mag = np.abs(librosa.stft(seg, n_fft=88, hop_length=50, center=True, pad_mode="constant"))
        assert mag.shape == (45, 17)
        np.testing.assert_allclose(f["audio"][t], np.log1p(mag) / np.log1p(22), atol=1e-5)


def test_m3so_patches_match_librosa():
    wave = np.random.default_rng(0).uniform(-1, 1, 3 * 440).astype(np.float32)
    feats = m3so.audio_features(wave)
    for t in range(3):
        mag = np.abs(
            librosa.stft(
                wave[t * 440 : (t + 1) * 440], n_fft=44, hop_length=22, pad_mode="constant"
            )
        )
        np.testing.assert_allclose(feats[t], np.log1p(mag) / np.log1p(11), atol=1e-5)


def test_frames_follow_read_frames(clips):
    from avjax.video.io import read_frames

    path, f = clips[CLIPS[1]]
    np.testing.assert_array_equal(f["frames"], read_frames(path, 30, 64))


def test_windows_and_splits():
    assert list(video_frames.window_starts(180, 45)) == [0, 45, 90, 135]
    assert list(video_frames.window_starts(179, 45)) == [0, 45, 90]
    assert list(video_frames.window_starts(44, 45)) == []
    paths = [f"c{i % 3}/v{i}.mp4" for i in range(20)]
    s = video_frames.split_videos(paths, 0.1, 0.2)
    assert [len(s[k]) for k in ("train", "val", "test")] == [14, 2, 4]
    assert sorted(p for v in s.values() for p in v) == sorted(paths)
    assert s == video_frames.split_videos(list(reversed(paths)), 0.1, 0.2)  # order-free
    three = video_frames.split_videos(paths[:3], 0.1, 0.1)
    assert [len(three[k]) for k in ("train", "val", "test")] == [1, 1, 1]
    with pytest.raises(ValueError, match="sum to less than 1"):
        video_frames.split_videos(paths, 0.5, 0.5)


def test_unreadable_clip_is_named(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(ValueError, match=r"broken\.mp4"):
        video_frames.clip_features(bad)


@pytest.fixture(scope="module")
def cli_out(vas_samples, tmp_path_factory):
    """`launch/preprocess.py --target sound2sight` on the three clips."""
    tmp = tmp_path_factory.mktemp("s2s_pre")
    videos = tmp / "videos"
    for c in CLIPS:
        (videos / c).parent.mkdir(parents=True, exist_ok=True)
        (videos / c).symlink_to(vas_samples / "videos" / c)
    out = tmp / "out"
    cmd = [
        sys.executable,
        os.path.join(REPO, "launch", "preprocess.py"),
        "--target=sound2sight",
        f"--videos={videos}",
        f"--out={out}",
        "--num_frames=45",
        "--valid_fraction=0.2",
        "--test_fraction=0.2",
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res.stdout


def test_cli_writes_windows(clips, cli_out):
    out, stdout = cli_out
    assert "windows from 3 clips" in stdout
    splits = {}
    for split in ("train", "val", "test"):
        src = m3so_tfds.open_clips(out, split)
        assert src.kind == "frames" and src.frame_shape == (64, 64, 3)
        assert src.audio_shape == (45, 17) and src.num_frames == 45
        splits[split] = src
    assert src.metadata["class_names"] == ["cough", "dog", "gun"]
    total = sum(len(s) for s in splits.values())
    assert total == sum(len(f["frames"]) // 45 for _, f in clips.values())
    # one window, checked against the clip's own features
    src = splits["train"]
    ex = src.example(1)
    name, start = ex["id"].decode().split("@")
    f = clips[name + ".mp4"][1]
    s = int(start)
    assert s == 45  # the second window of the train clip
    np.testing.assert_array_equal(ex["frames"], f["frames"][s : s + 45])
    np.testing.assert_array_equal(ex["audio"], f["audio"][s : s + 45])
    np.testing.assert_array_equal(ex["waveform"], f["waveform"][s * 800 : (s + 45) * 800])
    assert ex["label"] == ["cough", "dog", "gun"].index(name.split("/")[0])
    assert (ex["block"] == 0).all()


def test_make_inputs_on_real_frames(cli_out):
    out, _ = cli_out
    d = dict(
        dir=os.fspath(out),
        kind="frames",
        synthetic=False,
        flow=False,
        n_past=15,
        n_future=15,
        n_eval=30,
        image_size=64,
        channels=3,
        audio_shape=(45, 17),
        global_batch_size=8,
        read_threads=2,
        train_split="train",
        eval_split="test",
    )
    cfg = ml_collections.ConfigDict({"task": "sound2sight", "seed": 1, "data": d})
    inp = inputs.make_inputs(cfg)
    b = next(inp.train_iter)
    assert b["frames"].shape == (8, 30, 64, 64, 3) and b["frames"].dtype == np.uint8
    assert b["audio"].shape == (8, 30, 45, 17) and b["audio"].dtype == np.float32
    ev = next(inp.eval_iter_fn())
    assert ev["frames"].shape == (8, 45, 64, 64, 3) and ev["mask"].shape == (8,)
    assert 0 < ev["mask"].sum() <= 8
    cfg.data.kind = "m3so"
    with pytest.raises(ValueError, match="holds 'frames'"):
        inputs.make_inputs(cfg)


def test_build_skips_broken_and_short_clips(vas_samples, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "dog.mp4").symlink_to(vas_samples / "videos" / CLIPS[0])  # 6 s: 180 frames
    (videos / "broken.mp4").write_bytes(b"not a video")
    _, summary = video_frames.build_frames_dataset(
        videos, tmp_path / "out", num_frames=90, valid_fraction=0, test_fraction=0
    )
    assert summary["windows"] == {"train": 2}
    assert [p for p, _ in summary["skipped"]] == ["broken.mp4"]
    src = m3so_tfds.open_clips(tmp_path / "out", "train")
    assert len(src) == 2 and src.metadata["class_names"] == []
    assert src.example(0)["label"] == -1
    with pytest.raises(ValueError, match="no video files"):
        video_frames.build_frames_dataset(tmp_path / "out", tmp_path / "out2")
