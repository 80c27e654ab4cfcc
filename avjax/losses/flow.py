"""Flow losses of MCAV's motion stage (docs/mcav.md, Training): flow MSE and edge-aware
smoothness.

(Minimal version written beside the MCAV models; the flow ground-truth work owns this
module.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["flow_mse", "smoothness"]


def flow_mse(pred: jax.Array, true: jax.Array) -> jax.Array:
    """Mean squared error of two flows [..., H, W, 2] (a scalar)."""
    return jnp.mean(jnp.square(pred.astype(jnp.float32) - true.astype(jnp.float32)))


def smoothness(flow: jax.Array, frames: jax.Array) -> jax.Array:
    """Edge-aware smoothness: mean of |grad F|_1 * exp(-|grad V|), x and y terms added.

    Args:
      flow: [..., H, W, 2].
      frames: [..., H, W, C] the frames the flows live on, in [0, 1]; |grad V| is the mean
        over channels of the absolute finite difference.

    Returns:
      A scalar.
    """
    f, v = flow.astype(jnp.float32), frames.astype(jnp.float32)
    fx = jnp.sum(jnp.abs(f[..., :, 1:, :] - f[..., :, :-1, :]), axis=-1)
    fy = jnp.sum(jnp.abs(f[..., 1:, :, :] - f[..., :-1, :, :]), axis=-1)
    vx = jnp.mean(jnp.abs(v[..., :, 1:, :] - v[..., :, :-1, :]), axis=-1)
    vy = jnp.mean(jnp.abs(v[..., 1:, :, :] - v[..., :-1, :, :]), axis=-1)
    return jnp.mean(fx * jnp.exp(-vx)) + jnp.mean(fy * jnp.exp(-vy))
