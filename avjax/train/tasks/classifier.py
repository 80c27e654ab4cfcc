"""VGGish-ish spectrogram classifier training (spec A3), e.g. for a trained LPAPS backbone.

Input: [0, 1] log-mels standardised per mel bin, `(x - mean_f) / std_f`, as the official
`StandardNormalizeAudio`; the statistics are computed from the training data and kept in
the train state. Loss: cross-entropy; Adam with L2 weight decay added to the gradients
(PyTorch `Adam(weight_decay=...)`, not AdamW).
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from avjax.models.specvqgan.classifiers import VGGishish
from avjax.train.tasks import common


class ClassifierTask:
    """Init / train_step / eval_step of a spectrogram classifier."""

    def __init__(self, model, tx, input_shape, mel_stats: dict[str, np.ndarray]):
        self.model, self.tx = model, tx
        self.input_shape = tuple(input_shape)
        self.mel_stats = {k: np.asarray(v, np.float32) for k, v in mel_stats.items()}

    @classmethod
    def from_config(cls, config, mel_stats) -> ClassifierTask:
        m = config.model
        model = VGGishish(
            conv_layers=common.conv_layers(m.conv_layers),
            num_classes=m.num_classes,
            hidden=m.hidden,
            dtype=jnp.dtype(config.dtype),
        )
        tx = optax.chain(
            optax.add_decayed_weights(config.optim.weight_decay),
            optax.adam(config.optim.lr, b1=config.optim.b1, b2=config.optim.b2),
        )
        return cls(model, tx, (config.data.num_mel_bins, config.data.crop_frames), mel_stats)

    def init(self, rng):
        k_init, k_state = jax.random.split(rng)
        params = self.model.init(k_init, jnp.zeros((1, *self.input_shape)))["params"]
        return {
            "step": jnp.zeros((), jnp.int32),
            "rng": k_state,
            "params": params,
            "opt_state": self.tx.init(params),
            "mel_stats": {k: jnp.asarray(v) for k, v in self.mel_stats.items()},
        }

    def trainable_params(self, state):
        return state["params"]

    def _inputs(self, state, batch):
        """[-1, 1] batch -> per-bin standardised [0, 1] mels, [B, F, T]."""
        x01 = (batch["image"].astype(jnp.float32) + 1.0) / 2.0
        return (x01 - state["mel_stats"]["mean"][:, None]) / state["mel_stats"]["std"][:, None]

    def _loss(self, params, state, batch):
        logits = self.model.apply({"params": params}, self._inputs(state, batch))
        labels = batch["label"]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        acc = jnp.mean(jnp.argmax(logits, -1) == labels)
        return loss, {"loss": loss, "accuracy": acc}

    def train_step(self, state, batch):
        (_, metrics), grads = jax.value_and_grad(self._loss, has_aux=True)(
            state["params"], state, batch
        )
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics["grad_norm"] = optax.global_norm(grads)
        return {
            **state,
            "step": state["step"] + 1,
            "params": params,
            "opt_state": opt_state,
        }, metrics

    def eval_step(self, state, batch):
        return self._loss(state["params"], state, batch)[1]

    def write_samples(self, state, batch, writer, step, out_dir: pathlib.Path):
        """A classifier has no samples to write."""
