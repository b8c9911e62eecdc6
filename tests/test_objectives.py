"""The ELBO's pieces against hand computations in NumPy."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfvae.distributions import BernoulliLikelihood
from tfvae.objectives import (
    POSTERIOR_MIN_SCALE,
    elbo_terms,
    kl_divergence,
    posterior_distribution,
    reparameterized_sample,
)

tfd = tfp.distributions


def _softplus(v):
    return np.logaddexp(0.0, v)


def test_gaussian_kl_matches_closed_form():
    rng = np.random.default_rng(0)
    loc = rng.normal(size=(4, 3)).astype(np.float32)
    raw = rng.normal(size=(4, 3)).astype(np.float32)
    scale = _softplus(raw) + POSTERIOR_MIN_SCALE
    expected = 0.5 * (scale**2 + loc**2 - 1 - 2 * np.log(scale)).sum(axis=1)
    posterior = posterior_distribution(loc, raw)
    prior = tfd.MultivariateNormalDiag(tf.zeros(3), tf.ones(3))
    np.testing.assert_allclose(kl_divergence(posterior, prior).numpy(), expected, rtol=1e-5)


def test_reparameterized_sample_is_loc_plus_scale_times_noise_and_differentiable():
    loc = tf.Variable([[0.5, -1.0]])
    raw = tf.Variable([[0.0, 1.0]])
    noise = tf.constant([[1.0, -2.0]])
    with tf.GradientTape() as tape:
        z = reparameterized_sample(posterior_distribution(loc, raw), noise)
        total = tf.reduce_sum(z)
    scale = _softplus(np.array([0.0, 1.0])) + POSTERIOR_MIN_SCALE
    np.testing.assert_allclose(z.numpy()[0], [0.5, -1.0] + scale * [1.0, -2.0], rtol=1e-6)
    grad_loc, grad_raw = tape.gradient(total, [loc, raw])
    np.testing.assert_allclose(grad_loc.numpy(), [[1.0, 1.0]])
    sigmoid = 1 / (1 + np.exp(-np.array([0.0, 1.0])))
    np.testing.assert_allclose(grad_raw.numpy()[0], sigmoid * [1.0, -2.0], rtol=1e-6)


def test_kl_falls_back_to_monte_carlo_without_closed_form():
    posterior = posterior_distribution(tf.zeros((2, 1)), tf.zeros((2, 1)))
    mixture = tfd.MixtureSameFamily(
        tfd.Categorical(probs=[0.5, 0.5]),
        tfd.MultivariateNormalDiag(loc=[[-1.0], [1.0]], scale_diag=[[1.0], [1.0]]),
    )
    z = tf.constant([[0.3], [-0.2]])
    expected = posterior.log_prob(z) - mixture.log_prob(z)
    np.testing.assert_allclose(kl_divergence(posterior, mixture, z).numpy(), expected.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="no closed form"):
        kl_divergence(posterior, mixture)


def test_elbo_terms_combine_reconstruction_kl_and_beta():
    x = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    logits = np.array([[2.0, -1.0, 0.5], [-3.0, 0.0, 1.0]], dtype=np.float32)
    likelihood = BernoulliLikelihood().distribution(tf.constant(logits))
    posterior = posterior_distribution(tf.constant([[0.2], [-0.4]]), tf.constant([[0.1], [0.0]]))
    prior = tfd.MultivariateNormalDiag(tf.zeros(1), tf.ones(1))
    terms = elbo_terms(x, likelihood, posterior, prior, z=tf.zeros((2, 1)), beta=0.5)
    log_p = (x * -np.logaddexp(0, -logits) + (1 - x) * -np.logaddexp(0, logits)).sum(axis=1)
    kl = kl_divergence(posterior, prior).numpy()
    np.testing.assert_allclose(terms["reconstruction"].numpy(), -log_p, rtol=1e-5)
    np.testing.assert_allclose(terms["elbo"].numpy(), log_p - kl, rtol=1e-5)
    np.testing.assert_allclose(terms["objective"].numpy(), log_p - 0.5 * kl, rtol=1e-5)
