"""PatchGAN discriminator of the SpecVQGAN codebook loss (`NLayerDiscriminator`, BatchNorm).

Port of `specvqgan/modules/discriminator/model.py`: conv k4 s2 p1 + LeakyReLU(0.2), then
`n_layers - 1` more stride-2 and one stride-1 conv (no bias) + BatchNorm + LeakyReLU, then a
k4 s1 p1 conv to one logit per patch. Layer names follow torch's `main.{idx}` Sequential
indices (`main_0`, `main_2`, `main_3` ...), so the converter maps one to one.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from avjax.nn import Conv
from avjax.nn.blocks import torch_bias_init

Dtype = Any


def _bn_scale_init(key, shape, dtype=jnp.float32):
    """`weights_init`: BatchNorm weight ~ N(1, 0.02)."""
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator; 80x848 input -> 8x104 logit map (n_layers=3).

    BatchNorm uses torch's momentum 0.1 (flax momentum 0.9) and eps 1e-5, batch statistics
    when `train` and running averages otherwise. Set `axis_name` to sync statistics across
    a mapped axis (the official configs use SyncBatchNorm); under jit with sharded inputs the
    batch mean is already global.

    Args (call): x [B, F, T, C_in]; train selects batch statistics and updates
        `batch_stats` (apply with mutable=["batch_stats"]).
    Returns: logits [B, f, t, 1].
    """

    ndf: int = 64
    n_layers: int = 3
    axis_name: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        pad = ((1, 1), (1, 1))
        w_init = nn.initializers.normal(0.02)

        def conv(features, stride, use_bias, idx, c_in):
            return Conv(
                features,
                (4, 4),
                strides=(stride, stride),
                padding=pad,
                use_bias=use_bias,
                kernel_init=w_init,
                bias_init=torch_bias_init(c_in * 16),
                name=f"main_{idx}",
                **kw,
            )

        h = nn.leaky_relu(conv(self.ndf, 2, True, 0, x.shape[-1])(x), 0.2)
        idx, mult = 2, 1
        for n in range(1, self.n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < self.n_layers else 1
            h = conv(self.ndf * mult, stride, False, idx, self.ndf * prev)(h)
            h = nn.BatchNorm(
                use_running_average=not train,
                momentum=0.9,
                epsilon=1e-5,
                scale_init=_bn_scale_init,
                axis_name=self.axis_name,
                name=f"main_{idx + 1}",
                **kw,
            )(h)
            h = nn.leaky_relu(h, 0.2)
            idx += 3
        return conv(1, 1, True, idx, self.ndf * mult)(h)
