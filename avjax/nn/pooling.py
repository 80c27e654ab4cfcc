"""Pooling helpers that reproduce PyTorch's semantics exactly (for checkpoint parity)."""

from __future__ import annotations

import functools

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


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool(x: jnp.ndarray, k: int) -> jnp.ndarray:
    """`torch.nn.functional.max_pool2d(x, k)` (stride k, floor) for channels-last input.

    [B, H, W, C] -> [B, H // k, W // k, C]. The gradient goes to the first maximum of each
    window in row-major order, as PyTorch's and `lax.reduce_window`'s; here it is k*k
    elementwise selects, where XLA:CPU's select-and-scatter takes ~3x longer (232 against
    73 ms on VGGish-ish's [4, 80, 848, 64] pool).
    """
    return functools.reduce(jnp.maximum, _window_taps(x, k))


def _window_taps(x, k):
    """The k*k strided views [B, H // k, W // k, C] of a k x k / stride-k pool, row-major."""
    h, w = x.shape[1] // k * k, x.shape[2] // k * k
    return [x[:, i:h:k, j:w:k] for i in range(k) for j in range(k)]


def _max_pool_fwd(x, k):
    y = max_pool(x, k)
    return y, (x, y)


def _max_pool_bwd(k, res, g):
    x, y = res
    taken = jnp.zeros(y.shape, bool)
    grads = []
    for tap in _window_taps(x, k):
        first = (tap == y) & ~taken
        grads.append(jnp.where(first, g, 0).astype(x.dtype))
        taken = taken | first
    b, ho, wo, c = y.shape
    dx = jnp.stack(grads).reshape(k, k, b, ho, wo, c).transpose(2, 3, 0, 4, 1, 5)
    dx = dx.reshape(b, ho * k, wo * k, c)
    return (jnp.pad(dx, ((0, 0), (0, x.shape[1] - ho * k), (0, x.shape[2] - wo * k), (0, 0))),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
