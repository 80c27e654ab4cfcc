"""Log-mel -> waveform by Griffin-Lim, to listen to spectrograms before a vocoder exists.

The official `inv_transforms` undoes the log scale and uses librosa's NNLS `mel_to_stft`;
here the mel basis is inverted with a (cached) pseudo-inverse instead, which is much faster
and sounds the same at this quality level (it is used for TensorBoard audio in training).
"""

from __future__ import annotations

import functools

import librosa
import numpy as np

from avjax.audio.mel import DEFAULT, MelSpec, mel_basis, unit_to_amplitude


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
    wave = librosa.griffinlim(
        mag,
        n_iter=n_iter,
        hop_length=spec.hop_length,
        n_fft=spec.n_fft,
        center=True,
        pad_mode=spec.pad_mode,
        length=mel01.shape[1] * spec.hop_length,
        random_state=seed,
    )
    return wave.astype(np.float32)
