"""Kernel inception distance on Melception '2048' features (SpecVQGAN `kid.py`)."""

from __future__ import annotations

import numpy as np


def polynomial_kernel(x, y, degree: int = 3, gamma: float | None = None, coef0: float = 1.0):
    """(x y^T * gamma + coef0)^degree, gamma defaulting to 1/D. [N, D], [M, D] -> [N, M]."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (np.matmul(x, y.T) * gamma + coef0) ** degree


def polynomial_mmd(x, y, degree: int = 3, gamma: float | None = None, coef0: float = 1.0):
    """Unbiased MMD^2 with the polynomial kernel between equal-size sets [m, D]."""
    k_xx = polynomial_kernel(x, x, degree, gamma, coef0)
    k_yy = polynomial_kernel(y, y, degree, gamma, coef0)
    k_xy = polynomial_kernel(x, y, degree, gamma, coef0)
    m = k_xx.shape[0]
    if k_xy.shape != (m, m) or k_yy.shape != (m, m):
        raise ValueError(f"polynomial_mmd needs equal-size sets, got {x.shape[0]} and {y.shape[0]}")
    sum_xx = k_xx.sum() - np.trace(k_xx)
    sum_yy = k_yy.sum() - np.trace(k_yy)
    return (sum_xx + sum_yy) / (m * (m - 1)) - 2 * k_xy.sum() / (m * m)


def kernel_distance(
    f1,
    f2,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 2020,
):
    """KID mean and std over `subsets` random subsets (RandomState(seed), without replacement).

    `subset_size` is clipped to the smaller set, as the official code does. f1 [N, D], f2 [M, D].
    """
    f1, f2 = np.asarray(f1), np.asarray(f2)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"features must be [N, D] and [M, D], got {f1.shape} and {f2.shape}")
    subset_size = min(subset_size, len(f1), len(f2))
    if subset_size < 2:
        raise ValueError(f"kernel_distance needs at least 2 samples per set, got {subset_size}")
    rng = np.random.RandomState(seed)
    mmds = np.zeros(subsets)
    for i in range(subsets):
        a = f1[rng.choice(len(f1), subset_size, replace=False)]
        b = f2[rng.choice(len(f2), subset_size, replace=False)]
        mmds[i] = polynomial_mmd(a, b, degree, gamma, coef0)
    return float(np.mean(mmds)), float(np.std(mmds))
