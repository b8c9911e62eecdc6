"""The ELBO's pieces against hand computations in NumPy."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfvae.distributions import BernoulliLikelihood
from tfvae.objectives import (
    POSTERIOR_MIN_SCALE,
    elbo_terms,
    free_bits_kl,
    importance_weighted_bound,
    kl_divergence,
    kl_per_dimension,
    log_importance_weights,
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


# --------------------------------------------------------------------------- importance weighting
def _tiny_vae(latent_dim=2, seed=0):
    """A dense VAE on 8x8 images with few weights, so that gradients are cheap to sample."""
    import keras

    import tfvae

    keras.utils.set_random_seed(seed)
    encoder = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(2 * latent_dim)])
    decoder = keras.Sequential(
        [keras.Input((latent_dim,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(64),
         keras.layers.Reshape((8, 8, 1))]
    )
    return tfvae.VAE(encoder, decoder, seed=seed)


def _bound(vae, images, noise, estimator="standard"):
    posterior = vae.encode(images)
    return importance_weighted_bound(
        images, posterior, vae.prior_distribution(), vae.decode, noise, estimator
    )


def test_iwae_with_one_sample_is_the_monte_carlo_kl_elbo_at_the_same_noise(digits):
    vae = _tiny_vae()
    images = digits[1][0][:16]
    noise = tf.random.stateless_normal([1, 16, 2], seed=[1, 2])
    bound, log_likelihoods = _bound(vae, images, noise)
    posterior = vae.encode(images)
    z = reparameterized_sample(posterior, noise[0])
    prior = vae.prior_distribution()
    monte_carlo_elbo = vae.decode(z).log_prob(images) - (posterior.log_prob(z) - prior.log_prob(z))
    np.testing.assert_allclose(bound.numpy(), monte_carlo_elbo.numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(log_likelihoods[0].numpy(), vae.decode(z).log_prob(images).numpy(), rtol=1e-6)
    # The DReG variant has the same value.
    np.testing.assert_allclose(_bound(vae, images, noise, "dreg")[0].numpy(), bound.numpy(), rtol=1e-6)


def test_iwae_with_one_sample_equals_the_analytic_kl_elbo_in_expectation(digits):
    vae = _tiny_vae()
    images = digits[1][0][:8]
    draws = 4000
    posterior = vae.encode(images)
    prior = vae.prior_distribution()
    z = reparameterized_sample(posterior, tf.random.stateless_normal([draws, 8, 2], seed=[3, 4]))
    iwae_1 = log_importance_weights(images, posterior, prior, vae.decode, z).numpy()  # [draws, 8]
    tiled_images = np.tile(images, (draws, 1, 1, 1))
    log_likelihoods = vae.decode(tf.reshape(z, [-1, 2])).log_prob(tiled_images).numpy().reshape(draws, 8)
    analytic_elbo = log_likelihoods - kl_divergence(posterior, prior).numpy()
    # Over the seeds, the two estimates of each example's ELBO agree within 4 standard errors.
    difference = iwae_1 - analytic_elbo
    standard_error = difference.std(axis=0, ddof=1) / np.sqrt(draws)
    assert np.all(standard_error > 1e-3)
    np.testing.assert_array_less(np.abs(difference.mean(axis=0)), 4 * standard_error)


def _gradient_draws(vae, images, num_samples, seeds, estimator):
    """Encoder and decoder gradients of the summed bound, one row per seed: `[seeds, weights]`."""

    @tf.function
    def gradients(seed):
        noise = tf.random.stateless_normal([num_samples, images.shape[0], vae.latent_dim], seed=seed)
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(_bound(vae, images, noise, estimator)[0])
        encoder_weights = vae.encoder.trainable_variables
        grads = tape.gradient(total, encoder_weights + vae.decoder.trainable_variables)
        flat = [tf.reshape(g, [-1]) for g in grads]
        return tf.concat(flat[: len(encoder_weights)], 0), tf.concat(flat[len(encoder_weights) :], 0)

    draws = [gradients(tf.constant([seed, 7])) for seed in range(seeds)]
    return np.stack([d[0].numpy() for d in draws]), np.stack([d[1].numpy() for d in draws])


def test_dreg_encoder_gradient_is_unbiased_with_lower_variance_and_decoder_gradient_unchanged(digits):
    vae = _tiny_vae()
    images = tf.constant(digits[1][0][:4])
    seeds = 400
    standard_encoder, standard_decoder = _gradient_draws(vae, images, 10, seeds, "standard")
    dreg_encoder, dreg_decoder = _gradient_draws(vae, images, 10, seeds, "dreg")
    # The decoder's gradient is the standard one, seed by seed.
    np.testing.assert_allclose(dreg_decoder, standard_decoder, rtol=1e-4, atol=1e-5)
    # Unbiased: per encoder weight, the mean over the same seeds agrees within 4 standard errors
    # of the (paired) difference. Weights of always-blank pixels have zero gradient in both.
    difference = dreg_encoder - standard_encoder
    standard_error = difference.std(axis=0, ddof=1) / np.sqrt(seeds)
    assert np.sum(standard_error > 0) >= 100
    np.testing.assert_array_less(np.abs(difference.mean(axis=0)), 4 * standard_error + 1e-7)
    # Lower variance at K = 10: summed over the encoder's weights, less than half.
    dreg_variance = dreg_encoder.var(axis=0).sum()
    standard_variance = standard_encoder.var(axis=0).sum()
    assert dreg_variance < 0.5 * standard_variance, (dreg_variance, standard_variance)


# --------------------------------------------------------------------------- free bits
def test_free_bits_gradient_is_zero_below_lambda_and_the_plain_kl_gradient_above():
    # Dimension 0 far from the prior (KL ~ 2 nats), dimension 1 close to it (KL ~ 0.01 nats).
    loc = tf.Variable([[2.0, 0.1], [-1.8, 0.05], [2.2, -0.1]])
    raw_scale = tf.Variable([[0.3, 0.5], [0.6, 0.55], [0.4, 0.45]])
    prior = tfd.MultivariateNormalDiag(tf.zeros(2), tf.ones(2))
    free_bits = 0.5
    with tf.GradientTape(persistent=True) as tape:
        posterior = posterior_distribution(loc, raw_scale)
        kl_per_dim = kl_per_dimension(posterior, prior)
        mean_kl = tf.reduce_mean(kl_per_dim, axis=0)
        penalized = tf.reduce_sum(free_bits_kl(kl_per_dim, free_bits, mean_kl))
        plain_first_dimension = tf.reduce_sum(kl_per_dim[:, 0])
    assert mean_kl[0] > free_bits > mean_kl[1]
    # Per-dimension KLs sum to the total KL; the penalized value is sum_d max(lambda, mean KL_d).
    np.testing.assert_allclose(tf.reduce_sum(kl_per_dim, 1).numpy(), kl_divergence(posterior, prior).numpy(), rtol=1e-5)
    np.testing.assert_allclose(penalized.numpy() / 3, mean_kl[0].numpy() + free_bits, rtol=1e-5)
    for variable in (loc, raw_scale):
        gradient = tape.gradient(penalized, variable).numpy()
        plain = tape.gradient(plain_first_dimension, variable).numpy()
        np.testing.assert_array_equal(gradient[:, 1], 0.0)
        np.testing.assert_allclose(gradient[:, 0], plain[:, 0], rtol=1e-6)
        assert np.all(np.abs(plain[:, 0]) > 1e-3)


def test_per_dimension_kl_is_refused_for_a_prior_that_does_not_factorize():
    posterior = posterior_distribution(tf.zeros((2, 1)), tf.zeros((2, 1)))
    mixture = tfd.MixtureSameFamily(
        tfd.Categorical(probs=[0.5, 0.5]),
        tfd.MultivariateNormalDiag(loc=[[-1.0], [1.0]], scale_diag=[[1.0], [1.0]]),
    )
    with pytest.raises(ValueError, match="factorizes over latent dimensions.*MixtureSameFamily"):
        kl_per_dimension(posterior, mixture)
