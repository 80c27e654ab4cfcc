"""VGGish-ish: SpecVQGAN's VGG16-style mel-spectrogram classifier, the LPAPS backbone.

Reference: docs/specvqgan.md A3.

Parameter names keep the indices of the official `nn.Sequential`s (`features.0` ->
`features_0`, `classifier.2` -> `classifier_2`) so the checkpoint converter stays one-to-one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from avjax.models.specvqgan import melception
from avjax.nn import Conv, max_pool
from avjax.nn.pooling import adaptive_avg_pool2d

ARCHS = ("vggishish", "melception")

VGGISHISH16_LAYERS: tuple[int | str, ...] = (
    64, 64, "MP", 128, 128, "MP", 256, 256, 256, "MP", 512, 512, 512, "MP", 512, 512, 512,
)  # fmt: skip

# torch kaiming_normal_(mode="fan_out", nonlinearity="relu"): untruncated N(0, 2 / fan_out).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
linear_init = nn.initializers.normal(0.01)


def feature_layout(
    conv_layers: Sequence[int | str], use_bn: bool = False
) -> list[tuple[int, str, int | None]]:
    """Torch `features` Sequential as `(index, kind, channels)`, kind in conv/bn/relu/mp.

    Channels is the output width for conv/bn/relu and None for mp.
    """
    layout, idx = [], 0
    for v in conv_layers:
        if v == "MP":
            layout.append((idx, "mp", None))
            idx += 1
            continue
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"conv_layers entries must be positive ints or 'MP', got {v!r}")
        kinds = ("conv", "bn", "relu") if use_bn else ("conv", "relu")
        for kind in kinds:
            layout.append((idx, kind, v))
            idx += 1
    return layout


def tap_indices(conv_layers: Sequence[int | str], use_bn: bool = False) -> list[int]:
    """Torch `features` indices of the tapped ReLUs: the one before each MP, plus the last one."""
    layout = feature_layout(conv_layers, use_bn)
    taps = [layout[k - 1][0] for k, (_, kind, _) in enumerate(layout) if kind == "mp" and k > 0]
    if layout and layout[-1][1] == "relu":
        taps.append(layout[-1][0])
    return taps


class VGGishish(nn.Module):
    """VGG16-ish classifier for mel spectrograms (1 channel, no final max-pool).

    Attributes:
      conv_layers: conv widths with "MP" for a 2x2/2 max-pool (torch `conv_layers`).
      num_classes: logits width (309 VGGSound classes).
      use_bn: BatchNorm after each conv (the released model has none).
      pool_size: AdaptiveAvgPool2d output (F, T) before the classifier.
      hidden: width of the two hidden Linear layers.
    """

    conv_layers: Sequence[int | str] = VGGISHISH16_LAYERS
    num_classes: int = 309
    use_bn: bool = False
    pool_size: tuple[int, int] = (5, 10)
    hidden: int = 4096
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """Class logits.

        Args:
          x: [B, F, T] or [B, F, T, 1] spectrogram (standardised per mel bin).
          train: BatchNorm batch statistics (only matters with `use_bn`).
        Returns:
          [B, num_classes] logits.
        """
        return self._run(x, train, head=True)

    def features(self, x: jnp.ndarray, train: bool = False) -> list[jnp.ndarray]:
        """ReLU taps (relu1_2 ... relu5_3 by default): [B, F_k, T_k, C_k] each."""
        return self._run(x, train, head=False)

    @nn.compact
    def _run(self, x: jnp.ndarray, train: bool, head: bool):
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or x.shape[-1] != 1:
            raise ValueError(f"VGGishish expects [B, F, T] or [B, F, T, 1], got shape {x.shape}")
        x = x.astype(self.dtype)
        layout = feature_layout(self.conv_layers, self.use_bn)
        taps = set(tap_indices(self.conv_layers, self.use_bn))
        outs = []
        for idx, kind, ch in layout:
            if kind == "conv":
                x = Conv(
                    ch,
                    (3, 3),
                    padding=1,
                    kernel_init=conv_init,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    name=f"features_{idx}",
                )(x)
            elif kind == "bn":
                x = nn.BatchNorm(
                    use_running_average=not train,
                    momentum=0.9,
                    epsilon=1e-5,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    name=f"features_{idx}",
                )(x)
            elif kind == "relu":
                x = nn.relu(x)
            else:
                x = max_pool(x, (2, 2), strides=(2, 2))
            if idx in taps:
                outs.append(x)
        if not head:
            return outs
        x = adaptive_avg_pool2d(x, self.pool_size)
        x = x.reshape(x.shape[0], -1)  # NHWC flatten; the converter permutes classifier.0
        dense = lambda n, name: nn.Dense(
            n, kernel_init=linear_init, dtype=self.dtype, param_dtype=self.param_dtype, name=name
        )
        x = nn.relu(dense(self.hidden, "classifier_0")(x))
        x = nn.relu(dense(self.hidden, "classifier_2")(x))
        return dense(self.num_classes, "classifier_4")(x)


def conv_layers(value: str | Sequence[int | str]) -> tuple[int | str, ...]:
    """VGG-style layer list from config: "64,64,MP,128" or a sequence -> (64, 64, "MP", 128)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[int | str] = []
    for item in items:
        item = item.strip() if isinstance(item, str) else item
        if isinstance(item, str) and item.upper() == "MP":
            out.append("MP")
        else:
            try:
                out.append(int(item))
            except ValueError:
                raise ValueError(
                    f"conv layer list: expected ints or 'MP', got {item!r} in {value!r}"
                ) from None
    return tuple(out)


def make_model(model_config, dtype=jnp.float32) -> VGGishish | melception.Melception:
    """The classifier a config's `model` field names by `arch` ('vggishish' when unset)."""
    m = model_config
    arch = m["arch"]
    if arch == "vggishish":
        return VGGishish(
            conv_layers=conv_layers(m.conv_layers),
            num_classes=m.num_classes,
            hidden=m.hidden,
            dtype=dtype,
        )
    if arch == "melception":
        return melception.make_model(m, dtype)
    raise ValueError(f"config.model.arch: unknown classifier {arch!r}; expected one of {ARCHS}")
