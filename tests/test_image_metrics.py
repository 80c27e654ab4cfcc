"""SSIM / PSNR against scikit-image on known images, both data ranges; Gaussian KL closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from avjax.losses.kl import gaussian_kl, kl_criterion
from avjax.metrics import image_quality as iq


def _digit_pair():
    """A bright square 'digit' on black and the same moved by 3 px, plus a noisy copy."""
    x = np.zeros((48, 48), np.float32)
    x[10:24, 12:20] = 1.0
    x[14:18, 14:18] = 0.3
    y = np.roll(x, 3, axis=1)
    rs = np.random.RandomState(0)
    noisy = np.clip(x + 0.1 * rs.randn(48, 48), 0, 1).astype(np.float32)
    return x, y, noisy


@pytest.mark.parametrize("data_range", [2.0, 1.0])
def test_ssim_skimage_defaults_both_ranges(data_range):
    """The papers' SSIM (scikit-image defaults: 7x7 uniform, sample covariance) at 2.0 and 1.0."""
    x, y, noisy = _digit_pair()
    for ref in (y, noisy, x):
        want = structural_similarity(ref, x, data_range=data_range)
        got = iq.ssim(jnp.asarray(ref)[..., None], jnp.asarray(x)[..., None], data_range)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    named = iq.ssim_paper if data_range == 2.0 else iq.ssim_correct
    np.testing.assert_allclose(
        named(y[..., None], x[..., None]),
        structural_similarity(y, x, data_range=data_range),
        rtol=1e-5,
    )


def test_ssim_gaussian_wang_and_multichannel():
    rs = np.random.RandomState(1)
    x = rs.rand(64, 64, 3).astype(np.float32)
    y = np.clip(x + 0.15 * rs.randn(64, 64, 3), 0, 1).astype(np.float32)
    want = structural_similarity(
        x,
        y,
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        channel_axis=-1,
    )
    np.testing.assert_allclose(iq.ssim(x, y, 1.0, window="gaussian"), want, rtol=1e-5)
    want = structural_similarity(x, y, data_range=1.0, channel_axis=-1)
    np.testing.assert_allclose(iq.ssim_correct(x, y), want, rtol=1e-5)


def test_paper_range_inflates_ssim_of_a_black_prediction():
    """data_range 2.0: a black frame already scores high on a digit (docs/sound2sight.md 1.10)."""
    x, _, _ = _digit_pair()
    black = np.zeros_like(x)
    paper = float(iq.ssim_paper(black[..., None], x[..., None]))
    correct = float(iq.ssim_correct(black[..., None], x[..., None]))
    assert paper > correct
    np.testing.assert_allclose(paper, structural_similarity(black, x, data_range=2.0), rtol=1e-5)


def test_metrics_vmap_and_jit_over_samples_and_frames():
    rs = np.random.RandomState(2)
    x = jnp.asarray(rs.rand(3, 4, 48, 48, 1), jnp.float32)  # [S, T, H, W, C]
    y = jnp.asarray(rs.rand(4, 48, 48, 1), jnp.float32)
    batched = jax.jit(iq.ssim_paper)(x, jnp.broadcast_to(y, x.shape))
    per = jax.vmap(lambda s: jax.vmap(iq.ssim_paper)(s, y))(x)
    assert batched.shape == (3, 4)
    np.testing.assert_allclose(batched, per, atol=1e-6)
    np.testing.assert_allclose(
        batched[1, 2],
        structural_similarity(
            np.asarray(x[1, 2, ..., 0]), np.asarray(y[2, ..., 0]), data_range=2.0
        ),
        atol=1e-6,
    )
    p = jax.jit(iq.psnr)(x, jnp.broadcast_to(y, x.shape))
    assert p.shape == (3, 4)
    with pytest.raises(ValueError, match="shapes differ"):
        iq.ssim(x, y, 1.0)


def test_psnr_closed_form_and_skimage():
    x, y, noisy = _digit_pair()
    for ref in (y, noisy):
        np.testing.assert_allclose(
            iq.psnr(x[..., None], ref[..., None]),
            peak_signal_noise_ratio(ref, x, data_range=1.0),
            rtol=1e-5,
        )
    # Constant error c: PSNR = -20 log10(c).
    z = np.zeros((8, 8, 1), np.float32)
    np.testing.assert_allclose(iq.psnr(z, z + 0.1), 20.0, rtol=1e-5)
    np.testing.assert_allclose(iq.psnr(z, z + 0.5, data_range=2.0), 20 * np.log10(4), rtol=1e-5)
    np.testing.assert_allclose(iq.psnr(z, z), 100.0)  # MSE floor 1e-10


def test_gaussian_kl_closed_form_and_hand_values():
    zero = jnp.zeros(3)
    np.testing.assert_allclose(gaussian_kl(zero, zero, zero, zero), 0.0)
    # KL(N(1, 1) || N(0, 1)) = 1/2.
    np.testing.assert_allclose(gaussian_kl(jnp.ones(()), 0.0, 0.0, 0.0), 0.5, rtol=1e-6)
    # KL(N(m1, s1^2) || N(m2, s2^2)) = log(s2/s1) + (s1^2 + (m1-m2)^2) / (2 s2^2) - 1/2.
    m1, s1, m2, s2 = 0.3, 0.5, -0.2, 2.0
    want = np.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
    got = gaussian_kl(m1, 2 * np.log(s1), m2, 2 * np.log(s2))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # Monte Carlo check of the same value.
    rs = np.random.RandomState(0)
    z = m1 + s1 * rs.randn(400_000)
    logq = -0.5 * ((z - m1) / s1) ** 2 - np.log(s1)
    logp = -0.5 * ((z - m2) / s2) ** 2 - np.log(s2)
    np.testing.assert_allclose(np.mean(logq - logp), want, rtol=2e-2)
    # The official criterion: sum over everything / batch.
    rs = np.random.RandomState(1)
    mu1, lv1, mu2, lv2 = (jnp.asarray(rs.randn(4, 5, 10), jnp.float32) for _ in range(4))
    np.testing.assert_allclose(
        kl_criterion(mu1, lv1, mu2, lv2), jnp.sum(gaussian_kl(mu1, lv1, mu2, lv2)) / 4, rtol=1e-6
    )
