"""MCAV's context-aware refinement (CAR): a U-Net refines each warped frame.

Reference: docs/mcav.md, "Context-aware refinement". For a predicted step (0-based, frame
i -> i+1): V_warp = warp(V[i], F_hat[i+1]) (V[i] the last seen frame, then CAR's own
previous output); the context encoder E_c reads the last seen frame V[K-1] once per clip,
giving z^l at L = 4 levels; per level gamma^l = MLP_1^l(M), beta^l = MLP_2^l(M) of the
motion feature M = E_m(V[i], F_hat[i+1]) || E_a(A[i]) (MME's frozen encoders, see
`avjax.models.mcav.model`), and gamma^l * z^l + beta^l enters the U-Net decoder level of
the same resolution.

Where the paper is silent (choices, also in `configs/mcav_m3so_nb.py`):
* U-Net: four levels of two 3x3 conv + BatchNorm + ReLU with `widths` channels (the
  context encoder's plan), 2x2 max-pool down, 4x4 stride-2 deconv + BatchNorm + ReLU up;
  the output is a residual on the warped frame, clip(V_warp + delta, 0, 1), delta from a
  zero-initialised 1x1 conv (an untrained CAR returns the warped frame).
* Modulated context enters a decoder level by `merge`: "concat" with the encoder skip
  (default) or "add" to it (same widths).
* Each MLP: Dense(`mlp_hidden`) -> ReLU -> Dense(c^l), the last layer zero-initialised;
  gamma = 1 + MLP_1(M), so modulation starts as the identity.
Ablations (docs/mcav.md, CAR table): `context=False` is "MME + U-Net" (no E_c);
`modulation=False` inserts z^l unmodulated ("+ context encoder").
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from avjax.models.sound2sight.layers import ConvBlock, Dtype
from avjax.nn import Conv, max_pool

MERGES = ("concat", "add")


class DoubleConv(nn.Module):
    """Two 3x3 conv + BatchNorm + ReLU blocks on [B, H, W, C]."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = ConvBlock(self.features, 3, (1, 1), (1, 1), act="relu", name="conv1", **kw)(x, train)
        return ConvBlock(self.features, 3, (1, 1), (1, 1), act="relu", name="conv2", **kw)(x, train)


def _pool(x: jax.Array) -> jax.Array:
    return max_pool(x, (2, 2), strides=(2, 2))


class ContextEncoder(nn.Module):
    """E_c: frame [B, S, S, C] -> (z^0 [B, S, S, w0], ..., z^3 [B, S/8, S/8, w3])."""

    widths: Sequence[int] = (32, 64, 128, 256)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, ...]:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        feats = []
        h = x.astype(self.dtype)
        for i, w in enumerate(self.widths):
            if i:
                h = _pool(h)
            h = DoubleConv(w, name=f"block{i}", **kw)(h, train)
            feats.append(h)
        return tuple(feats)


class Modulation(nn.Module):
    """Per level l: gamma^l * z^l + beta^l, gamma^l = 1 + MLP_1^l(M), beta^l = MLP_2^l(M)."""

    widths: Sequence[int] = (32, 64, 128, 256)
    hidden: int = 256
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.nowrap
    def _mlp(self, m: jax.Array, out: int, name: str) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.relu(nn.Dense(self.hidden, name=f"{name}_0", **kw)(m))
        zeros = nn.initializers.zeros
        return nn.Dense(out, kernel_init=zeros, bias_init=zeros, name=f"{name}_1", **kw)(h)

    @nn.compact
    def __call__(self, z: Sequence[jax.Array], m: jax.Array) -> tuple[jax.Array, ...]:
        out = []
        for i, (zi, w) in enumerate(zip(z, self.widths, strict=True)):
            gamma = 1.0 + self._mlp(m, w, f"gamma{i}")
            beta = self._mlp(m, w, f"beta{i}")
            out.append(gamma[:, None, None, :] * zi + beta[:, None, None, :])
        return tuple(out)


class UNet(nn.Module):
    """Refines a warped frame [B, S, S, C] -> delta [B, S, S, C], with optional context
    features (one per level, inserted by `merge`) in its decoder."""

    channels: int = 1
    widths: Sequence[int] = (32, 64, 128, 256)
    merge: str = "concat"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context, train: bool) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        levels = len(self.widths)
        skips = []
        h = x.astype(self.dtype)
        for i, w in enumerate(self.widths):
            if i:
                h = _pool(h)
            h = DoubleConv(w, name=f"down{i}", **kw)(h, train)
            skips.append(h)

        def merged(i):
            s = skips[i]
            if context is None:
                return s
            z = context[i].astype(s.dtype)
            return jnp.concatenate([s, z], -1) if self.merge == "concat" else s + z

        h = DoubleConv(self.widths[-1], name=f"dec{levels - 1}", **kw)(merged(levels - 1), train)
        for i in range(levels - 2, -1, -1):
            w = self.widths[i]
            h = ConvBlock(w, 4, (2, 2), (1, 1), transpose=True, act="relu", name=f"up{i}", **kw)(
                h, train
            )
            h = DoubleConv(w, name=f"dec{i}", **kw)(jnp.concatenate([h, merged(i)], -1), train)
        zeros = nn.initializers.zeros
        return Conv(self.channels, (1, 1), kernel_init=zeros, name="out", **kw)(h)


class ContextRefiner(nn.Module):
    """CAR (module docstring): `encode_context` once per clip, `refine` per step."""

    image_size: int = 48
    channels: int = 1
    widths: tuple[int, ...] = (32, 64, 128, 256)
    mlp_hidden: int = 256
    context: bool = True
    modulation: bool = True
    merge: str = "concat"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        if self.merge not in MERGES:
            raise ValueError(f"merge must be one of {MERGES}, got {self.merge!r}")
        down = 2 ** (len(self.widths) - 1)
        if self.image_size % down:
            raise ValueError(f"image_size {self.image_size} must be divisible by {down}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        widths = tuple(self.widths)
        if self.context:
            self.context_encoder = ContextEncoder(widths, **kw)
            if self.modulation:
                self.modulate = Modulation(widths, self.mlp_hidden, **kw)
        self.unet = UNet(self.channels, widths, self.merge, **kw)

    def encode_context(self, frame: jax.Array, train: bool):
        """E_c on the last seen frame [B, S, S, C] -> per-level features (None without E_c)."""
        if not self.context:
            return None
        return self.context_encoder(frame, train)

    def refine(self, warped: jax.Array, context, motion: jax.Array, train: bool) -> jax.Array:
        """warped [B, S, S, C] in [0, 1], context (from `encode_context`), M [B, 2c] ->
        the refined frame [B, S, S, C] in [0, 1]."""
        if context is not None and self.modulation:
            context = self.modulate(context, motion.astype(self.dtype))
        delta = self.unet(warped, context, train)
        return jnp.clip(warped + delta.astype(warped.dtype), 0.0, 1.0)

    def __call__(self, warped: jax.Array, frame: jax.Array, motion: jax.Array, train: bool = False):
        """Every submodule once (for `init`): refine `warped` with the context of `frame`."""
        return self.refine(warped, self.encode_context(frame, train), motion, train)
