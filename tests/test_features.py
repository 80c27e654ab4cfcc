"""Visual-feature readers: official layouts, crop/resample, No Feats, malformed files, synthetic."""

import pathlib
import pickle

import numpy as np
import pytest

from data_pipelines import features as F
from data_pipelines import safe_pickle, spec_folders, synthetic_audio


def _clip(vas_samples, cls="dog", vid="video_02677"):
    return vas_samples / "features" / cls / "melspec_10s_22050hz" / f"{vid}_mel.npy"


def test_resample_indices_match_official():
    assert F.resample_indices(212, 5).tolist() == [35, 77, 119, 162, 204]
    assert F.resample_indices(212, 1).tolist() == [106]
    assert F.resample_indices(212, 212).tolist() == list(range(212))
    idx53 = F.resample_indices(212, 53)
    assert idx53[:2].tolist() == [3, 7] and idx53[-1] == 211
    with pytest.raises(ValueError):
        F.resample_indices(212, 0)


def test_pad_trim_and_crop_rows():
    x = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)
    assert np.array_equal(F.pad_or_trim(x, 4), x[:4])
    padded = F.pad_or_trim(x, 13)
    assert padded.shape == (13, 2) and np.array_equal(padded[:10], x) and not padded[10:].any()
    rows = np.arange(215, dtype=np.float32)[:, None]
    assert F.crop_rows(rows, 212)[:, 0].tolist() == list(range(1, 213))  # rows 1..212


@pytest.mark.parametrize("n", [212, 5, 1])
def test_real_resnet50_features(vas_samples, n):
    spec = F.FeatureSpec("resnet50", sample_size=n)
    (path,) = F.clip_feature_paths(_clip(vas_samples), "resnet50")
    assert path.parent.name == "feature_resnet50_dim2048_21.5fps"
    raw = safe_pickle.load_array_pickle(path)
    assert raw.shape == (215, 2048)
    x = F.load_clip_features([path], spec)
    assert x.shape == (n, 2048) and x.dtype == np.float32
    # Row k of the output is raw row 1 + resample_indices[k] (centre crop keeps rows 1..212).
    np.testing.assert_array_equal(x, raw[1 + F.resample_indices(212, n)])


def test_real_bninception_rgb_flow_concat(vas_samples):
    spec = F.FeatureSpec("bninception")
    rgb_p, flow_p = F.clip_feature_paths(_clip(vas_samples), "bninception")
    rgb, flow = safe_pickle.load_array_pickle(rgb_p), safe_pickle.load_array_pickle(flow_p)
    assert rgb.shape == flow.shape == (216, 1024)  # longer than feat_len 215: trimmed
    x = F.load_clip_features([rgb_p, flow_p], spec)
    assert x.shape == (212, 2048)
    np.testing.assert_array_equal(x[:, :1024], F.pad_or_trim(rgb, 215)[1:213])
    np.testing.assert_array_equal(x[:, 1024:], F.pad_or_trim(flow, 215)[1:213])
    # A user-given rgb pkl finds its flow twin; a ResNet-50 pkl is used alone.
    np.testing.assert_array_equal(F.features_from_file(rgb_p, spec), x)
    res = F.features_from_file(F.clip_feature_paths(_clip(vas_samples), "resnet50")[0], spec)
    assert res.shape == (212, 2048)


def test_all_vas_samples_read(vas_samples):
    src = spec_folders.open_spec_source(vas_samples, "valid")
    lengths = {
        safe_pickle.load_array_pickle(F.clip_feature_paths(p, "bninception")[0]).shape[0]
        for p in src.paths
    }
    assert lengths == {214, 216}  # shorter clips are zero-padded to 215, longer ones trimmed
    for kind in ("bninception", "resnet50"):
        spec = F.FeatureSpec(kind, sample_size=5)
        for p in src.paths:
            x = F.load_clip_features(F.clip_feature_paths(p, kind), spec)
            assert x.shape == (5, 2048) and np.isfinite(x).all() and x.min() >= 0


def test_no_feats_deterministic():
    spec = F.FeatureSpec("none", sample_size=1, dim=2048)
    a = F.random_features(spec, np.random.default_rng([0, 3]))
    b = F.random_features(spec, np.random.default_rng([0, 3]))
    c = F.random_features(spec, np.random.default_rng([0, 4]))
    assert a.shape == (1, 2048) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= 0.0 and a.max() < 1.0 and abs(a.mean() - 0.5) < 0.05


def test_spec_validation():
    with pytest.raises(ValueError, match=r"config\.data\.features"):
        F.FeatureSpec("i3d")
    with pytest.raises(ValueError, match="feat_sample_size"):
        F.FeatureSpec("resnet50", sample_size=300)
    with pytest.raises(ValueError, match="feat_dim"):
        F.FeatureSpec("resnet50", dim=1024)


def _dump(path: pathlib.Path, obj, raw: bytes | None = None) -> pathlib.Path:
    path.write_bytes(raw if raw is not None else pickle.dumps(obj))
    return path


class _Evil:
    def __reduce__(self):
        return (print, ("owned",))


@pytest.mark.parametrize(
    "obj,raw,err,match",
    [
        (None, b"\x80\x04garbage", ValueError, "not a readable pickled"),
        (_Evil(), None, safe_pickle.UnsafePickleError, "refused global"),
        ({"a": 1}, None, safe_pickle.UnsafePickleError, "expected a pickled numpy"),
        (np.zeros((215, 1000), np.float32), None, ValueError, r"shape \(215, 1000\)"),
        (np.zeros((215,), np.float32), None, ValueError, "shape"),
        (np.full((215, 2048), np.nan, np.float32), None, ValueError, "non-finite"),
    ],
)
def test_malformed_feature_files_name_the_file(tmp_path, obj, raw, err, match):
    path = _dump(tmp_path / "video_1.pkl", obj, raw)
    with pytest.raises(err, match=match) as e:
        F.load_clip_features([path], F.FeatureSpec("resnet50"))
    assert str(path) in str(e.value)


def test_missing_feature_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"video_9\.pkl"):
        F.load_clip_features([tmp_path / "video_9.pkl"], F.FeatureSpec("resnet50"))


def test_synthetic_features(tmp_path):
    root = synthetic_audio.make_synthetic_dataset(tmp_path / "syn", num_train=5, num_valid=5)
    mels_before = {p: p.read_bytes() for p in root.rglob("*_mel.npy")}
    synthetic_audio.add_synthetic_features(root, "resnet50")
    synthetic_audio.add_synthetic_features(root, "bninception")
    assert {p: p.read_bytes() for p in root.rglob("*_mel.npy")} == mels_before
    src = spec_folders.open_spec_source(root, "train")
    feats = {}
    for p, label in zip(src.paths, src.labels):
        (rp,) = F.clip_feature_paths(p, "resnet50")
        assert safe_pickle.load_array_pickle(rp).shape == (215, 2048)
        rgb, flow = F.clip_feature_paths(p, "bninception")
        assert safe_pickle.load_array_pickle(rgb).shape == (215, 1024)
        assert safe_pickle.load_array_pickle(flow).shape == (216, 1024)
        feats[int(label)] = F.load_clip_features([rp], F.FeatureSpec("resnet50", sample_size=5))
    # Class-correlated: clips of different classes have near-orthogonal mean features.
    means = np.stack([f.mean(0) / np.linalg.norm(f.mean(0)) for f in feats.values()])
    cos = means @ means.T
    assert len(feats) == 5 and cos[~np.eye(5, dtype=bool)].max() < 0.6
    # Deterministic: a second dataset written elsewhere has identical feature files.
    other = synthetic_audio.make_synthetic_dataset(tmp_path / "again", num_train=5, num_valid=5)
    synthetic_audio.add_synthetic_features(other, "resnet50")
    for p in root.rglob("feature_resnet50*/*.pkl"):
        assert (other / p.relative_to(root)).read_bytes() == p.read_bytes()


def test_spec_from_config():
    import ml_collections

    c = ml_collections.ConfigDict(
        {
            "data": {
                "features": "bninception",
                "feat_len": 215,
                "feat_crop": 212,
                "feat_sample_size": 5,
            },
            "model": {"feat_dim": 2048},
        }
    )
    assert F.FeatureSpec.from_config(c) == F.FeatureSpec("bninception", sample_size=5)
    c.model.feat_dim = 0  # a class-only transformer reads no features
    spec = F.FeatureSpec.from_config(c)
    assert spec.kind == "none" and F.random_features(spec, np.random.default_rng(0)).shape == (5, 0)


def test_synthetic_videos_and_the_features_beside_them(tmp_path):
    """`add_synthetic_videos`: 21.5 fps clips whose disc follows the sound; features found."""
    import av

    from avjax.video import io as video_io

    root = synthetic_audio.make_synthetic_dataset(tmp_path / "syn", num_train=5, num_valid=2)
    synthetic_audio.add_synthetic_features(root, "resnet50")
    videos = synthetic_audio.add_synthetic_videos(root)
    assert [v.relative_to(root).as_posix() for v in videos] == [
        "chirp/videos/video_00005.mp4",
        "click_train/videos/video_00006.mp4",
    ]
    mtimes = [v.stat().st_mtime_ns for v in videos]
    assert synthetic_audio.add_synthetic_videos(root) == videos  # made once
    assert [v.stat().st_mtime_ns for v in videos] == mtimes
    with av.open(str(videos[0])) as c:
        assert c.streams.audio[0].rate == 22050
        assert abs(float(c.duration / av.time_base) - 10.0) < 0.1
    frames = video_io.read_frames(videos[0], 21.5)
    assert frames.shape == (215, 96, 96, 3)
    # The disc's area grows with the loudness of its frame (mean log-mel every 4 columns).
    mel = np.load(root / "chirp" / "melspec_10s_22050hz" / "video_00005_mel.npy")
    loud = mel[:, ::4][:, :215].mean(0)
    area = (frames.max(-1) > 80).mean((1, 2))
    assert np.corrcoef(loud, area)[0, 1] > 0.9
    assert F.video_feature_paths(videos[0], "resnet50") == [
        root / "chirp" / F.RESNET50 / "video_00005.pkl"
    ]
    assert F.video_feature_paths(videos[0], "bninception") is None
    assert F.video_feature_paths(videos[0], "none") == []


def test_video_feature_paths_layouts(tmp_path):
    """Beside the video, one folder up, and the VAS download's videos/ + features/ trees."""

    def put(*parts):
        p = tmp_path.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
        return p

    a = put("a", "clip.mp4")
    assert F.video_feature_paths(a, "resnet50") is None
    put("a", F.RESNET50, "clip.pkl")
    assert F.video_feature_paths(a, "resnet50") == [tmp_path / "a" / F.RESNET50 / "clip.pkl"]
    vas = put("vas", "videos", "dog", "v1.mp4")
    rgb = put("vas", "features", "dog", F.RGB_BNINCEPTION, "v1.pkl")
    assert F.video_feature_paths(vas, "bninception") is None  # the flow twin is missing
    flow = put("vas", "features", "dog", F.FLOW_BNINCEPTION, "v1.pkl")
    assert F.video_feature_paths(vas, "bninception") == [rgb, flow]


def test_visual_streams_and_condition(tmp_path):
    spec = F.FeatureSpec("resnet50", sample_size=5)
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    x = np.arange(100 * 2048, dtype=np.float32).reshape(100, 2048) / 1e5
    with pytest.raises(F.UserError, match=r"v\.mp4: no feature file beside it.*ResNet-50"):
        F.visual_streams(spec, video=video)
    with pytest.raises(F.UserError, match="give the clip's feature file"):
        F.visual_streams(spec)
    bn = F.FeatureSpec("bninception", sample_size=5)
    with pytest.raises(F.UserError, match="need optical flow"):
        F.visual_streams(bn, video=video)
    # A short clip's ResNet-50 features are tiled from its start to 215 rows (official demo).
    (streams,) = F.visual_streams(spec, video=video, extractor=lambda v: x)
    assert streams.shape == (215, 2048) and np.array_equal(streams[100:200], x)
    assert F.visual_streams(F.FeatureSpec("none", sample_size=5), video=video) is None
    # The condition: one window -> the 5 resampled rows; longer -> per-frame features.
    cond = F.condition([streams], spec, columns=53, window_columns=53)
    assert np.array_equal(cond, streams[1:213][[35, 77, 119, 162, 204]])
    long = F.condition([streams], spec, columns=80, window_columns=53)
    assert long.shape == (4 * 80 + 1, 2048) and np.array_equal(long[:215], streams)
    # A codebook whose columns last 1 feature frame (`:tiny`): 80 columns, 215 frames kept.
    short = F.condition([streams], spec, 80, 53, frames_per_column=1.0)
    assert np.array_equal(short, streams)
    noise = F.condition(None, F.FeatureSpec("none", sample_size=5), 53, 53, seed=3)
    assert noise.shape == (5, 2048) and noise.min() >= 0 and noise.max() < 1
