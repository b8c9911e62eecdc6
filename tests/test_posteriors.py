"""Tests of tfvae.distributions.posteriors: the posterior seam, the IAF, and their use everywhere."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfvae
from tfvae.config import POSTERIOR_NAMES
from tfvae.distributions import (
    POSTERIORS,
    IAFPosterior,
    PosteriorParameters,
    get_posterior,
)
from tfvae.objectives import ELBO, IWAE


def _iaf(latent_dim=3, steps=2, context_units=4, hidden_units=8, seed=0):
    keras.utils.set_random_seed(seed)
    posterior = IAFPosterior(steps=steps, context_units=context_units, hidden_units=hidden_units)
    posterior.build((latent_dim,))
    return posterior


def _parameters(batch, latent_dim, context_units, seed=0):
    rng = np.random.default_rng(seed)
    return PosteriorParameters(
        tf.constant(rng.normal(size=(batch, latent_dim)), tf.float32),
        tf.constant(rng.normal(size=(batch, latent_dim)), tf.float32),
        tf.constant(rng.normal(size=(batch, context_units)), tf.float32),
    )


def _randomize(posterior, seed=1, scale=0.5):
    """Sets every weight of the flow to random values (its initial last layers are not zero, but
    gate biases of 2 make steps nearly the identity; random values test the general case)."""
    rng = np.random.default_rng(seed)
    for variable in posterior.weights:
        variable.assign(rng.normal(scale=scale, size=variable.shape).astype("float32"))


# --------------------------------------------------------------------------- the registry
def test_names_resolve_and_the_cli_names_are_the_registry():
    assert set(POSTERIOR_NAMES) == set(POSTERIORS)
    assert type(get_posterior("iaf", steps=3)) is IAFPosterior
    assert get_posterior("iaf", steps=3).steps == 3
    with pytest.raises(ValueError, match="Unknown posterior 'flow'"):
        get_posterior("flow")
    with pytest.raises(ValueError, match="takes no setting"):
        get_posterior("diagonal_gaussian", steps=2)
    with pytest.raises(ValueError, match="Expected steps to be an integer >= 1. Received: steps=0"):
        IAFPosterior(steps=0)


def test_iaf_config_round_trip():
    posterior = IAFPosterior(steps=3, context_units=5, hidden_units=7, gate_bias=1.5)
    restored = get_posterior(keras.saving.serialize_keras_object(posterior))
    assert type(restored) is IAFPosterior
    assert restored.settings() == {"steps": 3, "context_units": 5, "hidden_units": 7, "gate_bias": 1.5}
    assert restored.encoder_outputs(4) == 2 * 4 + 5


# --------------------------------------------------------------------------- the flow's math
def test_diagonal_gaussian_draws_loc_plus_scale_noise_with_its_density():
    posterior = get_posterior("diagonal_gaussian")
    parameters = _parameters(4, 3, 0)._replace(context=None)
    noise = tf.random.stateless_normal([5, 4, 3], seed=[1, 2])
    z, log_q = posterior.sample(parameters, noise)
    base = posterior.base_distribution(parameters)
    np.testing.assert_allclose(z, base.mean() + base.stddev() * noise, rtol=1e-6)
    np.testing.assert_allclose(log_q, base.log_prob(z), rtol=1e-6)


@pytest.mark.parametrize("steps", [1, 3])
def test_iaf_with_zero_last_layer_weights_is_an_affine_map_with_the_gaussian_density(steps):
    latent_dim, context_units = 3, 4
    posterior = _iaf(latent_dim, steps, context_units)
    _randomize(posterior)
    rng = np.random.default_rng(2)
    shifts, gates = [], []
    for _, _, shift, gate in posterior.step_layers:
        shift.kernel.assign(np.zeros(shift.kernel.shape, "float32"))
        gate.kernel.assign(np.zeros(gate.kernel.shape, "float32"))
        shift.bias.assign(rng.normal(size=latent_dim).astype("float32"))
        gate.bias.assign(rng.normal(size=latent_dim).astype("float32"))
        shifts.append(shift.bias.numpy().astype(np.float64))
        gates.append(1 / (1 + np.exp(-gate.bias.numpy().astype(np.float64))))
    parameters = _parameters(6, latent_dim, context_units)
    noise = tf.random.stateless_normal([2, 6, latent_dim], seed=[3, 4])
    z, log_q = posterior.sample(parameters, noise)

    # Each step is z <- s z + (1 - s) m with constant s = sigmoid(b_s), m = b_m: z_T = a z_0 + c.
    base = posterior.base_distribution(parameters)
    loc, scale = base.mean().numpy().astype(np.float64), base.stddev().numpy().astype(np.float64)
    a, c = np.ones(latent_dim), np.zeros(latent_dim)
    for s, m in zip(gates, shifts, strict=True):
        a, c = s * a, s * c + (1 - s) * m
    z0 = loc + scale * noise.numpy()
    np.testing.assert_allclose(z, a * z0 + c, rtol=1e-5, atol=1e-6)
    # z_T ~ N(a loc + c, a scale): log q is that Gaussian's closed-form density.
    mean, std = a * loc + c, a * scale
    expected = np.sum(-0.5 * ((z.numpy() - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi), axis=-1)
    np.testing.assert_allclose(log_q, expected, rtol=1e-5, atol=1e-4)


def test_iaf_log_determinant_equals_a_numerical_jacobians():
    latent_dim, context_units = 3, 2
    posterior = _iaf(latent_dim, steps=3, context_units=context_units)
    _randomize(posterior, scale=0.8)
    parameters = _parameters(1, latent_dim, context_units, seed=5)
    zero_noise = tf.zeros([1, latent_dim])

    def flow(z0):
        # At zero noise z_0 = loc: the flow as a function of z_0, and log q(z_T) at it.
        return posterior.sample(parameters._replace(loc=tf.constant(z0[None], tf.float32)), zero_noise)

    z0 = parameters.loc.numpy()[0].astype(np.float64)
    _, log_q = flow(z0)
    base_log_prob = posterior.base_distribution(parameters._replace(loc=z0[None])).log_prob(z0[None])
    log_det = float(base_log_prob[0] - log_q[0])  # log N(z_0) - log q(z_T) = log |det dz_T/dz_0|
    step = 1e-2
    jacobian = np.stack([
        (flow(z0 + step * e)[0].numpy()[0] - flow(z0 - step * e)[0].numpy()[0]) / (2 * step)
        for e in np.eye(latent_dim)
    ], axis=1)
    numerical = math.log(abs(np.linalg.det(jacobian.astype(np.float64))))
    assert abs(numerical) > 0.1  # the flow is far from volume preserving here
    assert abs(log_det - numerical) < 2e-3, (log_det, numerical)


def test_each_step_is_autoregressive_in_its_order_which_is_reversed_between_steps():
    latent_dim, context_units = 4, 3
    posterior = _iaf(latent_dim, steps=2, context_units=context_units)
    _randomize(posterior)
    parameters = _parameters(1, latent_dim, context_units)
    for step in range(posterior.steps):
        z = tf.constant(np.random.default_rng(step).normal(size=(1, latent_dim)), tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(z)
            z_next, log_gate = posterior.flow_step(step, z, parameters.context)
        jacobian = tape.batch_jacobian(z_next, z).numpy()[0]  # [out, in]
        order = posterior.step_order(step, latent_dim)  # the degree of each dimension
        permutation = np.argsort(order)  # dimensions sorted by degree
        in_order = jacobian[np.ix_(permutation, permutation)]
        # Triangular in the step's order: output i sees only inputs of lower degree (and itself).
        np.testing.assert_array_equal(np.triu(in_order, k=1), 0)
        assert np.all(np.abs(np.tril(in_order, k=-1)[np.tril_indices(latent_dim, -1)]) > 0)
        # The diagonal is the gate s: log |det| of the step is sum log s.
        np.testing.assert_allclose(np.log(np.diag(jacobian)), log_gate.numpy()[0], rtol=1e-5, atol=1e-6)
    assert list(posterior.step_order(0, latent_dim)) == [1, 2, 3, 4]
    assert list(posterior.step_order(1, latent_dim)) == [4, 3, 2, 1]


# --------------------------------------------------------------------------- in a VAE
def _small_iaf_vae(**kwargs):
    return tfvae.build_conv_vae(
        (8, 8, 1), latent_dim=2, filters=(4,), posterior=get_posterior("iaf", context_units=3, hidden_units=8),
        seed=3, **kwargs
    )


def test_iaf_vae_sizes_its_encoder_and_refuses_free_bits_and_dreg():
    vae = _small_iaf_vae()
    assert [tuple(output.shape) for output in vae.encoder.outputs] == [(None, 2), (None, 2), (None, 3)]
    with pytest.raises(ValueError, match="Free bits need a per-dimension KL: expected a posterior that factorizes"):
        _small_iaf_vae(objective=ELBO(free_bits=0.5))
    with pytest.raises(ValueError, match="DReG re-evaluates log q"):
        _small_iaf_vae(objective=IWAE(3, gradient_estimator="dreg"))
    encoder = tfvae.build_conv_encoder((8, 8, 1), 2, filters=(4,))  # no context output
    decoder = tfvae.build_conv_decoder(2, (8, 8, 1), filters=(4,))
    with pytest.raises(ValueError, match=r"\[loc, raw_scale, context\]"):
        tfvae.VAE(encoder, decoder, posterior="iaf")
    # One [B, 2D + H] output works as three outputs do.
    images = keras.Input((8, 8, 1))
    flat = keras.Model(images, keras.layers.Dense(2 * 2 + 16)(keras.layers.Flatten()(images)))
    assert tfvae.VAE(flat, decoder, posterior="iaf").latent_dim == 2


def test_iaf_kl_is_the_monte_carlo_estimate_at_the_sample(digits):
    (images, _), _ = digits
    vae = _small_iaf_vae()
    noise = tf.random.stateless_normal([8, 2], seed=[5, 6])
    vae.draw_noise = lambda shape: noise
    terms = vae.compute_elbo_terms(images[:8])
    parameters = vae.posterior_parameters(images[:8])
    z, log_q = vae.posterior.sample(parameters, noise)
    np.testing.assert_allclose(terms["kl"], log_q - vae.prior_distribution().log_prob(z), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        terms["reconstruction"], -vae.decode(z).log_prob(images[:8]), rtol=1e-5, atol=1e-4
    )


def test_save_load_continues_training_identically(digits, tmp_path):
    (images, _), _ = digits
    images = images[:128]
    keras.utils.set_random_seed(0)
    vae = _small_iaf_vae(objective=IWAE(2))
    vae.compile(optimizer=keras.optimizers.Adam(1e-3))
    vae.fit(images, epochs=1, batch_size=32, verbose=0, shuffle=False)
    vae.save(tmp_path / "vae.keras")
    restored = keras.models.load_model(tmp_path / "vae.keras")
    assert type(restored.posterior) is IAFPosterior
    assert restored.posterior.settings() == vae.posterior.settings()
    np.testing.assert_allclose(restored(images[:4]), vae(images[:4]), rtol=1e-6, atol=1e-6)
    restored.seed_generator.state.assign(vae.seed_generator.state)
    more = {"epochs": 1, "batch_size": 32, "verbose": 0, "shuffle": False}
    continued = vae.fit(images, **more).history["loss"]
    again = restored.fit(images, **more).history["loss"]
    np.testing.assert_allclose(again, continued, rtol=1e-6)
    for original, loaded in zip(vae.weights, restored.weights, strict=True):
        np.testing.assert_allclose(loaded.numpy(), original.numpy(), rtol=1e-6, atol=1e-7)


@pytest.fixture(scope="module")
def trained_iaf_vae(digits):
    """An IAF VAE trained on binarized digits long enough to use its latent space."""
    (train_images, _), (val_images, _) = digits
    keras.utils.set_random_seed(0)
    vae = tfvae.build_conv_vae(
        (8, 8, 1), latent_dim=4, filters=(32,), hidden_units=128, seed=0,
        posterior=get_posterior("iaf", steps=2, context_units=8, hidden_units=32),
    )
    vae.compile(optimizer=keras.optimizers.Adam(3e-3))
    vae.fit((train_images > 0.5).astype("float32"), epochs=15, batch_size=32, verbose=0)
    return vae, (val_images[:100] > 0.5).astype("float32")


@pytest.mark.slow
def test_iaf_importance_weighted_nll_is_unbiased_at_k1_and_falls_with_k(trained_iaf_vae):
    vae, images = trained_iaf_vae
    repeats = 100
    k1 = [vae.importance_weighted_nll(images, num_samples=1, seed=s).mean() for s in range(repeats)]
    elbos = [-vae.compute_elbo_terms(images)["elbo"].numpy().mean() for _ in range(repeats)]
    # Two means of 100 x 100 single-sample estimates: within 4 standard errors of their difference.
    standard_error = math.sqrt(np.var(k1) / repeats + np.var(elbos) / repeats)
    assert abs(np.mean(k1) - np.mean(elbos)) < 4 * standard_error, (np.mean(k1), np.mean(elbos), standard_error)
    k100 = vae.importance_weighted_nll(images, num_samples=100, seed=1)
    # Margin: K = 100 lies below K = 1 by more than 5 standard errors of the K = 1 data-set mean.
    k1_per_image = vae.importance_weighted_nll(images, num_samples=1, seed=2)
    margin = 5 * np.std(k1_per_image - k100) / math.sqrt(len(images))
    assert k100.mean() < k1_per_image.mean() - margin, (k100.mean(), k1_per_image.mean(), margin)
