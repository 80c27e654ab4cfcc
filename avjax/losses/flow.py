"""Flow losses of MCAV's motion stage (Xu, Hu and Lee, BMVC 2023; docs/mcav.md, Training):
L_MME = L_flow + lambda_smooth * L_smooth.

Normalisation (the paper writes sums over t; its code is not public): both are means, so
their scale does not change with the clip length, batch or image size. `flow_mse` averages
over every element, both flow components included (PyTorch's `MSELoss` default);
`smoothness` averages over positions, summing the two flow components and the two
directions. Relative to per-pixel sums, L_flow is halved, so lambda_smooth = 0.01 here weighs
the smoothness twice as much as with summed squared end-point errors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["flow_mse", "smoothness"]


def flow_mse(flow_pred: jax.Array, flow_true: jax.Array) -> jax.Array:
    """L_flow: the mean over every element (both components) of (pred - true)^2.

    Args:
      flow_pred, flow_true: [..., H, W, 2] pixels.

    Returns:
      float32 scalar; equals half the mean squared end-point error.
    """
    d = jnp.asarray(flow_pred, jnp.float32) - jnp.asarray(flow_true, jnp.float32)
    return jnp.mean(d * d)


def smoothness(flow: jax.Array, frames: jax.Array) -> jax.Array:
    """L_smooth, edge-aware first-order smoothness: |grad F|_1 exp(-|grad V|).

    With forward differences d_x G(y, x) = G(y, x + 1) - G(y, x) (and d_y alike along rows):
      mean_{y, x} (|d_x F_u| + |d_x F_v|) exp(-mean_c |d_x V_c|)
      + mean_{y, x} (|d_y F_u| + |d_y F_v|) exp(-mean_c |d_y V_c|),
    each mean over the positions where its difference exists ([..., H, W-1] and
    [..., H-1, W]) and every leading index. |grad V| is the mean over channels of the
    absolute differences (as in Godard et al.'s edge-aware disparity smoothness), so the edge
    weight of a grey and an RGB frame agree. Flow edges are free where the frame has edges.

    Args:
      flow: [..., H, W, 2] pixels; F_t, the backward flow into frame t.
      frames: [..., H, W, C] in [0, 1] (the weight assumes this scale); V_t, the frame F_t
        warps into (its edges are where F_t may change), leading dims as `flow`'s.

    Returns:
      float32 scalar.
    """
    f = jnp.asarray(flow, jnp.float32)
    v = jnp.asarray(frames, jnp.float32)
    fx = jnp.sum(jnp.abs(f[..., :, 1:, :] - f[..., :, :-1, :]), axis=-1)
    fy = jnp.sum(jnp.abs(f[..., 1:, :, :] - f[..., :-1, :, :]), axis=-1)
    vx = jnp.mean(jnp.abs(v[..., :, 1:, :] - v[..., :, :-1, :]), axis=-1)
    vy = jnp.mean(jnp.abs(v[..., 1:, :, :] - v[..., :-1, :, :]), axis=-1)
    return jnp.mean(fx * jnp.exp(-vx)) + jnp.mean(fy * jnp.exp(-vy))
