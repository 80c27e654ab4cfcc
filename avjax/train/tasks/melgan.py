"""MelGAN vocoder training as SpecVQGAN's `vocoder/scripts/train.py` does it, one jitted step.

Per batch of waveform windows x [B, N] (N = 8192):
1. s = log-mel of x ([0, 1] SpecVQGAN transform, `len // 256` = 32 frames), x̂ = G(s);
2. discriminator update on sum_i mean relu(1 + D_i(sg x̂)) + mean relu(1 - D_i(x));
3. generator update on sum_i -mean D'_i(x̂) + lambda_feat * FM, where D' is the *updated*
   discriminator and FM = sum_{i, l < last} (4 / (n_layers + 1)) (1 / num_D) |D'_i,l(x̂) -
   sg D_i,l(x)|_1 uses the real features from step 2 (the pre-update D), as the official loop.
Both with Adam(1e-4, 0.5, 0.9). x̂ is computed once (`jax.vjp`) and reused by both updates.
`mel_l1` = mean |mel(x̂) - s| is the official `s_error` (the best-checkpoint criterion).
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from avjax.audio import mel as mel_lib
from avjax.models.specvqgan import melgan
from avjax.train.tasks import common


@dataclasses.dataclass(frozen=True)
class MelGANLoss:
    """Loss settings (config field `loss`) and the critic depth the FM weight depends on."""

    lambda_feat: float = 10.0
    n_layers_D: int = 4


def mel_of(wave: jax.Array, num_frames: int, spec: mel_lib.MelSpec = mel_lib.DEFAULT):
    """[B, N] waves -> the vocoder's input [B, 80, num_frames] (first frames of the STFT)."""
    return mel_lib.log_mel_spectrogram_jax(wave, spec)[:, :, :num_frames]


class MelGANTask:
    """Init / train_step / eval_step / samples of the MelGAN vocoder."""

    def __init__(
        self,
        generator: melgan.Generator,
        discriminator: melgan.Discriminator,
        loss: MelGANLoss,
        g_tx: optax.GradientTransformation,
        d_tx: optax.GradientTransformation,
        seq_len: int,
        sample_clips: dict[str, np.ndarray] | None = None,
        spec: mel_lib.MelSpec = mel_lib.DEFAULT,
    ):
        if seq_len % generator.hop_length:
            raise ValueError(
                f"config.data.seq_len={seq_len} must be a multiple of the hop "
                f"{generator.hop_length}"
            )
        if generator.hop_length != spec.hop_length:
            raise ValueError(
                f"config.model.ratios {tuple(generator.ratios)} give a hop of "
                f"{generator.hop_length}, but the log-mel hop is {spec.hop_length}"
            )
        self.g, self.d, self.loss = generator, discriminator, loss
        self.g_tx, self.d_tx = g_tx, d_tx
        self.seq_len, self.num_frames = seq_len, seq_len // generator.hop_length
        self.sample_clips = sample_clips or {}
        self.spec = spec
        self._vocode = jax.jit(lambda p, m: self.vocode(p, m))

    @classmethod
    def from_config(cls, config, stats: dict[str, np.ndarray] | None = None) -> MelGANTask:
        """Builds the task from `configs/melgan_vggsound.py`.

        `stats` (from `data_pipelines.wave_inputs.make_inputs`) may hold `sample_mel`
        [n, 80, T] and `sample_wave` [n, 256 T]: whole eval clips vocoded by `write_samples`.
        """
        dtype = jnp.dtype(config.dtype)
        gen, disc = melgan.make_model(config, dtype)
        o = config.optim
        tx = lambda: optax.adam(o.lr, b1=o.b1, b2=o.b2, eps=o.eps)
        loss = MelGANLoss(lambda_feat=config.loss.lambda_feat, n_layers_D=config.disc.n_layers)
        clips = {k: v for k, v in (stats or {}).items() if k in ("sample_mel", "sample_wave")}
        return cls(gen, disc, loss, tx(), tx(), config.data.seq_len, clips)

    # ----------------------------------------------------------------------------- state
    def init(self, rng) -> dict:
        k_g, k_d, k_state = jax.random.split(rng, 3)
        mel = jnp.zeros((1, self.num_frames, self.spec.n_mels), jnp.float32)
        gp = self.g.init({"params": k_g}, mel)["params"]
        dp = self.d.init({"params": k_d}, jnp.zeros((1, self.seq_len, 1), jnp.float32))["params"]
        return common.init_state(
            k_state,
            {"generator": gp, "discriminator": dp},
            {"generator": self.g_tx.init(gp), "discriminator": self.d_tx.init(dp)},
        )

    def trainable_params(self, state) -> dict:
        return state["params"]

    # ------------------------------------------------------------------------------ step
    def vocode(self, gparams, mel01: jax.Array) -> jax.Array:
        """[B, 80, T] -> float32 [B, 256 T]."""
        wave = self.g.apply({"params": gparams}, jnp.swapaxes(mel01, 1, 2))
        return wave[..., 0].astype(jnp.float32)

    def _critic(self, dparams, wave):
        """[B, N] -> per scale, the list of float32 layer outputs."""
        outs = self.d.apply({"params": dparams}, wave[..., None])
        return jax.tree.map(lambda a: a.astype(jnp.float32), outs)

    def train_step(self, state, batch):
        x = batch["wave"].astype(jnp.float32)  # [B, N]
        s = jax.lax.stop_gradient(mel_of(x, self.num_frames, self.spec))
        gp, dp = state["params"]["generator"], state["params"]["discriminator"]
        x_pred, g_vjp = jax.vjp(lambda p: self.vocode(p, s), gp)

        def d_loss_fn(dp):
            d_fake = self._critic(dp, jax.lax.stop_gradient(x_pred))
            d_real = self._critic(dp, x)
            loss = melgan.discriminator_loss(d_real, d_fake)
            aux = dict(
                logits_real=sum(jnp.mean(r[-1]) for r in d_real) / len(d_real),
                logits_fake=sum(jnp.mean(f[-1]) for f in d_fake) / len(d_fake),
            )
            return loss, (d_real, aux)

        (d_loss, (d_real, d_aux)), g_d = jax.value_and_grad(d_loss_fn, has_aux=True)(dp)
        dp, d_opt = common.apply_optimizer(self.d_tx, g_d, state["opt_state"]["discriminator"], dp)

        def g_loss_fn(wave):
            d_fake = self._critic(dp, wave)
            adv = melgan.generator_adv_loss(d_fake)
            fm = melgan.feature_matching_loss(d_real, d_fake, self.loss.n_layers_D)
            return adv + self.loss.lambda_feat * fm, (adv, fm)

        (g_total, (adv, fm)), g_wave = jax.value_and_grad(g_loss_fn, has_aux=True)(x_pred)
        (g_g,) = g_vjp(g_wave)
        gp, g_opt = common.apply_optimizer(self.g_tx, g_g, state["opt_state"]["generator"], gp)

        mel_l1 = jnp.mean(jnp.abs(mel_of(x_pred, self.num_frames, self.spec) - s))
        new_state = common.next_state(
            state,
            {"generator": gp, "discriminator": dp},
            {"generator": g_opt, "discriminator": d_opt},
        )
        metrics = dict(
            d_loss=d_loss,
            g_loss=adv,
            fm_loss=fm,
            g_total_loss=g_total,
            mel_l1=jax.lax.stop_gradient(mel_l1),
            grad_norm_g=optax.global_norm(g_g),
            grad_norm_d=optax.global_norm(g_d),
            **d_aux,
        )
        return new_state, common.float32_metrics(metrics)

    def eval_step(self, state, batch):
        """Mel L1 of the vocoded eval windows and the critic's losses (no updates).

        Padding examples (`mask` 0) are excluded from `mel_l1`.
        """
        x = batch["wave"].astype(jnp.float32)
        mask = batch.get("mask", jnp.ones(x.shape[:1], bool)).astype(jnp.float32)
        s = mel_of(x, self.num_frames, self.spec)
        x_pred = self.vocode(state["params"]["generator"], s)
        per_clip = jnp.mean(jnp.abs(mel_of(x_pred, self.num_frames, self.spec) - s), axis=(1, 2))
        dp = state["params"]["discriminator"]
        d_fake, d_real = self._critic(dp, x_pred), self._critic(dp, x)
        metrics = dict(
            mel_l1=jnp.sum(per_clip * mask) / jnp.maximum(jnp.sum(mask), 1.0),
            d_loss=melgan.discriminator_loss(d_real, d_fake),
            g_loss=melgan.generator_adv_loss(d_fake),
            fm_loss=melgan.feature_matching_loss(d_real, d_fake, self.loss.n_layers_D),
        )
        return common.float32_metrics(metrics)

    # --------------------------------------------------------------------------- samples
    def write_samples(self, state, batch, writer, step, out_dir: pathlib.Path, num: int = 4):
        """Vocodes whole eval clips (or, without them, the batch's windows) to wav + png.

        Every process gathers the windows and the generator; process 0 vocodes (on its local
        devices) and writes.
        """
        from avjax import images, multihost
        from avjax.audio import io

        if "sample_mel" in self.sample_clips:
            mels = self.sample_clips["sample_mel"][:num]
            real = self.sample_clips.get("sample_wave")
        else:
            waves = multihost.first_rows(batch["wave"], num)
            mels = np.asarray(mel_of(jnp.asarray(waves), self.num_frames, self.spec))
            real = waves
        gp = multihost.to_host(state["params"]["generator"])
        if not multihost.is_main():
            return
        fake = np.asarray(self._vocode(gp, jnp.asarray(mels, jnp.float32)))
        fake_mels = mel_lib.log_mel_spectrogram_jax(fake, self.spec)[:, :, : mels.shape[-1]]
        out_dir.mkdir(parents=True, exist_ok=True)
        sr = self.spec.sample_rate
        for i in range(len(mels)):
            writer.audio(step, f"vocoded/{i}", fake[i], sr)
            io.write_wav(out_dir / f"{i}_vocoded.wav", fake[i], sr)
            pair = images.mel_pair(2 * mels[i] - 1, 2 * fake_mels[i] - 1)
            writer.image(step, f"mel_input_vs_vocoded/{i}", pair)
            images.save_png(out_dir / f"{i}_mel_input_vs_vocoded.png", pair)
            real_path = out_dir.parent / f"{i}_real.wav"  # the reference, written once
            if real is not None and not real_path.exists():
                io.write_wav(real_path, np.asarray(real[i], np.float32), sr)
                writer.audio(step, f"real/{i}", np.asarray(real[i], np.float32), sr)
