"""The official growing-prefix transformer encoder, computed once with a causal mask.

Reference: docs/sound2sight.md 1.6.

Official: at step i the encoder re-runs on the whole prefix and only the last position is
used. With the causal mask, position t of one pass over the full sequence sees exactly
the prefix [0..t], so in eval mode one pass equals all the per-step re-runs; `step` adds
one position at a time with a key/value cache for autoregressive generation. (In training
the official re-runs draw fresh dropout masks every step; one pass shares them across
the prefix, a difference in the noise only.)

Layer: Linear(in, d) -> leaky_relu(0.01) -> x sqrt(d) -> + sinusoidal PE -> dropout 0.2 ->
one post-LN `nn.TransformerEncoderLayer` (ReLU FFN, dropout 0.1, LayerNorm eps 1e-5) ->
Linear(d, out) -> tanh.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from avjax.models.sound2sight.layers import Dtype, dcgan_init, uniform_init


def sinusoidal_pe(positions: jax.Array, d: int) -> jax.Array:
    """PyTorch-tutorial positional encoding at `positions` [...] -> [..., d] (sin even, cos odd)."""
    div = jnp.exp(jnp.arange(0, d, 2, dtype=jnp.float32) * (-math.log(10000.0) / d))
    ang = positions[..., None].astype(jnp.float32) * div
    return jnp.stack([jnp.sin(ang), jnp.cos(ang)], axis=-1).reshape((*positions.shape, d))


class CausalTransformer(nn.Module):
    """`[B, T, input]` -> `[B, T, output]`; output t depends on inputs 0..t only."""

    d_model: int = 256
    output: int = 128
    dim_ff: int = 128
    num_heads: int = 4
    pe_dropout: float = 0.2
    dropout: float = 0.1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        d, h = self.d_model, self.num_heads
        if d % h:
            raise ValueError(f"transformer d_model {d} is not divisible by num_heads {h}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        # MultiheadAttention in_proj: xavier_uniform over the (3d, d) matrix, zero bias.
        qkv_init = uniform_init(math.sqrt(6.0 / (d + 3 * d)))
        self.embed = nn.Dense(d, kernel_init=dcgan_init, **kw)
        self.qkv = nn.DenseGeneral((3, h, d // h), kernel_init=qkv_init, **kw)
        self.attn_out = nn.DenseGeneral(d, axis=(-2, -1), kernel_init=dcgan_init, **kw)
        self.norm1 = nn.LayerNorm(epsilon=1e-5, **kw)
        self.ff1 = nn.Dense(self.dim_ff, kernel_init=dcgan_init, **kw)
        self.ff2 = nn.Dense(d, kernel_init=dcgan_init, **kw)
        self.norm2 = nn.LayerNorm(epsilon=1e-5, **kw)
        self.out = nn.Dense(self.output, kernel_init=dcgan_init, **kw)
        self.drop_pe = nn.Dropout(self.pe_dropout)
        self.drop = nn.Dropout(self.dropout)

    def _embed(self, x, positions, train):
        e = nn.leaky_relu(self.embed(x), 0.01) * math.sqrt(self.d_model)
        e = e + sinusoidal_pe(positions, self.d_model).astype(e.dtype)
        return self.drop_pe(e, deterministic=not train)

    def _attend(self, q, k, v, mask, train):
        """q [B, Tq, H, D], k/v [B, Tk, H, D], mask [Tq, Tk] bool -> [B, Tq, d_model]."""
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
        w = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)
        w = self.drop(w, deterministic=not train)
        return self.attn_out(jnp.einsum("bhqk,bkhd->bqhd", w, v))

    def _finish(self, e, attn, train):
        y = self.norm1(e + self.drop(attn, deterministic=not train))
        ff = self.ff2(self.drop(nn.relu(self.ff1(y)), deterministic=not train))
        y = self.norm2(y + self.drop(ff, deterministic=not train))
        return jnp.tanh(self.out(y))

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """One causal pass: x [B, T, input] -> [B, T, output]."""
        t = x.shape[1]
        e = self._embed(x, jnp.arange(t), train)
        qkv = self.qkv(e)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        mask = jnp.tril(jnp.ones((t, t), bool))
        return self._finish(e, self._attend(q, k, v, mask, train), train)

    def init_cache(self, batch: int, max_len: int) -> dict:
        h = self.num_heads
        shape = (batch, max_len, h, self.d_model // h)
        return {"k": jnp.zeros(shape, self.dtype), "v": jnp.zeros(shape, self.dtype)}

    def step(self, x: jax.Array, cache: dict, pos: jax.Array):
        """Eval-mode position `pos` given the cached earlier ones: x [B, input] -> [B, output]."""
        e = self._embed(x[:, None], jnp.reshape(pos, (1,)), False)
        qkv = self.qkv(e)
        k = jax.lax.dynamic_update_slice_in_dim(cache["k"], qkv[:, :, 1], pos, axis=1)
        v = jax.lax.dynamic_update_slice_in_dim(cache["v"], qkv[:, :, 2], pos, axis=1)
        mask = (jnp.arange(k.shape[1]) <= pos)[None, :]
        out = self._finish(e, self._attend(qkv[:, :, 0], k, v, mask, False), False)
        return out[:, 0], {"k": k, "v": v}
