"""Code extraction (column-major 5x53 sequences) and the transformer's input pipeline."""

import json

import jax
import ml_collections
import numpy as np
import pytest

from avjax.checkpoints import save_imported
from avjax.models.specvqgan import permuter
from avjax.models.specvqgan.code_encoder import CodeEncoder
from avjax.models.specvqgan.codec import Codec
from avjax.models.specvqgan.vqgan import make_model
from configs import specvqgan_vggsound
from data_pipelines import base, pipeline, spec_folders, synthetic_audio
from data_pipelines import codes as codes_lib
from data_pipelines import inputs as inputs_lib

NUM = 4  # synthetic clips per split (a train batch of 8 repeats them)
MODEL_FNS = base.ModelFns(code_encoder=CodeEncoder)  # what launch/train.py passes


def tiny_codebook_config():
    """`:tiny` codebook with 4 downsamplings, so 80x848 mels give the paper's 5x53 grid."""
    c = specvqgan_vggsound.get_config("tiny")
    c.model.ch, c.model.num_groups = 8, 4
    c.model.ch_mult = (1, 1, 1, 1, 1)
    c.data.crop_frames = c.model.resolution = 848  # the paper's 80x848 window
    c.model.attn_resolutions = (53,)  # attention at the 5x53 level, as the paper's
    c.model.z_channels = c.model.embed_dim = 8
    c.model.n_embed = 32
    return c


@pytest.fixture(scope="module")
def codebook(tmp_path_factory):
    c = tiny_codebook_config()
    model = make_model(c.model)
    ae = jax.jit(model.init)(jax.random.PRNGKey(0), np.zeros((1, 80, 64, 1), np.float32))
    ae = ae["params"]
    # A spread-out codebook, so random encoder outputs use many codes.
    ae["quantize"]["embedding"] = jax.random.normal(jax.random.PRNGKey(1), (32, 8))
    return save_imported(tmp_path_factory.mktemp("codebook"), c.to_json(), {"params": {"ae": ae}})


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """An AVJAX_CACHE holding a small synthetic dataset (NUM train + NUM valid clips)."""
    root = tmp_path_factory.mktemp("cache")
    synthetic_audio.make_synthetic_dataset(root / "synthetic_specs", NUM, NUM, seed=0)
    return root


def transformer_config(codebook, features="resnet50", sample_size=5, **data):
    c = ml_collections.ConfigDict()
    c.task = "transformer"
    c.seed = 3
    c.codebook = ml_collections.ConfigDict({"workdir": str(codebook)})
    c.data = ml_collections.ConfigDict(
        dict(
            dir=None,
            layout="auto",
            labels_csv=None,
            features=features,
            feat_len=215,
            feat_crop=212,
            feat_sample_size=sample_size,
            codes_dir=None,
            train_split="train",
            eval_split="valid",
            global_batch_size=8,
            read_threads=2,
            synthetic=True,
        )
    )
    c.data.update(data)
    c.model = ml_collections.ConfigDict({"feat_dim": 2048, "num_classes": 5})
    return c


def test_extract_round_trip_column_major(codebook, cache, tmp_path):
    data = cache / "synthetic_specs"
    out = codes_lib.extract_codes(
        codebook, data, ["train", "valid"], tmp_path / "c", batch_size=3, make_encoder=CodeEncoder
    )
    meta = json.loads((out / codes_lib.META).read_text())
    assert meta["grid"] == [5, 53] and meta["codebook_step"] == 0 and meta["n_embed"] == 32
    assert meta["order"] == "column_major" and meta["splits"]["valid"]["num"] == NUM
    codec = Codec.from_workdir(codebook)
    for split in ("train", "valid"):
        seqs, ids, _ = codes_lib.load_codes(out, split)
        src = spec_folders.open_spec_source(data, split)
        assert seqs.shape == (NUM, 265) and seqs.dtype == np.int32 and ids == list(src.ids)
        for i in (0, NUM - 1):
            raster = codec.encode(pipeline.center_crop(src[i]["mel"], 848))  # [5, 53]
            assert raster.shape == (5, 53)
            # Sequence position s = w * 5 + h: the 5 rows of column 0 first, low row first.
            np.testing.assert_array_equal(seqs[i].reshape(53, 5).T, raster)
            np.testing.assert_array_equal(permuter.from_sequence(seqs[i], 5, 53), raster)
            assert seqs[i][7] == raster[2, 1]
    assert len(np.unique(seqs)) > 4  # not a degenerate constant encoding
    assert codes_lib.codes_status(out, codebook, "valid", ids) is None
    assert "no codes for split 'test'" in codes_lib.codes_status(out, codebook, "test")


def test_stale_codes_are_detected(codebook, tmp_path, cache):
    data = cache / "synthetic_specs"
    run = tmp_path / "cb"
    state = {"params": {"ae": jax.tree.map(np.asarray, Codec.from_workdir(codebook).params)}}
    save_imported(run, (codebook / "config.json").read_text(), state, step=0)
    out = codes_lib.extract_codes(run, data, ["valid"], tmp_path / "c", make_encoder=CodeEncoder)
    assert codes_lib.codes_status(out, run, "valid") is None
    save_imported(run, (codebook / "config.json").read_text(), state, step=10)
    assert "step 0, not of" in codes_lib.codes_status(out, run, "valid")
    cmd = codes_lib.extract_command(run, data, out, ["valid"])
    assert cmd.startswith("python launch/extract_codes.py --codebook_workdir=")


@pytest.fixture
def synthetic_env(cache, monkeypatch):
    monkeypatch.setenv("AVJAX_CACHE", str(cache))
    monkeypatch.setattr(base, "SYNTHETIC_NUM_TRAIN", NUM)
    monkeypatch.setattr(base, "SYNTHETIC_NUM_VALID", NUM)
    return cache / "synthetic_specs"


def test_make_inputs_synthetic_batches_and_resume(codebook, synthetic_env):
    config = transformer_config(codebook)
    inputs = inputs_lib.make_inputs(config, MODEL_FNS)  # extracts the codes on first use
    codes_dir = codes_lib.default_codes_dir(synthetic_env, codebook)
    assert (codes_dir / "train.npy").is_file() and inputs.class_names == tuple(
        sorted(synthetic_audio.CLASSES)
    )
    stored, ids, _ = codes_lib.load_codes(codes_dir, "train")
    it = inputs.train_iter
    state = it.get_state()
    b = next(it)
    assert b["codes"].shape == (8, 265) and b["codes"].dtype == np.int32
    assert b["feats"].shape == (8, 5, 2048) and b["feats"].dtype == np.float32
    assert b["label"].dtype == np.int32 and set(b["label"]) <= set(range(5))
    assert set(b) == {"codes", "feats", "label"}
    # Each example is a stored clip: its codes row, its label, its resampled features.
    src = spec_folders.open_spec_source(synthetic_env, "train")
    for codes, label in zip(b["codes"], b["label"]):
        (row,) = np.flatnonzero((stored == codes).all(1))
        assert src.labels[src.ids.index(ids[row])] == label
    it.set_state(state)
    np.testing.assert_array_equal(next(it)["codes"], b["codes"])  # checkpointable
    ev = list(inputs.eval_iter_fn())
    assert len(ev) == 1 and ev[0]["mask"].dtype == np.float32 and ev[0]["mask"].sum() == NUM
    # Codes are reused: a second make_inputs does not re-extract (same mtime).
    mtime = (codes_dir / "train.npy").stat().st_mtime_ns
    inputs_lib.make_inputs(config, MODEL_FNS)
    assert (codes_dir / "train.npy").stat().st_mtime_ns == mtime


def test_no_feats_pipeline(codebook, synthetic_env):
    config = transformer_config(codebook, features="none", sample_size=1)
    inputs = inputs_lib.make_inputs(config, MODEL_FNS)
    a, b = next(inputs.train_iter), next(inputs.train_iter)
    assert a["feats"].shape == (8, 1, 2048) and a["feats"].min() >= 0 and a["feats"].max() < 1
    assert not np.array_equal(a["feats"], b["feats"])
    e1, e2 = next(inputs.eval_iter_fn()), next(inputs.eval_iter_fn())
    np.testing.assert_array_equal(e1["feats"], e2["feats"])  # fixed per clip in eval
    again = inputs_lib.make_inputs(config, MODEL_FNS)
    np.testing.assert_array_equal(next(again.train_iter)["feats"], a["feats"])  # seeded


def test_inputs_errors(codebook, synthetic_env, monkeypatch, tmp_path):
    config = transformer_config(codebook, codes_dir=str(tmp_path / "none_yet"))
    # Without the library's encoder the pipeline cannot extract: it names the command.
    with pytest.raises(FileNotFoundError, match=r"launch/extract_codes\.py --codebook_workdir="):
        inputs_lib.make_inputs(config)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(FileNotFoundError, match=r"launch/extract_codes\.py --codebook_workdir="):
        inputs_lib.make_inputs(config, MODEL_FNS)
    monkeypatch.undo()
    config = transformer_config(codebook)
    config.codebook.workdir = None
    with pytest.raises(ValueError, match=r"config\.codebook\.workdir is not set"):
        inputs_lib.make_inputs(config, MODEL_FNS)
    config = transformer_config(codebook, features="bninception")
    config.data.dir = str(tmp_path / "copy")
    import shutil

    shutil.copytree(synthetic_env, tmp_path / "copy")
    config.data.codes_dir = str(tmp_path / "codes")
    with pytest.raises(FileNotFoundError, match=r"feature_rgb_bninception.*not found"):
        inputs_lib.make_inputs(config, MODEL_FNS)
