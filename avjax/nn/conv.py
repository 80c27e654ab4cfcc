"""2-D convolution that is fast on CPU too: `conv_general_dilated`, a drop-in for lax's.

Pass it to `nn.Conv(conv_general_dilated=...)`. On GPU / TPU, and for anything but a
channels-last (NHWC / HWIO), undilated, ungrouped conv, it *is* `lax.conv_general_dilated`.
On CPU it picks one of two matmul formulations, because XLA:CPU's own convolutions are
slow in two places (2-core reference machine):

* the kernel (weight) gradient runs through a generic loop: ~25 GFLOP/s for a 3x3
  128->128 conv at [2, 80, 848], against ~170 for its forward and input gradient;
* convolutions with a small output and many channels are pathological: a k4/s2
  256->512 conv from 5x4 to 2x2 (Sound2Sight's audio encoder) takes 1.5 s forward and
  backward at batch 304, against 0.06 s as one matmul.

`im2col` (small output maps, at most `IM2COL_MAX_OUTPUT_PIXELS` per image, or at most
`IM2COL_MAX_IN_FEATURES` input channels; at least `IM2COL_MIN_FEATURES` outputs; a patch
matrix `[N*Ho*Wo, kh*kw*Ci]` of at most `IM2COL_MAX_ELEMENTS`): the conv is one matmul of
the patch matrix built from kh*kw strided slices; autodiff gives matmul gradients (the
slices' transpose is a pad). Measured fwd+bwd: Sound2Sight's 24x24->12x12 64->128 conv at
batch 320: 315 ms against 371; the codebook's first conv (1->128, 80x848): 37 against 84.
On large maps with many channels (the codebook's 3x3 convs at 40x424 and below) XLA's
convolution is faster (141 ms against 205 at [2, 40, 424, 128]), so they stay with lax.

`matmul kernel gradient` (opt-in, `AVJAX_CPU_MATMUL_CONV_GRAD=1`, inputs of at least
`MIN_ELEMENTS`): forward and input gradient stay XLA's; the kernel gradient is one matmul
per tap, dW[i, j] = sum_{n,h,w} x_pad[n, s*h+i, s*w+j, :]^T g[n, h, w, :]. Opt-in because
on the paper codebook step (batch 2) it is faster (26.6 s against 30.8 s) but peaks at
~16 GiB instead of ~8 GiB, and the official batch 3 then no longer fits 24 GiB.
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
IM2COL_MAX_ELEMENTS = 2**26  # largest patch matrix [N*Ho*Wo, kh*kw*Ci] built (256 MiB f32)
IM2COL_MIN_FEATURES = 32  # narrower outputs make a thin matmul: XLA's conv is faster
IM2COL_MAX_OUTPUT_PIXELS = 144  # Ho*Wo up to 12x12: XLA:CPU's conv is slow on small maps
IM2COL_MAX_IN_FEATURES = 4  # or a first layer on raw pixels / spectrogram bins


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
    """`lax.conv_general_dilated`, as im2col or with a matmul kernel gradient on CPU (above)."""
    simple = (
        _is_channels_last(dimension_numbers, lhs.ndim)
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and feature_group_count == 1
        and batch_group_count == 1
        and preferred_element_type is None
        and jax.default_backend() == "cpu"  # cuDNN / TPU convolutions are fast already
    )
    if simple:
        strides = tuple(int(s) for s in window_strides)
        if isinstance(padding, str):
            padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
        padding = tuple((int(lo), int(hi)) for lo, hi in padding)
        if all(lo >= 0 and hi >= 0 for lo, hi in padding):
            if _im2col_fits(lhs.shape, rhs.shape, strides, padding):
                return im2col_conv(lhs, rhs, strides, padding, precision)
            if ENABLED and lhs.size >= MIN_ELEMENTS:
                return _conv(lhs, rhs, strides, padding, precision)
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


def _out_size(size: int, k: int, stride: int, pad: tuple[int, int]) -> int:
    return (size + pad[0] + pad[1] - k) // stride + 1


def _im2col_fits(x_shape, w_shape, strides, padding) -> bool:
    n, h, w, ci = x_shape
    kh, kw, _, co = w_shape
    ho = _out_size(h, kh, strides[0], padding[0])
    wo = _out_size(w, kw, strides[1], padding[1])
    small = ho * wo <= IM2COL_MAX_OUTPUT_PIXELS or ci <= IM2COL_MAX_IN_FEATURES
    return small and co >= IM2COL_MIN_FEATURES and n * ho * wo * kh * kw * ci <= IM2COL_MAX_ELEMENTS


def im2col_conv(x, w, strides, padding, precision=None):
    """NHWC x HWIO conv as one matmul: [N, H, W, Ci] x [kh, kw, Ci, Co] -> [N, Ho, Wo, Co].

    `padding` is explicit ((lo, hi), (lo, hi)), non-negative. The patch matrix rows are
    ordered (i, j, ci), matching the kernel reshaped to [kh*kw*Ci, Co].
    """
    kh, kw, ci, co = w.shape
    n = x.shape[0]
    ho = _out_size(x.shape[1], kh, strides[0], padding[0])
    wo = _out_size(x.shape[2], kw, strides[1], padding[1])
    cols = _tap_slices(x, (kh, kw), strides, padding, (ho, wo))
    patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
    y = lax.dot_general(
        patches.reshape(-1, kh * kw * ci),
        w.reshape(kh * kw * ci, co),
        (((1,), (0,)), ((), ())),
        precision=precision,
    )
    return y.reshape(n, ho, wo, co)


def _tap_slices(x, kernel, strides, padding, out_hw) -> list:
    """Kernel tap (i, j) -> the input pixels it meets, [N, Ho, Wo, Ci], taps in (i, j) order."""
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    (sh, sw), (ho, wo), n, ci = strides, out_hw, x.shape[0], x.shape[-1]
    return [
        lax.slice(
            xp, (0, i, j, 0), (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, ci), (1, sh, sw, 1)
        )
        for i in range(kernel[0])
        for j in range(kernel[1])
    ]


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
    ci = w.shape[2]
    # Per tap [N*Ho*Wo, Ci]^T @ [N*Ho*Wo, Co]: a single-contracting-dim dot (the 3-dim
    # einsum "nhwc,nhwd->cd" lowers ~4x slower on XLA:CPU).
    taps = [
        lax.dot_general(
            patch.reshape(-1, ci),
            g.reshape(-1, g.shape[-1]),
            (((0,), (0,)), ((), ())),
            precision=precision,
            preferred_element_type=jnp.float32,
        )
        for patch in _tap_slices(x, w.shape[:2], strides, padding, g.shape[1:3])
    ]
    dw = jnp.stack(taps).reshape(w.shape).astype(w.dtype)
    return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_transpose(x, w, strides, padding):
    """PyTorch `ConvTranspose2d` as one matmul plus overlap-add ("col2im"), NHWC.

    Args:
      x: [N, H, W, Ci].
      w: [kh, kw, Ci, Co], the PyTorch weight (Ci, Co, kh, kw) transposed.
      strides: (sh, sw).
      padding: (ph, pw), PyTorch's symmetric padding (crops the full output).

    Returns:
      [N, (H-1)*sh + kh - 2*ph, (W-1)*sw + kw - 2*pw, Co].

    Every input pixel is multiplied by the whole kernel at once, [N*H*W, Ci] x
    [Ci, kh*kw*Co], and tap (i, j) lands on output (s*m + i - p, s*n + j - p). This does
    exactly the transposed conv's FLOPs as matmuls with a wide output (and matmul
    gradients), where XLA:CPU's lhs-dilated convolution gradients are >10x slower and a
    sub-pixel convolution wastes 5/9 of its FLOPs on zero taps. When k - 2p == s (the
    usual k4 / s2 / p1) the taps are summed per output phase at input resolution and
    interleaved; otherwise each tap is placed with a strided pad.
    """
    n, h, wd, ci = x.shape
    kh, kw, _, co = w.shape
    (sh, sw), (ph, pw) = strides, padding
    cols = x.reshape(-1, ci) @ w.transpose(2, 0, 1, 3).reshape(ci, kh * kw * co)
    cols = cols.reshape(n, h, wd, kh, kw, co)
    if kh - 2 * ph == sh and kw - 2 * pw == sw:
        phases = [[0] * sw for _ in range(sh)]
        for i in range(kh):
            for j in range(kw):
                r, c = (i - ph) % sh, (j - pw) % sw
                tap = _shift(cols[:, :, :, i, j], (i - ph - r) // sh, (j - pw - c) // sw)
                phases[r][c] = phases[r][c] + tap
        y = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)  # [N, H, sh, W, sw, Co]
        return y.reshape(n, h * sh, wd * sw, co)
    ho, wo = (h - 1) * sh + kh - 2 * ph, (wd - 1) * sw + kw - 2 * pw
    zero = jnp.zeros((), x.dtype)
    y = 0
    for i in range(kh):
        for j in range(kw):
            lo_h, lo_w = i - ph, j - pw
            cfg = (
                (0, 0, 0),
                (lo_h, ho - (sh * (h - 1) + 1) - lo_h, sh - 1),
                (lo_w, wo - (sw * (wd - 1) + 1) - lo_w, sw - 1),
                (0, 0, 0),
            )
            y = y + lax.pad(cols[:, :, :, i, j], zero, cfg)
    return y


def _shift(a, dy: int, dx: int):
    """out[:, m, n] = a[:, m - dy, n - dx], zero where that is outside: [N, H, W, C]."""
    _, h, w, _ = a.shape
    a = jnp.pad(a, ((0, 0), (max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0)), (0, 0)))
    y0, x0 = max(-dy, 0), max(-dx, 0)
    return a[:, y0 : y0 + h, x0 : x0 + w]
