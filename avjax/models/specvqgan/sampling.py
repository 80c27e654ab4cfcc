"""Sampling SpecVQGAN code sequences from the GPT: filters, a KV-cache sampler, long audio.

* `filter_logits`: temperature, then top-k (official `top_k_logits`: entries below the
  k-th largest become -inf; ties with it are kept), then top-p (nucleus: the smallest set
  of most likely tokens whose probability mass reaches p; the most likely token is always
  kept). `top_k <= 0` and `top_p >= 1` switch them off; all three are traced values, so
  changing them does not recompile. `temperature <= 0` takes the argmax.
* `sample`: jitted; prefills the condition (and optional priming codes) in one forward
  pass that fills the KV cache, then `lax.scan`s one token at a time. The cache of the
  B conditions is computed once and repeated for the `num_samples` samples of each.
  The token at sequence position j is drawn with `fold_in(rng, j)`: same key, same samples.
* `sample_no_cache`: the reference without a cache, as the official evaluation sampler
  (`generate_samples.py`): every step runs the full padded sequence (Tc + num_tokens - 1
  positions) and reads the logits at position Tc - 1 + j. Same keys as `sample`, so both
  give the same tokens up to float rounding; used by tests and the benchmark.
* `for_inference`: bfloat16 or int8 Dense kernels for sampling (`avjax.nn.quantize`),
  halving or quartering the bytes read per token (the default on GPU / TPU is bfloat16),
  with each block's query / key / value projections fused into one matmul (`fuse_qkv`).
* `sample_long`: audio longer than one 53-column window (the paper's "drum solo") by a
  sliding window; see its docstring for how codes and features are windowed.

Sequences are column-major (`permuter.to_sequence`): 5 tokens per time column, 16 mel
frames per column, 4 video-feature frames (21.5 fps) per column (the paper's codebook;
`:tiny`'s has 4 mel frames and 1 feature frame per column).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from avjax.models.specvqgan.gpt import GPT
from avjax.nn import quantize

NEG_INF = -jnp.inf
FEATURE_FPS = 21.5  # frame rate of the official visual features (and `resnet_features`)
FRAMES_PER_COLUMN = 4  # feature frames per code column of the paper's codebook (16 mel hops)


# ------------------------------------------------------------------------------ filters
def top_k_filter(logits: jax.Array, k) -> jax.Array:
    """Sets logits below the k-th largest (per row) to -inf; k <= 0 (or >= V) keeps all."""
    v = logits.shape[-1]
    k = jnp.asarray(k, jnp.int32)
    kk = jnp.clip(k, 1, v)
    kth = jax.lax.dynamic_index_in_dim(jnp.sort(logits, axis=-1), v - kk, -1, keepdims=True)
    out = jnp.where(logits < kth, NEG_INF, logits)
    return jnp.where(k > 0, out, logits)


def top_p_filter(logits: jax.Array, p) -> jax.Array:
    """Nucleus filter: keeps the most likely tokens until their mass reaches `p` (>= 1: all).

    Token i (in descending order) is kept when the mass of the tokens before it is < p, so
    the most likely token always survives; ties with the last kept logit are kept too.
    """
    p = jnp.asarray(p, jnp.float32)
    srt = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(srt.astype(jnp.float32), axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    n_keep = jnp.maximum(jnp.sum(before < p, axis=-1, keepdims=True), 1)
    thresh = jnp.take_along_axis(srt, n_keep - 1, axis=-1)
    out = jnp.where(logits < thresh, NEG_INF, logits)
    return jnp.where(p < 1.0, out, logits)


def filter_logits(logits: jax.Array, temperature=1.0, top_k=0, top_p=1.0) -> jax.Array:
    """[..., V] logits -> logits / temperature with top-k then top-p applied (-inf outside)."""
    t = jnp.asarray(temperature, jnp.float32)
    logits = logits.astype(jnp.float32) / jnp.where(t > 0, t, 1.0)
    return top_p_filter(top_k_filter(logits, top_k), top_p)


def draw(logits: jax.Array, key, temperature=1.0, top_k=0, top_p=1.0) -> jax.Array:
    """One token per row of [B, V] logits (argmax when temperature <= 0), int32 [B]."""
    drawn = jax.random.categorical(key, filter_logits(logits, temperature, top_k, top_p), -1)
    greedy = jnp.argmax(logits, axis=-1)
    return jnp.where(jnp.asarray(temperature) > 0, drawn, greedy).astype(jnp.int32)


# ----------------------------------------------------------------------------- samplers
def _condition(model: GPT, params, feats, labels):
    if feats is None and labels is None:
        return None
    return model.apply({"params": params}, feats, labels, method=GPT.embed_condition)


def _check_lengths(model: GPT, tc: int, num_prime: int, num_tokens: int):
    if num_prime >= num_tokens:
        raise ValueError(f"prime of {num_prime} tokens leaves nothing to sample of {num_tokens}")
    if tc + num_prime < 1:
        raise ValueError("nothing to condition on: give features, labels or priming codes")
    if tc + num_tokens - 1 > model.block_size:
        raise ValueError(
            f"condition ({tc}) + {num_tokens} tokens - 1 exceeds block_size={model.block_size}"
        )


def _prime(prime, batch: int) -> jax.Array:
    return jnp.zeros((batch, 0), jnp.int32) if prime is None else jnp.asarray(prime, jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "num_tokens", "num_samples"))
def sample(
    model: GPT,
    params,
    rng,
    feats=None,
    labels=None,
    prime=None,
    *,
    num_tokens: int,
    num_samples: int = 1,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
) -> jax.Array:
    """Samples code sequences with the KV cache.

    Args:
      model, params: the GPT and its parameters (`for_inference` for reduced weights).
      rng: PRNG key; the token at sequence position j uses `fold_in(rng, j)`.
      feats: [B, Tc, feat_dim] condition features (if the model takes features).
      labels: [B] int class labels (if the model takes a class).
      prime: [B, P] int codes that start every sequence (e.g. ground truth), or None.
      num_tokens: length of the returned sequences (265 for 5x53 codes), prime included.
      num_samples: samples per condition, drawn in parallel.
      temperature, top_k, top_p: see `filter_logits`.

    Returns:
      int32 [B * num_samples, num_tokens]; row b * num_samples + s is sample s of input b,
      and its first P tokens are the prime.
    """
    cache, last, prime, tc = _prefill(model, params, feats, labels, prime, num_tokens, num_samples)
    v = {"params": params}

    def step(carry, j):
        cache, last = carry
        tok = draw(last, jax.random.fold_in(rng, j), temperature, top_k, top_p)
        logits, cache = model.apply(v, tok[:, None], cache=cache, pos=tc + j)
        return (cache, logits[:, -1]), tok

    positions = jnp.arange(prime.shape[1], num_tokens - 1)
    (_, last), toks = jax.lax.scan(step, (cache, last), positions)
    final = draw(last, jax.random.fold_in(rng, num_tokens - 1), temperature, top_k, top_p)
    return jnp.concatenate([prime, toks.T, final[:, None]], axis=1)


def _prefill(model: GPT, params, feats, labels, prime, num_tokens: int, num_samples: int):
    """Runs condition + prime once per input into a fresh cache, then repeats it per sample.

    Returns (cache, logits of the next token [B * S, V], repeated prime [B * S, P], Tc).
    """
    cond = _condition(model, params, feats, labels)
    batch = (cond if cond is not None else prime).shape[0]
    prime = _prime(prime, batch)
    tc, num_prime = (0 if cond is None else cond.shape[1]), prime.shape[1]
    _check_lengths(model, tc, num_prime, num_tokens)
    logits, cache = model.apply(
        {"params": params}, prime, cond=cond, cache=model.init_cache(batch), pos=0
    )
    rep = lambda x: jnp.repeat(x, num_samples, axis=0)
    return jax.tree.map(rep, cache), rep(logits[:, -1]), rep(prime), tc


@functools.partial(jax.jit, static_argnames=("model", "num_tokens", "num_samples", "max_steps"))
def sample_no_cache(
    model: GPT,
    params,
    rng,
    feats=None,
    labels=None,
    prime=None,
    *,
    num_tokens: int,
    num_samples: int = 1,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    max_steps: int | None = None,
) -> jax.Array:
    """`sample` without a cache: a full forward of Tc + num_tokens - 1 positions per token.

    The official evaluation sampler's algorithm (`fori_loop` over tokens, future slots
    zero, causally masked). `max_steps` stops after that many tokens (the rest stay 0), to
    time a few steps of a long run. Arguments and result as `sample`.
    """
    cond = _condition(model, params, feats, labels)
    batch = (cond if cond is not None else prime).shape[0]
    prime = _prime(prime, batch)
    tc, num_prime = (0 if cond is None else cond.shape[1]), prime.shape[1]
    _check_lengths(model, tc, num_prime, num_tokens)
    rep = lambda x: None if x is None else jnp.repeat(x, num_samples, axis=0)
    cond, prime = rep(cond), rep(prime)
    seq = jnp.zeros((prime.shape[0], num_tokens), jnp.int32).at[:, :num_prime].set(prime)

    def step(j, seq):
        logits = model.apply({"params": params}, seq[:, :-1], cond=cond)
        last = jax.lax.dynamic_index_in_dim(logits, tc + j - 1, axis=1, keepdims=False)
        tok = draw(last, jax.random.fold_in(rng, j), temperature, top_k, top_p)
        return jax.lax.dynamic_update_index_in_dim(seq, tok, j, axis=1)

    stop = num_tokens if max_steps is None else min(num_tokens, num_prime + max_steps)
    return jax.lax.fori_loop(num_prime, stop, step, seq)


def for_inference(model: GPT, params, weights_dtype="bfloat16", platform: str | None = None):
    """(model, params) sampling with `weights_dtype` Dense kernels; params stay float32 on disk.

    Batch-1 sampling reads every weight once per token, so fewer bytes per weight is a
    faster sampler (`avjax.nn.quantize`): "bfloat16" halves them, "int8" (per-output-
    channel scales) quarters them; "float32" returns the inputs unchanged. With reduced
    weights the model and its KV cache compute in bfloat16 on GPU / TPU, in float32 on CPU
    (`platform`, default `jax.default_backend()`), where XLA runs the reduced matmuls as
    described in `avjax.nn.quantize` (and a bfloat16 cache would be widened to float32,
    a full copy, at every layer and step). Each block's query, key and value projections
    become one (`fuse_qkv`): a token step runs one matmul where it ran three. Accepts
    dtypes (jnp.bfloat16) too.
    """
    name = weights_dtype if isinstance(weights_dtype, str) else jnp.dtype(weights_dtype).name
    quantize.check_weights_dtype(name)
    if name == "float32":
        return model, params
    platform = platform or jax.default_backend()
    compute = jnp.float32 if platform == "cpu" else jnp.bfloat16
    model = model.clone(dtype=compute, cache_dtype=compute, fused_qkv=True)
    return model, quantize.convert_params(fuse_qkv(params), name)


def fuse_qkv(params):
    """GPT params with each block's attn `query`, `key`, `value` Dense layers as one `qkv`
    layer: kernels [C, C] x 3 -> [C, 3C] and biases [C] x 3 -> [3C], in that order (the
    layout of `GPT(fused_qkv=True)`). Quantising afterwards gives the same int8 values and
    per-output-channel scales as quantising each part alone."""
    out = dict(params)
    for name, block in params.items():
        if name.startswith("blocks_"):
            attn = dict(block["attn"])
            parts = [attn.pop(n) for n in ("query", "key", "value")]
            attn["qkv"] = {k: jnp.concatenate([p[k] for p in parts], axis=-1) for k in parts[0]}
            out[name] = {**block, "attn": attn}
    return out


# ------------------------------------------------------------------------- long audio
def resample_indices(num_frames: int, num_out: int) -> np.ndarray:
    """Official ResampleFrames: `int(linspace(0, T, n, endpoint=False)) + T // (n + 1)`."""
    idx = np.linspace(0, num_frames, num_out, endpoint=False).astype(np.int32)
    return idx + num_frames // (num_out + 1)


def window_features(
    feats,
    start_column: int,
    window_columns: int,
    feat_len: int,
    frames_per_column: float = FRAMES_PER_COLUMN,
):
    """Feature condition of the code window starting at `start_column`.

    Per-frame features [B, T, D] at 21.5 fps, F = `frames_per_column` per code column:
    frames [round(F s), round(F s) + round(F W)) (W = window columns; 212 frames for 53 at
    the paper's F = 4), edge-padded past the end, resampled to `feat_len` rows with
    `resample_indices`. Returns [B, feat_len, D].
    """
    feats = jnp.asarray(feats)
    lo = round(frames_per_column * start_column)
    n = max(1, round(frames_per_column * window_columns))
    idx = np.minimum(lo + resample_indices(n, feat_len), feats.shape[1] - 1)
    return feats[:, idx]


def sample_long(
    model: GPT,
    params,
    rng,
    feats=None,
    labels=None,
    prime=None,
    *,
    num_columns: int,
    rows: int = 5,
    window_columns: int = 53,
    hop_columns: int = 26,
    num_samples: int = 1,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    feat_len: int | None = None,
    frames_per_column: float = FRAMES_PER_COLUMN,
) -> jax.Array:
    """Samples `num_columns` code columns (any length) with a sliding window.

    Window 0 covers columns [0, W) (W = `window_columns`, 53 = 10 s) and is sampled as
    `sample` does (from `prime` if given). Window k starts at column s_k = k * hop: its
    first W - hop columns are primed with the codes already generated there, and its
    last `hop_columns` columns are new. Windows continue until `num_columns` are covered;
    columns past the end are cut. Every window is one `sample` call (the same compiled
    function from window 1 on), with key `fold_in(rng, k)`.

    Features: `feats` is either
      * per-frame features covering the output, [B, T >= F * num_columns, D] at 21.5 fps
        (F = `frames_per_column` per code column, the same seconds as the column's mel
        frames: 4 for the paper's codebook, `Video2Sound.feature_frames_per_column`):
        window k is conditioned on frames [F s_k, F s_k + F W), edge-padded past T,
        resampled to the model's feature count Tc with the official ResampleFrames rule
        (`window_features`); or
      * the model's condition itself, [B, Tc, D] (e.g. "No Feats" random features, or
        1/5 summary frames): the same condition for every window.
    Labels (class-conditioned models) are the same for every window. `feat_len` (Tc) is
    the model's feature count (`data.feat_sample_size`); by default block_size minus the
    window's tokens (minus the class token).

    Returns:
      int32 [B * num_samples, rows * num_columns] column-major codes (row b * num_samples
      + s is sample s of input b).
    """
    if not 0 < hop_columns <= window_columns:
        raise ValueError(f"hop_columns={hop_columns} must lie in (0, {window_columns}]")
    kw = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    tc = _feature_count(model, rows * window_columns) if feat_len is None else feat_len
    if not frames_per_column > 0:
        raise ValueError(f"frames_per_column={frames_per_column} must be positive")
    per_frame = None
    if feats is not None:
        t, fpc = feats.shape[1], frames_per_column
        if t >= round(fpc * min(num_columns, window_columns)) and not (
            t == tc and num_columns > window_columns
        ):
            per_frame = feats
        elif t != tc:
            raise ValueError(
                f"features of {t} frames: expected the model's {tc} condition frames or "
                f"per-frame features of >= {math.ceil(fpc * num_columns)} frames (21.5 fps, "
                f"{fpc:g} per code column) for {num_columns} columns"
            )
    cond = lambda s: (
        feats
        if per_frame is None
        else window_features(per_frame, s, window_columns, tc, frames_per_column)
    )
    first = min(num_columns, window_columns)
    codes = sample(
        model,
        params,
        jax.random.fold_in(rng, 0),
        cond(0),
        labels,
        prime,
        num_tokens=rows * first,
        num_samples=num_samples,
        **kw,
    )
    rep = lambda x: None if x is None else jnp.repeat(jnp.asarray(x), num_samples, axis=0)
    keep = window_columns - hop_columns
    num_windows = 1 + max(0, math.ceil((num_columns - window_columns) / hop_columns))
    for k in range(1, num_windows):
        s = k * hop_columns
        window = sample(
            model,
            params,
            jax.random.fold_in(rng, k),
            rep(cond(s)),
            rep(labels),
            codes[:, rows * s : rows * (s + keep)],
            num_tokens=rows * window_columns,
            num_samples=1,
            **kw,
        )
        codes = jnp.concatenate([codes, window[:, rows * keep :]], axis=1)
    return codes[:, : rows * num_columns]


def _feature_count(model: GPT, window_tokens: int) -> int:
    """Feature rows of the model's condition: block_size - tokens (- 1 class token)."""
    if not model.feat_dim:
        return 0
    return model.block_size - window_tokens - (1 if model.num_classes else 0)
