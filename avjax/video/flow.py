"""Optical-flow ops in JAX: bilinear backward warping, average end-point error, flow pictures.

Flow convention (docs/mcav.md): a backward flow F_t [..., H, W, 2] maps each pixel p of
frame t to where it was in frame t-1, F[..., 0] = dx (columns), F[..., 1] = dy (rows), in
pixels; backward warping reads V_hat(p) = V(p + F(p)).

(Minimal version written beside the MCAV models; the flow ground-truth work owns this
module.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["aepe", "flow_to_rgb", "warp"]


def warp(frames: jax.Array, flow: jax.Array) -> jax.Array:
    """Bilinear backward warp V_hat(p) = V(p + F(p)), sample positions clamped to the border.

    Args:
      frames: [..., H, W, C].
      flow: [..., H, W, 2] (dx, dy) in pixels; leading dims as `frames`.

    Returns:
      [..., H, W, C] in the dtype of `frames`.
    """
    *lead, h, w, c = frames.shape
    x = frames.reshape(-1, h * w, c)
    f = flow.reshape(-1, h, w, 2).astype(jnp.float32)
    rows, cols = jnp.meshgrid(
        jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij"
    )
    sx = jnp.clip(cols + f[..., 0], 0.0, w - 1.0)
    sy = jnp.clip(rows + f[..., 1], 0.0, h - 1.0)
    x0, y0 = jnp.floor(sx), jnp.floor(sy)
    wx, wy = sx - x0, sy - y0
    x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
    x1, y1 = jnp.minimum(x0 + 1, w - 1), jnp.minimum(y0 + 1, h - 1)

    def gather(yy, xx):
        idx = (yy * w + xx).reshape(x.shape[0], h * w, 1)
        return jnp.take_along_axis(x, idx, axis=1).reshape(-1, h, w, c)

    wx, wy = wx[..., None], wy[..., None]
    out = (
        gather(y0, x0) * (1 - wx) * (1 - wy)
        + gather(y0, x1) * wx * (1 - wy)
        + gather(y1, x0) * (1 - wx) * wy
        + gather(y1, x1) * wx * wy
    )
    return out.reshape(*lead, h, w, c).astype(frames.dtype)


def aepe(pred: jax.Array, true: jax.Array) -> jax.Array:
    """Average end-point error: [..., H, W, 2] pairs -> [...], the mean over pixels of
    the Euclidean distance between the two flow vectors."""
    d = jnp.sqrt(jnp.sum(jnp.square(pred - true), axis=-1))
    return jnp.mean(d, axis=(-2, -1))


def flow_to_rgb(flow: np.ndarray, max_norm: float | None = None) -> np.ndarray:
    """Flow [..., H, W, 2] -> RGB [..., H, W, 3] in [0, 1]: hue = direction, brightness =
    magnitude / `max_norm` (default: the largest magnitude in `flow`); HSV with S = 1."""
    flow = np.asarray(flow, np.float32)
    mag = np.sqrt(np.sum(flow**2, axis=-1))
    norm = float(max_norm) if max_norm else max(float(mag.max()), 1e-6)
    hue = (np.arctan2(-flow[..., 1], -flow[..., 0]) / (2 * np.pi)) % 1.0
    val = np.clip(mag / norm, 0.0, 1.0)
    k = (np.stack([5.0, 3.0, 1.0]) + hue[..., None] * 6.0) % 6.0
    rgb = val[..., None] * (1.0 - np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))
    return rgb.astype(np.float32)
