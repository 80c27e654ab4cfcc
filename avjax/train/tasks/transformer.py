"""SpecVQGAN transformer training: next-code prediction conditioned on video features.

As the official `Net2NetTransformer` (docs/specvqgan.md A4): the GPT reads
`[condition (Tc), codes[:-1]]` and `logits[:, Tc-1:]` predict all L codes (265 for 5x53);
the condition positions carry no loss. AdamW (0.9, 0.95) with weight decay on the Linear
kernels only (`gpt.decay_mask`), lr = base_lr x global batch, no schedule. The codebook
is frozen and not part of the state: codes come precomputed in the batches, and the
codebook is loaded (once, lazily) only to decode samples in `write_samples`.

Batches: {"codes": int32 [B, L] column-major, "feats": float32 [B, Tc, D], "label": int32
[B]} (+ "mask": float32 [B] in eval, 0 for padding).
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from avjax.models.specvqgan import gpt as gpt_lib
from avjax.models.specvqgan import permuter, sampling
from avjax.train.tasks import common

DEFAULT_GRID = (5, 53)


class TransformerTask:
    """Init / train_step / eval_step / samples of the conditional GPT."""

    def __init__(
        self,
        model: gpt_lib.GPT,
        tx: optax.GradientTransformation,
        *,
        num_feats: int,
        grid: tuple[int, int] = DEFAULT_GRID,
        codebook_workdir: str | None = None,
        sampling_kw: dict | None = None,
        num_sample_clips: int = 2,
        griffin_lim_iters: int = 32,
    ):
        self.model, self.tx = model, tx
        self.num_feats = num_feats if model.feat_dim else 0
        self.grid = tuple(int(g) for g in grid)
        self.num_tokens = self.grid[0] * self.grid[1]
        self.cond_len = model.cond_len(self.num_feats)
        if self.cond_len + self.num_tokens - 1 > model.block_size:
            raise ValueError(
                f"config.model.block_size={model.block_size} is too small for {self.cond_len} "
                f"condition positions + {self.num_tokens} codes - 1; set it to "
                f"{self.cond_len + self.num_tokens} (official: 53 * 5 + feat_sample_size)"
            )
        self.codebook_workdir = codebook_workdir
        self.sampling_kw = dict(sampling_kw or {})
        self.num_sample_clips = num_sample_clips
        self.griffin_lim_iters = griffin_lim_iters
        self._codec = None

    @classmethod
    def from_config(cls, config, stats=None) -> TransformerTask:
        """Builds the task from `configs/specvqgan_transformer_*.py`.

        `stats` may carry `codes_grid` ([h, w] of the stored codes, from
        `data_pipelines.codes_inputs`); the default is the paper's 5 x 53.
        """
        stats = stats or {}
        model = gpt_lib.make_model(config.model, jnp.dtype(config.dtype))
        o = config.optim
        lr = o.base_lr * config.data.global_batch_size
        tx = optax.adamw(
            lr,
            b1=o.b1,
            b2=o.b2,
            eps=o.eps,
            weight_decay=o.weight_decay,
            mask=gpt_lib.decay_mask,
        )
        grid = tuple(np.asarray(stats.get("codes_grid", DEFAULT_GRID)).tolist())
        s = config.sampling
        return cls(
            model,
            tx,
            num_feats=config.data.feat_sample_size,
            grid=grid,
            codebook_workdir=config.codebook.workdir,
            sampling_kw=dict(
                temperature=s.temperature,
                top_k=s.top_k,
                top_p=s.top_p,
            ),
            num_sample_clips=s.num_clips,
            griffin_lim_iters=s.griffin_lim_iters,
        )

    # ----------------------------------------------------------------------------- state
    def _dummy_inputs(self):
        feats = jnp.zeros((1, self.num_feats, self.model.feat_dim)) if self.model.feat_dim else None
        labels = jnp.zeros((1,), jnp.int32) if self.model.num_classes else None
        return jnp.zeros((1, self.num_tokens - 1), jnp.int32), feats, labels

    def init(self, rng) -> dict:
        k_init, k_state = jax.random.split(rng)
        params = self.model.init({"params": k_init}, *self._dummy_inputs())["params"]
        return common.init_state(k_state, params, self.tx.init(params))

    def trainable_params(self, state):
        return state["params"]

    # ------------------------------------------------------------------------------ step
    def _condition(self, batch):
        feats = batch["feats"] if self.model.feat_dim else None
        labels = batch["label"] if self.model.num_classes else None
        return feats, labels

    def _losses(self, params, batch, rng=None):
        """Per-example mean cross-entropy and accuracy over the L code positions, [B] each."""
        codes = batch["codes"].astype(jnp.int32)
        if codes.shape[1] != self.num_tokens:
            raise ValueError(
                f"batch codes have {codes.shape[1]} tokens, the task expects {self.num_tokens} "
                f"(grid {self.grid}); the codes were extracted with another codebook"
            )
        train = rng is not None
        logits = self.model.apply(
            {"params": params},
            codes[:, :-1],
            *self._condition(batch),
            deterministic=not train,
            rngs={"dropout": rng} if train else None,
        )
        logits = logits[:, self.cond_len - 1 :].astype(jnp.float32)  # [B, L, V]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, codes).mean(axis=1)
        acc = (jnp.argmax(logits, -1) == codes).astype(jnp.float32).mean(axis=1)
        return ce, acc

    def train_step(self, state, batch):
        rng = jax.random.fold_in(state["rng"], state["step"])

        def loss_fn(params):
            ce, acc = self._losses(params, batch, rng)
            loss = ce.mean()
            return loss, {"loss": loss, "accuracy": acc.mean(), "perplexity": jnp.exp(loss)}

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        params, opt_state = common.apply_optimizer(
            self.tx, grads, state["opt_state"], state["params"]
        )
        metrics["grad_norm"] = optax.global_norm(grads)
        new_state = common.next_state(state, params, opt_state)
        return new_state, common.float32_metrics(metrics)

    def eval_step(self, state, batch):
        """Mask-weighted loss, accuracy and perplexity of one eval batch."""
        ce, acc = self._losses(state["params"], batch)
        mask = batch.get("mask", jnp.ones_like(ce)).astype(jnp.float32)
        n = jnp.maximum(mask.sum(), 1.0)
        loss = (ce * mask).sum() / n
        metrics = {"loss": loss, "accuracy": (acc * mask).sum() / n, "perplexity": jnp.exp(loss)}
        return common.float32_metrics(metrics)

    # --------------------------------------------------------------------------- samples
    def codec(self):
        """The frozen codebook (loaded on first use), or None without `codebook.workdir`."""
        if self._codec is None and self.codebook_workdir:
            from avjax.models.specvqgan.codec import Codec

            path = pathlib.Path(self.codebook_workdir).expanduser()
            if (path / "config.json").is_file():
                self._codec = Codec.from_workdir(path)
            else:
                logging.warning("config.codebook.workdir %s is not a codebook run", path)
                self.codebook_workdir = None
        return self._codec

    def write_samples(self, state, batch, writer, step, out_dir: pathlib.Path):
        """Samples codes for the first clips of `batch`; decodes them (and the ground truth)
        with the codebook to mel PNGs and Griffin-Lim wavs. Without a codebook it writes
        the code maps as images.

        Every process gathers the clips and the parameters (and loads the codebook, a local
        copy); process 0 alone samples on its local devices and writes.
        """
        from avjax import images, multihost

        n = self.num_sample_clips
        local = multihost.first_rows(batch, n)
        params = multihost.to_host(state["params"])
        codec = self.codec()
        if not multihost.is_main():
            return
        feats, labels = self._condition(local)
        rng = jax.random.fold_in(jax.random.PRNGKey(0), int(step))
        codes = sampling.sample(
            self.model,
            params,
            rng,
            feats,
            labels,
            num_tokens=self.num_tokens,
            num_samples=1,
            **self.sampling_kw,
        )
        codes = np.asarray(codes)
        out_dir.mkdir(parents=True, exist_ok=True)
        h, w = self.grid
        fake_maps = np.asarray(permuter.from_sequence(codes, h, w))
        real_maps = np.asarray(permuter.from_sequence(local["codes"], h, w))
        if codec is None:
            vocab = max(self.model.vocab_size - 1, 1)
            for i in range(len(codes)):
                pair = np.concatenate([real_maps[i], fake_maps[i]], 0)[::-1] / vocab
                writer.image(step, f"codes/{i}", pair.astype(np.float32))
                images.save_png(out_dir / f"{i}_codes_real_vs_sample.png", pair)
            return
        from avjax.audio import io
        from avjax.audio.vocoder import GriffinLimVocoder

        decode = jax.jit(
            lambda p, i: codec.model.apply({"params": p}, i, method="decode_code")[..., 0]
        )
        to01 = lambda x: np.clip((np.asarray(x) + 1.0) / 2.0, 0.0, 1.0)
        fake = to01(decode(codec.params, jnp.asarray(fake_maps)))
        real = to01(decode(codec.params, jnp.asarray(real_maps)))
        for i in range(len(codes)):
            pair = images.mel_pair(2 * real[i] - 1, 2 * fake[i] - 1)
            writer.image(step, f"sample/{i}", pair)
            images.save_png(out_dir / f"{i}_codebook_real_vs_sample.png", pair)
        voc = GriffinLimVocoder(n_iter=self.griffin_lim_iters)
        wave = voc(fake[:1])[0]
        writer.audio(step, "sample/griffin_lim", wave, voc.sample_rate)
        io.write_wav(out_dir / "0_sample_griffin_lim.wav", wave, voc.sample_rate)
        (out_dir / "codes.json").write_text(json.dumps({"sampled": codes.tolist()}))
