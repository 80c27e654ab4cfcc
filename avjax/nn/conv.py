"""Convolution with a fast kernel gradient on CPU.

XLA:CPU lowers the kernel (weight) gradient of a 2-D convolution to a slow generic loop:
on this project's 2-core reference machine a 3x3, 128->128 conv at [2, 80, 848] runs its
forward and input gradient at ~170 GFLOP/s but its kernel gradient at ~25 GFLOP/s, and the
kernel gradients dominate the codebook's train step. `conv_general_dilated` here is a
drop-in for `lax.conv_general_dilated` (pass it to `nn.Conv(conv_general_dilated=...)`):
the forward and input gradient are XLA's, and the kernel gradient of a channels-last,
undilated, ungrouped conv is computed as one matmul per kernel tap,

    dW[i, j] = sum_{n, h, w} x_pad[n, s*h + i, s*w + j, :]^T  g[n, h, w, :],

which runs at matmul speed. Opt-in (`AVJAX_CPU_MATMUL_CONV_GRAD=1`), CPU only (GPU and
TPU kernel gradients are fast), for inputs of at least `MIN_ELEMENTS` (below, XLA's own is
cheap and compiles faster); everything else falls through to lax. Why opt-in: the paper
codebook step at batch 2 gets faster (26.6 s) but peaks at ~16 GiB instead of ~8 GiB, and
the official batch 3 then no longer fits a 24 GiB machine.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")
MIN_ELEMENTS = 2**22  # [B, H, W, C] inputs at least this large use the matmul gradient
ENABLED = os.environ.get("AVJAX_CPU_MATMUL_CONV_GRAD", "0") == "1"


def _is_channels_last(dimension_numbers, ndim: int) -> bool:
    if dimension_numbers is None or ndim != 4:
        return False
    want = lax.conv_dimension_numbers((1,) * 4, (1,) * 4, _NHWC)
    got = (
        dimension_numbers
        if isinstance(dimension_numbers, lax.ConvDimensionNumbers)
        else lax.conv_dimension_numbers((1,) * 4, (1,) * 4, dimension_numbers)
    )
    return tuple(got) == tuple(want)


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
):
    """`lax.conv_general_dilated` with a matmul kernel gradient where it applies."""
    simple = (
        _is_channels_last(dimension_numbers, lhs.ndim)
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and feature_group_count == 1
        and batch_group_count == 1
        and preferred_element_type is None
        and lhs.size >= MIN_ELEMENTS
        and ENABLED
        and jax.default_backend() == "cpu"  # cuDNN / TPU kernel gradients are fast already
    )
    if not simple:
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            batch_group_count=batch_group_count,
            precision=precision,
            preferred_element_type=preferred_element_type,
        )
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _conv(lhs, rhs, tuple(int(s) for s in window_strides), padding, precision)


def _lax_conv(x, w, strides, padding, precision):
    return lax.conv_general_dilated(
        x, w, strides, padding, dimension_numbers=_NHWC, precision=precision
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, strides, padding, precision):
    """[N, H, W, Ci] x [kh, kw, Ci, Co] -> [N, Ho, Wo, Co], explicit non-negative padding."""
    return _lax_conv(x, w, strides, padding, precision)


def _conv_fwd(x, w, strides, padding, precision):
    return _lax_conv(x, w, strides, padding, precision), (x, w)


def _conv_bwd(strides, padding, precision, res, g):
    x, w = res
    _, vjp_x = jax.vjp(lambda x_: _lax_conv(x_, w, strides, padding, precision), x)
    (dx,) = vjp_x(g)
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    n, ho, wo, _ = g.shape
    sh, sw = strides
    kh, kw, ci, _ = w.shape
    taps = []
    for i in range(kh):
        for j in range(kw):
            end = (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, ci)
            patch = lax.slice(xp, (0, i, j, 0), end, (1, sh, sw, 1))
            # [N*Ho*Wo, Ci]^T @ [N*Ho*Wo, Co]: a single-contracting-dim dot (the 3-dim
            # einsum "nhwc,nhwd->cd" lowers ~4x slower on XLA:CPU).
            taps.append(
                lax.dot_general(
                    patch.reshape(-1, ci),
                    g.reshape(-1, g.shape[-1]),
                    (((0,), (0,)), ((), ())),
                    precision=precision,
                    preferred_element_type=jnp.float32,
                )
            )
    dw = jnp.stack(taps).reshape(w.shape).astype(w.dtype)
    return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)
