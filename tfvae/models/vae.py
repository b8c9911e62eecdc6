"""`tfvae.VAE`: an encoder and a decoder joined in a `keras.Model` that trains on the ELBO."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from tfvae.data.errors import translate_pipeline_errors
from tfvae.distributions import PosteriorParameters, get_likelihood, get_posterior, get_prior
from tfvae.models.decoder import build_conv_decoder
from tfvae.models.encoder import build_conv_encoder
from tfvae.models.precision import EvaluationDecoder, bfloat16_copy, check_decode_precision
from tfvae.models.validation import check_latent_dim, check_num_classes
from tfvae.objectives import ELBO, elbo_terms, get_objective, log_importance_weights

METRIC_NAMES = ("loss", "elbo", "reconstruction", "kl")


def _check_beta(beta) -> float:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < float("inf"):
        raise ValueError(f"Expected beta to be a finite number >= 0. Received: beta={beta!r}")
    return float(beta)


def _check_num_samples(num_samples) -> int:
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"Expected num_samples to be an integer >= 1. Received: {num_samples!r}")
    return int(num_samples)


def _known_input_shape(encoder):
    try:
        return encoder.input_shape
    except (AttributeError, ValueError):
        raise ValueError(
            "Expected an encoder with a known input shape (a functional model, or a model "
            "built on (None, H, W, C)). Received an encoder without one."
        ) from None


def _shape_tuple(shape) -> tuple:
    return tuple(None if d is None else int(d) for d in shape)


@keras.saving.register_keras_serializable(package="tfvae")
class VAE(keras.Model):
    """A variational autoencoder (Kingma & Welling, 2014) trained with `fit`.

    The encoder gives the parameters of the posterior q(z|x) (by default a diagonal Gaussian; see
    `posterior`); a reparameterized sample z, drawn with its log q(z|x), is decoded into the
    parameters of p(x|z). Training maximizes the
    model's `objective`, averaged over the global batch: by default the per-example
    E_q[log p(x|z)] - beta * KL(q(z|x) || p(z)), summed over pixels and latent dimensions
    (`beta=1` is the ELBO itself); `tfvae.objectives.ELBO` adds KL schedules and free bits,
    `tfvae.objectives.IWAE` the importance-weighted bound.

    `fit` and `evaluate` report `loss` (the trained objective, negated, plus any weight
    regularization), `elbo` (the one-sample bound with beta = 1, comparable across objectives),
    `reconstruction` (-log p(x|z)) and `kl`; `fit` also logs `beta`, the KL weight of the
    epoch's last step (ELBO objectives). The model is built when constructed, so it can be saved,
    exported and tuned at once.

    Args:
        encoder: keras.Model (or Layer). Maps images `[B, H, W, C]` to `[loc, raw_scale]` (two
            `[B, D]` tensors) or to one `[B, 2D]` tensor holding both; for a posterior with a
            context of H units (`iaf`), to `[loc, raw_scale, context]` or one `[B, 2D + H]`
            tensor. Its input shape must be known (a functional model, or one built on
            `(None, H, W, C)`).
        decoder: keras.Model (or Layer). Maps z `[B, D]` to likelihood parameters
            `[B, H, W, C * P]`, P = `likelihood.parameters_per_subpixel` (1 for Bernoulli and
            Gaussian).
        likelihood: str or `tfvae.distributions.Likelihood`. A name in
            `tfvae.distributions.LIKELIHOODS`: `"bernoulli"` (logits; data in [0, 1]),
            `"gaussian"` (mean from the decoder, learned per-channel scale), and the others
            listed in the README's "Likelihoods" section.
        prior: str or `tfvae.distributions.Prior`. A name in `tfvae.distributions.PRIORS`:
            `"standard_normal"` (N(0, I), the default), `"mixture"` (a learned mixture of
            Gaussians) or `"vamp"` (the VampPrior); `tfvae.distributions.get_prior(name,
            components=K)` sets their sizes. See the README's "Priors" section.
        posterior: str or `tfvae.distributions.Posterior`. `"diagonal_gaussian"` (the default,
            analytic KL) or `"iaf"` (inverse autoregressive flow; Monte-Carlo KL, no free bits
            or DReG); see the README's "Posteriors" section.
        beta: float >= 0 or None. Weight of the KL term in training, short for
            `objective=tfvae.objectives.ELBO(beta=beta)`. It is kept in a non-trainable
            variable, `vae.beta`, so callbacks can anneal it during `fit`
            (`vae.beta.assign(value)`). Default 1 when no objective is given.
        objective: None, "elbo", "iwae" or a `tfvae.objectives.Objective`
            (`ELBO(beta=..., kl_schedule=..., free_bits=...)`, `IWAE(num_samples=K,
            gradient_estimator="dreg")`). Default: `ELBO(beta)`.
        seed: int or None. Seed of the model's `keras.random.SeedGenerator` (the posterior
            noise). None draws one from Keras's global seed (`keras.utils.set_random_seed`).
        **kwargs: passed to `keras.Model` (`name`, `dtype`, ...).

    Call arguments:
        inputs: images `[B, H, W, C]`.
        training: bool. Passed to the encoder and decoder.

    Returns (of `call`):
        The mean of p(x|z) at the posterior mean, `[B, H, W, C]`: a deterministic reconstruction,
        so `predict` works.

    Raises:
        ValueError: parts whose shapes do not fit together, an unknown likelihood or prior, a
            negative beta, beta given with an objective, an objective the parts do not allow
            (free bits with a prior or posterior that does not factorize, DReG with a flow); and, from `fit`/`evaluate`, data of the wrong shape, dtype or range.

    Example:

    >>> import numpy as np, tfvae
    >>> vae = tfvae.build_conv_vae((28, 28, 1), latent_dim=8)
    >>> vae.compile(optimizer="adam")
    >>> history = vae.fit(np.random.rand(64, 28, 28, 1).astype("float32"), epochs=1, verbose=0)
    >>> sorted(history.history)
    ['beta', 'elbo', 'kl', 'loss', 'reconstruction']
    """

    def __init__(
        self,
        encoder,
        decoder,
        likelihood="bernoulli",
        prior="standard_normal",
        beta: float | None = None,
        seed: int | None = None,
        objective=None,
        posterior="diagonal_gaussian",
        **kwargs,
    ):
        super().__init__(**kwargs)
        # === Parts ===
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = get_likelihood(likelihood)
        self.prior = get_prior(prior)
        self.posterior = get_posterior(posterior)
        self._check_prior()
        self.image_shape, self.latent_dim = self._check_parts(encoder, decoder)
        if beta is not None and objective is not None:
            raise ValueError(
                "Expected beta inside the objective (e.g. tfvae.objectives.ELBO(beta=0.5)), not "
                f"beside it. Received: beta={beta!r} and objective={objective!r}"
            )
        self.objective = ELBO(_check_beta(beta)) if beta is not None else get_objective(objective)
        self._initial_beta = self.objective.initial_kl_weight()
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed, name="posterior_noise")
        self.beta_variable = self.add_weight(
            name="beta",
            shape=(),
            initializer=keras.initializers.Constant(self._initial_beta),
            trainable=False,
            # Every replica writes the same scheduled value; the first one's write is kept.
            aggregation="only_first_replica",
        )
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.elbo_tracker = keras.metrics.Mean(name="elbo")
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction")
        self.kl_tracker = keras.metrics.Mean(name="kl")

        # === Build now, so that saving, export and keras-tuner see a built model ===
        # (A deserialized likelihood or prior may come built already.)
        if not self.likelihood.built:
            self.likelihood.build((None, *self.image_shape))
        self._use_evaluation_prior = False
        self._evaluation_decoder = EvaluationDecoder()
        self.prior.configure(self.image_shape)
        if not self.prior.built:
            self.prior.build((self.prior_latent_dim,))
        if not self.posterior.built:
            self.posterior.build((self.prior_latent_dim,))
        self.build(self._call_input_shape())
        self.objective.check_model(self)

    def build(self, input_shape):
        # The encoder and decoder are built by construction; the likelihood, prior and posterior
        # were built in __init__. Nothing else owns weights.
        del input_shape

    # ------------------------------------------------------------------ checks of the parts
    def _check_parts(self, encoder, decoder) -> tuple[tuple[int, ...], int]:
        for part, name in ((encoder, "encoder"), (decoder, "decoder")):
            if not isinstance(part, keras.layers.Layer):
                raise ValueError(
                    f"Expected the {name} to be a keras.Model or keras.layers.Layer. "
                    f"Received: {name}={part!r}"
                )
        image_shape = self._encoder_image_shape(encoder)
        encoder_spec = encoder.compute_output_spec(self._encoder_input_spec(image_shape))
        context_units = self.posterior.context_units
        expected_outputs = "[loc, raw_scale]" if not context_units else "[loc, raw_scale, context]"
        layout = (
            f"{expected_outputs}: tensors of shape (batch, latent_dim)"
            + (f" and (batch, {context_units}) for the context" if context_units else "")
            + f", or one tensor of shape (batch, 2 * latent_dim{f' + {context_units}' if context_units else ''})"
            + f" for the {type(self.posterior).__name__}"
        )
        if isinstance(encoder_spec, (list, tuple)) and len(encoder_spec) == (3 if context_units else 2):
            shapes = [_shape_tuple(s.shape) for s in encoder_spec]
            loc_shape, scale_shape = shapes[:2]
            if loc_shape != scale_shape or len(loc_shape) != 2 or (
                context_units and shapes[2] != (loc_shape[0], context_units)
            ):
                raise ValueError(f"Expected the encoder to output {layout}. Received: shapes {shapes}")
            latent_dim = loc_shape[1]
        elif isinstance(encoder_spec, keras.KerasTensor) and len(encoder_spec.shape) == 2:
            width = encoder_spec.shape[1]
            if width is None or width <= context_units or (width - context_units) % 2:
                raise ValueError(
                    f"Expected the encoder to output {layout}. "
                    f"Received: {_shape_tuple(encoder_spec.shape)}"
                )
            latent_dim = (width - context_units) // 2
        else:
            raise ValueError(f"Expected the encoder to output {layout}. Received: {encoder_spec}")
        check_latent_dim(latent_dim)
        decoder_spec = decoder.compute_output_spec(self._decoder_input_spec(latent_dim))
        if not isinstance(decoder_spec, keras.KerasTensor):
            raise ValueError(
                "Expected the decoder to output one tensor of likelihood parameters. "
                f"Received: {decoder_spec}"
            )
        decoder_output = _shape_tuple(decoder_spec.shape)
        per_subpixel = self.likelihood.parameters_per_subpixel
        expected = (*image_shape[:-1], image_shape[-1] * per_subpixel)
        if decoder_output[1:] != expected:
            raise ValueError(
                f"Expected the decoder to map z of shape (None, {latent_dim}) to parameters of "
                f"shape (None, {', '.join(map(str, expected))}): the encoder's input shape with "
                f"{per_subpixel} parameter(s) per channel for the "
                f"{type(self.likelihood).__name__}. Received: decoder output shape {decoder_output}"
            )
        return image_shape, latent_dim

    def _encoder_image_shape(self, encoder) -> tuple[int, ...]:
        """`(H, W, C)` from the encoder's input shape `(None, H, W, C)`."""
        return self._image_shape_from(_shape_tuple(_known_input_shape(encoder)))

    @staticmethod
    def _image_shape_from(encoder_input: tuple) -> tuple[int, ...]:
        """`(H, W, C)` from the encoder's image input shape `(None, H, W, C)`."""
        if len(encoder_input) < 2 or any(d is None for d in encoder_input[1:]):
            raise ValueError(
                "Expected the encoder's input shape to be (None, H, W, C) with known H, W, C. "
                f"Received: {encoder_input}"
            )
        return encoder_input[1:]

    def _encoder_input_spec(self, image_shape):
        """What the encoder is called on, as KerasTensors: the images `(None, H, W, C)`."""
        return keras.KerasTensor((None, *image_shape))

    def _decoder_input_spec(self, latent_dim):
        """What the decoder is called on, as KerasTensors: z `(None, latent_dim)`."""
        return keras.KerasTensor((None, latent_dim))

    def _call_input_shape(self):
        """The shape(s) the model is called on (`vae(images)`): `(None, H, W, C)`."""
        return (None, *self.image_shape)

    def _encoder_inputs(self, images):
        """What the encoder is called on for `images`: the images themselves."""
        return images

    def _decoder_inputs(self, z):
        """What the decoder is called on for `z`: z itself."""
        return z

    def _check_prior(self) -> None:
        if self.prior.uses_labels:
            raise ValueError(
                f"Expected a prior p(z) that does not depend on class labels for a "
                f"{type(self).__name__}; a class-conditional prior needs a tfvae.ConditionalVAE. "
                f"Received: prior={type(self.prior).__name__}"
            )

    def check_data(self, data, argument: str = "x", check_range: bool = True) -> None:
        """Raises ValueError unless `data` holds image batches this model can score.

        Args:
            data: a NumPy array, tensor, `tf.data.Dataset` (of images or `(images, ...)` tuples),
                or a tuple whose first element is one of those. Other inputs (generators,
                `keras.utils.PyDataset`) are passed through unchecked.
            argument: the name shown in the message (`x`, `validation_data`).
            check_range: also check the values against the likelihood's support. For a dataset
                this reads its first element.

        Raises:
            ValueError: a dict of arrays (or a dataset of dicts), no images at all (an empty
                array or dataset), wrong rank or shape, not a float dtype, or values outside
                the support.
            DataError: (a ValueError) an unreadable file behind the dataset's first element.
        """
        if isinstance(data, (list, tuple)) and data:
            data = data[0]
        if isinstance(data, dict):
            self._refuse_dict(sorted(data), argument, "a dict")
        if isinstance(data, tf.data.Dataset):
            spec = data.element_spec
            if isinstance(spec, (list, tuple)):
                spec = spec[0]
            if isinstance(spec, dict):
                self._refuse_dict(sorted(spec), argument, "a dataset of dicts")
            self._check_shape_and_dtype(_shape_tuple(spec.shape), spec.dtype, argument)
            if data.cardinality() == 0:
                self._refuse_empty(argument, "an empty dataset")
            if check_range:
                with translate_pipeline_errors():
                    first = next(iter(data.take(1)), None)
                if first is None:
                    self._refuse_empty(argument, "a dataset that yields nothing")
                if isinstance(first, (list, tuple)):
                    first = first[0]
                self._check_range(first, argument)
            return
        if isinstance(data, (np.ndarray, tf.Tensor)):
            self._check_shape_and_dtype(tuple(data.shape), tf.as_dtype(data.dtype), argument)
            if data.shape[0] == 0:
                self._refuse_empty(argument, f"an empty array of shape {tuple(data.shape)}")
            if check_range:
                self._check_range(data, argument)

    def _refuse_dict(self, keys, argument, received):
        raise ValueError(
            f"Expected {argument} to be image batches of shape (batch, "
            f"{', '.join(map(str, self.image_shape))}): an array, a tensor or a tf.data.Dataset "
            f"of them. Received {received} with keys {keys}: pass the images themselves, e.g. "
            "x['image'], or dataset.map(lambda d: d['image'])."
        )

    def _refuse_empty(self, argument, received):
        raise ValueError(
            f"Expected {argument} to hold at least one image of shape "
            f"({', '.join(map(str, self.image_shape))}). Received {received}."
        )

    def _check_shape_and_dtype(self, shape, dtype, argument):
        expected = (None, *self.image_shape)
        compatible = len(shape) == len(expected) and all(
            got is None or got == want for got, want in zip(shape[1:], expected[1:], strict=True)
        )
        if not compatible:
            raise ValueError(
                f"Expected {argument} to hold images of shape (batch, "
                f"{', '.join(map(str, self.image_shape))}) for this model. "
                f"Received: shape {shape}"
            )
        if not tf.as_dtype(dtype).is_floating:
            raise ValueError(
                f"Expected {argument} to be a float array ({self.likelihood.support_description} "
                f"for the {type(self.likelihood).__name__}). Received: dtype {tf.as_dtype(dtype).name}. "
                "Convert it, e.g. x.astype('float32') / 255 for 8-bit images, or load it with "
                "tfvae.data."
            )

    def _check_range(self, values, argument):
        values = tf.convert_to_tensor(values)
        x_min = float(tf.reduce_min(values))
        x_max = float(tf.reduce_max(values))
        if not (np.isfinite(x_min) and np.isfinite(x_max)):
            raise ValueError(f"Expected finite values in {argument}. Received NaN or inf.")
        try:
            self.likelihood.check_data(x_min, x_max)
        except ValueError as error:
            raise ValueError(f"In {argument}: {error}") from None

    # ------------------------------------------------------------------ the probabilistic model
    @property
    def latent_dims(self) -> tuple[int, ...]:
        """The sizes of the stochastic layers, `(latent_dim,)` here; z concatenates them."""
        return (self.latent_dim,)

    @property
    def prior_latent_dim(self) -> int:
        """The size of the latent the `prior` and `posterior` seams act on: `latent_dim` here,
        the top layer's in a hierarchical model."""
        return self.latent_dim

    @property
    def posterior_factorized(self) -> bool:
        """Whether q(z|x) is the diagonal Gaussian of `encode` (free bits and DReG need it)."""
        return self.posterior.factorized

    @property
    def posterior_description(self) -> str:
        """q(z|x) as error messages name it."""
        return type(self.posterior).__name__

    @property
    def beta(self) -> keras.Variable:
        """The KL weight: a non-trainable scalar float32 `keras.Variable` read by every step.

        `vae.beta.assign(0.3)` (or `vae.beta = 0.3`, which also checks the value) changes it for
        the next step, also inside a compiled `fit`, so a callback can anneal it;
        `float(vae.beta)` reads it. `beta_variable` is the same variable.
        """
        return self.beta_variable

    @beta.setter
    def beta(self, value: float):
        self.beta_variable.assign(_check_beta(value))

    def posterior_parameters(self, images, training: bool = False) -> PosteriorParameters:
        """The encoder's outputs for `images`: `loc`, `raw_scale` `[B, D]` and `context` `[B, H]`
        (None without one), what `posterior.sample` takes."""
        outputs = self.encoder(self._encoder_inputs(images), training=training)
        if isinstance(outputs, (list, tuple)):
            return PosteriorParameters(*outputs)
        context_units = self.posterior.context_units
        if not context_units:
            return PosteriorParameters(*tf.split(outputs, 2, axis=-1))
        loc, raw_scale, context = tf.split(
            outputs, [self.latent_dim, self.latent_dim, context_units], axis=-1
        )
        return PosteriorParameters(loc, raw_scale, context)

    def _refuse_labels(self, labels, method: str) -> None:
        """Raises ValueError for labels given to a model that does not condition on them."""
        if labels is not None:
            raise ValueError(
                f"Expected no labels in {method}() of an unconditional {type(self).__name__}; "
                "build a tfvae.ConditionalVAE (e.g. tfvae.build_conv_vae(..., num_classes=10)) "
                f"to condition on classes. Received: labels of type {type(labels).__name__}"
            )

    def encode(self, images, labels=None, training: bool = False):
        """Returns the posterior's base Gaussian N(loc, scale), batch `[B]`, event `[latent_dim]`.

        For the diagonal Gaussian posterior (the default) this is q(z|x) itself. For a flow
        (`iaf`) it is the distribution z_0 is drawn from before the flow steps, not q(z|x): use
        `posterior_sample` for samples of q(z|x) with their log-densities.

        Raises:
            ValueError: labels given (this model is not conditional; see `ConditionalVAE`).
        """
        self._refuse_labels(labels, "encode")
        return self.posterior.base_distribution(self.posterior_parameters(images, training))

    def posterior_sample(self, images, num_samples: int = 1, seed=None, training: bool = False):
        """Draws K reparameterized z ~ q(z|x) per image with their exact log q(z|x).

        Args:
            images: `[B, H, W, C]` float images.
            num_samples: int >= 1. K.
            seed: None (the model's SeedGenerator advances) or a stateless seed, an int32 or
                int64 tensor of shape `[2]` (the same seed gives the same z).
            training: bool. Passed to the encoder.

        Returns:
            `(z, log_q)`: float32 `[K, B, D]` and `[K, B]`.
        """
        shape = tf.stack([num_samples, tf.shape(images)[0], self.latent_dim])
        if seed is None:
            noise = self.draw_noise(shape)
        else:
            noise = tf.random.stateless_normal(shape, seed=seed)
        z, log_q, _ = self.sample_latents(images, noise, training)
        return z, log_q

    def sample_latents(self, images, noise, training: bool = False):
        """Reparameterized z ~ q(z|x) from given standard normal noise, with log q(z|x).

        The one place where the objectives, `posterior_sample` and the export draw z.

        Args:
            images: `[B, H, W, C]` float images.
            noise: standard normal `[..., B, latent_dim]` (leading axes draw several z per image).
            training: bool. Passed to the encoder.

        Returns:
            `(z, log_q, posterior)`: float32 `[..., B, D]` and `[..., B]`, and q(z|x) as a TFP
            distribution (batch `[B]`, event `[D]`) when it is one (the diagonal Gaussian: the
            KL is analytic), else None (the KL is the Monte-Carlo estimate at z).
        """
        parameters = self.posterior_parameters(images, training)
        z, log_q = self.posterior.sample(parameters, noise)
        return z, log_q, self.posterior.distribution(parameters)

    def encode_base(self, images, training: bool = False):
        """Returns the encoder's diagonal Gaussian for `images`, batch `[B]`, event `[latent_dim]`.

        The components of the VampPrior: q(z|x) itself for the diagonal Gaussian posterior, the
        Gaussian before the flow steps for `iaf` (a flow component would need an inverse pass
        per z). The same as `encode`.
        """
        return self.encode(images, training=training)

    def decode(self, z, labels=None, training: bool = False):
        """Returns p(x|z): a TFP distribution with batch shape `[B]`, event shape `image_shape`.

        Raises:
            ValueError: labels given (this model is not conditional; see `ConditionalVAE`).
        """
        self._refuse_labels(labels, "decode")
        return self.likelihood.distribution(self.decoder_parameters(z, training=training))

    def decoder_parameters(self, z, training: bool = False):
        """The likelihood's parameters `[B, H, W, C * P]` for z `[B, latent_dim]`."""
        return self.decoding_network()(self._decoder_inputs(z), training=training)

    def decoding_network(self):
        """The decoder network that decodes now: `decoder`, or its bfloat16 copy while an
        `importance_weighted_nll(..., decode_precision="bfloat16")` step is traced."""
        held = self._evaluation_decoder
        return held.copy if held.active else self.decoder

    def _prepare_decode_precision(self, decode_precision: str) -> bool:
        """Builds (once) and refreshes the bfloat16 decoder copy; True when it is to be used."""
        if check_decode_precision(decode_precision) == "float32":
            return False
        held = self._evaluation_decoder
        if held.copy is None:  # a view: it reads the decoder's current variables at each call
            held.copy = bfloat16_copy(self.decoder)
        return True

    @contextlib.contextmanager
    def _decoding_in_bfloat16(self, bfloat16: bool):
        """While tracing an evaluation step, `decoding_network` is the bfloat16 copy if asked."""
        held = self._evaluation_decoder
        previous, held.active = held.active, bool(bfloat16)
        try:
            yield
        finally:
            held.active = previous

    def prior_distribution(self):
        """Returns p(z), event shape `[latent_dim]`.

        A prior built from the encoder (the VampPrior) encodes its pseudo-inputs here, with the
        current weights; inside `evaluate` and `importance_weighted_nll` it reuses the
        components computed once at the start of the call (`_evaluation_prior`).
        """
        if self._use_evaluation_prior:
            return self.prior.evaluation_distribution(self.prior_latent_dim)
        if self.prior.uses_encoder:
            return self.prior.distribution(self.prior_latent_dim, encode=self.encode_base)
        return self.prior.distribution(self.prior_latent_dim)

    def _prepare_evaluation_prior(self):
        """Computes the prior's encoder-dependent parts once, for one evaluation call."""
        if self.prior.uses_encoder:
            self.prior.prepare_evaluation(self.prior_latent_dim, encode=self.encode_base)

    @contextlib.contextmanager
    def _evaluation_prior(self):
        """While tracing an evaluation step, `prior_distribution` reads the prepared prior."""
        previous = self._use_evaluation_prior
        self._use_evaluation_prior = True
        try:
            yield
        finally:
            self._use_evaluation_prior = previous

    def draw_noise(self, shape):
        """Standard normal noise for the reparameterization, from the model's SeedGenerator.

        Under a `tf.distribute` strategy with several replicas the generator's state is mirrored,
        so every replica would draw the same numbers for its part of the batch; the replica's id
        is folded into the seed to make the replicas' draws independent.
        """
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return keras.random.normal(shape, dtype="float32", seed=self.seed_generator)
        seed = tf.random.experimental.stateless_fold_in(
            self.seed_generator.next(), context.replica_id_in_sync_group
        )
        return tf.random.stateless_normal(shape, seed=seed, dtype=tf.float32)

    def compute_elbo_terms(self, images, training: bool = False) -> dict:
        """Per-example ELBO terms with one reparameterized sample of z per image.

        Args:
            images: `[B, H, W, C]` float images.
            training: bool. Passed to the encoder and decoder.

        Returns:
            The dict of `tfvae.objectives.elbo_terms`: `reconstruction`, `kl`, `elbo`,
            `objective`, each `[B]` float32.
        """
        noise = self.draw_noise(tf.stack([tf.shape(images)[0], self.latent_dim]))
        z, log_q, posterior = self.sample_latents(images, noise, training)
        likelihood = self.decode(z, training=training)
        return elbo_terms(
            images, likelihood, posterior, self.prior_distribution(), z, self.beta_variable, log_q
        )

    def posterior_point(self, images, training: bool = False):
        """A deterministic z per image, `[B, latent_dim]`: the posterior's sample at zero noise
        (its mean for the diagonal Gaussian, the flow applied to the base mean for `iaf`)."""
        return self.posterior.point(self.posterior_parameters(images, training))

    def call(self, inputs, training=False):
        z = self.posterior_point(inputs, training)
        return self.likelihood.mean(self.decoder_parameters(z, training=training))

    def reconstruct(self, images, labels=None, sample_latent: bool = False):
        """Returns the mean of p(x|z) for z the posterior's point (or a posterior sample).

        The point is the sample at zero noise: the posterior mean for the diagonal Gaussian, the
        flow applied to the base mean for `iaf`.

        Args:
            images: `[B, H, W, C]` float images.
            labels: None. Only a `ConditionalVAE` takes labels.
            sample_latent: bool. Decode a sample of q(z|x) instead of its mean.

        Returns:
            Reconstructed images `[B, H, W, C]`.

        Raises:
            ValueError: labels given.
        """
        self._refuse_labels(labels, "reconstruct")
        if not sample_latent:
            return self(images, training=False)
        z, _ = self.posterior_sample(images)
        return self.likelihood.mean(self.decoder_parameters(z[0], training=False))

    def sample(self, num_samples: int, seed: int | None = None, labels=None):
        """Draws z from the prior and returns the mean images of p(x|z), `[n, H, W, C]`.

        Args:
            num_samples: int >= 1.
            seed: int or None. With an int, the same seed gives the same images; with None the
                model's SeedGenerator advances.
            labels: None. Only a `ConditionalVAE` takes labels.

        Raises:
            ValueError: num_samples < 1, or labels given.
        """
        self._refuse_labels(labels, "sample")
        num_samples = _check_num_samples(num_samples)
        z = self._draw_prior(num_samples, self._sampling_seed(seed))
        return self.likelihood.mean(self.decoder_parameters(z, training=False))

    def _draw_prior(self, num_samples: int, seed):
        """`num_samples` draws of z ~ p(z), `[n, D]`, from the stateless `seed`."""
        return self.prior_distribution().sample(num_samples, seed=seed)

    def _sampling_seed(self, seed: int | None):
        """A stateless seed (int32 `[2]`, as TFP takes it) from `seed`, or from the model's
        SeedGenerator (which advances) when `seed` is None."""
        generator = self.seed_generator if seed is None else keras.random.SeedGenerator(seed)
        return keras.random.randint((2,), 0, 2**31 - 1, dtype="int32", seed=generator)

    # ------------------------------------------------------------------ evaluation
    @tf.function(reduce_retracing=True)
    def _chunk_log_weights(self, images, seed, num_samples, labels=None, bfloat16=False):
        # `bfloat16` is a Python bool: each value has its own trace.
        with self._decoding_in_bfloat16(bfloat16):
            return self._log_importance_weights(images, seed, num_samples, labels)

    def _log_importance_weights(self, images, seed, num_samples, labels=None):
        """log w `[K, B]` of K importance samples per image (`labels`: None, or a
        `ConditionalVAE`'s one-hot labels `[B, C]`)."""
        del labels
        z, log_q = self.posterior_sample(images, num_samples, seed)
        with self._evaluation_prior():
            prior = self.prior_distribution()
        return log_importance_weights(
            images, None, prior, lambda flat_z: self.decode(flat_z), z, log_q
        )

    def _batch_labels(self, batch):
        """The labels a batch of `importance_weighted_nll` is scored under: None (unconditional)."""
        del batch
        return None

    def importance_weighted_nll(
        self,
        data,
        num_samples: int = 1000,
        batch_size: int = 100,
        max_decodes: int = 20000,
        seed: int = 0,
        verbose: bool = False,
        decode_precision: str = "float32",
    ) -> np.ndarray:
        """Estimates -log p(x) per example with K importance samples (Burda et al., 2015).

        -log p(x) ~= -log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x). With K = 1 this is an
        unbiased estimate of -ELBO; it never exceeds -ELBO on average and falls towards
        -log p(x) as K grows. Memory stays bounded: at most `max_decodes` images are decoded at
        once (K is split into chunks, combined exactly with a running logsumexp).

        Args:
            data: images `[N, H, W, C]` (array or tensor) or a `tf.data.Dataset` of image batches
                (or of `(images, ...)` tuples).
            num_samples: int >= 1. K, the number of importance samples per example.
            batch_size: int >= 1. Examples per batch when `data` is an array.
            max_decodes: int >= 1. Upper bound on K-chunk x batch x P decoded at once, P the
                likelihood's parameters per sub-pixel (a 256-way categorical counts 256 per
                image), so memory stays bounded whatever the likelihood.
            seed: int. Seed of the stateless noise: the same seed gives the same estimate.
            verbose: bool. Show a Keras progress bar over the batches.
            decode_precision: "float32" (default) or "bfloat16": decode the samples with a view
                of the decoder computing every layer in bfloat16 (`tfvae.models.precision`; its
                output cast to float32; the likelihood's log-probabilities, prior, posterior and
                the importance weights stay float32). Much faster on CPUs with AMX or
                AVX512-BF16; it moves the estimate by the rounding (`benchmarks/eval_throughput.py`
                measures both).

        Returns:
            float64 array `[N]` of -log p(x) estimates in nats (take `.mean()` for the data set).

        Raises:
            ValueError: num_samples, batch_size or max_decodes < 1, an unknown decode_precision,
                or data this model cannot score.
        """
        for name, value in (("num_samples", num_samples), ("batch_size", batch_size), ("max_decodes", max_decodes)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"Expected {name} to be an integer >= 1. Received: {name}={value!r}")
        bfloat16 = self._prepare_decode_precision(decode_precision)
        self.check_data(data, "data")
        if not isinstance(data, tf.data.Dataset):
            data = tf.data.Dataset.from_tensor_slices(data).batch(batch_size)
        self._prepare_evaluation_prior()
        # log p(z) of a mixture prior holds a float64 `[samples, components]` table (see
        # `DiagonalGaussianMixture`): counted in image-sized units against max_decodes, beside
        # the decoded parameters (a single Gaussian's log p(z) is negligible beside a decode).
        components = self.prior.components
        prior_width = -(-2 * components // int(np.prod(self.image_shape))) if components > 1 else 0
        total = data.cardinality().numpy()
        progress = keras.utils.Progbar(total if total >= 0 else None) if verbose else None
        results = []
        for step, batch in enumerate(data):
            images = batch[0] if isinstance(batch, (list, tuple)) else batch
            images = tf.cast(images, tf.float32)
            labels = self._batch_labels(batch)
            per_image = max(1, int(images.shape[0])) * (
                self.likelihood.parameters_per_subpixel + prior_width
            )
            chunk = max(1, min(int(num_samples), max_decodes // per_image))
            # log sum_k w_k of each chunk; their logsumexp is the exact total.
            chunk_sums = []
            for start in range(0, num_samples, chunk):
                count = min(chunk, num_samples - start)
                chunk_seed = tf.constant([seed, step * 1_000_003 + start], tf.int64)
                log_weights = self._chunk_log_weights(images, chunk_seed, tf.constant(count), labels, bfloat16)
                chunk_sums.append(tf.reduce_logsumexp(log_weights, axis=0))
            log_likelihood = tf.reduce_logsumexp(tf.stack(chunk_sums), axis=0) - np.log(num_samples)
            results.append(-log_likelihood.numpy().astype(np.float64))
            if progress is not None:
                progress.update(step + 1)
        return np.concatenate(results)

    # ------------------------------------------------------------------ training
    @property
    def metrics(self):
        return [self.loss_tracker, self.elbo_tracker, self.reconstruction_tracker, self.kl_tracker]

    def compile(self, optimizer="adam", **kwargs):
        """Configures the optimizer; the loss is always the model's `objective`, negated.

        Args:
            optimizer: a Keras optimizer or its name. Default Adam (learning rate 1e-3).
            **kwargs: other `keras.Model.compile` arguments (`jit_compile`, `steps_per_execution`,
                `run_eagerly`, ...).

        Raises:
            ValueError: `loss`, `metrics`, `weighted_metrics` or `loss_weights` given: the VAE
                computes and reports its own.
        """
        for argument in ("loss", "metrics", "weighted_metrics", "loss_weights"):
            if kwargs.get(argument) is not None:
                raise ValueError(
                    f"tfvae.VAE computes its own loss (-ELBO) and metrics {list(METRIC_NAMES)}; "
                    f"compile it with an optimizer only. Received: {argument}={kwargs[argument]!r}"
                )
        super().compile(optimizer=optimizer, **kwargs)

    def compile_from_config(self, config):
        # Keras skips models that override compile(); ours takes the same arguments, so the
        # optimizer (and its state, loaded after this) comes back with a saved model.
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        self.optimizer.build(self.trainable_variables)

    def _kl_weight(self, write: bool):
        """The beta of this step (None for objectives without one); with `write`, a scheduled
        beta is stored in the `beta` variable, which logs and callbacks read."""
        beta = self.objective.kl_weight(self.optimizer.iterations, self.beta_variable)
        if write and beta is not None and self.objective.writes_kl_weight():
            self.beta_variable.assign(beta)
        return beta

    def _loss_and_metrics(self, images, sample_weight, training, beta):
        """Returns `(loss_sum, batch_size, regularization, terms)` for this replica's batch.

        `loss_sum` sums the per-example losses (times `sample_weight`) and `batch_size` counts the
        examples: as Keras's "sum_over_batch_size", weights scale examples, the batch size divides.
        """
        per_example_loss, terms = self.objective(self, images, beta, training)
        if sample_weight is not None:
            weights = tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
            per_example_loss = per_example_loss * weights
        batch_size = tf.cast(tf.size(per_example_loss), tf.float32)
        regularization = tf.cast(tf.add_n(self.losses), tf.float32) if self.losses else 0.0
        return tf.reduce_sum(per_example_loss), batch_size, regularization, terms

    def _update_metrics(self, loss, terms, sample_weight):
        batch_size = tf.shape(terms["elbo"])[0]
        self.loss_tracker.update_state(loss, sample_weight=batch_size)
        self.elbo_tracker.update_state(terms["elbo"], sample_weight=sample_weight)
        self.reconstruction_tracker.update_state(terms["reconstruction"], sample_weight=sample_weight)
        self.kl_tracker.update_state(terms["kl"], sample_weight=sample_weight)
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return {metric.name: metric.result() for metric in self.metrics}
        # Each replica holds the running totals of its own examples: summed over the replicas
        # they give the means over the global batch (the mean of the replicas' means, which Keras
        # would report, is off when the replicas got batches of different sizes).
        totals, counts = context.all_reduce(
            "sum",
            [
                tf.stack([tf.convert_to_tensor(metric.total) for metric in self.metrics]),
                tf.stack([tf.convert_to_tensor(metric.count) for metric in self.metrics]),
            ],
        )
        means = tf.math.divide_no_nan(totals, counts)
        return {metric.name: means[index] for index, metric in enumerate(self.metrics)}

    def train_step(self, data):
        images, _, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        beta = self._kl_weight(write=True)
        with tf.GradientTape() as tape:
            loss_sum, batch_size, regularization, terms = self._loss_and_metrics(
                images, sample_weight, training=True, beta=beta
            )
            # The gradients are summed over the replicas, so each replica contributes its loss
            # sum over the *global* batch size (and 1/N of the regularization): the gradient is
            # that of the global batch's mean loss, even when the replicas got batches of
            # different sizes. With equal parts this is Keras's per-replica mean / N.
            context = tf.distribute.get_replica_context()
            if context is None:  # called outside strategy.run: this batch is the global one
                global_batch_size, num_replicas = batch_size, 1
            else:
                global_batch_size = context.all_reduce("sum", batch_size)
                num_replicas = context.num_replicas_in_sync
            gradient_loss = (
                tf.math.divide_no_nan(loss_sum, global_batch_size) + regularization / num_replicas
            )
            gradient_loss = self.optimizer.scale_loss(gradient_loss)
        gradients = tape.gradient(gradient_loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables, strict=True))
        loss = tf.math.divide_no_nan(loss_sum, batch_size) + regularization
        logs = self._update_metrics(loss, terms, sample_weight)
        if beta is not None:
            logs["beta"] = tf.identity(beta)
        return logs

    def test_step(self, data):
        images, _, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        # `evaluate` prepared the prior's components once for all its batches.
        with self._evaluation_prior():
            loss_sum, batch_size, regularization, terms = self._loss_and_metrics(
                images, sample_weight, training=False, beta=self._kl_weight(write=False)
            )
        loss = tf.math.divide_no_nan(loss_sum, batch_size) + regularization
        return self._update_metrics(loss, terms, sample_weight)

    def fit(self, x=None, y=None, *args, validation_data=None, **kwargs):
        """`keras.Model.fit`, after checking `x` and `validation_data` (see `check_data`)."""
        self.check_data(x, "x")
        if validation_data is not None:
            self.check_data(validation_data, "validation_data")
        if isinstance(x, tf.data.Dataset) and not args:
            # Keras ignores `shuffle` for datasets (they shuffle themselves) but warns on every
            # fit when it is left at its default, True.
            kwargs.setdefault("shuffle", False)
        return super().fit(x, y, *args, validation_data=validation_data, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.evaluate`, after checking `x` (see `check_data`)."""
        # fit() calls evaluate() for its validation data every epoch; fit checked it already.
        if not kwargs.get("_use_cached_eval_dataset"):
            self.check_data(x, "x")
        self._prepare_evaluation_prior()
        return super().evaluate(x, y, *args, **kwargs)

    def test_on_batch(self, *args, **kwargs):
        """`keras.Model.test_on_batch`, with the prior's components prepared for this batch."""
        self._prepare_evaluation_prior()
        return super().test_on_batch(*args, **kwargs)

    # ------------------------------------------------------------------ serialization
    def get_config(self):
        config = super().get_config()
        config.update(
            encoder=keras.saving.serialize_keras_object(self.encoder),
            decoder=keras.saving.serialize_keras_object(self.decoder),
            likelihood=keras.saving.serialize_keras_object(self.likelihood),
            prior=keras.saving.serialize_keras_object(self.prior),
            posterior=keras.saving.serialize_keras_object(self.posterior),
            objective=keras.saving.serialize_keras_object(self.objective),
            seed=self.seed,
        )
        return config

    #: The constructor arguments serialized as nested Keras objects (a subclass adds its own).
    _SERIALIZED_PARTS = ("encoder", "decoder", "likelihood", "prior", "posterior", "objective")

    @classmethod
    def from_config(cls, config):
        # Keras's deserialization consumes nested dicts; keep the caller's config intact.
        config = copy.deepcopy(config)
        for key in cls._SERIALIZED_PARTS:
            if isinstance(config.get(key), dict):
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def build_conv_vae(
    image_shape: Sequence[int],
    latent_dim: int,
    filters: Sequence[int] = (32, 64),
    kernel_size: int = 3,
    hidden_units: int | None = None,
    likelihood="bernoulli",
    prior="standard_normal",
    beta: float | None = None,
    seed: int | None = None,
    name: str = "vae",
    objective=None,
    posterior="diagonal_gaussian",
    num_classes: int | None = None,
    class_prior="standard_normal",
) -> VAE:
    """Builds a `VAE` from `build_conv_encoder` and its mirror image `build_conv_decoder`.

    With `num_classes`, a `tfvae.ConditionalVAE`: the encoder sees the one-hot label as constant
    extra channels of the image, the decoder gets it concatenated to z.

    Args:
        image_shape: `(H, W, C)`; H and W divisible by `2**len(filters)`.
        latent_dim: int >= 1. The size of z.
        filters: the encoder's Conv2D channels; the decoder uses them reversed.
        kernel_size, hidden_units: see `build_conv_encoder`.
        likelihood, prior, beta, seed, objective, posterior: see `VAE`. The decoder's last
            layer gets the likelihood's `parameters_per_subpixel` outputs per channel; the
            encoder a context output when the posterior takes one (`context_units`).
        name: the model's name.
        num_classes: None, or int >= 2 for a `tfvae.ConditionalVAE` over that many classes.
        class_prior: "standard_normal" (p(z|y) = N(0, I)) or "learned" (a learned Gaussian per
            class); see `ConditionalVAE`. Only with `num_classes`.

    Returns:
        A built, uncompiled `tfvae.VAE` (a `tfvae.ConditionalVAE` with `num_classes`).

    Raises:
        ValueError: see `build_conv_encoder`, `build_conv_decoder`, `VAE` and `ConditionalVAE`;
            a class_prior other than "standard_normal" without num_classes.
    """
    num_classes = check_num_classes(num_classes, allow_none=True)
    if num_classes is None and class_prior != "standard_normal":
        raise ValueError(
            "Expected class_prior only with num_classes (a conditional model). "
            f"Received: class_prior={class_prior!r} and num_classes=None"
        )
    filters = tuple(filters)
    likelihood = get_likelihood(likelihood)
    posterior = get_posterior(posterior)
    encoder = build_conv_encoder(
        image_shape, latent_dim, filters, kernel_size, hidden_units,
        context_units=posterior.context_units, num_classes=num_classes,
    )
    decoder = build_conv_decoder(
        latent_dim, image_shape, filters[::-1], kernel_size, hidden_units,
        parameters_per_subpixel=likelihood.parameters_per_subpixel, num_classes=num_classes,
    )
    if num_classes is not None:
        from tfvae.models.conditional import ConditionalVAE  # noqa: PLC0415 (it imports this module)

        return ConditionalVAE(
            encoder, decoder, num_classes, likelihood=likelihood, prior=prior,
            class_prior=class_prior, beta=beta, seed=seed, name=name, objective=objective,
            posterior=posterior,
        )
    return VAE(
        encoder, decoder, likelihood=likelihood, prior=prior, beta=beta, seed=seed, name=name,
        objective=objective, posterior=posterior,
    )
