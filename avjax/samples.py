"""Generated samples as the files a person opens: WAV, spectrogram PNG, MP4 and GIF.

What `launch/sample.py`, `launch/app.py` and `notebooks/quickstart.ipynb` write for each
sample, in one place so that all three give the same files.
"""

from __future__ import annotations

import math
import pathlib

import numpy as np

from avjax import images
from avjax.audio import io as audio_io
from avjax.video import io as video_io

__all__ = ["AAC_RATES", "for_aac", "write_audio_sample", "write_frames_sample"]

# Sample rates the AAC encoder takes (MPEG-4 sampling frequency table).
AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)


def for_aac(wave: np.ndarray, sample_rate: int) -> tuple[np.ndarray, int]:
    """A mono wave [N] at a rate AAC can encode: unchanged, or resampled to 22050 Hz."""
    wave = np.asarray(wave, np.float32).reshape(-1)
    if sample_rate in AAC_RATES:
        return wave, sample_rate
    from scipy.signal import resample_poly

    g = math.gcd(22050, int(sample_rate))
    return resample_poly(wave, 22050 // g, int(sample_rate) // g).astype(np.float32), 22050


def write_audio_sample(
    stem: str | pathlib.Path,
    mel01: np.ndarray,
    wave: np.ndarray,
    sample_rate: int,
    video: str | pathlib.Path | None = None,
    title: str | None = None,
) -> dict[str, pathlib.Path]:
    """One generated sound: `stem.wav`, `stem.png` and, given `video`, `stem.mp4`.

    Args:
      stem: output path without suffix (its folder is created).
      mel01: the log-mel [80, T] in [0, 1]; the PNG is drawn at 2x, low frequencies at
        the bottom, or, given `title`, as a labelled figure (`images.mel_figure`: seconds,
        mel bins, dB colour bar).
      wave: the waveform [N]; it is peak-normalised (-0.45 dBFS: a generated sound's level
        is arbitrary, and nothing is ever hard-clipped) for the WAV (16-bit PCM) and MP4.
      sample_rate: of `wave`.
      video: its picture track is copied (no re-encode) under `wave` as the sound track,
        as long as the shorter of the two.
      title: the labelled figure's title (None: the plain 2x picture).

    Returns:
      {"wav": path, "png": path[, "mp4": path]}.
    """
    stem = pathlib.Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = {"wav": stem.with_suffix(".wav"), "png": stem.with_suffix(".png")}
    wave = audio_io.peak_normalize(wave)
    audio_io.write_wav(out["wav"], wave, sample_rate)
    if title is None:
        images.save_png(out["png"], np.asarray(mel01)[::-1], scale=2)
    else:
        images.save_png(out["png"], images.mel_figure([mel01], [title]))
    if video is not None:
        out["mp4"] = stem.with_suffix(".mp4")
        video_io.replace_audio(video, *for_aac(wave, sample_rate), out["mp4"])
    return out


def write_frames_sample(
    stem: str | pathlib.Path,
    frames: np.ndarray,
    fps: float,
    wave: np.ndarray | None = None,
    sample_rate: int | None = None,
    scale: int = 1,
) -> dict[str, pathlib.Path]:
    """Generated frames: `stem.gif` (looping) and `stem.mp4` (H.264, with `wave` as sound).

    Args:
      stem: output path without suffix (its folder is created).
      frames: uint8 RGB [T, H, W, 3] (e.g. `avjax.images.frame_grid`).
      fps: frame rate of both files.
      wave, sample_rate: the sound of the clip (mono [N]); None writes a silent MP4.
      scale: integer upscaling (nearest) of every frame, for small frames.

    Returns:
      {"gif": path, "mp4": path}.
    """
    stem = pathlib.Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    frames = images.to_uint8(frames)
    if scale != 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    out = {"gif": stem.with_suffix(".gif"), "mp4": stem.with_suffix(".mp4")}
    video_io.write_gif(out["gif"], frames, fps=fps)
    if wave is not None:
        wave, sample_rate = for_aac(wave, sample_rate)
        wave = wave[: round(len(frames) / fps * sample_rate)]
    video_io.write_video(out["mp4"], frames, fps, wave, sample_rate)
    return out
