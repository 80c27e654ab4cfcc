"""LPAPS: LPIPS ported to 1-channel mel spectrograms on a VGGish-ish backbone.

Reference: docs/specvqgan.md A2.

Variables: `params` = {"net": VGGishish conv features, "lin0".."lin4": 1x1 convs} and a
separate `stats` collection {"shift": [F], "scale": [F]} for the per-mel-bin scaling layer
(the official stats file is a runtime download; fill it with `lpaps_stats_from_mels` or from
an imported checkpoint). The backbone is frozen in the official code: pass LPAPS params to
the loss as constants, never to the optimizer. Gradients still flow to the inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from avjax.models.specvqgan.classifiers import VGGISHISH16_LAYERS, VGGishish
from avjax.nn import Conv

# torch Conv2d default init, kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_conv_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def normalize_channels(x: jnp.ndarray, eps: float = 1e-10) -> jnp.ndarray:
    """Unit-normalises the channel (last) axis: `x / (||x||_2 + eps)`."""
    return x / (jnp.sqrt(jnp.sum(x**2, axis=-1, keepdims=True)) + eps)


def lpaps_stats_from_mels(mels01: Any) -> dict[str, np.ndarray]:
    """Scaling-layer stats from [0,1] mels, rescaled to [-1,1] as the official ScalingLayer does.

    Args:
      mels01: [N, F, T] log-mels in [0, 1].
    Returns:
      {"shift": 2*mean - 1, "scale": 2*std}, each [F] float32 (population std over N and T).
    """
    mels = np.asarray(mels01, np.float64)
    if mels.ndim != 3:
        raise ValueError(f"lpaps_stats_from_mels expects mels [N, F, T], got shape {mels.shape}")
    mean, std = mels.mean(axis=(0, 2)), mels.std(axis=(0, 2))
    return {"shift": (2 * mean - 1).astype(np.float32), "scale": (2 * std).astype(np.float32)}


class NetLinLayer(nn.Module):
    """Dropout then a bias-free 1x1 conv C->1 (torch `NetLinLayer.model` = [Dropout, Conv2d])."""

    rate: float = 0.5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """[B, H, W, C] -> [B, H, W, 1]; dropout needs the "dropout" RNG when `train`."""
        x = nn.Dropout(self.rate, deterministic=not train or self.rate == 0.0)(x)
        return Conv(
            1,
            (1, 1),
            use_bias=False,
            kernel_init=torch_default_conv_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="model_1",
        )(x)


class LPAPS(nn.Module):
    """Learned perceptual distance between two spectrograms.

    Attributes:
      conv_layers: backbone layout (VGGishish `conv_layers`); one lin layer per ReLU tap.
      num_bins: mel bins F of the inputs (size of the scaling stats).
      dropout_rate: NetLinLayer dropout, active only with `train=True` (official quirk: 0.5
        while training).
    """

    conv_layers: Sequence[int | str] = VGGISHISH16_LAYERS
    num_bins: int = 80
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, y: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """Distance per example.

        Args:
          x, y: [B, F, T, 1] spectrograms in [-1, 1], F == num_bins.
          train: enables the lin-layer dropout (needs the "dropout" RNG).
        Returns:
          [B] float32, the sum over taps of the spatially averaged weighted feature distance.
        """
        for name, a in (("x", x), ("y", y)):
            if a.ndim != 4 or a.shape[1] != self.num_bins or a.shape[-1] != 1:
                raise ValueError(
                    f"LPAPS input {name} must be [B, {self.num_bins}, T, 1] (num_bins="
                    f"{self.num_bins}), got shape {a.shape}"
                )
        shape = (self.num_bins,)
        shift = self.variable("stats", "shift", lambda: jnp.zeros(shape, self.param_dtype)).value
        scale = self.variable("stats", "scale", lambda: jnp.ones(shape, self.param_dtype)).value
        scale_in = lambda a: (a - shift[:, None, None]) / scale[:, None, None]

        net = VGGishish(
            conv_layers=self.conv_layers, dtype=self.dtype, param_dtype=self.param_dtype, name="net"
        )
        feats = net.features(jnp.concatenate([scale_in(x), scale_in(y)], axis=0))
        total = jnp.zeros((x.shape[0],), jnp.float32)
        for k, f in enumerate(feats):
            fx, fy = jnp.split(f.astype(jnp.float32), 2, axis=0)
            diff = (normalize_channels(fx) - normalize_channels(fy)) ** 2
            lin = NetLinLayer(
                self.dropout_rate, dtype=self.dtype, param_dtype=self.param_dtype, name=f"lin{k}"
            )
            total += jnp.mean(lin(diff, train).astype(jnp.float32), axis=(1, 2, 3))
        return total
