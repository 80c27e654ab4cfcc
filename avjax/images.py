"""Host-side rendering for people: spectrogram images, frame grids, PNG files.

One place for what the tasks, evaluators and launchers draw: `mel_image` / `mel_pair`
(spectrograms, low frequencies at the bottom), `frames01` (uint8 video frames to [0, 1], the
scaling the Sound2Sight task trains on), `frame_grid` (clips tiled into one GIF frame per
time step) and `save_png`.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

__all__ = [
    "FRAME_SCALES",
    "frame_grid",
    "frames01",
    "mel_image",
    "mel_pair",
    "save_png",
    "to_uint8",
]

FRAME_SCALES = ("per_frame_max", "255")


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] (or uint8) -> uint8, clipping out-of-range values."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_png(path: str | pathlib.Path, image: np.ndarray, scale: int = 1) -> pathlib.Path:
    """Saves `image` ([H, W] grey or [H, W, 3] RGB, floats in [0, 1] or uint8) as PNG."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(to_uint8(image))
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)
    return path


def mel_image(mel: np.ndarray) -> np.ndarray:
    """[F, T] spectrogram in [-1, 1] -> [F, T] image in [0, 1], low frequencies at the bottom."""
    return np.clip((np.asarray(mel, np.float32)[::-1] + 1.0) / 2.0, 0.0, 1.0)


def mel_pair(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Two [F, T] spectrograms in [-1, 1] stacked as one [2F, T] image in [0, 1]."""
    return np.concatenate([mel_image(top), mel_image(bottom)], axis=0)


def frames01(frames: jax.Array, scale: str) -> jax.Array:
    """uint8 frames [..., H, W, C] -> float32 in [0, 1].

    "per_frame_max": each frame divided by its own maximum (the official Sound2Sight
    loader; an all-black frame stays 0); "255": divided by 255.
    """
    f = frames.astype(jnp.float32)
    if scale == "255":
        return f / 255.0
    if scale == "per_frame_max":
        return f / jnp.maximum(jnp.max(f, axis=(-3, -2, -1), keepdims=True), 1.0)
    raise ValueError(f"config.data.frame_scale must be one of {FRAME_SCALES}, got {scale!r}")


def frame_grid(clips: np.ndarray, n_past: int, pad: int = 2) -> np.ndarray:
    """[R, C, T, H, W, ch] in [0, 1] -> uint8 RGB [T, R*(H+pad)+pad, C*(W+pad)+pad, 3].

    The border is green on seen frames (t < n_past) and red on predicted ones.
    """
    r, c, t, h, w, ch = clips.shape
    if ch == 1:
        clips = np.repeat(clips, 3, axis=-1)
    out = np.zeros((t, r * (h + pad) + pad, c * (w + pad) + pad, 3), np.float32)
    out[:n_past, ..., 1] = 0.6
    out[n_past:, ..., 0] = 0.8
    for i in range(r):
        for j in range(c):
            y0, x0 = pad + i * (h + pad), pad + j * (w + pad)
            out[:, y0 : y0 + h, x0 : x0 + w] = clips[i, j]
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)
