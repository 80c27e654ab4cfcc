"""ResNet-50 v1.5 as torchvision's `resnet50` (stride in the 3x3 conv), channels-last.

Module names mirror torchvision (`conv1`, `bn1`, `layer1_0/conv1`, `layer1_0/downsample_0`,
`fc`) so `avjax.convert.resnet` is a renaming. Used frozen (BatchNorm running statistics) as
the ImageNet feature extractor behind SpecVQGAN's `feature_resnet50_dim2048_21.5fps`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from avjax.nn import Conv, max_pool

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 (x4) with a projection shortcut when the shape changes."""

    planes: int
    stride: int = 1
    downsample: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = lambda ch, k, s, p, name: Conv(
            ch,
            (k, k),
            strides=s,
            padding=((p, p), (p, p)),
            use_bias=False,
            kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )
        bn = lambda name, zero=False: nn.BatchNorm(
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            scale_init=nn.initializers.zeros if zero else nn.initializers.ones,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )
        y = nn.relu(bn("bn1")(conv(self.planes, 1, 1, 0, "conv1")(x)))
        y = nn.relu(bn("bn2")(conv(self.planes, 3, self.stride, 1, "conv2")(y)))
        y = bn("bn3")(conv(4 * self.planes, 1, 1, 0, "conv3")(y))
        if self.downsample:
            x = bn("downsample_1")(conv(4 * self.planes, 1, self.stride, 0, "downsample_0")(x))
        return nn.relu(x + y)


class ResNet(nn.Module):
    """torchvision ResNet with Bottleneck blocks (ResNet-50 by default).

    Attributes:
      stage_sizes: blocks per stage (3, 4, 6, 3 for ResNet-50).
      width: channels of the stem and the first stage's bottleneck (64).
      num_classes: `fc` outputs; 0 drops `fc` and returns the pooled features (the
        `fc = Identity` of the feature extractor).
    """

    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    width: int = 64
    num_classes: int = 0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """ImageNet-normalised RGB [B, H, W, 3] -> [B, 4 * 8 * width] pool features or logits."""
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"ResNet expects [B, H, W, 3] images, got shape {x.shape}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = Conv(
            self.width,
            (7, 7),
            strides=2,
            padding=((3, 3), (3, 3)),
            use_bias=False,
            kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
            name="conv1",
            **kw,
        )(x.astype(self.dtype))
        x = nn.BatchNorm(
            use_running_average=not train, momentum=0.9, epsilon=1e-5, name="bn1", **kw
        )(x)
        x = max_pool(nn.relu(x), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for i, n in enumerate(self.stage_sizes):
            for j in range(n):
                x = Bottleneck(
                    self.width * 2**i,
                    stride=2 if (i > 0 and j == 0) else 1,
                    downsample=j == 0,
                    name=f"layer{i + 1}_{j}",
                    **kw,
                )(x, train)
        x = jnp.mean(x, axis=(1, 2))
        if self.num_classes:
            x = nn.Dense(self.num_classes, name="fc", **kw)(x)
        return x
