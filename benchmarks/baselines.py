"""A minimal hand-written Keras 3 VAE with the keras.io example's architecture, for comparison.

This is what a user writes from the keras.io "Variational AutoEncoder" example (written here from
its description, not copied): Conv32-s2, Conv64-s2, Dense16 / Dense 7*7*64, ConvT64-s2, ConvT32-s2,
ConvT1; Bernoulli logits; a train_step of a few lines with the closed-form Gaussian KL.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfvae.models import VAE, build_conv_decoder, build_conv_encoder


def keras_io_encoder(latent_dim: int, image_shape=(28, 28, 1)) -> keras.Model:
    """The example's encoder: images -> [z_mean, z_log_var]."""
    return build_conv_encoder(image_shape, latent_dim, filters=(32, 64), hidden_units=16)


def keras_io_decoder(latent_dim: int, image_shape=(28, 28, 1)) -> keras.Model:
    """The example's decoder: z -> logits (no sigmoid: the loss takes logits)."""
    return build_conv_decoder(latent_dim, image_shape, filters=(64, 32))


class MinimalVAE(keras.Model):
    """The few-line train_step a user would write by hand; z_log_var parameterizes the scale."""

    def __init__(self, encoder, decoder, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")

    @property
    def metrics(self):
        return [self.loss_tracker]

    def train_step(self, data):
        with tf.GradientTape() as tape:
            z_mean, z_log_var = self.encoder(data, training=True)
            eps = keras.random.normal(tf.shape(z_mean), seed=self.seed_generator)
            z = z_mean + tf.exp(0.5 * z_log_var) * eps
            logits = self.decoder(z, training=True)
            reconstruction = tf.reduce_sum(
                tf.nn.sigmoid_cross_entropy_with_logits(labels=data, logits=logits), axis=(1, 2, 3)
            )
            kl = -0.5 * tf.reduce_sum(1 + z_log_var - tf.square(z_mean) - tf.exp(z_log_var), axis=1)
            loss = tf.reduce_mean(reconstruction + kl)
        gradients = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_weights, strict=True))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, data):
        z_mean, z_log_var = self.encoder(data, training=False)
        eps = keras.random.normal(tf.shape(z_mean), seed=self.seed_generator)
        logits = self.decoder(z_mean + tf.exp(0.5 * z_log_var) * eps, training=False)
        reconstruction = tf.reduce_sum(
            tf.nn.sigmoid_cross_entropy_with_logits(labels=data, logits=logits), axis=(1, 2, 3)
        )
        kl = -0.5 * tf.reduce_sum(1 + z_log_var - tf.square(z_mean) - tf.exp(z_log_var), axis=1)
        self.loss_tracker.update_state(tf.reduce_mean(reconstruction + kl))
        return {"loss": self.loss_tracker.result()}


def build_minimal_vae(latent_dim: int = 16, seed: int = 0) -> MinimalVAE:
    """The hand-written baseline, compiled with Adam(1e-3)."""
    model = MinimalVAE(keras_io_encoder(latent_dim), keras_io_decoder(latent_dim), seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


def build_tfvae_keras_io(latent_dim: int = 16, seed: int = 0, image_shape=(28, 28, 1),
                         learning_rate: float = 1e-3) -> VAE:
    """tfvae's VAE with exactly the same networks, compiled with Adam(learning_rate)."""
    model = VAE(keras_io_encoder(latent_dim, image_shape), keras_io_decoder(latent_dim, image_shape),
                likelihood="bernoulli", seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate))
    return model
