"""SpecVQGAN codebook training: VQGAN + LPAPS + hinge patch discriminator, one jitted step.

The step follows the official two-optimizer Lightning loop (`VQLPAPSWithDiscriminator`):
1. autoencoder update on `nll + d_weight * disc_factor * g + codebook_weight * qloss`,
   with `nll = mean|x - x̂| + perceptual_weight * LPAPS(x, x̂)` and `g = -mean D(x̂)`;
2. discriminator update on `disc_factor * hinge(D(x), D(sg x̂'))`, where x̂' is recomputed
   with the updated autoencoder (Lightning re-runs the forward per optimizer); with
   `loss.disc_recompute=False` x̂' is the step's own reconstruction (one forward less).
`disc_factor` is 0 before `loss.disc_start` as a traced value, so the discriminator
switching on never recompiles the step. BatchNorm statistics of the discriminator are
updated by each of its three forward passes, as in the official code; under `jit` with a
batch-sharded mesh they are global-batch statistics (the official `sync_batchnorm`).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from avjax.losses import gan
from avjax.losses.lpaps import LPAPS
from avjax.models.specvqgan.classifiers import conv_layers
from avjax.models.specvqgan.discriminator import NLayerDiscriminator
from avjax.models.specvqgan.vqgan import VQGAN, make_model
from avjax.train.tasks import common

LAST_LAYER = ("decoder", "conv_out", "kernel")


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """`VQLPAPSWithDiscriminator` settings (docs/specvqgan.md A2); config field `loss`."""

    disc_start: int = 30001
    disc_weight: float = 0.8
    disc_factor: float = 1.0
    codebook_weight: float = 1.0
    perceptual_weight: float = 1.0
    min_adapt_weight: float = 1.0
    max_adapt_weight: float = 1.0
    disc_loss: str = "hinge"
    disc_recompute: bool = True


class VQGANTask:
    """Init / train_step / eval_step / samples of the spectrogram codebook."""

    def __init__(
        self,
        model: VQGAN,
        disc: NLayerDiscriminator,
        lpaps: LPAPS,
        weights: LossWeights,
        ae_tx: optax.GradientTransformation,
        disc_tx: optax.GradientTransformation,
        input_shape: tuple[int, int],
        lpaps_stats: dict[str, np.ndarray],
        lpaps_backbone: Any = None,
        sample_rate: int = 22050,
    ):
        self.model, self.disc, self.lpaps, self.w = model, disc, lpaps, weights
        self.ae_tx, self.disc_tx = ae_tx, disc_tx
        self.input_shape = tuple(input_shape)
        self.lpaps_stats = {k: np.asarray(v, np.float32) for k, v in lpaps_stats.items()}
        self.lpaps_backbone = lpaps_backbone
        self.sample_rate = sample_rate
        if weights.disc_loss not in ("hinge", "vanilla"):
            raise ValueError(
                f"config.loss.disc_loss must be 'hinge' or 'vanilla', got {weights.disc_loss!r}"
            )
        self._d_loss = gan.hinge_d_loss if weights.disc_loss == "hinge" else gan.vanilla_d_loss
        self._reconstruct_first = jax.jit(self.reconstruct_first, static_argnums=2)

    @classmethod
    def from_config(cls, config, lpaps_stats, lpaps_backbone=None) -> VQGANTask:
        """Builds the task from an experiment config (`configs/specvqgan_*.py`)."""
        dtype = jnp.dtype(config.dtype)
        model = make_model(config.model, dtype)
        disc = NLayerDiscriminator(ndf=config.disc.ndf, n_layers=config.disc.n_layers, dtype=dtype)
        lpaps = LPAPS(
            conv_layers=conv_layers(config.loss.lpaps_layers),
            dropout_rate=config.loss.lpaps_dropout,
            num_bins=config.data.num_mel_bins,
            dtype=dtype,
        )
        lw = config.loss
        weights = LossWeights(
            disc_start=lw.disc_start,
            disc_weight=lw.disc_weight,
            disc_factor=lw.disc_factor,
            codebook_weight=lw.codebook_weight,
            perceptual_weight=lw.perceptual_weight,
            min_adapt_weight=lw.min_adapt_weight,
            max_adapt_weight=lw.max_adapt_weight,
            disc_loss=lw.disc_loss,
            disc_recompute=lw.get("disc_recompute", True),
        )
        lr = config.optim.base_lr * config.data.global_batch_size
        o = config.optim
        tx = lambda: optax.adam(lr, b1=o.b1, b2=o.b2, eps=o.eps)
        return cls(
            model,
            disc,
            lpaps,
            weights,
            tx(),
            tx(),
            (config.data.num_mel_bins, config.data.crop_frames),
            lpaps_stats,
            lpaps_backbone,
        )

    # ----------------------------------------------------------------------------- state
    def init(self, rng) -> dict:
        k_ae, k_d, k_l, k_state = jax.random.split(rng, 4)
        x = jnp.zeros((1, *self.input_shape, 1), jnp.float32)
        ae = self.model.init({"params": k_ae}, x)["params"]
        dvars = self.disc.init({"params": k_d}, x, train=False)
        lp = self.lpaps.init({"params": k_l}, x, x)
        lp_params = lp["params"]
        if self.lpaps_backbone is not None:
            lp_params = {**lp_params, "net": jax.tree.map(jnp.asarray, self.lpaps_backbone)}
        stats = {k: jnp.asarray(v) for k, v in self.lpaps_stats.items()}
        return common.init_state(
            k_state,
            {"ae": ae, "disc": dvars["params"]},
            {"ae": self.ae_tx.init(ae), "disc": self.disc_tx.init(dvars["params"])},
            batch_stats={"disc": dvars["batch_stats"]},
            lpaps={"params": lp_params, "stats": stats},
        )

    def trainable_params(self, state) -> dict:
        return state["params"]

    # ------------------------------------------------------------------------------ step
    def _disc(self, params, batch_stats, x, train):
        if not train:
            return self.disc.apply(
                {"params": params, "batch_stats": batch_stats}, x, train=False
            ), batch_stats
        logits, upd = self.disc.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        return logits, upd["batch_stats"]

    def _nll(self, lpaps_vars, x, xrec, rng, train):
        rec = jnp.mean(jnp.abs(x - xrec))
        p = jnp.mean(self.lpaps.apply(lpaps_vars, x, xrec, train=train, rngs={"dropout": rng}))
        return rec + self.w.perceptual_weight * p, rec, p

    def _d_weight(self, state, ae, x, rngs):
        """Adaptive weight at the decoder's last layer (docs/specvqgan.md A2, step 4).

        With `min_adapt_weight == max_adapt_weight` (both official configs) the clamp
        makes it the constant `min * disc_weight`, so the two extra gradients are skipped.
        """
        lo, hi = self.w.min_adapt_weight, self.w.max_adapt_weight
        if lo == hi:
            return jnp.asarray(lo * self.w.disc_weight, jnp.float32)

        def nll_and_g(w_last):
            ae_w = _set_path(jax.lax.stop_gradient(ae), LAST_LAYER, w_last)
            xrec, _, _ = self.model.apply(
                {"params": ae_w}, x, train=True, rngs={"dropout": rngs[0]}
            )
            nll, _, _ = self._nll(state["lpaps"], x, xrec, rngs[1], True)
            logits, _ = self._disc(
                state["params"]["disc"], state["batch_stats"]["disc"], xrec, True
            )
            return nll, gan.generator_loss(logits)

        (_, _), vjp = jax.vjp(nll_and_g, _get_path(ae, LAST_LAYER))
        one, zero = jnp.ones(()), jnp.zeros(())
        (g_nll,) = vjp((one, zero))
        (g_g,) = vjp((zero, one))
        return gan.adaptive_weight(g_nll, g_g, self.w.disc_weight, lo, hi)

    def train_step(self, state, batch):
        gstep = state["step"]  # Lightning's global_step: 0 on the first batch.
        r_drop, r_lpaps = jax.random.split(jax.random.fold_in(state["rng"], gstep))
        x = batch["image"][..., None].astype(jnp.float32)
        disc_factor = gan.adopt_weight(self.w.disc_factor, gstep, self.w.disc_start)
        dparams = state["params"]["disc"]

        def g_loss_fn(ae):
            xrec, qloss, info = self.model.apply(
                {"params": ae}, x, train=True, rngs={"dropout": r_drop}
            )
            nll, rec, p = self._nll(state["lpaps"], x, xrec, r_lpaps, True)
            logits_fake, bstats = self._disc(dparams, state["batch_stats"]["disc"], xrec, True)
            g = gan.generator_loss(logits_fake)
            d_weight = self._d_weight(state, ae, x, (r_drop, r_lpaps))
            loss = nll + d_weight * disc_factor * g + self.w.codebook_weight * qloss
            aux = dict(
                total_loss=loss,
                quant_loss=qloss,
                nll_loss=nll,
                rec_loss=rec,
                p_loss=p,
                g_loss=g,
                d_weight=d_weight,
                disc_factor=disc_factor,
                perplexity=info["perplexity"],
            )
            return loss, (aux, (bstats, xrec))

        (_, (metrics, (bstats, xrec))), g_ae = jax.value_and_grad(g_loss_fn, has_aux=True)(
            state["params"]["ae"]
        )
        ae, ae_opt = common.apply_optimizer(
            self.ae_tx, g_ae, state["opt_state"]["ae"], state["params"]["ae"]
        )

        if self.w.disc_recompute:  # a fresh reconstruction from the updated autoencoder
            xrec, _, _ = self.model.apply({"params": ae}, x, train=True, rngs={"dropout": r_drop})
        xrec = jax.lax.stop_gradient(xrec)

        def d_loss_fn(dp):
            logits_real, bs = self._disc(dp, bstats, x, True)
            logits_fake, bs = self._disc(dp, bs, xrec, True)
            d_loss = disc_factor * self._d_loss(logits_real, logits_fake)
            aux = dict(
                disc_loss=d_loss,
                logits_real=jnp.mean(logits_real),
                logits_fake=jnp.mean(logits_fake),
            )
            return d_loss, (aux, bs)

        (_, (d_metrics, bstats)), g_d = jax.value_and_grad(d_loss_fn, has_aux=True)(dparams)
        dparams, d_opt = common.apply_optimizer(
            self.disc_tx, g_d, state["opt_state"]["disc"], dparams
        )

        new_state = common.next_state(
            state,
            {"ae": ae, "disc": dparams},
            {"ae": ae_opt, "disc": d_opt},
            batch_stats={"disc": bstats},
        )
        metrics = {**metrics, **d_metrics, "grad_norm_ae": optax.global_norm(g_ae)}
        return new_state, common.float32_metrics(metrics)

    def eval_step(self, state, batch):
        """Validation losses as the official `validation_step` logs them (d_weight 0)."""
        x = batch["image"][..., None].astype(jnp.float32)
        gstep = state["step"]
        xrec, qloss, info = self.model.apply({"params": state["params"]["ae"]}, x, train=False)
        nll, rec, p = self._nll(state["lpaps"], x, xrec, jax.random.PRNGKey(0), False)
        dp, bs = state["params"]["disc"], state["batch_stats"]["disc"]
        logits_real, _ = self._disc(dp, bs, x, False)
        logits_fake, _ = self._disc(dp, bs, xrec, False)
        disc_factor = gan.adopt_weight(self.w.disc_factor, gstep, self.w.disc_start)
        metrics = dict(
            total_loss=nll + self.w.codebook_weight * qloss,
            rec_loss=rec,
            p_loss=p,
            nll_loss=nll,
            quant_loss=qloss,
            g_loss=gan.generator_loss(logits_fake),
            disc_loss=disc_factor * self._d_loss(logits_real, logits_fake),
            perplexity=info["perplexity"],
        )
        return common.float32_metrics(metrics)

    # --------------------------------------------------------------------------- samples
    def reconstruct(self, state, x):
        """[B, F, T] in [-1, 1] -> (reconstruction [B, F, T], code indices [B, f, t])."""
        xrec, _, info = self.model.apply(
            {"params": state["params"]["ae"]}, x[..., None], train=False
        )
        return xrec[..., 0], info["indices"]

    def reconstruct_first(self, state, x, num: int):
        """The first `num` clips of a [B, F, T] batch and their reconstructions, [num, F, T]."""
        return x[:num], self.reconstruct(state, x[:num])[0]

    def write_samples(self, state, batch, writer, step, out_dir: pathlib.Path, num: int = 4):
        """Input-vs-reconstruction PNGs of the batch's first clips, one Griffin-Lim wav.

        Every process runs the (sharded) reconstruction and gathers its `num` clips; process
        0 writes.
        """
        from avjax import images, multihost
        from avjax.audio import griffin_lim, io

        x, xrec = multihost.to_host(self._reconstruct_first(state, batch["image"], num))
        if not multihost.is_main():
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        for i in range(len(x)):
            pair = images.mel_pair(x[i], xrec[i])
            writer.image(step, f"reconstruction/{i}", pair)
            mels01 = [(x[i] + 1) / 2, (xrec[i] + 1) / 2]  # labelled: seconds, mel bins, dB
            figure = images.mel_figure(mels01, ["input", "reconstruction"])
            images.save_png(out_dir / f"{i}_input_vs_reconstruction.png", figure)
        mel01 = np.clip((xrec[0] + 1.0) / 2.0, 0.0, 1.0)
        wave = griffin_lim.mel_to_wave(mel01)
        writer.audio(step, "reconstruction/griffin_lim", wave, self.sample_rate)
        io.write_wav(out_dir / "0_reconstruction_griffin_lim.wav", wave, self.sample_rate)


def _get_path(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _set_path(tree, path, value):
    if not path:
        return value
    return {**tree, path[0]: _set_path(tree[path[0]], path[1:], value)}
