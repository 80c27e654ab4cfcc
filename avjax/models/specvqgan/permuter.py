"""Token order of SpecVQGAN's transformer: the codebook's [H, W] index map read column-major.

Official `ColumnMajor(H=5, W=53)`: `idx = arange(H*W).reshape(H, W).T.ravel()`, so sequence
position `s = w*H + h`: all H frequency rows of time column 0 (low row first), then column 1.
Generating column by column is what lets a sliding window continue audio in time.
"""

from __future__ import annotations

import numpy as np


def column_major_order(h: int, w: int) -> np.ndarray:
    """Raster position of each sequence position, [H*W] int32 (`seq = raster[..., order]`)."""
    return np.arange(h * w, dtype=np.int32).reshape(h, w).T.ravel()


def to_sequence(codes):
    """[..., H, W] index maps -> [..., H*W] column-major sequences (numpy or jax arrays)."""
    return codes.swapaxes(-1, -2).reshape(*codes.shape[:-2], -1)


def from_sequence(seq, h: int, w: int):
    """[..., H*W] column-major sequences -> [..., H, W] index maps (inverse of `to_sequence`)."""
    return seq.reshape(*seq.shape[:-1], w, h).swapaxes(-1, -2)
