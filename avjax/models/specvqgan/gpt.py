"""SpecVQGAN's conditional transformer: minGPT (pre-LN) with a prepended condition.

Reference: docs/specvqgan.md A4.

The sequence is `[condition embeddings (Tc), token embeddings (L)] + pos_emb[:Tc + L]`,
causally masked over its whole length (the condition attends causally too). The
condition is, as in the official `GPTFeats` / `GPTClass` / `GPTFeatsClass`:
  * per-frame visual features [B, Tc, feat_dim] through `feat_embedder` (a Dense; the
    official Conv1d with kernel 1), and/or
  * a class label [B] through `cls_embedder` (an Embed), appended after the features.

Parameters (official names, numbered parts joined with "_": `blocks.3.mlp.0` ->
`blocks_3/mlp_0`): `tok_emb/embedding` [V, C], `pos_emb` [block_size, C] (zeros),
`blocks_i/{ln1, ln2, attn/{key, query, value, proj}, mlp_0, mlp_2}`, `ln_f`, `head`
(no bias), `feat_embedder`, `cls_embedder`. Init: Dense/Embed N(0, 0.02), biases 0,
LayerNorm (1, 0), eps 1e-5; the condition embedders keep PyTorch's defaults
(Conv1d U(+-1/sqrt(fan_in)), Embedding N(0, 1)) because the official `_init_weights`
runs before they are created. Dropouts default to 0 (the released models).

Incremental decoding: `__call__(..., cache=cache, pos=pos)` runs the given positions
against a per-layer KV cache of `block_size` slots (keys [B, H, C/H, block_size], values
[B, H, block_size, C/H], written with `lax.dynamic_update_slice` at `pos`) and returns
`(logits, new_cache)`; `init_cache` builds an empty one. Prefill and single-token steps
are the same call. In programs lowered for CPU a single-token step attends through
`avjax.nn.native.decode_attention`, which reads only the filled cache slots (XLA's dots
read all of them); elsewhere, or with `AVJAX_NATIVE=0`, through XLA's masked attention.

The Dense layers are `avjax.nn.quantize.Dense`: identical to Flax's with float32 weights,
and they also run with bfloat16 or int8 kernels (`sampling.for_inference`).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from avjax.nn import native
from avjax.nn.quantize import Dense

Cache = tuple[dict[str, jax.Array], ...]
_NEG = -1e30  # masked logits; every query sees at least itself, so rows are never empty


def _normal(std=0.02):
    return nn.initializers.normal(stddev=std)


def _torch_uniform(fan_in: int):
    """PyTorch's default Linear/Conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _cached_attention(q, k, v, kc, vc, pos, scale, dtype, drop=lambda a: a):
    """Attention of the new positions q, k, v [B, H, T, D] over the cache slots < pos and,
    causally, over themselves; [B, T, H, D].

    The cached positions are attended as they lie in the carried buffers, and the new
    block is written by the caller afterwards; attending to the updated buffer instead
    made XLA:CPU copy the whole cache every step. Keys are stored transposed, [B, H, D, S],
    so q K^T is a plain matmul per head.
    """
    t = q.shape[2]
    causal = jnp.tril(jnp.ones((t, t), bool))
    new = jnp.einsum("bhtd,bhsd->bhts", q, k) * scale
    old = jnp.einsum("bhtd,bhds->bhts", q, kc.astype(dtype)) * scale
    seen = jnp.arange(kc.shape[-1]) < pos
    att = jnp.concatenate(
        [
            jnp.where(seen, old.astype(jnp.float32), _NEG),
            jnp.where(causal, new.astype(jnp.float32), _NEG),
        ],
        axis=-1,
    )
    att = drop(jax.nn.softmax(att, axis=-1).astype(dtype))
    y = jnp.einsum("bhts,bhsd->bthd", att[..., -t:], v)
    return y + jnp.einsum("bhts,bhsd->bthd", att[..., :-t], vc.astype(dtype))


def _native_decode_ok(dtype, cache_dtype) -> bool:
    """Whether a CPU decode step may take `native.decode_attention` (float32 throughout)."""
    f32 = jnp.dtype(jnp.float32)
    return jnp.dtype(dtype) == f32 and jnp.dtype(cache_dtype) == f32 and native.available()


def _native_step(q, k, v, kc, vc, pos, scale):
    """`_cached_attention` of one new position [B, H, 1, D] by the native kernel, which reads
    only the `pos` filled cache slots (XLA's dots read all of them); [B, 1, H, D]."""
    b, h, _, d = q.shape
    rows = lambda x: x.reshape(b * h, *x.shape[2:])
    y = native.decode_attention(
        rows(q[:, :, 0]), rows(k[:, :, 0]), rows(v[:, :, 0]), rows(kc), rows(vc), pos, scale
    )
    return y.reshape(b, 1, h, d)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with key/query/value/proj Dense layers (query, key
    and value as one `qkv` layer with `fused_qkv`, see `GPT`)."""

    n_embd: int
    n_head: int
    attn_pdrop: float = 0.0
    resid_pdrop: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    fused_qkv: bool = False

    @nn.compact
    def __call__(self, x, *, deterministic=True, cache=None, pos=None):
        """x: [B, T, C]; cache: {"k": [B, H, C/H, S], "v": [B, H, S, C/H]} or None; pos: the
        first position of x (with a cache)."""
        b, t, c = x.shape
        h = self.n_head
        dense = lambda name, n=c: Dense(
            n,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=_normal(),
            bias_init=nn.initializers.zeros,
            name=name,
        )
        heads = lambda y: y.reshape(b, t, h, c // h).transpose(0, 2, 1, 3)  # [B, H, T, D]
        if self.fused_qkv:
            q, k, v = map(heads, jnp.split(dense("qkv", 3 * c)(x), 3, axis=-1))
        else:
            q, k, v = heads(dense("query")(x)), heads(dense("key")(x)), heads(dense("value")(x))
        scale = 1.0 / math.sqrt(c // h)
        if cache is None:
            new_cache = None
            att = jnp.einsum("bhtd,bhsd->bhts", q, k) * scale
            att = jnp.where(jnp.tril(jnp.ones((t, t), bool)), att.astype(jnp.float32), _NEG)
            att = jax.nn.softmax(att, axis=-1).astype(self.dtype)
            att = nn.Dropout(self.attn_pdrop)(att, deterministic=deterministic)
            y = jnp.einsum("bhts,bhsd->bthd", att, v)
        else:
            kc, vc = cache["k"], cache["v"]
            drop = lambda a: nn.Dropout(self.attn_pdrop)(a, deterministic=deterministic)
            if deterministic and t == 1 and _native_decode_ok(self.dtype, kc.dtype):
                xla = lambda *a: _cached_attention(*a, scale=scale, dtype=self.dtype)
                y = jax.lax.platform_dependent(
                    q, k, v, kc, vc, pos, cpu=lambda *a: _native_step(*a, scale), default=xla
                )
            else:
                y = _cached_attention(q, k, v, kc, vc, pos, scale, self.dtype, drop)
            # Written after the reads above (a data dependence XLA keeps: x * 0 is not
            # folded for floats), so the writes go in place into the carried buffers.
            after = 0.0 * y[0, 0, 0, 0]
            k, v = k + after.astype(k.dtype), v + after.astype(v.dtype)
            new_cache = {
                "k": jax.lax.dynamic_update_slice(
                    kc, k.transpose(0, 1, 3, 2).astype(kc.dtype), (0, 0, 0, pos)
                ),
                "v": jax.lax.dynamic_update_slice(vc, v.astype(vc.dtype), (0, 0, pos, 0)),
            }
        y = nn.Dropout(self.resid_pdrop)(
            dense("proj")(y.reshape(b, t, c)), deterministic=deterministic
        )
        return y, new_cache


class Block(nn.Module):
    """Pre-LN block: x + attn(ln1(x)), then x + mlp(ln2(x)); MLP C -> 4C -> GELU(erf) -> C."""

    n_embd: int
    n_head: int
    attn_pdrop: float = 0.0
    resid_pdrop: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    fused_qkv: bool = False

    @nn.compact
    def __call__(self, x, *, deterministic=True, cache=None, pos=None):
        ln = lambda name: nn.LayerNorm(
            epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype, name=name
        )
        dense = lambda n, name: Dense(
            n,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=_normal(),
            bias_init=nn.initializers.zeros,
            name=name,
        )
        y, cache = CausalSelfAttention(
            self.n_embd,
            self.n_head,
            self.attn_pdrop,
            self.resid_pdrop,
            self.dtype,
            self.param_dtype,
            self.fused_qkv,
            name="attn",
        )(ln("ln1")(x), deterministic=deterministic, cache=cache, pos=pos)
        x = x + y
        y = nn.gelu(dense(4 * self.n_embd, "mlp_0")(ln("ln2")(x)), approximate=False)
        y = nn.Dropout(self.resid_pdrop)(
            dense(self.n_embd, "mlp_2")(y), deterministic=deterministic
        )
        return x + y, cache


class GPT(nn.Module):
    """minGPT over code tokens with a prepended feature and/or class condition.

    Attributes:
      vocab_size: codebook size (1024 VGGSound, 128 VAS).
      block_size: longest sequence (condition + tokens), 477 = 212 + 265 in the paper.
      n_layer, n_head, n_embd: 24, 16, 1024 in the paper.
      feat_dim: visual feature depth (2048); 0 means no feature condition (GPTClass).
      num_classes: > 0 appends a class-label embedding to the condition.
      embd_pdrop, resid_pdrop, attn_pdrop: dropouts (0 in the released models).
      dtype, param_dtype: compute and parameter dtypes.
      cache_dtype: KV cache dtype (default `dtype`); bfloat16 halves the cache's bytes.
      fused_qkv: one `qkv` Dense [C, 3C] per block instead of `query`, `key`, `value`: the
        sampling layout of `sampling.for_inference` (`sampling.fuse_qkv`), one matmul per
        token step where there were three; training and checkpoints use the separate ones.
    """

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    feat_dim: int = 2048
    num_classes: int = 0
    embd_pdrop: float = 0.0
    resid_pdrop: float = 0.0
    attn_pdrop: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    cache_dtype: Any = None
    fused_qkv: bool = False

    def setup(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        self.tok_emb = nn.Embed(
            self.vocab_size,
            self.n_embd,
            embedding_init=_normal(),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        self.pos_emb = self.param(
            "pos_emb", nn.initializers.zeros, (self.block_size, self.n_embd), self.param_dtype
        )
        if self.feat_dim:
            init = _torch_uniform(self.feat_dim)
            self.feat_embedder = Dense(
                self.n_embd,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=init,
                bias_init=lambda k, s, d=jnp.float32: init(k, s, d),
            )
        if self.num_classes:
            self.cls_embedder = nn.Embed(
                self.num_classes,
                self.n_embd,
                embedding_init=_normal(1.0),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )
        self.drop = nn.Dropout(self.embd_pdrop)
        self.blocks = [
            Block(
                self.n_embd,
                self.n_head,
                self.attn_pdrop,
                self.resid_pdrop,
                self.dtype,
                self.param_dtype,
                self.fused_qkv,
                name=f"blocks_{i}",
            )
            for i in range(self.n_layer)
        ]
        self.ln_f = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype)
        self.head = Dense(
            self.vocab_size,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=_normal(),
        )

    def cond_len(self, num_feats: int) -> int:
        """Condition length Tc for `num_feats` feature frames (+1 with a class token)."""
        return (num_feats if self.feat_dim else 0) + (1 if self.num_classes else 0)

    def embed_condition(self, feats=None, labels=None) -> jax.Array:
        """feats [B, Tc, feat_dim], labels [B] int -> condition embeddings [B, Tc(+1), C]."""
        parts = []
        if self.feat_dim:
            if feats is None:
                raise ValueError(f"this GPT is conditioned on features (feat_dim={self.feat_dim})")
            if feats.shape[-1] != self.feat_dim:
                raise ValueError(
                    f"features of depth {feats.shape[-1]} given, model.feat_dim={self.feat_dim}"
                )
            parts.append(self.feat_embedder(feats.astype(self.dtype)))
        if self.num_classes:
            if labels is None:
                raise ValueError(f"this GPT is class-conditioned (num_classes={self.num_classes})")
            parts.append(self.cls_embedder(jnp.asarray(labels, jnp.int32)[:, None]))
        if not parts:
            raise ValueError("GPT needs a condition: set feat_dim > 0 and/or num_classes > 0")
        return jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

    def init_cache(self, batch_size: int, dtype=None) -> Cache:
        """Empty KV cache: per layer keys "k" [B, n_head, n_embd / n_head, block_size]
        (transposed) and values "v" [B, n_head, block_size, n_embd / n_head]."""
        d, dtype = self.n_embd // self.n_head, dtype or self.cache_dtype or self.dtype
        k = jnp.zeros((batch_size, self.n_head, d, self.block_size), dtype)
        v = jnp.zeros((batch_size, self.n_head, self.block_size, d), dtype)
        return tuple({"k": k, "v": v} for _ in range(self.n_layer))

    def __call__(
        self,
        tokens,
        feats=None,
        labels=None,
        *,
        cond=None,
        deterministic: bool = True,
        cache: Cache | None = None,
        pos=0,
    ):
        """Logits of the next token at every position.

        Args:
          tokens: [B, L] int codes (L may be 0).
          feats, labels: the condition ([B, T, feat_dim], [B]); used when `cond` is None and
            `pos == 0` (a cached continuation step passes neither).
          cond: precomputed `embed_condition(...)` [B, Tc, C] (or None).
          deterministic: False enables dropout (needs a "dropout" rng).
          cache: None for a full forward; else the KV cache (see `init_cache`) and `pos`, the
            sequence position of the first input row (condition included).

        Returns:
          logits [B, Tc + L, V] (no cache), or (logits, new_cache) with a cache.
        """
        x = self.tok_emb(jnp.asarray(tokens, jnp.int32))
        if cond is None and (feats is not None or labels is not None):
            cond = self.embed_condition(feats, labels)
        if cond is not None:
            x = jnp.concatenate([cond.astype(x.dtype), x], axis=1)
        t = x.shape[1]
        if cache is None and t > self.block_size:
            raise ValueError(f"sequence of {t} positions exceeds block_size={self.block_size}")
        pe = jax.lax.dynamic_slice_in_dim(self.pos_emb, pos, t, axis=0)
        x = self.drop(x + pe.astype(x.dtype), deterministic=deterministic)
        new_cache = []
        for i, block in enumerate(self.blocks):
            x, c = block(
                x,
                deterministic=deterministic,
                cache=None if cache is None else cache[i],
                pos=pos,
            )
            new_cache.append(c)
        logits = self.head(self.ln_f(x))
        return logits if cache is None else (logits, tuple(new_cache))


def decay_mask(params) -> Any:
    """True for the weights the official optimizer decays: Linear kernels of the blocks and head.

    Biases, LayerNorms, embeddings, `pos_emb` and the feature embedder (a Conv1d in the
    official code) are not decayed (docs/specvqgan.md A4).
    """

    def rule(path, _):
        names = [getattr(k, "key", str(k)) for k in path]
        return names[-1] == "kernel" and names[0] != "feat_embedder"

    return jax.tree_util.tree_map_with_path(rule, params)


def make_model(model_config, dtype=jnp.float32, param_dtype=jnp.float32) -> GPT:
    """The GPT described by a config's `model` field (a ConfigDict or a plain dict)."""
    m = model_config
    get = lambda k, d=None: m.get(k, d)
    return GPT(
        vocab_size=int(m["vocab_size"]),
        block_size=int(m["block_size"]),
        n_layer=int(m["n_layer"]),
        n_head=int(m["n_head"]),
        n_embd=int(m["n_embd"]),
        feat_dim=int(get("feat_dim", 2048) or 0),
        num_classes=int(get("num_classes", 0) or 0),
        embd_pdrop=float(get("embd_pdrop", 0.0)),
        resid_pdrop=float(get("resid_pdrop", 0.0)),
        attn_pdrop=float(get("attn_pdrop", 0.0)),
        dtype=dtype,
        param_dtype=param_dtype,
    )
