"""`tfvae.TwoLayerVAE`: a VAE with two stochastic layers, trained by `VAE`'s own steps.

The generative model is p(x|z1) p(z1|z2) p(z2) and the inference model top-down,
q(z2|x) q(z1|x, z2) (Tomczak & Welling's HVAE, 2018; the ladder VAE of Sønderby et al., 2016):
the `prior` seam (standard normal, mixture, VampPrior) sits on the top layer z2 and the
`posterior` seam gives q(z2|x). Everywhere outside this module the latent is the concatenation
z = [z1, z2] of size D1 + D2, with the joint log-densities, so the objectives, the
importance-weighted NLL and the export treat the model as a VAE with that z.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfvae.distributions import PosteriorParameters, get_likelihood, get_posterior
from tfvae.distributions.posteriors import posterior_distribution
from tfvae.models.decoder import build_conv_decoder
from tfvae.models.encoder import build_conv_encoder
from tfvae.models.vae import VAE, _shape_tuple
from tfvae.models.validation import check_latent_dim

tfd = tfp.distributions

#: The width of the hidden Dense layers of `build_conv_two_layer_vae` (the HVAE's 300 units).
DEFAULT_HIDDEN_UNITS = 300


def _conditional_gaussian(network, inputs, leading_shape, latent_dim, training):
    """N(loc, softplus(raw_scale) + 1e-5) from `network` on inputs with leading axes `[..., B]`.

    The inputs are flattened to `[N, width]` for the network and its `[N, 2 * latent_dim]`
    output reshaped back, so K samples per image cost one pass over N = K * B rows.

    Returns:
        A `tfd.MultivariateNormalDiag` with batch shape `leading_shape`, event `[latent_dim]`.
    """
    flat = [tf.reshape(value, [-1, tf.shape(value)[-1]]) for value in inputs]
    outputs = network(flat if len(flat) > 1 else flat[0], training=training)
    outputs = tf.reshape(tf.cast(outputs, tf.float32), tf.concat([leading_shape, [2 * latent_dim]], 0))
    loc, raw_scale = tf.split(outputs, 2, axis=-1)
    return posterior_distribution(loc, raw_scale)


class TwoLayerPrior:
    """p(z) = p(z1|z2) p(z2) over the concatenation z = [z1, z2], `[..., D1 + D2]`.

    What the bounds and the export call of a prior: `log_prob` and `sample`. It is not a
    `tfd.Distribution`, so the KL to it is always the Monte-Carlo estimate log q(z|x) - log p(z).

    Args:
        top: p(z2), event shape `[D2]` (the `prior` seam's distribution).
        conditional: a callable mapping z2 `[..., D2]` to p(z1|z2), a diagonal Gaussian with
            batch shape `[...]` and event shape `[D1]`.
        latent_dims: `(D1, D2)`.
    """

    def __init__(self, top, conditional, latent_dims):
        self.top = top
        self.conditional = conditional
        self.latent_dims = tuple(latent_dims)

    @property
    def batch_shape(self) -> tf.TensorShape:
        """`[]`: one distribution shared by every example (as a `tfd.Distribution` reports it)."""
        return tf.TensorShape([])

    def log_prob(self, z):
        """log p(z1|z2) + log p(z2) for z `[..., D1 + D2]`; returns `[...]` float32."""
        z1, z2 = tf.split(tf.cast(z, tf.float32), list(self.latent_dims), axis=-1)
        return self.conditional(z2).log_prob(z1) + self.top.log_prob(z2)

    def sample(self, sample_shape=(), seed=None):
        """Draws z2 ~ p(z2), then z1 ~ p(z1|z2); returns `[*sample_shape, D1 + D2]`.

        Args:
            sample_shape: int or tuple of ints.
            seed: None (stateful random ops) or a stateless seed, an integer tensor `[2]`: the
                same seed gives the same z.
        """
        if seed is None:
            z2 = self.top.sample(sample_shape)
            conditional = self.conditional(z2)
            noise = tf.random.normal(tf.shape(conditional.mean()))
        else:
            top_seed, bottom_seed = tfp.random.split_seed(seed, n=2)
            z2 = self.top.sample(sample_shape, seed=top_seed)
            conditional = self.conditional(z2)
            noise = tf.random.stateless_normal(tf.shape(conditional.mean()), seed=bottom_seed)
        z1 = conditional.mean() + conditional.stddev() * noise
        return tf.concat([z1, z2], axis=-1)


@keras.saving.register_keras_serializable(package="tfvae")
class TwoLayerVAE(VAE):
    """A VAE with two stochastic layers: p(x|z1) p(z1|z2) p(z2), inference q(z2|x) q(z1|x, z2).

    z1 is the layer near the data, z2 the top one. The `prior` seam is p(z2), so a learned prior
    (`"mixture"`, `"vamp"`: a VampPrior whose components are q(z2|u_k)) sits on the top layer; the
    `posterior` seam is q(z2|x) (`"diagonal_gaussian"` or `"iaf"`); p(z1|z2) and q(z1|x, z2)
    are diagonal Gaussians given by two small networks.

    Everywhere a `VAE` takes or returns z, this model uses the concatenation z = [z1, z2],
    `[..., D1 + D2]` (`latent_dim` = D1 + D2, `latent_dims` = (D1, D2)), with joint densities:

    - `posterior_sample(images, K)` -> z `[K, B, D1 + D2]` and log q(z1, z2|x) =
      log q(z1|x, z2) + log q(z2|x), `[K, B]`; the noise `[K, B, D1 + D2]` is read in the same
      order (its first D1 columns draw z1, the last D2 draw z2);
    - `decode(z)` takes the concatenation and returns p(x|z1) (z2 is not read);
    - `prior_distribution()` is a `TwoLayerPrior`: `log_prob(z)` = log p(z1|z2) + log p(z2),
      `sample(n)` draws both layers from the prior, so `sample(n)` decodes z1 of such draws;
    - `encode(images)` is a diagonal Gaussian with event `[D1 + D2]`: q(z1|x, z2) at z2 = the
      point of q(z2|x) (its mean for the diagonal Gaussian) beside the base Gaussian of q(z2|x);
      `encode_base` is the base Gaussian of q(z2|x) alone (the VampPrior's components).

    Training and evaluation are `VAE`'s (`train_step`, `test_step`, `importance_weighted_nll`).
    The KL term is the one-sample Monte-Carlo estimate log q(z1, z2|x) - log p(z1, z2) (no
    closed form over both layers), so the ELBO at given noise is log p(x|z1) + log p(z1|z2) +
    log p(z2) - log q(z1|x, z2) - log q(z2|x). Free bits and DReG, which need q(z|x) to be one
    diagonal Gaussian, are refused.

    Args:
        encoder: keras.Model. Maps images `[B, H, W, C]` to `[loc, raw_scale, features]` (three
            tensors `[B, D2]`, `[B, D2]`, `[B, F]`), or `[loc, raw_scale, context, features]`
            for a posterior with a context (`iaf`): q(z2|x)'s parameters as `VAE`'s encoder gives
            them, then the features q(z1|x, z2) reads x through. Its input shape must be known.
        z1_encoder: keras.Model. Maps `[features [N, F], z2 [N, D2]]` to `[N, 2 * D1]`, the loc and
            raw scale of q(z1|x, z2) (scale = softplus(raw_scale) + 1e-5).
        z1_prior: keras.Model. Maps z2 `[N, D2]` to `[N, 2 * D1]`, the loc and raw scale of
            p(z1|z2).
        decoder: keras.Model. Maps z1 `[B, D1]` to likelihood parameters `[B, H, W, C * P]`.
        likelihood, prior, posterior, beta, seed, objective, **kwargs: as for `VAE`; `prior` and
            `posterior` act on z2.

    Returns (of `call`):
        The mean of p(x|z1) at z2 = q(z2|x)'s point and z1 = the mean of q(z1|x, z2), `[B, H, W, C]`.

    Raises:
        ValueError: networks whose shapes do not fit together, free bits or DReG, and what `VAE`
            raises.

    Example:

    >>> import numpy as np, tfvae
    >>> vae = tfvae.build_conv_two_layer_vae((8, 8, 1), latent_dims=(4, 2), filters=(8,), hidden_units=16)
    >>> vae.latent_dims, vae.latent_dim
    ((4, 2), 6)
    >>> z, log_q = vae.posterior_sample(np.random.rand(3, 8, 8, 1).astype("float32"), 5)
    >>> tuple(z.shape), tuple(log_q.shape)
    ((5, 3, 6), (5, 3))
    """

    _SERIALIZED_PARTS = (*VAE._SERIALIZED_PARTS, "z1_encoder", "z1_prior")

    def __init__(
        self,
        encoder,
        z1_encoder,
        z1_prior,
        decoder,
        likelihood="bernoulli",
        prior="standard_normal",
        beta: float | None = None,
        seed: int | None = None,
        objective=None,
        posterior="diagonal_gaussian",
        **kwargs,
    ):
        # Set before VAE.__init__, whose `_check_parts` checks them with the encoder and decoder.
        self.z1_encoder = z1_encoder
        self.z1_prior = z1_prior
        super().__init__(
            encoder, decoder, likelihood=likelihood, prior=prior, beta=beta, seed=seed,
            objective=objective, posterior=posterior, **kwargs,
        )

    # ------------------------------------------------------------------ checks of the parts
    def _check_parts(self, encoder, decoder):
        parts = {"encoder": encoder, "z1_encoder": self.z1_encoder, "z1_prior": self.z1_prior, "decoder": decoder}
        for name, part in parts.items():
            if not isinstance(part, keras.layers.Layer):
                raise ValueError(
                    f"Expected the {name} to be a keras.Model or keras.layers.Layer. Received: {name}={part!r}"
                )
        try:
            input_shape = _shape_tuple(encoder.input_shape)
        except (AttributeError, ValueError):
            input_shape = None
        if input_shape is None or len(input_shape) != 4 or None in input_shape[1:]:
            raise ValueError(
                f"Expected an encoder with a known input shape (None, H, W, C). Received: {input_shape}"
            )
        image_shape = input_shape[1:]
        context_units = self.posterior.context_units
        names = ["loc", "raw_scale", *(["context"] if context_units else []), "features"]
        outputs = encoder.compute_output_spec(keras.KerasTensor((None, *image_shape)))
        shapes = [_shape_tuple(o.shape) for o in outputs] if isinstance(outputs, (list, tuple)) else None
        if (
            shapes is None or len(shapes) != len(names) or any(len(s) != 2 or s[1] is None for s in shapes)
            or shapes[0] != shapes[1] or (context_units and shapes[2][1] != context_units)
        ):
            received = shapes if shapes is not None else _shape_tuple(outputs.shape)
            raise ValueError(
                f"Expected the encoder to output [{', '.join(names)}]: (batch, D2) twice"
                + (f", (batch, {context_units})" if context_units else "")
                + f" and (batch, F) for the {type(self.posterior).__name__}. Received: shapes {received}"
            )
        top_dim, features_dim = check_latent_dim(shapes[0][1]), shapes[-1][1]
        prior_output = _shape_tuple(self.z1_prior.compute_output_spec(keras.KerasTensor((None, top_dim))).shape)
        if len(prior_output) != 2 or prior_output[1] is None or prior_output[1] % 2:
            raise ValueError(
                f"Expected z1_prior to map z2 of shape (None, {top_dim}) to (None, 2 * D1). "
                f"Received: output shape {prior_output}"
            )
        bottom_dim = check_latent_dim(prior_output[1] // 2)
        try:
            encoder_output = _shape_tuple(
                self.z1_encoder.compute_output_spec(
                    [keras.KerasTensor((None, features_dim)), keras.KerasTensor((None, top_dim))]
                ).shape
            )
        except (ValueError, TypeError) as error:
            encoder_output = f"an error: {error}"
        if encoder_output != (None, 2 * bottom_dim):
            raise ValueError(
                f"Expected z1_encoder to map [features (None, {features_dim}), z2 (None, {top_dim})] "
                f"to (None, {2 * bottom_dim}), as z1_prior does. Received: {encoder_output}"
            )
        decoder_output = _shape_tuple(decoder.compute_output_spec(keras.KerasTensor((None, bottom_dim))).shape)
        expected = (None, *image_shape[:-1], image_shape[-1] * self.likelihood.parameters_per_subpixel)
        if decoder_output != expected:
            raise ValueError(
                f"Expected the decoder to map z1 of shape (None, {bottom_dim}) to {expected} for the "
                f"{type(self.likelihood).__name__}. Received: output shape {decoder_output}"
            )
        self._latent_dims = (bottom_dim, top_dim)
        return image_shape, bottom_dim + top_dim

    # ------------------------------------------------------------------ the probabilistic model
    @property
    def latent_dims(self) -> tuple[int, int]:
        """`(D1, D2)`: the sizes of z1 (near the data) and z2 (the top layer)."""
        return self._latent_dims

    @property
    def prior_latent_dim(self) -> int:
        return self._latent_dims[1]

    @property
    def posterior_factorized(self) -> bool:
        return False

    @property
    def posterior_description(self) -> str:
        return f"{type(self).__name__}'s q(z1|x, z2) q(z2|x)"

    def _encode(self, images, training):
        """q(z2|x)'s parameters and the features q(z1|x, z2) reads, from one encoder pass."""
        *parameters, features = self.encoder(images, training=training)
        return PosteriorParameters(*parameters), features

    def posterior_parameters(self, images, training: bool = False) -> PosteriorParameters:
        """The parameters of q(z2|x): `loc`, `raw_scale` `[B, D2]` and `context` (None without one)."""
        return self._encode(images, training)[0]

    def _bottom_posterior(self, features, z2, training=False):
        """q(z1|x, z2) for z2 `[..., B, D2]`: batch shape `[..., B]`, event `[D1]`."""
        leading_shape = tf.shape(z2)[:-1]
        features = tf.broadcast_to(features, tf.concat([leading_shape, tf.shape(features)[-1:]], 0))
        return _conditional_gaussian(
            self.z1_encoder, [features, z2], leading_shape, self._latent_dims[0], training
        )

    def _bottom_prior(self, z2, training=False):
        """p(z1|z2) for z2 `[..., D2]`: batch shape `[...]`, event `[D1]`."""
        return _conditional_gaussian(
            self.z1_prior, [z2], tf.shape(z2)[:-1], self._latent_dims[0], training
        )

    def sample_latents(self, images, noise, training: bool = False):
        """z = [z1, z2] ~ q(z2|x) q(z1|x, z2) from noise `[..., B, D1 + D2]`, with the joint log q.

        Returns:
            `(z, log_q, None)`: `[..., B, D1 + D2]`, `[..., B]`; the joint q is no TFP
            distribution, so the KL is estimated at z.
        """
        parameters, features = self._encode(images, training)
        bottom_noise, top_noise = tf.split(tf.cast(noise, tf.float32), list(self._latent_dims), axis=-1)
        z2, log_q2 = self.posterior.sample(parameters, top_noise)
        bottom = self._bottom_posterior(features, z2, training)
        z1 = bottom.mean() + bottom.stddev() * bottom_noise
        return tf.concat([z1, z2], axis=-1), bottom.log_prob(z1) + log_q2, None

    def encode(self, images, labels=None, training: bool = False):
        """A diagonal Gaussian over [z1, z2], batch `[B]`, event `[D1 + D2]`: q(z1|x, z2) at z2 =
        q(z2|x)'s point, beside q(z2|x)'s base Gaussian (q(z2|x) itself unless it is a flow).

        Its mean is the model's embedding; it is not q(z1, z2|x), which is no Gaussian: use
        `posterior_sample` for samples of the joint posterior with their log-densities. `labels`
        must be None, as for `VAE.encode` (the pictures pass it for every model).

        Raises:
            ValueError: labels given (this model is not conditional).
        """
        self._refuse_labels(labels, "encode")
        parameters, features = self._encode(images, training)
        top = self.posterior.base_distribution(parameters)
        bottom = self._bottom_posterior(features, self.posterior.point(parameters), training)
        return tfd.MultivariateNormalDiag(
            loc=tf.concat([bottom.mean(), top.mean()], -1),
            scale_diag=tf.concat([bottom.stddev(), top.stddev()], -1),
        )

    def encode_base(self, images, training: bool = False):
        """q(z2|x)'s base Gaussian, batch `[B]`, event `[D2]`: the VampPrior's components."""
        return self.posterior.base_distribution(self.posterior_parameters(images, training))

    def decoder_parameters(self, z, training: bool = False):
        """The likelihood's parameters `[B, H, W, C * P]` for z = [z1, z2] `[B, D1 + D2]` (reads z1)."""
        return self.decoding_network()(z[..., : self._latent_dims[0]], training=training)

    def prior_distribution(self):
        """p(z1|z2) p(z2) over z = [z1, z2], a `TwoLayerPrior`; p(z2) is the `prior` seam's."""
        return TwoLayerPrior(super().prior_distribution(), self._bottom_prior, self._latent_dims)

    def posterior_point(self, images, training: bool = False):
        """The joint posterior's sample at zero noise, `[B, D1 + D2]`: z2 = q(z2|x)'s point and
        z1 = the mean of q(z1|x, z2) there (the mean of `encode`, unless q(z2|x) is a flow)."""
        parameters, features = self._encode(images, training)
        z2 = self.posterior.point(parameters)
        return tf.concat([self._bottom_posterior(features, z2, training).mean(), z2], axis=-1)

    # ------------------------------------------------------------------ serialization
    def get_config(self):
        config = super().get_config()
        config.update(
            z1_encoder=keras.saving.serialize_keras_object(self.z1_encoder),
            z1_prior=keras.saving.serialize_keras_object(self.z1_prior),
        )
        return config


def build_conv_two_layer_vae(
    image_shape: Sequence[int],
    latent_dims: Sequence[int] = (40, 40),
    filters: Sequence[int] = (32, 64),
    kernel_size: int = 3,
    hidden_units: int = DEFAULT_HIDDEN_UNITS,
    likelihood="bernoulli",
    prior="standard_normal",
    beta: float | None = None,
    seed: int | None = None,
    name: str = "two_layer_vae",
    objective=None,
    posterior="diagonal_gaussian",
) -> TwoLayerVAE:
    """Builds a `TwoLayerVAE` on the convolutional stacks of `build_conv_vae`.

    The defaults are the HVAE's sizes in the VampPrior paper (Tomczak & Welling, 2018): D1 = D2
    = 40 latent units and 300 hidden units, here with `build_conv_vae`'s conv layers in place of
    its MLP. The networks:

    - encoder: `build_conv_encoder` (strided Conv2D stack -> Dense(hidden_units)) giving q(z2|x),
      with that Dense layer's output as the features;
    - z1_encoder: [features, z2] -> Dense(hidden_units) -> q(z1|x, z2)'s `[2 * D1]`;
    - z1_prior: z2 -> Dense(hidden_units) -> p(z1|z2)'s `[2 * D1]`;
    - decoder: `build_conv_decoder` from z1, the encoder's mirror image.

    Args:
        image_shape: `(H, W, C)`; H and W divisible by `2**len(filters)`.
        latent_dims: `(D1, D2)`, ints >= 1: the sizes of z1 (near the data) and z2 (top).
        filters, kernel_size: see `build_conv_encoder`.
        hidden_units: int >= 1. The width of every hidden Dense layer.
        likelihood, prior, beta, seed, objective, posterior: see `TwoLayerVAE`.
        name: the model's name.

    Returns:
        A built, uncompiled `tfvae.TwoLayerVAE`.

    Raises:
        ValueError: latent_dims not two integers >= 1, hidden_units < 1, and what
            `build_conv_encoder`, `build_conv_decoder` and `TwoLayerVAE` raise.
    """
    latent_dims = tuple(latent_dims) if isinstance(latent_dims, (list, tuple)) else (latent_dims,)
    if len(latent_dims) != 2:
        raise ValueError(f"Expected latent_dims to be (D1, D2). Received: latent_dims={latent_dims!r}")
    bottom_dim, top_dim = (check_latent_dim(d) for d in latent_dims)
    if isinstance(hidden_units, bool) or not isinstance(hidden_units, int) or hidden_units < 1:
        raise ValueError(f"Expected hidden_units to be an integer >= 1. Received: hidden_units={hidden_units!r}")
    filters = tuple(filters)
    likelihood = get_likelihood(likelihood)
    posterior = get_posterior(posterior)
    top_encoder = build_conv_encoder(
        image_shape, top_dim, filters, kernel_size, hidden_units, context_units=posterior.context_units
    )
    encoder = keras.Model(
        top_encoder.input, [*top_encoder.outputs, top_encoder.get_layer("hidden").output], name="encoder"
    )

    features = keras.Input((hidden_units,), name="features")
    z2 = keras.Input((top_dim,), name="z2")
    hidden = keras.layers.Dense(hidden_units, activation="relu", name="hidden")(
        keras.layers.Concatenate(name="features_and_z2")([features, z2])
    )
    z1_encoder = keras.Model(
        [features, z2], keras.layers.Dense(2 * bottom_dim, name="z1_parameters")(hidden), name="z1_encoder"
    )
    z2 = keras.Input((top_dim,), name="z2")
    hidden = keras.layers.Dense(hidden_units, activation="relu", name="hidden")(z2)
    z1_prior = keras.Model(z2, keras.layers.Dense(2 * bottom_dim, name="z1_parameters")(hidden), name="z1_prior")

    decoder = build_conv_decoder(
        bottom_dim, image_shape, filters[::-1], kernel_size, hidden_units,
        parameters_per_subpixel=likelihood.parameters_per_subpixel,
    )
    return TwoLayerVAE(
        encoder, z1_encoder, z1_prior, decoder, likelihood=likelihood, prior=prior, beta=beta,
        seed=seed, name=name, objective=objective, posterior=posterior,
    )
