"""The trained codebook as a neural audio codec: mel -> 5x53 code indices -> mel -> wave.

Loads a codebook run (its `config.json` and latest checkpoint) and wraps encode/decode
in jitted functions. A 10-second clip is 265 indices of log2(n_embed) bits each.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from avjax.audio import mel as mel_lib
from avjax.models.specvqgan import vqgan
from avjax.runs import load_run


@dataclasses.dataclass
class Codec:
    """A VQGAN and its parameters; spectrograms are [F, T] in [0, 1]."""

    model: object
    params: dict
    crop_frames: int
    spec: mel_lib.MelSpec = mel_lib.DEFAULT

    def __post_init__(self):
        self._encode = jax.jit(
            lambda p, x: self.model.apply({"params": p}, x, method="encode")[2]["indices"]
        )
        self._decode = jax.jit(
            lambda p, i: self.model.apply({"params": p}, i, method="decode_code")
        )

    @classmethod
    def from_workdir(cls, workdir: str | pathlib.Path) -> Codec:
        run = load_run(workdir, "vqgan")
        model = vqgan.make_model(run.config.model)
        return cls(model, run.params["ae"], run.config.data.crop_frames)

    def crop(self, mel01: np.ndarray, frames: int | None = None) -> np.ndarray:
        """Centre-crops the time axis of [F, T] to `frames` (default 848 for 860-frame mels)."""
        frames = frames or min(mel01.shape[1], 848)
        start = (mel01.shape[1] - frames) // 2
        return mel01[:, start : start + frames]

    def encode(self, mel01: np.ndarray) -> np.ndarray:
        """[F, T] in [0, 1] -> code indices [f, t] int32 (raster order)."""
        x = jnp.asarray(2.0 * mel01 - 1.0, jnp.float32)[None, ..., None]
        return np.asarray(self._encode(self.params, x))[0]

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """Code indices [f, t] -> reconstructed [F, T] in [0, 1] (clipped)."""
        x = self._decode(self.params, jnp.asarray(indices, jnp.int32)[None])
        return np.clip((np.asarray(x)[0, ..., 0] + 1.0) / 2.0, 0.0, 1.0)

    @property
    def n_embed(self) -> int:
        return int(self.params["quantize"]["embedding"].shape[0])

    def bitrate(self, indices: np.ndarray, num_frames: int) -> float:
        """Bits per second of `indices` covering `num_frames` mel frames."""
        seconds = num_frames * self.spec.hop_length / self.spec.sample_rate
        return indices.size * math.log2(self.n_embed) / seconds
