"""Sound2Sight generator: prediction network + multimodal stochastic network.

Reference: docs/sound2sight.md 1.3-1.7, 1.10.

Time index convention: frames x[0..T-1]; step i = 1..T-1 predicts x[i] from
* the embedding h[i-1] of frame i-1 (ground truth in training: full teacher forcing as the
  official code; the previous prediction at test once i > n_past),
* z_i from the *prior* LSTM on [prior transformer over h[0..i-1], audio transformer over
  a[1..i]] (a[0] is never used; the target frame's audio is),
* skips from frame min(i-1, n_past-1) (frozen at the last seen frame; every step's own
  input with `last_frame_skip`).
The posterior LSTM reads [posterior transformer over h[1..i], same audio] and only enters
the KL term. Arrays are batch-major: frames [B, T, H, W, C] in [0, 1], audio [B, T, Fa, Ta].

`__call__` is the teacher-forced pass (all frames known: conv stacks batched over time,
transformers one causal pass, LSTMs `nn.scan`); `rollout` generates autoregressively with
`lax.scan` over `step` (a key/value cache for the prior transformer).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from avjax.models.sound2sight.convnets import AudioEncoder, FrameDecoder, FrameEncoder
from avjax.models.sound2sight.discriminator import Discriminator
from avjax.models.sound2sight.layers import Dtype, StackedLSTM, scan_cell
from avjax.models.sound2sight.transformer import CausalTransformer


def skip_index(num_steps: int, n_past: int, last_frame_skip: bool) -> jax.Array:
    """Frame whose skips feed step i = 1..num_steps: min(i-1, n_past-1), or i-1."""
    idx = jnp.arange(num_steps)
    return idx if last_frame_skip else jnp.minimum(idx, n_past - 1)


class Sound2Sight(nn.Module):
    """The generator side of Sound2Sight (every module the generator's Adam updates)."""

    image_size: int = 48
    channels: int = 1
    audio_shape: tuple[int, int] = (23, 21)
    g_dim: int = 128
    z_dim: int = 10
    rnn_size: int = 256
    predictor_layers: int = 2
    prior_layers: int = 1
    posterior_layers: int = 1
    nf: int = 64
    audio_nf: int = 64
    dim_ff: int = 128
    num_heads: int = 4
    n_past: int = 5
    last_frame_skip: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.encoder = FrameEncoder(self.g_dim, self.nf, self.image_size, **kw)
        self.decoder = FrameDecoder(self.channels, self.nf, self.image_size, **kw)
        self.audio_encoder = AudioEncoder(self.g_dim, self.audio_nf, tuple(self.audio_shape), **kw)
        tr = dict(d_model=self.rnn_size, output=self.g_dim, dim_ff=self.dim_ff, **kw)
        self.prior_transformer = CausalTransformer(num_heads=self.num_heads, **tr)
        self.posterior_transformer = CausalTransformer(num_heads=self.num_heads, **tr)
        self.audio_transformer = CausalTransformer(num_heads=self.num_heads, **tr)
        self.prior = StackedLSTM(self.rnn_size, self.z_dim, self.prior_layers, "gaussian", **kw)
        self.posterior = StackedLSTM(
            self.rnn_size, self.z_dim, self.posterior_layers, "gaussian", **kw
        )
        self.predictor = StackedLSTM(self.rnn_size, self.g_dim, self.predictor_layers, "tanh", **kw)

    # ------------------------------------------------------------------ teacher forcing
    def __call__(self, frames: jax.Array, audio: jax.Array, eps: jax.Array, train: bool = True):
        """Teacher-forced pass over a whole clip.

        Args:
          frames: [B, T, H, W, C] in [0, 1] (ground truth).
          audio: [B, T, Fa, Ta] per-frame STFT patches.
          eps: [B, T-1, z_dim] standard normal noise for the prior samples.
          train: BatchNorm batch statistics (per frame) and dropout.

        Returns:
          dict: "pred" [B, T-1, H, W, C] (predictions of x[1..T-1]), "mu"/"logvar"
          (posterior) and "mu_p"/"logvar_p" (prior), [B, T-1, z_dim] each.
        """
        b, t = frames.shape[:2]
        h, skips = self.encoder(frames, train)
        a_tr = self.audio_transformer(self.audio_encoder(audio[:, 1:], train), train)
        p_tr = self.prior_transformer(h[:, :-1], train)
        q_tr = self.posterior_transformer(h[:, 1:], train)
        _, (mu_p, logvar_p) = scan_cell(
            self.prior, self.prior.initial_carry(b), jnp.concatenate([p_tr, a_tr], -1)
        )
        _, (mu, logvar) = scan_cell(
            self.posterior, self.posterior.initial_carry(b), jnp.concatenate([q_tr, a_tr], -1)
        )
        z = mu_p + eps.astype(mu_p.dtype) * jnp.exp(0.5 * logvar_p)
        _, g = scan_cell(
            self.predictor, self.predictor.initial_carry(b), jnp.concatenate([h[:, :-1], z], -1)
        )
        idx = skip_index(t - 1, self.n_past, self.last_frame_skip)
        pred = self.decoder(g, tuple(s[:, idx] for s in skips), train)
        return {"pred": pred, "mu": mu, "logvar": logvar, "mu_p": mu_p, "logvar_p": logvar_p}

    # ---------------------------------------------------------------------- generation
    def audio_features(self, audio: jax.Array) -> jax.Array:
        """Eval-mode audio transformer outputs for steps 1..T-1: [B, T, Fa, Ta] -> [B, T-1, g]."""
        return self.audio_transformer(self.audio_encoder(audio[:, 1:], False), False)

    def initial_state(self, batch: int, num_steps: int) -> dict:
        """Zero LSTM states, an empty key/value cache, zero frame and skips."""
        frame = jnp.zeros((batch, self.image_size, self.image_size, self.channels), self.dtype)
        _, skips = self.encoder(frame, False)
        return {
            "predictor": self.predictor.initial_carry(batch),
            "prior": self.prior.initial_carry(batch),
            "cache": self.prior_transformer.init_cache(batch, num_steps),
            "frame": frame,
            "skips": jax.tree.map(jnp.zeros_like, skips),
        }

    def step(self, carry: dict, inp: dict, decode: bool):
        """One eval-mode step i (position pos = i-1).

        Args:
          carry: from `initial_state` or the previous step.
          inp: "frame" [B, H, W, C] ground-truth x[i-1], "use_gt" bool (else the carried
            prediction is the input), "audio" [B, g] audio transformer output of step i,
            "eps" [B, z_dim], "pos" int32 scalar i-1.
          decode: run the decoder (False while only advancing states over seen frames).

        Returns:
          (carry, prediction of x[i] [B, H, W, C] or None).
        """
        pos = inp["pos"]
        x_in = jnp.where(inp["use_gt"], inp["frame"].astype(self.dtype), carry["frame"])
        h, skips = self.encoder(x_in, False)
        keep_new = jnp.logical_or(pos < self.n_past, self.last_frame_skip)
        skips = jax.tree.map(lambda n, o: jnp.where(keep_new, n, o), skips, carry["skips"])
        p_tr, cache = self.prior_transformer.step(h, carry["cache"], pos)
        prior_c, (mu_p, logvar_p) = self.prior(
            carry["prior"], jnp.concatenate([p_tr, inp["audio"]], -1)
        )
        z = mu_p + inp["eps"].astype(mu_p.dtype) * jnp.exp(0.5 * logvar_p)
        pred_c, g = self.predictor(carry["predictor"], jnp.concatenate([h, z], -1))
        out = self.decoder(g, skips, False) if decode else None
        new = {
            "predictor": pred_c,
            "prior": prior_c,
            "cache": cache,
            "frame": out if decode else carry["frame"],
            "skips": skips,
        }
        return new, out


def rollout(
    model: Sound2Sight,
    variables: dict,
    frames: jax.Array,
    audio: jax.Array,
    eps: jax.Array,
    teacher_forced: bool = False,
) -> jax.Array:
    """Samples the future frames of a clip from the learned prior, autoregressively.

    Args:
      model: the generator (its `n_past` = number of seen frames).
      variables: {"params", "batch_stats"} of the generator.
      frames: [B, T, H, W, C] in [0, 1]; only x[0..n_past-1] are read unless `teacher_forced`.
      audio: [B, T, Fa, Ta]; the ground-truth audio of every step (future audio is given).
      eps: [B, T-1, z_dim] prior noise.
      teacher_forced: feed ground-truth frames at every step (equals the training pass in
        eval mode; for tests).

    Returns:
      Predicted frames n_past..T-1: [B, T - n_past, H, W, C].
    """
    b, t = frames.shape[:2]
    n_past = model.n_past
    if not 1 <= n_past < t:
        raise ValueError(f"n_past={n_past} must be in [1, {t - 1}] for clips of {t} frames")
    a_tr = model.apply(variables, audio, method=Sound2Sight.audio_features)
    carry = model.apply(variables, b, t - 1, method=Sound2Sight.initial_state)
    tm = lambda x: jnp.moveaxis(x, 1, 0)
    steps = jnp.arange(1, t)
    xs = {
        "frame": tm(frames[:, :-1]),
        "use_gt": (steps <= n_past) | teacher_forced,
        "audio": tm(a_tr),
        "eps": tm(eps),
        "pos": (steps - 1).astype(jnp.int32),
    }
    warm = jax.tree.map(lambda x: x[: n_past - 1], xs)
    gen = jax.tree.map(lambda x: x[n_past - 1 :], xs)

    def body(decode):
        return lambda c, inp: model.apply(variables, c, inp, decode, method=Sound2Sight.step)

    carry, _ = jax.lax.scan(body(False), carry, warm)
    _, preds = jax.lax.scan(body(True), carry, gen)
    return jnp.moveaxis(preds, 0, 1)


def make_model(config, dtype=jnp.float32) -> tuple[Sound2Sight, Discriminator]:
    """Generator and discriminator an experiment config describes (`configs/sound2sight_*.py`:
    its `model`, `disc` and `data` fields; frame and audio sizes come from `data`)."""
    m, d, data = config.model, config.disc, config.data
    gen = Sound2Sight(
        image_size=data.image_size,
        channels=data.channels,
        audio_shape=tuple(data.audio_shape),
        g_dim=m.g_dim,
        z_dim=m.z_dim,
        rnn_size=m.rnn_size,
        predictor_layers=m.predictor_layers,
        prior_layers=m.prior_layers,
        posterior_layers=m.posterior_layers,
        nf=m.nf,
        audio_nf=m.audio_nf,
        dim_ff=m.dim_ff,
        num_heads=m.num_heads,
        n_past=data.n_past,
        last_frame_skip=m.last_frame_skip,
        dtype=dtype,
    )
    disc = Discriminator(
        image_size=data.image_size,
        audio_shape=tuple(data.audio_shape),
        dim=m.g_dim,
        nf=m.nf,
        audio_nf=m.audio_nf,
        rnn_size=d.rnn_size,
        buffer=d.buffer,
        dtype=dtype,
    )
    return gen, disc
