"""Building blocks of Sound2Sight: DCGAN init, per-frame BatchNorm, conv stacks, LSTM cells.

Initialisation follows the official `utils.init_weights`: every conv / linear weight
N(0, 0.02) with zero bias, BatchNorm scale N(1, 0.02); LSTM cells keep PyTorch's
U(+-1/sqrt(hidden)).

BatchNorm ("per-frame" scheme). The official modules are called once per frame, so in
training a BatchNorm normalises over the B samples (and pixels) of *one* frame. Here the
conv stacks run on all frames at once, `[B, T, H, W, C]`, and `FrameBatchNorm` reduces
over batch and space only, keeping one set of statistics per frame: the normalised
activations equal the official ones exactly. The running averages are updated as T
sequential PyTorch updates (momentum 0.1, unbiased variance), in time order, once per
frame; the official code updates them once per *call* (the frame encoder sees most
frames twice per iteration), so the running statistics drift at a slightly different
pace. Eval mode uses the running averages, as PyTorch `.eval()`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from avjax.nn import Conv, ConvTranspose

Dtype = Any

dcgan_init = nn.initializers.normal(0.02)


def bn_scale_init(key, shape, dtype=jnp.float32):
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def uniform_init(bound: float) -> nn.initializers.Initializer:
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def dense(features, dtype, param_dtype, name=None, use_bias=True) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=use_bias,
        kernel_init=dcgan_init,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


class FrameBatchNorm(nn.Module):
    """BatchNorm2d with per-frame statistics for inputs `[B, *frames, H, W, C]`.

    Training normalises over batch (axis 0) and space (H, W) separately for every frame
    index in between; the running mean / variance (PyTorch momentum 0.1, unbiased
    variance) are updated once per frame in order. Eval uses the running averages.
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", bn_scale_init, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        if train:
            xf = x.astype(jnp.float32)
            axes = (0, x.ndim - 3, x.ndim - 2)
            mean = jnp.mean(xf, axes, keepdims=True)
            var = jnp.mean(jnp.square(xf - mean), axes, keepdims=True)
            if not self.is_initializing():
                n = x.shape[0] * x.shape[-3] * x.shape[-2]
                m = mean.reshape(-1, c)  # [F, C], frames in time order
                v = var.reshape(-1, c) * (n / max(n - 1, 1))
                f = m.shape[0]
                keep = 1.0 - self.momentum
                # F sequential updates r <- keep * r + momentum * s_k, in closed form.
                w = self.momentum * keep ** jnp.arange(f - 1, -1, -1, dtype=jnp.float32)
                ra_mean.value = keep**f * ra_mean.value + jnp.einsum("f,fc->c", w, m)
                ra_var.value = keep**f * ra_var.value + jnp.einsum("f,fc->c", w, v)
        else:
            mean, var = ra_mean.value, ra_var.value
        y = (x - mean.astype(self.dtype)) * jax.lax.rsqrt(var + self.epsilon).astype(self.dtype)
        return (y * scale.astype(self.dtype) + bias.astype(self.dtype)).astype(self.dtype)


class ConvBlock(nn.Module):
    """Conv (or transposed conv) -> FrameBatchNorm -> activation on `[..., H, W, C]`.

    `padding` is PyTorch's (symmetric, per spatial dim); transposed convs follow PyTorch's
    `ConvTranspose2d` (`avjax.nn.ConvTranspose`: col2im matmuls on CPU, where XLA:CPU runs
    the gradients of an lhs-dilated convolution more than 10x slower than the rest of the
    training step). Kernels are [k, k, in, out], the PyTorch weights transposed.
    """

    features: int
    kernel: int
    stride: tuple[int, int] = (2, 2)
    padding: tuple[int, int] = (1, 1)
    transpose: bool = False
    norm: bool = True
    act: str = "lrelu"  # 'lrelu' (slope 0.2) | 'tanh' | 'sigmoid' | 'relu' | 'linear'
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        lead, hwc = x.shape[:-3], x.shape[-3:]
        y = x.reshape((-1, *hwc))
        k = (self.kernel, self.kernel)
        if self.transpose:
            conv = ConvTranspose(
                self.features,
                self.kernel,
                self.stride,
                self.padding,
                kernel_init=dcgan_init,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="conv",
            )
        else:
            conv = Conv(
                self.features,
                k,
                strides=self.stride,
                padding=[(p, p) for p in self.padding],
                kernel_init=dcgan_init,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="conv",
            )
        y = conv(y)
        y = y.reshape((*lead, *y.shape[1:]))
        if self.norm:
            y = FrameBatchNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="bn")(y, train)
        if self.act == "lrelu":
            return nn.leaky_relu(y, 0.2)
        if self.act == "tanh":
            return jnp.tanh(y)
        if self.act == "sigmoid":
            return nn.sigmoid(y)
        if self.act == "relu":
            return nn.relu(y)
        if self.act == "linear":
            return y
        raise ValueError(f"unknown activation {self.act!r}")


class LSTMCell(nn.Module):
    """PyTorch `nn.LSTMCell` (gates i, f, g, o; no forget bias); carry `(h, c)`."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, carry, x):
        h, c = carry
        init = uniform_init(self.features**-0.5)
        kw = dict(kernel_init=init, dtype=self.dtype, param_dtype=self.param_dtype)
        gates = nn.Dense(4 * self.features, bias_init=init, name="ih", **kw)(x)
        gates = gates + nn.Dense(4 * self.features, use_bias=False, name="hh", **kw)(h)
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
        h = nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h


class StackedLSTM(nn.Module):
    """The official `lstm` / `gaussian_lstm` step: Linear embed -> LSTMCells -> head.

    No activation between the embedding and the first cell (as the official code).
    `head`: 'tanh' (Linear -> Tanh: frame predictor, sequence discriminator) or
    'gaussian' (mu / logvar Linears). One call = one time step:
    `(carry, x [B, D]) -> (carry, out)`, `out` [B, output] or `(mu, logvar)`.
    """

    hidden: int
    output: int
    num_layers: int = 1
    head: str = "tanh"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def initial_carry(self, batch: int) -> tuple:
        z = jnp.zeros((batch, self.hidden), self.dtype)
        return tuple((z, z) for _ in range(self.num_layers))

    @nn.compact
    def __call__(self, carry: Sequence, x: jax.Array):
        h = dense(self.hidden, self.dtype, self.param_dtype, "embed")(x)
        new = []
        for i, layer_carry in enumerate(carry):
            layer_carry, h = LSTMCell(self.hidden, self.dtype, self.param_dtype, name=f"lstm_{i}")(
                layer_carry, h
            )
            new.append(layer_carry)
        if self.head == "gaussian":
            mu = dense(self.output, self.dtype, self.param_dtype, "mu")(h)
            logvar = dense(self.output, self.dtype, self.param_dtype, "logvar")(h)
            return tuple(new), (mu, logvar)
        out = jnp.tanh(dense(self.output, self.dtype, self.param_dtype, "output")(h))
        return tuple(new), out


def scan_cell(cell: nn.Module, carry, xs: jax.Array):
    """Runs a (bound) step module over axis 1 of `xs` [B, T, ...] with `nn.scan`."""
    scan = nn.scan(
        lambda mdl, c, x: mdl(c, x),
        variable_broadcast="params",
        split_rngs={"params": False},
        in_axes=1,
        out_axes=1,
    )
    return scan(cell, carry, xs)
