"""End to end on real VAS clips: codebook -> codes -> transformer -> sample.py -> evaluate.py.

On the ten real VAS clips of ../shared/data (their `valid` split): a `:tiny` codebook with four
downsamplings at the paper's 80x848 window (5x53 codes), code extraction with the CLI, a
`:tiny` transformer on ResNet-50 features (5 rows) trained for a few steps, then
`launch/sample.py` from a real mp4 + its real ResNet-50 pkl to wav/png/mp4 (in a one-device
process: checkpoints written on 8 devices must restore there), and `launch/evaluate.py` with a
`:tiny` Melception. The codebook and the Melception are initialised, not trained: compiling
their training steps takes minutes on a small CPU, and `tests/test_train_vqgan.py` /
`tests/test_melception.py` cover that; here the plumbing is under test, not the numbers.
Workdirs are shared by a module fixture.
"""

import json
import os
import pathlib
import subprocess
import sys

import av
import jax
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from avjax import images
from avjax.checkpoints import save_imported
from avjax.errors import UserError
from avjax.models.specvqgan.vqgan import make_model
from avjax.train import loop
from avjax.train.tasks import make_task
from configs import melception_vggsound, specvqgan_transformer_vggsound, specvqgan_vggsound
from data_pipelines import codes as codes_lib
from data_pipelines.inputs import make_inputs

REPO = pathlib.Path(__file__).resolve().parents[1]
CLIP = ("dog", "video_02754")  # 10.03 s (video_02677 is a 6 s clip)
SR, FRAMES = 22050, 848


def _quick(c, steps=2):
    c.train.num_steps = steps
    c.train.checkpoint_every = steps
    c.train.log_every = 1
    c.train.eval_every = 0
    c.train.sample_every = 0
    return c


def _train(config, workdir):
    inputs = make_inputs(config)
    task = make_task(config, inputs.stats)
    loop.train(config, workdir, task, inputs.train_iter, None)
    return workdir


def _env():
    env = dict(os.environ)
    # One CPU device, as a user would run it; LLVM -O0 as every test (fast compiles).
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _cli(*args, check=True):
    proc = subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def _init_codebook(vas_samples, workdir):
    """`:tiny` codebook, 5 levels at 80x848 (a 5x53 grid), initialised with spread-out codes."""
    cb = specvqgan_vggsound.get_config("tiny")
    cb.data.dir = str(vas_samples)
    cb.data.crop_frames = cb.model.resolution = FRAMES
    cb.model.ch, cb.model.num_groups, cb.model.ch_mult = 8, 4, (1, 1, 1, 1, 1)
    cb.model.attn_resolutions = (53,)
    ae = jax.jit(make_model(cb.model).init)(jax.random.PRNGKey(0), np.zeros((1, 80, 64, 1)))
    ae = dict(ae["params"])
    ae["quantize"] = {"embedding": jax.random.normal(jax.random.PRNGKey(1), (64, 16))}
    return save_imported(workdir, cb.to_json(), {"params": {"ae": ae}}), cb


@pytest.fixture(scope="module")
def runs(vas_samples, tmp_path_factory):
    """Initialised tiny codebook, its codes (CLI), a tiny transformer trained 3 steps."""
    root = tmp_path_factory.mktemp("e2e")
    codebook, cb = _init_codebook(vas_samples, root / "codebook")
    assert cb.model.n_embed == 64 and cb.model.embed_dim == 16

    codes_dir = root / "codes"
    _cli(
        "launch/extract_codes.py",
        f"--codebook_workdir={codebook}",
        f"--data_dir={vas_samples}",
        f"--out={codes_dir}",
        "--splits=valid",
        "--batch_size=5",
    )
    meta = json.loads((codes_dir / codes_lib.META).read_text())
    assert meta["grid"] == [5, 53] and meta["splits"]["valid"]["num"] == 10

    tr = _quick(specvqgan_transformer_vggsound.get_config("tiny"), steps=3)
    tr.codebook.workdir = str(codebook)
    tr.data.dir, tr.data.codes_dir = str(vas_samples), str(codes_dir)
    tr.data.train_split, tr.data.eval_split = "valid", ""
    tr.data.features, tr.data.feat_sample_size = "resnet50", 5
    tr.model.vocab_size = cb.model.n_embed
    tr.model.block_size = 5 * 53 + 5
    mtime = (codes_dir / "valid.npy").stat().st_mtime_ns
    transformer = _train(tr, root / "transformer")
    assert (codes_dir / "valid.npy").stat().st_mtime_ns == mtime  # the CLI's codes reused
    return {"root": root, "codebook": codebook, "transformer": transformer}


def test_sample_cli_video_to_sound(runs, vas_samples):
    cls, vid = CLIP
    video = vas_samples / "videos" / cls / f"{vid}.mp4"
    feats = vas_samples / "features" / cls / "feature_resnet50_dim2048_21.5fps" / f"{vid}.pkl"
    out = runs["root"] / "samples"
    proc = _cli(
        "launch/sample.py",
        f"--workdir={runs['transformer']}",
        f"--out={out}",
        f"--video={video}",
        f"--features={feats}",
        "--num_samples=2",
        "--top_k=8",
        "--weights_dtype=int8",  # int8 Dense kernels, converted from the float32 checkpoint
    )
    assert "2 sample(s) of 9.85 s" in proc.stdout
    assert "%|" in proc.stderr  # the tqdm progress bar
    for i in range(2):
        wave, sr = sf.read(out / f"{vid}_sample_{i}.wav")
        assert sr == SR and wave.shape == (FRAMES * 256,)
        assert abs(np.abs(wave).max() - 0.95) < 1e-3  # peak-normalised, nothing clipped
        png = Image.open(out / f"{vid}_sample_{i}.png")
        assert png.size == images.mel_figure_size(FRAMES, 80, 1)[::-1]  # labelled figure
        with av.open(str(out / f"{vid}_sample_{i}.mp4")) as c:
            assert c.streams.video and c.streams.audio
            assert c.streams.audio[0].rate == SR
            # As long as the shorter of video (10.03 s) and audio (848 frames, 9.85 s).
            assert abs(float(c.duration / av.time_base) - FRAMES * 256 / SR) < 0.1
    a, _ = sf.read(out / f"{vid}_sample_0.wav")
    b, _ = sf.read(out / f"{vid}_sample_1.wav")
    assert not np.allclose(a, b)  # two different samples


def test_sample_cli_clear_errors(runs, vas_samples, tmp_path):
    cls, vid = CLIP
    video = vas_samples / "videos" / cls / f"{vid}.mp4"
    args = ("launch/sample.py", f"--workdir={runs['transformer']}", f"--out={tmp_path}")
    alone = tmp_path / "alone" / video.name  # no feature files beside it
    alone.parent.mkdir()
    alone.write_bytes(video.read_bytes())
    proc = _cli(*args, f"--video={alone}", check=False)  # no features, no ResNet-50 weights
    assert proc.returncode != 0 and "needs real ResNet-50 weights" in proc.stderr
    bad = tmp_path / "broken.pkl"
    bad.write_bytes(b"not a pickle")
    proc = _cli(*args, f"--features={bad}", check=False)
    assert proc.returncode != 0 and "broken.pkl: not a readable pickled" in proc.stderr
    # The run is ResNet-50-conditioned: the clip's BN-Inception rgb pkl (whose flow twin would
    # fit the 2048 width) is refused, before any model is loaded.
    rgb = vas_samples / "features" / cls / "feature_rgb_bninception_dim1024_21.5fps" / f"{vid}.pkl"
    proc = _cli(*args, f"--features={rgb}", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "bninception features (1024-d), but this run was trained on resnet50" in proc.stderr
    assert not list(tmp_path.glob("*.wav"))


@pytest.fixture(scope="module")
def melception(runs):
    """An initialised `:tiny` Melception (80x64 crops, 8 VAS classes)."""
    from avjax.train.tasks.classifier import ClassifierTask

    mc = melception_vggsound.get_config("tiny")
    mc.model.num_classes = 8  # VAS
    stats = {"mean": np.full(80, 0.4, np.float32), "std": np.full(80, 0.2, np.float32)}
    state = jax.jit(ClassifierTask.from_config(mc, stats).init)(jax.random.PRNGKey(0))
    return save_imported(runs["root"] / "melception", mc.to_json(), state)


@pytest.mark.slow
def test_evaluate_cli(runs, vas_samples, melception):
    from avjax.evals.audio_generation import load_scorer

    with pytest.raises(UserError, match="--melception is required"):
        load_scorer(None)
    _cli(
        "launch/evaluate.py",
        f"--workdir={runs['transformer']}",
        "--split=valid",
        f"--melception={melception}",
        "--num_samples=2",
        "--batch_size=1",  # the shapes sample.py compiled: the persistent cache serves them
        "--max_clips=6",
    )
    result = json.loads((runs["transformer"] / "eval" / "valid.json").read_text())
    assert result["clips"] == 6 and result["num_samples"] == 2
    assert np.isfinite(result["fid"]) and result["fid"] >= 0
    assert np.isfinite(result["mkl"]) and result["mkl"] > -1e-4  # the official +1e-6 in log
    assert result["isc_mean"] is not None and result["isc_mean"] >= 1.0
    classes = {r["class"]: r for r in result["per_class"]}
    assert set(classes) == {"baby", "cough", "dog", "drum"}  # the first 6 clips
    assert classes["dog"]["clips"] == 2 and classes["dog"]["samples"] == 4
    assert classes["dog"]["fid"] is not None and classes["baby"]["fid"] is None
    md = (runs["transformer"] / "eval" / "valid.md").read_text()
    assert "| FID (2048) |" in md and "| dog | 2 | 4 |" in md


@pytest.mark.slow
def test_transformer_loop_runs_the_audio_eval(runs, vas_samples, melception, tmp_path):
    """`config.evals.audio` in a transformer run: FID/MKL of samples against the codebook's
    reconstructions of the eval clips, logged at the configured steps."""
    tr = _quick(specvqgan_transformer_vggsound.get_config("tiny"), steps=2)
    tr.codebook.workdir = str(runs["codebook"])
    tr.data.dir, tr.data.codes_dir = str(vas_samples), str(runs["root"] / "codes")
    tr.data.train_split, tr.data.eval_split = "valid", "valid"
    tr.data.features, tr.data.feat_sample_size = "resnet50", 5
    tr.model.vocab_size, tr.model.block_size = 64, 5 * 53 + 5
    tr.evals = {
        "audio": {"every": 2, "melception": str(melception), "num_samples": 2, "max_clips": 4}
    }
    inputs = make_inputs(tr)
    task = make_task(tr, inputs.stats)
    last = loop.train(tr, tmp_path, task, inputs.train_iter, inputs.eval_iter_fn)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    got = [r for r in rows if "evals/audio/fid" in r]
    assert [r["step"] for r in got] == [2]
    assert np.isfinite(got[0]["evals/audio/fid"]) and got[0]["evals/audio/fid"] >= 0
    assert got[0]["evals/audio/mkl"] > -1e-4 and "evals/audio/isc" not in got[0]  # 8 fakes
    assert last["evals/audio/mkl"] == got[0]["evals/audio/mkl"]


class _StubScorer:
    """Numpy 'Melception': pool features = per-bin means, logits = 8 band energies x 20."""

    crop_frames = FRAMES

    def features(self, mel01, names):
        mel01 = np.asarray(mel01)
        bands = mel01.reshape(len(mel01), 8, 10, -1).mean(axis=(2, 3)) * 20.0
        feats = {"2048": mel01.mean(axis=2), "logits": bands, "logits_unbiased": bands}
        return {k: feats[k] for k in names}


class _StubGenerator:
    """'Samples' the real mel of the clip whose features it is given, or of the next clip."""

    def __init__(self, mels, feats, shift):
        self.mels, self.feats, self.shift = mels, feats, shift

    def sample_codes(self, feats, rng, num_samples=1, labels=None, **kw):
        del rng, labels, kw
        clip = [int(np.argmin(((self.feats - f) ** 2).sum(axis=(1, 2)))) for f in feats]
        return np.repeat(np.asarray(clip), num_samples)[:, None]

    def decode(self, codes):
        return self.mels[(codes[:, 0] + self.shift) % len(self.mels)]


@pytest.mark.parametrize("shift", [0, 1])
def test_evaluator_pairs_fakes_with_their_clips(vas_samples, tmp_path, shift):
    """FID/MKL/per-class bookkeeping with a stub generator and scorer (no models)."""
    import ml_collections

    from avjax.evals import tables
    from avjax.evals.audio_generation import AudioClips, AudioGenerationEvaluator
    from data_pipelines import features as F
    from data_pipelines import pipeline, spec_folders

    config = specvqgan_transformer_vggsound.get_config("tiny")
    config.data.dir = str(vas_samples)
    config.data.feat_sample_size = 5
    config = ml_collections.ConfigDict(json.loads(config.to_json()))
    src = spec_folders.open_spec_source(vas_samples, "valid")
    spec = F.FeatureSpec("resnet50", sample_size=5)
    mels = np.stack([pipeline.center_crop(src[i]["mel"], FRAMES) for i in range(len(src))])
    feats = np.stack(
        [F.load_clip_features(F.clip_feature_paths(p, "resnet50"), spec) for p in src.paths]
    )
    gen = _StubGenerator(mels, feats, shift)
    clips = AudioClips(
        ids=list(src.ids),
        labels=np.asarray(src.labels),
        class_names=src.class_names,
        mel=lambda i: mels[i],
        features=lambda i: feats[i],
        data_dir=str(vas_samples),
    )
    evaluator = AudioGenerationEvaluator.from_config(
        config, gen, _StubScorer(), num_samples=3, batch_size=4, seed=0, melception="stub"
    )
    result = evaluator.evaluate(clips, split="valid", workdir=tmp_path)
    tables.write(tmp_path / "eval", "valid", result, evaluator.markdown(result))
    assert result["clips"] == 10 and result["num_samples"] == 3
    rows = {r["class"]: r for r in result["per_class"]}
    assert rows["dog"]["clips"] == 2 and rows["dog"]["samples"] == 6
    assert sum(r["samples"] for r in rows.values()) == 30
    if shift == 0:  # every fake is its own clip's real spectrogram
        assert abs(result["mkl"]) < 1e-4 and result["fid"] < 0.05
        assert all(r["same_class"] == 1.0 and abs(r["mkl"]) < 1e-4 for r in rows.values())
    else:  # every fake is the next clip's: the pairing must notice
        assert result["mkl"] > 0.05 and result["fid"] < 0.05  # same set of spectrograms
        assert (tmp_path / "eval" / "valid.md").read_text().count("\n| ") == 7 + len(
            rows
        )  # 2 tables: 2 header lines each
