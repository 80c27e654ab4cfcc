"""Pooling helpers that reproduce PyTorch's semantics exactly (for checkpoint parity)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def adaptive_bins(in_size: int, out_size: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive-pooling bins: `[floor(i*In/Out), ceil((i+1)*In/Out))` for each i.

    Bins may overlap (non-divisible sizes) and repeat (`out_size > in_size`).
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"adaptive pooling needs positive sizes, got in={in_size} out={out_size}")
    return [
        ((i * in_size) // out_size, -(-((i + 1) * in_size) // out_size)) for i in range(out_size)
    ]


def _pool_axis(x: jnp.ndarray, axis: int, out_size: int) -> jnp.ndarray:
    bins = adaptive_bins(x.shape[axis], out_size)
    slabs = [
        jnp.mean(jax.lax.slice_in_dim(x, s, e, axis=axis), axis=axis, keepdims=True)
        for s, e in bins
    ]
    return jnp.concatenate(slabs, axis=axis)


def adaptive_avg_pool2d(x: jnp.ndarray, output_size: int | tuple[int, int]) -> jnp.ndarray:
    """`torch.nn.AdaptiveAvgPool2d` for channels-last input.

    Each bin is a rectangle (rows x cols), so pooling rows then columns gives the same mean.

    Args:
      x: [B, H, W, C].
      output_size: (out_h, out_w), or one int for both.
    Returns:
      [B, out_h, out_w, C], same dtype as `x`.
    """
    if x.ndim != 4:
        raise ValueError(f"adaptive_avg_pool2d expects [B, H, W, C], got shape {x.shape}")
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    if x.shape[1:3] == (out_h, out_w):
        return x
    x = _pool_axis(x, 1, out_h)
    return _pool_axis(x, 2, out_w)
