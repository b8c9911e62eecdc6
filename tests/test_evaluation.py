"""The importance-weighted NLL: unbiased at K=1, tightening with K, exact on a linear-Gaussian model."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import negative_elbo_draws

from tfvae.distributions import get_likelihood
from tfvae.evaluation import bits_per_dim, data_kind
from tfvae.models import VAE, build_conv_vae
from tfvae.models.precision import bfloat16_copy, precision_copy
from tfvae.objectives import POSTERIOR_MIN_SCALE


@pytest.fixture(scope="module")
def trained_digits_vae(digits):
    """A VAE trained long enough on binarized digits to use its latent space (KL ~ 5 nats)."""
    (train_images, _), (val_images, _) = digits
    keras.utils.set_random_seed(0)
    vae = build_conv_vae((8, 8, 1), latent_dim=4, filters=(32,), hidden_units=128, seed=0)
    vae.compile(optimizer=keras.optimizers.Adam(3e-3))
    vae.fit((train_images > 0.5).astype("float32"), epochs=40, batch_size=32, verbose=0)
    return vae, (val_images[:100] > 0.5).astype("float32")


@pytest.mark.slow
def test_k1_is_an_unbiased_estimate_of_negative_elbo(trained_digits_vae):
    vae, images = trained_digits_vae
    repeats = 200
    k1 = np.mean([vae.importance_weighted_nll(images, num_samples=1, seed=s).mean() for s in range(repeats)])
    elbos = negative_elbo_draws(vae, images, repeats)
    negative_elbo = np.mean(elbos)
    # Both are averages of 200 x 100 single-sample estimates; their standard errors are tiny.
    standard_error = np.std(np.mean(elbos, axis=1)) / math.sqrt(repeats)
    assert abs(k1 - negative_elbo) < 6 * standard_error + 0.02, (k1, negative_elbo, standard_error)


@pytest.mark.slow
def test_estimate_falls_with_k_and_stays_below_negative_elbo(trained_digits_vae):
    vae, images = trained_digits_vae
    estimates = {k: vae.importance_weighted_nll(images, num_samples=k, seed=1).mean() for k in (1, 10, 100, 1000)}
    # Stated margin: 0.3 nats from K=1 to 10 (measured 0.8 to 0.95); beyond that the gains are
    # a tenth of a nat, so: strictly lower at 100, and not worse beyond Monte-Carlo noise at 1000.
    assert estimates[1] > estimates[10] + 0.3, estimates
    assert estimates[10] > estimates[100], estimates
    assert estimates[1000] < estimates[100] + 0.02, estimates
    negative_elbo = negative_elbo_draws(vae, images, 20).mean()
    assert estimates[100] < negative_elbo - 0.5
    # The same seed gives the same estimate; smaller chunks (less memory) draw other noise but
    # estimate the same quantity.
    again = vae.importance_weighted_nll(images, num_samples=100, seed=1)
    np.testing.assert_array_equal(again.mean(), estimates[100])
    chunked = vae.importance_weighted_nll(images, num_samples=100, seed=1, max_decodes=700)
    assert abs(chunked.mean() - estimates[100]) < 0.15


def _linear_gaussian_vae(weight, bias, sigma):
    """x = W z + b + sigma * eps on a 2x2x1 "image", with its exact posterior mean as encoder."""
    latent_dim, data_dim = weight.shape[1], weight.shape[0]
    precision = weight.T @ weight / sigma**2 + np.eye(latent_dim)
    covariance = np.linalg.inv(precision)
    mean_map = covariance @ weight.T / sigma**2  # E[z|x] = mean_map (x - b)
    std = np.sqrt(np.diag(covariance))
    raw_scale = np.log(np.expm1(std - POSTERIOR_MIN_SCALE))

    images = keras.Input((2, 2, 1))
    flat = keras.layers.Flatten()(images)
    both = keras.layers.Dense(2 * latent_dim, name="posterior")(flat)
    encoder = keras.Model(images, both)
    encoder.get_layer("posterior").set_weights(
        [np.concatenate([mean_map.T, np.zeros((data_dim, latent_dim))], axis=1),
         np.concatenate([-mean_map @ bias, raw_scale])]
    )
    z = keras.Input((latent_dim,))
    loc = keras.layers.Reshape((2, 2, 1))(keras.layers.Dense(data_dim, name="linear")(z))
    decoder = keras.Model(z, loc)
    decoder.get_layer("linear").set_weights([weight.T, bias])
    vae = VAE(encoder, decoder, likelihood="gaussian")
    vae.likelihood.raw_scale.assign([np.log(np.expm1(sigma - vae.likelihood.min_scale))])
    return vae


def test_matches_the_closed_form_log_likelihood_of_a_linear_gaussian_model():
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(4, 2))
    bias = rng.normal(size=4)
    sigma = 0.5
    vae = _linear_gaussian_vae(weight, bias, sigma)
    x = (rng.normal(size=(50, 2)) @ weight.T + bias + sigma * rng.normal(size=(50, 4)))
    covariance = weight @ weight.T + sigma**2 * np.eye(4)
    centered = x - bias
    _, logdet = np.linalg.slogdet(covariance)
    exact = 0.5 * (np.einsum("ni,ij,nj->n", centered, np.linalg.inv(covariance), centered) + logdet + 4 * np.log(2 * np.pi))
    estimate = vae.importance_weighted_nll(x.reshape(50, 2, 2, 1).astype("float32"), num_samples=5000)
    # The diagonal posterior is close to the exact (full-covariance) one, so K=5000 is near exact:
    # within 0.1 nats per example and 0.01 nats on average (measured: 0.05 and 0.003).
    np.testing.assert_allclose(estimate, exact, atol=0.1)
    assert abs(estimate.mean() - exact.mean()) < 0.01


def test_bits_per_dim_of_probability_masses_and_dequantized_densities():
    categorical, bernoulli = get_likelihood("categorical"), get_likelihood("bernoulli")
    assert bits_per_dim(100 * math.log(2), (10, 10, 1), categorical, "8bit") == pytest.approx(1.0)
    assert bits_per_dim(100 * math.log(2), (10, 10, 1), bernoulli, "binary") == pytest.approx(1.0)
    assert bits_per_dim(3 * math.log(2), (1, 1, 3), get_likelihood("discretized_logistic"), "binary") == pytest.approx(1.0)
    # A density at -log p = 0 on dequantized 8-bit data: log2(256) = 8 bits per dimension.
    for name in ("gaussian", "gaussian_predicted_scale", "continuous_bernoulli"):
        assert bits_per_dim(0.0, (4, 4, 3), get_likelihood(name), "dequantized") == pytest.approx(8.0)


@pytest.mark.parametrize(
    "name, data, reason",
    [
        ("bernoulli", "8bit", r"BernoulliLikelihood scores 8bit data as pixel probabilities"),
        ("bernoulli", "dequantized", r"BernoulliLikelihood scores dequantized data"),
        ("gaussian", "8bit", r"GaussianLikelihood is a density, and a density on 8bit data is not a probability"),
        ("continuous_bernoulli", "continuous", r"density on continuous data"),
        ("categorical", "dequantized", r"256 levels k / 255, and the data are dequantized values"),
        ("discretized_logistic", "continuous", r"the data are continuous values"),
    ],
)
def test_bits_per_dim_refusals_give_one_line_reasons(name, data, reason):
    with pytest.raises(ValueError, match=f"^No bits/dim: .*{reason}") as error:
        bits_per_dim(10.0, (4, 4, 1), get_likelihood(name), data)
    assert "\n" not in str(error.value)


def test_data_kind():
    levels = np.arange(256, dtype=np.float32).reshape(1, 16, 16, 1) / 255
    assert data_kind(np.array([[0.0, 1.0]], np.float32)) == "binary"
    assert data_kind(levels) == "8bit"
    assert data_kind(tf.data.Dataset.from_tensor_slices(levels).batch(1)) == "8bit"
    assert data_kind(levels + 1e-3) == "continuous"
    assert data_kind(levels, dequantized=True) == "dequantized"


def test_bfloat16_decoding_moves_the_estimate_by_little_and_adds_no_weights(trained_digits_vae):
    vae, images = trained_digits_vae
    weights = [w.path for w in vae.weights]
    full = vae.importance_weighted_nll(images, num_samples=100, seed=2)
    half = vae.importance_weighted_nll(images, num_samples=100, seed=2, decode_precision="bfloat16")
    # The same importance samples: only the decoder's bfloat16 rounding differs. Stated bound
    # 0.05 nats per image on average (8 bits of mantissa; measured on MNIST in
    # benchmarks/results/eval_throughput.json).
    assert not np.array_equal(full, half)
    assert abs(half.mean() - full.mean()) < 0.05 and np.abs(half - full).max() < 0.5
    copy = vae._evaluation_decoder.copy
    assert copy.weights == []  # a view on the decoder's own variables
    assert [w.path for w in vae.weights] == weights  # and no part of the model
    # The view follows the model's weights: change them and the bfloat16 estimate follows.
    vae.decoder.layers[-1].bias.assign(vae.decoder.layers[-1].bias + 1.0)
    moved_full = vae.importance_weighted_nll(images, num_samples=100, seed=2)
    moved_half = vae.importance_weighted_nll(images, num_samples=100, seed=2, decode_precision="bfloat16")
    vae.decoder.layers[-1].bias.assign(vae.decoder.layers[-1].bias - 1.0)
    assert abs(moved_full.mean() - full.mean()) > 1.0
    assert abs(moved_half.mean() - moved_full.mean()) < 0.05


@pytest.mark.parametrize("strides, kernel_size, filters", [(2, 3, (4, 3)), (2, 4, (2,)), (3, 5, (3,)), (1, 3, (2,))])
def test_the_sub_pixel_form_of_transposed_convolutions_is_exact(strides, kernel_size, filters):
    # In float32 the view computes what the network computes: transposed convolutions ("same",
    # any stride and kernel size, odd or even) as one convolution and depth_to_space, dense and
    # convolution layers fused with their bias and activation, other layers as themselves.
    keras.utils.set_random_seed(3)
    z = keras.Input((6,))
    h = keras.layers.Dense(5 * 4 * 3, activation="relu")(z)
    h = keras.layers.Reshape((5, 4, 3))(h)
    for count in filters:
        h = keras.layers.Conv2DTranspose(count, kernel_size, strides=strides, padding="same", activation="elu")(h)
    h = keras.layers.Conv2D(2, 3, padding="same")(h)
    h = keras.layers.Conv2DTranspose(1, (3, 2), padding="valid")(h)  # not sub-pixel: called as itself
    network = keras.Model(z, h)
    inputs = np.random.default_rng(0).normal(size=(7, 6)).astype("float32")
    expected = network(inputs)
    exact = precision_copy(network, "float32")(inputs)
    half = bfloat16_copy(network)(inputs)
    assert exact.shape == expected.shape and exact.dtype == half.dtype == tf.float32
    np.testing.assert_allclose(exact, expected, atol=1e-5)
    assert 0 < np.abs(half - expected).max() < 0.05 * (1 + np.abs(expected).max())


def test_unknown_decode_precision_names_the_choices():
    vae = build_conv_vae((8, 8, 1), latent_dim=2, filters=(4,))
    with pytest.raises(ValueError, match=r"Expected decode_precision to be one of \['float32', 'bfloat16'\]. "
                       r"Received: decode_precision='float16'"):
        vae.importance_weighted_nll(np.zeros((4, 8, 8, 1), "float32"), decode_precision="float16")


@pytest.mark.parametrize("name, value", [("num_samples", 0), ("batch_size", -1), ("max_decodes", 1.5)])
def test_bad_arguments(name, value):
    vae = build_conv_vae((8, 8, 1), latent_dim=2, filters=(4,))
    images = np.zeros((4, 8, 8, 1), "float32")
    with pytest.raises(ValueError, match=f"Expected {name} to be an integer >= 1. Received: {name}="):
        vae.importance_weighted_nll(images, **{name: value})
