"""Conv, ConvTranspose, max_pool and ConvLSTMCell: XLA's own ops on GPU / TPU, matmuls on CPU.

XLA:CPU runs some convolutions, their gradients and max-pool gradients far below its
matmul speed; `avjax/nn/cpu_kernels.py` holds the matmul versions and the rule that picks
one per layer from static shapes. These layers use them only when the program is lowered
for CPU and are plain `lax.conv_general_dilated` / `lax` transposed convolution /
`flax.linen.max_pool` on every other platform (cuDNN and TPU convolutions are fast).

The platform is that of the lowering, not `jax.default_backend()`: each routed op is a
`lax.platform_dependent` with a `cpu` and a `default` branch, and JAX keeps only the branch
of the platform being compiled for. A program jitted onto a CPU device on a GPU host takes
the CPU kernels, and one exported for several platforms carries both. Both branches are
traced (the plain one is a single lax op); where the CPU rule picks lax anyway, the op is
emitted directly, with no branch.

Every layer and function takes `route`: "auto" (by platform, the default), "cpu" (the CPU
kernels wherever they apply, on any platform) or "plain" (lax / Flax everywhere). Tests
force a route with it; nothing in the library is global state.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from jax import lax

from avjax.nn import cpu_kernels

Dtype = Any
Route = Literal["auto", "cpu", "plain"]
ROUTES = ("auto", "cpu", "plain")
_NHWC = ("NHWC", "HWIO", "NHWC")


def _check_route(route: str, owner: str = "route") -> None:
    if route not in ROUTES:
        raise ValueError(f"{owner} must be one of {ROUTES}, got {route!r}")


def _by_platform(route: str, cpu: Callable, plain: Callable, *args):
    """`cpu(*args)` in programs lowered for CPU, `plain(*args)` elsewhere (or as forced)."""
    if route == "cpu":
        return cpu(*args)
    if route == "plain":
        return plain(*args)
    return lax.platform_dependent(*args, cpu=cpu, default=plain)


def _pair(v: int | Sequence[int], name: str) -> tuple[int, int]:
    t = (v, v) if isinstance(v, int) else tuple(int(u) for u in v)
    if len(t) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {v!r}")
    return t


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
    *,
    route: Route = "auto",
):
    """`lax.conv_general_dilated`, along `cpu_kernels.conv_route` when lowered for CPU.

    Same arguments and result as lax's; `route` as in the module docstring.
    """
    _check_route(route)
    kw = dict(
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )

    def plain(x, w):
        return lax.conv_general_dilated(x, w, window_strides, padding, **kw)

    def cpu(x, w):
        return cpu_kernels.conv_general_dilated(x, w, window_strides, padding, **kw)

    if route != "plain":
        cpu_route, _ = cpu_kernels.conv_route(
            lhs.shape,
            rhs.shape,
            window_strides,
            padding,
            lhs_dilation,
            rhs_dilation,
            dimension_numbers,
            feature_group_count,
            batch_group_count,
            preferred_element_type,
        )
        if cpu_route == "lax":  # the same op on every platform: no branch
            route = "plain"
    return _by_platform(route, cpu, plain, lhs, rhs)


def conv_transpose(
    x,
    w,
    strides: Sequence[int],
    padding: Sequence[int],
    output_padding: Sequence[int] = (0, 0),
    precision=None,
    *,
    route: Route = "auto",
):
    """PyTorch `ConvTranspose2d` on NHWC: col2im matmuls on CPU, lax's lhs-dilated conv elsewhere.

    Args:
      x: [N, H, W, Ci].
      w: [kh, kw, Ci, Co], the PyTorch weight (Ci, Co, kh, kw) transposed (not flipped).
      strides: (sh, sw).
      padding: (ph, pw), PyTorch's: the full output cropped by p on both sides.
      output_padding: (oh, ow), PyTorch's: extra rows / columns at the bottom / right.
      precision: lax precision of the matmul / convolution.
      route: "auto" | "cpu" | "plain" (module docstring).

    Returns:
      [N, (H-1)*sh + kh - 2*ph + oh, (W-1)*sw + kw - 2*pw + ow, Co].
    """
    _check_route(route)
    strides, padding = tuple(strides), tuple(padding)
    output_padding = tuple(output_padding)

    def plain(x, w):
        # out[s*i + t - p] += x[i] w[t]: correlate the stride-dilated input, padded by
        # k - 1 - p (plus output_padding at the end), with the spatially flipped kernel.
        kh, kw = w.shape[:2]
        pads = [
            (k - 1 - p, k - 1 - p + o)
            for k, p, o in zip((kh, kw), padding, output_padding, strict=True)
        ]
        return lax.conv_general_dilated(
            x,
            w[::-1, ::-1],
            (1, 1),
            pads,
            lhs_dilation=strides,
            dimension_numbers=_NHWC,
            precision=precision,
        )

    def cpu(x, w):
        return cpu_kernels.conv_transpose(x, w, strides, padding, output_padding, precision)

    return _by_platform(route, cpu, plain, x, w)


def max_pool(
    inputs,
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: str | Sequence[tuple[int, int]] = "VALID",
    *,
    route: Route = "auto",
):
    """`flax.linen.max_pool`; a non-overlapping 2-D k x k / stride-k pool on CPU uses
    `cpu_kernels.max_pool` (the same values and first-maximum gradient, as selects).

    Args:
      inputs: [B, H, W, C] (any shape `nn.max_pool` takes).
      window_shape, strides, padding: as `nn.max_pool` (strides default to 1, not to the
        window).
      route: "auto" | "cpu" | "plain" (module docstring).
    """
    _check_route(route)
    window_shape = tuple(window_shape)
    strides = (1,) * len(window_shape) if strides is None else tuple(strides)  # as Flax's

    def plain(x):
        return nn.max_pool(x, window_shape, strides=strides, padding=padding)

    valid = padding == "VALID" or (
        not isinstance(padding, str) and all(tuple(p) == (0, 0) for p in padding)
    )
    k = window_shape[0]
    if not (
        inputs.ndim == 4 and window_shape == (k, k) and strides == (k, k) and valid
    ):  # overlapping / padded windows: no CPU kernel
        route = "plain"
    return _by_platform(route, lambda x: cpu_kernels.max_pool(x, k), plain, inputs)


class Conv(nn.Conv):
    """`flax.linen.Conv` (same fields, parameters and initialisers) with the routed
    `conv_general_dilated` above, plus `route` ("auto" | "cpu" | "plain")."""

    route: Route = "auto"

    def __post_init__(self):
        _check_route(self.route, "Conv.route")
        fn = self.conv_general_dilated
        ours = isinstance(fn, functools.partial) and fn.func is conv_general_dilated
        if (fn is None or ours) and self.conv_general_dilated_cls is None:
            # Set on every construction, so `clone(route=...)` takes the new route.
            self.conv_general_dilated = functools.partial(conv_general_dilated, route=self.route)
        super().__post_init__()


class ConvTranspose(nn.Module):
    """PyTorch `ConvTranspose2d` on [..., H, W, C]: `conv_transpose` above with a bias.

    Parameters as `flax.linen.ConvTranspose` (`kernel` [kh, kw, Ci, Co], `bias` [Co]), the
    kernel being the PyTorch weight (Ci, Co, kh, kw) transposed, not flipped. `padding` and
    `output_padding` are PyTorch's (symmetric crop of the full output; extra rows at the
    end), not Flax's: every model here ports a PyTorch one. Output size per axis:
    (H - 1) * s + k - 2 * p + output_padding.
    """

    features: int
    kernel_size: int | Sequence[int]
    strides: int | Sequence[int] = 1
    padding: int | Sequence[int] = 0
    output_padding: int | Sequence[int] = 0
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()
    route: Route = "auto"

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        """[..., H, W, Ci] -> [..., H', W', features] (sizes above)."""
        kh, kw = _pair(self.kernel_size, "kernel_size")
        lead, (h, w, ci) = inputs.shape[:-3], inputs.shape[-3:]
        kernel = self.param(
            "kernel", self.kernel_init, (kh, kw, ci, self.features), self.param_dtype
        )
        bias = None
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        x, kernel, bias = promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        y = conv_transpose(
            x.reshape(-1, h, w, ci),
            kernel,
            _pair(self.strides, "strides"),
            _pair(self.padding, "padding"),
            _pair(self.output_padding, "output_padding"),
            self.precision,
            route=self.route,
        )
        y = y.reshape(*lead, *y.shape[1:])
        return y if bias is None else y + bias


class ConvLSTMCell(nn.RNNCellBase):
    """Convolutional LSTM cell (Shi et al. 2015, without peepholes) on routed `Conv`s.

    gates = ih(x) + hh(h), both `features * 4` wide with `kernel_size` "SAME" convs (`ih`
    with the bias); split as i, f, g, o (PyTorch's `LSTMCell` order):
    c' = sigmoid(f) * c + sigmoid(i) * tanh(g), h' = sigmoid(o) * tanh(c').
    Carry `(h, c)`, each [..., H, W, features]; use with `nn.RNN` / `nn.scan` over time.
    """

    features: int
    kernel_size: Sequence[int] = (3, 3)
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()
    carry_init: nn.initializers.Initializer = nn.initializers.zeros_init()
    route: Route = "auto"

    @nn.compact
    def __call__(self, carry, inputs):
        """(h, c), x [..., H, W, Ci] -> ((h', c'), h'), h' and c' [..., H, W, features]."""
        h, c = carry
        conv = functools.partial(
            Conv,
            4 * self.features,
            tuple(self.kernel_size),
            padding="SAME",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
            route=self.route,
        )
        gates = conv(use_bias=self.use_bias, name="ih")(inputs) + conv(use_bias=False, name="hh")(h)
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
        h = nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    @nn.nowrap
    def initialize_carry(self, rng, input_shape: tuple[int, ...]):
        """Zeros (by `carry_init`) `(h, c)` for inputs [..., H, W, Ci] (one time step)."""
        shape = (*input_shape[:-1], self.features)
        kh, kc = jax.random.split(rng)
        return self.carry_init(kh, shape, self.param_dtype), self.carry_init(
            kc, shape, self.param_dtype
        )

    @property
    def num_feature_axes(self) -> int:
        return len(self.kernel_size) + 1
