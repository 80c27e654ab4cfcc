"""Sound2Sight training: generator and multimodal discriminator in one jitted step.

Reference: docs/sound2sight.md 1.7-1.9.

Per batch (T = n_past + n_future frames, steps i = 1..T-1, full teacher forcing):
* generator loss = sum_i MSE(x̂_i, x_i) + beta * sum_i KL(q_i || p_i) + w(epoch) * adv, with
  adv = (gen_loss + gen_syn_loss + gen_mismatch_loss) / 3 over the discriminator windows
  (i >= buffer), MSE a mean over B·H·W·C per step, KL summed over z and batch / B; the
  prior sample drives the generator ("sample prior" variant);
* w(epoch) = beta_gen * multiplier(epoch), multipliers (0, 1, 5, 10, 100) from epochs
  (1, 301, 601, 901) on: a traced function of the step (`steps_per_epoch` per epoch), so
  the schedule never recompiles the step;
* discriminator loss = real/2 + (syn + mismatch)/8 on detached predictions
  (docs/sound2sight.md 1.8).
Both Adam updates use the same forward pass (the official order: G and D gradients from
one `train()` call); each discriminator embedding (real frames, audio, generated frames)
runs forward once per step and its backward is pulled with both losses' cotangents, where
plain autodiff would re-run the embeddings inside each loss (a test checks the two agree).
The discriminator's BatchNorm running statistics are updated once per embedding. Frames
are scaled in `frames01` (the official loader divides each frame by its own maximum;
`config.data.frame_scale`).
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from avjax.convert.sound2sight import sound2sight_from_torch
from avjax.errors import UserError
from avjax.images import FRAME_SCALES, frames01
from avjax.losses.kl import kl_criterion
from avjax.metrics import image_quality as iq
from avjax.models.sound2sight import discriminator as disc_lib
from avjax.models.sound2sight.discriminator import Discriminator
from avjax.models.sound2sight.model import Sound2Sight, make_model, rollout
from avjax.train.tasks import common

__all__ = ["FRAME_SCALES", "LossConfig", "Sound2SightTask", "state_from_torch"]


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Loss weights and schedule (config field `loss`)."""

    # From the dataset size and batch (config.train.steps_per_epoch); None only for uses
    # that never train (conversion, sampling).
    steps_per_epoch: int | None
    beta: float = 1e-4
    beta_gen: float = 1e-4
    adv_epochs: tuple[int, ...] = (1, 301, 601, 901)
    adv_multipliers: tuple[float, ...] = (0.0, 1.0, 5.0, 10.0, 100.0)
    gen_mismatch_target: int = 0
    train_disc_encoders: bool = True

    def adv_weight(self, step: jax.Array) -> jax.Array:
        """Traced adversarial weight at (0-based) `step`."""
        if self.steps_per_epoch is None:
            raise UserError(
                "config.train.steps_per_epoch is unset: launch/train.py derives it from the "
                "dataset size (avjax.train.schedule.resolve_steps); set it when training "
                "the task yourself"
            )
        epoch = step // self.steps_per_epoch
        idx = jnp.searchsorted(jnp.asarray(self.adv_epochs), epoch, side="right")
        return self.beta_gen * jnp.asarray(self.adv_multipliers, jnp.float32)[idx]


def _ce(logits: jax.Array, label: int) -> jax.Array:
    """Cross-entropy [B, W, 2] (or [B, L, 2]) -> mean over batch, summed over windows."""
    labels = jnp.full(logits.shape[:-1], label, jnp.int32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum() / logits.shape[0]


class Sound2SightTask:
    """Init / train_step / eval_step / samples of Sound2Sight."""

    def __init__(
        self,
        gen: Sound2Sight,
        disc: Discriminator,
        loss: LossConfig,
        g_tx: optax.GradientTransformation,
        d_tx: optax.GradientTransformation,
        train_frames: int,
        frame_scale: str = "per_frame_max",
        sample_clips: int = 4,
        sample_count: int = 5,
        fps: float = 10.0,
    ):
        if frame_scale not in FRAME_SCALES:
            raise ValueError(
                f"config.data.frame_scale must be one of {FRAME_SCALES}, got {frame_scale!r}"
            )
        if train_frames - 1 < disc.buffer:
            raise ValueError(
                f"config.disc.buffer={disc.buffer} needs clips of more than {disc.buffer} frames"
            )
        if loss.gen_mismatch_target not in (0, 1):
            raise ValueError("config.loss.gen_mismatch_target must be 0 (paper) or 1 (official)")
        if len(loss.adv_multipliers) != len(loss.adv_epochs) + 1:
            raise ValueError("config.loss.adv_multipliers needs one more entry than adv_epochs")
        self.gen, self.disc, self.loss = gen, disc, loss
        self.g_tx, self.d_tx = g_tx, d_tx
        self.train_frames = train_frames
        self.frame_scale = frame_scale
        self.sample_clips, self.sample_count, self.fps = sample_clips, sample_count, fps
        self._sample_first = jax.jit(self._first_clip_samples, static_argnums=(3, 4))

    @classmethod
    def from_config(cls, config, stats=None) -> Sound2SightTask:
        """Builds the task from an experiment config (`configs/sound2sight_*.py`)."""
        del stats  # Sound2Sight needs no dataset statistics
        gen, disc = make_model(config, jnp.dtype(config.dtype))
        lc = config.loss
        loss = LossConfig(
            beta=lc.beta,
            beta_gen=lc.beta_gen,
            adv_epochs=tuple(lc.adv_epochs),
            adv_multipliers=tuple(float(v) for v in lc.adv_multipliers),
            steps_per_epoch=config.train.steps_per_epoch,
            gen_mismatch_target=lc.gen_mismatch_target,
            train_disc_encoders=config.disc.train_encoders,
        )
        o = config.optim
        g_tx = optax.adam(o.lr, b1=o.b1, b2=o.b2, eps=o.eps)
        d_tx = optax.adam(o.disc_lr, b1=o.b1, b2=o.b2, eps=o.eps)
        d = config.data
        return cls(
            gen,
            disc,
            loss,
            g_tx,
            d_tx,
            d.n_past + d.n_future,
            d.frame_scale,
            sample_clips=config.train.sample_clips,
            sample_count=config.train.sample_count,
            fps=d.fps,
        )

    # ----------------------------------------------------------------------------- state
    def _dummy(self, t: int):
        g = self.gen
        x = jnp.zeros((1, t, g.image_size, g.image_size, g.channels), jnp.float32)
        a = jnp.zeros((1, t, *g.audio_shape), jnp.float32)
        return x, a

    def init(self, rng) -> dict:
        k_g, k_d, k_drop, k_state = jax.random.split(rng, 4)
        t = self.train_frames
        x, a = self._dummy(t)
        eps = jnp.zeros((1, t - 1, self.gen.z_dim))
        gv = self.gen.init({"params": k_g, "dropout": k_drop}, x, a, eps, train=False)
        dv = self.disc.init({"params": k_d}, x, a, train=False)
        return common.init_state(
            k_state,
            {"gen": gv["params"], "disc": dv["params"]},
            {"gen": self.g_tx.init(gv["params"]), "disc": self.d_tx.init(dv["params"])},
            batch_stats={"gen": gv["batch_stats"], "disc": dv["batch_stats"]},
        )

    def trainable_params(self, state) -> dict:
        return state["params"]

    # ------------------------------------------------------------------------------ step
    def _d_embed(self, dp, bs, method, x):
        out, upd = self.disc.apply(
            {"params": dp, "batch_stats": bs}, x, True, method=method, mutable=["batch_stats"]
        )
        return out, upd["batch_stats"]

    def _d_call(self, dp, method, *args):
        return self.disc.apply({"params": dp}, *args, method=method)

    def train_step(self, state, batch):
        lw = self.loss
        step = state["step"]
        k_eps, k_drop = jax.random.split(jax.random.fold_in(state["rng"], step))
        x = frames01(batch["frames"], self.frame_scale)
        a = batch["audio"].astype(jnp.float32)
        b, t = x.shape[:2]
        n = self.disc.buffer
        eps = jax.random.normal(k_eps, (b, t - 1, self.gen.z_dim), jnp.float32)
        w_adv = lw.adv_weight(step)
        gp, dp = state["params"]["gen"], state["params"]["disc"]
        target, a_target = x[:, 1:], a[:, 1:]
        win = disc_lib.window_index(t - 1, n)

        # Each discriminator embedding runs forward once; its backward is pulled twice: the
        # generator's cotangent through the fake frames, the discriminator's to its params.
        def real_embeds(dp):
            r_e, bs = self._d_embed(
                dp, state["batch_stats"]["disc"], Discriminator.embed_frames, target
            )
            a_e, bs = self._d_embed(dp, bs, Discriminator.embed_audio, a_target)
            return (r_e, a_e), bs

        def gen_forward(gp):
            out, upd = self.gen.apply(
                {"params": gp, "batch_stats": state["batch_stats"]["gen"]},
                x,
                a,
                eps,
                train=True,
                rngs={"dropout": k_drop},
                mutable=["batch_stats"],
            )
            return out, upd["batch_stats"]

        (real_e, aud_e), real_vjp, real_bs = jax.vjp(real_embeds, dp, has_aux=True)
        out, gen_vjp, g_bs = jax.vjp(gen_forward, gp, has_aux=True)
        fake_e, fake_vjp, d_bs = jax.vjp(
            lambda dp, pred: self._d_embed(dp, real_bs, Discriminator.embed_frames, pred),
            dp,
            out["pred"],
            has_aux=True,
        )
        # Discriminator heads, shared by both losses: windows -> logits, frames -> logits.
        score = lambda dp, fw, aw: self._d_call(dp, Discriminator.score, fw, aw)
        cls = lambda dp, e: self._d_call(dp, Discriminator.classify_frames, e[:, n - 1 :])
        aud_w, rolled_w = aud_e[:, win], disc_lib.roll_batch(aud_e)[:, win]

        def g_loss_fn(out, fake_e):
            pred = out["pred"]
            mse = jnp.sum(jnp.mean(jnp.square(pred - target), axis=(0, 2, 3, 4)))
            kld = kl_criterion(out["mu"], out["logvar"], out["mu_p"], out["logvar_p"])
            fake_w = disc_lib.make_windows(real_e, fake_e, n)
            gen_loss = _ce(score(dp, fake_w, aud_w), 1)
            gen_syn = _ce(cls(dp, fake_e), 1)
            gen_mis = _ce(score(dp, fake_w, rolled_w), lw.gen_mismatch_target)
            adv = (gen_loss + gen_syn + gen_mis) / 3.0
            loss = mse + lw.beta * kld + w_adv * adv
            aux = dict(
                g_loss=loss,
                mse=mse / (t - 1),
                kld=kld / (t - 1),
                gen_loss=gen_loss,
                gen_syn_loss=gen_syn,
                gen_mismatch_loss=gen_mis,
                adv_weight=w_adv,
            )
            return loss, aux

        (_, metrics), (d_out, d_fake) = jax.value_and_grad(g_loss_fn, (0, 1), has_aux=True)(
            out, fake_e
        )
        d_out = {**d_out, "pred": d_out["pred"] + fake_vjp(d_fake)[1]}
        (g_grads,) = gen_vjp(d_out)
        gp, g_opt = common.apply_optimizer(self.g_tx, g_grads, state["opt_state"]["gen"], gp)

        def d_loss_fn(dp, r_e, a_e, f_e):
            real_w = disc_lib.make_windows(r_e, r_e, n)
            fake_w = disc_lib.make_windows(r_e, f_e, n)
            aud_w, rolled_w = a_e[:, win], disc_lib.roll_batch(a_e)[:, win]
            syn = _ce(score(dp, fake_w, aud_w), 0) + _ce(cls(dp, f_e), 0)
            real = _ce(score(dp, real_w, aud_w), 1) + _ce(cls(dp, r_e), 1)
            mis = _ce(score(dp, real_w, rolled_w), 0) + _ce(score(dp, fake_w, rolled_w), 0)
            loss = real / 2.0 + (syn + mis) / 8.0
            return loss, dict(d_loss=loss, d_real=real, d_syn=syn, d_mismatch=mis)

        (_, d_metrics), (d_grads, d_re, d_ae, d_fe) = jax.value_and_grad(
            d_loss_fn, (0, 1, 2, 3), has_aux=True
        )(dp, real_e, aud_e, fake_e)
        if lw.train_disc_encoders:
            enc_grads = (real_vjp((d_re, d_ae))[0], fake_vjp(d_fe)[0])
            d_grads = jax.tree.map(lambda g, r, f: g + r + f, d_grads, *enc_grads)
        # else official: the encoders never change, only their BN statistics move
        dp, d_opt = common.apply_optimizer(self.d_tx, d_grads, state["opt_state"]["disc"], dp)

        new_state = common.next_state(
            state,
            {"gen": gp, "disc": dp},
            {"gen": g_opt, "disc": d_opt},
            batch_stats={"gen": g_bs, "disc": d_bs},
        )
        metrics = {
            **metrics,
            **d_metrics,
            "grad_norm_gen": optax.global_norm(g_grads),
            "grad_norm_disc": optax.global_norm(d_grads),
        }
        return new_state, common.float32_metrics(metrics)

    # --------------------------------------------------------------------------- eval
    def gen_variables(self, state) -> dict:
        return {"params": state["params"]["gen"], "batch_stats": state["batch_stats"]["gen"]}

    def sample_futures(self, state, frames, audio, rng, num_samples: int = 1):
        """Prior samples: frames [B, T, H, W, C] in [0, 1] -> futures [S, B, T-n_past, H, W, C]."""
        b, t = frames.shape[:2]
        eps = jax.random.normal(rng, (num_samples, b, t - 1, self.gen.z_dim), jnp.float32)
        variables = self.gen_variables(state)
        return jax.vmap(lambda e: rollout(self.gen, variables, frames, audio, e))(eps)

    def eval_step(self, state, batch):
        """One prior sample per clip over the eval length: MSE / SSIM / PSNR of future frames.

        Also the copy-last-frame baseline. Padding clips (`mask` 0) are left out.
        """
        x = frames01(batch["frames"], self.frame_scale)
        a = batch["audio"].astype(jnp.float32)
        n_past = self.gen.n_past
        pred = self.sample_futures(state, x, a, jax.random.PRNGKey(0))[0]
        gt = x[:, n_past:]
        copy = jnp.broadcast_to(x[:, n_past - 1 : n_past], gt.shape)
        mask = batch.get("mask", jnp.ones(x.shape[0], jnp.float32)).astype(jnp.float32)
        denom = jnp.maximum(mask.sum(), 1.0)
        mean = lambda v: jnp.sum(jnp.mean(v, axis=1) * mask) / denom
        out = {}
        for name, p in (("", pred), ("copy_last_", copy)):
            out[f"{name}mse"] = mean(jnp.mean(jnp.square(p - gt), axis=(2, 3, 4)))
            out[f"{name}ssim"] = mean(iq.ssim_correct(p, gt))
            out[f"{name}ssim_paper"] = mean(iq.ssim_paper(p, gt))
            out[f"{name}psnr"] = mean(iq.psnr(p, gt))
        return common.float32_metrics(out)

    # --------------------------------------------------------------------------- samples
    def _first_clip_samples(self, state, batch, rng, clips: int, num_samples: int):
        """The first `clips` clips of `batch` in [0, 1] and `num_samples` prior futures each."""
        x = frames01(batch["frames"][:clips], self.frame_scale)
        audio = batch["audio"][:clips].astype(jnp.float32)
        return x, self.sample_futures(state, x, audio, rng, num_samples=num_samples)

    def sample_grid(
        self, state, frames, audio, rng, num_samples: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Samples futures of B clips and tiles them for people, one picture per time step.

        Args:
          state: the train state (its generator part is used).
          frames: uint8 [B, T, H, W, C] (scaled by `frame_scale`); the first `n_past` are seen.
          audio: [B, T, Fa, Ta] audio patches.
          rng: PRNG key of the prior samples.
          num_samples: S sampled futures per clip.

        Returns:
          grid: uint8 [T, rows, cols, 3]: rows = clips, columns = [ground truth, best of S,
            up to 4 samples]; "best" has the highest mean SSIM over the predicted frames
            (the official `make_gifs`); seen frames (green border) appear in every column,
            predicted ones have a red border.
          best: int [B], the index of each clip's best sample.
        """
        from avjax import multihost

        batch = {"frames": jnp.asarray(frames), "audio": jnp.asarray(audio)}
        x, samples = multihost.to_host(
            self._sample_first(state, batch, rng, len(frames), num_samples)
        )
        return self._tile(x, samples)

    def _tile(self, x: np.ndarray, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Clips [B, T, ...] in [0, 1] and their futures [S, B, Tf, ...] -> (grid, best)."""
        from avjax import images

        n_past = self.gen.n_past
        gt = x[:, n_past:]
        scores = np.asarray(iq.ssim_correct(samples, np.broadcast_to(gt, samples.shape))).mean(-1)
        best = np.argmax(scores, axis=0)
        cols = [x, np.concatenate([x[:, :n_past], samples[best, np.arange(len(x))]], 1)]
        for s in range(min(len(samples), 4)):
            cols.append(np.concatenate([x[:, :n_past], samples[s]], 1))
        return images.frame_grid(np.stack(cols, 1), n_past), best

    def write_samples(self, state, batch, writer, step, out_dir: pathlib.Path):
        """GIF grid (`sample_grid`) of the first `sample_clips` clips of the batch. Every
        process runs the (sharded) sampler and gathers its clips; process 0 writes."""
        from avjax import multihost
        from avjax.video import io as video_io

        x, samples = multihost.to_host(
            self._sample_first(
                state, batch, jax.random.PRNGKey(step), self.sample_clips, self.sample_count
            )
        )
        if not multihost.is_main():
            return
        grid, _ = self._tile(x, samples)
        n_past = self.gen.n_past
        out_dir.mkdir(parents=True, exist_ok=True)
        video_io.write_gif(out_dir / "gt_best_samples.gif", grid, fps=self.fps)
        writer.image(step, "samples/last_frame", grid[-1])
        writer.image(step, "samples/first_predicted_frame", grid[n_past])


def state_from_torch(sd, config) -> dict:
    """An official checkpoint as a whole task state at step 0 (`--kind sound2sight`).

    The converted weights (`avjax.convert.sound2sight`) in the state `Sound2SightTask.init`
    starts a run with: step 0, the run RNG of `config.seed`, and fresh Adam moments (official
    checkpoints hold no optimizer state). Training resumes from it; evaluation reads its
    weights.
    """
    task = Sound2SightTask.from_config(config)
    # launch/train.py starts a run from task.init(PRNGKey(seed)). Adam's moments start at
    # zero whatever the weights, so only the weights are replaced.
    state = jax.jit(task.init)(jax.random.PRNGKey(config.seed))
    return {**state, **sound2sight_from_torch(sd, config, state)}
