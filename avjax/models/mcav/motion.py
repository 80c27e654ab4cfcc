"""MCAV's multimodal motion estimation (MME): predicts the next backward optical flow.

Reference: docs/mcav.md, "Multimodal motion estimation". Time is 0-based here: frames
V[0..T-1], audio patches A[0..T-1], ground-truth backward flows F[0..T-1] (F[t] maps frame t
to frame t-1, F[0] = 0). Step i = 0..T-2 predicts F[i+1] from
* the motion encoder E_m on concat(F[i], V[i]) (ground truth while `use_gt`, else the flow
  predicted at the previous step and the frame it warped: V_hat[i] = warp(V_hat[i-1], F_hat[i]),
  with no refinement inside MME),
* the motion memory MM = {x_a[0..i+1]} of audio features (E_a on every patch):
  Condense gives x~_a = x_a[i+1] + last row of Atten(MM, MM, MM),
* Recall: x~_v = x_v + Atten(Q(x_v), K(keys), V(keys)) with keys = x~_a (the paper's text:
  one key, so the softmax is identically 1 and Recall adds V(x~_a) to every position), or
  with `recall_keys="memory"` the memory slots 0..i+1 with slot i+1 replaced by x~_a,
* a 4-layer ConvLSTM on x~_v and the motion decoder D_m -> F_hat[i+1].

The memory grows by one slot a step. It is a fixed [B, T, c] buffer (every step's audio is
given) with a validity mask: Condense for all steps is one attention whose mask lets the
query of slot i+1 see slots 0..i+1 (what a growing memory gives, row for row), and the time
loop (`avjax.models.mcav.model.run_motion`) is one `lax.scan` over `step` that compiles once.

Where the paper is silent (choices, also in `configs/mcav_m3so_nb.py`): stride-2 convs and
deconvs pad 1 (48 px -> 3x3 features, 64 px -> 4x4), LeakyReLU slope 0.2, the audio encoder
is Sound2Sight's STFT encoder for the patch size (its strides and paddings), ConvLSTM 3x3
kernels with c hidden channels, the decoder's last deconv is linear (flow in pixels),
attention without 1/sqrt(d) by default (`attention_scale`).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from avjax.models.sound2sight.convnets import AudioEncoder
from avjax.models.sound2sight.layers import ConvBlock, Dtype, dcgan_init
from avjax.nn import Conv, ConvLSTMCell, ConvTranspose
from avjax.video.flow import warp

ATTENTION_SCALES = ("none", "rsqrt_dim")
RECALL_KEYS = ("condensed", "memory")


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    valid: jax.Array | None = None,
    scale: str = "none",
) -> jax.Array:
    """Atten(Q, K, V) = softmax(Q K^T) V (the paper's eq. 1), over the key axis.

    Args:
      q: [..., Lq, d]; k: [..., Lk, d]; v: [..., Lk, dv].
      valid: bool, broadcastable to [..., Lq, Lk]: keys a query may see (None: all).
      scale: "none" (eq. 1 as written) or "rsqrt_dim" (logits / sqrt(d), as Vaswani et al.).

    Returns:
      [..., Lq, dv].
    """
    if scale not in ATTENTION_SCALES:
        raise ValueError(f"attention_scale must be one of {ATTENTION_SCALES}, got {scale!r}")
    logits = jnp.einsum("...qd,...kd->...qk", q, k).astype(jnp.float32)
    if scale == "rsqrt_dim":
        logits = logits / jnp.sqrt(jnp.float32(q.shape[-1]))
    if valid is not None:
        logits = jnp.where(valid, logits, -1e30)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("...qk,...kd->...qd", weights, v)


def _dense(features: int, name: str, dtype, param_dtype) -> nn.Dense:
    """A 1-D convolution with kernel 1 over a sequence [..., L, C] is a Dense on C."""
    return nn.Dense(features, dtype=dtype, param_dtype=param_dtype, name=name)


class Condense(nn.Module):
    """Self-attention of the motion memory: Q, K, V by three kernel-1 1-D convs.

    `__call__(memory [B, N, c], valid)` returns Atten(MM, MM, MM) for every slot as a query,
    [B, N, c]; the paper's Condense(MM) is the row of the newest slot.
    """

    dim: int
    attention_scale: str = "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, memory: jax.Array, valid: jax.Array | None = None) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        q = _dense(self.dim, "query", **kw)(memory)
        k = _dense(self.dim, "key", **kw)(memory)
        v = _dense(self.dim, "value", **kw)(memory)
        return attention(q, k, v, valid, self.attention_scale)


class Recall(nn.Module):
    """Visual queries attend to audio keys: x~_v = x_v + Atten(Q(x_v), K(a), V(a)).

    Q is a 2-D 1x1 conv of x_v [B, h, w, c] flattened to l = h*w queries; K and V are
    kernel-1 1-D convs of the key sequence a [B, Lk, c]; the result is reshaped back.
    """

    dim: int
    attention_scale: str = "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, xv: jax.Array, keys: jax.Array, valid: jax.Array | None = None):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, h, w, c = xv.shape
        q = Conv(self.dim, (1, 1), name="query", **kw)(xv).reshape(b, h * w, self.dim)
        k = _dense(self.dim, "key", **kw)(keys)
        v = _dense(c, "value", **kw)(keys)
        return xv + attention(q, k, v, valid, self.attention_scale).reshape(b, h, w, c)


class MotionEncoder(nn.Module):
    """E_m: concat(flow, frame) [..., S, S, 2 + C] -> x_v [..., S/16, S/16, channels[-1]].

    Four 4x4 stride-2 convs (pad 1), BatchNorm + LeakyReLU after each, the last BatchNorm +
    tanh.
    """

    channels: Sequence[int] = (64, 64, 128, 128)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = x.astype(self.dtype)
        last = len(self.channels) - 1
        for i, ch in enumerate(self.channels):
            act = "tanh" if i == last else "lrelu"
            h = ConvBlock(ch, 4, (2, 2), (1, 1), act=act, name=f"c{i + 1}", **kw)(h, train)
        return h


class MotionDecoder(nn.Module):
    """D_m: h [..., s, s, c] -> flow [..., 16 s, 16 s, 2] in pixels.

    4x4 stride-2 deconvs (pad 1): `channels` with BatchNorm + LeakyReLU, then a linear one
    to the 2 flow channels.
    """

    channels: Sequence[int] = (128, 64, 64)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array, train: bool) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        for i, ch in enumerate(self.channels):
            h = ConvBlock(ch, 4, (2, 2), (1, 1), transpose=True, name=f"up{i + 1}", **kw)(h, train)
        return ConvTranspose(2, 4, 2, 1, kernel_init=dcgan_init, name="flow", **kw)(h)


class ConvLSTMStack(nn.Module):
    """`num_layers` `avjax.nn.ConvLSTMCell`s, each fed the hidden state of the one below.

    One call is one time step: (carry, x [B, h, w, C]) -> (carry, h_top [B, h, w, features]),
    carry a tuple of (h, c) per layer.
    """

    features: int = 128
    num_layers: int = 4
    kernel: int = 3
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, carry, x):
        new = []
        for i, layer_carry in enumerate(carry):
            cell = ConvLSTMCell(
                self.features,
                (self.kernel, self.kernel),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"layer_{i}",
            )
            layer_carry, x = cell(layer_carry, x)
            new.append(layer_carry)
        return tuple(new), x


class MotionEstimator(nn.Module):
    """MME (module docstring). Methods are the pieces `avjax.models.mcav.model` scans.

    Ablations (docs/mcav.md, flow AEPE table): `condense=False` uses x~_a = x_a[i+1];
    `recall=False` skips Recall (x~_v = x_v); both off is the "visual only" row.
    """

    image_size: int = 48
    channels: int = 1
    audio_shape: tuple[int, int] = (23, 21)
    encoder_channels: tuple[int, ...] = (64, 64, 128, 128)
    audio_nf: int = 64
    lstm_features: int = 128
    lstm_layers: int = 4
    lstm_kernel: int = 3
    decoder_channels: tuple[int, ...] = (128, 64, 64)
    attention_scale: str = "none"
    condense: bool = True
    recall: bool = True
    recall_keys: str = "condensed"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def dim(self) -> int:
        """c: the width of x_v, x_a and the memory."""
        return self.encoder_channels[-1]

    @property
    def feature_size(self) -> int:
        """w = h of x_v (four stride-2 convs)."""
        return self.image_size // 2 ** len(self.encoder_channels)

    def setup(self):
        if self.image_size % 2 ** len(self.encoder_channels):
            raise ValueError(
                f"image_size {self.image_size} must be divisible by "
                f"{2 ** len(self.encoder_channels)} (one halving per motion-encoder conv)"
            )
        if len(self.decoder_channels) + 1 != len(self.encoder_channels):
            raise ValueError("the motion decoder needs one deconv per encoder conv")
        if self.recall_keys not in RECALL_KEYS:
            raise ValueError(f"recall_keys must be one of {RECALL_KEYS}, got {self.recall_keys!r}")
        if self.attention_scale not in ATTENTION_SCALES:
            raise ValueError(
                f"attention_scale must be one of {ATTENTION_SCALES}, got {self.attention_scale!r}"
            )
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.motion_encoder = MotionEncoder(tuple(self.encoder_channels), **kw)
        self.audio_encoder = AudioEncoder(self.dim, self.audio_nf, tuple(self.audio_shape), **kw)
        if self.condense:
            self.memory = Condense(self.dim, self.attention_scale, **kw)
        if self.recall:
            self.recall_attention = Recall(self.dim, self.attention_scale, **kw)
        self.lstm = ConvLSTMStack(self.lstm_features, self.lstm_layers, self.lstm_kernel, **kw)
        self.decoder = MotionDecoder(tuple(self.decoder_channels), **kw)

    # ------------------------------------------------------------------------- pieces
    def encode_audio(self, audio: jax.Array, train: bool) -> jax.Array:
        """E_a: patches [B, T, Fa, Ta] -> x_a [B, T, c] (per-frame BatchNorm statistics)."""
        return self.audio_encoder(audio, train)

    def condense_memory(self, xa: jax.Array) -> jax.Array:
        """x~_a for steps i = 0..T-2: x_a [B, T, c] -> [B, T-1, c].

        x~_a[i] = x_a[i+1] + Condense(memory slots 0..i+1): the masked buffer, all steps in
        one attention (query slot i+1 sees keys 0..i+1).
        """
        if not self.condense:
            return xa[:, 1:]
        t = xa.shape[1]
        causal = jnp.tril(jnp.ones((t, t), bool))
        return xa[:, 1:] + self.memory(xa, causal)[:, 1:]

    def condense_growing(self, memory: jax.Array) -> jax.Array:
        """The paper's Condense on a memory of exactly the slots seen so far.

        memory [B, n, c] (x_a[0..n-1]) -> x~_a = x_a[n-1] + last row of Atten(MM, MM, MM).
        (The reference `condense_memory` equals, one step at a time.)
        """
        if not self.condense:
            return memory[:, -1]
        return memory[:, -1] + self.memory(memory)[:, -1]

    def encode_motion(self, frame: jax.Array, flow: jax.Array, train: bool) -> jax.Array:
        """E_m on concat(flow [B, S, S, 2], frame [B, S, S, C]) -> x_v [B, s, s, c]."""
        return self.motion_encoder(jnp.concatenate([flow, frame], axis=-1), train)

    def motion_feature(self, frame: jax.Array, flow: jax.Array) -> jax.Array:
        """CAR's E_m(V, F) part of M: x_v averaged over its w x h positions, [B, c] (eval mode)."""
        return jnp.mean(self.encode_motion(frame, flow, False), axis=(1, 2))

    @nn.nowrap
    def initial_carry(self, batch: int) -> dict:
        """Zero ConvLSTM states, frame and flow (step 0 always reads ground truth)."""
        s, f = self.image_size, self.feature_size
        z = jnp.zeros((batch, f, f, self.lstm_features), self.dtype)
        return {
            "lstm": tuple((z, z) for _ in range(self.lstm_layers)),
            "frame": jnp.zeros((batch, s, s, self.channels), jnp.float32),
            "flow": jnp.zeros((batch, s, s, 2), jnp.float32),
        }

    def step(self, carry: dict, inp: dict, train: bool):
        """One step i: predicts F_hat[i+1].

        Args:
          carry: {"lstm", "frame" V_hat[i] = warp of the previous step, "flow" F_hat[i]}.
          inp: {"frame" V[i] [B, S, S, C], "flow" F[i] [B, S, S, 2], "use_gt" bool scalar
            (else the carried prediction is E_m's input, gradient stopped), "audio" x~_a[i]
            [B, c]}; with `recall_keys="memory"` also "memory" x_a [B, T, c] and "pos" i.
          train: BatchNorm batch statistics.

        Returns:
          (carry, {"flow": F_hat[i+1] [B, S, S, 2], "frame": warp(E_m's frame, F_hat[i+1])}).
        """
        use_gt = inp["use_gt"]
        frame = jnp.where(use_gt, inp["frame"], jax.lax.stop_gradient(carry["frame"]))
        flow_in = jnp.where(use_gt, inp["flow"], jax.lax.stop_gradient(carry["flow"]))
        xv = self.encode_motion(frame, flow_in, train)
        if self.recall:
            xa = inp["audio"].astype(xv.dtype)
            if self.recall_keys == "condensed":
                keys, valid = xa[:, None], None
            else:
                memory, pos = inp["memory"], inp["pos"]
                slots = jnp.arange(memory.shape[1])
                keys = jnp.where((slots == pos + 1)[None, :, None], xa[:, None], memory)
                valid = (slots <= pos + 1)[None, None, :]
            xv = self.recall_attention(xv, keys, valid)
        lstm, h = self.lstm(carry["lstm"], xv)
        flow = self.decoder(h, train).astype(jnp.float32)
        nxt = warp(frame.astype(jnp.float32), flow)
        return {"lstm": lstm, "frame": nxt, "flow": flow}, {"flow": flow, "frame": nxt}

    def __call__(self, frames: jax.Array, flows: jax.Array, audio: jax.Array, train: bool = False):
        """Touches every submodule once (for `init`): step 0 of a clip.

        frames [B, T, S, S, C], flows [B, T, S, S, 2], audio [B, T, Fa, Ta] -> F_hat[1].
        """
        xa = self.encode_audio(audio, train)
        xt = self.condense_memory(xa)
        inp = {
            "frame": frames[:, 0],
            "flow": flows[:, 0],
            "use_gt": jnp.asarray(True),
            "audio": xt[:, 0],
            "memory": xa,
            "pos": jnp.asarray(0, jnp.int32),
        }
        _, out = self.step(self.initial_carry(frames.shape[0]), inp, train)
        return out["flow"]
