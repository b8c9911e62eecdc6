"""Tests of tfvae.distributions.posteriors: the posterior seam, the IAF, and their use everywhere."""

from __future__ import annotations

import json
import math

import keras
import keras_tuner
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from conftest import run_main

import tfvae
from tfvae.config import POSTERIOR_NAMES, TrainConfig
from tfvae.distributions import (
    POSTERIORS,
    IAFPosterior,
    PosteriorParameters,
    get_posterior,
)
from tfvae.objectives import ELBO, IWAE
from tfvae.training import config_posterior
from tfvae.tuning import TuningConfig, VAEHyperModel


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


# The IAF's importance-weighted NLL (unbiased at K = 1, falling to K = 100 and K = 1000) is tested
# with every prior in tests/test_priors.py.


# --------------------------------------------------------------------------- the export
@pytest.fixture(scope="module", params=["diagonal_gaussian", "iaf"])
def exported(request, digits, tmp_path_factory):
    """`(vae, loaded export, test images)` of a briefly trained model of each posterior."""
    (train_images, _), (val_images, _) = digits
    keras.utils.set_random_seed(0)
    posterior = get_posterior(request.param, **({"context_units": 4, "hidden_units": 16} if request.param == "iaf" else {}))
    vae = tfvae.build_conv_vae((8, 8, 1), latent_dim=3, filters=(16,), hidden_units=64, posterior=posterior, seed=0)
    vae.compile(optimizer=keras.optimizers.Adam(3e-3))
    vae.fit((train_images > 0.5).astype("float32"), epochs=5, batch_size=32, verbose=0)
    path = tfvae.export_saved_model(vae, tmp_path_factory.mktemp(request.param) / "export")
    return vae, tf.saved_model.load(str(path)), path, (val_images[:16] > 0.5).astype("float32")


def test_export_endpoints_equal_the_keras_models(exported):
    vae, loaded, path, images = exported
    seed = tf.bitcast(tf.constant(7, tf.int64), tf.int32)
    z, log_q = vae.posterior_sample(images, 5, seed=seed)
    sampled = loaded.posterior_sample(images, num_samples=5, seed=7)
    np.testing.assert_allclose(sampled["z"], z, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(sampled["log_q"], log_q, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(
        loaded.prior_log_prob(z)["log_prob"], vae.prior_distribution().log_prob(z), rtol=1e-5, atol=1e-4
    )
    expected = tf.reshape(
        vae.decode(tf.reshape(z, [-1, 3])).log_prob(np.tile(images, (5, 1, 1, 1))), [5, len(images)]
    )
    np.testing.assert_allclose(loaded.log_likelihood(images, z)["log_likelihood"], expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(loaded.reconstruct(images)["images"], vae(images), rtol=1e-5, atol=1e-4)
    # The ELBO endpoint's noise is posterior_sample's first draw (K = 1).
    elbo = loaded.elbo(images, 7)
    z1, log_q1 = vae.posterior_sample(images, 1, seed=seed)
    expected_kl = (
        log_q1[0] - vae.prior_distribution().log_prob(z1[0]) if not vae.posterior.factorized
        else tfp.distributions.kl_divergence(vae.encode(images), vae.prior_distribution())
    )
    np.testing.assert_allclose(elbo["kl"], expected_kl, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(elbo["reconstruction"], -vae.decode(z1[0]).log_prob(images), rtol=1e-5, atol=1e-4)
    metadata = tfvae.export.read_metadata(path)
    assert metadata["posterior"] == tfvae.distributions.posterior_name(vae.posterior)
    assert metadata["posterior_settings"] == vae.posterior.settings()
    assert (metadata["prior"], metadata["prior_settings"]) == ("standard_normal", {})
    assert metadata["likelihood"] == "bernoulli"
    assert {"posterior_sample", "prior_log_prob", "log_likelihood"} <= set(metadata["endpoints"])


def test_tf_only_importance_weights_match_the_models_importance_weighted_nll(exported):
    vae, loaded, _, images = exported
    num_samples = 200
    sampled = loaded.posterior_sample(images, num_samples=num_samples, seed=11)
    log_weights = (
        loaded.log_likelihood(images, sampled["z"])["log_likelihood"]
        + loaded.prior_log_prob(sampled["z"])["log_prob"]
        - sampled["log_q"]
    ).numpy().astype(np.float64)
    exported_nll = -(np.logaddexp.reduce(log_weights, axis=0) - math.log(num_samples))
    model_nll = vae.importance_weighted_nll(images, num_samples=num_samples, seed=3)
    # Other noise, the same estimator: the per-image estimates of K = 200 differ by Monte-Carlo
    # noise only. Tolerance: 4 standard errors of the mean difference, plus 0.05 nats.
    difference = exported_nll - model_nll
    tolerance = 4 * np.std(difference) / math.sqrt(len(images)) + 0.05
    assert abs(difference.mean()) < tolerance, (exported_nll.mean(), model_nll.mean(), tolerance)
    # A sanity check that the estimate is one of -log p(x): below the one-sample -ELBO.
    assert model_nll.mean() < -vae.compute_elbo_terms(images)["elbo"].numpy().mean() + 1.0


# --------------------------------------------------------------------------- command line
def test_cli_trains_an_iaf_model_and_refuses_free_bits_in_one_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    status, _, err = run_main(capsys, "train", "--posterior", "iaf", "--iaf-steps", "3", "--iaf-context-units", "5",
                              "--epochs", "1", "--filters", "8", "--hidden-units", "16", "--latent-dim", "2",
                              "--run-dir", run_dir, "--quiet")
    assert status == 0, err[-2000:]
    saved = json.loads((run_dir / "config.json").read_text())
    assert (saved["posterior"], saved["iaf_steps"], saved["iaf_context_units"]) == ("iaf", 3, 5)
    model = keras.models.load_model(run_dir / "model.keras")
    assert type(model.posterior) is IAFPosterior
    assert (model.posterior.steps, model.posterior.context_units) == (3, 5)
    status, _, err = run_main(capsys, "train", "--posterior", "iaf", "--free-bits", "0.5", "--run-dir", tmp_path / "refused")
    assert status == 2
    assert "Expected no free_bits with posterior 'iaf'" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "refused").exists()


def test_config_and_tuner_take_the_posterior():
    config = TrainConfig(posterior="iaf", iaf_steps=3)
    assert config_posterior(config).steps == 3
    with pytest.raises(ValueError, match="Expected iaf_steps only with posterior 'iaf'"):
        TrainConfig(iaf_steps=3)
    with pytest.raises(ValueError, match="Expected gradient_estimator 'standard' with posterior 'iaf'"):
        TrainConfig(posterior="iaf", iw_samples=5, gradient_estimator="dreg")
    hypermodel = VAEHyperModel(
        (8, 8, 1), latent_dims=(2,), filters=((4,),), posterior=("diagonal_gaussian", "iaf"),
        posterior_settings={"steps": 3},
    )
    hp = keras_tuner.HyperParameters()
    hp.Fixed("posterior", "iaf")
    vae = hypermodel.build(hp)
    assert type(vae.posterior) is IAFPosterior and vae.posterior.steps == 3
    with pytest.raises(ValueError, match=r"Expected no free bits and no DReG with the posterior\(s\) \['iaf'\]"):
        VAEHyperModel((8, 8, 1), filters=((4,),), posterior="iaf", free_bits=(0.0, 1.0))
    tuning = TuningConfig(train=TrainConfig(posterior="iaf", iaf_context_units=4), posteriors=("iaf",))
    assert tuning.hypermodel((8, 8, 1)).posterior_settings == {"context_units": 4}
