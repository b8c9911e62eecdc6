"""`tfvae.ConditionalVAE`: a VAE conditioned on a class label, q(z|x, y), p(x|z, y), p(z|y).

The conditional VAE of Sohn et al. (2015) (the M1/M2 family of Kingma et al., 2014), built on the
seams and the one train step of `tfvae.VAE`: the labels of a call (or of a training step) are
held while the VAE's code runs, and the encoder, decoder and prior read them from there.
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import tensorflow as tf

from tfvae.distributions import ClassGaussianPrior, StandardNormalPrior, get_prior
from tfvae.models.vae import VAE, _check_num_samples, _known_input_shape, _shape_tuple
from tfvae.models.validation import check_num_classes

#: The names of `class_prior`.
CLASS_PRIORS = ("standard_normal", "learned")


def _label_spec_error(argument: str, num_classes: int, received: str) -> ValueError:
    return ValueError(
        f"Expected {argument} as integer class ids of shape (batch,) in [0, {num_classes}) or "
        f"one-hot rows of shape (batch, {num_classes}). Received: {received}"
    )


def check_label_spec(shape, dtype, num_classes: int, argument: str = "labels") -> None:
    """Raises ValueError unless `shape` and `dtype` are those of labels of `num_classes` classes.

    Args:
        shape: tuple, the labels' shape (None for unknown sizes).
        dtype: the labels' dtype.
        num_classes: int. C.
        argument: the name shown in the message.

    Raises:
        ValueError: rank other than 1 or 2; `[B]` labels that are not integers (float class ids
            are refused, not rounded); `[B, K]` rows with K != C or a non-numeric dtype.
    """
    dtype = tf.as_dtype(dtype)
    received = f"{dtype.name} {argument} of shape {tuple(shape)}"
    if len(shape) == 1:
        if not dtype.is_integer:
            hint = "; cast class ids with labels.astype('int64')" if dtype.is_floating else ""
            raise _label_spec_error(argument, num_classes, received + hint)
    elif len(shape) == 2:
        if shape[1] != num_classes or not (dtype.is_integer or dtype.is_floating or dtype.is_bool):
            raise _label_spec_error(argument, num_classes, received)
    else:
        raise _label_spec_error(argument, num_classes, received)


def one_hot_labels(labels, num_classes: int, batch_size: int | None = None, argument: str = "labels"):
    """Returns `labels` as float32 one-hot rows `[B, num_classes]`, after checking them.

    Values are checked when they are known (NumPy arrays, eager tensors); inside a traced
    function only shapes and dtypes are (`fit` and `evaluate` check the data's values first).

    Args:
        labels: integer class ids `[B]` or one-hot rows `[B, num_classes]` (array, list or tensor).
        num_classes: int. C.
        batch_size: None or int. The number of images the labels go with.
        argument: the name shown in the message.

    Returns:
        float32 tensor `[B, num_classes]`.

    Raises:
        ValueError: see `check_label_spec`; ids outside [0, C); rows that are not one-hot; a
            batch size other than `batch_size`.
    """
    if labels is None:
        raise _label_spec_error(argument, num_classes, f"{argument}=None")
    if not tf.is_tensor(labels):
        labels = np.asarray(labels)
        if labels.dtype == object or labels.dtype.kind in "US":
            raise _label_spec_error(argument, num_classes, f"{argument} of dtype {labels.dtype}")
    shape = _shape_tuple(labels.shape)
    check_label_spec(shape, labels.dtype, num_classes, argument)
    if batch_size is not None and shape[0] is not None and shape[0] != int(batch_size):
        raise ValueError(
            f"Expected one label per image: {int(batch_size)} {argument}. Received: {argument} of "
            f"shape {shape}"
        )
    if isinstance(labels, np.ndarray) or tf.executing_eagerly():
        values = np.asarray(labels)
        if values.ndim == 1 and values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"Expected {argument} in [0, {num_classes}) for {num_classes} classes. "
                f"Received: values from {values.min()} to {values.max()}"
            )
        if values.ndim == 2:
            values = values.astype(np.float64)
            one_hot = np.isin(values, (0.0, 1.0)).all() and np.all(values.sum(axis=1) == 1)
            if not one_hot:
                raise ValueError(
                    f"Expected {argument} of shape (batch, {num_classes}) to be one-hot rows "
                    "(one 1, zeros elsewhere). Received: rows that are not"
                )
    labels = tf.convert_to_tensor(labels)
    if len(shape) == 1:
        return tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=tf.float32)
    return tf.cast(labels, tf.float32)


def _labels_for_all(labels, count: int):
    """An int class for all `count` samples as `[count]` ids; other labels unchanged."""
    if isinstance(labels, (int, np.integer)) and not isinstance(labels, bool):
        return np.full([count], int(labels), np.int64)
    return labels


@keras.saving.register_keras_serializable(package="tfvae")
class ConditionalVAE(VAE):
    """A VAE conditioned on a class label y (Sohn et al., 2015), trained with `fit(x, y)`.

    The encoder gives q(z|x, y), the decoder p(x|z, y), the prior is p(z|y): N(0, I) for every
    class (`class_prior="standard_normal"`, the default) or a learned Gaussian per class
    (`"learned"`, `tfvae.distributions.ClassGaussianPrior`). Training maximizes the same
    objective as `tfvae.VAE` (ELBO, beta, schedules, free bits, IWAE), given y; the metrics are
    the same.

    Labels are integer class ids `[B]` or one-hot rows `[B, num_classes]`. `fit` and `evaluate`
    take them as `y` (`fit(images, labels)`) or inside a `tf.data.Dataset` of `(images, labels)`
    (or `(images, labels, sample_weight)`); every method that encodes or decodes takes them as
    its `labels` argument.

    Args:
        encoder: keras.Model. Maps `[images [B, H, W, C], labels [B, C]]` (one-hot) to the
            posterior's parameters, as `tfvae.VAE`'s encoder (`build_conv_encoder(...,
            num_classes=C)`).
        decoder: keras.Model. Maps `[z [B, D], labels [B, C]]` to the likelihood's parameters
            (`build_conv_decoder(..., num_classes=C)`).
        num_classes: int >= 2. C.
        likelihood, posterior, beta, objective, seed: see `tfvae.VAE`.
        prior: str or `tfvae.distributions.Prior`. p(z) shared by every class when class_prior is
            "standard_normal" (default N(0, I); a prior built from the encoder, the VampPrior, is
            refused), or a class-conditional prior instance (`ClassGaussianPrior`).
        class_prior: "standard_normal" or "learned" (a `ClassGaussianPrior` of num_classes).
        **kwargs: passed to `keras.Model`.

    Call arguments:
        inputs: `[images, labels]`.
        training: bool.

    Raises:
        ValueError: parts that do not take `[images, labels]` / `[z, labels]` of num_classes;
            num_classes < 2; an unknown class_prior, or "learned" with another prior; and what
            `tfvae.VAE` raises. Calls without labels, or with bad ones, raise ValueError.

    Example:

    >>> import numpy as np, tfvae
    >>> vae = tfvae.build_conv_vae((8, 8, 1), latent_dim=2, filters=(8,), num_classes=3)
    >>> vae.compile(optimizer="adam")
    >>> images = np.random.rand(32, 8, 8, 1).astype("float32")
    >>> history = vae.fit(images, np.arange(32) % 3, epochs=1, verbose=0)
    >>> vae.sample(4, labels=2, seed=0).shape
    TensorShape([4, 8, 8, 1])
    """

    def __init__(
        self,
        encoder,
        decoder,
        num_classes: int,
        likelihood="bernoulli",
        prior="standard_normal",
        class_prior="standard_normal",
        beta: float | None = None,
        seed: int | None = None,
        objective=None,
        posterior="diagonal_gaussian",
        **kwargs,
    ):
        self.num_classes = check_num_classes(num_classes)
        # The one-hot labels `[B, C]` of the current call or training step (see `conditioned_on`).
        self._condition = None
        super().__init__(
            encoder, decoder, likelihood=likelihood,
            prior=self._resolve_class_prior(prior, class_prior), beta=beta, seed=seed,
            objective=objective, posterior=posterior, **kwargs,
        )

    def _resolve_class_prior(self, prior, class_prior):
        if class_prior not in CLASS_PRIORS:
            raise ValueError(
                f"Expected class_prior in {list(CLASS_PRIORS)}. Received: class_prior={class_prior!r}"
            )
        prior = get_prior(prior)
        if class_prior == "learned" and not prior.uses_labels:
            if type(prior) is not StandardNormalPrior:
                raise ValueError(
                    "Expected class_prior='learned' with the default prior (it replaces p(z) by a "
                    f"learned Gaussian per class). Received: prior={type(prior).__name__}"
                )
            prior = ClassGaussianPrior(self.num_classes)
        return prior

    def _check_prior(self):
        if self.prior.uses_encoder:
            raise ValueError(
                "Expected a prior that does not encode pseudo-inputs for a ConditionalVAE (its "
                f"encoder also needs labels). Received: prior={type(self.prior).__name__}"
            )
        prior_classes = getattr(self.prior, "num_classes", self.num_classes)
        if self.prior.uses_labels and prior_classes != self.num_classes:
            raise ValueError(
                f"Expected a class prior over the model's {self.num_classes} classes. "
                f"Received: a prior over {prior_classes}"
            )

    # ------------------------------------------------------------------ checks of the parts
    def _encoder_image_shape(self, encoder):
        shapes = _known_input_shape(encoder)
        if not (isinstance(shapes, (list, tuple)) and len(shapes) == 2
                and isinstance(shapes[0], (list, tuple))
                and _shape_tuple(shapes[1]) == (None, self.num_classes)):
            raise ValueError(
                "Expected a conditional encoder taking [images, labels] of shapes "
                f"[(None, H, W, C), (None, {self.num_classes})]. Received: input shape {shapes}"
            )
        return self._image_shape_from(_shape_tuple(shapes[0]))

    def _encoder_input_spec(self, image_shape):
        return [keras.KerasTensor((None, *image_shape)), keras.KerasTensor((None, self.num_classes))]

    def _decoder_input_spec(self, latent_dim):
        return [keras.KerasTensor((None, latent_dim)), keras.KerasTensor((None, self.num_classes))]

    def _call_input_shape(self):
        # `vae([images, labels])`, labels one-hot: the SavedModel's default signature.
        return [(None, *self.image_shape), (None, self.num_classes)]

    def _check_parts(self, encoder, decoder):
        shapes = getattr(decoder, "input_shape", None) if isinstance(decoder, keras.Model) else None
        if shapes is not None and not (
            isinstance(shapes, (list, tuple)) and len(shapes) == 2
            and isinstance(shapes[1], (list, tuple))
            and _shape_tuple(shapes[1]) == (None, self.num_classes)
        ):
            raise ValueError(
                "Expected a conditional decoder taking [z, labels] of shapes [(None, latent_dim), "
                f"(None, {self.num_classes})]. Received: input shape {shapes}"
            )
        return super()._check_parts(encoder, decoder)

    # ------------------------------------------------------------------ labels
    def one_hot(self, labels, batch_size: int | None = None, argument: str = "labels"):
        """`labels` (ids `[B]` or one-hot `[B, C]`) as float32 one-hot rows; see `one_hot_labels`."""
        return one_hot_labels(labels, self.num_classes, batch_size, argument)

    @contextlib.contextmanager
    def conditioned_on(self, labels):
        """While open, the encoder, decoder and prior see `labels` (one-hot `[B, C]`, checked).

        The VAE's methods called inside (`posterior_parameters`, `decode`, `prior_distribution`,
        the objective) take them when they get no labels of their own. None keeps the labels
        already held.
        """
        previous = self._condition
        if labels is not None:
            self._condition = labels
        try:
            yield
        finally:
            self._condition = previous

    def _given(self, labels, batch, method: str):
        """`conditioned_on` the checked `labels` of a call on `batch` (images or z, or their
        count); without labels, those of the step being traced, or a ValueError outside one."""
        if labels is None:
            if self._condition is None:
                raise ValueError(
                    f"Expected labels in {method}() of a ConditionalVAE over {self.num_classes} "
                    "classes: integer ids (batch,) or one-hot rows (batch, num_classes). "
                    "Received: labels=None"
                )
            return self.conditioned_on(None)
        batch_size = batch if isinstance(batch, int) else _shape_tuple(batch.shape)[0]
        return self.conditioned_on(self.one_hot(labels, batch_size))

    def _encoder_inputs(self, images):
        # Keras refuses a NumPy array beside a tensor in one nested input.
        return [tf.convert_to_tensor(images), self._condition]

    def _decoder_inputs(self, z):
        # The importance weights decode K samples per image at once, z `[K * B, D]` flattened
        # sample-major (`tfvae.objectives.bounds._log_likelihoods`): the labels repeat K times.
        z, labels = tf.convert_to_tensor(z), self._condition
        repeats = tf.shape(z)[0] // tf.shape(labels)[0]
        return [z, tf.tile(labels, tf.stack([repeats, 1]))]

    # ------------------------------------------------------------------ the probabilistic model
    def posterior_parameters(self, images, training: bool = False, labels=None):
        """The encoder's outputs for `images` given `labels` (see `tfvae.VAE.posterior_parameters`)."""
        with self._given(labels, images, "posterior_parameters"):
            return super().posterior_parameters(images, training)

    def encode(self, images, labels=None, training: bool = False):
        """q(z|x, y) (its base Gaussian for a flow), batch `[B]`, event `[latent_dim]`.

        Args:
            images: `[B, H, W, C]` float images.
            labels: ids `[B]` or one-hot `[B, C]`.
            training: bool.
        """
        with self._given(labels, images, "encode"):
            return super().encode(images, training=training)

    def posterior_sample(self, images, num_samples: int = 1, seed=None, training: bool = False, labels=None):
        """K reparameterized z ~ q(z|x, y) with log q: `[K, B, D]`, `[K, B]` (see `tfvae.VAE`)."""
        with self._given(labels, images, "posterior_sample"):
            return super().posterior_sample(images, num_samples, seed, training)

    def decode(self, z, labels=None, training: bool = False):
        """p(x|z, y): batch shape `[B]`, event shape `image_shape`, for z `[B, D]`, labels `[B]`."""
        with self._given(labels, z, "decode"):
            return super().decode(z, training=training)

    def prior_distribution(self, labels=None):
        """p(z|y), event shape `[latent_dim]`.

        For a class prior: batch shape `[B]` for labels `[B]` (given, or those of the current
        call), `[num_classes]` (one Gaussian per class, in order) without any. For a prior shared by
        every class (N(0, I)), p(z) itself, batch shape `[]`.
        """
        if labels is not None:
            labels = self.one_hot(labels)
        if not self.prior.uses_labels:
            return super().prior_distribution()
        return self.prior.distribution(self.latent_dim, labels=labels if labels is not None else self._condition)

    def compute_elbo_terms(self, images, training: bool = False, labels=None) -> dict:
        """Per-example ELBO terms given y (see `tfvae.VAE.compute_elbo_terms`)."""
        with self._given(labels, images, "compute_elbo_terms"):
            return super().compute_elbo_terms(images, training)

    def call(self, inputs, training=False):
        if isinstance(inputs, (list, tuple)):
            if len(inputs) != 2:
                raise ValueError(
                    f"Expected a ConditionalVAE to be called on [images, labels]. Received: "
                    f"{len(inputs)} inputs"
                )
            images, labels = inputs
            with self._given(labels, images, "call"):
                return super().call(images, training)
        with self._given(None, inputs, "call"):
            return super().call(inputs, training)

    def reconstruct(self, images, labels=None, sample_latent: bool = False):
        """The mean of p(x|z, y) at the posterior's point of q(z|x, y) (or a sample), `[B, H, W, C]`.

        Raises:
            ValueError: no labels, or bad ones.
        """
        with self._given(labels, images, "reconstruct"):
            return super().reconstruct(images, sample_latent=sample_latent)

    def sample(self, num_samples: int, seed: int | None = None, labels=None):
        """Draws z ~ p(z|y) and returns the mean images of p(x|z, y), `[n, H, W, C]`.

        Args:
            num_samples: int >= 1. n.
            seed: int or None (see `tfvae.VAE.sample`).
            labels: an int class for all n samples, ids `[n]` or one-hot rows `[n, C]`.

        Raises:
            ValueError: no labels, bad ones, or not n of them; num_samples < 1.
        """
        num_samples = _check_num_samples(num_samples)
        labels = _labels_for_all(labels, num_samples)
        with self._given(labels, num_samples, "sample"):
            return super().sample(num_samples, seed=seed)

    def _draw_prior(self, num_samples, seed):
        if self.prior.uses_labels:  # batch shape [n]: one z per sample's class
            return self.prior_distribution().sample(seed=seed)
        return super()._draw_prior(num_samples, seed)

    def transfer_style(self, images, labels, target_labels):
        """Decodes each image's z under another class: "this digit's style as a 7".

        z is the posterior's point of q(z|x, y) (its mean for the diagonal Gaussian), mapped
        between the classes' priors, z' = mu_y' + sigma_y' (z - mu_y) / sigma_y (the identity
        when the prior is the same for every class, as N(0, I)), and decoded under y'.

        Args:
            images: `[B, H, W, C]` float images.
            labels: their classes y, ids `[B]` or one-hot `[B, C]`.
            target_labels: the classes y', an int for all, ids `[B]` or one-hot `[B, C]`.

        Returns:
            float32 images `[B, H, W, C]`: the mean of p(x|z', y').

        Raises:
            ValueError: bad labels or target labels.
        """
        batch_size = _shape_tuple(images.shape)[0]
        source = self.one_hot(labels, batch_size)
        target = self.one_hot(_labels_for_all(target_labels, batch_size), batch_size, "target_labels")
        with self.conditioned_on(source):
            z = self.posterior.point(self.posterior_parameters(images))
        if self.prior.uses_labels:
            z = self.prior.transfer(z, source, target)
        with self.conditioned_on(target):
            return self.likelihood.mean(self.decoder(self._decoder_inputs(z), training=False))

    # ------------------------------------------------------------------ evaluation
    def _log_importance_weights(self, images, seed, num_samples, labels=None):
        with self.conditioned_on(labels):
            return super()._log_importance_weights(images, seed, num_samples)

    def _batch_labels(self, batch):
        if not isinstance(batch, (list, tuple)) or len(batch) < 2:
            raise ValueError(
                "Expected (images, labels) batches for a ConditionalVAE. Received: batches of "
                "images alone"
            )
        return self.one_hot(batch[1], _shape_tuple(batch[0].shape)[0])

    def importance_weighted_nll(self, data, labels=None, **kwargs) -> np.ndarray:
        """Estimates -log p(x|y) per example with K importance samples, z_k ~ q(z|x, y).

        Args:
            data: images `[N, H, W, C]` with `labels`, or a `tf.data.Dataset` of `(images,
                labels)` batches.
            labels: ids `[N]` or one-hot `[N, C]` (None with a dataset).
            **kwargs: `num_samples`, `batch_size`, `max_decodes`, `seed`, `verbose`, as
                `tfvae.VAE.importance_weighted_nll`.

        Returns:
            float64 array `[N]` of -log p(x|y) estimates in nats.

        Raises:
            ValueError: missing or bad labels, and what `tfvae.VAE.importance_weighted_nll` raises.
        """
        if isinstance(data, tf.data.Dataset):
            if labels is not None:
                raise ValueError(
                    "Expected the labels inside the dataset, as (images, labels) batches. "
                    "Received: a dataset and labels beside it"
                )
            self._check_labelled_data(data, None, "data")
        else:
            self.check_data(data, "data")
            one_hot = self.one_hot(labels, len(data))
            data = tf.data.Dataset.from_tensor_slices((data, one_hot)).batch(kwargs.get("batch_size", 100))
        return super().importance_weighted_nll(data, **kwargs)

    def marginal_nll(self, images, class_probabilities, num_samples: int = 1000, **kwargs) -> np.ndarray:
        """Estimates -log p(x) = -log sum_y p(y) p(x|y) per example (labels unknown).

        Each p(x|y) is the importance-weighted estimate of `importance_weighted_nll` (the same
        seed for every class); the sum is a logsumexp in float64. By construction the result is
        at most -log p(x|y_true) - log p(y_true).

        Args:
            images: `[N, H, W, C]` float images.
            class_probabilities: `[num_classes]` numbers >= 0 summing to 1, p(y) (e.g. the
                training set's class frequencies).
            num_samples: int >= 1. K per class.
            **kwargs: `batch_size`, `max_decodes`, `seed`, `verbose` of `importance_weighted_nll`.

        Returns:
            float64 array `[N]` in nats.

        Raises:
            ValueError: class_probabilities of the wrong shape, negative or not summing to 1.
        """
        probabilities = np.asarray(class_probabilities, dtype=np.float64)
        if (
            probabilities.shape != (self.num_classes,)
            or not np.all(probabilities >= 0)
            or not np.isclose(probabilities.sum(), 1.0, atol=1e-6)
        ):
            raise ValueError(
                f"Expected class_probabilities of shape ({self.num_classes},), >= 0, summing to 1. "
                f"Received: {class_probabilities!r}"
            )
        count = len(images)
        log_joint = [
            np.log(probability)
            - self.importance_weighted_nll(images, np.full([count], label), num_samples=num_samples, **kwargs)
            for label, probability in enumerate(probabilities)
            if probability > 0
        ]
        return -np.logaddexp.reduce(np.stack(log_joint), axis=0)

    # ------------------------------------------------------------------ training
    def _check_labelled_data(self, x, y, argument: str) -> None:
        """Raises ValueError unless `x` (with `y`) gives labels of this model's classes.

        Arrays are checked in full; a dataset by its element spec and its first batch.
        """
        if isinstance(x, tf.data.Dataset):
            spec = x.element_spec
            if not isinstance(spec, (list, tuple)) or len(spec) < 2:
                raise ValueError(
                    f"Expected {argument} to yield (images, labels) batches for a ConditionalVAE. "
                    f"Received: a dataset of {spec}"
                )
            check_label_spec(_shape_tuple(spec[1].shape), spec[1].dtype, self.num_classes, argument + " labels")
            first = next(iter(x.take(1)), None)
            if first is not None:
                self.one_hot(first[1], _shape_tuple(first[0].shape)[0], argument + " labels")
            return
        if isinstance(x, (np.ndarray, tf.Tensor)):
            if y is None:
                raise ValueError(
                    f"Expected labels for {argument} (y=labels, or a dataset of (images, labels)) "
                    "to train or evaluate a ConditionalVAE. Received: y=None"
                )
            self.one_hot(y, len(x), "y" if argument == "x" else argument + " labels")

    def _step_labels(self, labels):
        if labels is None:
            raise ValueError(
                "Expected (images, labels) for a ConditionalVAE step. Received: images alone"
            )
        return self.one_hot(labels)

    def train_step(self, data):
        images, labels, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with self.conditioned_on(self._step_labels(labels)):
            return super().train_step((images, None, sample_weight))

    def test_step(self, data):
        images, labels, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with self.conditioned_on(self._step_labels(labels)):
            return super().test_step((images, None, sample_weight))

    def predict_step(self, data):
        # `predict((images, labels))` and datasets of pairs arrive as (x, y): both are inputs here.
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        if isinstance(images, (list, tuple)):
            return self(images, training=False)
        return self([images, labels] if labels is not None else images, training=False)

    def fit(self, x=None, y=None, *args, validation_data=None, **kwargs):
        """`tfvae.VAE.fit` on `(images, labels)`: `fit(images, labels)` or a dataset of pairs."""
        self._check_labelled_data(x, y, "x")
        if isinstance(validation_data, (list, tuple)):
            self._check_labelled_data(
                validation_data[0], validation_data[1] if len(validation_data) > 1 else None,
                "validation_data",
            )
        elif validation_data is not None:
            self._check_labelled_data(validation_data, None, "validation_data")
        return super().fit(x, y, *args, validation_data=validation_data, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """`tfvae.VAE.evaluate` on `(images, labels)`."""
        if not kwargs.get("_use_cached_eval_dataset"):
            self._check_labelled_data(x, y, "x")
        return super().evaluate(x, y, *args, **kwargs)

    # ------------------------------------------------------------------ serialization
    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            class_prior="learned" if self.prior.uses_labels else "standard_normal",
        )
        return config
