"""The multimodal discriminator and its negatives (docs/sound2sight.md 1.8).

`disc_encoder` (a frame encoder) and `disc_audio_enc` (an STFT encoder) embed frames and
audio; the frame classifier (`disc_std`, Linear(dim, 2)) scores single frames; the
sequence discriminator (`disc`, Linear embed -> LSTM -> Linear -> tanh, 2 logits) scores
a buffer of `buffer` frames with their audio. Its sequences are always
[real_{i-n+1}, ..., real_{i-1}, last_i]: the first entries are real frames, the last is
real, generated ("motion-dynamics" negative) or real/generated with the audio of another
clip (batch rolled by one, "audio-alignment" negative).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from avjax.models.sound2sight.convnets import AudioEncoder, FrameEncoder
from avjax.models.sound2sight.layers import Dtype, StackedLSTM, dense, scan_cell


def window_index(length: int, buffer: int) -> jax.Array:
    """[W, buffer] frame indices of the windows ending at buffer-1 .. length-1."""
    ends = jnp.arange(buffer - 1, length)
    return ends[:, None] + jnp.arange(-(buffer - 1), 1)[None, :]


def make_windows(real: jax.Array, last: jax.Array, buffer: int) -> jax.Array:
    """[real_{i-n+1}, .., real_{i-1}, last_i] for every i >= n-1.

    Args:
      real, last: [B, L, ...] per-frame embeddings (same shape).
      buffer: n, frames per window.

    Returns:
      [B, L - n + 1, n, ...].
    """
    idx = window_index(real.shape[1], buffer)
    return real[:, idx].at[:, :, -1].set(last[:, buffer - 1 :])


def roll_batch(x: jax.Array) -> jax.Array:
    """The official audio mismatch: sample b gets sample b+1's audio (`cat[A[1:], A[:1]]`)."""
    return jnp.concatenate([x[1:], x[:1]], axis=0)


class Discriminator(nn.Module):
    """Frame classifier + sequence discriminator over a frame buffer, with their encoders."""

    image_size: int = 48
    audio_shape: tuple[int, int] = (23, 21)
    dim: int = 128
    nf: int = 64
    audio_nf: int = 64
    rnn_size: int = 256
    buffer: int = 3
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.frame_encoder = FrameEncoder(self.dim, self.nf, self.image_size, **kw)
        self.audio_encoder = AudioEncoder(self.dim, self.audio_nf, tuple(self.audio_shape), **kw)
        self.seq = StackedLSTM(self.rnn_size, 2, 1, "tanh", **kw)
        self.frame_cls = dense(2, self.dtype, self.param_dtype)

    def embed_frames(self, x: jax.Array, train: bool) -> jax.Array:
        """[B, L, H, W, C] in [0, 1] -> [B, L, dim] (per-frame BatchNorm)."""
        return self.frame_encoder(x, train)[0]

    def embed_audio(self, a: jax.Array, train: bool) -> jax.Array:
        """[B, L, Fa, Ta] -> [B, L, dim]."""
        return self.audio_encoder(a, train)

    def classify_frames(self, e: jax.Array) -> jax.Array:
        """`disc_std`: [..., dim] -> logits [..., 2] (no activation)."""
        return self.frame_cls(e)

    def score(self, frames_w: jax.Array, audio_w: jax.Array) -> jax.Array:
        """`disc` on windows: [B, W, n, dim] x2 -> logits [B, W, 2] (tanh-bounded, last step)."""
        b, w, n, _ = frames_w.shape
        x = jnp.concatenate([frames_w, audio_w], axis=-1).reshape(b * w, n, -1)
        _, out = scan_cell(self.seq, self.seq.initial_carry(b * w), x)
        return out[:, -1].reshape(b, w, 2)

    def __call__(self, x, a, train: bool = False):
        """Init / smoke entry: windows of real frames with their audio -> (seq, frame) logits."""
        r, e = self.embed_frames(x, train), self.embed_audio(a, train)
        win = window_index(x.shape[1], self.buffer)
        return self.score(r[:, win], e[:, win]), self.classify_frames(r)
