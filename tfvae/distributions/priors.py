"""Priors p(z) over the latent vector: TensorFlow Probability distributions from Keras layers.

A learned prior is a subclass of `Prior` whose weights are tracked like any other layer's,
registered for serialization here and named in `PRIORS`:

- `standard_normal`: N(0, I), no weights;
- `mixture`: a learned mixture of M diagonal Gaussians;
- `vamp`: the VampPrior of Tomczak & Welling (2018), a uniform mixture of the encoder's
  posteriors at K learned pseudo-inputs.

`ClassGaussianPrior`, a learned Gaussian per class p(z|y), is the class prior of a
`tfvae.ConditionalVAE` (`class_prior="learned"`); it is not in `PRIORS`, which holds the priors
of unconditional models.

A prior that depends on the encoder (the VampPrior) does not own it: the `VAE` passes its
`encode_base` callable to `distribution(latent_dim, encode=...)` at every use, so the prior
serializes alone and the model has no cycle.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfvae.distributions._common import DISTRIBUTION_DTYPE, resolve

tfd = tfp.distributions

# The smallest scale of a mixture component, as the posterior's (`POSTERIOR_MIN_SCALE`).
_MIN_SCALE = 1e-5


def _gaussian_tables(layer: keras.layers.Layer, rows: int, latent_dim: int, loc_initializer):
    """Adds the weights of `rows` diagonal Gaussians to `layer`: `(locs, raw_scales)`, each
    `[rows, latent_dim]`; the scales are softplus(raw_scales), 1 at the start."""
    locs = layer.add_weight(
        name="locs", shape=(rows, latent_dim), initializer=loc_initializer, dtype=DISTRIBUTION_DTYPE
    )
    raw_scales = layer.add_weight(
        name="raw_scales",
        shape=(rows, latent_dim),
        # softplus(log(e - 1)) = 1.
        initializer=keras.initializers.Constant(math.log(math.e - 1.0)),
        dtype=DISTRIBUTION_DTYPE,
    )
    return locs, raw_scales


class DiagonalGaussianMixture(tfd.MixtureSameFamily):
    """A mixture of M diagonal Gaussians whose `log_prob` needs no `[N, M, D]` table.

    `tfd.MixtureSameFamily.log_prob` evaluates every component at every point, materializing
    (z - loc) / scale as `[N, M, D]`: for the VampPrior's 500 components of 64 dimensions that is
    32,000 numbers per point, which dominated the importance-weighted evaluation's time and
    memory. Here the components' quadratic forms come from two matrix products,

        sum_d (z_d - mu_md)^2 / s_md^2 = (z^2) @ (1 / s^2)^T - 2 z @ (mu / s^2)^T + sum_d mu_md^2 / s_md^2,

    in float64 (the terms cancel; float64 keeps the result within 1e-9 of TFP's), giving `[N, M]`.
    Sampling, the mean and everything else are `tfd.MixtureSameFamily`'s.

    Build it with `gaussian_mixture(logits, loc, scale)`.
    """

    def _log_prob(self, x):
        components = self.components_distribution
        loc = tf.cast(components.loc, tf.float64)
        precision = tf.cast(components.scale.diag, tf.float64) ** -2  # [M, D]
        x = tf.convert_to_tensor(x)
        dimensions = tf.shape(loc)[-1]
        flat = tf.reshape(tf.cast(x, tf.float64), [-1, dimensions])  # [N, D]
        quadratic = (
            tf.matmul(flat**2, precision, transpose_b=True)
            - 2.0 * tf.matmul(flat, loc * precision, transpose_b=True)
            + tf.reduce_sum(loc**2 * precision, axis=-1)
        )  # [N, M]
        normalizer = 0.5 * tf.reduce_sum(tf.math.log(precision), axis=-1) - 0.5 * tf.cast(
            dimensions, tf.float64
        ) * math.log(2.0 * math.pi)  # [M]
        log_weights = tf.nn.log_softmax(tf.cast(self.mixture_distribution.logits, tf.float64))
        log_prob = tf.reduce_logsumexp(log_weights + normalizer - 0.5 * quadratic, axis=-1)
        return tf.reshape(tf.cast(log_prob, x.dtype), tf.shape(x)[:-1])


def gaussian_mixture(logits, loc, scale) -> DiagonalGaussianMixture:
    """The mixture sum_m softmax(logits)_m N(loc_m, diag(scale_m^2)), event `[D]`.

    Args:
        logits: `[M]` mixture logits.
        loc, scale: `[M, D]` the components' means and standard deviations.
    """
    return DiagonalGaussianMixture(
        mixture_distribution=tfd.Categorical(logits=logits),
        components_distribution=tfd.MultivariateNormalDiag(loc=loc, scale_diag=scale),
    )


def _check_count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Expected {name} to be an integer >= 1. Received: {name}={value!r}")
    return value


class Prior(keras.layers.Layer):
    """Base class of the prior p(z) over a latent vector of size `latent_dim`.

    A learned prior (a mixture, a VampPrior, a flow) is a subclass that creates its weights in
    `build((latent_dim,))` and returns them inside `distribution`. A prior that needs the data's
    shape (the VampPrior's pseudo-inputs) gets it from `configure(image_shape)`, which the `VAE`
    calls before `build`.
    """

    #: Mixture components of p(z): the IW-NLL sizes its chunks by `components * latent_dim`.
    components: int = 1
    #: Whether `distribution` takes the encoder (`encode=`); a prior without it is called as
    #: `distribution(latent_dim)`, so subclasses written for that signature keep working.
    uses_encoder: bool = False
    #: Whether p(z|y) depends on a class label: `distribution` then takes `labels=` (one-hot
    #: `[B, num_classes]`), and only a `tfvae.ConditionalVAE` accepts the prior.
    uses_labels: bool = False

    def configure(self, image_shape) -> None:
        """Receives the model's image shape `(H, W, C)` before `build`. Default: unused."""
        del image_shape

    def distribution(self, latent_dim: int, encode=None) -> tfd.Distribution:
        """Returns p(z) with batch shape `[]` and event shape `[latent_dim]`.

        Args:
            latent_dim: int. D, the size of z.
            encode: None or a callable mapping images `[K, H, W, C]` to a diagonal Gaussian
                `tfd.MultivariateNormalDiag` with batch shape `[K]` (the VAE's `encode_base`);
                given only to priors with `uses_encoder = True`.
        """
        raise NotImplementedError

    def prepare_evaluation(self, latent_dim: int, encode=None) -> None:
        """Computes once what `evaluation_distribution` reuses for every batch of an evaluation.

        Default: nothing (the prior does not depend on the encoder).
        """
        del latent_dim, encode

    def evaluation_distribution(self, latent_dim: int) -> tfd.Distribution:
        """p(z) during an evaluation, after `prepare_evaluation`. Default: `distribution`."""
        return self.distribution(latent_dim)

    def settings(self) -> dict:
        """The constructor settings that define this prior (for metadata), JSON-serializable."""
        return {}

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="tfvae")
class StandardNormalPrior(Prior):
    """p(z) = N(0, I), the prior of Kingma & Welling (2014)."""

    def build(self, input_shape):
        pass

    def distribution(self, latent_dim, encode=None):
        del encode
        return tfd.MultivariateNormalDiag(
            loc=tf.zeros([latent_dim], DISTRIBUTION_DTYPE),
            scale_diag=tf.ones([latent_dim], DISTRIBUTION_DTYPE),
        )


@keras.saving.register_keras_serializable(package="tfvae")
class MixturePrior(Prior):
    """A learned mixture of M diagonal Gaussians, p(z) = sum_m pi_m N(z; mu_m, diag(sigma_m^2)).

    The weights are `logits` `[M]` (pi = softmax(logits), initially uniform), `locs` `[M, D]`
    (initially N(0, 1) draws, so the components start apart) and `raw_scales` `[M, D]`
    (sigma = softplus(raw_scale) + 1e-5, initially 1). The KL term has no closed form: the ELBO
    uses the one-sample estimate log q(z|x) - log p(z) (`tfvae.objectives.kl_divergence`), and
    free bits, which need a per-dimension KL, refuse this prior.

    Args:
        components: int >= 1. M. With M = 1 and the initial locs set to 0 this is N(0, I).
        seed: int or None. Seed of the initial locs.
        **kwargs: passed to `keras.layers.Layer`.

    Raises:
        ValueError: components < 1.
    """

    def __init__(self, components: int = 10, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.components = _check_count(components, "components")
        self.seed = seed

    def build(self, input_shape):
        latent_dim = int(input_shape[-1])
        self.logits = self.add_weight(
            name="logits", shape=(self.components,), initializer="zeros", dtype=DISTRIBUTION_DTYPE
        )
        self.locs, self.raw_scales = _gaussian_tables(
            self, self.components, latent_dim, keras.initializers.RandomNormal(stddev=1.0, seed=self.seed)
        )

    def distribution(self, latent_dim, encode=None):
        del encode
        if int(self.locs.shape[-1]) != latent_dim:
            raise ValueError(
                f"Expected latent_dim {int(self.locs.shape[-1])}, the size this prior was built "
                f"for. Received: latent_dim={latent_dim}"
            )
        scale = tf.nn.softplus(tf.convert_to_tensor(self.raw_scales)) + _MIN_SCALE
        return gaussian_mixture(tf.convert_to_tensor(self.logits), tf.convert_to_tensor(self.locs), scale)

    def settings(self):
        return {"components": self.components}

    def get_config(self):
        config = super().get_config()
        config.update(components=self.components, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package="tfvae")
class VampPrior(Prior):
    """The VampPrior (Tomczak & Welling, 2018): p(z) = (1/K) sum_k q(z | u_k).

    The K pseudo-inputs u_k are learned images in data space, `[K, H, W, C]`, kept in [0, 1]
    (the range of tfvae's images) by a hard clip, as the paper's hard-tanh: u = clip(w, 0, 1),
    w initialized at 0.5 plus N(0, 0.01^2) noise. The components q(z | u_k) are the *current*
    encoder's diagonal Gaussians (with a flow posterior, its pre-flow Gaussians), so the prior
    changes with the encoder and pulls the aggregate posterior and the prior together.

    Cost: training encodes the K pseudo-inputs at every step, about K / batch_size times the
    encoder's work on the batch (K = 500, batch 128: roughly 4x), and log p(z) evaluates K
    Gaussians per sample. Evaluation (`VAE.evaluate`, `VAE.importance_weighted_nll`) encodes them
    once per call (`prepare_evaluation`) and reuses the components for every batch. The KL term
    has no closed form: the ELBO uses the one-sample estimate log q(z|x) - log p(z).

    The prior does not own the encoder: the VAE passes `encode` to `distribution`
    (`uses_encoder`).

    Args:
        components: int >= 1. K, the number of pseudo-inputs. Default 500.
        image_shape: None or `(H, W, C)`. The pseudo-inputs' shape; the VAE sets it
            (`configure`) when it is None.
        seed: int or None. Seed of the initial noise of the pseudo-inputs.
        **kwargs: passed to `keras.layers.Layer`.

    Raises:
        ValueError: components < 1; an image shape other than the model's.
    """

    uses_encoder = True

    def __init__(self, components: int = 500, image_shape=None, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.components = _check_count(components, "components")
        self.image_shape = None if image_shape is None else tuple(int(d) for d in image_shape)
        self.seed = seed

    def configure(self, image_shape):
        image_shape = tuple(int(d) for d in image_shape)
        if self.image_shape is not None and self.image_shape != image_shape:
            raise ValueError(
                f"Expected the VampPrior's pseudo-inputs to have the model's image shape "
                f"{image_shape}. Received: image_shape={self.image_shape}"
            )
        self.image_shape = image_shape

    def build(self, input_shape):
        if self.image_shape is None:
            raise ValueError(
                "Expected the VampPrior to know the image shape before it is built: give "
                "image_shape=(H, W, C) or build it inside a tfvae.VAE. Received: image_shape=None"
            )
        latent_dim = int(input_shape[-1])
        self.pseudo_input_weights = self.add_weight(
            name="pseudo_inputs",
            shape=(self.components, *self.image_shape),
            initializer=keras.initializers.RandomNormal(mean=0.5, stddev=0.01, seed=self.seed),
            dtype=DISTRIBUTION_DTYPE,
        )
        # The components of the last `prepare_evaluation`, reused by every evaluation batch.
        self.evaluation_loc = self.add_weight(
            name="evaluation_loc", shape=(self.components, latent_dim), initializer="zeros",
            dtype=DISTRIBUTION_DTYPE, trainable=False,
        )
        self.evaluation_scale = self.add_weight(
            name="evaluation_scale", shape=(self.components, latent_dim), initializer="ones",
            dtype=DISTRIBUTION_DTYPE, trainable=False,
        )

    @property
    def pseudo_inputs(self):
        """The pseudo-inputs u_k in [0, 1], float32 `[K, H, W, C]`."""
        return tf.clip_by_value(tf.convert_to_tensor(self.pseudo_input_weights), 0.0, 1.0)

    def set_pseudo_inputs(self, images) -> None:
        """Sets the pseudo-inputs to `images` `[K, H, W, C]` with values in [0, 1]."""
        images = tf.convert_to_tensor(images, DISTRIBUTION_DTYPE)
        expected = (self.components, *self.image_shape)
        if tuple(images.shape) != expected:
            raise ValueError(
                f"Expected {self.components} pseudo-inputs of shape {expected}. "
                f"Received: shape {tuple(images.shape)}"
            )
        self.pseudo_input_weights.assign(images)

    @staticmethod
    def _mixture(loc, scale):
        return gaussian_mixture(tf.zeros([tf.shape(loc)[0]], DISTRIBUTION_DTYPE), loc, scale)

    def _components(self, encode, latent_dim):
        if encode is None:
            raise ValueError(
                "Expected the VampPrior's distribution to get the encoder, encode=vae.encode_base "
                "(use vae.prior_distribution()). Received: encode=None"
            )
        posterior = encode(self.pseudo_inputs)
        loc = tf.cast(posterior.mean(), DISTRIBUTION_DTYPE)
        scale = tf.cast(posterior.stddev(), DISTRIBUTION_DTYPE)
        if loc.shape[-1] is not None and int(loc.shape[-1]) != latent_dim:
            raise ValueError(
                f"Expected the encoder to give {latent_dim} latent dimensions. "
                f"Received: {int(loc.shape[-1])}"
            )
        return loc, scale

    def distribution(self, latent_dim, encode=None):
        return self._mixture(*self._components(encode, latent_dim))

    def prepare_evaluation(self, latent_dim, encode=None):
        loc, scale = self._components(encode, latent_dim)
        self.evaluation_loc.assign(loc)
        self.evaluation_scale.assign(scale)

    def evaluation_distribution(self, latent_dim):
        return self._mixture(
            tf.convert_to_tensor(self.evaluation_loc), tf.convert_to_tensor(self.evaluation_scale)
        )

    def settings(self):
        return {"components": self.components}

    def get_config(self):
        config = super().get_config()
        config.update(components=self.components, image_shape=self.image_shape, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package="tfvae")
class ClassGaussianPrior(Prior):
    """A learned diagonal Gaussian per class, p(z|y) = N(z; mu_y, diag(sigma_y^2)).

    The prior of a `tfvae.ConditionalVAE` built with `class_prior="learned"`. The weights are
    the tables `locs` `[C, D]` (initially 0) and `raw_scales` `[C, D]` (sigma =
    softplus(raw_scale) + 1e-5, initially 1), so training starts from N(0, I) for every class.
    Against the diagonal Gaussian posterior the KL keeps its closed form and factorizes over the
    latent dimensions (free bits work). `transfer` maps a z between two classes' Gaussians (style
    transfer). Not in `PRIORS`: an unconditional `VAE` refuses it.

    Args:
        num_classes: int >= 2. C.
        **kwargs: passed to `keras.layers.Layer`.

    Raises:
        ValueError: num_classes < 2.
    """

    uses_labels = True

    def __init__(self, num_classes: int = 10, **kwargs):
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(
                f"Expected num_classes to be an integer >= 2. Received: num_classes={num_classes!r}"
            )
        self.num_classes = num_classes

    def build(self, input_shape):
        latent_dim = int(input_shape[-1])
        self.locs, self.raw_scales = _gaussian_tables(self, self.num_classes, latent_dim, "zeros")

    def _parameters(self, labels):
        """`(loc, scale)`: `[B, D]` for one-hot `labels` `[B, C]`; `[C, D]` (every class) for None."""
        locs = tf.convert_to_tensor(self.locs)
        scales = tf.nn.softplus(tf.convert_to_tensor(self.raw_scales)) + _MIN_SCALE
        if labels is None:
            return locs, scales
        # One-hot rows times the tables pick each example's row (a differentiable gather).
        labels = tf.cast(labels, DISTRIBUTION_DTYPE)
        return tf.matmul(labels, locs), tf.matmul(labels, scales)

    def distribution(self, latent_dim, encode=None, labels=None):
        """Returns p(z|y): batch shape `[B]` for one-hot `labels` `[B, C]`; `[C]` (one Gaussian
        per class) when labels is None. Event shape `[latent_dim]`."""
        del encode
        if int(self.locs.shape[-1]) != latent_dim:
            raise ValueError(
                f"Expected latent_dim {int(self.locs.shape[-1])}, the size this prior was built "
                f"for. Received: latent_dim={latent_dim}"
            )
        loc, scale = self._parameters(labels)
        return tfd.MultivariateNormalDiag(loc=loc, scale_diag=scale)

    def transfer(self, z, labels, target_labels):
        """Maps z `[B, D]` from p(z|y) to p(z|y'): mu_y' + sigma_y' * (z - mu_y) / sigma_y.

        Args:
            z: float `[B, D]`.
            labels, target_labels: one-hot `[B, C]`, the classes y and y'.

        Returns:
            float32 `[B, D]`: the same standardized position under the target class's Gaussian.
        """
        loc, scale = self._parameters(labels)
        target_loc, target_scale = self._parameters(target_labels)
        return target_loc + target_scale * (tf.cast(z, DISTRIBUTION_DTYPE) - loc) / scale

    def settings(self):
        return {"num_classes": self.num_classes}

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes)
        return config


PRIORS = {"standard_normal": StandardNormalPrior, "mixture": MixturePrior, "vamp": VampPrior}


def get_prior(identifier, **settings) -> Prior:
    """Returns a Prior from a name in `PRIORS`, an instance or a config.

    Args:
        identifier: a name ('standard_normal', 'mixture', 'vamp'), a `Prior`, or its
            serialized config.
        **settings: constructor arguments of the named prior, e.g. `components=500`.

    Raises:
        ValueError: the name is unknown, a setting the prior does not take, settings without a
            name, or an object that is not a Prior.
    """
    return resolve(identifier, PRIORS, Prior, "prior", settings)


def prior_name(prior: Prior) -> str | None:
    """The registry name of a built-in prior, or None for a user-defined one."""
    for name, cls in PRIORS.items():
        if type(prior) is cls:
            return name
    return None
