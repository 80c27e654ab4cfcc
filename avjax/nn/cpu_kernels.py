"""XLA:CPU's fast paths: convolutions, transposed convolutions and max-pool gradients as matmuls.

The kernels behind `avjax.nn.Conv`, `ConvTranspose` and `max_pool` (`avjax/nn/layers.py`),
which use them when a program is lowered for CPU and plain lax / Flax elsewhere. Nothing
here checks the backend: call these directly only for CPU programs. They route around
XLA:CPU's slow convolution paths with matmuls (2-core reference machine; float32 matmul
~390 GFLOP/s, XLA's forward convolution ~200-300):

* kernel (weight) gradients: ~40 GFLOP/s on large maps (3x3 128->128 at [2, 80, 848]);
* input gradients of strided convs (lhs-dilated convolutions): ~20 GFLOP/s;
* tiny output maps with many channels: a k4/s2 256->512 conv from 5x4 to 2x2 took 1.5 s
  forward and backward at batch 304, against 0.06 s as one matmul.

Convolutions take one of three routes, picked per layer from static shapes (`conv_route`;
anything but a channels-last (NHWC / HWIO), undilated, ungrouped conv is `lax`):

`im2col` (output maps of at most `IM2COL_MAX_OUTPUT_PIXELS`, or at most
`IM2COL_MAX_IN_FEATURES` input channels; at least `IM2COL_MIN_FEATURES` outputs; a patch
matrix `[N*Ho*Wo, kh*kw*Ci]` of at most `IM2COL_MAX_ELEMENTS`): one matmul of the patch
matrix built from kh*kw strided slices; autodiff gives matmul gradients.

`matmul gradients` (strided convs with at least `STRIDED_MIN_ELEMENTS` inputs, and
stride-1 convs with `size(x) * min(Ci, Co)` over `CHUNKED_MIN_WORK`): XLA's forward, then a
custom VJP. On large wide maps (work over `CHUNKED_MIN_WORK`) the kernel gradient is a
`scan` over chunks of output rows, each adding kh*kw matmuls
dW[i, j] += x_pad[n, s*h+i, s*w+j, :]^T g[n, h, w, :]; chunks hold about `CHUNK_ELEMENTS`
input values, so taps stay in cache and memory stays flat (195 ms against XLA's 1000 for
the 3x3 128->128 conv at [2, 80, 848], 40 GFLOP). A strided conv's input gradient is
one stride-1 convolution of g per output phase (`_strided_input_grad`); a stride-1 conv's
is XLA's (a plain convolution, fast). Below that work XLA's kernel gradient is as fast or
faster (10 against 21 ms for the patch discriminator's k4/s2 128->256 at [2, 20, 212]), so
narrow or small stride-1 convs stay with lax (57 ms against 86 fwd+bwd at [8, 80, 848, 16]).

`lax` otherwise.

Measured fwd+bwd: the paper codebook step (batch 2) 29.0 -> 16.5 s; Sound2Sight's k4/s2
64->128 conv at [320, 24, 24] 301 ms as im2col, 225 with matmul gradients.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")
CHUNKED_MIN_WORK = 2**28  # stride-1 convs need size(x) * min(Ci, Co) above this
STRIDED_MIN_ELEMENTS = 2**20  # strided convs need inputs this large (smaller: no gain)
CHUNK_ELEMENTS = 2**19  # input values [N, rows, W, Ci] per chunk of the kernel gradient
IM2COL_MAX_ELEMENTS = 2**26  # largest patch matrix [N*Ho*Wo, kh*kw*Ci] built (256 MiB f32)
IM2COL_MIN_FEATURES = 32  # narrower outputs make a thin matmul: XLA's conv is faster
IM2COL_MAX_OUTPUT_PIXELS = 16  # Ho*Wo up to 4x4: XLA:CPU's conv is slow on tiny maps
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


def conv_route(
    lhs_shape,
    rhs_shape,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    preferred_element_type=None,
) -> tuple[str, tuple[tuple[int, int], ...] | None]:
    """The CPU route of a `lax.conv_general_dilated` call: (route, explicit padding).

    Route is "im2col", "matmul_grad" or "lax" (module docstring); the padding is the call's
    as ((lo, hi), (lo, hi)), or None with "lax" when the conv is not a plain NHWC one.
    """
    simple = (
        _is_channels_last(dimension_numbers, len(lhs_shape))
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and feature_group_count == 1
        and batch_group_count == 1
        and preferred_element_type is None
    )
    if not simple:
        return "lax", None
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs_shape[1:3], rhs_shape[:2], strides, padding)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    if not all(lo >= 0 and hi >= 0 for lo, hi in padding):
        return "lax", None
    return _route(tuple(lhs_shape), tuple(rhs_shape), strides, padding), padding


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
    """`lax.conv_general_dilated` along its CPU route (`conv_route`): im2col, matmul
    gradients, or lax itself. For CPU programs; `avjax.nn.conv_general_dilated` picks by
    backend."""
    route, pads = conv_route(
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
    strides = tuple(int(s) for s in window_strides)
    if route == "im2col":
        return im2col_conv(lhs, rhs, strides, pads, precision)
    if route == "matmul_grad":
        return _conv(lhs, rhs, strides, pads, precision)
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


def _route(x_shape, w_shape, strides, padding) -> str:
    """The route of an NHWC x HWIO conv: im2col, matmul_grad or lax (module docstring)."""
    n, h, w, ci = x_shape
    kh, kw, _, co = w_shape
    ho = _out_size(h, kh, strides[0], padding[0])
    wo = _out_size(w, kw, strides[1], padding[1])
    small = ho * wo <= IM2COL_MAX_OUTPUT_PIXELS or ci <= IM2COL_MAX_IN_FEATURES
    if small and co >= IM2COL_MIN_FEATURES and n * ho * wo * kh * kw * ci <= IM2COL_MAX_ELEMENTS:
        return "im2col"
    if strides != (1, 1) and n * h * w * ci >= STRIDED_MIN_ELEMENTS:
        return "matmul_grad"
    return "matmul_grad" if _chunked_kernel_grad_pays(x_shape, co) else "lax"


def _chunked_kernel_grad_pays(x_shape, co: int) -> bool:
    """Large wide maps, where XLA's kernel gradient is slow; below, it is as fast or faster."""
    n, h, w, ci = x_shape
    return n * h * w * ci * min(ci, co) > CHUNKED_MIN_WORK


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
    if strides == (1, 1):  # XLA's input gradient is a plain convolution: fast
        _, vjp_x = jax.vjp(lambda x_: _lax_conv(x_, w, strides, padding, precision), x)
        (dx,) = vjp_x(g)
    else:  # XLA's is an lhs-dilated convolution (~20 GFLOP/s): stride-1 phase convs instead
        dx = _strided_input_grad(g, w, strides, padding, x.shape[1:3], precision)
    if _chunked_kernel_grad_pays(x.shape, w.shape[3]):
        dw = _kernel_grad(x, g, w.shape, strides, padding, precision).astype(w.dtype)
    else:
        _, vjp_w = jax.vjp(lambda w_: _lax_conv(x, w_, strides, padding, precision), w)
        (dw,) = vjp_w(g)
    return dx, dw


def _strided_input_grad(g, w, strides, padding, x_hw, precision):
    """dx [N, H, W, Ci] of a strided conv from g [N, Ho, Wo, Co] and w [kh, kw, Ci, Co].

    Padded-input row s*u + r collects the taps i = r + s*a: g[u - a] w[r + s*a]. So each
    phase (r, c) is a stride-1 convolution of g with its flipped sub-kernel, and the
    phases interleave. Same FLOPs as the lhs-dilated convolution, none on zeros, and XLA
    runs stride-1 convolutions ~5x faster (107 against 291 ms for the k4/s2 128->128 dx
    at [2, 80, 848]; 92 against 178 at Sound2Sight's [304, 24, 24, 64]).
    """
    n, ho, wo, _ = g.shape
    kh, kw, ci, _ = w.shape
    sh, sw = strides
    taps_h = [len(range(r, kh, sh)) for r in range(sh)]
    taps_w = [len(range(c, kw, sw)) for c in range(sw)]
    ph, pw = ho + taps_h[0] - 1, wo + taps_w[0] - 1  # rows / cols per phase
    phases = []
    for r in range(sh):
        row = []
        for c in range(sw):
            if taps_h[r] == 0 or taps_w[c] == 0:  # kernel smaller than the stride
                row.append(jnp.zeros((n, ph, pw, ci), g.dtype))
                continue
            sub = w[r::sh, c::sw][::-1, ::-1].transpose(0, 1, 3, 2)  # [a, b, Co, Ci]
            pad = ((taps_h[r] - 1, ph - ho), (taps_w[c] - 1, pw - wo))
            row.append(_lax_conv(g, sub, (1, 1), pad, precision))
        phases.append(row)
    return _interleave(phases, (padding[0][0], padding[1][0]), x_hw)


def _kernel_grad(x, g, w_shape, strides, padding, precision):
    """dW [kh, kw, Ci, Co] (float32) of x [N, H, W, Ci] and g [N, Ho, Wo, Co], by row chunks."""
    n, _, wd, ci = x.shape
    _, ho, wo, co = g.shape
    kh, kw = w_shape[:2]
    sh = strides[0]
    rows = int(min(ho, max(1, CHUNK_ELEMENTS // (n * (wd + sum(padding[1])) * ci))))
    chunks = -(-ho // rows)
    # Zero rows of g past Ho contribute nothing; x gets enough rows for the last chunk.
    g = jnp.pad(g, ((0, 0), (0, chunks * rows - ho), (0, 0), (0, 0)))
    in_rows = sh * (rows - 1) + kh
    extra = max(0, sh * rows * (chunks - 1) + in_rows - (x.shape[1] + sum(padding[0])))
    xp = jnp.pad(x, ((0, 0), (padding[0][0], padding[0][1] + extra), padding[1], (0, 0)))

    def add_chunk(dw, k):
        xs = lax.dynamic_slice_in_dim(xp, k * rows * sh, in_rows, axis=1)
        gs = lax.dynamic_slice_in_dim(g, k * rows, rows, axis=1).reshape(-1, co)
        # Per tap [Co, rows]·[rows, Ci]: a single-contracting-dim dot with g transposed
        # (the einsum "nhwc,nhwd->cd" lowers ~4x slower on XLA:CPU).
        taps = [
            lax.dot(
                gs.T,
                patch.reshape(-1, ci),
                precision=precision,
                preferred_element_type=jnp.float32,
            )
            for patch in _tap_slices(xs, (kh, kw), strides, ((0, 0), (0, 0)), (rows, wo))
        ]
        return dw + jnp.stack(taps), None

    dw = jnp.zeros((kh * kw, co, ci), jnp.float32)
    dw, _ = lax.scan(add_chunk, dw, jnp.arange(chunks))
    return dw.reshape(kh, kw, co, ci).transpose(0, 1, 3, 2)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_transpose(x, w, strides, padding, output_padding=(0, 0), precision=None):
    """PyTorch `ConvTranspose2d` as one matmul plus overlap-add ("col2im"), NHWC.

    Args:
      x: [N, H, W, Ci].
      w: [kh, kw, Ci, Co], the PyTorch weight (Ci, Co, kh, kw) transposed.
      strides: (sh, sw).
      padding: (ph, pw), PyTorch's symmetric padding (crops the full output).
      output_padding: (oh, ow), PyTorch's extra rows / columns at the bottom / right.
      precision: of the matmul.

    Returns:
      [N, (H-1)*sh + kh - 2*ph + oh, (W-1)*sw + kw - 2*pw + ow, Co].

    Every input pixel is multiplied by the whole kernel at once, [N*H*W, Ci] x
    [Ci, kh*kw*Co]: exactly the transposed conv's FLOPs as matmuls with a wide output
    (and matmul gradients), where XLA:CPU's lhs-dilated convolution gradients are >10x
    slower.
    """
    n, h, wd, ci = x.shape
    kh, kw, _, co = w.shape
    (sh, sw), (ph, pw), (oh, ow) = strides, padding, output_padding
    cols = jnp.matmul(
        x.reshape(-1, ci), w.transpose(2, 0, 1, 3).reshape(ci, kh * kw * co), precision=precision
    )
    out = ((h - 1) * sh + kh - 2 * ph + oh, (wd - 1) * sw + kw - 2 * pw + ow)
    return _overlap_add(cols.reshape(n, h, wd, kh, kw, co), strides, (ph, pw), out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _overlap_add(cols, strides, start, out_hw):
    """col2im: y[s*m + i - start] += cols[m, i] per axis, cropped/zero-filled to `out_hw`.

    cols: [N, H, W, kh, kw, C], tap (i, j) of input pixel (m, n). Taps are summed per
    output phase (i mod s, j mod s) at input resolution, then the phases interleave.
    Returns [N, *out_hw, C]. Its gradient is im2col of the output gradient (`_overlap_add_bwd`).
    """
    n, h, wd, kh, kw, c = cols.shape
    sh, sw = strides
    ph_h, ph_w = h + (kh - 1) // sh, wd + (kw - 1) // sw  # rows / cols of one phase
    zero = jnp.zeros((n, ph_h, ph_w, c), cols.dtype)
    phases = [[zero] * sw for _ in range(sh)]
    for i in range(kh):
        for j in range(kw):
            di, dj = i // sh, j // sw
            tap = jnp.pad(
                cols[:, :, :, i, j], ((0, 0), (di, ph_h - h - di), (dj, ph_w - wd - dj), (0, 0))
            )
            phases[i % sh][j % sw] = phases[i % sh][j % sw] + tap
    return _interleave(phases, start, out_hw)


def _overlap_add_fwd(cols, strides, start, out_hw):
    return _overlap_add(cols, strides, start, out_hw), cols.shape


def _overlap_add_bwd(strides, start, out_hw, shape, g):
    """d cols[m, i] = g[s*m + i - start] (zero outside): the kh*kw strided tap slices of g.

    Autodiff of the forward's per-tap pads would sum kh*kw zero-padded copies of the
    whole cols gradient (16x the work for a 4x4 kernel); these slices are written once.
    """
    _, h, wd, kh, kw, _ = shape
    (sh, sw), (top, left) = strides, start
    pad = (
        (top, max(0, sh * (h - 1) + kh - top - out_hw[0])),
        (left, max(0, sw * (wd - 1) + kw - left - out_hw[1])),
    )
    taps = _tap_slices(g, (kh, kw), strides, pad, (h, wd))
    return (jnp.stack(taps, axis=3).reshape(shape),)


_overlap_add.defvjp(_overlap_add_fwd, _overlap_add_bwd)


def _interleave(phases, start, out_hw):
    """phases[r][c] [N, Ph, Pw, C] -> grid y[s*u + r, s*v + c], cropped at `start` to `out_hw`.

    Rows / columns past the grid (never reached by a tap) are zeros. Returns [N, *out_hw, C].
    """
    sh, sw = len(phases), len(phases[0])
    n, ph, pw, c = phases[0][0].shape
    y = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)  # [N, Ph, sh, Pw, sw, C]
    y = y.reshape(n, ph * sh, pw * sw, c)
    (top, left), (oh, ow) = start, out_hw
    fill = ((0, 0), (0, max(0, top + oh - y.shape[1])), (0, max(0, left + ow - y.shape[2])), (0, 0))
    return jnp.pad(y, fill)[:, top : top + oh, left : left + ow]


def _cond_identity(tree):
    """`tree` through a `lax.cond` on a predicate XLA cannot fold: is the first value of any
    leaf NaN? If so every value comes back NaN (a NaN in a recurrent carry reaches the loss
    anyway), else `tree` unchanged. (Identical branches would be simplified away, and a
    predicate on one leaf folds when that leaf is a constant, e.g. a zero cotangent.)"""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return tree
    nan = jnp.any(jnp.isnan(jnp.stack([a.reshape(-1)[0].astype(jnp.float32) for a in leaves])))

    def poisoned(t):
        return jax.tree.map(lambda a: jnp.full_like(a, jnp.nan), t)

    return lax.cond(nan, poisoned, lambda t: t, tree)


@jax.custom_vjp
def fusion_barrier(tree):
    """Identity on a float pytree, forward and backward, that XLA:CPU cannot fuse across
    (but see `_cond_identity` for a carry holding NaN).

    For time loops unrolled on CPU (`avjax.models.mcav.model.time_scan`): XLA fuses the
    elementwise chain of an LSTM's cell-state gradient across all unrolled steps and
    duplicates it into every step's fusion, so the backward pass does O(T^2) work (MCAV's
    stage-1 step: ~1.2 of 3.6 CPU-s in fusions of up to 389 operands).
    `lax.optimization_barrier` does not help: XLA:CPU removes it before fusion. A
    conditional is a fusion boundary, so each step's carry (and its gradient) is written
    once and read by the next step.
    """
    return _cond_identity(tree)


fusion_barrier.defvjp(lambda tree: (_cond_identity(tree), None), lambda _, g: (_cond_identity(g),))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool(x: jnp.ndarray, k: int) -> jnp.ndarray:
    """`torch.nn.functional.max_pool2d(x, k)` (stride k, floor), NHWC, with select gradients.

    [B, H, W, C] -> [B, H // k, W // k, C]. The gradient goes to the first maximum of each
    window in row-major order, as PyTorch's and `lax.reduce_window`'s; here it is k*k
    elementwise selects, where XLA:CPU's select-and-scatter takes ~3x longer (232 against
    73 ms on VGGish-ish's [4, 80, 848, 64] pool).
    """
    return functools.reduce(jnp.maximum, _window_taps(x, k))


def _window_taps(x, k):
    """The k*k strided views [B, H // k, W // k, C] of a k x k / stride-k pool, row-major."""
    h, w = x.shape[1] // k * k, x.shape[2] // k * k
    return [x[:, i:h:k, j:w:k] for i in range(k) for j in range(k)]


def _max_pool_fwd(x, k):
    y = max_pool(x, k)
    return y, (x, y)


def _max_pool_bwd(k, res, g):
    x, y = res
    taken = jnp.zeros(y.shape, bool)
    grads = []
    for tap in _window_taps(x, k):
        first = (tap == y) & ~taken
        grads.append(jnp.where(first, g, 0).astype(x.dtype))
        taken = taken | first
    b, ho, wo, c = y.shape
    dx = jnp.stack(grads).reshape(k, k, b, ho, wo, c).transpose(2, 3, 0, 4, 1, 5)
    dx = dx.reshape(b, ho * k, wo * k, c)
    return (jnp.pad(dx, ((0, 0), (0, x.shape[1] - ho * k), (0, x.shape[2] - wo * k), (0, 0))),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
