# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # avjax quickstart: video to sound, sound to video
#
# Both directions end to end on the data embedded in avjax, on a CPU, in a few minutes:
#
# 1. train three tiny models (`:tiny` configs, a few steps each, with `launch/train.py`);
# 2. **video to sound** (SpecVQGAN): a clip's visual features -> transformer -> codebook
#    codes -> spectrogram -> waveform, and the clip's video with the generated sound;
# 3. **sound to video** (Sound2Sight): seen frames + the clip's sound -> predicted frames.
#
# The models train for seconds, so the sounds and frames are not good yet: this shows
# the pipeline and the API. For real results train the paper configs (`configs/`, see the
# README) or convert the official checkpoints (`launch/convert_checkpoint.py`).
#
# This file is the `py:percent` twin of `quickstart.ipynb` (jupytext): edit either, then
# `jupytext --sync notebooks/quickstart.py`. Run it all with `make notebook` (writes
# `workdirs/quickstart/quickstart.ipynb` with its outputs) or open the `.ipynb` in Jupyter.

# %%
import os
import pathlib
import subprocess
import sys
import warnings

import jax
import numpy as np
from IPython.display import Audio, Image, Video, display

# The repository root (this notebook lives in notebooks/).
REPO = next(p for p in [pathlib.Path.cwd(), *pathlib.Path.cwd().parents] if (p / "launch").is_dir())
sys.path.insert(0, str(REPO))
from launch.common import setup_jax

setup_jax()  # the persistent compilation cache: a second run compiles nothing
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets
# Where the runs go; an existing finished run is reused (train.py resumes it at once).
RUNS = pathlib.Path(os.environ.get("AVJAX_QUICKSTART_RUNS", REPO / "workdirs" / "quickstart"))
OUT = RUNS / "outputs"
print(f"runs in {RUNS}, {jax.device_count()} {jax.default_backend()} device(s)")


# %% [markdown]
# ## 1. Train the tiny models
#
# The same command as the README, once per model. `--config.train.num_steps` keeps them
# short; every `:tiny` config trains on data embedded in avjax (synthetic sounds with
# per-frame "visual" features; a small moving-digit dataset with tones for Sound2Sight).


# %%
def train(config: str, workdir: pathlib.Path, *overrides: str):
    """`python launch/train.py --config CONFIG --workdir WORKDIR OVERRIDES...`."""
    cmd = [sys.executable, "launch/train.py", f"--config={config}", f"--workdir={workdir}"]
    cmd += list(overrides)
    print("$", " ".join(cmd[1:]))
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"train.py failed:\n{proc.stderr[-3000:]}")
    print(proc.stdout.strip().splitlines()[-1])


STEPS = 8
SHORT = [
    f"--config.train.num_steps={STEPS}",
    f"--config.train.checkpoint_every={STEPS}",
    "--config.train.eval_every=0",
    "--config.train.sample_every=0",
]
# The spectrogram codebook (VQGAN), then the transformer over its codes, then Sound2Sight.
train("configs/specvqgan_vggsound.py:tiny", RUNS / "codebook", *SHORT)
train(
    "configs/specvqgan_transformer_vggsound.py:tiny",
    RUNS / "transformer",
    *SHORT,
    f"--config.codebook.workdir={RUNS / 'codebook'}",
)
train("configs/sound2sight_m3so_nb.py:tiny", RUNS / "sound2sight", *SHORT)

# %% [markdown]
# ## 2. Video to sound
#
# The embedded validation clips come as videos (a disc whose size follows the loudness and
# whose height follows the pitch) with their features beside them, as in the official VAS
# layout. Here is one clip and its real sound:

# %%
from data_pipelines.inputs import demo_videos

videos = demo_videos()
clip = videos[1]
print(f"{len(videos)} clips, e.g. {clip.relative_to(clip.parents[2])}")
display(Video(str(clip), embed=True, width=192))

# %% [markdown]
# Load the transformer run (its codebook comes with it), read the clip's features and
# sample two sounds. Shapes: features `[T, 2048]` at 21.5 fps, the condition `[5, 2048]`
# (this run resamples them to 5 rows), codes `[samples, rows * columns]`, spectrograms
# `[samples, 80, frames]` in [0, 1], waveforms `[samples, 256 * frames]` at 22050 Hz.

# %%
from avjax.audio.vocoder import load_vocoder
from avjax.models.specvqgan.video2sound import Video2Sound
from avjax.runs import read_config
from data_pipelines import features as F

v2s = Video2Sound.from_workdir(RUNS / "transformer")
spec = F.FeatureSpec.from_config(read_config(RUNS / "transformer", "transformer"))
streams = F.visual_streams(spec, video=clip)  # the .pkl beside the video
columns = v2s.num_columns()  # one training window
cond = F.condition(streams, spec, columns, v2s.window_columns, 0, v2s.feature_frames_per_column)
codes = v2s.sample_codes(cond[None], jax.random.PRNGKey(0), num_samples=2, top_k=0)
mels = v2s.decode(codes)
vocoder = load_vocoder(None)  # Griffin-Lim; pass a MelGAN run for better sound
waves = vocoder(mels)
print(
    f"features {streams[0].shape}, condition {cond.shape}, codes {codes.shape}, "
    f"mels {mels.shape}, waves {waves.shape} ({waves.shape[1] / vocoder.sample_rate:.2f} s)"
)

# %% [markdown]
# Each sample: its spectrogram (low frequencies at the bottom), its sound, and the clip's
# video with the generated sound (the files `launch/sample.py` writes, from
# `avjax.samples.write_audio_sample`).

# %%
from avjax.samples import write_audio_sample

for i, (mel, wave) in enumerate(zip(mels, waves)):
    files = write_audio_sample(OUT / f"{clip.stem}_sample_{i}", mel, wave, 22050, clip)
    print(f"sample {i}: " + ", ".join(str(p) for p in files.values()))
    display(Image(filename=str(files["png"])))
    display(Audio(wave, rate=vocoder.sample_rate))
    display(Video(str(files["mp4"]), embed=True, width=192))

# %% [markdown]
# Longer sounds slide the transformer's window: `v2s.num_columns(seconds)` columns, with
# per-frame features (`F.condition` returns them when the length exceeds one window).
#
# ## 3. Sound to video
#
# A Sound2Sight run predicts the frames after the seen ones from the clip's sound. The
# grid shows, left to right: the ground truth, the best of the samples (highest SSIM) and
# the samples; green borders mark seen frames, red ones predicted frames.

# %%
from avjax.runs import load_run
from avjax.samples import for_aac, write_frames_sample
from avjax.train.tasks.sound2sight import Sound2SightTask
from data_pipelines import video_inputs

run = load_run(RUNS / "sound2sight", "sound2sight")
task = Sound2SightTask.from_config(run.config)
clips = video_inputs.open_eval_clips(run.config)
d = run.config.data
length = d.n_past + d.n_eval
ex = clips.example(0)
frames = np.asarray(ex["frames"])[None, :length]  # [1, T, 48, 48, 1] uint8
audio = np.asarray(ex["audio"])[None, :length]  # [1, T, 23, 21] STFT patches
grid, best = task.sample_grid(run.state, frames, audio, jax.random.PRNGKey(0), num_samples=4)
rate = round(len(ex["waveform"]) * d.fps / len(ex["frames"]))
wave = np.asarray(ex["waveform"])[: round(length / d.fps * rate)]
files = write_frames_sample(OUT / "sound2sight", grid, d.fps, wave, rate, scale=3)
print(f"{len(clips)} clips; frames {frames.shape}, grid {grid.shape}, best sample {best[0]}")
print(", ".join(str(p) for p in files.values()))
display(Image(filename=str(files["gif"])))
sound, sound_rate = for_aac(wave, rate)  # the clip's tones, at a rate browsers play
display(Audio(sound, rate=sound_rate))

# %% [markdown]
# ## Next
#
# * `python launch/app.py --workdir workdirs/quickstart/transformer --s2s_workdir
#   workdirs/quickstart/sound2sight` serves the same in a browser (upload your own video).
# * `python launch/sample.py --workdir ... --video clip.mp4 --out DIR` from the terminal.
# * The README: the paper configs, real data, evaluation (FID / MKL, SSIM / PSNR).
