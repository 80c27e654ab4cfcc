"""GAN loss terms of SpecVQGAN's `VQLPAPSWithDiscriminator` (taming `vqperceptual.py`).

All functions are jit-friendly: schedule thresholds compare traced steps with `jnp.where`,
and the adaptive weight is a pure function of precomputed gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """Hinge discriminator loss, 0.5 * (mean relu(1 - real) + mean relu(1 + fake)).

    Args: logits of any shape (e.g. [B, f, t, 1] patch maps). Returns: scalar.
    """
    loss_real = jnp.mean(jax.nn.relu(1.0 - logits_real))
    loss_fake = jnp.mean(jax.nn.relu(1.0 + logits_fake))
    return 0.5 * (loss_real + loss_fake)


def vanilla_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """Non-saturating BCE discriminator loss, 0.5 * (mean softplus(-real) + mean softplus(fake)).

    Args: logits of any shape. Returns: scalar.
    """
    return 0.5 * (jnp.mean(jax.nn.softplus(-logits_real)) + jnp.mean(jax.nn.softplus(logits_fake)))


def generator_loss(logits_fake: jax.Array) -> jax.Array:
    """Generator adversarial loss, g = -mean(D(x_rec)). Returns: scalar."""
    return -jnp.mean(logits_fake)


def adopt_weight(weight: float | jax.Array, step: jax.Array, threshold: int) -> jax.Array:
    """Warm-up gate: 0 while step < threshold, else `weight` (traced; no Python branch).

    Used as disc_factor = adopt_weight(1.0, global_step, disc_start).
    """
    return jnp.where(step < threshold, jnp.zeros_like(weight), weight)


def _norm(tree) -> jax.Array:
    """Frobenius / global L2 norm of an array or pytree, in float32."""
    leaves = jax.tree.leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def adaptive_weight(
    nll_grads,
    g_grads,
    disc_weight: float,
    min_weight: float = 0.0,
    max_weight: float = 1e4,
) -> jax.Array:
    """Adaptive GAN weight, clip(||grad nll|| / (||grad g|| + 1e-4), min, max) * disc_weight.

    Gradients are those of the reconstruction NLL and of the generator loss with respect
    to the decoder's last layer (params["decoder"]["conv_out"]["kernel"]); arrays or
    pytrees. The result carries no gradient (torch `.detach()`). SpecVQGAN configs set
    min = max = 1.0, making the weight the constant `disc_weight` (0.8).

    Returns: scalar float32.
    """
    w = _norm(nll_grads) / (_norm(g_grads) + 1e-4)
    return lax.stop_gradient(jnp.clip(w, min_weight, max_weight) * disc_weight)
