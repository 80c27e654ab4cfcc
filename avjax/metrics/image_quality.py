"""SSIM and PSNR of frames, jittable and vmappable (leading dims are batch dims).

SSIM variants (docs/sound2sight.md 1.10):
* `ssim_paper`: what the Sound2Sight / MCAV tables report, scikit-image 0.15
  `compare_ssim` defaults on float frames: 7x7 uniform window, sample covariance,
  K1 0.01, K2 0.03, **data_range 2.0** (the float dtype range -1..1, although frames lie
  in [0, 1]; it inflates SSIM: an all-black frame scores ~0.75 on a digit frame).
* `ssim_correct`: the same window with data_range 1.0, the range of the frames.
* `ssim(..., window="gaussian")`: Wang et al. (11x11 Gaussian, sigma 1.5, population
  covariance), scikit-image's `gaussian_weights=True` setting.
The SSIM map is averaged over the pixels whose window lies inside the image (scikit-image
crops (win-1)/2 pixels per side, so its padding mode never matters) and over channels.

PSNR = 10 log10(data_range^2 / MSE) with data_range 1 (scikit-image's for non-negative
ground truth); MSE is floored at 1e-10 (a 100 dB cap for identical frames, instead of inf).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

K1, K2 = 0.01, 0.03
PAPER_DATA_RANGE = 2.0
CORRECT_DATA_RANGE = 1.0


def _window_1d(window: str, win_size: int, sigma: float) -> np.ndarray:
    if window == "uniform":
        return np.full(win_size, 1.0 / win_size)
    if window == "gaussian":
        r = np.arange(win_size) - (win_size - 1) / 2
        w = np.exp(-0.5 * (r / sigma) ** 2)
        return w / w.sum()
    raise ValueError(f"SSIM window must be 'uniform' or 'gaussian', got {window!r}")


def _band(n: int, w: np.ndarray) -> np.ndarray:
    """[n - k + 1, n] matrix applying the 1-D filter `w` at every valid position."""
    k = len(w)
    m = np.zeros((n - k + 1, n), np.float32)
    for i in range(n - k + 1):
        m[i, i : i + k] = w
    return m


@functools.partial(
    jax.jit, static_argnames=("data_range", "window", "win_size", "sigma", "sample_covariance")
)
def ssim(
    x: jax.Array,
    y: jax.Array,
    data_range: float,
    window: str = "uniform",
    win_size: int | None = None,
    sigma: float = 1.5,
    sample_covariance: bool | None = None,
) -> jax.Array:
    """Mean SSIM of frames `[..., H, W, C]` -> `[...]`.

    Args:
      x, y: prediction and reference, same shape, float.
      data_range: L in C1 = (K1 L)^2, C2 = (K2 L)^2.
      window: "uniform" (scikit-image default) or "gaussian" (Wang et al.).
      win_size: window side; default 7 (uniform) or 2 * int(3.5 sigma + 0.5) + 1 = 11.
      sigma: Gaussian sigma.
      sample_covariance: N/(N-1) normalisation; default True for uniform, False for
        gaussian (scikit-image's defaults).
    """
    if x.shape != y.shape:
        raise ValueError(f"ssim: shapes differ, {x.shape} vs {y.shape}")
    if win_size is None:
        win_size = 7 if window == "uniform" else 2 * int(3.5 * sigma + 0.5) + 1
    if sample_covariance is None:
        sample_covariance = window == "uniform"
    h, w = x.shape[-3], x.shape[-2]
    if min(h, w) < win_size:
        raise ValueError(f"ssim: frames {h}x{w} are smaller than the {win_size}-px window")
    w1 = _window_1d(window, win_size, sigma)
    fh, fw = jnp.asarray(_band(h, w1)), jnp.asarray(_band(w, w1))
    x = x.astype(jnp.float32)
    y = y.astype(jnp.float32)
    filt = lambda img: jnp.einsum("ph,...hwc,qw->...pqc", fh, img, fw)
    ux, uy = filt(x), filt(y)
    uxx, uyy, uxy = filt(x * x), filt(y * y), filt(x * y)
    cov_norm = win_size**2 / (win_size**2 - 1.0) if sample_covariance else 1.0
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return jnp.mean(s, axis=(-3, -2, -1))


def ssim_paper(x: jax.Array, y: jax.Array) -> jax.Array:
    """SSIM as the papers computed it (scikit-image 0.15 defaults, data_range 2.0)."""
    return ssim(x, y, data_range=PAPER_DATA_RANGE)


def ssim_correct(x: jax.Array, y: jax.Array) -> jax.Array:
    """The same SSIM with the frames' true data_range 1.0."""
    return ssim(x, y, data_range=CORRECT_DATA_RANGE)


def psnr(x: jax.Array, y: jax.Array, data_range: float = 1.0) -> jax.Array:
    """PSNR in dB of frames `[..., H, W, C]` -> `[...]`."""
    mse = jnp.mean(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)), axis=(-3, -2, -1))
    return 10.0 * jnp.log10(data_range**2 / jnp.maximum(mse, 1e-10))
