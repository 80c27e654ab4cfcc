"""Melception: torchvision Inception-v3 on 1-channel mel spectrograms (docs/specvqgan.md A3, A7).

The official model is `Inception3(num_classes=309, aux_logits=True)` with `Conv2d_1a_3x3`
replaced by a 1-channel `BasicConv2d` and `maxpool1`/`maxpool2` removed (the mel height is
only 80). Module names follow torchvision (`Mixed_5b/branch1x1/conv`, `AuxLogits/fc`, `fc`),
so the checkpoint converter is a renaming. Layout is NHWC: an input [B, 80, 848] becomes
[B, 80, 848, 1], i.e. H = mel bins, W = time frames, exactly torch's [B, 1, 80, 848].

Spatial flow for 80x848: 39x423 -> 37x421 (2a, 2b) -> 35x419 (4a, Mixed_5*) -> 17x209
(Mixed_6*) -> 8x104 (Mixed_7*) -> global average pool -> 2048.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from avjax.nn import Conv, max_pool

FEATURE_NAMES = ("64", "192", "768", "2048", "logits_unbiased", "logits")

Padding = tuple[tuple[int, int], tuple[int, int]]


def _pad(p: int | tuple[int, int]) -> Padding:
    ph, pw = (p, p) if isinstance(p, int) else p
    return ((ph, ph), (pw, pw))


def _torch_linear_bias_init(fan_in: int):
    """torch nn.Linear's default bias init U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / fan_in**0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def avg_pool3x3_same(x: jnp.ndarray) -> jnp.ndarray:
    """torch `F.avg_pool2d(x, 3, stride=1, padding=1)`: zero padding counted (divide by 9)."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=True)


def max_pool3x3_s2(x: jnp.ndarray) -> jnp.ndarray:
    """torch `F.max_pool2d(x, 3, stride=2)` (no padding, floor)."""
    return max_pool(x, (3, 3), strides=(2, 2))


class BasicConv2d(nn.Module):
    """Bias-free conv -> BatchNorm(eps 1e-3) -> ReLU (torchvision `BasicConv2d`)."""

    features: int
    kernel: tuple[int, int] = (1, 1)
    stride: int = 1
    padding: int | tuple[int, int] = 0
    init_std: float = 0.1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        x = Conv(
            self.features,
            self.kernel,
            strides=self.stride,
            padding=_pad(self.padding),
            use_bias=False,
            # torchvision (2021) init: truncnorm(-2, 2, scale=stddev), i.e. cut at 2 sigma.
            kernel_init=nn.initializers.truncated_normal(self.init_std),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv",
        )(x)
        x = nn.BatchNorm(
            use_running_average=not train,
            momentum=0.9,  # torch momentum 0.1
            epsilon=1e-3,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="bn",
        )(x)
        return nn.relu(x)


class _Block(nn.Module):
    """Base with a `conv(name, ch, kernel, ...)` helper scaled by `width`."""

    width: float = 1.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def ch(self, c: int) -> int:
        return max(1, round(c * self.width))

    def conv(self, name, c, kernel=(1, 1), stride=1, padding=0, init_std=0.1):
        kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
        return BasicConv2d(
            self.ch(c),
            kernel,
            stride,
            padding,
            init_std,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )


class InceptionA(_Block):
    pool_features: int = 32

    @nn.compact
    def __call__(self, x, train: bool):
        b1 = self.conv("branch1x1", 64)(x, train)
        b5 = self.conv("branch5x5_1", 48)(x, train)
        b5 = self.conv("branch5x5_2", 64, 5, padding=2)(b5, train)
        b3 = self.conv("branch3x3dbl_1", 64)(x, train)
        b3 = self.conv("branch3x3dbl_2", 96, 3, padding=1)(b3, train)
        b3 = self.conv("branch3x3dbl_3", 96, 3, padding=1)(b3, train)
        bp = self.conv("branch_pool", self.pool_features)(avg_pool3x3_same(x), train)
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):
    @nn.compact
    def __call__(self, x, train: bool):
        b3 = self.conv("branch3x3", 384, 3, stride=2)(x, train)
        bd = self.conv("branch3x3dbl_1", 64)(x, train)
        bd = self.conv("branch3x3dbl_2", 96, 3, padding=1)(bd, train)
        bd = self.conv("branch3x3dbl_3", 96, 3, stride=2)(bd, train)
        return jnp.concatenate([b3, bd, max_pool3x3_s2(x)], axis=-1)


class InceptionC(_Block):
    channels_7x7: int = 128

    @nn.compact
    def __call__(self, x, train: bool):
        c7 = self.channels_7x7
        b1 = self.conv("branch1x1", 192)(x, train)
        b7 = self.conv("branch7x7_1", c7)(x, train)
        b7 = self.conv("branch7x7_2", c7, (1, 7), padding=(0, 3))(b7, train)
        b7 = self.conv("branch7x7_3", 192, (7, 1), padding=(3, 0))(b7, train)
        bd = self.conv("branch7x7dbl_1", c7)(x, train)
        bd = self.conv("branch7x7dbl_2", c7, (7, 1), padding=(3, 0))(bd, train)
        bd = self.conv("branch7x7dbl_3", c7, (1, 7), padding=(0, 3))(bd, train)
        bd = self.conv("branch7x7dbl_4", c7, (7, 1), padding=(3, 0))(bd, train)
        bd = self.conv("branch7x7dbl_5", 192, (1, 7), padding=(0, 3))(bd, train)
        bp = self.conv("branch_pool", 192)(avg_pool3x3_same(x), train)
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):
    @nn.compact
    def __call__(self, x, train: bool):
        b3 = self.conv("branch3x3_1", 192)(x, train)
        b3 = self.conv("branch3x3_2", 320, 3, stride=2)(b3, train)
        b7 = self.conv("branch7x7x3_1", 192)(x, train)
        b7 = self.conv("branch7x7x3_2", 192, (1, 7), padding=(0, 3))(b7, train)
        b7 = self.conv("branch7x7x3_3", 192, (7, 1), padding=(3, 0))(b7, train)
        b7 = self.conv("branch7x7x3_4", 192, 3, stride=2)(b7, train)
        return jnp.concatenate([b3, b7, max_pool3x3_s2(x)], axis=-1)


class InceptionE(_Block):
    @nn.compact
    def __call__(self, x, train: bool):
        b1 = self.conv("branch1x1", 320)(x, train)
        b3 = self.conv("branch3x3_1", 384)(x, train)
        b3 = jnp.concatenate(
            [
                self.conv("branch3x3_2a", 384, (1, 3), padding=(0, 1))(b3, train),
                self.conv("branch3x3_2b", 384, (3, 1), padding=(1, 0))(b3, train),
            ],
            axis=-1,
        )
        bd = self.conv("branch3x3dbl_1", 448)(x, train)
        bd = self.conv("branch3x3dbl_2", 384, 3, padding=1)(bd, train)
        bd = jnp.concatenate(
            [
                self.conv("branch3x3dbl_3a", 384, (1, 3), padding=(0, 1))(bd, train),
                self.conv("branch3x3dbl_3b", 384, (3, 1), padding=(1, 0))(bd, train),
            ],
            axis=-1,
        )
        bp = self.conv("branch_pool", 192)(avg_pool3x3_same(x), train)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionAux(_Block):
    """avg_pool 5/3 -> 1x1 conv 128 -> 5x5 conv 768 -> global mean -> Linear (training only)."""

    num_classes: int = 309

    @nn.compact
    def __call__(self, x, train: bool):
        if min(x.shape[1:3]) < 17:
            raise ValueError(
                f"Melception AuxLogits needs a Mixed_6e map of at least 17x17 (input >= 80x80), "
                f"got {x.shape[1]}x{x.shape[2]}: use a larger crop or aux_logits=False"
            )
        x = nn.avg_pool(x, (5, 5), strides=(3, 3))
        x = self.conv("conv0", 128)(x, train)
        x = self.conv("conv1", 768, 5, init_std=0.01)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(
            self.num_classes,
            kernel_init=nn.initializers.truncated_normal(0.001),
            bias_init=_torch_linear_bias_init(x.shape[-1]),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="fc",
        )(x)


class _FC(nn.Module):
    """torch Linear whose products with and without bias are both returned."""

    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param(
            "kernel",
            nn.initializers.truncated_normal(0.1),
            (x.shape[-1], self.features),
            self.param_dtype,
        )
        bias = self.param(
            "bias", _torch_linear_bias_init(x.shape[-1]), (self.features,), self.param_dtype
        )
        unbiased = x @ kernel.astype(self.dtype)
        return unbiased, unbiased + bias.astype(self.dtype)


class Melception(_Block):
    """Inception-v3 for [B, F, T] spectrograms returning SpecVQGAN's named features.

    Attributes:
      num_classes: logits width (309 VGGSound classes).
      aux_logits: build the `AuxLogits` head (present in the official checkpoint; run only in
        training, as in torchvision, and not part of the loss).
      dropout: rate before `fc` (torchvision 0.5), active only in training.
      width: channel multiplier (1.0 is the official network; smaller for CPU tests).
    """

    num_classes: int = 309
    aux_logits: bool = True
    dropout: float = 0.5

    @nn.compact
    def __call__(
        self, x: jnp.ndarray, train: bool = False, features: Sequence[str] = FEATURE_NAMES
    ) -> dict[str, jnp.ndarray]:
        """Named features of a per-bin standardised spectrogram.

        Args:
          x: [B, F, T] or [B, F, T, 1] (80 x 848 in SpecVQGAN).
          train: BatchNorm batch statistics, dropout (rng 'dropout') and the aux head.
          features: names to return, from FEATURE_NAMES.
        Returns:
          {name: [B, C]}: '64', '192', '768' are globally averaged intermediate maps, '2048' the
          pool features, 'logits_unbiased' = pool @ fc.kernel, 'logits' adds fc.bias; in
          training also 'aux_logits' when the aux head exists.
        """
        unknown = set(features) - set(FEATURE_NAMES)
        if unknown:
            raise ValueError(f"Melception: unknown features {sorted(unknown)}; use {FEATURE_NAMES}")
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or x.shape[-1] != 1:
            raise ValueError(f"Melception expects [B, F, T] or [B, F, T, 1], got shape {x.shape}")
        kw = dict(width=self.width, dtype=self.dtype, param_dtype=self.param_dtype)
        x = x.astype(self.dtype)
        out = {}
        x = self.conv("Conv2d_1a_3x3", 32, 3, stride=2)(x, train)
        x = self.conv("Conv2d_2a_3x3", 32, 3)(x, train)
        x = self.conv("Conv2d_2b_3x3", 64, 3, padding=1)(x, train)
        out["64"] = jnp.mean(x, axis=(1, 2))  # maxpool1 is Identity
        x = self.conv("Conv2d_3b_1x1", 80)(x, train)
        x = self.conv("Conv2d_4a_3x3", 192, 3)(x, train)
        out["192"] = jnp.mean(x, axis=(1, 2))  # maxpool2 is Identity
        x = InceptionA(pool_features=32, name="Mixed_5b", **kw)(x, train)
        x = InceptionA(pool_features=64, name="Mixed_5c", **kw)(x, train)
        x = InceptionA(pool_features=64, name="Mixed_5d", **kw)(x, train)
        x = InceptionB(name="Mixed_6a", **kw)(x, train)
        x = InceptionC(channels_7x7=128, name="Mixed_6b", **kw)(x, train)
        x = InceptionC(channels_7x7=160, name="Mixed_6c", **kw)(x, train)
        x = InceptionC(channels_7x7=160, name="Mixed_6d", **kw)(x, train)
        x = InceptionC(channels_7x7=192, name="Mixed_6e", **kw)(x, train)
        out["768"] = jnp.mean(x, axis=(1, 2))
        if self.aux_logits and (train or self.is_initializing()):
            aux = InceptionAux(num_classes=self.num_classes, name="AuxLogits", **kw)(x, train)
            if train:
                out["aux_logits"] = aux
        x = InceptionD(name="Mixed_7a", **kw)(x, train)
        x = InceptionE(name="Mixed_7b", **kw)(x, train)
        x = InceptionE(name="Mixed_7c", **kw)(x, train)
        x = jnp.mean(x, axis=(1, 2))  # AdaptiveAvgPool2d((1, 1)) + flatten
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        out["2048"] = x
        fc = _FC(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="fc")
        out["logits_unbiased"], out["logits"] = fc(x)
        result = {k: out[k] for k in features}
        if "aux_logits" in out:
            result["aux_logits"] = out["aux_logits"]
        return result


def make_model(model_config, dtype=jnp.float32) -> Melception:
    """The Melception a config's `model` field describes (unset fields: the official network,
    309 VGGSound classes)."""
    m = model_config
    return Melception(
        num_classes=m.get("num_classes", 309),
        aux_logits=m.get("aux_logits", True),
        dropout=m.get("dropout", 0.5),
        width=m.get("width", 1.0),
        dtype=dtype,
    )
