"""Melception features of [0, 1] log-mels for FID / MKL / ISC / KID (docs/specvqgan.md A7).

  scorer = MelceptionScorer.from_path("workdirs/melception")   # avjax workdir
  scorer = MelceptionScorer.from_path("melception-21-05-10T09-28-40.pt",
                                      mel_stats="train_means_stds_melspec_10s_22050hz.txt")
  feats = scorer.features(mel01)   # {"2048": [N, 2048], "logits": [N, 309], ...}

Inputs are [0, 1] mels (fakes as saved, `(spec + 1) / 2`, unclamped; reals `(x + 1) / 2`),
standardised per mel bin with the training statistics, `(x - mean_f) / std_f`, and centre
cropped to 848 frames when longer (860 -> columns 6..853), as the official evaluation (an
avjax run: to its `config.data.crop_frames`).
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from avjax.convert.melception import load_official_mel_stats
from avjax.errors import UserError
from avjax.models.specvqgan.melception import FEATURE_NAMES, Melception, make_model
from avjax.runs import load_run, read_config

DEFAULT_FEATURES = ("2048", "logits", "logits_unbiased")
CROP_FRAMES = 848


@functools.lru_cache(maxsize=16)
def _jitted_features(model: Melception, names: tuple[str, ...]):
    """One compiled function per (architecture, feature names), shared by all scorers."""

    def run(variables, mean, std, mel01):
        x = (mel01 - mean[:, None]) / std[:, None]
        return model.apply(variables, x, features=names)

    return jax.jit(run)


def _as_stats(mel_stats) -> dict[str, np.ndarray]:
    if isinstance(mel_stats, Mapping):
        return {k: np.asarray(mel_stats[k], np.float32) for k in ("mean", "std")}
    return load_official_mel_stats(mel_stats)


class MelceptionScorer:
    """Jitted, batched Melception feature extractor with its per-bin input statistics."""

    def __init__(
        self,
        model: Melception,
        variables: dict,
        mel_stats: Mapping[str, np.ndarray],
        batch_size: int = 64,
        crop_frames: int = CROP_FRAMES,
    ):
        self.model = model
        self.variables = jax.device_put(variables)
        self.mean = jnp.asarray(mel_stats["mean"], jnp.float32)
        self.std = jnp.asarray(mel_stats["std"], jnp.float32)
        if self.mean.ndim != 1 or self.mean.shape != self.std.shape:
            raise ValueError(
                f"mel stats must be two [F] vectors, got {self.mean.shape} / {self.std.shape}"
            )
        self.batch_size = batch_size
        self.crop_frames = crop_frames  # the input width the classifier was trained on

    @classmethod
    def from_path(
        cls,
        path: str | pathlib.Path,
        mel_stats=None,
        batch_size: int = 64,
    ) -> MelceptionScorer:
        """Loads an avjax melception classifier workdir or the official `.pt`.

        Args:
          path: a workdir written by `launch/train.py` with `configs/melception_vggsound.py` or
            by `launch/convert_checkpoint.py --kind melception`; or the official checkpoint
            (`.pt`/`.pth`, read without PyTorch) or an `.npz` of its state dict.
          mel_stats: per-bin statistics: a path (the official
            `train_means_stds_melspec_10s_22050hz.txt`, or an `.npz` with mean/std) or a
            {"mean", "std"} dict. Required for a `.pt`; for a workdir it overrides the stats
            stored in its state.
          batch_size: clips per jitted call.
        """
        path = pathlib.Path(path)
        if path.is_dir():
            config = read_config(path, "classifier")
            model_cfg = config.model.to_dict()
            if model_cfg.get("arch") != "melception":
                raise UserError(
                    f"{path}: config.model.arch is {model_cfg.get('arch')!r}, not 'melception'"
                )
            state = load_run(path).state
            if "batch_stats" not in state:
                raise ValueError(f"{path}: the checkpoint has no batch_stats (BatchNorm)")
            stats = _as_stats(mel_stats) if mel_stats is not None else state.get("mel_stats")
            if stats is None:
                raise ValueError(
                    f"{path}: the checkpoint carries no mel_stats; pass mel_stats= (the official "
                    "train_means_stds_melspec_10s_22050hz.txt or a {'mean','std'} dict)"
                )
            model = make_model(model_cfg)
            variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
            return cls(model, variables, stats, batch_size, int(config.data.crop_frames))
        if not path.is_file():
            raise FileNotFoundError(f"Melception weights {path}: no such file or directory")
        if mel_stats is None:
            raise ValueError(
                f"{path}: an official Melception checkpoint carries no input statistics; pass "
                "mel_stats='train_means_stds_melspec_10s_22050hz.txt' (the official repo's "
                "specvqgan/modules/losses/vggishish/data/ file, 80 rows 'mean std') or a "
                "{'mean', 'std'} dict of [80] arrays"
            )
        from avjax.convert import torch_io
        from avjax.convert.melception import melception_from_torch

        sd = torch_io.load_state_dict(path)  # .pt or .npz, never unpickles code
        state = melception_from_torch(sd)
        model = make_model({})
        variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
        return cls(model, variables, _as_stats(mel_stats), batch_size)

    def _fn(self, names: tuple[str, ...]):
        return _jitted_features(self.model, names)

    def features(self, mel01, names: Sequence[str] = DEFAULT_FEATURES) -> dict[str, np.ndarray]:
        """Melception features of [0, 1] mels.

        Args:
          mel01: [N, F, T] with T >= `crop_frames` (848 for the official network; centre
            cropped to it), values in [0, 1] (unclamped).
          names: features to return, from FEATURE_NAMES.
        Returns:
          {name: float32 [N, C]} on the host.
        """
        names = tuple(names)
        bad = [n for n in names if n not in FEATURE_NAMES]
        if bad:
            raise ValueError(f"unknown Melception features {bad}; use {FEATURE_NAMES}")
        mel01 = np.asarray(mel01, np.float32)
        if mel01.ndim != 3 or mel01.shape[1] != self.mean.shape[0]:
            raise ValueError(f"expected mels [N, {self.mean.shape[0]}, T], got shape {mel01.shape}")
        t = mel01.shape[2]
        if t < self.crop_frames:
            raise ValueError(f"mels need at least {self.crop_frames} frames, got {t}")
        start = (t - self.crop_frames) // 2
        mel01 = mel01[:, :, start : start + self.crop_frames]
        fn = self._fn(names)
        outs: dict[str, list[np.ndarray]] = {n: [] for n in names}
        n = mel01.shape[0]
        for lo in range(0, n, self.batch_size):
            chunk = mel01[lo : lo + self.batch_size]
            pad = self.batch_size - chunk.shape[0]
            if pad:  # one compiled shape for every batch
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)])
            got = jax.device_get(fn(self.variables, self.mean, self.std, jnp.asarray(chunk)))
            for k in names:
                outs[k].append(np.asarray(got[k][: chunk.shape[0] - pad], np.float32))
        return {k: np.concatenate(v) if v else np.zeros((0,), np.float32) for k, v in outs.items()}
