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

    For images `[B, H, W, C]` the decoder produces `parameters` of shape `[B, H, W, C * P]`,
    P = `parameters_per_subpixel` (one sub-pixel is one channel of one pixel): the P parameters
    of channel c are `parameters[..., c * P:(c + 1) * P]`. The likelihood turns them into a
    distribution whose batch shape is `[B]` and event shape `[H, W, C]`, so `log_prob(x)` is the
    per-example log-likelihood summed over sub-pixels, and `mean(parameters)` is an image
    `[B, H, W, C]`.

    Subclasses implement `distribution(parameters)` and `mean(parameters)`, set
    `parameters_per_subpixel` (a class attribute, or a property when it depends on a setting)
    and `num_values`, and may override `check_data(x_min, x_max)` to reject data outside their
    support.
    """

    #: Human-readable support of the data, used in error messages.
    support_description = "any real values"

    #: P, the decoder outputs each sub-pixel needs.
    parameters_per_subpixel = 1

    #: For a probability mass: how many values a sub-pixel takes (2 binary, 256 for 8 bits).
    #: None for a density over real values (its bits/dim need dequantized data).
    num_values: int | None = None

    #: The range the data must lie in, or None for any real values (written to the export).
    value_range: tuple[float, float] | None = None

    #: What the P decoder outputs of a sub-pixel are, in order (written to the export).
    parameters_layout = "mean"

    def settings(self) -> dict:
        """The constructor arguments that define this likelihood (its config without the layer's)."""
        base = keras.layers.Layer.get_config(self)
        return {key: value for key, value in self.get_config().items() if key not in base}

    def distribution(self, parameters) -> tfd.Distribution:
        """Returns p(x|z) for decoder outputs `parameters` of shape `[B, H, W, C * P]`."""
        raise NotImplementedError

    def mean(self, parameters):
        """Returns E[x|z], shape `[B, H, W, C]`, the image a decoder output stands for."""
        raise NotImplementedError

    def check_data(self, x_min: float, x_max: float) -> None:
        """Raises ValueError when data with this range cannot be scored. Default: anything."""

    def compute_output_shape(self, input_shape):
        channels = input_shape[-1]
        if channels is not None:
            channels //= self.parameters_per_subpixel
        return (*input_shape[:-1], channels)

    def _subpixel_parameters(self, parameters):
        """`[B, H, W, C * P]` -> float32 `[B, H, W, C, P]` (channel c's P parameters together)."""
        parameters = tf.cast(parameters, DISTRIBUTION_DTYPE)
        count = self.parameters_per_subpixel
        shape = tf.shape(parameters)
        return tf.reshape(parameters, tf.concat([shape[:-1], [shape[-1] // count, count]], 0))


class IndependentSubpixels:
    """p(x|z) of independent sub-pixels, for likelihoods TensorFlow Probability has no exact form of.

    Offers what the objectives use of a `tfd.Distribution` with batch shape `[B]` and event
    shape `[H, W, C]`: `log_prob(x)`, summed over the event, and `mean()`. The per-sub-pixel
    log-probabilities are available as `subpixel_log_prob(x)`.

    Args:
        subpixel_log_prob: callable. Maps float32 images `[B, H, W, C]` to their sub-pixels'
            log-probabilities (or log-densities) `[B, H, W, C]`.
        mean: callable. Returns E[x|z], `[B, H, W, C]`.
    """

    def __init__(self, subpixel_log_prob, mean):
        self._subpixel_log_prob = subpixel_log_prob
        self._mean = mean

    def subpixel_log_prob(self, x):
        """The log-probability of each sub-pixel of `x`, `[B, H, W, C]`."""
        return self._subpixel_log_prob(tf.cast(x, DISTRIBUTION_DTYPE))

    def log_prob(self, x):
        """log p(x|z) per example, `[B]`."""
        values = self.subpixel_log_prob(x)
        return tf.reduce_sum(values, axis=tf.range(1, tf.rank(values)))

    def mean(self):
        """E[x|z], `[B, H, W, C]`."""
        return self._mean()


@keras.saving.register_keras_serializable(package="tfvae")
class BernoulliLikelihood(Likelihood):
    """Independent Bernoulli pixels parameterized by logits.

    For binarized images, and for gray images in [0, 1] read as pixel probabilities (as the
    Keras and TFP examples do): `log_prob` is then the negative sigmoid cross-entropy, computed
    from logits for numerical stability.
    """

    support_description = "values in [0, 1]"
    # A probability mass only on binary data: on gray levels it is no probability of the data.
    num_values = 2
    value_range = (0.0, 1.0)
    parameters_layout = "logits"

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


@keras.saving.register_keras_serializable(package="tfvae")
class GaussianPredictedScaleLikelihood(Likelihood):
    """Independent Gaussian sub-pixels whose mean and scale both come from the decoder.

    Two parameters per sub-pixel, `[loc, raw_scale]`; the scale is
    `softplus(raw_scale + offset) + min_scale`, with the offset chosen so that a decoder output of
    0 gives `initial_scale`. A density over real values: on 8-bit images its bits/dim need
    dequantized data (`tfvae.data.load(..., dequantize=True)`).

    Args:
        initial_scale: float. The scale a raw output of 0 stands for. Must be > min_scale.
        min_scale: float. A floor that keeps the log-density bounded. Must be > 0.
    """

    support_description = "real values"
    parameters_per_subpixel = 2
    parameters_layout = "loc, raw_scale (scale = softplus(raw_scale + offset) + min_scale)"

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
        self._offset = float(np.log(np.expm1(self.initial_scale - self.min_scale)))

    def build(self, input_shape):
        pass

    def loc_and_scale(self, parameters):
        """The mean and the scale of each sub-pixel, two float32 tensors `[B, H, W, C]`."""
        split = self._subpixel_parameters(parameters)
        scale = tf.nn.softplus(split[..., 1] + self._offset) + self.min_scale
        return split[..., 0], scale

    def distribution(self, parameters):
        loc, scale = self.loc_and_scale(parameters)
        return tfd.Independent(
            tfd.Normal(loc=loc, scale=scale), reinterpreted_batch_ndims=_event_ndims(loc)
        )

    def mean(self, parameters):
        return self.loc_and_scale(parameters)[0]

    def get_config(self):
        config = super().get_config()
        config.update(initial_scale=self.initial_scale, min_scale=self.min_scale)
        return config


# |lambda - 0.5| below this: the continuous Bernoulli's constant and mean from Taylor series.
_CONTINUOUS_BERNOULLI_TAYLOR_RADIUS = 1e-2


@keras.saving.register_keras_serializable(package="tfvae")
class ContinuousBernoulliLikelihood(Likelihood):
    """Continuous Bernoulli sub-pixels (Loaiza-Ganem & Cunningham, 2019), parameterized by logits.

    For gray images in [0, 1] read as continuous values: the density on [0, 1] is
    p(x | lambda) = C(lambda) lambda^x (1 - lambda)^(1 - x), lambda = sigmoid(logit), with the
    normalizing constant C(lambda) = 2 atanh(1 - 2 lambda) / (1 - 2 lambda) (2 at lambda = 0.5).
    Written in the logit eta, 1 - 2 lambda = -tanh(eta / 2) and atanh(1 - 2 lambda) = -eta / 2, so
    log C = log|eta| - log|tanh(eta / 2)| without the cancellation of 1 - 2 lambda; within
    |lambda - 0.5| < 1e-2 it is the Taylor series log 2 + log1p(mu^2/3 + mu^4/5 + mu^6/7),
    mu = 1 - 2 lambda. The mean is lambda / (2 lambda - 1) + 1 / (2 atanh(1 - 2 lambda)), not
    lambda (0.5 + eta/12 - eta^3/720 near 0.5); pictures, reconstructions and the export use it.

    A density: on 8-bit images its bits/dim need dequantized data.
    """

    support_description = "values in [0, 1]"
    value_range = (0.0, 1.0)
    parameters_layout = "logits"

    def build(self, input_shape):
        pass

    @staticmethod
    def log_normalizer(logits):
        """log C(lambda) for lambda = sigmoid(logits), float32, the shape of `logits`."""
        logits = tf.cast(logits, DISTRIBUTION_DTYPE)
        half_tanh = tf.math.tanh(logits / 2.0)  # = 2 lambda - 1
        near_half = tf.abs(half_tanh) < 2.0 * _CONTINUOUS_BERNOULLI_TAYLOR_RADIUS
        # Each branch sees only values where it is exact, so neither produces NaN gradients.
        far_logits = tf.where(near_half, tf.ones_like(logits), logits)
        far = tf.math.log(tf.abs(far_logits)) - tf.math.log(tf.abs(tf.math.tanh(far_logits / 2.0)))
        mu_squared = tf.square(tf.where(near_half, half_tanh, tf.zeros_like(half_tanh)))
        near = np.log(2.0) + tf.math.log1p(
            mu_squared * (1.0 / 3.0 + mu_squared * (1.0 / 5.0 + mu_squared / 7.0))
        )
        return tf.where(near_half, near, far)

    def distribution(self, parameters):
        logits = tf.cast(parameters, DISTRIBUTION_DTYPE)

        def subpixel_log_prob(x):
            cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=logits)
            return self.log_normalizer(logits) - cross_entropy

        return IndependentSubpixels(subpixel_log_prob, lambda: self.mean(logits))

    def mean(self, parameters):
        logits = tf.cast(parameters, DISTRIBUTION_DTYPE)
        half_tanh = tf.math.tanh(logits / 2.0)
        near_half = tf.abs(half_tanh) < 2.0 * _CONTINUOUS_BERNOULLI_TAYLOR_RADIUS
        far_logits = tf.where(near_half, tf.ones_like(logits), logits)
        # lambda / (2 lambda - 1) + 1 / (2 atanh(1 - 2 lambda)) with both written in the logit.
        far = tf.math.sigmoid(far_logits) / tf.math.tanh(far_logits / 2.0) - 1.0 / far_logits
        near_logits = tf.where(near_half, logits, tf.zeros_like(logits))
        near = 0.5 + near_logits / 12.0 - near_logits**3 / 720.0
        return tf.where(near_half, near, far)

    def check_data(self, x_min, x_max):
        if x_min < 0.0 or x_max > 1.0:
            raise ValueError(
                "The continuous Bernoulli likelihood expects data in [0, 1]. "
                f"Received: data in [{x_min:g}, {x_max:g}]. Scale the data to [0, 1] "
                "(for uint8 images: x / 255)."
            )


def _bin_index(x):
    """The 8-bit value k of images whose values are k / 255: round(255 x), clipped to 0..255."""
    return tf.clip_by_value(tf.round(tf.cast(x, DISTRIBUTION_DTYPE) * 255.0), 0.0, 255.0)


def _check_unit_interval(name, x_min, x_max):
    if x_min < 0.0 or x_max > 1.0:
        raise ValueError(
            f"The {name} likelihood expects 8-bit images scaled to [0, 1] (values k / 255). "
            f"Received: data in [{x_min:g}, {x_max:g}]. For uint8 images pass x / 255."
        )


@keras.saving.register_keras_serializable(package="tfvae")
class CategoricalLikelihood(Likelihood):
    """A 256-way softmax per sub-pixel, for 8-bit images scaled to [0, 1] (values k / 255).

    The decoder gives 256 logits per sub-pixel; the value of a sub-pixel x is the bin
    k = round(255 x), and log p(x|z) is the log-softmax at k (minus the softmax cross-entropy).
    A probability mass over the 256 values: bits/dim = nats / (D ln 2) on 8-bit data. Values
    between the k / 255 levels (dequantized data) are rounded to the nearest level. Arrays must be
    float (uint8 arrays are not accepted: pass x / 255).
    """

    support_description = "8-bit values k / 255 in [0, 1]"
    parameters_per_subpixel = 256
    num_values = 256
    value_range = (0.0, 1.0)
    parameters_layout = "256 logits, of the values k / 255, k = 0..255"

    def build(self, input_shape):
        pass

    def distribution(self, parameters):
        logits = self._subpixel_parameters(parameters)

        def subpixel_log_prob(x):
            index = tf.cast(_bin_index(x), tf.int32)
            return -tf.nn.sparse_softmax_cross_entropy_with_logits(labels=index, logits=logits)

        return IndependentSubpixels(subpixel_log_prob, lambda: self.mean(parameters))

    def mean(self, parameters):
        probabilities = tf.nn.softmax(self._subpixel_parameters(parameters), axis=-1)
        levels = tf.range(256, dtype=DISTRIBUTION_DTYPE) / 255.0
        return tf.reduce_sum(probabilities * levels, axis=-1)

    def check_data(self, x_min, x_max):
        _check_unit_interval("categorical", x_min, x_max)


def _log1mexp_from_log(log_t):
    """log(1 - exp(-t)) from log t, t = exp(log_t) > 0: accurate, finite, with finite gradients.

    Three regimes (Maechler, 2012, plus a series for small t): log t - t/2 + t^2/24 for
    t < 1e-3 (error < t^4/2880, and no underflow of t however small: log t is given), log(-expm1(-t))
    for t < log 2 and log1p(-exp(-t)) above. Each branch gets its input clipped to its own range,
    so the branches `tf.where` does not select stay finite: a -inf or NaN there (log1p(-1) when
    exp(-t) rounds to 1) would make the gradient NaN even though its value is never used.

    Args:
        log_t: float32 tensor, any finite values.

    Returns:
        log(1 - exp(-exp(log_t))), the shape of `log_t` (<= 0; -> log t as t -> 0, -> 0 as t grows).
    """
    small = log_t < np.log(1e-3)
    t_small = tf.exp(tf.minimum(log_t, np.log(1e-3)))
    series = log_t - t_small / 2.0 + tf.square(t_small) / 24.0
    t = tf.exp(tf.clip_by_value(log_t, np.log(1e-3), 50.0))
    t_middle = tf.minimum(t, np.log(2.0))
    t_large = tf.maximum(t, np.log(2.0))
    exact = tf.where(
        t < np.log(2.0), tf.math.log(-tf.math.expm1(-t_middle)), tf.math.log1p(-tf.exp(-t_large))
    )
    return tf.where(small, series, exact)


@keras.saving.register_keras_serializable(package="tfvae")
class DiscretizedLogisticLikelihood(Likelihood):
    """A mixture of M logistics per sub-pixel, discretized to 256 bins (as in IAF-VAE and PixelCNN++).

    For 8-bit images scaled to [0, 1] (values k / 255, k = round(255 x)). Each sub-pixel has
    3M parameters `[mixture logits (M), means (M), log scales (M)]`; the channels of a pixel are
    independent given z (no RGB coupling as in PixelCNN++). Bin k covers
    [k / 255 - 1/510, k / 255 + 1/510]; the edge bins take the tails: P(0) = F(1/510) and
    P(255) = 1 - F(1 - 1/510). With a = (x - mu - 1/510) / s and b = (x - mu + 1/510) / s, an
    inner bin's log P = log(sigmoid(b) - sigmoid(a)) is computed exactly and stably as
    log_sigmoid(b) + log_sigmoid(-a) + log(1 - exp(-(b - a))), where b - a = 1 / (255 s) is
    taken from the log scale, not as the difference of a and b (which cancels to 0 when the mean
    is far from the bin). The log scales are floored at `min_log_scale`; the values and the
    gradients stay finite for any finite parameters (log scales far above 0, means far outside
    [0, 1], peaked mixture logits). A probability mass over the 256 values: bits/dim = nats / (D ln 2). Values
    between levels (dequantized data) are rounded to the nearest level; arrays must be float
    (uint8 arrays are not accepted: pass x / 255).

    Args:
        components: int >= 1. M, the number of logistics per sub-pixel.
        min_log_scale: float. The floor of the log scales (PixelCNN++ uses -7).
    """

    support_description = "8-bit values k / 255 in [0, 1]"
    num_values = 256
    value_range = (0.0, 1.0)
    parameters_layout = "M mixture logits, M means, M log scales (M = components)"

    def __init__(self, components: int = 5, min_log_scale: float = -7.0, **kwargs):
        super().__init__(**kwargs)
        if isinstance(components, bool) or not isinstance(components, (int, np.integer)) or components < 1:
            raise ValueError(f"Expected components to be an integer >= 1. Received: components={components!r}")
        self.components = int(components)
        self.min_log_scale = float(min_log_scale)

    @property
    def parameters_per_subpixel(self):
        return 3 * self.components

    def build(self, input_shape):
        pass

    def _mixture(self, parameters):
        """Mixture log-weights, means and floored log scales, each float32 `[B, H, W, C, M]`."""
        split = self._subpixel_parameters(parameters)
        logits, means, log_scales = tf.split(split, 3, axis=-1)
        return tf.nn.log_softmax(logits, axis=-1), means, tf.maximum(log_scales, self.min_log_scale)

    def distribution(self, parameters):
        log_weights, means, log_scales = self._mixture(parameters)
        # 1 / s rather than s: exp(-log s) underflows to 0 for huge log scales (a, b -> 0, the
        # right limit, with zero gradient), where s would overflow to inf and x / inf has a NaN
        # gradient.
        inverse_scales = tf.exp(-log_scales)
        log_bin_width = -np.log(255.0) - log_scales  # log(b - a), exact

        def subpixel_log_prob(x):
            index = _bin_index(x)[..., tf.newaxis]
            centered = index / 255.0 - means
            a = (centered - 1.0 / 510.0) * inverse_scales
            b = (centered + 1.0 / 510.0) * inverse_scales
            inner = tf.math.log_sigmoid(b) + tf.math.log_sigmoid(-a) + _log1mexp_from_log(log_bin_width)
            log_bin = tf.where(
                index < 0.5, tf.math.log_sigmoid(b), tf.where(index > 254.5, tf.math.log_sigmoid(-a), inner)
            )
            return tf.reduce_logsumexp(log_weights + log_bin, axis=-1)

        return IndependentSubpixels(subpixel_log_prob, lambda: self.mean(parameters))

    def mean(self, parameters):
        """The exact mean of the discretized mixture, E[k] / 255 = sum_{k=1}^{255} P(k' >= k) / 255."""
        log_weights, means, log_scales = self._mixture(parameters)
        weights = tf.exp(log_weights)
        inverse_scales = tf.exp(-log_scales)

        def add_tail(k, total):
            # P(k' >= k) = 1 - F((k - 1/2) / 255) for each component.
            tail = tf.math.sigmoid((means - (tf.cast(k, DISTRIBUTION_DTYPE) - 0.5) / 255.0) * inverse_scales)
            return k + 1, total + tail

        _, tails = tf.while_loop(
            lambda k, total: k < 256, add_tail, (tf.constant(1), tf.zeros_like(means))
        )
        return tf.reduce_sum(weights * tails, axis=-1) / 255.0

    def check_data(self, x_min, x_max):
        _check_unit_interval("discretized logistic", x_min, x_max)

    def get_config(self):
        config = super().get_config()
        config.update(components=self.components, min_log_scale=self.min_log_scale)
        return config


LIKELIHOODS = {
    "bernoulli": BernoulliLikelihood,
    "gaussian": GaussianLikelihood,
    "gaussian_predicted_scale": GaussianPredictedScaleLikelihood,
    "continuous_bernoulli": ContinuousBernoulliLikelihood,
    "categorical": CategoricalLikelihood,
    "discretized_logistic": DiscretizedLogisticLikelihood,
}



def get_likelihood(identifier, **settings) -> Likelihood:
    """Returns a Likelihood from a name in `LIKELIHOODS`, an instance or a config.

    Args:
        identifier: a name ('bernoulli', 'gaussian', 'discretized_logistic', ...), a
            `Likelihood`, or its serialized config.
        **settings: constructor arguments of the named likelihood, e.g. `components=10`.

    Raises:
        ValueError: the name is unknown, a setting the likelihood does not take, settings
            without a name, or an object that is not a Likelihood.
    """
    return resolve(identifier, LIKELIHOODS, Likelihood, "likelihood", settings)


def likelihood_name(likelihood: Likelihood) -> str | None:
    """The registry name of a built-in likelihood, or None for a user-defined one."""
    for name, cls in LIKELIHOODS.items():
        if type(likelihood) is cls:
            return name
    return None
