"""The one check of a user's SpecVQGAN log-mel (`*_mel.npy`), for training and every launcher.

The official features (`feature_extraction/extract_mel_spectrogram.py`) are float32
[80, 860] in [0, 1]. A file that is not that (integer or object dtype, wrong shape, NaN,
values outside [0, 1], truncated) is refused with a `UserError` naming the file, so
training, `launch/codec.py` and the evaluators accept and reject the same files.
"""

from __future__ import annotations

import os

import numpy as np

from avjax.errors import UserError
from avjax.io_safety import load_npy

__all__ = ["NUM_MELS", "RANGE_TOL", "check_mel", "load_mel"]

NUM_MELS = 80
RANGE_TOL = 1e-4  # allowed excursion outside [0, 1] before a file counts as corrupt


def check_mel(
    mel: np.ndarray,
    path: str | os.PathLike,
    *,
    min_frames: int = 1,
    max_frames: int | None = None,
) -> np.ndarray:
    """Validates a log-mel array read from `path`.

    Args:
      mel: the array.
      path: where it came from (named in every error).
      min_frames, max_frames: accepted range of T.

    Returns:
      [80, T] float32 in [0, 1] (float64 is cast; excursions up to 1e-4 are clipped).

    Raises:
      UserError naming the file: non-floating dtype, shape not [80, T] with T in range,
      non-finite values, values outside [0, 1].
    """
    path = os.fspath(path)
    t_range = f">={min_frames}" if max_frames is None else f"{min_frames}..{max_frames}"
    expected = f"[{NUM_MELS}, {t_range}] (mel bins, time frames)"
    if not np.issubdtype(mel.dtype, np.floating):
        raise UserError(f"{path}: log-mel has dtype {mel.dtype}, expected float32 values in [0, 1]")
    if (
        mel.ndim != 2
        or mel.shape[0] != NUM_MELS
        or mel.shape[1] < min_frames
        or (max_frames is not None and mel.shape[1] > max_frames)
    ):
        raise UserError(f"{path}: log-mel has shape {mel.shape}, expected {expected}")
    mel = mel.astype(np.float32, copy=False)
    bad = int((~np.isfinite(mel)).sum())
    if bad:
        raise UserError(f"{path}: log-mel has {bad} non-finite values (NaN or inf)")
    lo, hi = float(mel.min()), float(mel.max())
    if lo < -RANGE_TOL or hi > 1.0 + RANGE_TOL:
        raise UserError(
            f"{path}: log-mel values span [{lo:.4g}, {hi:.4g}], expected [0, 1] "
            "(the official (20 log10(mel) + 80) / 100 scale, clipped)"
        )
    return np.clip(mel, 0.0, 1.0) if (lo < 0.0 or hi > 1.0) else mel


def load_mel(
    path: str | os.PathLike, *, min_frames: int = 1, max_frames: int | None = None
) -> np.ndarray:
    """Reads and validates one `*_mel.npy` (`io_safety.load_npy`, `check_mel`); thread-safe.

    Returns:
      [80, T] float32 in [0, 1].
    """
    return check_mel(load_npy(path), path, min_frames=min_frames, max_frames=max_frames)
