"""DCGAN frame encoder / decoder with skips and the STFT audio encoder.

Reference: docs/sound2sight.md 1.3, 1.4, 3.

Two variants, picked by `image_size`: 48 (`models/dcgan_48.py`, M3SO, 1 channel) and 64
(`drums_dcgan_64.py` / `painting_dcgan_64.py`, 3 channels). The audio encoder variant is
picked by the per-frame STFT patch: 23x21 (M3SO) or 45x17 (Drums / Painting). All modules
take `[..., H, W, C]` with any leading dims (e.g. `[B, T]`); BatchNorm statistics are
per leading index beyond the batch (see `layers.FrameBatchNorm`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from avjax.models.sound2sight.layers import ConvBlock, Dtype

IMAGE_SIZES = (48, 64)
AUDIO_SHAPES = ((23, 21), (45, 17))


def _check_image_size(size: int):
    if size not in IMAGE_SIZES:
        raise ValueError(f"Sound2Sight image_size must be one of {IMAGE_SIZES}, got {size}")


class FrameEncoder(nn.Module):
    """Frame `[..., S, S, C]` in [0, 1] -> (embedding `[..., dim]` in (-1, 1), skips).

    48: three stride-2 convs (nf, 2nf, 4nf) + Conv k6 -> dim; skips at 24, 12, 6.
    64: four stride-2 convs (nf .. 8nf) + Conv k4 -> dim; skips at 32, 16, 8, 4.
    """

    dim: int = 128
    nf: int = 64
    image_size: int = 48
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool):
        _check_image_size(self.image_size)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        levels = 3 if self.image_size == 48 else 4
        skips = []
        h = x.astype(self.dtype)
        for i in range(levels):
            h = ConvBlock(self.nf * 2**i, 4, name=f"c{i + 1}", **kw)(h, train)
            skips.append(h)
        k = 6 if self.image_size == 48 else 4
        h = ConvBlock(self.dim, k, (1, 1), (0, 0), act="tanh", name="c_out", **kw)(h, train)
        return h.reshape((*h.shape[:-3], self.dim)), tuple(skips)


class FrameDecoder(nn.Module):
    """(embedding `[..., dim]`, encoder skips) -> frame `[..., S, S, channels]` in (0, 1).

    Every level concatenates [decoder feature, skip] on channels, as the official code.
    """

    channels: int = 1
    nf: int = 64
    image_size: int = 48
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, g: jax.Array, skips, train: bool) -> jax.Array:
        _check_image_size(self.image_size)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        levels = len(skips)
        k = 6 if self.image_size == 48 else 4
        d = g.reshape((*g.shape[:-1], 1, 1, g.shape[-1])).astype(self.dtype)
        d = ConvBlock(
            self.nf * 2 ** (levels - 1), k, (1, 1), (0, 0), transpose=True, name="upc1", **kw
        )(d, train)
        for j, i in enumerate(range(levels - 1, 0, -1)):
            d = jnp.concatenate([d, skips[i]], axis=-1)
            d = ConvBlock(self.nf * 2 ** (i - 1), 4, transpose=True, name=f"upc{j + 2}", **kw)(
                d, train
            )
        d = jnp.concatenate([d, skips[0]], axis=-1)
        return ConvBlock(
            self.channels, 4, transpose=True, norm=False, act="sigmoid", name="upc_out", **kw
        )(d, train)


class AudioEncoder(nn.Module):
    """Per-frame STFT patch `[..., Fa, Ta]` -> embedding `[..., dim]` in (-1, 1).

    23x21 (`dcgan_48.encoder_audio_stft`): Conv k4 s1 -> 20x18, three stride-2 convs,
    Conv k2 -> 1x1. 45x17 (`drums_dcgan_64`): Conv k4 s(2,1) -> 21x14, Conv k4 s(2,1)
    pad (2,0) -> 11x11, two stride-2 convs, Conv k2 -> 1x1.
    """

    dim: int = 128
    nf: int = 64
    audio_shape: tuple[int, int] = (23, 21)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, a: jax.Array, train: bool) -> jax.Array:
        shape = tuple(self.audio_shape)
        if shape not in AUDIO_SHAPES:
            raise ValueError(f"Sound2Sight audio_shape must be one of {AUDIO_SHAPES}, got {shape}")
        if tuple(a.shape[-2:]) != shape:
            raise ValueError(f"audio patches must be [..., {shape[0]}, {shape[1]}], got {a.shape}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = a[..., None].astype(self.dtype)
        if shape == (23, 21):
            h = ConvBlock(self.nf, 4, (1, 1), (0, 0), name="c1", **kw)(h, train)
            h = ConvBlock(self.nf * 2, 4, name="c2", **kw)(h, train)
        else:
            h = ConvBlock(self.nf, 4, (2, 1), (0, 0), name="c1", **kw)(h, train)
            h = ConvBlock(self.nf * 2, 4, (2, 1), (2, 0), name="c2", **kw)(h, train)
        h = ConvBlock(self.nf * 4, 4, name="c3", **kw)(h, train)
        h = ConvBlock(self.nf * 8, 4, name="c4", **kw)(h, train)
        h = ConvBlock(self.dim, 2, (1, 1), (0, 0), act="tanh", name="c5", **kw)(h, train)
        return h.reshape((*h.shape[:-3], self.dim))
