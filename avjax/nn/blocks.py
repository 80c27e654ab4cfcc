"""Convolutional building blocks of the taming/SpecVQGAN autoencoder, channels-last.

Mirrors `specvqgan/modules/diffusionmodules/model.py`: GroupNorm(32, eps 1e-6), swish,
ResnetBlock with a 1x1 `nin_shortcut`, single-head AttnBlock over all H*W positions,
pad-then-stride-2 Downsample and nearest-x2 Upsample. Convolutions are initialised like
PyTorch's defaults (kernel and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))) so training from
scratch starts from the same distribution as the official code.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from avjax.nn.layers import Conv

Dtype = Any
Padding = str | tuple[tuple[int, int], tuple[int, int]]

swish = nn.swish  # x * sigmoid(x), the autoencoder's only nonlinearity.

# PyTorch Conv2d default weight init, kaiming_uniform(a=sqrt(5)) == U(±1/sqrt(fan_in)).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch Conv2d/Linear default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_conv(
    features: int,
    kernel_size: int,
    in_features: int,
    *,
    strides: int = 1,
    padding: Padding | None = None,
    use_bias: bool = True,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> Conv:
    """A square routed `Conv` with PyTorch default init; padding defaults to k//2 on each side.

    Args:
        features: output channels.
        kernel_size: k of the k x k kernel; the kernel param is [k, k, in_features, features].
        in_features: input channels (only used for the bias init's fan-in).
    """
    if padding is None:
        p = kernel_size // 2
        padding = ((p, p), (p, p))
    return Conv(
        features,
        (kernel_size, kernel_size),
        strides=(strides, strides),
        padding=padding,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=torch_kernel_init,
        bias_init=torch_bias_init(in_features * kernel_size * kernel_size),
        name=name,
    )


class Normalize(nn.GroupNorm):
    """GroupNorm(32 groups, eps 1e-6, affine) over the channel axis of [B, H, W, C].

    Channels are split into contiguous groups, as in torch. Statistics use the two-pass
    variance (torch's numerics) rather than E[x^2] - E[x]^2.
    """

    num_groups: int | None = 32
    epsilon: float = 1e-6
    use_fast_variance: bool = False


class ResnetBlock(nn.Module):
    """GN, swish, conv3x3, GN, swish, dropout, conv3x3, plus a (1x1 `nin_shortcut`) residual.

    Args (call): x [B, H, W, C_in]; train enables dropout (needs the `dropout` rng if > 0).
    Returns: [B, H, W, out_channels].
    """

    out_channels: int | None = None
    dropout: float = 0.0
    num_groups: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c_in = x.shape[-1]
        c_out = self.out_channels or c_in
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = swish(Normalize(self.num_groups, name="norm1", **kw)(x))
        h = torch_conv(c_out, 3, c_in, name="conv1", **kw)(h)
        h = swish(Normalize(self.num_groups, name="norm2", **kw)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = torch_conv(c_out, 3, c_out, name="conv2", **kw)(h)
        if c_in != c_out:
            x = torch_conv(c_out, 1, c_in, name="nin_shortcut", **kw)(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, no positional encoding.

    GN, then 1x1 convs q/k/v, softmax(q k^T / sqrt(C)) over keys (in float32), 1x1
    `proj_out`, residual add. Args (call): x [B, H, W, C]. Returns: [B, H, W, C].
    """

    num_groups: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        hn = Normalize(self.num_groups, name="norm", **kw)(x)
        q, k, v = (torch_conv(c, 1, c, name=n, **kw)(hn).reshape(b, h * w, c) for n in "qkv")
        logits = jnp.einsum("bqc,bkc->bqk", q, k).astype(jnp.float32) * c**-0.5
        attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bqk,bkc->bqc", attn, v).reshape(b, h, w, c)
        return x + torch_conv(c, 1, c, name="proj_out", **kw)(out)


class Downsample(nn.Module):
    """Halves H and W: zero-pad bottom/right by one, then conv3x3 stride 2 VALID.

    Args (call): x [B, H, W, C]. Returns: [B, H // 2, W // 2, C] (80 -> 40, 848 -> 424).
    """

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        conv = torch_conv(
            c,
            3,
            c,
            strides=2,
            padding=((0, 1), (0, 1)),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv",
        )
        return conv(x)


class Upsample(nn.Module):
    """Doubles H and W: nearest-neighbour x2 (repeat), then conv3x3 (padding 1).

    Args (call): x [B, H, W, C]. Returns: [B, 2H, 2W, C].
    """

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        conv = torch_conv(c, 3, c, dtype=self.dtype, param_dtype=self.param_dtype, name="conv")
        return conv(x)
