"""A trained codebook as a batched, jitted encoder of spectrograms to code sequences.

What `data_pipelines.codes.extract_codes` receives (`make_encoder=CodeEncoder`) to store a
dataset's codes once: [B, 80, T] mels in [0, 1] -> [B, h * w] column-major index sequences
(`permuter.to_sequence`, the transformer's token order), the batch sharded over the local
devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from avjax.models.specvqgan import permuter
from avjax.models.specvqgan.codec import Codec

__all__ = ["CodeEncoder"]


class CodeEncoder:
    """Jitted batched encoder: [B, 80, T] mels in [0, 1] -> [B, h * w] column-major codes."""

    def __init__(self, codebook_workdir, batch_size: int):
        codec = Codec.from_workdir(codebook_workdir)
        self.n_embed = codec.n_embed
        self.crop_frames = codec.crop_frames
        devices = jax.local_devices()
        self.batch_size = -(-batch_size // len(devices)) * len(devices)
        mesh = Mesh(np.asarray(devices), ("data",))
        self.in_sharding = NamedSharding(mesh, PartitionSpec("data"))
        self.params = jax.device_put(codec.params, NamedSharding(mesh, PartitionSpec()))
        model = codec.model

        def indices(params, mel01):  # [B, F, T] in [0, 1] -> [B, h, w] raster index maps
            x = (2.0 * mel01 - 1.0)[..., None]
            return model.apply({"params": params}, x, method="encode")[2]["indices"]

        self._indices = indices
        self._fn = jax.jit(lambda p, x: permuter.to_sequence(indices(p, x)))

    def grid(self, num_mels: int, frames: int) -> tuple[int, int]:
        """The [h, w] of the index map of a [num_mels, frames] spectrogram."""
        x = jax.ShapeDtypeStruct((1, num_mels, frames), jnp.float32)
        return tuple(jax.eval_shape(self._indices, self.params, x).shape[1:])

    def __call__(self, mels: np.ndarray) -> np.ndarray:
        n = len(mels)
        pad = self.batch_size - n
        if pad:
            mels = np.concatenate([mels, np.zeros((pad, *mels.shape[1:]), mels.dtype)])
        x = jax.device_put(mels, self.in_sharding)
        return np.asarray(self._fn(self.params, x))[:n]
