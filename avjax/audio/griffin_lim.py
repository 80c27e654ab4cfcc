"""Log-mel -> waveform by Griffin-Lim, to listen to spectrograms before a vocoder exists.

The official `inv_transforms` undoes the log scale and uses librosa's NNLS `mel_to_stft`;
here the mel basis is inverted with a (cached) pseudo-inverse instead, which is much faster
and sounds the same at this quality level (it is used for TensorBoard audio in training).
Griffin-Lim itself is `librosa.griffinlim`'s algorithm (momentum 0.99, random initial
phase from `RandomState(seed)`) in plain numpy: the same result to float rounding
(tests/test_audio.py), without the seconds librosa's lazy imports cost every training
process that writes samples.
"""

from __future__ import annotations

import functools

import numpy as np

from avjax.audio.mel import DEFAULT, MelSpec, hann_window, mel_basis, unit_to_amplitude


@functools.lru_cache(maxsize=8)
def mel_pseudo_inverse(spec: MelSpec = DEFAULT) -> np.ndarray:
    """Moore-Penrose inverse of the mel basis, [n_fft // 2 + 1, n_mels] float32."""
    return np.linalg.pinv(mel_basis(spec).astype(np.float64)).astype(np.float32)


def mel_to_wave(
    mel01: np.ndarray, spec: MelSpec = DEFAULT, n_iter: int = 32, seed: int = 0
) -> np.ndarray:
    """Inverts SpecVQGAN's [0, 1] log-mel to audio.

    Args:
      mel01: [n_mels, T] log-mel in [0, 1] (values outside are clipped).
      spec: the transform that produced it.
      n_iter: Griffin-Lim iterations.
      seed: seed of the random initial phase (deterministic output).

    Returns:
      [T * hop_length] float32 waveform at `spec.sample_rate`.
    """
    mel01 = np.asarray(mel01, np.float32)
    if mel01.ndim != 2 or mel01.shape[0] != spec.n_mels:
        raise ValueError(f"expected a mel [{spec.n_mels}, T], got shape {mel01.shape}")
    amp = unit_to_amplitude(np.clip(mel01, 0.0, 1.0))
    mag = np.maximum(mel_pseudo_inverse(spec) @ amp, 0.0)
    # A centred STFT of T * hop samples has T + 1 frames: repeat the last one so that the
    # reconstruction is exactly T * hop long (and Griffin-Lim's re-analysis shapes agree).
    mag = np.concatenate([mag, mag[:, -1:]], axis=1)
    wave = griffinlim(
        mag,
        n_iter=n_iter,
        n_fft=spec.n_fft,
        hop_length=spec.hop_length,
        pad_mode=spec.pad_mode,
        length=mel01.shape[1] * spec.hop_length,
        seed=seed,
    )
    return wave.astype(np.float32)


def stft(wave: np.ndarray, n_fft: int, hop_length: int, pad_mode: str = "reflect") -> np.ndarray:
    """Centred STFT (`librosa.stft(center=True)`), [n_fft // 2 + 1, 1 + N // hop] complex."""
    padded = np.pad(wave, n_fft // 2, mode=pad_mode)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length]
    return np.fft.rfft(frames * hann_window(n_fft), axis=-1).T


def istft(spec: np.ndarray, n_fft: int, hop_length: int, length: int) -> np.ndarray:
    """Inverse of `stft` (`librosa.istft(center=True, length=length)`): windowed overlap-add
    divided by the summed squared window, [length] float64."""
    window = hann_window(n_fft)
    frames = np.fft.irfft(spec.T, n=n_fft, axis=-1) * window  # [T, n_fft]
    num = len(frames)
    total = n_fft + hop_length * (num - 1)
    out, norm = np.zeros(total, np.float32), np.zeros(total, np.float32)
    if n_fft % hop_length == 0:  # overlap-add as n_fft / hop shifted block sums
        r = n_fft // hop_length
        blocks = frames.reshape(num, r, hop_length)
        out2, norm2 = out.reshape(-1, hop_length), norm.reshape(-1, hop_length)
        win2 = (window**2).reshape(r, hop_length)
        for j in range(r):
            out2[j : j + num] += blocks[:, j]
            norm2[j : j + num] += win2[j]
    else:
        for t in range(num):
            out[t * hop_length : t * hop_length + n_fft] += frames[t]
            norm[t * hop_length : t * hop_length + n_fft] += window**2
    nonzero = norm > np.finfo(np.float32).tiny
    out[nonzero] /= norm[nonzero]
    out = out[n_fft // 2 :]
    return out[:length] if len(out) >= length else np.pad(out, (0, length - len(out)))


def griffinlim(
    mag: np.ndarray,
    n_iter: int,
    n_fft: int,
    hop_length: int,
    length: int,
    pad_mode: str = "reflect",
    momentum: float = 0.99,
    seed: int = 0,
) -> np.ndarray:
    """Fast Griffin-Lim (Perraudin et al. 2013) as `librosa.griffinlim(random_state=seed)`.

    Args:
      mag: [n_fft // 2 + 1, T] STFT magnitudes.
      n_iter: iterations.
      n_fft, hop_length, pad_mode: the centred STFT's parameters.
      length: samples of the output.
      momentum: the "fast" extrapolation of the phase estimates.
      seed: seed of the random initial phase.

    Returns:
      [length] float64 waveform.
    """
    mag = np.asarray(mag, np.float32)
    rng = np.random.RandomState(seed=seed)
    angles = mag * np.exp(2j * np.pi * rng.random_sample(size=mag.shape)).astype(np.complex64)
    eps = np.finfo(np.float32).tiny
    previous = None
    for _ in range(n_iter):
        rebuilt = stft(istft(angles, n_fft, hop_length, length), n_fft, hop_length, pad_mode)
        angles = rebuilt.copy()
        if previous is not None:
            angles -= (momentum / (1 + momentum)) * previous
        angles = mag * angles / (np.abs(angles) + eps)
        previous = rebuilt
    return istft(angles, n_fft, hop_length, length)
