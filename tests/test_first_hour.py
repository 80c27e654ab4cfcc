"""A user's first hour: audio levels, vocoder checks, feature kinds, pictures, progress,
quiet logs, split hints, the demo's inputs, the README's Python and `make demo` itself."""

import io
import json
import logging
import math
import os
import pathlib
import pickle
import re
import subprocess
import sys
import time

import av
import jax
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from avjax import images
from avjax.audio import io as audio_io
from avjax.audio import vocoder as voc
from avjax.errors import UserError
from avjax.train import progress as progress_lib
from data_pipelines import features as F
from data_pipelines import spec_folders

REPO = pathlib.Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------- audio levels
def test_peak_normalize_and_fit_full_scale_by_hand():
    wave = np.array([0.5, -2.0, 1.0], np.float32)
    np.testing.assert_allclose(audio_io.peak_normalize(wave), [0.2375, -0.95, 0.475], rtol=1e-6)
    np.testing.assert_allclose(audio_io.peak_normalize(wave, 0.5), [0.125, -0.5, 0.25])
    np.testing.assert_array_equal(audio_io.peak_normalize(np.zeros(4)), np.zeros(4))
    quiet = np.array([0.5, -0.5], np.float32)
    np.testing.assert_array_equal(audio_io.fit_full_scale(quiet), quiet)  # fits: untouched
    np.testing.assert_allclose(audio_io.fit_full_scale([0.0, 3.0, -1.5]), [0.0, 0.95, -0.475])


def test_write_wav_never_clips(tmp_path):
    t = np.arange(2205) / 22050
    loud = (3.0 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)  # peak 3: used to clip
    audio_io.write_wav(tmp_path / "loud.wav", loud, 22050)
    back, sr = sf.read(tmp_path / "loud.wav", dtype="float32")
    assert sr == 22050 and back.shape == loud.shape
    np.testing.assert_allclose(back, loud * (0.95 / np.abs(loud).max()), atol=1.0 / 32768)
    assert np.mean(np.abs(back) > 0.99) == 0.0  # no sample at full scale
    soft = 0.1 * loud / 3.0
    audio_io.write_wav(tmp_path / "soft.wav", soft, 22050, normalize=True)
    back, _ = sf.read(tmp_path / "soft.wav", dtype="float32")
    assert abs(np.abs(back).max() - 0.95) < 2.0 / 32768
    with pytest.raises(ValueError, match=r"bad\.wav.*NaN"):
        audio_io.write_wav(tmp_path / "bad.wav", np.array([0.0, np.nan]), 22050)


# -------------------------------------------------------------------- vocoder checks
class _Fixed(voc.Vocoder):
    """A vocoder whose output is given: `fn(mel01) -> [B, 256 * T]`."""

    def __init__(self, fn, name):
        self.fn, self.name = fn, name

    def __call__(self, mel01):
        return self.fn(self._check(mel01))


def test_output_problem_flags_dc_silence_and_nan():
    loud = np.full((80, 8), 0.6, np.float32)
    t = np.arange(2048) / 22050
    sine = 0.3 * np.sin(2 * np.pi * 440 * t)
    assert voc.output_problem(loud, sine) is None
    dc = 0.3 + 1e-6 * np.random.default_rng(0).standard_normal(2048)  # a tiny MelGAN's output
    assert "near-constant output (DC +0.3" in voc.output_problem(loud, dc)
    assert "near-constant" in voc.output_problem(loud, np.zeros(2048))
    # The DC offset is the line: an AC rms of half of it is flagged (a 40-step tiny MelGAN gave
    # DC 0.146 with an AC rms of 0.0015), twice it is not.
    assert voc.output_problem(loud, 0.2 + 0.1 * np.sqrt(2) * np.sin(2 * np.pi * 100 * t))
    assert voc.output_problem(loud, 0.2 + 0.4 * np.sqrt(2) * np.sin(2 * np.pi * 100 * t)) is None
    assert voc.output_problem(np.full((80, 8), 0.1), np.zeros(2048)) is None  # silence in
    assert "1 non-finite" in voc.output_problem(loud, np.r_[sine[:-1], np.nan])


def test_vocode_checked_falls_back_per_sample():
    mels = np.full((2, 80, 8), 0.6, np.float32)
    t = np.arange(2048) / 22050
    sine = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    good_then_dc = _Fixed(lambda m: np.stack([sine, np.full(2048, 0.25, np.float32)]), "melgan")
    fallback = _Fixed(lambda m: np.full((len(m), 2048), 0.5 * sine), "griffin_lim")
    waves, notes = voc.vocode_checked(good_then_dc, mels, fallback)
    np.testing.assert_array_equal(waves[0], sine)  # kept
    np.testing.assert_allclose(waves[1], 0.5 * sine)  # redone by the fallback
    assert len(notes) == 1 and notes[0].startswith("sample 1: the melgan vocoder gave near-const")
    assert "used griffin_lim instead" in notes[0]


# ---------------------------------------------------------------------- feature kinds
def _pkl(path: pathlib.Path, rows: int, dim: int) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(np.ones((rows, dim), np.float32)))
    return path


def test_feature_file_of_another_kind_is_refused(tmp_path):
    rgb = _pkl(tmp_path / F.RGB_BNINCEPTION / "v.pkl", 215, 1024)
    flow = _pkl(tmp_path / F.FLOW_BNINCEPTION / "v.pkl", 216, 1024)
    r50 = _pkl(tmp_path / F.RESNET50 / "v.pkl", 215, 2048)
    # BN-Inception rgb given to a ResNet-50 run: its flow twin would fit 2048, but it is refused.
    with pytest.raises(UserError, match=r"v\.pkl: bninception features \(1024-d\).*resnet50"):
        F.read_feature_streams(rgb, 2048, kind="resnet50")
    with pytest.raises(UserError, match=r"resnet50 features \(2048-d\).*trained on bninception"):
        F.read_feature_streams(r50, 2048, kind="bninception")
    with pytest.raises(UserError, match="a BN-Inception flow file; give the rgb one"):
        F.read_feature_streams(flow, 2048, kind="bninception")
    loose = _pkl(tmp_path / "elsewhere" / "v.pkl", 215, 1024)  # no folder name: its width
    with pytest.raises(UserError, match="bninception features"):
        F.read_feature_streams(loose, 2048, kind="resnet50")
    streams = F.read_feature_streams(rgb, 2048, kind="bninception")  # the right kind
    assert [s.shape for s in streams] == [(215, 1024), (216, 1024)]
    assert F.read_feature_streams(r50, 2048, kind="resnet50")[0].shape == (215, 2048)


# ---------------------------------------------------------------------- the picture
def test_mel_figure_layout_and_colours(tmp_path):
    top = np.zeros((80, 64), np.float32)
    top[0] = 1.0  # the lowest mel bin loud: it must be drawn at the bottom
    fig = images.mel_figure([top, 0.5 * np.ones((80, 64))], ["input", "reconstruction"])
    # 64 frames are stretched 8x (>= 480 px); 80 bins 2x: 48 + 512 + 76 wide,
    # 6 + 2 * (16 + 160) + 24 + 34 high.
    assert fig.shape == (416, 636, 3) == (*images.mel_figure_size(64), 3)
    y0, x0 = images.FIG_TOP + images.FIG_TITLE, images.FIG_LEFT + 3
    assert tuple(fig[y0 + 159, x0]) == (252, 253, 191)  # bottom row: bin 0 at 1.0
    assert tuple(fig[y0, x0]) == (0, 0, 4)  # top row: bin 79 at 0.0
    second = y0 + 160 + images.FIG_GAP + images.FIG_TITLE
    assert tuple(fig[second + 80, x0]) == tuple(images.colormap(0.5))
    bar_x = images.FIG_LEFT + 512 + 12 + 5
    assert tuple(fig[y0, bar_x]) == tuple(images.colormap(1.0))  # colour bar: 0 dB on top
    path = images.save_png(tmp_path / "rec.png", fig)
    with Image.open(path) as im:
        assert im.size == (636, 416) and im.mode == "RGB"
    # 10-s clips are drawn 1:1 in time.
    assert images.mel_figure_size(848) == (416, 48 + 848 + 76)


# ------------------------------------------------------------------ progress and logs
def test_progress_rate_eta_and_short_lines(monkeypatch):
    p = progress_lib.Progress(100, 0, enabled=True, stream=io.StringIO())
    assert not p.tty
    p.reset(0)
    now = p._t0 + 10.0  # a frozen clock: 10 s since the reset, 5 of them in pauses
    monkeypatch.setattr(progress_lib.time, "perf_counter", lambda: now)
    p._paused = 5.0
    assert p.steps_per_sec(10) == pytest.approx(2.0, rel=1e-9)
    assert p.eta(10) == pytest.approx(45.0, rel=1e-9)
    metrics = {f"train/m{i}": float(i) for i in range(30)} | {"train/loss": 0.25}
    line = p.line(10, metrics)
    monkeypatch.undo()  # `excluding` below measures a real pause
    assert line.startswith("step 10/100  2.00 steps/s  eta 45s  loss=0.25")
    assert len(line) <= progress_lib.MAX_WIDTH
    slow = p.excluding("evaluating", lambda: time.sleep(0.05) or 7)
    before = p._paused
    assert slow() == 7 and p._paused - before >= 0.05
    assert progress_lib.format_seconds(75.2) == "1m15s"
    assert progress_lib.format_seconds(3725) == "1h02m"
    assert progress_lib.format_seconds(math.nan) == "?"
    assert progress_lib.console_metrics({"a": 1.0, "b": 2.0}) == "a=1  b=2"  # none preferred


def test_console_filter_keeps_what_needs_action():
    from launch.common import _console_filter, _ConsoleFormatter

    def record(name, level, msg, path="/x/avjax/train/loop.py"):
        return logging.LogRecord(name, level, path, 1, msg, None, None)

    tpu = "Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so"
    assert not _console_filter(record("jax._src.xla_bridge", logging.INFO, tpu))
    assert not _console_filter(record("jax._src.xla_bridge", logging.WARNING, tpu))
    cuda = "Unable to initialize backend 'cuda': no CUDA-capable device is detected"
    assert _console_filter(record("jax._src.xla_bridge", logging.WARNING, cuda))  # actionable
    orbax = f"{os.sep}site-packages{os.sep}orbax{os.sep}checkpoint{os.sep}handler.py"
    skipped = 'Item "data" was found in the checkpoint, but could not be restored. Please ...'
    assert not _console_filter(record("absl", logging.WARNING, skipped, orbax))
    assert not _console_filter(record("absl", logging.INFO, "Saving item", orbax))
    assert _console_filter(record("absl", logging.WARNING, "disk almost full", orbax))
    tfds = "Variant folder /c/.m3so-x/avjax_m3so/1.0.0 has no dataset_info.json"
    assert not _console_filter(record("absl", logging.WARNING, tfds))
    assert _console_filter(record("absl", logging.INFO, "step 5/20  1.00 steps/s"))
    line = _ConsoleFormatter().format(record("absl", logging.WARNING, "check this"))
    assert re.fullmatch(r"\d\d:\d\d:\d\d warning: check this", line)


# ------------------------------------------------------------------------ split hint
def test_empty_split_names_the_split_that_has_the_clips(tmp_path):
    mels = tmp_path / "features" / "dog" / spec_folders.MEL_SUBDIR
    mels.mkdir(parents=True)
    np.save(mels / "v1_mel.npy", np.full((80, 860), 0.5, np.float32))
    (tmp_path / "vas_train.txt").write_text("dog/v8\ndog/v9\n")  # the full dataset's lists
    (tmp_path / "vas_valid.txt").write_text("dog/v1\ndog/v7\n")
    assert sorted(spec_folders.split_lists(tmp_path / "features")) == ["train", "valid"]
    with pytest.raises(
        UserError,
        match=r"1 clips here are listed in vas_valid\.txt.*"
        r"--config\.data\.train_split=valid",
    ):
        spec_folders.open_spec_source(tmp_path / "features", "train")


# ------------------------------------------------------------------------ demo inputs
def test_demo_example_is_a_video_with_sound_and_features():
    from data_pipelines.demo import demo_example

    clip = demo_example()
    with av.open(str(clip.video)) as c:
        kinds = sorted(s.type for s in c.streams)
        seconds = c.duration / 1e6
        frames = sum(1 for _ in c.decode(video=0))
    assert kinds == ["audio", "video"] and abs(seconds - 10.0) < 0.1 and frames == 215
    assert F.load_feature_pkl(clip.features).shape == (215, 2048)
    assert F.folder_kind(clip.features) == "resnet50"
    wave, sr = sf.read(clip.wav)
    assert sr == 22050 and wave.shape == (220500,)


# ------------------------------------------------------------------- README's Python
def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    """`workdirs/demo/{codebook,transformer}` as `make demo` leaves them (initialised)."""
    from avjax.checkpoints import save_imported
    from avjax.models.specvqgan import gpt
    from avjax.models.specvqgan.vqgan import make_model
    from configs import specvqgan_transformer_vggsound, specvqgan_vggsound

    root = tmp_path_factory.mktemp("readme")
    cb = specvqgan_vggsound.get_config("tiny")
    ae = jax.jit(make_model(cb.model).init)(jax.random.PRNGKey(0), np.zeros((1, 80, 64, 1)))
    ae = ae["params"]
    save_imported(root / "workdirs/demo/codebook", cb.to_json(), {"params": {"ae": ae}}, 300)
    tr = specvqgan_transformer_vggsound.get_config("tiny")
    tr.codebook.workdir = "workdirs/demo/codebook"  # relative, as the demo writes it
    model = gpt.make_model(tr.model)
    tokens, feats = np.zeros((1, 319), np.int32), np.zeros((1, 5, 2048), np.float32)
    params = jax.jit(model.init, static_argnums=3)(jax.random.PRNGKey(1), tokens, feats, None)
    params = params["params"]
    save_imported(root / "workdirs/demo/transformer", tr.to_json(), {"params": params}, 400)
    return root


@pytest.mark.slow  # ~25 CPU-s: two model inits, sampling and Griffin-Lim compile once each
def test_readme_python_snippets_run(demo_runs, monkeypatch):
    blocks = _python_blocks((REPO / "README.md").read_text())
    assert len(blocks) >= 2 and any("Video2Sound" in b for b in blocks)
    monkeypatch.chdir(demo_runs)
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)
    # The shapes the README states.
    assert namespace["feats"].shape == (5, 2048)
    assert namespace["mels"].shape == (2, 80, 64) and namespace["waves"].shape == (2, 256 * 64)
    assert namespace["codes"].shape == (20, 212) and namespace["rec"].shape == (80, 848)
    back, _ = sf.read(demo_runs / "workdirs/sample.wav")
    assert abs(np.abs(back).max() - 0.95) < 1e-3


# ---------------------------------------------------------------------- make demo
@pytest.mark.slow
def test_demo_quick_ends_with_a_video_with_generated_sound(tmp_path, one_device_env):
    work = tmp_path / "demo"
    # XLA's default optimisation, as `make demo` runs: its stages (sampling, vocoding,
    # steps) mostly execute programs the warm cache holds, and -O0 code runs them slower
    # (measured: 71 CPU-s at -O0, 57 at the default).
    env = {**one_device_env, "XLA_FLAGS": ""}
    proc = subprocess.run(
        [sys.executable, "launch/demo.py", "--quick", f"--workdir={work}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    opens = proc.stdout[proc.stdout.rindex("open:") :]
    video = pathlib.Path(re.search(r"video with generated sound\s+(\S+)", opens).group(1))
    with av.open(str(video)) as c:
        assert sorted(s.type for s in c.streams) == ["audio", "video"]
        assert abs(c.duration / 1e6 - 10.0) < 0.2
    assert re.search(r"Sound2Sight: truth \| best \| samples\s+\S+\.gif", opens)
    assert (work / "DEMO.json").is_file() and json.loads((work / "DEMO.json").read_text())
    # A 2-step MelGAN cannot make sound yet: detected, and Griffin-Lim used instead.
    assert "vocoder gave near-constant output" in proc.stderr
