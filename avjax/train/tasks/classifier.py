"""Spectrogram classifier training: VGGish-ish (LPAPS backbone) or Melception.

Reference: docs/specvqgan.md A3.

`config.model.arch` picks the network: 'vggishish' (default) or 'melception' (torchvision
Inception-v3 on mels, the network behind SpecVQGAN's FID/MKL; BatchNorm statistics live in
the state's `batch_stats`; only the main logits are trained, as the official script, whose aux
loss is computed and then overwritten).

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

from avjax.models.specvqgan.classifiers import make_model
from avjax.models.specvqgan.melception import Melception
from avjax.train.tasks import common


class ClassifierTask:
    """Init / train_step / eval_step of a spectrogram classifier."""

    def __init__(self, model, tx, input_shape, mel_stats: dict[str, np.ndarray]):
        self.model, self.tx = model, tx
        self.input_shape = tuple(input_shape)
        self.mel_stats = {k: np.asarray(v, np.float32) for k, v in mel_stats.items()}
        self.has_bn = isinstance(model, Melception)

    @classmethod
    def from_config(cls, config, mel_stats) -> ClassifierTask:
        model = make_model(config.model, jnp.dtype(config.dtype))
        tx = optax.chain(
            optax.add_decayed_weights(config.optim.weight_decay),
            optax.adam(config.optim.lr, b1=config.optim.b1, b2=config.optim.b2),
        )
        return cls(model, tx, (config.data.num_mel_bins, config.data.crop_frames), mel_stats)

    def init(self, rng):
        k_init, k_state = jax.random.split(rng)
        variables = self.model.init(k_init, jnp.zeros((1, *self.input_shape)))
        params = variables["params"]
        mel_stats = {k: jnp.asarray(v) for k, v in self.mel_stats.items()}
        state = common.init_state(k_state, params, self.tx.init(params), mel_stats=mel_stats)
        if self.has_bn:
            state["batch_stats"] = variables["batch_stats"]
        return state

    def trainable_params(self, state):
        return state["params"]

    def _inputs(self, state, batch):
        """[-1, 1] batch -> per-bin standardised [0, 1] mels, [B, F, T]."""
        x01 = (batch["image"].astype(jnp.float32) + 1.0) / 2.0
        return (x01 - state["mel_stats"]["mean"][:, None]) / state["mel_stats"]["std"][:, None]

    def _logits(self, params, state, x, train: bool):
        """(logits [B, C], updated batch_stats or None)."""
        if not self.has_bn:
            return self.model.apply({"params": params}, x), None
        variables = {"params": params, "batch_stats": state["batch_stats"]}
        if not train:
            return self.model.apply(variables, x, features=("logits",))["logits"], None
        rng = jax.random.fold_in(state["rng"], state["step"])
        out, updates = self.model.apply(
            variables,
            x,
            train=True,
            features=("logits",),
            rngs={"dropout": rng},
            mutable=["batch_stats"],
        )
        return out["logits"], updates["batch_stats"]

    def _loss(self, params, state, batch, train: bool = False):
        logits, batch_stats = self._logits(params, state, self._inputs(state, batch), train)
        labels = batch["label"]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        acc = jnp.mean(jnp.argmax(logits, -1) == labels)
        return loss, ({"loss": loss, "accuracy": acc}, batch_stats)

    def train_step(self, state, batch):
        (_, (metrics, batch_stats)), grads = jax.value_and_grad(self._loss, has_aux=True)(
            state["params"], state, batch, True
        )
        params, opt_state = common.apply_optimizer(
            self.tx, grads, state["opt_state"], state["params"]
        )
        metrics["grad_norm"] = optax.global_norm(grads)
        extra = {} if batch_stats is None else {"batch_stats": batch_stats}
        new = common.next_state(state, params, opt_state, **extra)
        return new, common.float32_metrics(metrics)

    def eval_step(self, state, batch):
        return common.float32_metrics(self._loss(state["params"], state, batch)[1][0])

    def write_samples(self, state, batch, writer, step, out_dir: pathlib.Path):
        """A classifier has no samples to write."""
