"""Block-localisation IoU of a predicted frame (M3SO's occluding block), jittable.

Defined here (the Sound2Sight paper reports it but gives no formula; docs/sound2sight.md):
the true block mask is the block's box, from the clip's `block` = (x, y, size, present) with
x horizontal; the predicted mask is the predicted pixels above 0.5. Pixels of the
ground-truth digit outside the box are left out of both sets, so drawing the digit right is
neither rewarded nor penalised, while bright pixels anywhere else count as a wrongly placed
block. Callers skip clips without a block (`present` 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def block_iou(pred: jax.Array, gt: jax.Array, block: jax.Array) -> jax.Array:
    """IoU of the predicted block in frames [..., H, W, C] vs the box `block` [..., 4] -> [...].

    Args:
      pred: predicted frames in [0, 1], [..., H, W, C].
      gt: the true frames, same shape (their digit pixels outside the box are ignored).
      block: int [..., 4], (x, y, size, present) in pixels.

    Returns:
      [...] IoU in [0, 1] (0 where the union is empty).
    """
    h, w = pred.shape[-3], pred.shape[-2]
    x0, y0, size = block[..., 0], block[..., 1], block[..., 2]
    rows, cols = jnp.arange(h), jnp.arange(w)
    ex = lambda v: v[..., None, None]
    in_row = (rows[:, None] >= ex(y0)) & (rows[:, None] < ex(y0 + size))
    in_col = (cols[None, :] >= ex(x0)) & (cols[None, :] < ex(x0 + size))
    box = in_row & in_col  # [..., H, W]
    pred_on = jnp.max(pred, axis=-1) > 0.5
    digit = (jnp.max(gt, axis=-1) > 0.5) & ~box
    inter = jnp.sum(pred_on & box & ~digit, axis=(-2, -1))
    union = jnp.sum((pred_on | box) & ~digit, axis=(-2, -1))
    return inter / jnp.maximum(union, 1)
