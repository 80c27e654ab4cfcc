"""Optical flow in JAX: bilinear backward warping, end-point error, the colour-wheel picture.

Convention (OpenCV's): a flow is `[..., H, W, 2]` in pixels, `flow[..., 0]` = dx along the
width (columns), `flow[..., 1]` = dy along the height (rows, downwards); the centre of pixel
(row y, column x) has coordinates (x, y).

MCAV's flows are **backward** (Xu, Hu and Lee, BMVC 2023; docs/mcav.md): F_{t+1} points from
each pixel p of frame t+1 to where that content was in frame t, V_{t+1}(p) ~ V_t(p + F_{t+1}(p)),
so `warp(V_t, F_{t+1})` predicts V_{t+1}. The ground truth written by `launch/add_flow.py`
follows the same rule (docs/mcav.md, "Optical flow ground truth").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["BORDERS", "aepe", "end_point_error", "flow_to_rgb", "make_colorwheel", "warp"]

BORDERS = ("replicate", "zeros")


def warp(frames: jax.Array, flow: jax.Array, border: str = "replicate") -> jax.Array:
    """Bilinear backward warp `out(p) = frames(p + flow(p))`.

    Sampling points outside the frame: `border="replicate"` (default) clamps them to the
    nearest edge pixel (the frame extended by repeating its edge); `"zeros"` reads zeros
    outside (bilinear against a zero surround, as OpenCV's `remap` with BORDER_CONSTANT).
    Replicate is the default because content that enters the frame is unseen either way, and
    the edge colour is a better guess of it than black: zeros darken every frame edge a flow
    points out of, and the error compounds when warped frames are warped again. OpenCV's
    TV-L1 (the ground truth) samples a constant-zero surround inside its own iterations, but
    a pixel whose flow leaves the frame has no data term there, so its flow is set by the
    smoothness term from its neighbours; both borders agree wherever the flow stays inside
    the frame, and on M3SO's black background everywhere.

    Differentiable in `frames` and `flow` (the gradient in `flow` is the bilinear one; with
    "replicate" it is zero where the sample point is clamped). jit/vmap friendly; `border` is
    static.

    Args:
      frames: [..., H, W, C] floats (integers are read as float32).
      flow: [..., H, W, 2] pixels (dx, dy); leading dims broadcast against `frames`'.
      border: "replicate" or "zeros".

    Returns:
      [..., H, W, C], the dtype of `frames` (float32 for integer frames).
    """
    if border not in BORDERS:
        raise ValueError(f"border={border!r}: expected one of {BORDERS}")
    frames = jnp.asarray(frames)
    flow = jnp.asarray(flow)
    if frames.ndim < 3 or flow.ndim < 3 or flow.shape[-1] != 2:
        raise ValueError(
            f"expected frames [..., H, W, C] and flow [..., H, W, 2], got "
            f"{frames.shape} and {flow.shape}"
        )
    H, W, C = frames.shape[-3:]
    if flow.shape[-3:-1] != (H, W):
        raise ValueError(f"flow {flow.shape} and frames {frames.shape} differ in H, W")
    out_dtype = frames.dtype if jnp.issubdtype(frames.dtype, jnp.floating) else jnp.float32
    lead = jnp.broadcast_shapes(frames.shape[:-3], flow.shape[:-3])
    img = jnp.broadcast_to(frames, (*lead, H, W, C)).reshape(-1, H * W, C)
    f = jnp.broadcast_to(flow, (*lead, H, W, 2)).reshape(-1, H, W, 2).astype(jnp.float32)
    x = jnp.arange(W, dtype=jnp.float32)[None, None, :] + f[..., 0]  # [N, H, W]
    y = jnp.arange(H, dtype=jnp.float32)[None, :, None] + f[..., 1]
    if border == "replicate":
        x = jnp.clip(x, 0.0, W - 1.0)
        y = jnp.clip(y, 0.0, H - 1.0)
    x0 = jnp.floor(x)
    y0 = jnp.floor(y)
    wx1 = x - x0
    wy1 = y - y0
    x0 = x0.astype(jnp.int32)
    y0 = y0.astype(jnp.int32)
    out = jnp.zeros((img.shape[0], H * W, C), jnp.float32)
    for dy, wy in ((0, 1.0 - wy1), (1, wy1)):
        for dx, wx in ((0, 1.0 - wx1), (1, wx1)):
            xi, yi = x0 + dx, y0 + dy
            weight = wx * wy
            if border == "zeros":
                inside = (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
                weight = jnp.where(inside, weight, 0.0)
            index = jnp.clip(yi, 0, H - 1) * W + jnp.clip(xi, 0, W - 1)  # [N, H, W]
            tap = jnp.take_along_axis(img, index.reshape(-1, H * W, 1), axis=1)
            out = out + tap.astype(jnp.float32) * weight.reshape(-1, H * W, 1)
    return out.reshape(*lead, H, W, C).astype(out_dtype)


def end_point_error(flow_pred: jax.Array, flow_true: jax.Array) -> jax.Array:
    """Per-pixel end-point error |flow_pred - flow_true|_2: [..., H, W, 2] -> [..., H, W].

    Differentiable everywhere (the gradient at a zero difference is taken as 0, not NaN).
    """
    d = jnp.asarray(flow_pred, jnp.float32) - jnp.asarray(flow_true, jnp.float32)
    sq = jnp.sum(d * d, axis=-1)
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def aepe(flow_pred: jax.Array, flow_true: jax.Array, per_frame: bool = False) -> jax.Array:
    """Average end-point error (Baker et al., IJCV 2011): the mean over pixels of the EPE.

    Args:
      flow_pred, flow_true: [..., H, W, 2] pixels (broadcastable).
      per_frame: False: one scalar, the mean over every pixel of every leading index (all
        frames of all clips weigh the same); True: the mean over H, W only, [...] (e.g.
        [B, T] for per-frame tables; weight padded clips out before averaging those).

    Returns:
      float32 scalar, or [...] with `per_frame`.
    """
    epe = end_point_error(flow_pred, flow_true)
    return epe.mean(axis=(-2, -1)) if per_frame else epe.mean()


# --------------------------------------------------------------------------- colour wheel

# Hue segments of the Middlebury colour wheel (Baker et al., "A Database and Evaluation
# Methodology for Optical Flow", ICCV 2007 / IJCV 2011, and its `computeColor` code): red ->
# yellow -> green -> cyan -> blue -> magenta -> red, with these many steps each.
_SEGMENTS = (("RY", 15), ("YG", 6), ("GC", 4), ("CB", 11), ("BM", 13), ("MR", 6))


def make_colorwheel() -> np.ndarray:
    """The 55-entry Middlebury colour wheel, float [55, 3] RGB in [0, 255] (`flow_vis`'s)."""
    rows = []
    for name, n in _SEGMENTS:
        ramp = np.floor(255.0 * np.arange(n) / n)
        full, zero = np.full(n, 255.0), np.zeros(n)
        rows.append(
            {
                "RY": (full, ramp, zero),  # red, green rising
                "YG": (255.0 - ramp, full, zero),  # green, red falling
                "GC": (zero, full, ramp),  # green, blue rising
                "CB": (zero, 255.0 - ramp, full),  # blue, green falling
                "BM": (ramp, zero, full),  # blue, red rising
                "MR": (full, zero, 255.0 - ramp),  # red, blue falling
            }[name]
        )
    return np.concatenate([np.stack(r, axis=1) for r in rows], axis=0)


def flow_to_rgb(flow, max_norm: float | None = None) -> np.ndarray:
    """Flow picture with the Middlebury colour wheel (as the `flow_vis` / `flowiz` packages).

    Hue is the direction, saturation the magnitude relative to `max_norm`: zero flow is white,
    a flow of norm `max_norm` a fully saturated wheel colour (+x red, +y (down) yellow-orange,
    -x cyan-blue, -y violet), beyond it the colour darkened to 75 %. Host-side numpy.

    Args:
      flow: [..., H, W, 2] pixels (dx, dy).
      max_norm: the norm shown fully saturated; None = the largest norm in `flow` (all of it:
        pass one clip to keep its frames on one scale).

    Returns:
      uint8 [..., H, W, 3] RGB.
    """
    flow = np.asarray(flow, np.float64)
    if flow.ndim < 3 or flow.shape[-1] != 2:
        raise ValueError(f"expected flow [..., H, W, 2], got {flow.shape}")
    u, v = flow[..., 0], flow[..., 1]
    rad = np.sqrt(u * u + v * v)
    scale = float(rad.max(initial=0.0)) if max_norm is None else float(max_norm)
    scale += 1e-5  # as flow_vis: keeps a zero field finite
    u, v, rad = u / scale, v / scale, rad / scale
    wheel = make_colorwheel()
    n = wheel.shape[0]
    angle = np.arctan2(-v, -u) / np.pi  # in [-1, 1]; -1 (and 1) for +x
    fk = (angle + 1.0) / 2.0 * (n - 1)
    k0 = np.floor(fk).astype(np.int64)
    k1 = np.where(k0 + 1 == n, 0, k0 + 1)
    frac = (fk - k0)[..., None]
    col = ((1.0 - frac) * wheel[k0] + frac * wheel[k1]) / 255.0
    inside = (rad <= 1.0)[..., None]
    col = np.where(inside, 1.0 - rad[..., None] * (1.0 - col), col * 0.75)
    return np.floor(255.0 * col).astype(np.uint8)
