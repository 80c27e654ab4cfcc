"""Writing images people open: PNG spectrograms and frame grids."""

from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image


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
