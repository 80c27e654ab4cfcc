"""KL divergence between diagonal Gaussians given as (mu, log-variance)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gaussian_kl(mu1: jax.Array, logvar1: jax.Array, mu2: jax.Array, logvar2: jax.Array):
    """Elementwise KL(N(mu1, exp(logvar1)) || N(mu2, exp(logvar2))), same shape as the inputs.

    log(s2/s1) + (s1^2 + (mu1 - mu2)^2) / (2 s2^2) - 1/2, the official `kl_criterion` terms.
    """
    return (
        0.5 * (logvar2 - logvar1)
        + (jnp.exp(logvar1) + jnp.square(mu1 - mu2)) / (2.0 * jnp.exp(logvar2))
        - 0.5
    )


def kl_criterion(mu1, logvar1, mu2, logvar2) -> jax.Array:
    """The official Sound2Sight / SVG-LP KL term: summed over z and batch, divided by batch.

    Args:
      mu1, logvar1: posterior [B, ..., Z] (any middle dims are summed too).
      mu2, logvar2: prior, same shape.

    Returns:
      Scalar: sum of `gaussian_kl` / B.
    """
    return jnp.sum(gaussian_kl(mu1, logvar1, mu2, logvar2)) / mu1.shape[0]
