"""tfvae.VAE: the training step's numbers, learning, shapes, saving, seeds and bad input."""

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import cli_environment

import tfvae
from tfvae.models import VAE, build_conv_decoder, build_conv_encoder, build_conv_vae


class FixedNoiseVAE(VAE):
    """A VAE whose posterior noise is a fixed array, so a step can be computed by hand."""

    fixed_noise = None

    def draw_noise(self, shape):
        return tf.constant(self.fixed_noise)


def _softplus(v):
    return np.logaddexp(0.0, v)


def test_train_step_loss_equals_hand_computed_negative_elbo(digits):
    (images, _), _ = digits
    x = images[:16]
    encoder = build_conv_encoder((8, 8, 1), 3, filters=(4, 8))
    decoder = build_conv_decoder(3, (8, 8, 1), filters=(8, 4))
    vae = FixedNoiseVAE(encoder, decoder, beta=0.7)
    vae.fixed_noise = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    vae.compile(optimizer=keras.optimizers.SGD(0.01))
    vae.optimizer.build(vae.trainable_variables)

    loc, raw = (t.numpy() for t in encoder(x))
    scale = _softplus(raw) + 1e-5
    z = loc + scale * vae.fixed_noise
    logits = decoder(z).numpy()
    log_px = (x * -np.logaddexp(0, -logits) + (1 - x) * -np.logaddexp(0, logits)).sum(axis=(1, 2, 3))
    kl = 0.5 * (scale**2 + loc**2 - 1 - 2 * np.log(scale)).sum(axis=1)

    logs = vae.train_step((tf.constant(x),))
    np.testing.assert_allclose(float(logs["loss"]), np.mean(-(log_px - 0.7 * kl)), rtol=1e-5)
    np.testing.assert_allclose(float(logs["elbo"]), np.mean(log_px - kl), rtol=1e-5)
    np.testing.assert_allclose(float(logs["reconstruction"]), np.mean(-log_px), rtol=1e-5)
    np.testing.assert_allclose(float(logs["kl"]), np.mean(kl), rtol=1e-5)
    # The step moved the weights (SGD with a nonzero gradient).
    assert not np.allclose(encoder(x)[0].numpy(), loc)


@pytest.mark.slow
def test_validation_elbo_improves_far_beyond_initialization(digits):
    (train_images, _), (val_images, _) = digits
    keras.utils.set_random_seed(1)
    vae = build_conv_vae((8, 8, 1), latent_dim=8)
    vae.compile(optimizer=keras.optimizers.Adam(1e-3))
    initial = vae.evaluate(val_images, verbose=0, return_dict=True)
    history = vae.fit(train_images, validation_data=val_images, epochs=15, batch_size=64, verbose=0)
    final_elbo = history.history["val_elbo"][-1]
    # At initialization every pixel is a coin flip: about 64 * log 2 = 44 nats of reconstruction.
    assert initial["elbo"] < -40
    # A stated margin: a trained model is at least 15 nats per image better.
    assert final_elbo > initial["elbo"] + 15, (initial, history.history["val_elbo"])
    assert history.history["val_loss"][-1] < history.history["val_loss"][0]


@pytest.mark.parametrize("image_shape", [(28, 28, 1), (32, 32, 3), (64, 64, 3)])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_fit_and_methods_for_each_shape_and_likelihood(image_shape, likelihood):
    vae = build_conv_vae(image_shape, latent_dim=4, filters=(4, 8), likelihood=likelihood, seed=3)
    vae.compile()
    x = np.random.default_rng(0).uniform(size=(8, *image_shape)).astype("float32")
    history = vae.fit(x, epochs=1, batch_size=4, verbose=0)
    assert sorted(history.history) == ["beta", "elbo", "kl", "loss", "reconstruction"]
    assert np.isfinite(history.history["loss"][0])
    assert vae.predict(x, verbose=0).shape == x.shape
    assert vae.reconstruct(x[:2]).shape == (2, *image_shape)
    assert vae.reconstruct(x[:2], sample_latent=True).shape == (2, *image_shape)
    assert vae.sample(3).shape == (3, *image_shape)
    posterior = vae.encode(x[:5])
    assert posterior.batch_shape == (5,) and posterior.event_shape == (4,)
    likelihood_distribution = vae.decode(posterior.mean())
    assert likelihood_distribution.batch_shape == (5,)
    assert likelihood_distribution.event_shape == image_shape


def test_fit_with_dataset_validation_split_callbacks_and_sample_weights(digits):
    (images, _), _ = digits
    vae = build_conv_vae((8, 8, 1), latent_dim=2, filters=(4,), seed=0)
    vae.compile()
    dataset = tf.data.Dataset.from_tensor_slices(images[:128]).batch(32)
    seen = []
    callback = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(logs["elbo"]))
    history = vae.fit(dataset, validation_data=dataset, epochs=2, callbacks=[callback], verbose=0)
    assert len(seen) == 2 and "val_elbo" in history.history
    history = vae.fit(images[:128], validation_split=0.25, epochs=1, verbose=0)
    assert "val_kl" in history.history


def test_sample_weights_weight_the_loss_as_keras_losses_do(digits):
    (images, _), _ = digits
    x = images[:8]
    vae = FixedNoiseVAE(build_conv_encoder((8, 8, 1), 2, filters=(4,)), build_conv_decoder(2, (8, 8, 1), filters=(4,)))
    vae.fixed_noise = np.zeros((8, 2), "float32")
    vae.compile()
    per_example = -vae.compute_elbo_terms(x)["objective"].numpy()
    weights = np.array([1, 1, 1, 1, 0, 0, 0, 0], "float32")
    logs = vae.evaluate(x, np.zeros(8), sample_weight=weights, batch_size=8, verbose=0, return_dict=True)
    # "sum over batch size", like Keras's losses; the metrics are weighted means.
    np.testing.assert_allclose(logs["loss"], (per_example * weights).sum() / 8, rtol=1e-5)
    np.testing.assert_allclose(logs["elbo"], -per_example[:4].mean(), rtol=1e-5)


def test_sample_is_reproducible_with_a_seed():
    vae = build_conv_vae((8, 8, 1), latent_dim=2, filters=(4,), seed=0)
    np.testing.assert_array_equal(vae.sample(4, seed=7), vae.sample(4, seed=7))
    assert not np.allclose(vae.sample(4, seed=7), vae.sample(4, seed=8))
    assert not np.allclose(vae.sample(4), vae.sample(4))  # the generator advances
    with pytest.raises(ValueError, match="num_samples to be an integer >= 1. Received: 0"):
        vae.sample(0)


def _losses_of_a_seeded_run(images):
    keras.utils.set_random_seed(123)
    vae = build_conv_vae((8, 8, 1), latent_dim=3, filters=(4, 8))
    vae.compile()
    return vae.fit(images, epochs=2, batch_size=32, verbose=0).history


def test_same_global_seed_gives_identical_losses(digits):
    (images, _), _ = digits
    first = _losses_of_a_seeded_run(images[:256])
    second = _losses_of_a_seeded_run(images[:256])
    assert first == second
    keras.utils.set_random_seed(124)
    other = build_conv_vae((8, 8, 1), latent_dim=3, filters=(4, 8))
    other.compile()
    assert other.fit(images[:256], epochs=2, batch_size=32, verbose=0).history != first


def test_keras_round_trip_keeps_outputs_and_the_custom_train_step(tmp_path, digits):
    (images, _), _ = digits
    vae = build_conv_vae((8, 8, 1), latent_dim=4, filters=(8,), likelihood="gaussian", beta=0.5, seed=5)
    vae.compile(optimizer=keras.optimizers.Adam(2e-3))
    vae.fit(images[:256], epochs=2, batch_size=64, verbose=0)
    path = tmp_path / "vae.keras"
    vae.save(path)
    restored = keras.models.load_model(path)
    assert type(restored) is VAE
    assert restored.latent_dim == 4 and restored.image_shape == (8, 8, 1) and float(restored.beta) == 0.5
    x = images[:10]
    np.testing.assert_array_equal(restored.encode(x).mean(), vae.encode(x).mean())
    np.testing.assert_array_equal(restored.encode(x).stddev(), vae.encode(x).stddev())
    z = vae.encode(x).mean()
    np.testing.assert_array_equal(restored.decode(z).mean(), vae.decode(z).mean())
    np.testing.assert_array_equal(restored.likelihood.scale, vae.likelihood.scale)
    assert restored.optimizer.iterations.numpy() == vae.optimizer.iterations.numpy()
    history = restored.fit(images[:512], epochs=3, batch_size=64, verbose=0).history
    # Our train_step, not Keras's default (which would need a compiled loss): ELBO metrics, falling loss.
    assert sorted(history) == ["beta", "elbo", "kl", "loss", "reconstruction"]
    assert history["loss"][-1] < history["loss"][0]


def test_config_round_trip():
    vae = build_conv_vae((16, 16, 3), latent_dim=5, likelihood="gaussian", beta=2.0, seed=9)
    config = vae.get_config()
    clone = VAE.from_config(config)
    assert clone.get_config() == config
    assert clone.latent_dim == 5 and clone.seed == 9 and float(clone.beta) == 2.0


def test_user_encoder_with_a_single_output_and_sequential_decoder():
    encoder = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(6)], name="flat_encoder"
    )
    decoder = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(64), keras.layers.Reshape((8, 8, 1))], name="flat_decoder"
    )
    vae = VAE(encoder, decoder)
    assert vae.latent_dim == 3
    vae.compile()
    x = np.random.default_rng(0).uniform(size=(16, 8, 8, 1)).astype("float32")
    assert np.isfinite(vae.fit(x, verbose=0).history["loss"][0])


def test_mismatched_parts_are_clear_errors():
    encoder = build_conv_encoder((8, 8, 1), 3, filters=(4,))
    with pytest.raises(ValueError, match=r"decoder to map z of shape \(None, 3\).*Received: decoder output shape \(None, 16, 16, 1\)"):
        VAE(encoder, build_conv_decoder(3, (16, 16, 1), filters=(4,)))
    with pytest.raises(ValueError, match=r"Expected the decoder to be a keras.Model"):
        VAE(encoder, "decoder")
    odd = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(5)])
    with pytest.raises(ValueError, match=r"\(batch, 2 \* latent_dim\).*Received: \(None, 5\)"):
        VAE(odd, build_conv_decoder(3, (8, 8, 1), filters=(4,)))
    with pytest.raises(ValueError, match="Unknown likelihood 'laplace'"):
        build_conv_vae((8, 8, 1), 2, filters=(4,), likelihood="laplace")
    with pytest.raises(ValueError, match="Unknown prior 'flow'"):
        build_conv_vae((8, 8, 1), 2, filters=(4,), prior="flow")
    with pytest.raises(ValueError, match=r"beta to be a finite number >= 0. Received: beta=-1"):
        build_conv_vae((8, 8, 1), 2, filters=(4,), beta=-1)
    with pytest.raises(ValueError, match=r"latent_dim to be an integer >= 1. Received: latent_dim=0"):
        build_conv_vae((8, 8, 1), 0, filters=(4,))


class CountingVAE(VAE):
    steps = 0

    def train_step(self, data):
        CountingVAE.steps += 1
        return super().train_step(data)


@pytest.mark.parametrize(
    "data, message",
    [
        (np.zeros((4, 8, 8), "float32"), r"shape \(batch, 8, 8, 1\).*Received: shape \(4, 8, 8\)"),
        (np.zeros((4, 16, 16, 1), "float32"), r"Received: shape \(4, 16, 16, 1\)"),
        (np.zeros((4, 8, 8, 1), "uint8"), r"float array.*Received: dtype uint8"),
        (np.full((4, 8, 8, 1), 255.0, "float32"), r"expects data in \[0, 1\].*Received: data in \[255, 255\]"),
        (np.full((4, 8, 8, 1), np.nan, "float32"), r"finite values"),
        (
            tf.data.Dataset.from_tensor_slices({"image": np.zeros((4, 8, 8, 1), "float32")}).batch(2),
            r"dataset of dicts with keys \['image'\]",
        ),
        (tf.data.Dataset.from_tensor_slices(np.zeros((4, 8, 8, 1), "int32")).batch(2), r"Received: dtype int32"),
        (tf.data.Dataset.from_tensor_slices(np.full((4, 8, 8, 1), -1.0, "float32")).batch(2), r"Received: data in \[-1, -1\]"),
        # A NumPy dict, as Keras accepts for models with named inputs: refused, not a TypeError mid-step.
        ({"image": np.zeros((4, 8, 8, 1), "float32")}, r"Received a dict with keys \['image'\].*x\['image'\]"),
        ((({"image": np.zeros((4, 8, 8, 1), "float32")}, None)), r"Received a dict with keys \['image'\]"),
        (np.zeros((0, 8, 8, 1), "float32"), r"at least one image.*Received an empty array of shape \(0, 8, 8, 1\)"),
        (tf.data.Dataset.from_tensor_slices(np.zeros((0, 8, 8, 1), "float32")).batch(2), r"at least one image.*Received an empty dataset"),
        (
            tf.data.Dataset.from_tensor_slices(np.zeros((4, 8, 8, 1), "float32")).filter(lambda x: False).batch(2),
            r"at least one image.*Received a dataset that yields nothing",
        ),
    ],
)
def test_bad_data_is_a_value_error_before_any_training_step(data, message):
    encoder = build_conv_encoder((8, 8, 1), 2, filters=(4,))
    vae = CountingVAE(encoder, build_conv_decoder(2, (8, 8, 1), filters=(4,)))
    vae.compile()
    CountingVAE.steps = 0
    with pytest.raises(ValueError, match=message):
        vae.fit(data, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=message.replace("Received", "Received")):
        vae.fit(np.zeros((4, 8, 8, 1), "float32"), validation_data=data, epochs=1, verbose=0)
    assert CountingVAE.steps == 0
    with pytest.raises(ValueError, match=message):
        vae.evaluate(data, verbose=0)


def test_compile_refuses_a_loss():
    vae = build_conv_vae((8, 8, 1), 2, filters=(4,))
    with pytest.raises(ValueError, match=r"computes its own loss.*Received: loss='mse'"):
        vae.compile(loss="mse")


def test_beta_is_a_variable_callbacks_can_anneal(digits):
    (images, _), _ = digits
    vae = build_conv_vae((8, 8, 1), 2, filters=(4,), beta=0.0)
    # The README's promise: `vae.beta` is a non-trainable variable (`beta_variable` is an alias).
    assert isinstance(vae.beta, keras.Variable) and not vae.beta.trainable
    assert vae.beta is vae.beta_variable and any(w is vae.beta for w in vae.non_trainable_weights)
    assert float(vae.beta) == 0.0
    vae.compile()
    seen = []

    class Anneal(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                self.model.beta.assign(1.0)
            elif epoch == 2:
                self.model.beta = 0.5  # the checking setter

        def on_epoch_end(self, epoch, logs=None):
            seen.append((logs["loss"], logs["reconstruction"], logs["kl"]))

    vae.fit(images[:128], epochs=3, batch_size=128, callbacks=[Anneal()], verbose=0)
    (loss0, rec0, _), (loss1, rec1, kl1), (loss2, rec2, kl2) = seen
    np.testing.assert_allclose(loss0, rec0, rtol=1e-5)  # beta = 0: loss is the reconstruction
    np.testing.assert_allclose(loss1, rec1 + kl1, rtol=1e-5)  # beta = 1 inside the compiled step
    np.testing.assert_allclose(loss2, rec2 + 0.5 * kl2, rtol=1e-5)
    assert float(vae.beta) == 0.5
    with pytest.raises(ValueError, match="beta to be a finite number >= 0"):
        vae.beta = -0.5
    assert float(vae.beta) == 0.5


def test_other_keras_backend_is_refused_at_first_use():
    # `import tfvae` is lazy (PEP 562): the check runs when a name that needs Keras is used.
    result = subprocess.run(
        [sys.executable, "-c", "import tfvae; print(tfvae.__version__, flush=True); tfvae.VAE"],
        env=cli_environment({"KERAS_BACKEND": "jax"}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert result.stdout.strip() == tfvae.__version__
    assert "ImportError: tfvae needs Keras on the TensorFlow backend" in result.stderr
    assert "Received: KERAS_BACKEND='jax'" in result.stderr


def test_public_api():
    assert tfvae.VAE is VAE
    assert callable(tfvae.build_conv_vae) and isinstance(tfvae.__version__, str)
    assert tfvae.distributions.BernoulliLikelihood and tfvae.objectives.elbo_terms
    assert callable(tfvae.export_saved_model) and callable(tfvae.build_conv_encoder)
    assert tfvae.models.VAE is VAE and callable(tfvae.export.read_metadata)
    assert set(tfvae.__all__) <= set(dir(tfvae))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        getattr(tfvae, "nope")  # noqa: B009
