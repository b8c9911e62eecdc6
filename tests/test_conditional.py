"""Tests of tfvae.ConditionalVAE: class-controlled samples, style transfer, labels in and out."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import assert_one_step_equals_one_device, cli_environment, two_replica_result
from scipy import stats

import tfvae
from tfvae import export
from tfvae.diagnostics import ACTIVE_UNIT_THRESHOLD, posterior_mean_variance
from tfvae.distributions import ClassGaussianPrior

NUM_CLASSES = 10


def _tiny(class_prior="learned", seed=0, **settings):
    keras.utils.set_random_seed(seed)
    return tfvae.build_conv_vae(
        (8, 8, 1), latent_dim=2, filters=(4,), num_classes=NUM_CLASSES, class_prior=class_prior,
        seed=seed, **settings,
    )


@pytest.fixture(scope="module")
def trained(digits):
    """A conditional VAE trained for 30 short epochs on the digits (about 20 s on 2 cores)."""
    (images, labels), _ = digits
    keras.utils.set_random_seed(0)
    vae = tfvae.build_conv_vae((8, 8, 1), latent_dim=4, filters=(16, 32), num_classes=NUM_CLASSES, seed=0)
    vae.compile(optimizer=keras.optimizers.Adam(3e-3))
    vae.fit(images, labels, epochs=30, batch_size=32, verbose=0)
    return vae


@pytest.fixture(scope="module")
def tiny(digits):
    """A tiny conditional VAE with a learned prior per class, one epoch on 256 digits."""
    (images, labels), _ = digits
    vae = _tiny()
    vae.compile(optimizer=keras.optimizers.Adam(1e-2))
    vae.fit(images[:256], labels[:256], epochs=1, batch_size=64, verbose=0)
    # Classes apart from each other, so that a mix-up of labels shows in every figure.
    rng = np.random.default_rng(0)
    vae.prior.locs.assign(rng.normal(size=(NUM_CLASSES, 2)).astype("float32"))
    vae.prior.raw_scales.assign(rng.normal(scale=0.5, size=(NUM_CLASSES, 2)).astype("float32"))
    return vae


# ---------------------------------------------------------------------- quality on real digits
@pytest.mark.slow
def test_samples_of_each_label_are_classified_as_that_label(trained, digits):
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

    (images, labels), (validation_images, validation_labels) = digits
    classifier = LogisticRegression(max_iter=2000).fit(images.reshape(len(images), -1), labels)
    real_accuracy = classifier.score(validation_images.reshape(len(validation_images), -1), validation_labels)
    assert real_accuracy > 0.9, f"the classifier itself: {real_accuracy:.3f}"

    wanted = np.repeat(np.arange(NUM_CLASSES), 30)
    samples = trained.sample(len(wanted), labels=wanted, seed=1).numpy()
    accuracy = float(np.mean(classifier.predict(samples.reshape(len(samples), -1)) == wanted))
    print(f"class accuracy of conditional samples: {accuracy:.3f}")
    assert accuracy >= 0.80, f"class accuracy of the samples: {accuracy:.3f} (need >= 0.80)"


@pytest.mark.slow
def test_style_transfer_keeps_z(trained, digits):
    """Decode z under y, encode the image under y: the posterior mean lands near z (issue 14)."""
    _, (validation_images, validation_labels) = digits
    means = trained.encode(validation_images, validation_labels).mean().numpy()
    active = posterior_mean_variance(means) > ACTIVE_UNIT_THRESHOLD
    assert active.sum() >= 1, "no active dimension: the criterion would be empty"

    labels = np.repeat(np.arange(NUM_CLASSES), 30)
    prior = trained.prior_distribution()
    z = prior.sample(len(labels), seed=[1, 2]).numpy()
    other = prior.sample(len(labels), seed=[3, 4]).numpy()
    generated = trained.decode(z, labels).mean()
    back = trained.encode(generated, labels).mean().numpy()
    distance = np.linalg.norm((back - z)[:, active], axis=1).mean()
    baseline = np.linalg.norm((other - z)[:, active], axis=1).mean()
    ratio = distance / baseline
    print(f"style transfer keeps z: ratio {ratio:.3f} over {active.sum()} active dimensions")
    assert ratio <= 0.5, f"mean distance {distance:.3f} vs prior pairs {baseline:.3f}: ratio {ratio:.3f}"

    # transfer_style with N(0, I) for every class keeps z: encoding the result under the target
    # label gives back (about) the source's posterior mean.
    target = (validation_labels[:50] + 3) % NUM_CLASSES
    transferred = trained.transfer_style(validation_images[:50], validation_labels[:50], target)
    source_z = trained.encode(validation_images[:50], validation_labels[:50]).mean().numpy()
    target_z = trained.encode(transferred, target).mean().numpy()
    assert np.linalg.norm((target_z - source_z)[:, active], axis=1).mean() < baseline / 2


# ---------------------------------------------------------------------- the API
def test_builders_feed_the_labels_to_both_parts():
    encoder = tfvae.build_conv_encoder((8, 8, 1), 3, filters=(4,), num_classes=5)
    decoder = tfvae.build_conv_decoder(3, (8, 8, 1), filters=(4,), num_classes=5)
    assert [tuple(t.shape) for t in encoder.inputs] == [(None, 8, 8, 1), (None, 5)]
    assert [tuple(t.shape) for t in decoder.inputs] == [(None, 3), (None, 5)]
    vae = tfvae.ConditionalVAE(encoder, decoder, 5)
    assert vae.num_classes == 5 and vae.latent_dim == 3
    images = np.full((2, 8, 8, 1), 0.5, "float32")
    # The label changes the posterior and the decoded image.
    assert not np.allclose(vae.encode(images, [0, 0]).mean(), vae.encode(images, [1, 1]).mean())
    z = np.zeros((2, 3), "float32")
    assert not np.allclose(vae.decode(z, [0, 0]).mean(), vae.decode(z, [4, 4]).mean())


def test_integer_and_one_hot_labels_give_the_same_results(tiny, digits):
    _, (images, labels) = digits
    images, labels = images[:6], labels[:6]
    one_hot = np.eye(NUM_CLASSES, dtype="float32")[labels]
    np.testing.assert_array_equal(tiny.encode(images, labels).mean(), tiny.encode(images, one_hot).mean())
    np.testing.assert_array_equal(tiny.reconstruct(images, labels), tiny.reconstruct(images, one_hot))
    np.testing.assert_array_equal(tiny([images, labels]), tiny.reconstruct(images, labels))
    np.testing.assert_allclose(tiny.predict((images, labels), verbose=0), tiny.reconstruct(images, labels), atol=1e-6)
    np.testing.assert_array_equal(tiny.sample(6, labels=labels, seed=3), tiny.sample(6, labels=one_hot, seed=3))
    np.testing.assert_array_equal(tiny.sample(4, labels=7, seed=3), tiny.sample(4, labels=[7] * 4, seed=3))
    assert tiny.sample(4, labels=7).shape == (4, 8, 8, 1)


def test_samples_decode_draws_of_each_class_prior(tiny):
    labels = np.array([0, 3, 3, 9])
    seed = keras.random.randint((2,), 0, 2**31 - 1, dtype="int32", seed=keras.random.SeedGenerator(11))
    z = tiny.prior_distribution(labels).sample(seed=seed)
    np.testing.assert_allclose(tiny.sample(4, labels=labels, seed=11), tiny.decode(z, labels).mean(), atol=1e-6)


def test_learned_class_prior_is_a_gaussian_per_class(tiny):
    loc = tiny.prior.locs.numpy()
    scale = np.log1p(np.exp(tiny.prior.raw_scales.numpy())) + 1e-5
    labels = np.array([2, 5, 5])
    z = np.random.default_rng(1).normal(size=(4, 3, 2)).astype("float32")
    expected = stats.norm(loc[labels], scale[labels]).logpdf(z).sum(-1)
    np.testing.assert_allclose(tiny.prior_distribution(labels).log_prob(z), expected, rtol=1e-5)
    assert tiny.prior_distribution().batch_shape == (NUM_CLASSES,)


def test_transfer_style_maps_z_between_the_class_priors(tiny, digits):
    _, (images, labels) = digits
    images, labels = images[:5], labels[:5]
    target = np.array([1, 1, 8, 0, 4])
    loc = tiny.prior.locs.numpy()
    scale = np.log1p(np.exp(tiny.prior.raw_scales.numpy())) + 1e-5
    z = tiny.encode(images, labels).mean().numpy()
    mapped = loc[target] + scale[target] * (z - loc[labels]) / scale[labels]
    np.testing.assert_allclose(
        tiny.transfer_style(images, labels, target), tiny.decode(mapped, target).mean(), atol=1e-5
    )
    # Onto its own class, a transfer is the reconstruction.
    np.testing.assert_allclose(tiny.transfer_style(images, labels, labels), tiny.reconstruct(images, labels), atol=1e-5)


def test_fit_and_evaluate_take_arrays_or_datasets_of_pairs(digits):
    (images, labels), (validation_images, validation_labels) = digits
    dataset = tf.data.Dataset.from_tensor_slices((images[:128], labels[:128])).batch(32)
    vae = _tiny(class_prior="standard_normal", seed=2)
    vae.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = vae.fit(dataset, epochs=2, verbose=0, validation_data=(validation_images[:64], validation_labels[:64]))
    assert sorted(history.history) == [
        "beta", "elbo", "kl", "loss", "reconstruction", "val_elbo", "val_kl", "val_loss", "val_reconstruction",
    ]
    assert history.history["loss"][-1] < history.history["loss"][0]
    one_hot = tf.data.Dataset.from_tensor_slices(
        (validation_images[:64], np.eye(NUM_CLASSES)[validation_labels[:64]])
    ).batch(32)
    scores = vae.evaluate(one_hot, verbose=0, return_dict=True)
    assert np.isfinite(scores["elbo"]) and scores["elbo"] < 0


def test_importance_weighted_nll_and_the_marginal(tiny, digits):
    _, (images, labels) = digits
    images, labels = images[:12], labels[:12]
    nll = tiny.importance_weighted_nll(images, labels, num_samples=20, batch_size=12)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(12)
    np.testing.assert_allclose(tiny.importance_weighted_nll(dataset, num_samples=20), nll, rtol=1e-6)
    assert nll.shape == (12,) and np.all(np.isfinite(nll))
    # By hand: log w_k = log p(x|z_k, y) + log p(z_k|y) - log q(z_k|x, y) with the estimate's
    # noise (one batch, one chunk: the stateless seed [seed, 0]).
    noise = tf.random.stateless_normal([20, 12, 2], seed=tf.constant([0, 0], tf.int64))
    posterior = tiny.encode(images, labels)
    z = posterior.mean() + posterior.stddev() * noise
    log_likelihood = tf.reshape(
        tiny.decode(tf.reshape(z, [-1, 2]), np.tile(labels, 20)).log_prob(np.tile(images, (20, 1, 1, 1))), [20, 12]
    )
    log_weights = log_likelihood + tiny.prior_distribution(labels).log_prob(z) - posterior.log_prob(z)
    expected = -(tf.reduce_logsumexp(log_weights, axis=0).numpy() - np.log(20))
    np.testing.assert_allclose(nll, expected, rtol=1e-5)
    # Under other labels, another estimate.
    assert not np.allclose(tiny.importance_weighted_nll(images, (labels + 5) % NUM_CLASSES, num_samples=20), nll)

    probabilities = np.bincount(labels, minlength=NUM_CLASSES) + 1.0
    probabilities /= probabilities.sum()
    marginal = tiny.marginal_nll(images, probabilities, num_samples=20, batch_size=12)
    per_class = np.stack([
        tiny.importance_weighted_nll(images, np.full(12, y), num_samples=20, batch_size=12)
        for y in range(NUM_CLASSES)
    ])
    expected = -np.logaddexp.reduce(np.log(probabilities)[:, None] - per_class, axis=0)
    np.testing.assert_allclose(marginal, expected, rtol=1e-6)
    # -log sum_y p(y) p(x|y) <= -log p(x|y_true) - log p(y_true), exactly (the same seed).
    assert np.all(marginal <= nll - np.log(probabilities[labels]) + 1e-9)


def test_collapse_diagnostics_are_given_the_labels(tiny, digits):
    import tensorflow_probability as tfp  # noqa: PLC0415

    from tfvae.diagnostics import posterior_diagnostics  # noqa: PLC0415

    _, (images, labels) = digits
    images, labels = images[:64], labels[:64]
    report = posterior_diagnostics(tiny, images, labels=labels, batch_size=32)
    expected_kl = tfp.distributions.kl_divergence(tiny.encode(images, labels), tiny.prior_distribution(labels))
    np.testing.assert_allclose(report["kl"], float(np.mean(expected_kl)), rtol=1e-4)
    assert len(report["kl_per_dimension"]) == 2
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(32)
    np.testing.assert_allclose(posterior_diagnostics(tiny, dataset)["kl"], report["kl"], rtol=1e-5)
    with pytest.raises(ValueError, match="labels=None"):
        posterior_diagnostics(tiny, images)
    plain = tfvae.build_conv_vae((8, 8, 1), latent_dim=2, filters=(4,), seed=0)
    with pytest.raises(ValueError, match="Expected no labels"):
        posterior_diagnostics(plain, images, labels=labels)
    assert posterior_diagnostics(plain, dataset)["num_examples"] == 64  # the labels are ignored


# ---------------------------------------------------------------------- bad labels, refusals
BAD_LABELS = {
    "float ids": (np.array([1.0, 2.0, 3.0]), "cast class ids"),
    "negative id": (np.array([0, -1, 2]), r"in \[0, 10\)"),
    "id = num_classes": (np.array([0, 10, 2]), r"in \[0, 10\)"),
    "too many columns": (np.eye(11)[:3], "one-hot rows of shape"),
    "rank 3": (np.zeros((3, 10, 1), "int64"), "one-hot rows of shape"),
    "not one-hot": (np.full((3, 10), 0.1), "one-hot rows"),
    "wrong count": (np.array([1, 2]), "one label per image"),
    "strings": (np.array(["a", "b", "c"]), "class ids"),
}


@pytest.mark.parametrize("case", sorted(BAD_LABELS))
def test_bad_labels_are_a_clear_error_everywhere(tiny, case):
    labels, message = BAD_LABELS[case]
    images = np.full((3, 8, 8, 1), 0.5, "float32")
    calls = {
        "encode": lambda: tiny.encode(images, labels),
        "decode": lambda: tiny.decode(np.zeros((3, 2), "float32"), labels),
        "reconstruct": lambda: tiny.reconstruct(images, labels),
        "sample": lambda: tiny.sample(3, labels=labels),
        "transfer_style": lambda: tiny.transfer_style(images, labels, 0),
        "importance_weighted_nll": lambda: tiny.importance_weighted_nll(images, labels, num_samples=2),
        "fit": lambda: tiny.fit(images, labels, verbose=0),
        "evaluate": lambda: tiny.evaluate(images, labels, verbose=0),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=message) as raised:
            call()
        assert "Expected" in str(raised.value) and "Received" in str(raised.value), name


def test_bad_labels_in_a_dataset_are_refused_before_training(tiny):
    images = np.full((4, 8, 8, 1), 0.5, "float32")
    for labels, message in ((np.array([0.0, 1, 2, 3]), "cast class ids"), (np.array([0, 1, 2, 12]), r"in \[0, 10\)")):
        with pytest.raises(ValueError, match=message):
            tiny.fit(tf.data.Dataset.from_tensor_slices((images, labels)).batch(4), verbose=0)
    with pytest.raises(ValueError, match=r"yield \(images, labels\)"):
        tiny.fit(tf.data.Dataset.from_tensor_slices(images).batch(4), verbose=0)
    with pytest.raises(ValueError, match="validation_data"):
        tiny.fit(images, np.arange(4), validation_data=(images, np.arange(4) + 9), verbose=0)


def test_a_conditional_model_without_labels_is_a_value_error(tiny):
    images = np.full((2, 8, 8, 1), 0.5, "float32")
    for call in (
        lambda: tiny.encode(images),
        lambda: tiny.decode(np.zeros((2, 2), "float32")),
        lambda: tiny.reconstruct(images),
        lambda: tiny.sample(2),
        lambda: tiny(images),
        lambda: tiny.importance_weighted_nll(images, num_samples=2),
    ):
        with pytest.raises(ValueError, match="Expected .*labels.*Received"):
            call()
    with pytest.raises(ValueError, match="y=None"):
        tiny.fit(images, verbose=0)
    with pytest.raises(ValueError, match="y=None"):
        tiny.evaluate(images, verbose=0)


def test_unconditional_models_refuse_labels_and_ignore_extra_tuple_elements(digits):
    (images, labels), _ = digits
    vae = tfvae.build_conv_vae((8, 8, 1), latent_dim=2, filters=(4,), seed=0)
    x = images[:4]
    for call in (
        lambda: vae.encode(x, labels=labels[:4]),
        lambda: vae.decode(np.zeros((4, 2), "float32"), labels=labels[:4]),
        lambda: vae.sample(4, labels=3),
        lambda: vae.reconstruct(x, labels=labels[:4]),
    ):
        with pytest.raises(ValueError, match="Expected no labels .*ConditionalVAE.*Received"):
            call()
    vae.compile()
    history = vae.fit(tf.data.Dataset.from_tensor_slices((images[:64], labels[:64])).batch(32), verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert np.all(np.isfinite(vae.evaluate(tf.data.Dataset.from_tensor_slices((images[:64], labels[:64])).batch(32), verbose=0)))


def test_parts_and_settings_are_checked_at_construction():
    encoder = tfvae.build_conv_encoder((8, 8, 1), 2, filters=(4,), num_classes=3)
    decoder = tfvae.build_conv_decoder(2, (8, 8, 1), filters=(4,), num_classes=3)
    plain_encoder = tfvae.build_conv_encoder((8, 8, 1), 2, filters=(4,))
    plain_decoder = tfvae.build_conv_decoder(2, (8, 8, 1), filters=(4,))
    cases = [
        (lambda: tfvae.ConditionalVAE(plain_encoder, decoder, 3), r"encoder taking \[images, labels\]"),
        (lambda: tfvae.ConditionalVAE(encoder, plain_decoder, 3), r"decoder taking \[z, labels\]"),
        (lambda: tfvae.ConditionalVAE(encoder, decoder, 4), r"\(None, 4\)"),
        (lambda: tfvae.ConditionalVAE(encoder, decoder, 1), "num_classes to be an integer >= 2"),
        (lambda: tfvae.ConditionalVAE(encoder, decoder, 3, class_prior="vamp"), "class_prior in"),
        (lambda: tfvae.ConditionalVAE(encoder, decoder, 3, prior="mixture", class_prior="learned"),
         "class_prior='learned' with the default prior"),
        (lambda: tfvae.ConditionalVAE(encoder, decoder, 3, prior="vamp"), "pseudo-inputs"),
        (lambda: tfvae.ConditionalVAE(encoder, decoder, 3, prior=ClassGaussianPrior(4)), "3 classes"),
        (lambda: tfvae.VAE(plain_encoder, plain_decoder, prior=ClassGaussianPrior(3)), "ConditionalVAE"),
        (lambda: tfvae.build_conv_vae((8, 8, 1), 2, class_prior="learned"), "only with num_classes"),
        (lambda: tfvae.build_conv_vae((8, 8, 1), 2, num_classes=1.5), "num_classes"),
    ]
    for build, message in cases:
        with pytest.raises(ValueError, match=message):
            build()


def test_a_users_own_encoder_and_decoder_pair(digits):
    (images, labels), _ = digits
    image_input, label_input = keras.Input((8, 8, 1)), keras.Input((3,))
    features = keras.layers.Concatenate()([keras.layers.Flatten()(image_input), label_input])
    encoder = keras.Model([image_input, label_input], keras.layers.Dense(4)(features))
    z_input, label_input = keras.Input((2,)), keras.Input((3,))
    hidden = keras.layers.Dense(64)(keras.layers.Concatenate()([z_input, label_input]))
    decoder = keras.Model([z_input, label_input], keras.layers.Reshape((8, 8, 1))(hidden))
    vae = tfvae.ConditionalVAE(encoder, decoder, num_classes=3, seed=0)
    assert vae.latent_dim == 2
    vae.compile(optimizer=keras.optimizers.Adam(1e-2))
    chosen = labels < 3
    history = vae.fit(images[chosen][:96], labels[chosen][:96], epochs=2, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert vae.sample(3, labels=[0, 1, 2], seed=0).shape == (3, 8, 8, 1)


# ---------------------------------------------------------------------- saving and export
def test_keras_round_trip_continues_training_identically(tiny, digits, tmp_path):
    (images, labels), _ = digits
    path = tmp_path / "conditional.keras"
    tiny.save(path)
    restored = keras.models.load_model(path)
    assert type(restored) is tfvae.ConditionalVAE and restored.num_classes == NUM_CLASSES
    assert isinstance(restored.prior, ClassGaussianPrior)
    assert restored.get_config()["class_prior"] == "learned"
    x, y = images[:8], labels[:8]
    np.testing.assert_array_equal(restored.encode(x, y).mean(), tiny.encode(x, y).mean())
    np.testing.assert_array_equal(restored.sample(4, labels=2, seed=0), tiny.sample(4, labels=2, seed=0))
    np.testing.assert_array_equal(
        restored.prior_distribution(y).log_prob(np.zeros((8, 2), "float32")),
        tiny.prior_distribution(y).log_prob(np.zeros((8, 2), "float32")),
    )
    # One more epoch of each, from the same state (weights, optimizer, noise generator).
    clone = keras.models.load_model(path)
    clone.fit(images[256:320], labels[256:320], batch_size=32, shuffle=False, verbose=0)
    restored.fit(images[256:320], labels[256:320], batch_size=32, shuffle=False, verbose=0)
    for left, right in zip(clone.weights, restored.weights, strict=True):
        np.testing.assert_array_equal(left.numpy(), right.numpy())
    assert not np.array_equal(restored.prior.locs.numpy(), tiny.prior.locs.numpy())


def test_config_round_trip():
    vae = _tiny(class_prior="learned", beta=0.5)
    config = vae.get_config()
    assert config["num_classes"] == NUM_CLASSES and config["class_prior"] == "learned"
    clone = tfvae.ConditionalVAE.from_config(config)
    assert clone.get_config() == config
    assert isinstance(clone.prior, ClassGaussianPrior) and float(clone.beta) == 0.5
    standard = tfvae.ConditionalVAE.from_config(_tiny(class_prior="standard_normal").get_config())
    assert standard.get_config()["class_prior"] == "standard_normal"


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("conditional") / "export"
    tfvae.export_saved_model(tiny, path)
    return path


def test_exported_endpoints_take_labels_and_equal_the_keras_model(tiny, exported, digits):
    _, (images, labels) = digits
    images, labels = images[:6], labels[:6].astype("int32")
    loaded = tf.saved_model.load(str(exported))
    posterior = tiny.encode(images, labels)
    np.testing.assert_allclose(loaded.encode(images, labels)["loc"], posterior.mean(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loaded.encode(images, labels)["scale"], posterior.stddev(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loaded.reconstruct(images, labels)["images"], tiny.reconstruct(images, labels), atol=1e-6)
    z = posterior.mean()
    np.testing.assert_allclose(loaded.decode(z, labels)["images"], tiny.decode(z, labels).mean(), atol=1e-6)
    samples = loaded.sample(tf.constant(6), tf.constant(5, tf.int64), labels)["images"]
    expected_z = tiny.prior_distribution(labels).sample(seed=export.stateless_seed(5))
    np.testing.assert_allclose(samples, tiny.decode(expected_z, labels).mean(), atol=1e-5)
    draws = loaded.posterior_sample(images, labels, tf.constant(3), tf.constant(7, tf.int64))
    np.testing.assert_allclose(
        loaded.prior_log_prob(draws["z"], labels)["log_prob"],
        tiny.prior_distribution(labels).log_prob(draws["z"]), rtol=1e-5,
    )
    flat_z = tf.reshape(draws["z"], [-1, 2])
    np.testing.assert_allclose(
        loaded.log_likelihood(images, draws["z"], labels)["log_likelihood"],
        tf.reshape(tiny.decode(flat_z, np.tile(labels, 3)).log_prob(np.tile(images, (3, 1, 1, 1))), [3, 6]),
        rtol=1e-5,
    )
    elbo = loaded.elbo(images, labels, tf.constant(9, tf.int64))
    noise = tf.random.stateless_normal([6, 2], seed=export.stateless_seed(9))
    original = tiny.draw_noise
    tiny.draw_noise = lambda shape: noise
    try:
        terms = tiny.compute_elbo_terms(images, labels=labels)
    finally:
        tiny.draw_noise = original
    np.testing.assert_allclose(elbo["elbo"], terms["elbo"], rtol=1e-5)
    # Another label, another score.
    assert not np.allclose(loaded.encode(images, (labels + 1) % 10)["loc"], posterior.mean())
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels < num_classes"):
        loaded.encode(images, labels + 10)

    for name, spec in export.CONDITIONAL_ENDPOINTS.items():
        signature = loaded.signatures[name]
        assert set(signature.structured_input_signature[1]) == set(spec["inputs"]), name
        assert set(signature.structured_outputs) == set(spec["outputs"]), name
    assert set(loaded.signatures["serving_default"].structured_input_signature[1]) == {"images", "labels"}

    metadata = export.read_metadata(exported)
    assert metadata["conditional"] is True and metadata["num_classes"] == NUM_CLASSES
    assert metadata["endpoints"]["sample"]["inputs"] == ["num_samples", "seed", "labels"]
    assert metadata["prior"] == "ClassGaussianPrior" and metadata["prior_settings"] == {"num_classes": 10}


_TF_ONLY_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["tensorflow_probability"] = None  # any import of them now fails
    sys.modules["tfvae"] = None
    import json
    import numpy as np
    import tensorflow as tf

    path, images_file, labels_file = sys.argv[1:]
    images, labels = np.load(images_file), np.load(labels_file)
    model = tf.saved_model.load(path)
    seed = tf.constant(9, tf.int64)
    results = {
        "loc": model.encode(images, labels)["loc"],
        "reconstruct": model.reconstruct(images, labels)["images"],
        "sample": model.sample(tf.constant(len(labels)), seed, labels)["images"],
        "elbo": model.elbo(images, labels, seed)["elbo"],
    }
    out = {name: value.numpy().tolist() for name, value in results.items()}
    out["blocked"] = [name for name in ("tensorflow_probability", "tfvae") if sys.modules[name] is None]
    print("RESULTS" + json.dumps(out))
    """
)


@pytest.mark.slow
def test_export_loads_with_tensorflow_only(tiny, exported, digits, tmp_path):
    _, (images, labels) = digits
    images, labels = images[:5], labels[:5].astype("int32")
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "labels.npy", labels)
    completed = subprocess.run(
        [sys.executable, "-c", _TF_ONLY_SCRIPT, str(exported), str(tmp_path / "images.npy"),
         str(tmp_path / "labels.npy")],
        env=cli_environment(), cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(line for line in completed.stdout.splitlines() if line.startswith("RESULTS"))
    out = json.loads(line[len("RESULTS"):])
    assert out["blocked"] == ["tensorflow_probability", "tfvae"]
    np.testing.assert_allclose(out["loc"], tiny.encode(images, labels).mean(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["reconstruct"], tiny.reconstruct(images, labels), atol=1e-6)
    z = tiny.prior_distribution(labels).sample(seed=export.stateless_seed(9))
    np.testing.assert_allclose(out["sample"], tiny.decode(z, labels).mean(), atol=1e-5)
    assert np.all(np.isfinite(out["elbo"])) and math.isfinite(sum(out["elbo"]))


# ---------------------------------------------------------------------- tuner and tf.distribute
@pytest.mark.slow
def test_a_keras_tuner_search_over_conditional_models(digits, tmp_path):
    import keras_tuner  # noqa: PLC0415

    from tfvae.tuning import VAEHyperModel  # noqa: PLC0415

    (images, labels), (validation_images, validation_labels) = digits
    hypermodel = VAEHyperModel(
        (8, 8, 1), latent_dims=(2,), filters=((4,),), num_classes=NUM_CLASSES,
        class_prior=("standard_normal", "learned"), learning_rates=(1e-2,),
    )
    tuner = keras_tuner.GridSearch(
        hypermodel, objective="val_loss", max_trials=2, directory=tmp_path, project_name="conditional"
    )
    tuner.search(
        images[:256], labels[:256], validation_data=(validation_images[:64], validation_labels[:64]),
        epochs=1, batch_size=64, verbose=0,
    )
    trials = tuner.oracle.get_best_trials(2)
    assert sorted(trial.hyperparameters.get("class_prior") for trial in trials) == ["learned", "standard_normal"]
    best = tuner.get_best_models(1)[0]
    assert isinstance(best, tfvae.ConditionalVAE)
    assert best.sample(2, labels=[3, 4], seed=0).shape == (2, 8, 8, 1)
    with pytest.raises(ValueError, match="only with num_classes"):
        VAEHyperModel((8, 8, 1), latent_dims=(2,), filters=((4,),), class_prior="learned")


@pytest.mark.slow
def test_one_step_under_two_replicas_equals_one_device(two_replica_results):
    # 7 examples of 3 classes over 2 replicas ([4, 3]); the class prior's tables are trained too.
    result = two_replica_result(two_replica_results, "conditional")
    assert result["replica_batch_sizes"] == [4, 3]
    assert {"locs", "raw_scales"} <= {name.split(":")[1] for name in result["weight_changes"]}
    assert_one_step_equals_one_device(result)
