"""Posteriors q(z|x): encoder outputs in, reparameterized samples z with their exact log q(z|x) out.

A posterior never scores a z it did not draw: `sample` returns the pair (z, log q(z|x)), which
travels into the objectives, the importance-weighted NLL and the export, so a flow needs no
inverse pass. A new posterior is a subclass of `Posterior`, registered for serialization here and
named in `POSTERIORS`.
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfvae.distributions._common import DISTRIBUTION_DTYPE, resolve

tfd = tfp.distributions

# The base Gaussian's scale is softplus(raw) + this floor: keeps log q(z|x) finite when the
# encoder drives a scale towards zero.
POSTERIOR_MIN_SCALE = 1e-5


def posterior_distribution(loc, raw_scale) -> tfd.MultivariateNormalDiag:
    """Builds N(loc, diag(softplus(raw_scale) + 1e-5)^2).

    Args:
        loc: float tensor `[B, D]`. The mean.
        raw_scale: float tensor `[B, D]`. The unconstrained scale the encoder outputs.

    Returns:
        A `tfd.MultivariateNormalDiag` with batch shape `[B]` and event shape `[D]`, in float32.
    """
    loc = tf.cast(loc, DISTRIBUTION_DTYPE)
    scale = tf.nn.softplus(tf.cast(raw_scale, DISTRIBUTION_DTYPE)) + POSTERIOR_MIN_SCALE
    return tfd.MultivariateNormalDiag(loc=loc, scale_diag=scale)


class PosteriorParameters(NamedTuple):
    """What the encoder gives for a batch: `loc` and `raw_scale` `[B, D]`, and `context` `[B, H]`
    (None for a posterior that takes no context)."""

    loc: tf.Tensor
    raw_scale: tf.Tensor
    context: tf.Tensor | None = None


class Posterior(keras.layers.Layer):
    """Base class of the approximate posterior q(z|x).

    The encoder outputs `loc` and `raw_scale` (`[B, D]` each) and, when `context_units` H > 0, a
    context vector `[B, H]`: as one tensor `[B, 2D + H]` in that order, or as a list of two (or
    three) tensors. `encoder_outputs(latent_dim)` says how wide that is, so the builders size the
    encoder from it. The base distribution N(loc, softplus(raw_scale) + 1e-5) is q(z|x) itself for
    the diagonal Gaussian and the flow's starting point otherwise.

    Subclasses implement `sample(parameters, noise) -> (z, log_q)` and may set `factorized`
    (q(z|x) is the base Gaussian: analytic KL, free bits and DReG need it) and `context_units`.
    Weights are created in `build((latent_dim,))`.
    """

    #: H, the encoder outputs beyond loc and raw_scale.
    context_units = 0

    #: Whether q(z|x) is the base diagonal Gaussian (a density that factorizes over dimensions).
    factorized = True

    def settings(self) -> dict:
        """The constructor arguments that define this posterior (its config without the layer's)."""
        base = keras.layers.Layer.get_config(self)
        return {key: value for key, value in self.get_config().items() if key not in base}

    def encoder_outputs(self, latent_dim: int) -> int:
        """The width of the encoder's output, 2 * latent_dim + context_units."""
        return 2 * int(latent_dim) + self.context_units

    def base_distribution(self, parameters: PosteriorParameters) -> tfd.MultivariateNormalDiag:
        """N(loc, scale), batch shape `[B]`, event shape `[D]` (q(z|x) when `factorized`)."""
        return posterior_distribution(parameters.loc, parameters.raw_scale)

    def distribution(self, parameters: PosteriorParameters) -> tfd.Distribution | None:
        """q(z|x) as a TFP distribution when it is the base Gaussian, else None."""
        return self.base_distribution(parameters) if self.factorized else None

    def sample(self, parameters: PosteriorParameters, noise):
        """Draws reparameterized z and returns it with its exact log q(z|x).

        Args:
            parameters: the encoder's outputs for a batch of B images.
            noise: standard normal `[..., B, D]` (leading axes draw several z per image).

        Returns:
            `(z, log_q)`: float32 `[..., B, D]` and `[..., B]`.
        """
        raise NotImplementedError

    def point(self, parameters: PosteriorParameters):
        """A deterministic z per image `[B, D]`, the sample at zero noise (the base mean for the
        diagonal Gaussian): what `VAE.call` decodes."""
        z, _ = self.sample(parameters, tf.zeros_like(tf.cast(parameters.loc, DISTRIBUTION_DTYPE)))
        return z

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="tfvae")
class DiagonalGaussianPosterior(Posterior):
    """q(z|x) = N(loc, diag(scale)^2), the posterior of Kingma & Welling (2014). The default."""

    def build(self, input_shape):
        pass

    def sample(self, parameters, noise):
        base = self.base_distribution(parameters)
        z = base.mean() + base.stddev() * tf.cast(noise, DISTRIBUTION_DTYPE)
        return z, base.log_prob(z)


@keras.saving.register_keras_serializable(package="tfvae")
class MaskedDense(keras.layers.Layer):
    """A dense layer whose kernel is masked by degrees, the building block of MADE (Germain et al., 2015).

    Input unit i may feed output unit j only when `output_degrees[j] >= input_degrees[i]`, or `>`
    with `strict=True` (the output layer of an autoregressive network: output j then depends on
    inputs of lower degree only).

    Args:
        input_degrees: list of ints. The degree of each input unit.
        output_degrees: list of ints. The degree of each output unit (their count is the width).
        strict: bool. Strict inequality (output layers) or not (hidden layers).
        activation: activation name or None.
        kernel_initializer, bias_initializer: Keras initializers.
    """

    def __init__(
        self,
        input_degrees,
        output_degrees,
        strict: bool = False,
        activation=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.input_degrees = [int(d) for d in input_degrees]
        self.output_degrees = [int(d) for d in output_degrees]
        self.strict = bool(strict)
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        inputs = np.asarray(self.input_degrees)[:, None]
        outputs = np.asarray(self.output_degrees)[None, :]
        self.mask = (outputs > inputs if self.strict else outputs >= inputs).astype("float32")

    def build(self, input_shape):
        shape = (len(self.input_degrees), len(self.output_degrees))
        self.kernel = self.add_weight(name="kernel", shape=shape, initializer=self.kernel_initializer)
        self.bias = self.add_weight(name="bias", shape=shape[1:], initializer=self.bias_initializer)

    def call(self, inputs):
        outputs = tf.matmul(inputs, self.kernel * self.mask) + self.bias
        return self.activation(outputs) if self.activation is not None else outputs

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], len(self.output_degrees))

    def get_config(self):
        config = super().get_config()
        config.update(
            input_degrees=self.input_degrees,
            output_degrees=self.output_degrees,
            strict=self.strict,
            activation=keras.activations.serialize(self.activation) if self.activation else None,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
        )
        return config


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"Expected {name} to be an integer >= 1. Received: {name}={value!r}")
    return int(value)


@keras.saving.register_keras_serializable(package="tfvae")
class IAFPosterior(Posterior):
    """q(z|x) by inverse autoregressive flow (Kingma et al., 2016): N(loc, scale) and T steps.

    z_0 = loc + scale * eps; each step t computes, from a MADE network of z_{t-1} and the
    encoder's context h,

        m_t, s_t = MADE_t(z_{t-1}, h),  s_t = sigmoid(gate_t),  z_t = s_t * z_{t-1} + (1 - s_t) * m_t

    (the numerically stable gated form), with the gate's bias initialized to `gate_bias` > 0 so
    each step starts close to the identity. Output i of step t depends on the dimensions before i
    in that step's order, which is reversed from one step to the next, so the Jacobian is
    triangular and

        log q(z_T|x) = log N(z_0; loc, scale) - sum_t sum_i log s_t,i,

    with log s computed as log_sigmoid. q(z|x) has no closed-form KL to the prior: the KL is the
    Monte-Carlo estimate log q(z|x) - log p(z) at the sample, and free bits and DReG (which need
    q to factorize or to be re-evaluated at a given z) are refused.

    Cost: each step is two masked dense layers of `hidden_units` per z, so training and the
    importance-weighted NLL do T MADE passes per sample on top of the decoder.

    Args:
        steps: int >= 1. T, the number of flow steps.
        context_units: int >= 1. H, the width of the context vector the encoder outputs.
        hidden_units: int >= 1. The MADE hidden layer's width.
        gate_bias: float. The gate's initial bias (positive: s starts near sigmoid(gate_bias)).
    """

    factorized = False

    def __init__(
        self,
        steps: int = 2,
        context_units: int = 16,
        hidden_units: int = 64,
        gate_bias: float = 2.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.steps = _check_positive_int("steps", steps)
        self.context_units = _check_positive_int("context_units", context_units)
        self.hidden_units = _check_positive_int("hidden_units", hidden_units)
        if isinstance(gate_bias, bool) or not isinstance(gate_bias, (int, float)) or not np.isfinite(gate_bias):
            raise ValueError(f"Expected gate_bias to be a finite number. Received: gate_bias={gate_bias!r}")
        self.gate_bias = float(gate_bias)

    def step_order(self, step: int, latent_dim: int) -> np.ndarray:
        """The degrees (1..D) of the dimensions in step `step`: increasing, reversed every other step."""
        order = np.arange(1, latent_dim + 1)
        return order if step % 2 == 0 else order[::-1]

    def build(self, input_shape):
        latent_dim = int(input_shape[-1])
        self.step_layers = []
        for step in range(self.steps):
            degrees = self.step_order(step, latent_dim)
            # Hidden degrees cycle through 1..D-1, so every output but the first in the order
            # sees some inputs (with D = 1 there are none: the output sees the context only).
            hidden_degrees = np.arange(self.hidden_units) % max(1, latent_dim - 1) + 1
            hidden = MaskedDense(degrees, hidden_degrees, name=f"step_{step}_hidden", dtype=DISTRIBUTION_DTYPE)
            context = keras.layers.Dense(
                self.hidden_units, use_bias=False, name=f"step_{step}_context", dtype=DISTRIBUTION_DTYPE
            )
            shift = MaskedDense(
                hidden_degrees, degrees, strict=True, name=f"step_{step}_shift", dtype=DISTRIBUTION_DTYPE
            )
            gate = MaskedDense(
                hidden_degrees, degrees, strict=True, name=f"step_{step}_gate", dtype=DISTRIBUTION_DTYPE,
                bias_initializer=keras.initializers.Constant(self.gate_bias),
            )
            hidden.build((None, latent_dim))
            context.build((None, self.context_units))
            shift.build((None, self.hidden_units))
            gate.build((None, self.hidden_units))
            self.step_layers.append((hidden, context, shift, gate))

    def flow_step(self, step: int, z, context):
        """One IAF step on flat `z` `[N, D]` and `context` `[N, H]`: returns `(z_t, log s_t)`."""
        hidden, context_layer, shift, gate = self.step_layers[step]
        features = tf.nn.elu(hidden(z) + context_layer(context))
        gate_logits = gate(features)
        s = tf.sigmoid(gate_logits)
        return s * z + (1.0 - s) * shift(features), tf.math.log_sigmoid(gate_logits)

    def sample(self, parameters, noise):
        base = self.base_distribution(parameters)
        z = base.mean() + base.stddev() * tf.cast(noise, DISTRIBUTION_DTYPE)
        log_q = base.log_prob(z)
        latent_dim = tf.shape(z)[-1]
        leading_shape = tf.shape(z)[:-1]  # [..., B]
        context = tf.cast(parameters.context, DISTRIBUTION_DTYPE)
        context = tf.broadcast_to(context, tf.concat([leading_shape, tf.shape(context)[-1:]], 0))
        flat_z = tf.reshape(z, [-1, latent_dim])
        flat_context = tf.reshape(context, [-1, self.context_units])
        for step in range(self.steps):
            flat_z, log_gate = self.flow_step(step, flat_z, flat_context)
            log_q -= tf.reshape(tf.reduce_sum(log_gate, axis=-1), leading_shape)
        return tf.reshape(flat_z, tf.shape(z)), log_q

    def get_config(self):
        config = super().get_config()
        config.update(
            steps=self.steps,
            context_units=self.context_units,
            hidden_units=self.hidden_units,
            gate_bias=self.gate_bias,
        )
        return config


POSTERIORS = {"diagonal_gaussian": DiagonalGaussianPosterior, "iaf": IAFPosterior}


def get_posterior(identifier, **settings) -> Posterior:
    """Returns a Posterior from a name ('diagonal_gaussian', 'iaf'), an instance or a config.

    Args:
        identifier: a name in `POSTERIORS`, a `Posterior` or its serialized config.
        **settings: constructor arguments, only with a name (e.g. `steps=4` for 'iaf').

    Raises:
        ValueError: the name is unknown, settings it does not take, or not a Posterior.
    """
    return resolve(identifier, POSTERIORS, Posterior, "posterior", settings)


def posterior_name(posterior: Posterior) -> str | None:
    """The registry name of a built-in posterior, or None for a custom one."""
    return next((name for name, cls in POSTERIORS.items() if type(posterior) is cls), None)
