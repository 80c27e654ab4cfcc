"""GAN loss terms against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avjax.losses.gan import (
    adaptive_weight,
    adopt_weight,
    generator_loss,
    hinge_d_loss,
    vanilla_d_loss,
)

REAL = jnp.array([[2.0, 0.5], [-1.0, 1.0]])
FAKE = jnp.array([[-2.0, -0.5], [0.0, 1.5]])


def test_hinge_d_loss():
    # relu(1 - real) = [0, .5, 2, 0] -> mean .625; relu(1 + fake) = [0, .5, 1, 2.5] -> 1.0
    np.testing.assert_allclose(hinge_d_loss(REAL, FAKE), 0.5 * (0.625 + 1.0), rtol=1e-6)


def test_vanilla_d_loss():
    sp = lambda x: np.log1p(np.exp(x))
    want = 0.5 * (np.mean(sp(-np.asarray(REAL))) + np.mean(sp(np.asarray(FAKE))))
    np.testing.assert_allclose(vanilla_d_loss(REAL, FAKE), want, rtol=1e-6)


def test_generator_loss():
    # mean(fake) = (-2 - 0.5 + 0 + 1.5) / 4 = -0.25
    np.testing.assert_allclose(generator_loss(FAKE), 0.25, rtol=1e-6)


def test_adopt_weight_is_traced():
    f = jax.jit(lambda step: adopt_weight(1.0, step, threshold=30001))
    assert float(f(jnp.int32(0))) == 0.0
    assert float(f(jnp.int32(30000))) == 0.0
    assert float(f(jnp.int32(30001))) == 1.0
    assert float(adopt_weight(0.8, 5, threshold=2)) == pytest.approx(0.8)


def test_adaptive_weight():
    nll = jnp.array([[3.0, 4.0]])  # norm 5
    g = jnp.array([[0.0, 2.0]])  # norm 2
    want = 5.0 / (2.0 + 1e-4) * 0.8
    np.testing.assert_allclose(adaptive_weight(nll, g, 0.8), want, rtol=1e-6)
    # Clamped; SpecVQGAN's min = max = 1 makes it the constant disc_weight.
    np.testing.assert_allclose(adaptive_weight(nll, g, 0.8, 1.0, 1.0), 0.8, rtol=1e-6)
    np.testing.assert_allclose(adaptive_weight(nll, g, 0.5, 0.0, 1.5), 0.75, rtol=1e-6)
    # Pytrees are flattened into one global norm; no gradient flows through the weight.
    tree = {"a": jnp.array([3.0]), "b": jnp.array([4.0])}
    np.testing.assert_allclose(adaptive_weight(tree, g, 1.0), 5.0 / (2.0 + 1e-4), rtol=1e-6)
    grad = jax.grad(lambda s: adaptive_weight(nll * s, g, 0.8))(1.0)
    assert float(grad) == 0.0
