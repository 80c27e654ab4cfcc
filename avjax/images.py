"""Host-side rendering for people: spectrogram images, frame grids, PNG files.

One place for what the tasks, evaluators and launchers draw: `mel_image` / `mel_pair`
(spectrograms, low frequencies at the bottom), `mel_figure` (labelled spectrograms for
people: titles, seconds and mel-bin axes, a dB colour bar), `frames01` (uint8 video frames
to [0, 1], the scaling the Sound2Sight task trains on), `frame_grid` (clips tiled into one
GIF frame per time step) and `save_png`.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "FRAME_SCALES",
    "frame_grid",
    "frames01",
    "mel_figure",
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


# mel_figure layout, in pixels.
FIG_LEFT, FIG_RIGHT, FIG_TOP, FIG_GAP, FIG_BOTTOM = 48, 76, 6, 24, 34
FIG_TITLE = 16  # a title row above each panel
FIG_MIN_WIDTH = 480  # panels narrower than this are stretched in time
FIG_ROW_SCALE = 2  # pixels per mel bin
# A dark-blue -> magenta -> yellow colour map (anchors of matplotlib's "magma", sampled).
_MAGMA = np.array(
    [
        [0, 0, 4],
        [28, 16, 68],
        [79, 18, 123],
        [129, 37, 129],
        [181, 54, 122],
        [229, 80, 100],
        [251, 135, 97],
        [254, 194, 135],
        [252, 253, 191],
    ],
    np.float32,
)


def colormap(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (clipped) -> uint8 RGB [..., 3] on a magma-like scale."""
    x = np.clip(np.asarray(x, np.float32), 0.0, 1.0) * (len(_MAGMA) - 1)
    lo = np.minimum(np.floor(x).astype(np.int32), len(_MAGMA) - 2)
    frac = (x - lo)[..., None]
    return (_MAGMA[lo] * (1 - frac) + _MAGMA[lo + 1] * frac + 0.5).astype(np.uint8)


def _nice_step(span: float, max_ticks: int = 10) -> float:
    for step in (0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0):
        if span / step <= max_ticks:
            return step
    return span / max_ticks


def mel_figure_size(num_frames: int, num_bins: int = 80, panels: int = 2) -> tuple[int, int]:
    """(height, width) of the `mel_figure` of `panels` [num_bins, num_frames] mels."""
    x_scale = max(1, math.ceil(FIG_MIN_WIDTH / num_frames))
    panel_h = num_bins * FIG_ROW_SCALE
    height = FIG_TOP + panels * (FIG_TITLE + panel_h) + (panels - 1) * FIG_GAP + FIG_BOTTOM
    return height, FIG_LEFT + num_frames * x_scale + FIG_RIGHT


def mel_figure(
    mels: Sequence[np.ndarray],
    titles: Sequence[str],
    seconds_per_frame: float = 256 / 22050,
) -> np.ndarray:
    """Spectrograms as a picture for people: one panel each, stacked top to bottom.

    Each panel has its title above it, mel bins on the vertical axis (0 at the bottom),
    seconds on the horizontal one, and a colour bar on the right gives the level in dB
    (SpecVQGAN's [0, 1] log-mel is (dB + 100) / 100).

    Args:
      mels: [F, T] log-mels in [0, 1] (SpecVQGAN's unit scale), all the same shape.
      titles: one per panel, e.g. ("input", "reconstruction").
      seconds_per_frame: the hop in seconds (256 / 22050 for SpecVQGAN).

    Returns:
      uint8 RGB [H, W, 3], (H, W) = `mel_figure_size(T, F, len(mels))`.
    """
    mels = [np.asarray(m, np.float32) for m in mels]
    if not mels or len(titles) != len(mels) or any(m.shape != mels[0].shape for m in mels):
        raise ValueError("mel_figure needs one title per mel and mels of one shape [F, T]")
    f, t = mels[0].shape
    height, width = mel_figure_size(t, f, len(mels))
    x_scale = max(1, math.ceil(FIG_MIN_WIDTH / t))
    panel_h, panel_w = f * FIG_ROW_SCALE, t * x_scale
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=11)
    ink = (30, 30, 30)
    y = FIG_TOP
    seconds = t * seconds_per_frame
    x_step = _nice_step(seconds)
    for k, (mel, title) in enumerate(zip(mels, titles)):
        draw.text((FIG_LEFT, y + 1), title, fill=ink, font=font)
        y += FIG_TITLE
        rgb = colormap(mel[::-1])  # low frequencies at the bottom
        rgb = np.repeat(np.repeat(rgb, FIG_ROW_SCALE, axis=0), x_scale, axis=1)
        img.paste(Image.fromarray(rgb), (FIG_LEFT, y))
        draw.rectangle([FIG_LEFT - 1, y - 1, FIG_LEFT + panel_w, y + panel_h], outline=ink)
        for b in range(0, f, 20 if f >= 40 else 10):  # mel-bin ticks
            yy = y + panel_h - 1 - b * FIG_ROW_SCALE
            draw.line([FIG_LEFT - 4, yy, FIG_LEFT - 1, yy], fill=ink)
            draw.text((FIG_LEFT - 6, yy), str(b), fill=ink, font=font, anchor="rm")
        label = Image.new("RGB", (panel_h, 14), (255, 255, 255))
        ImageDraw.Draw(label).text((panel_h // 2, 7), "mel bin", fill=ink, font=font, anchor="mm")
        img.paste(label.rotate(90, expand=True), (4, y))
        last = k == len(mels) - 1
        n_ticks = int(seconds / x_step + 1e-6)
        for i in range(n_ticks + 1):  # time ticks, labelled under the last panel
            xx = FIG_LEFT + round(i * x_step / seconds_per_frame * x_scale)
            draw.line([xx, y + panel_h, xx, y + panel_h + 3], fill=ink)
            if last:
                label = f"{i * x_step:g}"
                draw.text((xx, y + panel_h + 5), label, fill=ink, font=font, anchor="mt")
        if last:
            draw.text(
                (FIG_LEFT + panel_w // 2, y + panel_h + 19),
                "seconds",
                fill=ink,
                font=font,
                anchor="mt",
            )
        y += panel_h + FIG_GAP
    # Colour bar: -100 dB (0) at the bottom to 0 dB (1) at the top, beside the panels.
    top, bottom = FIG_TOP + FIG_TITLE, height - FIG_BOTTOM
    x0 = FIG_LEFT + panel_w + 12
    ramp = colormap(np.linspace(1.0, 0.0, bottom - top))[:, None]
    img.paste(Image.fromarray(np.repeat(ramp, 10, axis=1)), (x0, top))
    draw.rectangle([x0 - 1, top - 1, x0 + 10, bottom], outline=ink)
    for db in (0, -25, -50, -75, -100):
        yy = top + round((-db / 100) * (bottom - top - 1))
        draw.line([x0 + 10, yy, x0 + 13, yy], fill=ink)
        draw.text((x0 + 15, yy), f"{db} dB", fill=ink, font=font, anchor="lm")
    return np.asarray(img)
