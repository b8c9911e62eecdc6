"""Posterior-collapse diagnostics: active units, per-dimension KL and I(x; z), on models built to collapse."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfvae.diagnostics import (
    active_units,
    concatenate_posteriors,
    kl_per_dimension,
    mutual_information,
    posterior_diagnostics,
)
from tfvae.models import VAE, build_conv_decoder, build_conv_vae

tfd = tfp.distributions

LATENT_DIM = 5
USED_DIMS = 3  # the encoders below give the last LATENT_DIM - USED_DIMS dimensions a constant loc


def _partly_collapsed_vae(used_dims=USED_DIMS, scale_depends_on_x=True):
    """A VAE whose encoder's loc ignores x in the dimensions from `used_dims` on, by construction.

    Those dimensions' loc is a Dense layer with a zero kernel (only a bias of 0.3), so E_q[z_d|x]
    is the same for every x; the first `used_dims` dimensions are a Dense layer of the pixels with
    large random weights.
    """
    images = keras.Input((8, 8, 1))
    flat = keras.layers.Flatten()(images)
    parts = []
    if used_dims:
        parts.append(keras.layers.Dense(used_dims, kernel_initializer=keras.initializers.RandomNormal(0.0, 0.5, seed=1))(flat))
    if LATENT_DIM - used_dims:
        parts.append(
            keras.layers.Dense(LATENT_DIM - used_dims, kernel_initializer="zeros",
                               bias_initializer=keras.initializers.Constant(0.3))(flat)
        )
    loc = keras.layers.Concatenate()(parts) if len(parts) > 1 else parts[0]
    if scale_depends_on_x:
        raw_scale = keras.layers.Dense(LATENT_DIM, kernel_initializer=keras.initializers.RandomNormal(0.0, 0.05, seed=2))(flat)
    else:
        raw_scale = keras.layers.Dense(LATENT_DIM, kernel_initializer="zeros",
                                       bias_initializer=keras.initializers.Constant(-1.0))(flat)
    encoder = keras.Model(images, [loc, raw_scale])
    decoder = build_conv_decoder(LATENT_DIM, (8, 8, 1), filters=(16,))
    return VAE(encoder, decoder, seed=0)


@pytest.fixture(scope="module")
def images(digits):
    (train_images, _), _ = digits
    return train_images[:1000]


def test_active_units_counts_exactly_the_dimensions_the_encoder_uses(images):
    vae = _partly_collapsed_vae()
    report = posterior_diagnostics(vae, images)
    assert report["active_units"] == USED_DIMS
    variances = np.array(report["posterior_mean_variance"])
    assert np.all(variances[:USED_DIMS] > 0.01), variances  # far above the threshold...
    np.testing.assert_allclose(variances[USED_DIMS:], 0.0, atol=1e-12)  # ...and exactly none
    means = vae.encode(images).mean().numpy()
    assert active_units(means) == USED_DIMS
    # The threshold is an argument: above the smallest used dimension's variance, one fewer.
    assert active_units(means, threshold=float(variances[:USED_DIMS].min()) + 1e-9) == USED_DIMS - 1
    assert active_units(means, threshold=0.0) == USED_DIMS
    with pytest.raises(ValueError, match="Expected threshold to be a number >= 0"):
        active_units(means, threshold=-1.0)
    with pytest.raises(ValueError, match=r"Expected posterior means of shape \[N, D\] with N >= 2"):
        active_units(means[:1])


def test_per_dimension_kls_sum_to_the_total_kl(images):
    vae = build_conv_vae((8, 8, 1), latent_dim=LATENT_DIM, filters=(16,), seed=0)
    posterior, prior = vae.encode(images[:200]), vae.prior_distribution()
    per_dimension = kl_per_dimension(posterior, prior).numpy()
    assert per_dimension.shape == (200, LATENT_DIM)
    np.testing.assert_allclose(per_dimension.sum(axis=1), tfd.kl_divergence(posterior, prior).numpy(), rtol=1e-5, atol=1e-6)
    # Against the closed form KL(N(m, s^2) || N(0, 1)) = (s^2 + m^2 - 1 - log s^2) / 2, in float64.
    loc = posterior.mean().numpy().astype(np.float64)
    variance = posterior.stddev().numpy().astype(np.float64) ** 2
    np.testing.assert_allclose(per_dimension, 0.5 * (variance + loc**2 - 1 - np.log(variance)), rtol=1e-4, atol=1e-6)
    # Averaged over the data by posterior_diagnostics: sums to its mean total KL.
    report = posterior_diagnostics(vae, images[:200], batch_size=64)
    assert math.isclose(sum(report["kl_per_dimension"]), report["kl"], rel_tol=1e-6)
    assert math.isclose(report["kl"], float(np.mean(tfd.kl_divergence(posterior, prior).numpy())), rel_tol=1e-5)


def test_per_dimension_kl_of_independent_normals_and_refusal_of_a_full_covariance():
    loc = tf.constant([[0.5, -1.0], [0.0, 2.0]])
    scale = tf.constant([[0.5, 2.0], [1.0, 0.1]])
    posterior = tfd.Independent(tfd.Normal(loc, scale), reinterpreted_batch_ndims=1)
    prior = tfd.Independent(tfd.Normal(tf.zeros(2), tf.ones(2)), reinterpreted_batch_ndims=1)
    np.testing.assert_allclose(
        kl_per_dimension(posterior, prior).numpy().sum(axis=1),
        tfd.kl_divergence(tfd.MultivariateNormalDiag(loc, scale), tfd.MultivariateNormalDiag(tf.zeros(2), tf.ones(2))).numpy(),
        rtol=1e-6,
    )
    full = tfd.MultivariateNormalTriL(loc, scale_tril=tf.constant([[1.0, 0.0], [0.5, 1.0]]))
    with pytest.raises(ValueError, match="Expected q\\(z\\|x\\) and p\\(z\\) that factorize.*MultivariateNormalTriL"):
        kl_per_dimension(full, prior)
    mixture = tfd.MixtureSameFamily(tfd.Categorical(logits=[0.0, 0.0]), tfd.MultivariateNormalDiag([[0.0, 0.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="p=MixtureSameFamily"):
        kl_per_dimension(posterior, mixture)


def _brute_force_mutual_information(loc, scale, z):
    """(1/N) sum_i [log q(z_i|x_i) - log (1/N) sum_j q(z_i|x_j)], with scipy-free float64 numpy."""
    log_q = -0.5 * (((z[:, None, :] - loc[None]) / scale[None]) ** 2).sum(-1) - np.log(scale).sum(-1)[None] - 0.5 * loc.shape[1] * np.log(2 * np.pi)
    aggregate = np.logaddexp.reduce(log_q, axis=1) - np.log(len(z))
    return float(np.mean(np.diag(log_q) - aggregate))


def test_mutual_information_matches_its_formula_and_is_at_most_log_n():
    rng = np.random.default_rng(0)
    num_examples = 1000
    loc = rng.normal(size=(num_examples, 3))
    for scale_value, near_log_n in ((1e-3, True), (0.5, False)):
        scale = np.full_like(loc, scale_value) * rng.uniform(0.5, 1.5, size=loc.shape)
        z = loc + scale * rng.normal(size=loc.shape)
        estimate = mutual_information(tfd.MultivariateNormalDiag(loc, scale), z)
        assert math.isclose(estimate, _brute_force_mutual_information(loc, scale, z), rel_tol=1e-6, abs_tol=1e-6)
        assert estimate <= math.log(num_examples) + 1e-9
        if near_log_n:  # well-separated posteriors: each z_i identifies its x_i
            assert estimate > math.log(num_examples) - 0.01, estimate
        else:
            assert 0.5 < estimate < math.log(num_examples) - 1.0, estimate
    # Any other distribution goes through its own log_prob, batch by batch: the same number.
    parts = [tfd.Independent(tfd.Normal(loc[i : i + 300], scale[i : i + 300]), 1) for i in range(0, num_examples, 300)]
    generic = mutual_information(concatenate_posteriors(parts), z)
    assert math.isclose(generic, estimate, rel_tol=1e-5), (generic, estimate)
    with pytest.raises(ValueError, match=r"Expected a posterior with batch shape \[N\]"):
        mutual_information(tfd.MultivariateNormalDiag(loc, scale), z[:10])


def test_mutual_information_is_zero_for_an_encoder_that_ignores_x(images):
    vae = _partly_collapsed_vae(used_dims=0, scale_depends_on_x=False)
    report = posterior_diagnostics(vae, images)
    assert report["mutual_information_examples"] == len(images) >= 1000
    assert abs(report["mutual_information"]) < 1e-6, report["mutual_information"]
    assert report["active_units"] == 0
    # An encoder that uses x has information in z, never more than log N.
    used = posterior_diagnostics(_partly_collapsed_vae(), images)
    assert 0.5 < used["mutual_information"] <= used["mutual_information_max"] == math.log(len(images))


def test_mutual_information_examples_are_capped_and_datasets_are_read(images):
    vae = _partly_collapsed_vae()
    dataset = tf.data.Dataset.from_tensor_slices((images[:300], np.zeros(300))).batch(64)
    report = posterior_diagnostics(vae, dataset, max_mutual_information_examples=100)
    assert report["num_examples"] == 300 and report["mutual_information_examples"] == 100
    assert report["mutual_information_max"] == pytest.approx(math.log(100))
    array_report = posterior_diagnostics(vae, images[:300], batch_size=64, max_mutual_information_examples=100)
    assert array_report["active_units"] == report["active_units"] == USED_DIMS
    np.testing.assert_allclose(array_report["kl_per_dimension"], report["kl_per_dimension"], rtol=1e-6)
