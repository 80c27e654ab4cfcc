"""SpecVQGAN's log-mel spectrogram, computed exactly as the official pipeline does.

The official chain (`feature_extraction/extract_mel_spectrogram.py`): 22050 Hz mono
audio zero-padded/trimmed to 220500 samples, |STFT| (n_fft 1024, hop 256, Hann,
centre, reflect padding as in librosa 0.8), an 80-band Slaney mel basis over
125-7600 Hz, then `clip((20 log10(max(m, 1e-5)) + 80) / 100, 0, 1)`, first 860 frames.
"""

from __future__ import annotations

import dataclasses
import functools

import librosa
import numpy as np


@dataclasses.dataclass(frozen=True)
class MelSpec:
    """Parameters of the SpecVQGAN log-mel transform (the paper's defaults)."""

    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 80
    fmin: float = 125.0
    fmax: float = 7600.0
    clip_seconds: float = 10.0
    num_frames: int = 860
    pad_mode: str = "reflect"

    @property
    def num_samples(self) -> int:
        return round(self.clip_seconds * self.sample_rate)


DEFAULT = MelSpec()


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    hz = np.asarray(hz, np.float64)
    log_step = np.log(6.4) / 27.0
    above = 15.0 + np.log(np.maximum(hz, 1000.0) / 1000.0) / log_step
    return np.where(hz >= 1000.0, above, hz / (200.0 / 3))


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of `_hz_to_mel`."""
    mel = np.asarray(mel, np.float64)
    log_step = np.log(6.4) / 27.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(log_step * (mel - 15.0)), mel * (200.0 / 3))


@functools.lru_cache(maxsize=8)
def mel_basis(spec: MelSpec = DEFAULT) -> np.ndarray:
    """Slaney-normalised mel filterbank, [n_mels, n_fft // 2 + 1] float32.

    `librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax)` (htk=False, norm="slaney") in plain
    numpy, the same arithmetic in the same order (tests/test_audio.py compares them), without
    the second librosa takes to import its filters (scipy.signal).
    """
    fft_freqs = np.fft.rfftfreq(n=spec.n_fft, d=1.0 / spec.sample_rate)
    lo, hi = _hz_to_mel(spec.fmin), _hz_to_mel(spec.fmax)
    mel_f = _mel_to_hz(np.linspace(lo, hi, spec.n_mels + 2))  # band edges, Hz
    f_diff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    weights = np.zeros((spec.n_mels, len(fft_freqs)), np.float32)
    for i in range(spec.n_mels):
        lower = -ramps[i] / f_diff[i]
        upper = ramps[i + 2] / f_diff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2 : spec.n_mels + 2] - mel_f[: spec.n_mels]))[:, None]  # unit area
    return weights


def fit_length(wave: np.ndarray, num_samples: int, mode: str = "pad") -> np.ndarray:
    """Trims `wave` [N] to `num_samples`, or extends it by zero-padding or looping."""
    wave = np.asarray(wave, np.float32)
    if wave.ndim != 1:
        raise ValueError(f"expected a mono waveform [N], got shape {wave.shape}")
    if len(wave) >= num_samples:
        return wave[:num_samples]
    if len(wave) == 0:
        raise ValueError("cannot fit an empty waveform")
    if mode == "loop":
        reps = -(-num_samples // len(wave))
        return np.tile(wave, reps)[:num_samples]
    if mode == "pad":
        return np.pad(wave, (0, num_samples - len(wave)))
    raise ValueError(f"unknown fit mode {mode!r}; expected 'pad' or 'loop'")


def amplitude_to_unit(mel_amp: np.ndarray) -> np.ndarray:
    """Mel magnitudes -> SpecVQGAN's [0, 1] log scale (floor -100 dB, ceiling 0 dB)."""
    db = 20.0 * np.log10(np.maximum(mel_amp, 1e-5))
    return np.clip((db + 80.0) / 100.0, 0.0, 1.0).astype(np.float32)


def unit_to_amplitude(mel01: np.ndarray) -> np.ndarray:
    """Inverse of `amplitude_to_unit` (exact inside the unclipped range)."""
    db = np.asarray(mel01, np.float32) * 100.0 - 80.0
    return np.power(10.0, db / 20.0).astype(np.float32)


def log_mel_spectrogram(wave: np.ndarray, spec: MelSpec = DEFAULT, fit: bool = True) -> np.ndarray:
    """SpecVQGAN log-mel of a mono waveform at `spec.sample_rate`.

    Args:
      wave: [N] float waveform in [-1, 1].
      spec: transform parameters.
      fit: zero-pad/trim to `spec.num_samples` and keep `spec.num_frames` frames first,
        as the official extractor does (set False for arbitrary-length audio).

    Returns:
      [n_mels, T] float32 in [0, 1]; row 0 is the lowest band. T = 860 with `fit`.
    """
    wave = np.asarray(wave, np.float32)
    if fit:
        wave = fit_length(wave, spec.num_samples, "pad")
    stft = librosa.stft(
        wave, n_fft=spec.n_fft, hop_length=spec.hop_length, center=True, pad_mode=spec.pad_mode
    )
    mel = mel_basis(spec) @ np.abs(stft)
    out = amplitude_to_unit(mel)
    return out[:, : spec.num_frames] if fit else out


@functools.lru_cache(maxsize=8)
def hann_window(n_fft: int) -> np.ndarray:
    """Periodic Hann window, librosa's `get_window("hann", n_fft, fftbins=True)`."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


def log_mel_spectrogram_jax(wave, spec: MelSpec = DEFAULT):
    """Jittable SpecVQGAN log-mel of a batch of waves, equal to `log_mel_spectrogram(fit=False)`.

    Framed STFT via `jnp.fft.rfft`: centre padding of n_fft // 2 with `spec.pad_mode`, periodic
    Hann window, |STFT|, the same mel basis and [0, 1] log scale. No length fitting or frame
    trimming: pad the input to `spec.num_samples` and keep `[..., :spec.num_frames]` to get
    the official 860-frame features.

    Args:
      wave: [B, N] float waveforms (N > n_fft // 2 for reflect padding).
      spec: transform parameters (static).

    Returns:
      [B, n_mels, 1 + N // hop_length] float32 in [0, 1].
    """
    import jax.numpy as jnp  # local: keeps numpy-only users (data workers) free of JAX

    wave = jnp.asarray(wave, jnp.float32)
    if wave.ndim != 2:
        raise ValueError(f"expected waves [B, N], got shape {wave.shape}")
    n_fft, hop = spec.n_fft, spec.hop_length
    mode = {"reflect": "reflect", "constant": "constant", "edge": "edge"}[spec.pad_mode]
    padded = jnp.pad(wave, ((0, 0), (n_fft // 2, n_fft // 2)), mode=mode)
    num_frames = 1 + wave.shape[1] // hop
    index = np.arange(num_frames)[:, None] * hop + np.arange(n_fft)[None, :]
    frames = padded[:, index] * hann_window(n_fft)  # [B, T, n_fft]
    mag = jnp.abs(jnp.fft.rfft(frames, axis=-1))  # [B, T, n_fft // 2 + 1]
    mel = jnp.einsum("mf,btf->bmt", mel_basis(spec), mag)
    db = 20.0 * jnp.log10(jnp.maximum(mel, 1e-5))
    return jnp.clip((db + 80.0) / 100.0, 0.0, 1.0)
