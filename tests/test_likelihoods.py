"""The likelihoods with several parameters per sub-pixel and the 8-bit ones, against float64 references."""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_main

import tfvae
import tfvae.data
from tfvae.distributions import (
    LIKELIHOODS,
    CategoricalLikelihood,
    ContinuousBernoulliLikelihood,
    DiscretizedLogisticLikelihood,
    GaussianPredictedScaleLikelihood,
    get_likelihood,
)
from tfvae.models import VAE, build_conv_decoder, build_conv_encoder

LEVELS = np.arange(256) / 255.0


def _all_values_log_probs(distribution, shape):
    """log P(x = k / 255) of every sub-pixel for k = 0..255: float64 `[256, *shape]`."""
    return np.stack(
        [
            distribution.subpixel_log_prob(np.full(shape, level, np.float32)).numpy()
            for level in LEVELS.astype(np.float32)
        ]
    ).astype(np.float64)


def _logistic_parameters(rng, shape, components):
    """Mixture parameters `[*shape, 3M]`, including sharply peaked and off-range components."""
    logits = rng.normal(size=(*shape, components)) * 2
    means = rng.uniform(-0.3, 1.3, size=(*shape, components))
    log_scales = rng.uniform(-9.0, 0.5, size=(*shape, components))
    # Some sub-pixels: one component at the floor scale, centred on a level, on a bin edge, at
    # the edges 0 and 1.
    means[0, 0, 0, :, 0] = [0.0, 1.0, 17 / 255, 100.5 / 255][: shape[-1]]
    log_scales[0, 0, 0, :, 0] = -7.0
    logits[0, 0, 0, :, 0] = 20.0
    return np.concatenate([logits, means, log_scales], axis=-1).astype(np.float32)


def _flatten_subpixels(parameters):
    """`[B, H, W, C, P]` -> the decoder's layout `[B, H, W, C * P]`."""
    return parameters.reshape(*parameters.shape[:3], -1)


@pytest.mark.parametrize("components", [1, 3])
def test_discretized_logistic_probabilities_of_all_256_values_sum_to_one(components):
    rng = np.random.default_rng(components)
    shape = (2, 3, 3, 4)
    parameters = _flatten_subpixels(_logistic_parameters(rng, shape, components))
    distribution = DiscretizedLogisticLikelihood(components).distribution(parameters)
    log_probs = _all_values_log_probs(distribution, shape)
    assert np.isfinite(log_probs).all()
    totals = np.exp(log_probs).sum(axis=0)
    np.testing.assert_allclose(totals, 1.0, atol=1e-4)
    # The peaked components (scale e^-7, 0.46 bin widths) put their mass where they are
    # centred: 2 sigmoid(2.15) - 1 = 0.79 in an inner bin, sigmoid(2.15) = 0.90 in an edge bin.
    peaked = np.exp(log_probs[:, 0, 0, 0])
    assert peaked[0, 0] > 0.85 and peaked[255, 1] > 0.85 and peaked[17, 2] > 0.75
    assert peaked[100, 3] > 0.4 and peaked[101, 3] > 0.4


def test_discretized_logistic_matches_a_float64_reference():
    rng = np.random.default_rng(5)
    components = 2
    shape = (3, 2, 2, 1)
    raw = _logistic_parameters(rng, shape, components).astype(np.float64)
    logits, means, log_scales = np.split(raw, 3, axis=-1)
    scales = np.exp(np.maximum(log_scales, -7.0))
    weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    k = rng.integers(0, 256, size=shape)
    x = k / 255.0

    def cdf(v):
        return 1.0 / (1.0 + np.exp(-(v[..., None] - means) / scales))

    upper = np.where((k == 255)[..., None], 1.0, cdf(x + 1 / 510))
    lower = np.where((k == 0)[..., None], 0.0, cdf(x - 1 / 510))
    expected = np.log((weights * (upper - lower)).sum(-1))
    distribution = DiscretizedLogisticLikelihood(components).distribution(
        _flatten_subpixels(raw.astype(np.float32))
    )
    got = distribution.subpixel_log_prob(x.astype(np.float32)).numpy()
    # Where float64 itself resolves the difference (probabilities above 1e-10).
    resolved = expected > math.log(1e-10)
    np.testing.assert_allclose(got[resolved], expected[resolved], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        distribution.log_prob(x.astype(np.float32)).numpy(), got.sum(axis=(1, 2, 3)), rtol=1e-6
    )


def test_discretized_logistic_is_stable_far_in_the_tails_and_its_gradients_are_finite():
    # A component at 0 with the floor scale: the bin at 1.0 is ~255 / e^-7 standard units away.
    parameters = tf.constant([[[[0.0, 0.0, -7.0]]]], tf.float32)
    likelihood = DiscretizedLogisticLikelihood(1)
    with tf.GradientTape() as tape:
        tape.watch(parameters)
        log_prob = likelihood.distribution(parameters).log_prob(np.full((1, 1, 1, 1), 128 / 255, np.float32))
    gradient = tape.gradient(log_prob, parameters)
    # Bin 128 spans a = 0.5 e^7 to b = a + e^7 / 255 standard units: sigmoid(b) - sigmoid(a)
    # underflows in float32, its logarithm is -a + log(1 - exp(a - b)) (+ e^-a terms).
    expected = -0.5 * math.exp(7) + math.log(1 - math.exp(-math.exp(7) / 255))
    assert log_prob.numpy()[0] == pytest.approx(expected, rel=1e-6)
    assert np.isfinite(gradient.numpy()).all()


EXTREME_LOG_SCALES = [-30.0, -7.0, 0.0, 12.0, 30.0, 90.0]
EXTREME_MEANS = [-1e6, -3.0, 0.0, 0.5, 1.0, 4.0, 1e6]
EDGE_AND_INNER_BINS = [0, 1, 128, 254, 255]


def _extreme_logistic_parameters():
    """Two-component parameters `[N, 1, 1, 6]`: component 0 over a grid of extreme log scales, means
    and mixture logits (0: an even mixture, 200: component 0 alone, -200: component 1 alone);
    component 1 ordinary (mean 0.3, log scale -2)."""
    rows = [
        [logit, 0.0, mean, 0.3, log_scale, -2.0]
        for log_scale in EXTREME_LOG_SCALES
        for mean in EXTREME_MEANS
        for logit in [0.0, 200.0, -200.0]
    ]
    return np.asarray(rows, np.float32)[:, np.newaxis, np.newaxis, :]


def test_discretized_logistic_values_and_gradients_are_finite_for_extreme_parameters():
    # Regression: log scales above ~11.8 (where exp(-1 / (255 s)) rounds to 1 and the unselected
    # branch of log(1 - exp(-t)) is -inf) and means far outside [0, 1] (where b - a cancelled to 0)
    # gave NaN gradients, at every bin, the edge bins included; training on gray MNIST diverged.
    parameters = tf.constant(_extreme_logistic_parameters())
    likelihood = DiscretizedLogisticLikelihood(2)
    x = np.broadcast_to(np.asarray(EDGE_AND_INNER_BINS, np.float32) / 255.0, (parameters.shape[0], 1, 5))
    x = x[..., np.newaxis]
    with tf.GradientTape() as tape:
        tape.watch(parameters)
        # One sub-pixel per bin: the parameters are tiled along the width.
        tiled = tf.tile(parameters, [1, 1, 5, 1])
        log_probs = likelihood.distribution(tiled).subpixel_log_prob(x)
    gradient = tape.gradient(log_probs, parameters)
    assert np.isfinite(log_probs.numpy()).all()
    assert np.isfinite(gradient.numpy()).all()


def test_discretized_logistic_is_exact_for_very_large_scales_and_far_means():
    # The 256 probabilities still sum to 1, and an inner bin of a wide logistic (P ~ 1 / (255 s))
    # matches float64.
    parameters = _extreme_logistic_parameters()
    selected = parameters[(np.abs(parameters[:, 0, 0, 2]) < 1e5) & (parameters[:, 0, 0, 0] == 200.0)]
    distribution = DiscretizedLogisticLikelihood(2).distribution(selected)
    log_probs = _all_values_log_probs(distribution, (selected.shape[0], 1, 1, 1))
    np.testing.assert_allclose(np.exp(log_probs).sum(axis=0), 1.0, atol=1e-4)
    for log_scale in [12.0, 30.0, 90.0]:
        scale = math.exp(log_scale)
        a, b = (128 / 255 - 0.5 - 1 / 510) / scale, (128 / 255 - 0.5 + 1 / 510) / scale
        # log(sigmoid(b) - sigmoid(a)) without cancellation, in float64.
        expected = -np.logaddexp(0, -b) - np.logaddexp(0, a) + np.log(-np.expm1(-1 / (255 * scale)))
        single = DiscretizedLogisticLikelihood(1).distribution(tf.constant([[[[0.0, 0.5, log_scale]]]]))
        got = single.log_prob(np.full((1, 1, 1, 1), 128 / 255, np.float32)).numpy()[0]
        assert got == pytest.approx(expected, rel=1e-5)


def test_discretized_logistic_training_from_extreme_parameters_stays_finite():
    # Adam on free per-pixel parameters over 8-bit data with many exact 0s and 1s, from an unused
    # component with a huge log scale (as the drifting unused components of a decoder trained on
    # gray MNIST reached) and one with a mean far outside [0, 1]. Before the fix the first gradient was NaN.
    rng = np.random.default_rng(3)
    levels = rng.choice([0, 255, 128, 7], p=[0.6, 0.2, 0.1, 0.1], size=(32, 6, 6, 1))
    x = (levels / 255.0).astype(np.float32)
    start = np.zeros((1, 6, 6, 9), np.float32)
    start[..., 0:3] = [0.0, -30.0, -10.0]  # mixture logits
    start[..., 3:6] = [0.5, 3.0, -1e3]  # means
    start[..., 6:9] = [-2.0, 14.0, -7.0]  # log scales
    parameters = tf.Variable(start)
    likelihood = DiscretizedLogisticLikelihood(3)
    optimizer = keras.optimizers.Adam(0.05)
    losses = []
    for _ in range(60):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(likelihood.distribution(tf.broadcast_to(parameters, (32, 6, 6, 9))).log_prob(x))
        gradient = tape.gradient(loss, parameters)
        assert np.isfinite(gradient.numpy()).all()
        optimizer.apply_gradients([(gradient, parameters)])
        losses.append(float(loss))
    assert np.isfinite(parameters.numpy()).all()
    assert losses[-1] < losses[0] - 10.0


def test_discretized_logistic_mean_is_the_exact_mean_of_the_256_values():
    rng = np.random.default_rng(7)
    shape = (2, 2, 2, 3)
    parameters = _flatten_subpixels(_logistic_parameters(rng, shape, 3))
    likelihood = DiscretizedLogisticLikelihood(3)
    probabilities = np.exp(_all_values_log_probs(likelihood.distribution(parameters), shape))
    expected = np.tensordot(LEVELS, probabilities, axes=1)
    np.testing.assert_allclose(likelihood.mean(parameters).numpy(), expected, atol=2e-5)


def test_categorical_equals_softmax_cross_entropy_and_sums_to_one():
    rng = np.random.default_rng(2)
    shape = (2, 3, 3, 2)
    logits = (rng.normal(size=(*shape, 256)) * 4).astype(np.float32)
    logits[0, 0, 0, 0, 7] = 80.0  # sharply peaked
    likelihood = CategoricalLikelihood()
    distribution = likelihood.distribution(_flatten_subpixels(logits))
    k = rng.integers(0, 256, size=shape)
    shifted = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    expected = np.take_along_axis(log_softmax, k[..., None], axis=-1)[..., 0]
    got = distribution.subpixel_log_prob((k / 255.0).astype(np.float32)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(distribution.log_prob((k / 255).astype(np.float32)), expected.sum((1, 2, 3)), rtol=1e-5)
    totals = np.exp(_all_values_log_probs(distribution, shape)).sum(axis=0)
    np.testing.assert_allclose(totals, 1.0, atol=1e-4)
    # The mean of channel c uses that channel's 256 logits (parameters[..., c*256:(c+1)*256]).
    expected_mean = (np.exp(log_softmax) * LEVELS).sum(-1)
    np.testing.assert_allclose(likelihood.mean(_flatten_subpixels(logits)), expected_mean, atol=1e-6)
    assert float(likelihood.mean(_flatten_subpixels(logits))[0, 0, 0, 0]) == pytest.approx(7 / 255, abs=1e-6)


def _continuous_bernoulli_reference(probability):
    """float64 log C(lambda) and mean from the closed forms (lambda != 0.5)."""
    mu = 1.0 - 2.0 * probability
    log_constant = np.log(2.0 * np.arctanh(mu) / mu)
    mean = probability / (2.0 * probability - 1.0) + 1.0 / (2.0 * np.arctanh(mu))
    return log_constant, mean


def test_continuous_bernoulli_log_constant_and_mean_away_from_one_half():
    probability = np.concatenate([np.linspace(1e-4, 0.49, 200), np.linspace(0.51, 1 - 1e-4, 200)])
    probability = probability[np.abs(probability - 0.5) > 1e-2 + 1e-6]
    logits = np.log(probability / (1 - probability))
    log_constant, mean = _continuous_bernoulli_reference(probability)
    likelihood = ContinuousBernoulliLikelihood()
    got_constant = likelihood.log_normalizer(logits.astype(np.float32)).numpy()
    np.testing.assert_allclose(got_constant, log_constant, rtol=1e-5, atol=1e-6)
    got_mean = likelihood.mean(logits.astype(np.float32)).numpy()
    np.testing.assert_allclose(got_mean, mean, atol=1e-5)
    # Far logits: C ~ |eta|, the mean tends to 0 or 1.
    far = likelihood.log_normalizer(np.array([-60.0, 60.0], np.float32)).numpy()
    np.testing.assert_allclose(far, np.log(60.0), rtol=1e-6)


def test_continuous_bernoulli_series_inside_the_taylor_radius():
    # |lambda - 0.5| < 1e-2, where 1 - 2 lambda cancels; the float64 closed form is still exact
    # to ~1e-12 there for |lambda - 0.5| >= 1e-5, and C = 2 at 0.5.
    offsets = np.concatenate([-np.geomspace(1e-5, 0.99e-2, 30), np.geomspace(1e-5, 0.99e-2, 30)])
    probability = 0.5 + offsets
    logits = np.log(probability / (1 - probability))
    log_constant, mean = _continuous_bernoulli_reference(probability)
    likelihood = ContinuousBernoulliLikelihood()
    np.testing.assert_allclose(
        likelihood.log_normalizer(logits.astype(np.float32)).numpy(), log_constant, rtol=1e-6
    )
    np.testing.assert_allclose(likelihood.mean(logits.astype(np.float32)).numpy(), mean, atol=1e-6)
    assert likelihood.log_normalizer(np.float32(0.0)).numpy() == pytest.approx(math.log(2.0), rel=1e-7)
    assert likelihood.mean(np.float32(0.0)).numpy() == pytest.approx(0.5, abs=1e-7)
    # Continuous across the boundary of the two branches, and finite gradients at 0.5.
    boundary = 2 * np.arctanh(2e-2)
    edges = np.array([boundary * (1 - 1e-4), boundary * (1 + 1e-4)], np.float32)
    values = likelihood.log_normalizer(edges).numpy()
    assert abs(values[1] - values[0]) < 1e-5
    logits_at_half = tf.zeros((1, 2, 2, 1))
    with tf.GradientTape() as tape:
        tape.watch(logits_at_half)
        log_prob = likelihood.distribution(logits_at_half).log_prob(np.full((1, 2, 2, 1), 0.3, np.float32))
    assert np.isfinite(tape.gradient(log_prob, logits_at_half).numpy()).all()


def test_continuous_bernoulli_density_integrates_to_one_with_the_mean_of_its_formula():
    probability = np.array([0.02, 0.3, 0.495, 0.5, 0.6, 0.97])
    logits = np.log(probability / (1 - probability)).astype(np.float32).reshape(1, 1, -1, 1)
    likelihood = ContinuousBernoulliLikelihood()
    distribution = likelihood.distribution(np.repeat(logits, 2001, axis=0))
    grid = np.linspace(0.0, 1.0, 2001)
    x = np.broadcast_to(grid.reshape(-1, 1, 1, 1), (2001, 1, len(probability), 1)).astype(np.float32)
    density = np.exp(distribution.subpixel_log_prob(x).numpy()[:, 0, :, 0].astype(np.float64))
    np.testing.assert_allclose(np.trapezoid(density, grid, axis=0), 1.0, atol=1e-5)
    first_moment = np.trapezoid(density * grid[:, None], grid, axis=0)
    np.testing.assert_allclose(likelihood.mean(logits).numpy().ravel(), first_moment, atol=1e-5)


def test_gaussian_predicted_scale_log_prob_and_initial_scale():
    rng = np.random.default_rng(3)
    loc = rng.normal(size=(2, 2, 2, 3))
    raw = rng.normal(size=(2, 2, 2, 3))
    likelihood = GaussianPredictedScaleLikelihood(initial_scale=0.2, min_scale=1e-3)
    parameters = _flatten_subpixels(np.stack([loc, raw], axis=-1).astype(np.float32))
    offset = np.log(np.expm1(0.2 - 1e-3))
    scale = np.log1p(np.exp(raw + offset)) + 1e-3
    x = rng.normal(size=loc.shape)
    expected = (-0.5 * ((x - loc) / scale) ** 2 - np.log(scale) - 0.5 * np.log(2 * np.pi)).sum((1, 2, 3))
    got = likelihood.distribution(parameters).log_prob(x.astype(np.float32)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(likelihood.mean(parameters), loc, rtol=1e-6)
    _, initial = likelihood.loc_and_scale(np.zeros((1, 1, 1, 2), np.float32))
    assert float(initial[0, 0, 0, 0]) == pytest.approx(0.2, rel=1e-5)
    assert likelihood.trainable_weights == []


def test_parameters_per_subpixel_settings_and_errors():
    assert {name: get_likelihood(name).parameters_per_subpixel for name in LIKELIHOODS} == {
        "bernoulli": 1,
        "gaussian": 1,
        "gaussian_predicted_scale": 2,
        "continuous_bernoulli": 1,
        "categorical": 256,
        "discretized_logistic": 15,
    }
    assert get_likelihood("discretized-logistic", components=4).parameters_per_subpixel == 12
    with pytest.raises(ValueError, match=r"'bernoulli' takes no setting\(s\) \['components'\]"):
        get_likelihood("bernoulli", components=4)
    with pytest.raises(ValueError, match=r"only together with a likelihood name"):
        get_likelihood(CategoricalLikelihood(), components=4)
    with pytest.raises(ValueError, match=r"components to be an integer >= 1. Received: components=0"):
        DiscretizedLogisticLikelihood(0)
    with pytest.raises(ValueError, match=r"8-bit images scaled to \[0, 1\].*Received: data in \[0, 255\]"):
        CategoricalLikelihood().check_data(0.0, 255.0)


@pytest.mark.parametrize("name", sorted(LIKELIHOODS))
def test_builders_size_the_decoder_and_the_vae_checks_it(name):
    likelihood = get_likelihood(name)
    vae = tfvae.build_conv_vae((8, 8, 3), latent_dim=2, filters=(4,), likelihood=name)
    per_subpixel = likelihood.parameters_per_subpixel
    assert vae.decoder.output.shape == (None, 8, 8, 3 * per_subpixel)
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype(np.float32) / 255
    assert vae(images).shape == (2, 8, 8, 3)
    assert vae.sample(3, seed=0).shape == (3, 8, 8, 3)
    if per_subpixel > 1:
        encoder = build_conv_encoder((8, 8, 3), 2, filters=(4,))
        with pytest.raises(ValueError, match=rf"parameters of shape \(None, 8, 8, {3 * per_subpixel}\).*Received: decoder output shape \(None, 8, 8, 3\)"):
            VAE(encoder, build_conv_decoder(2, (8, 8, 3), filters=(4,)), likelihood=name)


def test_importance_weighted_nll_chunks_count_the_parameters_per_subpixel():
    vae = tfvae.build_conv_vae((8, 8, 1), latent_dim=2, filters=(4,), likelihood="categorical", seed=0)
    calls = []
    original = vae._chunk_log_weights

    def counting(images, seed, num_samples, labels=None, bfloat16=False):
        calls.append(int(num_samples))
        return original(images, seed, num_samples, labels, bfloat16)

    vae._chunk_log_weights = counting
    images = np.zeros((4, 8, 8, 1), np.float32)
    # 4 images x 256 parameters = 1024 per sample: 2048 allows chunks of 2 samples.
    vae.importance_weighted_nll(images, num_samples=5, batch_size=4, max_decodes=2048)
    assert calls == [2, 2, 1]


def _eight_bit_images(digits, count):
    (images, _), _ = digits
    return (np.round(images[:count] * 255) / 255).astype(np.float32)


@pytest.mark.parametrize("name", ["gaussian_predicted_scale", "continuous_bernoulli", "categorical", "discretized_logistic"])
def test_save_load_continues_training_identically_and_exports(name, digits, tmp_path):
    images = _eight_bit_images(digits, 128)
    settings = {"components": 2} if name == "discretized_logistic" else {}
    keras.utils.set_random_seed(0)
    vae = tfvae.build_conv_vae(
        (8, 8, 1), latent_dim=2, filters=(4,), likelihood=get_likelihood(name, **settings), seed=3
    )
    vae.compile(optimizer=keras.optimizers.Adam(1e-3))
    vae.fit(images, epochs=1, batch_size=32, verbose=0, shuffle=False)
    vae.save(tmp_path / "vae.keras")
    restored = keras.models.load_model(tmp_path / "vae.keras")
    assert type(restored.likelihood) is type(vae.likelihood)
    assert restored.likelihood.settings() == vae.likelihood.settings()
    # The .keras file does not carry the position of the posterior-noise stream (for any
    # likelihood; see the report): align it, so that the same steps must give the same numbers.
    restored.seed_generator.state.assign(vae.seed_generator.state)
    more = {"epochs": 1, "batch_size": 32, "verbose": 0, "shuffle": False}
    continued = vae.fit(images, **more).history["loss"]
    again = restored.fit(images, **more).history["loss"]
    np.testing.assert_allclose(again, continued, rtol=1e-6)
    for original, loaded in zip(vae.weights, restored.weights, strict=True):
        np.testing.assert_allclose(loaded.numpy(), original.numpy(), rtol=1e-6, atol=1e-7)

    path = tfvae.export_saved_model(vae, tmp_path / "export")
    loaded = tf.saved_model.load(str(path))
    z = np.random.default_rng(1).normal(size=(3, 2)).astype(np.float32)
    decoded = loaded.decode(z)
    assert decoded["images"].shape == (3, 8, 8, 1)
    assert decoded["parameters"].shape == (3, 8, 8, vae.likelihood.parameters_per_subpixel)
    np.testing.assert_allclose(decoded["images"], vae.likelihood.mean(vae.decoder(z)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loaded.reconstruct(images[:4])["images"], vae(images[:4]), rtol=1e-5, atol=1e-5)
    assert loaded.sample(num_samples=2, seed=1)["images"].shape == (2, 8, 8, 1)
    noise = tf.random.stateless_normal([4, 2], seed=tf.bitcast(tf.constant(9, tf.int64), tf.int32))
    original_noise = vae.draw_noise
    vae.draw_noise = lambda shape: noise
    expected = vae.compute_elbo_terms(images[:4])["elbo"]
    vae.draw_noise = original_noise
    np.testing.assert_allclose(loaded.elbo(images[:4], 9)["elbo"], expected, rtol=1e-5, atol=1e-4)
    metadata = tfvae.export.read_metadata(path)
    assert metadata["likelihood"] == name
    assert metadata["likelihood_settings"] == vae.likelihood.settings()
    assert metadata["parameters_per_subpixel"] == vae.likelihood.parameters_per_subpixel
    assert metadata["value_range"] == (None if name == "gaussian_predicted_scale" else [0.0, 1.0])


def _write_eight_bit_npz(path, digits):
    """The 8x8 digits as uint8 images (0..255), with a test split: an 8-bit data set."""
    (train_images, _), (test_images, _) = digits
    as_uint8 = lambda images: np.round(images * 255).astype(np.uint8)  # noqa: E731
    np.savez(path, x_train=as_uint8(train_images[:512]), x_test=as_uint8(test_images[:64]))
    return path


@pytest.mark.parametrize(
    "flags, data, correction",
    [
        (["--likelihood", "discretized_logistic", "--likelihood-components", "2"], "8bit", 0.0),
        (["--likelihood", "gaussian_predicted_scale", "--dequantize"], "dequantized", 64 * math.log(256)),
    ],
    ids=["discretized_logistic", "gaussian_predicted_scale-dequantized"],
)
def test_cli_trains_and_evaluates_bits_per_dim(flags, data, correction, digits, tmp_path, capsys):
    dataset = _write_eight_bit_npz(tmp_path / "eight_bit.npz", digits)
    run_dir = tmp_path / "run"
    status, _, _ = run_main(
        capsys, "train", "--dataset", dataset, *flags, "--latent-dim", "2", "--filters", "4",
        "--epochs", "1", "--run-dir", run_dir, "--quiet",
    )
    assert status == 0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["likelihood"] == flags[1]
    vae = keras.models.load_model(run_dir / "model.keras")
    assert vae.decoder.output.shape[-1] == vae.likelihood.parameters_per_subpixel
    if "--likelihood-components" in flags:
        assert config["likelihood_components"] == 2 and vae.likelihood.components == 2
    status, out, _ = run_main(capsys, "evaluate", run_dir, "--samples", "5", "--json")
    assert status == 0
    result = json.loads(out)
    assert result["data"] == data
    assert result["bits_per_dim"] == pytest.approx((result["iw_nll"] + correction) / (64 * math.log(2)))
    # The same run scored on undequantized data: a density there has no bits/dim.
    if data == "dequantized":
        status, out, _ = run_main(capsys, "evaluate", run_dir, "--samples", "2", "--no-dequantize", "--json")
        assert "a density on 8bit data is not a probability" in json.loads(out)["bits_per_dim_unavailable"]


def test_cli_rejects_components_for_a_likelihood_without_them(capsys):
    from tfvae.cli import main  # noqa: PLC0415

    status = main(["train", "--likelihood", "categorical", "--likelihood-components", "3", "--epochs", "1"])
    assert status == 2
    assert "The likelihood 'categorical' takes no setting(s) ['components']" in capsys.readouterr().err


def test_tuner_searches_the_likelihood():
    import keras_tuner  # noqa: PLC0415

    from tfvae.tuning import VAEHyperModel  # noqa: PLC0415

    hypermodel = VAEHyperModel(
        (8, 8, 1), latent_dims=(2,), likelihood=("categorical", "discretized_logistic"),
        likelihood_components=2, filters=((4,),),
    )
    hp = keras_tuner.HyperParameters()
    first = hypermodel.build(hp)
    assert hp.values["likelihood"] == "categorical" and type(first.likelihood) is CategoricalLikelihood
    hp.values["likelihood"] = "discretized_logistic"
    second = hypermodel.build(hp)
    assert second.likelihood.components == 2 and second.decoder.output.shape[-1] == 6
    with pytest.raises(ValueError, match=r"likelihood_components only with a likelihood that takes components"):
        VAEHyperModel((8, 8, 1), latent_dims=(2,), likelihood="categorical", likelihood_components=2)


def test_dequantized_data_spread_each_level_over_its_bin(digits, tmp_path):
    dataset = _write_eight_bit_npz(tmp_path / "eight_bit.npz", digits)
    splits = tfvae.data.load(str(dataset), batch_size=64, dequantize=True)
    plain = tfvae.data.load(str(dataset), batch_size=64)
    assert splits.dequantized and not plain.dequantized
    levels = np.concatenate([batch.numpy() for batch in plain.validation]) * 255
    values = np.concatenate([batch.numpy() for batch in splits.validation])
    # (k + u) / 256: the level is recovered by flooring, u is uniform, validation is fixed.
    np.testing.assert_array_equal(np.floor(values * 256), np.round(levels))
    noise = values * 256 - np.round(levels)
    assert abs(noise.mean() - 0.5) < 0.01 and abs(noise.var() - 1 / 12) < 0.005
    np.testing.assert_array_equal(np.concatenate([b.numpy() for b in splits.validation]), values)
    first, second = (np.concatenate([b.numpy() for b in splits.train]) for _ in range(2))
    assert not np.array_equal(np.sort(first, axis=None), np.sort(second, axis=None))  # fresh each epoch
    with pytest.raises(ValueError, match=r"Expected 8-bit images \(uint8, 0..255\) from 'digits'"):
        tfvae.data.load("digits", dequantize=True)


@pytest.mark.slow
def test_model_family_benchmark_tiny_mode_runs_and_resumes(digits, tmp_path, capsys):
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from conftest import REPO_ROOT, cli_environment, load_benchmark  # noqa: PLC0415
    from test_data_files import write_idx  # noqa: PLC0415

    (train_images, _), (test_images, _) = digits
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.round(train_images[..., 0] * 255).astype(np.uint8), compress=True)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.round(test_images[..., 0] * 255).astype(np.uint8), compress=True)
    arguments = [
        "--tiny", "--train-images", str(tmp_path / "train-images-idx3-ubyte.gz"),
        "--test-images", str(tmp_path / "t10k-images-idx3-ubyte.gz"), "--out", str(tmp_path / "results.json"),
    ]
    first = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "model_family.py"), *arguments],
                           env=cli_environment(), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    (run,) = json.loads((tmp_path / "results.json").read_text())["runs"].values()
    assert sorted(run["results"]) == [
        "eight_bit/categorical", "eight_bit/discretized_logistic", "eight_bit/gaussian",
        "priors/iaf", "priors/mixture", "priors/standard_normal", "priors/vamp", "priors/vamp_iaf",
    ]
    model_family = load_benchmark("model_family")
    for name, result in run["results"].items():
        if name.startswith("priors/"):
            assert result["data"] == "binary" and result["iw_samples"] == 4
            prior, posterior = {"iaf": ("standard_normal", "iaf"), "vamp_iaf": ("vamp", "iaf")}.get(
                name.split("/")[1], (name.split("/")[1], "diagonal_gaussian"))
            assert (result["prior"], result["posterior"]) == (prior, posterior)
            if posterior == "iaf":
                assert result["posterior_settings"]["steps"] == model_family.TINY["iaf_steps"]
            assert result["parameters"] > 0 and result["train_images_per_second"] > 0
            assert result["bits_per_dim"] == pytest.approx(result["test_iw_nll"] / (64 * math.log(2)))
            continue
        dims, correction = 64, (64 * math.log(256) if result["data"] == "dequantized" else 0.0)
        assert result["bits_per_dim"] == pytest.approx((result["test_iw_nll"] + correction) / (dims * math.log(2)))
        assert result["parameters"] > 0 and result["train_images_per_second"] > 0
    assert run["results"]["eight_bit/gaussian"]["data"] == "dequantized"
    # Run again (in this process: a second start of TensorFlow would add seconds, not checks).
    assert model_family.main(arguments) == 0
    assert capsys.readouterr().out.count("done already, skipped") == len(run["results"])
