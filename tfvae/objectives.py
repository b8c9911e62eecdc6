"""The VAE objective as pure per-example functions of distributions and tensors.

Nothing here holds state or randomness: the noise is passed in, so every function can be checked
against a hand computation (see tests/test_objectives.py).
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

# The posterior's scale is softplus(raw) + this floor: keeps log q(z|x) finite when the encoder
# drives a scale towards zero.
POSTERIOR_MIN_SCALE = 1e-5


def posterior_distribution(loc, raw_scale) -> tfd.MultivariateNormalDiag:
    """Builds q(z|x) = N(loc, diag(softplus(raw_scale) + 1e-5)^2).

    Args:
        loc: float tensor `[B, D]`. The posterior mean.
        raw_scale: float tensor `[B, D]`. The unconstrained scale the encoder outputs.

    Returns:
        A `tfd.MultivariateNormalDiag` with batch shape `[B]` and event shape `[D]`, in float32.
    """
    loc = tf.cast(loc, tf.float32)
    scale = tf.nn.softplus(tf.cast(raw_scale, tf.float32)) + POSTERIOR_MIN_SCALE
    return tfd.MultivariateNormalDiag(loc=loc, scale_diag=scale)


def reparameterized_sample(posterior: tfd.MultivariateNormalDiag, noise):
    """z = loc + scale * noise, differentiable in the posterior's parameters.

    Args:
        posterior: q(z|x), batch shape `[B]`, event shape `[D]`.
        noise: standard normal tensor `[..., B, D]` (extra leading axes draw several z per x).

    Returns:
        z, the same shape as `noise`.
    """
    return posterior.mean() + posterior.stddev() * tf.cast(noise, tf.float32)


def kl_divergence(posterior: tfd.Distribution, prior: tfd.Distribution, z=None):
    """KL(q(z|x) || p(z)) per example, shape `[B]`.

    Analytic where TensorFlow Probability registers it (a Gaussian posterior against a Gaussian
    prior); otherwise the single-sample Monte-Carlo estimate log q(z|x) - log p(z) at `z`, which
    is unbiased and keeps learned priors without a closed form usable.

    Raises:
        ValueError: no closed form exists and no `z` was given.
    """
    try:
        return tfd.kl_divergence(posterior, prior)
    except NotImplementedError:
        if z is None:
            raise ValueError(
                f"KL({type(posterior).__name__} || {type(prior).__name__}) has no closed form; "
                "pass the sample z for a Monte-Carlo estimate."
            ) from None
        return posterior.log_prob(z) - prior.log_prob(z)


def elbo_terms(x, likelihood: tfd.Distribution, posterior, prior, z, beta=1.0) -> dict:
    """The per-example terms of the (beta-weighted) evidence lower bound.

    Args:
        x: data `[B, ...]`.
        likelihood: p(x|z) at the sampled z, batch shape `[B]`, event shape `x.shape[1:]`.
        posterior: q(z|x), batch shape `[B]`, event shape `[D]`.
        prior: p(z), event shape `[D]`.
        z: the reparameterized sample `[B, D]` the likelihood was computed at.
        beta: scalar weight of the KL term in the training objective.

    Returns:
        A dict of float32 tensors of shape `[B]`:
          `reconstruction`: -log p(x|z), summed over pixels;
          `kl`: KL(q(z|x) || p(z)), summed over latent dimensions;
          `elbo`: log p(x|z) - kl, the evidence lower bound itself (beta does not enter);
          `objective`: log p(x|z) - beta * kl, what training maximizes.
    """
    reconstruction = -likelihood.log_prob(tf.cast(x, tf.float32))
    kl = kl_divergence(posterior, prior, z)
    beta = tf.cast(beta, tf.float32)
    return {
        "reconstruction": reconstruction,
        "kl": kl,
        "elbo": -reconstruction - kl,
        "objective": -reconstruction - beta * kl,
    }


def log_importance_weights(x, posterior, prior, likelihood_fn, z):
    """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x) for K samples per example.

    Args:
        x: data `[B, ...]`.
        posterior: q(z|x), batch shape `[B]`, event shape `[D]`.
        prior: p(z), event shape `[D]`.
        likelihood_fn: maps z `[K * B, D]` to p(x|z) with batch shape `[K * B]`.
        z: samples of q(z|x), `[K, B, D]`.

    Returns:
        float32 `[K, B]`.
    """
    num_samples, batch_size = tf.shape(z)[0], tf.shape(z)[1]
    flat_z = tf.reshape(z, [num_samples * batch_size, -1])
    x = tf.cast(x, tf.float32)
    tiled_x = tf.reshape(
        tf.tile(x[tf.newaxis], tf.concat([[num_samples], tf.ones([tf.rank(x)], tf.int32)], 0)),
        tf.concat([[num_samples * batch_size], tf.shape(x)[1:]], 0),
    )
    log_px_given_z = tf.reshape(likelihood_fn(flat_z).log_prob(tiled_x), [num_samples, batch_size])
    return log_px_given_z + prior.log_prob(z) - posterior.log_prob(z)

