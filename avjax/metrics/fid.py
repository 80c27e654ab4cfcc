"""Fréchet distance between Gaussian fits of two feature sets (SpecVQGAN `fid.py`).

FID = |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrtm(S1 S2), with mu the feature mean and S the
unbiased covariance (`np.cov(rowvar=False)`). SpecVQGAN computes it on Melception's '2048' pool
features. Numerics follow the official code: scipy `sqrtm`; when the product's root is not finite,
1e-6 * I is added to both covariances; an imaginary part on the diagonal above 1e-3 is an error,
otherwise the real part is kept.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.linalg

from avjax.errors import UserError
from avjax.io_safety import load_npz

EPS = 1e-6


class GaussianStats(NamedTuple):
    """Mean `mu` [D] and covariance `sigma` [D, D] of a feature set."""

    mu: np.ndarray
    sigma: np.ndarray


def feature_stats(features) -> GaussianStats:
    """Mean and unbiased covariance (`np.cov(rowvar=False)`) of features [N, D]."""
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {features.shape}")
    if features.shape[0] < 2:
        raise ValueError(f"need at least 2 feature rows for a covariance, got {features.shape[0]}")
    return GaussianStats(np.mean(features, axis=0), np.cov(features, rowvar=False))


def load_stats(path) -> GaussianStats:
    """Reads precomputed stats from an .npz with arrays `mu` and `sigma`."""
    z = load_npz(path)
    if "mu" not in z or "sigma" not in z:
        raise UserError(f"{path}: expected arrays 'mu' and 'sigma', found {sorted(z)}")
    return GaussianStats(z["mu"], z["sigma"])


def save_stats(path, stats: GaussianStats) -> None:
    """Writes stats to an .npz with arrays `mu` and `sigma` (readable by `load_stats`)."""
    np.savez(path, mu=stats.mu, sigma=stats.sigma)


def _as_stats(x) -> GaussianStats:
    if isinstance(x, GaussianStats):
        return x
    if isinstance(x, dict):
        return GaussianStats(np.asarray(x["mu"]), np.asarray(x["sigma"]))
    if isinstance(x, tuple) and len(x) == 2:
        return GaussianStats(np.asarray(x[0]), np.asarray(x[1]))
    return feature_stats(x)


def frechet_distance_from_stats(stats1, stats2) -> float:
    """FID between two `GaussianStats` (or `(mu, sigma)` pairs / dicts with 'mu','sigma')."""
    mu1, sigma1 = _as_stats(stats1)
    mu2, sigma2 = _as_stats(stats2)
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors differ in shape: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape:
        raise ValueError(f"covariances differ in shape: {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    covmean, _ = scipy.linalg.sqrtm(sigma1.dot(sigma2), disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * EPS
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            m = np.max(np.abs(covmean.imag))
            raise ValueError(f"FID: sqrtm(S1 S2) has an imaginary component {m:g} > 1e-3")
        covmean = covmean.real
    fid = diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)
    return float(fid)


def frechet_distance(f1, f2) -> float:
    """FID between features f1 [N, D] and f2 [M, D]; either may also be precomputed stats."""
    return frechet_distance_from_stats(_as_stats(f1), _as_stats(f2))
