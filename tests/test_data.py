"""Spectrogram readers, safe pickles, synthetic data, TFDS round trip and the Grain pipeline."""

from __future__ import annotations

import concurrent.futures
import csv
import logging
import os
import pickle
import sys

import grain
import numpy as np
import pytest

from avjax.audio.mel import log_mel_spectrogram
from data_pipelines import pipeline, safe_pickle, spec_folders, synthetic_audio, tfds_specs

MEL = "melspec_10s_22050hz"


# ----------------------------------------------------------------------------- helpers


def _mel(seed: int, frames: int = 860, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (80, frames)).astype(dtype)


def _make_vggsound(root, ids, *, csv_rows=None, flat=False, dtype=np.float64):
    """VGGSound layout: root/data/vggsound[/melspec...]/<id>_mel.npy, lists in root/data."""
    data = root / "data"
    vgg = data / "vggsound"
    mel_dir = vgg if flat else vgg / MEL
    mel_dir.mkdir(parents=True)
    for i, vid in enumerate(ids):
        np.save(mel_dir / f"{vid}_mel.npy", _mel(i, dtype=dtype))
    for split, sel in (("train", ids[:-2]), ("valid", ids[-2:-1]), ("test", ids[-1:])):
        (data / f"vggsound_{split}.txt").write_text("".join(f"{v}\n" for v in sel))
    if csv_rows is not None:
        with open(data / "vggsound.csv", "w", newline="") as f:
            csv.writer(f, quotechar='"').writerows(csv_rows)
    return vgg, mel_dir


def _make_vas(root, entries, *, mels=None):
    """VAS layout root/<class>/melspec.../<id>_mel.npy with vas_{train,valid}.txt in root."""
    for i, entry in enumerate(entries):
        cls, vid = entry.split("/")
        d = root / cls / MEL
        d.mkdir(parents=True, exist_ok=True)
        mel = _mel(i) if mels is None else mels[i]
        if isinstance(mel, bytes):
            (d / f"{vid}_mel.npy").write_bytes(mel)
        else:
            np.save(d / f"{vid}_mel.npy", mel)
    (root / "vas_train.txt").write_text("".join(f"{e}\n" for e in entries))
    (root / "vas_valid.txt").write_text(f"{entries[0]}\n")
    return root


class IndexSource:
    """In-memory source: item i has label i and mel[f, t] = t / 1000 (so crops are visible)."""

    def __init__(self, n: int, frames: int = 860):
        self.n, self.frames = n, frames
        self.mel = np.broadcast_to(np.arange(frames, dtype=np.float32) / 1000, (80, frames))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"mel": self.mel, "label": np.int32(i)}

    def __repr__(self):
        return f"IndexSource({self.n}, {self.frames})"


def _offsets(batch) -> list[int]:
    return [round((1000 * (x[0, 0] + 1)) / 2) for x in batch["image"]]


def _take(it, k):
    return [next(it) for _ in range(k)]


def _same(a, b) -> bool:
    return all(
        a_.keys() == b_.keys() and all(np.array_equal(a_[k], b_[k]) for k in a_)
        for a_, b_ in zip(a, b, strict=True)
    )


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return synthetic_audio.make_synthetic_dataset(
        tmp_path_factory.mktemp("syn") / "synthetic", num_train=6, num_valid=4, seed=0
    )


# ----------------------------------------------------------------------------- safe_pickle


def test_safe_pickle_real_features(vas_samples):
    files = sorted(vas_samples.glob("features/*/feature_*/*.pkl"))
    assert len(files) == 30
    for f in files:
        x = safe_pickle.load_array_pickle(f)
        assert x.dtype == np.float32 and x.ndim == 2 and x.shape[0] in (214, 215, 216), f
        assert x.shape[1] == (2048 if "resnet50" in f.parent.name else 1024), f


@pytest.mark.parametrize("protocol", range(6))
def test_safe_pickle_roundtrip_all_protocols(protocol):
    arrays = [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.asfortranarray(np.ones((3, 4))),
        np.array(3, np.int16),
        np.zeros((0, 5), bool),
    ]
    for a in arrays:
        b = safe_pickle.loads_array_pickle(pickle.dumps(a, protocol=protocol))
        assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b)


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_safe_pickle_refuses_code_and_non_arrays(tmp_path):
    target = str(tmp_path / "pwned")
    cases = {
        "reduce.pkl": (_Evil(target), "posix.mkdir"),
        "eval.pkl": (pickle.loads(pickle.dumps(eval)), "builtins.eval"),
        "dict.pkl": ({"a": np.ones(2)}, "dict"),
        "objarr.pkl": (np.array([1, "x"], dtype=object), "dtype object"),
    }
    for name, (obj, expected) in cases.items():
        path = tmp_path / name
        path.write_bytes(pickle.dumps(obj))
        with pytest.raises(safe_pickle.UnsafePickleError) as e:
            safe_pickle.load_array_pickle(path)
        assert str(path) in str(e.value) and expected in str(e.value), str(e.value)
    assert not os.path.exists(target), "the refused global must never be called"
    corrupt = tmp_path / "corrupt.pkl"
    corrupt.write_bytes(pickle.dumps(np.ones(100))[:50])
    with pytest.raises(ValueError, match=str(corrupt)):
        safe_pickle.load_array_pickle(corrupt)


# ----------------------------------------------------------------------------- VAS readers


def test_vas_samples_valid(vas_samples, caplog):
    with caplog.at_level(logging.WARNING, logger="data_pipelines.spec_folders"):
        src = spec_folders.open_spec_source(vas_samples, "valid")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "758 of 768" in warnings[0].getMessage()
    assert len(src) == 10 and src.layout == "vas" and src.split == "valid"
    # 7 folders on disk + 'sneeze' from the split lists: the full dataset's 8 classes.
    assert src.class_names == (
        "baby", "cough", "dog", "drum", "fireworks", "gun", "hammer", "sneeze"
    )  # fmt: skip
    for i in range(len(src)):
        ex = src[i]
        cls, vid = src.ids[i].split("/")
        assert ex["label"].dtype == np.int32 and src.class_names[ex["label"]] == cls
        ref = np.load(vas_samples / "features" / cls / MEL / f"{vid}_mel.npy")
        assert ex["mel"].dtype == np.float32 and ex["mel"].shape == (80, 860)
        np.testing.assert_array_equal(ex["mel"], ref)
    # Same source from the features/ folder; repr is path-independent and deterministic.
    src2 = spec_folders.open_spec_source(vas_samples / "features", "val")
    assert repr(src2) == repr(src) and src2.ids == src.ids
    with pytest.raises(FileNotFoundError, match=r"video_01933_mel\.npy"):
        spec_folders.open_spec_source(vas_samples, "valid", strict=True)
    with pytest.raises(ValueError, match=r"zero files.*vas_train\.txt"):
        spec_folders.open_spec_source(vas_samples, "train")
    with pytest.raises(FileNotFoundError, match=r"vas_test\.txt"):
        spec_folders.open_spec_source(vas_samples, "test")


def test_vas_thread_safe_reads(vas_samples):
    src = spec_folders.open_spec_source(vas_samples, "valid")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        out = list(pool.map(lambda i: src[i % len(src)]["mel"].sum(), range(60)))
    assert np.allclose(out[:10], out[10:20])


# ----------------------------------------------------------------------------- VGGSound readers


def test_vggsound_layout_and_labels(tmp_path):
    ids = ["--0PQM4-hqg_30000_40000", "a_b-cdefghi_1000_11000", "zzzzzzzzzzz_0_10000",
           "yyyyyyyyyyy_5000_15000", "xxxxxxxxxxx_2000_12000"]  # fmt: skip
    rows = [
        ["--0PQM4-hqg", "30", "dog barking", "train"],
        ["a_b-cdefghi", "1", "people marching, marching", "train"],  # quoted label with comma
        ["zzzzzzzzzzz", "0.000", "airplane", "train"],
        ["yyyyyyyyyyy", "7", "dog barking", "test"],  # wrong start: no match -> -1
        ["xxxxxxxxxxx", "2", "airplane", "test"],
    ]
    vgg, _ = _make_vggsound(tmp_path, ids, csv_rows=rows)
    assert spec_folders.detect_layout(vgg) == "vggsound"
    train = spec_folders.open_spec_source(vgg, "train")
    assert train.class_names == ("airplane", "dog barking", "people marching, marching")
    assert train.ids == tuple(ids[:3])
    assert [int(train[i]["label"]) for i in range(3)] == [1, 2, 0]
    ex = train[0]
    assert ex["mel"].dtype == np.float32 and ex["mel"].shape == (80, 860)  # float64 on disk
    np.testing.assert_allclose(ex["mel"], _mel(0, dtype=np.float64), atol=1e-7)
    assert int(spec_folders.open_spec_source(vgg, "valid")[0]["label"]) == -1
    assert int(spec_folders.open_spec_source(vgg, "test")[0]["label"]) == 0


def test_vggsound_flat_without_csv(tmp_path):
    ids = [f"vid{i:08d}_{i}000_{i + 10}000" for i in range(4)]
    vgg, mel_dir = _make_vggsound(tmp_path, ids, flat=True)
    assert mel_dir == vgg
    src = spec_folders.open_spec_source(vgg, "train", layout="vggsound")
    assert len(src) == 2 and src.class_names == () and int(src[1]["label"]) == -1


# ----------------------------------------------------------------------------- malformed inputs


_BAD = {
    "short": (_mel(0, frames=100), r"shape \(80, 100\), expected \[80, >=848\]"),
    "bands": (_mel(0)[:64], r"shape \(64, 860\)"),
    "nan": (np.where(np.eye(80, 860) > 0, np.nan, _mel(0)).astype(np.float32), "non-finite"),
    "range": (_mel(0) * 1.5, r"expected \[0, 1\]"),
    "corrupt": (b"\x93NUMPY garbage", "unreadable"),
    "int": (np.ones((80, 860), np.int32), "dtype int32"),
}


@pytest.mark.parametrize("kind", sorted(_BAD))
def test_malformed_file_names_the_file(tmp_path, kind):
    bad, pattern = _BAD[kind]
    root = _make_vas(tmp_path, ["a/v0", "b/v1"], mels=[_mel(0), bad])
    src = spec_folders.open_spec_source(root, "train")
    src[0]
    with pytest.raises(ValueError, match=pattern) as e:
        src[1]
    assert str(root / "b" / MEL / "v1_mel.npy") in str(e.value)


def test_missing_and_empty_splits(tmp_path, caplog):
    root = _make_vas(tmp_path, ["a/v0", "b/v1"])
    (root / "vas_train.txt").write_text("a/v0\nb/v1\nb/gone1\na/gone2\n")
    with caplog.at_level(logging.WARNING):
        src = spec_folders.open_spec_source(root, "train")
    assert len(src) == 2 and sum("2 of 4" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(FileNotFoundError, match=str(root / "b" / MEL / "gone1_mel.npy")):
        spec_folders.open_spec_source(root, "train", strict=True)
    (root / "vas_valid.txt").write_text("")
    with pytest.raises(ValueError, match=rf"{root}.*zero files.*vas_valid\.txt"):
        spec_folders.open_spec_source(root, "valid")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="unknown layout"):
        spec_folders.open_spec_source(tmp_path / "empty", "train")


# ----------------------------------------------------------------------------- synthetic data


def test_synthetic_layout_and_determinism(tmp_path, synthetic):
    files = sorted(p.relative_to(synthetic) for p in synthetic.rglob("*") if p.is_file())
    assert len(files) == 2 * 10 + 3  # mel + audio per clip, 2 split lists, marker
    train = spec_folders.open_spec_source(synthetic, "train", strict=True)
    valid = spec_folders.open_spec_source(synthetic, "valid", strict=True)
    assert (len(train), len(valid)) == (6, 4)
    assert train.class_names == tuple(sorted(synthetic_audio.CLASSES))
    cls, vid = train.ids[2].split("/")
    audio = np.load(synthetic / cls / MEL / f"{vid}_audio.npy")
    assert audio.shape == (220500,) and audio.dtype == np.float32
    assert 0.3 < np.abs(audio).max() <= 1.0
    np.testing.assert_array_equal(train[2]["mel"], log_mel_spectrogram(audio))
    mels = [train[i]["mel"] for i in range(5)]  # one per class: clearly different
    assert min(np.abs(a - b).mean() for i, a in enumerate(mels) for b in mels[i + 1 :]) > 0.02

    again = synthetic_audio.make_synthetic_dataset(
        tmp_path / "again", num_train=6, num_valid=4, seed=0
    )
    for rel in files:
        assert (again / rel).read_bytes() == (synthetic / rel).read_bytes(), rel
    other = synthetic_audio.synth_clip(cls, seed=1, index=2)
    assert not np.array_equal(other, audio)


def test_synthetic_idempotent_and_safe(tmp_path):
    out = tmp_path / "syn"
    synthetic_audio.make_synthetic_dataset(out, num_train=1, num_valid=1)
    marker = out / synthetic_audio.MARKER
    mtime = marker.stat().st_mtime_ns
    synthetic_audio.make_synthetic_dataset(out, num_train=1, num_valid=1)
    assert marker.stat().st_mtime_ns == mtime  # untouched
    synthetic_audio.make_synthetic_dataset(out, num_train=2, num_valid=1)  # replaced
    assert len(spec_folders.open_spec_source(out, "train")) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]  # no tmp leftovers
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="refusing"):
        synthetic_audio.make_synthetic_dataset(foreign, num_train=1, num_valid=1)
    empty = tmp_path / "empty"  # e.g. left by a killed run: redone
    empty.mkdir()
    synthetic_audio.make_synthetic_dataset(empty, num_train=1, num_valid=0)
    assert (empty / synthetic_audio.MARKER).is_file()


# ----------------------------------------------------------------------------- TFDS


def test_tfds_build_and_data_source(tmp_path, synthetic):
    builder = tfds_specs.build_tfds(synthetic, tmp_path / "tfds")
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 6, "valid": 4}
    assert "tensorflow" not in sys.modules
    for split in ("train", "valid"):
        ref = spec_folders.open_spec_source(synthetic, split)
        src = tfds_specs.open_tfds_source(tmp_path / "tfds", split)
        assert repr(src) == repr(tfds_specs.open_tfds_source(tmp_path / "tfds", split))
        assert len(src) == len(ref) and src.ids == ref.ids and src.class_names == ref.class_names
        for i in range(len(src)):
            ex = src[i]
            assert ex["label"].dtype == np.int32 and ex["label"] == ref[i]["label"]
            np.testing.assert_array_equal(ex["mel"], ref[i]["mel"])
    tfds_specs.build_tfds(synthetic, tmp_path / "tfds")  # reused
    with pytest.raises(ValueError, match="no split 'test'"):
        tfds_specs.open_tfds_source(tmp_path / "tfds", "test")
    # Feeds the pipeline like a SpecSource.
    src = tfds_specs.open_tfds_source(tmp_path / "tfds", "valid")
    batch = next(pipeline.make_spec_iterator(src, global_batch_size=2, seed=0, **_ONE))
    assert batch["image"].shape == (2, 80, 848)


def test_tfds_vggsound_splits(tmp_path):
    ids = [f"vid{i:08d}_{i}000_{i + 10}000" for i in range(4)]
    vgg, _ = _make_vggsound(tmp_path / "src", ids)
    builder = tfds_specs.build_tfds(vgg, tmp_path / "tfds")
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
        "train": 2, "valid": 1, "test": 1
    }  # fmt: skip
    src = tfds_specs.open_tfds_source(tmp_path / "tfds", "test")
    assert src.ids == (ids[3],) and int(src[0]["label"]) == -1


# ----------------------------------------------------------------------------- pipeline

_ONE = {"process_index": 0, "process_count": 1, "read_threads": 2}


def test_pipeline_batches_real_values(synthetic):
    src = spec_folders.open_spec_source(synthetic, "train")
    it = pipeline.make_spec_iterator(src, global_batch_size=4, seed=3, **_ONE)
    batch = next(it)
    assert batch["image"].shape == (4, 80, 848) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
    # Find each example back in the source: image == 2 * mel[:, 6:854] - 1.
    mels = [src[i]["mel"] for i in range(len(src))]
    for img, lab in zip(batch["image"], batch["label"]):
        i = next(i for i, m in enumerate(mels) if np.allclose(img, 2 * m[:, 6:854] - 1))
        assert lab == src.labels[i]


def test_pipeline_crops():
    mel = IndexSource(1).mel
    np.testing.assert_array_equal(pipeline.center_crop(mel), mel[:, 6:854])
    centre = pipeline.make_spec_iterator(IndexSource(8), global_batch_size=4, seed=0, **_ONE)
    assert _offsets(next(centre)) == [6] * 4
    evals = pipeline.make_spec_dataset(
        IndexSource(8, frames=900), global_batch_size=4, seed=0, train=False, **_ONE
    )
    assert _offsets(next(iter(evals))) == [26] * 4
    rand = [
        pipeline.make_spec_iterator(
            IndexSource(8), global_batch_size=4, seed=0, random_crop=True, **_ONE
        )
        for _ in range(2)
    ]
    offs = [o for _ in range(4) for o in _offsets(next(rand[0]))]
    assert all(0 <= o <= 12 for o in offs) and len(set(offs)) > 3
    assert offs == [o for _ in range(4) for o in _offsets(next(rand[1]))]  # seeded
    with pytest.raises(ValueError, match="crop_frames=848"):
        next(pipeline.make_spec_iterator(IndexSource(4, 840), global_batch_size=2, seed=0, **_ONE))


def test_pipeline_process_slicing_partitions_global_shuffle():
    n, steps = 10, 5  # 20 positions: two epochs, reshuffled
    kw = {"global_batch_size": 4, "seed": 7, "read_threads": 2}
    single = pipeline.make_spec_iterator(IndexSource(n), process_index=0, process_count=1, **kw)
    glob = [lab for b in _take(single, steps) for lab in b["label"]]
    procs = [
        _take(pipeline.make_spec_iterator(IndexSource(n), process_index=p, process_count=2, **kw),
              steps)
        for p in range(2)
    ]  # fmt: skip
    assert all(b["label"].shape == (2,) for bs in procs for b in bs)
    merged = [lab for b0, b1 in zip(*procs) for lab in [*b0["label"], *b1["label"]]]
    assert merged == glob  # process p takes rows [2p, 2p + 2) of each global batch
    assert sorted(glob[:n]) == list(range(n)) and sorted(glob[n:]) == list(range(n))
    assert glob[:n] != glob[n:]  # a new permutation each epoch
    assert glob[:n] != list(range(n))
    other = pipeline.make_spec_iterator(IndexSource(n), process_index=0, process_count=1,
                                        global_batch_size=4, seed=8, read_threads=2)  # fmt: skip
    assert [lab for b in _take(other, steps) for lab in b["label"]] != glob
    with pytest.raises(ValueError, match="global_batch_size=5"):
        pipeline.make_spec_dataset(
            IndexSource(n), global_batch_size=5, seed=0, process_index=0, process_count=2
        )


def test_pipeline_finite_epochs_and_eval_padding():
    kw = {"global_batch_size": 4, "seed": 0, "read_threads": 2}
    finite = [
        list(pipeline.make_spec_dataset(IndexSource(10), num_epochs=1, process_index=p,
                                        process_count=2, **kw))
        for p in range(2)
    ]  # fmt: skip
    assert [len(f) for f in finite] == [2, 2]  # 10 -> 8 examples = 2 global batches
    labels = np.concatenate([b["label"] for f in finite for b in f])
    assert len(set(labels.tolist())) == 8

    evals = [
        list(pipeline.make_spec_dataset(IndexSource(10), train=False, process_index=p,
                                        process_count=2, **kw))
        for p in range(2)
    ]  # fmt: skip
    assert [len(e) for e in evals] == [3, 3]  # padded to 12
    mask = np.concatenate([b["mask"] for e in evals for b in e])
    labels = np.concatenate([b["label"] for e in evals for b in e])
    assert mask.dtype == bool and mask.sum() == 10
    assert sorted(labels[mask].tolist()) == list(range(10)) and (labels[~mask] == -1).all()
    fillers = np.concatenate([b["image"] for e in evals for b in e])[~mask]
    assert (fillers == -1).all()
    assert evals[0][0]["label"].tolist() == [0, 1]  # ordered: process 0 has rows 0-1
    assert evals[1][0]["label"].tolist() == [2, 3]  # process 1 rows 2-3 of the same batch
    assert evals[1][2]["mask"].tolist() == [False, False]  # positions 10, 11 pad


def test_pipeline_resume_state_and_orbax(tmp_path):
    import orbax.checkpoint as ocp

    kw = {"global_batch_size": 4, "seed": 5, "random_crop": True, **_ONE}
    it = pipeline.make_spec_iterator(IndexSource(10), **kw)
    _take(it, 3)
    state = it.get_state()
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    expected = _take(it, 4)

    it2 = pipeline.make_spec_iterator(IndexSource(10), **kw)
    it2.set_state(state)
    assert _same(_take(it2, 4), expected)

    it3 = pipeline.make_spec_iterator(IndexSource(10), **kw)
    next(it3)  # a different position, overwritten by the restore
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it3)))
    assert _same(_take(it3, 4), expected)


def test_global_batch_from_local():
    from avjax.train import sharding as shd

    mesh = shd.make_mesh([("data", -1), ("fsdp", 1)])
    batch = next(pipeline.make_spec_iterator(IndexSource(16), global_batch_size=8, seed=0, **_ONE))
    out = shd.global_batch(batch, mesh)
    assert out["image"].shape == (8, 80, 848) and out["image"].sharding == shd.batch_sharding(mesh)
    assert len(out["label"].addressable_shards) == 8
    np.testing.assert_array_equal(np.asarray(out["label"]), batch["label"])
