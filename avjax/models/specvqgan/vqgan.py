"""SpecVQGAN's spectrogram VQGAN (taming `VQModel`): encoder, vector quantizer, decoder.

Channels-last port of `specvqgan/models/vqgan.py` and `modules/diffusionmodules/model.py`.
Spectrograms enter as [B, F=80, T=848, 1] in [-1, 1] and are coded on a [B, 5, 53] grid of
codebook indices (raster order r = h * 53 + w). Parameter names mirror the torch module
names (`encoder.down.0.block.1.norm1.weight` -> `encoder/down_0/block_1/norm1/scale`);
see `avjax.convert.specvqgan` for the full rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from avjax.nn.blocks import (
    AttnBlock,
    Downsample,
    Normalize,
    ResnetBlock,
    Upsample,
    swish,
    torch_conv,
)

Dtype = Any


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook lookup with taming's legacy VQ loss and straight-through.

    loss = mean((sg[z_q] - z)^2) + beta * mean((z_q - sg[z])^2): full weight on the encoder
    commitment term, beta on the codebook term (reverse of the VQ-VAE paper, as in the
    official code). Distances and the loss are always computed in float32; z_q is returned
    in `dtype`.
    """

    n_e: int
    e_dim: int
    beta: float = 0.25
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        bound = 1.0 / self.n_e

        def init(key, shape, dtype=jnp.float32):
            return jax.random.uniform(key, shape, dtype, -bound, bound)

        self.embedding = self.param("embedding", init, (self.n_e, self.e_dim), self.param_dtype)

    def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        """Quantizes z.

        Args:
            z: [B, h, w, e_dim] encoder output (after quant_conv).
        Returns:
            z_q [B, h, w, e_dim] in `dtype` (straight-through: forward value = codebook entries,
            gradient = identity onto z), loss scalar, info {"indices": [B, h, w] int32,
            "perplexity": scalar}.
        """
        if z.shape[-1] != self.e_dim:
            raise ValueError(f"VectorQuantizer.e_dim={self.e_dim} but z has shape {z.shape}")
        z = z.astype(jnp.float32)
        emb = self.embedding.astype(jnp.float32)
        flat = z.reshape(-1, self.e_dim)
        d = (
            jnp.sum(flat**2, axis=1, keepdims=True)
            + jnp.sum(emb**2, axis=1)[None, :]
            - 2.0 * jnp.matmul(flat, emb.T, precision=lax.Precision.HIGHEST)
        )
        indices = jnp.argmin(d, axis=1).astype(jnp.int32)
        z_q = jnp.take(emb, indices, axis=0).reshape(z.shape)
        sg = lax.stop_gradient
        loss = jnp.mean((sg(z_q) - z) ** 2) + self.beta * jnp.mean((z_q - sg(z)) ** 2)
        z_q = z + sg(z_q - z)
        e_mean = jnp.mean(jax.nn.one_hot(indices, self.n_e, dtype=jnp.float32), axis=0)
        perplexity = jnp.exp(-jnp.sum(e_mean * jnp.log(e_mean + 1e-10)))
        info = {"indices": indices.reshape(z.shape[:-1]), "perplexity": perplexity}
        return z_q.astype(self.dtype), loss, info

    def embed(self, indices: jax.Array) -> jax.Array:
        """Codebook entries for `indices` [B, h, w] (any int shape) -> [..., e_dim] in `dtype`."""
        return jnp.take(self.embedding, indices, axis=0).astype(self.dtype)


class _Level(nn.Module):
    """One resolution level: `num_blocks` ResnetBlocks (an AttnBlock after each when
    `use_attn`), then an optional `downsample` / `upsample`. Torch: `down[i]` / `up[i]`."""

    out_channels: int
    num_blocks: int
    use_attn: bool
    resample: str | None  # "down", "up" or None
    dropout: float
    num_groups: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        for j in range(self.num_blocks):
            x = ResnetBlock(
                self.out_channels, self.dropout, self.num_groups, name=f"block_{j}", **kw
            )(x, train)
            if self.use_attn:
                x = AttnBlock(self.num_groups, name=f"attn_{j}", **kw)(x)
        if self.resample == "down":
            x = Downsample(name="downsample", **kw)(x)
        elif self.resample == "up":
            x = Upsample(name="upsample", **kw)(x)
        return x


class _Mid(nn.Module):
    """Middle stage at the lowest resolution: block_1, attn_1, block_2 (constant width)."""

    dropout: float
    num_groups: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = ResnetBlock(None, self.dropout, self.num_groups, name="block_1", **kw)(x, train)
        x = AttnBlock(self.num_groups, name="attn_1", **kw)(x)
        return ResnetBlock(None, self.dropout, self.num_groups, name="block_2", **kw)(x, train)


class Encoder(nn.Module):
    """Spectrogram -> latent: conv_in, levels `down_i` (2x downsample except the last), mid,
    GN + swish + conv_out to `z_channels`.

    Attention goes after every block of a level whose tracked width `curr_res` (starting at
    `resolution`, halved per level) is in `attn_resolutions`, as in the official code.
    Args (call): x [B, F, T, C_in]. Returns: [B, F / 2^(L-1), T / 2^(L-1), z_channels].
    """

    ch: int = 128
    ch_mult: Sequence[int] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (53,)
    resolution: int = 848
    z_channels: int = 256
    dropout: float = 0.0
    num_groups: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        n_levels = len(self.ch_mult)
        h = torch_conv(self.ch, 3, x.shape[-1], name="conv_in", **kw)(x)
        curr_res = self.resolution
        for i, mult in enumerate(self.ch_mult):
            last = i == n_levels - 1
            h = _Level(
                self.ch * mult,
                self.num_res_blocks,
                curr_res in self.attn_resolutions,
                None if last else "down",
                self.dropout,
                self.num_groups,
                name=f"down_{i}",
                **kw,
            )(h, train)
            if not last:
                curr_res //= 2
        h = _Mid(self.dropout, self.num_groups, name="mid", **kw)(h, train)
        h = swish(Normalize(self.num_groups, name="norm_out", **kw)(h))
        return torch_conv(self.z_channels, 3, h.shape[-1], name="conv_out", **kw)(h)


class Decoder(nn.Module):
    """Latent -> spectrogram: conv_in, mid, levels `up_{L-1}` ... `up_0` (num_res_blocks + 1
    blocks each, 2x upsample except level 0), GN + swish + conv_out. No tanh.

    Args (call): z [B, f, t, z_channels]. Returns: [B, f * 2^(L-1), t * 2^(L-1), out_ch].
    """

    ch: int = 128
    out_ch: int = 1
    ch_mult: Sequence[int] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (53,)
    resolution: int = 848
    dropout: float = 0.0
    num_groups: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        n_levels = len(self.ch_mult)
        block_in = self.ch * self.ch_mult[-1]
        h = torch_conv(block_in, 3, z.shape[-1], name="conv_in", **kw)(z)
        h = _Mid(self.dropout, self.num_groups, name="mid", **kw)(h, train)
        curr_res = self.resolution // 2 ** (n_levels - 1)
        for i in reversed(range(n_levels)):
            h = _Level(
                self.ch * self.ch_mult[i],
                self.num_res_blocks + 1,
                curr_res in self.attn_resolutions,
                "up" if i != 0 else None,
                self.dropout,
                self.num_groups,
                name=f"up_{i}",
                **kw,
            )(h, train)
            if i != 0:
                curr_res *= 2
        h = swish(Normalize(self.num_groups, name="norm_out", **kw)(h))
        return torch_conv(self.out_ch, 3, h.shape[-1], name="conv_out", **kw)(h)


class VQGAN(nn.Module):
    """SpecVQGAN codebook model: encoder -> quant_conv -> quantize -> post_quant_conv ->
    decoder. Defaults are the official VGGSound config (use n_embed=128 for VAS).

    The decoder's last conv kernel, params["decoder"]["conv_out"]["kernel"], is the layer
    the GAN adaptive weight is computed on (torch `get_last_layer()`).
    """

    ch: int = 128
    ch_mult: Sequence[int] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (53,)
    resolution: int = 848
    in_channels: int = 1
    out_ch: int = 1
    z_channels: int = 256
    embed_dim: int = 256
    n_embed: int = 1024
    beta: float = 0.25
    dropout: float = 0.0
    num_groups: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        arch = dict(
            ch=self.ch,
            ch_mult=tuple(self.ch_mult),
            num_res_blocks=self.num_res_blocks,
            attn_resolutions=tuple(self.attn_resolutions),
            resolution=self.resolution,
            dropout=self.dropout,
            num_groups=self.num_groups,
        )
        self.encoder = Encoder(z_channels=self.z_channels, **arch, **kw)
        self.decoder = Decoder(out_ch=self.out_ch, **arch, **kw)
        self.quantize = VectorQuantizer(self.n_embed, self.embed_dim, self.beta, **kw)
        self.quant_conv = torch_conv(self.embed_dim, 1, self.z_channels, **kw)
        self.post_quant_conv = torch_conv(self.z_channels, 1, self.embed_dim, **kw)

    def encode(
        self, x: jax.Array, train: bool = False
    ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        """x [B, F, T, in_channels] -> (z_q [B, f, t, embed_dim], qloss scalar, info).

        info = {"indices": [B, f, t] int32, "perplexity": scalar}; f, t = F, T / 2^(L-1).
        """
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"VQGAN expects x [B, F, T, in_channels={self.in_channels}], got {x.shape}"
            )
        h = self.quant_conv(self.encoder(x, train))
        return self.quantize(h)

    def decode(self, z_q: jax.Array, train: bool = False) -> jax.Array:
        """z_q [B, f, t, embed_dim] -> reconstruction [B, F, T, out_ch] (unbounded)."""
        return self.decoder(self.post_quant_conv(z_q), train)

    def decode_code(self, indices: jax.Array) -> jax.Array:
        """Codebook indices [B, f, t] (raster order) -> reconstruction [B, F, T, out_ch]."""
        return self.decode(self.quantize.embed(indices))

    def __call__(
        self, x: jax.Array, train: bool = False
    ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        """x [B, F, T, in_channels] -> (xrec [B, F, T, out_ch], qloss scalar, info)."""
        z_q, qloss, info = self.encode(x, train)
        return self.decode(z_q, train), qloss, info


def make_model(model_config, dtype=jnp.float32) -> VQGAN:
    """The VQGAN described by a config's `model` field (a ConfigDict or a plain dict)."""
    m = model_config
    return VQGAN(
        ch=m["ch"],
        ch_mult=tuple(m["ch_mult"]),
        num_res_blocks=m["num_res_blocks"],
        attn_resolutions=tuple(m["attn_resolutions"]),
        resolution=m["resolution"],
        z_channels=m["z_channels"],
        embed_dim=m["embed_dim"],
        n_embed=m["n_embed"],
        beta=m["beta"],
        dropout=m["dropout"],
        num_groups=m["num_groups"],
        dtype=dtype,
    )
