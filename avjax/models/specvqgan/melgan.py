"""MelGAN vocoder (Kumar et al. 2019) as SpecVQGAN trains it: generator + multi-scale critic.

Follows the official `vocoder/modules.py` (docs/specvqgan.md A5) layer by layer, in
[B, T, C] layout:
  Generator: ReflectionPad(3), WN-Conv k7 (n_mels -> 16 ngf), then per ratio r in (8, 8, 2, 2):
    LReLU(0.2), WN-ConvTranspose(k 2r, stride r, padding r//2 + r%2, output_padding r%2)
    halving the channels, and ResnetBlocks with dilations 1, 3, 9; then LReLU,
    ReflectionPad(3), WN-Conv k7 -> 1, tanh. [B, T, n_mels] mel -> [B, 256 T, 1] audio.
  Discriminator: `num_D` `NLayerDiscriminator`s on the audio and on its AvgPool1d(4, 2, 1,
    count_include_pad=False) downsamplings; each returns all of its layer outputs.

Every conv is weight-normalised as the old `torch.nn.utils.weight_norm(dim=0)`: parameters
`weight_v` (direction) and `weight_g` (per-output-channel norm; per *input* channel for the
transposed convs, as torch's (in, out, k) weight puts input channels on axis 0), and the
kernel is `g * v / ||v||` with the norm over the other axes. Parameter names mirror the torch
module indices (`model_3` is `model.3`), so an official state dict maps one to one.

Initialisation is PyTorch's default for convs, v ~ U(+-1/sqrt(fan_in)), g = ||v||, bias
~ U(+-1/sqrt(fan_in)): the official `weights_init` writes the `weight` attribute that weight
norm recomputes from g and v before every forward, so it has no effect.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = jnp.dtype | str


def _uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _l2(v: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    return jnp.sqrt(jnp.sum(jnp.square(v.astype(jnp.float32)), axis=axes))


def reflect_pad(x: jax.Array, pad: int) -> jax.Array:
    """torch `ReflectionPad1d(pad)` on the time axis of [B, T, C] (edge sample not repeated)."""
    if pad == 0:
        return x
    if pad >= x.shape[1]:
        raise ValueError(
            f"reflection padding {pad} needs more than {pad} time steps, got {x.shape}"
        )
    return jnp.pad(x, ((0, 0), (pad, pad), (0, 0)), mode="reflect")


class WNConv1d(nn.Module):
    """Weight-normalised `nn.Conv1d` on [B, T, C] with explicit zero padding and groups.

    Params: `weight_v` [k, C_in // groups, C_out], `weight_g` [C_out], `bias` [C_out].
    """

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c_in = x.shape[-1]
        if c_in % self.groups or self.features % self.groups:
            raise ValueError(
                f"WNConv1d: channels {c_in} -> {self.features} are not divisible by "
                f"groups={self.groups}"
            )
        fan_in = c_in // self.groups * self.kernel_size
        bound = 1.0 / fan_in**0.5
        shape = (self.kernel_size, c_in // self.groups, self.features)
        v = self.param("weight_v", _uniform(bound), shape, self.param_dtype)
        g = self.param(
            "weight_g", lambda k, s, d: _l2(v, (0, 1)).astype(d), (self.features,), self.param_dtype
        )
        b = self.param("bias", _uniform(bound), (self.features,), self.param_dtype)
        w = v * (g / _l2(v, (0, 1)))[None, None, :]
        y = lax.conv_general_dilated(
            x.astype(self.dtype),
            w.astype(self.dtype),
            window_strides=(self.stride,),
            padding=[(self.padding, self.padding)],
            rhs_dilation=(self.dilation,),
            dimension_numbers=("NWC", "WIO", "NWC"),
            feature_group_count=self.groups,
        )
        return y + b.astype(self.dtype)


class WNConvTranspose1d(nn.Module):
    """Weight-normalised `nn.ConvTranspose1d` on [B, T, C], with torch's padding semantics.

    Output length (T - 1) * stride - 2 * padding + kernel_size + output_padding: the full
    transposed convolution with `padding` samples dropped at the start and
    `padding - output_padding` at the end. Params: `weight_v` [k, C_in, C_out] (torch's
    (C_in, C_out, k) weight with the kernel axis first, not flipped), `weight_g` [C_in],
    `bias` [C_out].
    """

    features: int
    kernel_size: int
    stride: int
    padding: int = 0
    output_padding: int = 0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c_in, k = x.shape[-1], self.kernel_size
        bound = 1.0 / (self.features * k) ** 0.5  # torch's fan_in of a (in, out, k) weight
        v = self.param("weight_v", _uniform(bound), (k, c_in, self.features), self.param_dtype)
        g = self.param(
            "weight_g", lambda key, s, d: _l2(v, (0, 2)).astype(d), (c_in,), self.param_dtype
        )
        b = self.param("bias", _uniform(bound), (self.features,), self.param_dtype)
        w = v * (g / _l2(v, (0, 2)))[None, :, None]
        s, p, op = self.stride, self.padding, self.output_padding
        length = (x.shape[1] - 1) * s - 2 * p + k + op
        if k % s == 0:
            y = _polyphase_transpose(x.astype(self.dtype), w.astype(self.dtype), s)
        else:
            # Input dilated by the stride, padded by k - 1 (full output), correlated with the
            # kernel flipped in time.
            y = lax.conv_general_dilated(
                x.astype(self.dtype),
                w[::-1].astype(self.dtype),
                window_strides=(1,),
                padding=[(k - 1, k - 1)],
                lhs_dilation=(s,),
                dimension_numbers=("NWC", "WIO", "NWC"),
            )
        # torch keeps the full output minus `padding` at the start; output_padding > padding
        # would reach past the full output, where torch has zeros (bias only).
        y = jnp.pad(y, ((0, 0), (0, max(0, p + length - y.shape[1])), (0, 0)))
        y = y[:, p : p + length]
        return y + b.astype(self.dtype)


def _polyphase_transpose(x: jax.Array, w: jax.Array, stride: int) -> jax.Array:
    """Full transposed conv, [B, T, I] x [k, I, O] -> [B, (T - 1) s + k, O], for k = M s.

    Output f = q s + phi sums x[q - m] w[m s + phi] over m < M: one ordinary M-tap conv
    with s O output channels (one group per phase phi), then the phases interleaved. This
    skips the (s - 1) / s zeros a dilated input would multiply.
    """
    k, c_in, c_out = w.shape
    m = k // stride
    kernel = w.reshape(m, stride, c_in, c_out)[::-1]  # tap n uses m = M - 1 - n
    kernel = kernel.transpose(0, 2, 1, 3).reshape(m, c_in, stride * c_out)
    y = lax.conv_general_dilated(
        x, kernel, (1,), [(m - 1, m - 1)], dimension_numbers=("NWC", "WIO", "NWC")
    )
    return y.reshape(x.shape[0], (x.shape[1] + m - 1) * stride, c_out)


class ResnetBlock(nn.Module):
    """`shortcut(x) + block(x)`, block = LReLU, ReflPad(d), WN-Conv k3 dil d, LReLU, WN-Conv k1."""

    dilation: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim, kw = x.shape[-1], dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = reflect_pad(nn.leaky_relu(x, 0.2), self.dilation)
        h = WNConv1d(dim, 3, dilation=self.dilation, name="block_2", **kw)(h)
        h = WNConv1d(dim, 1, name="block_4", **kw)(nn.leaky_relu(h, 0.2))
        return WNConv1d(dim, 1, name="shortcut", **kw)(x) + h


class Generator(nn.Module):
    """MelGAN generator: mel [B, T, n_mels] -> waveform [B, hop * T, 1] in (-1, 1).

    `hop = prod(ratios)` (256). Torch module `model.i` is the submodule `model_i`.
    """

    ngf: int = 32
    n_residual_layers: int = 3
    ratios: Sequence[int] = (8, 8, 2, 2)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def hop_length(self) -> int:
        out = 1
        for r in self.ratios:
            out *= r
        return out

    @nn.compact
    def __call__(self, mel: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        mult = 2 ** len(self.ratios)
        idx = 1  # torch Sequential index of the next module with parameters
        h = WNConv1d(mult * self.ngf, 7, name=f"model_{idx}", **kw)(reflect_pad(mel, 3))
        idx += 1  # LeakyReLU
        for r in self.ratios:
            idx += 1
            h = nn.leaky_relu(h, 0.2)
            h = WNConvTranspose1d(
                mult * self.ngf // 2,
                kernel_size=2 * r,
                stride=r,
                padding=r // 2 + r % 2,
                output_padding=r % 2,
                name=f"model_{idx}",
                **kw,
            )(h)
            for j in range(self.n_residual_layers):
                idx += 1
                h = ResnetBlock(3**j, name=f"model_{idx}", **kw)(h)
            idx += 1  # the next stage's LeakyReLU
            mult //= 2
        h = reflect_pad(nn.leaky_relu(h, 0.2), 3)  # model_{idx}, model_{idx + 1}
        h = WNConv1d(1, 7, name=f"model_{idx + 2}", **kw)(h)
        return jnp.tanh(h)


class NLayerDiscriminator(nn.Module):
    """One MelGAN critic scale: audio [B, T, 1] -> the list of its n_layers + 3 outputs.

    layer_0: ReflPad(7), WN-Conv k15 -> ndf, LReLU; layer_1..n: WN-Conv k(10 s + 1), stride
    s, padding 5 s, groups C_in // 4, channels x s (at most 1024), LReLU; layer_n+1: WN-Conv
    k5 p2 -> min(2 C, 1024), LReLU; layer_n+2: WN-Conv k3 p1 -> 1 (the logits).
    """

    ndf: int = 16
    n_layers: int = 4
    downsampling_factor: int = 4
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> list[jax.Array]:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        s = self.downsampling_factor
        outs = []
        h = WNConv1d(self.ndf, 15, name="layer_0", **kw)(reflect_pad(x, 7))
        outs.append(h := nn.leaky_relu(h, 0.2))
        nf = self.ndf
        for n in range(1, self.n_layers + 1):
            nf_prev, nf = nf, min(nf * s, 1024)
            if nf_prev % 4:
                raise ValueError(f"NLayerDiscriminator: channels {nf_prev} not divisible by 4")
            conv = WNConv1d(
                nf,
                s * 10 + 1,
                stride=s,
                padding=s * 5,
                groups=nf_prev // 4,
                name=f"layer_{n}",
                **kw,
            )
            outs.append(h := nn.leaky_relu(conv(h), 0.2))
        nf = min(nf * 2, 1024)
        h = WNConv1d(nf, 5, padding=2, name=f"layer_{self.n_layers + 1}", **kw)(h)
        outs.append(h := nn.leaky_relu(h, 0.2))
        outs.append(WNConv1d(1, 3, padding=1, name=f"layer_{self.n_layers + 2}", **kw)(h))
        return outs


def avg_pool_exclude_pad(x: jax.Array, window: int = 4, stride: int = 2, pad: int = 1):
    """`AvgPool1d(window, stride, pad, count_include_pad=False)` on [B, T, C]."""
    dims, strides, padding = (1, window, 1), (1, stride, 1), ((0, 0), (pad, pad), (0, 0))
    total = lax.reduce_window(x, 0.0, lax.add, dims, strides, padding)
    ones = jnp.ones((1, x.shape[1], 1), x.dtype)
    count = lax.reduce_window(ones, 0.0, lax.add, dims, strides, padding)
    return total / count


class Discriminator(nn.Module):
    """Multi-scale critic: audio [B, T, 1] -> `num_D` lists of layer outputs [B, T_l, C_l].

    Scale i sees the audio average-pooled i times (T, T/2, T/4 for 3 scales).
    """

    num_D: int = 3
    ndf: int = 16
    n_layers: int = 4
    downsampling_factor: int = 4
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> list[list[jax.Array]]:
        results = []
        for i in range(self.num_D):
            d = NLayerDiscriminator(
                self.ndf,
                self.n_layers,
                self.downsampling_factor,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"disc_{i}",
            )
            results.append(d(x))
            if i + 1 < self.num_D:  # the official code also pools after the last scale, unused
                x = avg_pool_exclude_pad(x)
        return results


def make_model(config, dtype=jnp.float32) -> tuple[Generator, Discriminator]:
    """Generator and critic of an experiment config (a ConfigDict or dict): its `model` field
    (ngf, n_residual_layers, ratios) and its `disc` field (num_D, ndf, n_layers,
    downsampling_factor)."""
    model, disc = config["model"], config["disc"]
    gen = Generator(
        ngf=model["ngf"],
        n_residual_layers=model["n_residual_layers"],
        ratios=tuple(model["ratios"]),
        dtype=dtype,
    )
    critic = Discriminator(
        num_D=disc["num_D"],
        ndf=disc["ndf"],
        n_layers=disc["n_layers"],
        downsampling_factor=disc["downsampling_factor"],
        dtype=dtype,
    )
    return gen, critic


# ------------------------------------------------------------------------------------ losses
def discriminator_loss(d_real: list[list[jax.Array]], d_fake: list[list[jax.Array]]):
    """Official hinge loss, summed (not averaged or halved) over scales.

    sum_i mean relu(1 + D_i(fake)) + mean relu(1 - D_i(real)), on each scale's last output.
    """
    loss = 0.0
    for real, fake in zip(d_real, d_fake, strict=True):
        loss = loss + jnp.mean(jax.nn.relu(1.0 + fake[-1])) + jnp.mean(jax.nn.relu(1.0 - real[-1]))
    return loss


def generator_adv_loss(d_fake: list[list[jax.Array]]):
    """sum_i -mean D_i(fake) over scales (last outputs)."""
    loss = 0.0
    for fake in d_fake:
        loss = loss - jnp.mean(fake[-1])
    return loss


def feature_matching_loss(d_real, d_fake, n_layers: int):
    """sum over scales and all but the last layer of (4 / (n_layers + 1)) (1 / num_D) L1.

    L1 is the mean absolute difference; the real features are not differentiated through.
    """
    wt = 4.0 / (n_layers + 1) / len(d_fake)
    loss = 0.0
    for real, fake in zip(d_real, d_fake, strict=True):
        for r, f in zip(real[:-1], fake[:-1], strict=True):
            loss = loss + wt * jnp.mean(jnp.abs(f - lax.stop_gradient(r)))
    return loss
