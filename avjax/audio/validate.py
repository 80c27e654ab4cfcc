"""The one check of a user's SpecVQGAN log-mel (`*_mel.npy`), for training and every launcher.

The official features (`feature_extraction/extract_mel_spectrogram.py`) are float32
[80, 860] in [0, 1]. A file that is not that (integer or object dtype, wrong shape, NaN,
values outside [0, 1], truncated) is refused with a `UserError` naming the file, so
training, `launch/codec.py` and the evaluators accept and reject the same files.
"""

from __future__ import annotations

import io
import os
import threading

import numpy as np

from avjax.errors import UserError

__all__ = ["NUM_MELS", "RANGE_TOL", "check_mel", "load_mel", "read_npy"]

NUM_MELS = 80
RANGE_TOL = 1e-4  # allowed excursion outside [0, 1] before a file counts as corrupt

_NPY_LOCK = threading.Lock()


def read_npy(path: str | os.PathLike, data: bytes | None = None) -> np.ndarray:
    """Reads one `.npy` array without unpickling; thread-safe.

    Args:
      path: the file (named in errors; read unless `data` is given).
      data: the file's bytes, when already read.

    Returns:
      The array.

    Raises:
      UserError naming the file: missing, not a .npy file, truncated, or an object array.
    """
    path = os.fspath(path)
    if data is None:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise UserError(f"{path}: cannot read ({e.strerror or e})") from e
    # np.load parses the header with ast.literal_eval, which intermittently raises
    # SystemError under threads on CPython 3.11.7: parse under a lock.
    with _NPY_LOCK:
        buf = io.BytesIO(data)
        try:
            version = np.lib.format.read_magic(buf)
            if version == (1, 0):
                _, _, dtype = np.lib.format.read_array_header_1_0(buf)
            elif version == (2, 0):
                _, _, dtype = np.lib.format.read_array_header_2_0(buf)
            else:
                dtype = None
        except Exception as e:
            raise UserError(
                f"{path}: unreadable, not a .npy array file ({type(e).__name__}: {e})"
            ) from e
        if dtype is not None and dtype.hasobject:
            raise UserError(
                f"{path}: holds Python objects (dtype {dtype}), not a numeric array; "
                "save the spectrogram with np.save(path, mel.astype(np.float32))"
            )
        buf.seek(0)
        try:
            return np.load(buf, allow_pickle=False)
        except Exception as e:
            raise UserError(
                f"{path}: unreadable .npy file, truncated or corrupt ({type(e).__name__})"
            ) from e


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
    """Reads and validates one `*_mel.npy` (see `read_npy`, `check_mel`); thread-safe.

    Returns:
      [80, T] float32 in [0, 1].
    """
    return check_mel(read_npy(path), path, min_frames=min_frames, max_frames=max_frames)
