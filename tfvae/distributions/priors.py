"""Priors p(z) over the latent vector: TensorFlow Probability distributions from Keras layers.

A learned prior is a subclass of `Prior` whose weights are tracked like any other layer's,
registered for serialization here and named in `PRIORS`.
"""

from __future__ import annotations

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfvae.distributions._common import DISTRIBUTION_DTYPE, resolve

tfd = tfp.distributions


class Prior(keras.layers.Layer):
    """Base class of the prior p(z) over a latent vector of size `latent_dim`.

    A learned prior (a mixture, a VampPrior, a flow) is a subclass that creates its weights in
    `build((latent_dim,))` and returns them inside `distribution`.
    """

    def distribution(self, latent_dim: int) -> tfd.Distribution:
        """Returns p(z) with batch shape `[]` and event shape `[latent_dim]`."""
        raise NotImplementedError

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="tfvae")
class StandardNormalPrior(Prior):
    """p(z) = N(0, I), the prior of Kingma & Welling (2014)."""

    def build(self, input_shape):
        pass

    def distribution(self, latent_dim):
        return tfd.MultivariateNormalDiag(
            loc=tf.zeros([latent_dim], DISTRIBUTION_DTYPE),
            scale_diag=tf.ones([latent_dim], DISTRIBUTION_DTYPE),
        )


PRIORS = {"standard_normal": StandardNormalPrior}


def get_prior(identifier) -> Prior:
    """Returns a Prior from a name ('standard_normal'), an instance or a config.

    Raises:
        ValueError: the name is unknown or the object is not a Prior.
    """
    return resolve(identifier, PRIORS, Prior, "prior")
