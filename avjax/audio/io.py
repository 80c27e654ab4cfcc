"""Waveform I/O: the audio track of any file FFmpeg (PyAV) opens, decoded like SpecVQGAN's.

The official pipeline extracts audio with the ffmpeg CLI to 16-bit WAV, then downmixes and
resamples it with `-ac 1 -ar 22050` (libswresample), and `librosa.load` reads the s16 samples
back as `int16 / 32768`. `load_audio` does the same in-process: PyAV decode, swr conversion to
s16 mono at the target rate. The s16 step matters: its quantisation floor (about -96 dBFS) sits
just above the -100 dB floor of the log-mel, so float decoding leaves near-silent bins
visibly different from the official features.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import av
import numpy as np
import soundfile as sf

PathLike = str | os.PathLike


class AudioDecodeError(ValueError):
    """A file that exists but whose audio track cannot be read (no stream, corrupt, ...)."""


def _open(path: PathLike) -> av.container.InputContainer:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"audio/video file not found: {path}")
    if os.path.isdir(path):
        raise AudioDecodeError(f"{path}: expected a media file, got a directory")
    try:
        return av.open(path, mode="r")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise AudioDecodeError(f"{path}: FFmpeg cannot open it as a media file ({e})") from e


def _audio_stream(container: av.container.InputContainer, path: PathLike) -> av.AudioStream:
    if not container.streams.audio:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise AudioDecodeError(
            f"{os.fspath(path)}: no audio stream (streams present: {', '.join(kinds)})"
        )
    return container.streams.audio[0]


_DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "4.0", 5: "5.0", 6: "5.1", 8: "7.1"}


def _layout_name(layout: av.AudioLayout, path: PathLike) -> str:
    """A named layout swr accepts, also for streams with only a channel count."""
    name = layout.name
    if name and "channel" not in name:
        return name
    n = layout.nb_channels
    if n not in _DEFAULT_LAYOUTS:
        raise AudioDecodeError(
            f"{os.fspath(path)}: unsupported channel layout {name!r} ({n} channels)"
        )
    return _DEFAULT_LAYOUTS[n]


def iter_audio_frames(path: PathLike) -> Iterator[av.AudioFrame]:
    """Decoded frames of the first audio stream of `path`, in their native format and rate.

    Raises:
      FileNotFoundError: `path` does not exist.
      AudioDecodeError: not a media file, no audio stream, or the stream fails to decode.
    """
    with _open(path) as container:
        stream = _audio_stream(container, path)
        try:
            yield from container.decode(stream)
        except av.FFmpegError as e:
            raise AudioDecodeError(f"{os.fspath(path)}: audio decoding failed ({e})") from e


def resample_frames(
    frames, sample_rate: int | None, layout: str | None = "mono", fmt: str = "s16"
) -> np.ndarray:
    """Converts frames with libswresample (as `ffmpeg -ac/-ar` does) into one sample array.

    Args:
      frames: iterable of `av.AudioFrame`.
      sample_rate: output rate; None keeps the input rate.
      layout: output channel layout ("mono", "stereo", ...); None keeps the input layout.
      fmt: output sample format: "s16", "flt" (packed) or "s16p", "fltp" (planar).

    Returns:
      [N, C] array of dtype int16 (s16*) or float32 (flt*).
    """
    resampler = av.AudioResampler(format=fmt, layout=layout, rate=sample_rate)
    planar = fmt.endswith("p")
    chunks, channels = [], None
    for frame in frames:
        if channels is None and layout is None:
            channels = frame.layout.nb_channels
        for out in [*resampler.resample(frame)]:
            chunks.append(out.to_ndarray())
    for out in resampler.resample(None):  # flush the resampler's delay line
        chunks.append(out.to_ndarray())
    if channels is None:
        channels = av.AudioLayout(layout or "mono").nb_channels
    dtype = np.int16 if fmt.startswith("s16") else np.float32
    if not chunks:
        return np.zeros((0, channels), dtype)
    if planar:  # [C, n] per frame
        return np.concatenate(chunks, axis=1).T.astype(dtype, copy=False)
    # Packed formats come back as [1, n * C].
    return np.concatenate([c.reshape(-1) for c in chunks]).reshape(-1, channels)


def load_audio_native(path: PathLike) -> tuple[np.ndarray, int, str]:
    """All channels of the first audio track of `path` at its own rate, as decoded float.

    Returns:
      (wave [C, N] float32, sample_rate, layout name such as "stereo").

    Raises:
      FileNotFoundError, AudioDecodeError: as `iter_audio_frames`.
    """
    frames = iter_audio_frames(path)
    first = next(frames, None)
    if first is None:
        raise AudioDecodeError(f"{os.fspath(path)}: the audio stream decoded to no samples")
    rate = first.sample_rate
    layout = _layout_name(first.layout, path)
    wave = resample_frames(itertools.chain([first], frames), rate, layout, "fltp").T
    if wave.shape[1] == 0:
        raise AudioDecodeError(f"{os.fspath(path)}: the audio stream decoded to no samples")
    return np.ascontiguousarray(wave), rate, layout


def s16_to_mono(samples: np.ndarray, sample_rate: int, layout: str, out_rate: int) -> np.ndarray:
    """`ffmpeg -i s16.wav -ac 1 -ar out_rate` on interleaved s16 samples [N, C] -> [N'] int16."""
    samples = np.ascontiguousarray(samples, np.int16)
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout=layout)
    frame.sample_rate = sample_rate
    return resample_frames([frame], out_rate, "mono", "s16")[:, 0]


def load_audio(path: PathLike, sample_rate: int | None = 22050) -> np.ndarray:
    """Mono waveform of the first audio track of `path`, decoded as the official pipeline does.

    FFmpeg decode -> libswresample to s16 (the WAV step) -> swr downmix to mono and resample
    to `sample_rate` (the `-ac 1 -ar` step) -> `int16 / 32768` (`librosa.load`).

    Args:
      path: any file PyAV opens (mp4, mkv, webm, avi, mov, wav, flac, mp3, ...).
      sample_rate: output rate in Hz; None keeps the file's own rate.

    Returns:
      [N] float32 in [-1, 1), s16-quantised.

    Raises:
      FileNotFoundError: `path` does not exist.
      AudioDecodeError: not a media file, no audio stream, undecodable or empty audio.
    """
    frames = iter_audio_frames(path)
    first = next(frames, None)
    if first is None:
        raise AudioDecodeError(f"{os.fspath(path)}: the audio stream decoded to no samples")
    rate, layout = first.sample_rate, _layout_name(first.layout, path)
    # Two swr passes as in the official chain: decoded -> s16 WAV (same rate and channels),
    # then `-ac 1 -ar sample_rate` on the s16 samples.
    s16 = resample_frames(itertools.chain([first], frames), rate, layout, "s16")
    if s16.shape[0] == 0:
        raise AudioDecodeError(f"{os.fspath(path)}: the audio stream decoded to no samples")
    mono = s16_to_mono(s16, rate, layout, sample_rate or rate)
    return mono.astype(np.float32) / 32768.0


PEAK = 0.95  # -0.45 dBFS: the headroom the official MelGAN data leaves (0.95 * normalize)


def peak_normalize(wave: np.ndarray, peak: float = PEAK) -> np.ndarray:
    """`wave` scaled so that max |x| == `peak`; an all-zero wave stays zero.

    Args:
      wave: [N] or [N, C] float samples (one gain for all channels).
      peak: the target peak, full scale being 1.0.

    Returns:
      float32, same shape.
    """
    wave = np.asarray(wave, np.float32)
    top = float(np.max(np.abs(wave))) if wave.size else 0.0
    return wave if top == 0.0 else wave * np.float32(peak / top)


def fit_full_scale(wave: np.ndarray, peak: float = PEAK) -> np.ndarray:
    """`wave` unchanged when it fits in [-1, 1], else scaled down to peak `peak`.

    Never hard-clips: clipping a loud vocoder output turns it into a square wave (SpecVQGAN
    samples that went past full scale had up to 14 % of their samples at +-1).
    """
    wave = np.asarray(wave, np.float32)
    top = float(np.max(np.abs(wave))) if wave.size else 0.0
    return peak_normalize(wave, peak) if top > 1.0 else wave


def write_wav(
    path: PathLike, wave: np.ndarray, sample_rate: int, *, normalize: bool = False
) -> None:
    """Writes a [N] (mono) or [N, C] float waveform as 16-bit PCM WAV.

    A wave that fits in [-1, 1] is written as it is, a louder one is scaled down to peak
    `PEAK` (`fit_full_scale`; never hard-clipped); `normalize=True` scales every wave to
    peak `PEAK` (generated audio, whose level is arbitrary).

    Raises:
      ValueError naming the file: not [N] or [N, C], or non-finite samples.
    """
    wave = np.asarray(wave, np.float32)
    if wave.ndim not in (1, 2):
        raise ValueError(f"{os.fspath(path)}: expected a wave [N] or [N, C], got {wave.shape}")
    if not np.isfinite(wave).all():
        raise ValueError(f"{os.fspath(path)}: the wave has NaN or inf samples")
    wave = peak_normalize(wave) if normalize else fit_full_scale(wave)
    sf.write(os.fspath(path), wave, int(sample_rate), subtype="PCM_16")
