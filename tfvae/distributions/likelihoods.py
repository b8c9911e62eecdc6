"""Likelihoods p(x|z): decoder outputs in, TensorFlow Probability distributions out.

Each likelihood is a small Keras layer so that a learned parameter (the Gaussian's scale) is
tracked, saved and distributed like any other weight. A VAE only calls `Likelihood.distribution`
and `Likelihood.mean`; a new likelihood is a subclass of `Likelihood`, registered for
serialization here and named in `LIKELIHOODS`.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfvae.distributions._common import DISTRIBUTION_DTYPE, resolve

tfd = tfp.distributions


def _event_ndims(parameters) -> int:
    """Everything but the leading batch axis is one event (an image [H, W, C] is one draw)."""
    return len(parameters.shape) - 1


class Likelihood(keras.layers.Layer):
    """Base class of the decoder's output distribution p(x|z).

    The decoder produces `parameters` in the data's shape `[B, H, W, C]` (one parameter per
    pixel and channel); the likelihood turns them into a distribution whose batch shape is `[B]`
    and event shape `[H, W, C]`, so `log_prob(x)` is the per-example log-likelihood summed over
    pixels.

    Subclasses implement `distribution(parameters)` and `mean(parameters)`, and may override
    `check_data(x_min, x_max)` to reject data outside their support.
    """

    #: Human-readable support of the data, used in error messages.
    support_description = "any real values"

    def distribution(self, parameters) -> tfd.Distribution:
        """Returns p(x|z) for decoder outputs `parameters` of shape `[B, ...]`."""
        raise NotImplementedError

    def mean(self, parameters):
        """Returns E[x|z], shape `[B, ...]`, the image a decoder output stands for."""
        raise NotImplementedError

    def check_data(self, x_min: float, x_max: float) -> None:
        """Raises ValueError when data with this range cannot be scored. Default: anything."""

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="tfvae")
class BernoulliLikelihood(Likelihood):
    """Independent Bernoulli pixels parameterized by logits.

    For binarized images, and for gray images in [0, 1] read as pixel probabilities (as the
    Keras and TFP examples do): `log_prob` is then the negative sigmoid cross-entropy, computed
    from logits for numerical stability.
    """

    support_description = "values in [0, 1]"

    def distribution(self, parameters):
        logits = tf.cast(parameters, DISTRIBUTION_DTYPE)
        return tfd.Independent(
            tfd.Bernoulli(logits=logits, dtype=DISTRIBUTION_DTYPE),
            reinterpreted_batch_ndims=_event_ndims(logits),
        )

    def mean(self, parameters):
        return keras.ops.sigmoid(parameters)

    def check_data(self, x_min, x_max):
        if x_min < 0.0 or x_max > 1.0:
            raise ValueError(
                "The Bernoulli likelihood expects data in [0, 1] (binary, or gray levels read as "
                f"probabilities). Received: data in [{x_min:g}, {x_max:g}]. Scale the data to "
                "[0, 1] (for uint8 images: x / 255) or use likelihood='gaussian'."
            )


@keras.saving.register_keras_serializable(package="tfvae")
class GaussianLikelihood(Likelihood):
    """Independent Gaussian pixels: the decoder gives the mean, the scale is learned.

    One scale per channel is learned jointly with the networks (a calibrated decoder in the
    sense of Rybkin et al., 2021): fixing it would silently weight reconstruction against KL.
    The scale is `softplus(raw) + min_scale`, so it stays positive and gradients stay finite.

    Args:
        initial_scale: float. The scale before training. Must be > min_scale.
        min_scale: float. A floor that keeps the log-density bounded. Must be > 0.
    """

    support_description = "real values"

    def __init__(self, initial_scale: float = 1.0, min_scale: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        if not min_scale > 0:
            raise ValueError(f"Expected min_scale > 0. Received: min_scale={min_scale}")
        if not initial_scale > min_scale:
            raise ValueError(
                f"Expected initial_scale > min_scale={min_scale}. "
                f"Received: initial_scale={initial_scale}"
            )
        self.initial_scale = float(initial_scale)
        self.min_scale = float(min_scale)

    def build(self, input_shape):
        channels = input_shape[-1]
        # Inverse softplus, so that softplus(raw) + min_scale == initial_scale at the start.
        shifted = self.initial_scale - self.min_scale
        raw = float(np.log(np.expm1(shifted)))
        self.raw_scale = self.add_weight(
            name="raw_scale",
            shape=(channels,),
            initializer=keras.initializers.Constant(raw),
            trainable=True,
        )

    @property
    def scale(self):
        """The learned per-channel standard deviation, shape `[C]`."""
        return tf.nn.softplus(tf.cast(self.raw_scale, DISTRIBUTION_DTYPE)) + self.min_scale

    def distribution(self, parameters):
        loc = tf.cast(parameters, DISTRIBUTION_DTYPE)
        scale = tf.broadcast_to(self.scale, tf.shape(loc))
        return tfd.Independent(
            tfd.Normal(loc=loc, scale=scale), reinterpreted_batch_ndims=_event_ndims(loc)
        )

    def mean(self, parameters):
        return parameters

    def get_config(self):
        config = super().get_config()
        config.update(initial_scale=self.initial_scale, min_scale=self.min_scale)
        return config


LIKELIHOODS = {"bernoulli": BernoulliLikelihood, "gaussian": GaussianLikelihood}


def get_likelihood(identifier) -> Likelihood:
    """Returns a Likelihood from a name ('bernoulli', 'gaussian'), an instance or a config.

    Raises:
        ValueError: the name is unknown or the object is not a Likelihood.
    """
    return resolve(identifier, LIKELIHOODS, Likelihood, "likelihood")


def likelihood_name(likelihood: Likelihood) -> str | None:
    """The registry name of a built-in likelihood, or None for a user-defined one."""
    for name, cls in LIKELIHOODS.items():
        if type(likelihood) is cls:
            return name
    return None
