"""The bounds a VAE trains on, as pure per-example functions of distributions and tensors.

Nothing here holds state or randomness: the noise is passed in, so every function can be checked
against a hand computation (see tests/test_objectives.py). The math, in short:

    ELBO(x)       = E_q[log p(x|z)] - KL(q(z|x) || p(z))                       (Kingma & Welling)
    free bits     = E_q[log p(x|z)] - sum_d max(lambda, mean_batch KL_d)        (Kingma et al. 2016)
    IWAE_K(x)     = E[log (1/K) sum_k p(x, z_k) / q(z_k|x)],  z_k ~ q(z|x)      (Burda et al. 2015)
    DReG encoder gradient = sum_k w~_k^2 d log w_k / d z_k  dz_k/dphi          (Tucker et al. 2019)
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_probability as tfp

# Re-exported: the diagonal Gaussian lived here before the posterior seam.
from tfvae.distributions.posteriors import POSTERIOR_MIN_SCALE, posterior_distribution  # noqa: F401

tfd = tfp.distributions

def reparameterized_sample(posterior: tfd.MultivariateNormalDiag, noise):
    """z = loc + scale * noise, differentiable in the posterior's parameters.

    Args:
        posterior: q(z|x), batch shape `[B]`, event shape `[D]`.
        noise: standard normal tensor `[..., B, D]` (extra leading axes draw several z per x).

    Returns:
        z, the same shape as `noise`.
    """
    return posterior.mean() + posterior.stddev() * tf.cast(noise, tf.float32)


def kl_divergence(posterior: tfd.Distribution | None, prior: tfd.Distribution, z=None, log_q=None):
    """KL(q(z|x) || p(z)) per example, shape `[B]`.

    Analytic where TensorFlow Probability registers it (a Gaussian posterior against a Gaussian
    prior); otherwise the single-sample Monte-Carlo estimate log q(z|x) - log p(z) at `z`, which
    is unbiased and keeps learned priors without a closed form usable.

    Args:
        posterior: q(z|x), batch shape `[B]`, event shape `[D]`; None for a posterior known only
            through its samples (a flow), with `log_q` given.
        prior: p(z), event shape `[D]`.
        z: a sample of q(z|x), `[B, D]`.
        log_q: log q(z|x) at `z`, `[B]`, as the posterior returned it with the sample. Without
            it the Monte-Carlo estimate evaluates `posterior.log_prob(z)`.

    Raises:
        ValueError: no closed form exists and no `z` was given (or neither a posterior nor log_q).
    """
    if posterior is not None:
        try:
            return tfd.kl_divergence(posterior, prior)
        except NotImplementedError:
            pass
    if z is None or (posterior is None and log_q is None):
        raise ValueError(
            f"KL({type(posterior).__name__} || {type(prior).__name__}) has no closed form; "
            "pass the sample z (and log_q without a posterior) for a Monte-Carlo estimate."
        )
    if log_q is None:
        log_q = posterior.log_prob(z)
    return log_q - prior.log_prob(z)


def elbo_terms(x, likelihood: tfd.Distribution, posterior, prior, z, beta=1.0, log_q=None) -> dict:
    """The per-example terms of the (beta-weighted) evidence lower bound.

    Args:
        x: data `[B, ...]`.
        likelihood: p(x|z) at the sampled z, batch shape `[B]`, event shape `x.shape[1:]`.
        posterior: q(z|x), batch shape `[B]`, event shape `[D]`, or None (a flow; see `log_q`).
        prior: p(z), event shape `[D]`.
        z: the reparameterized sample `[B, D]` the likelihood was computed at.
        beta: scalar weight of the KL term in the training objective.
        log_q: log q(z|x) at `z`, `[B]`, from the posterior's sampler: the KL's Monte-Carlo
            estimate uses it when there is no closed form.

    Returns:
        A dict of float32 tensors of shape `[B]`:
          `reconstruction`: -log p(x|z), summed over pixels;
          `kl`: KL(q(z|x) || p(z)), summed over latent dimensions;
          `elbo`: log p(x|z) - kl, the evidence lower bound itself (beta does not enter);
          `objective`: log p(x|z) - beta * kl, what training maximizes.
    """
    reconstruction = -likelihood.log_prob(tf.cast(x, tf.float32))
    kl = kl_divergence(posterior, prior, z, log_q)
    beta = tf.cast(beta, tf.float32)
    return {
        "reconstruction": reconstruction,
        "kl": kl,
        "elbo": -reconstruction - kl,
        "objective": -reconstruction - beta * kl,
    }


def log_importance_weights(x, posterior, prior, likelihood_fn, z, log_q=None):
    """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x) for K samples per example.

    Args:
        x: data `[B, ...]`.
        posterior: q(z|x), batch shape `[B]`, event shape `[D]`, or None when `log_q` is given.
        prior: p(z), event shape `[D]`.
        likelihood_fn: maps z `[K * B, D]` to p(x|z) with batch shape `[K * B]`.
        z: samples of q(z|x), `[K, B, D]`.
        log_q: log q(z_k|x) `[K, B]` as drawn with `z` (a flow's); else `posterior.log_prob(z)`.

    Returns:
        float32 `[K, B]`.
    """
    if log_q is None:
        log_q = posterior.log_prob(z)
    return _log_likelihoods(x, likelihood_fn, z) + prior.log_prob(z) - log_q


def _log_likelihoods(x, likelihood_fn, z):
    """log p(x|z_k) for `z` `[K, B, D]`: one decode of all K * B samples, float32 `[K, B]`."""
    num_samples, batch_size = tf.shape(z)[0], tf.shape(z)[1]
    x = tf.cast(x, tf.float32)
    tiled_x = tf.reshape(
        tf.tile(x[tf.newaxis], tf.concat([[num_samples], tf.ones([tf.rank(x)], tf.int32)], 0)),
        tf.concat([[num_samples * batch_size], tf.shape(x)[1:]], 0),
    )
    flat_z = tf.reshape(z, [num_samples * batch_size, -1])
    return tf.reshape(likelihood_fn(flat_z).log_prob(tiled_x), [num_samples, batch_size])



def kl_per_dimension(posterior, prior):
    """KL(q(z_d|x) || p(z_d)) for every latent dimension d, shape `[B, D]`.

    Defined only when both distributions factorize over the dimensions: a diagonal Gaussian
    posterior against a diagonal Gaussian prior (the standard normal). The row sums equal
    `kl_divergence(posterior, prior)`.

    Args:
        posterior: q(z|x), a `tfd.MultivariateNormalDiag` with batch shape `[B]`, event `[D]`.
        prior: p(z), a `tfd.MultivariateNormalDiag` with event shape `[D]`.

    Returns:
        float32 `[B, D]`.

    Raises:
        ValueError: either distribution does not factorize over the latent dimensions.
    """
    for role, distribution in (("posterior", posterior), ("prior", prior)):
        if not isinstance(distribution, tfd.MultivariateNormalDiag):
            raise ValueError(
                f"Expected a {role} that factorizes over latent dimensions (a diagonal Gaussian) for a "
                f"per-dimension KL. Received: {type(distribution).__name__}"
            )
    return tfd.kl_divergence(
        tfd.Normal(posterior.mean(), posterior.stddev()), tfd.Normal(prior.mean(), prior.stddev())
    )


def free_bits_kl(kl_per_dim, free_bits, mean_kl_per_dim):
    """The KL term under free bits (Kingma et al., 2016, the per-dimension form), per example.

    A dimension whose KL, averaged over the (global) batch, is at most `free_bits` nats costs
    the constant `free_bits` instead of its KL, so its gradient is zero; above it the dimension's
    KL is penalized as usual. Averaged over the batch this is sum_d max(free_bits, mean KL_d).

    Args:
        kl_per_dim: float `[B, D]`, as `kl_per_dimension`.
        free_bits: scalar lambda >= 0, in nats per dimension.
        mean_kl_per_dim: float `[D]`, the KL of each dimension averaged over the global batch
            (the caller all-reduces it across replicas). Gradients do not flow through it.

    Returns:
        float32 `[B]`.
    """
    free_bits = tf.cast(free_bits, tf.float32)
    active = tf.stop_gradient(mean_kl_per_dim) > free_bits
    return tf.reduce_sum(tf.where(active, kl_per_dim, free_bits), axis=-1)


GRADIENT_ESTIMATORS = ("standard", "dreg")


def importance_weighted_bound(
    x, posterior, prior, likelihood_fn, noise, gradient_estimator="standard", sample=None
):
    """The importance-weighted bound of Burda et al. (2015) per example, with K samples.

    IWAE_K(x) = log (1/K) sum_k w_k, w_k = p(x|z_k) p(z_k) / q(z_k|x), z_k = loc + scale * noise_k.
    K = 1 is the one-sample ELBO with a Monte-Carlo KL; the bound tightens as K grows.

    With `gradient_estimator="dreg"` the returned bound has the same value, but its gradient
    with respect to the encoder (through z) is the doubly-reparameterized estimator of Tucker et
    al. (2019), sum_k w~_k^2 (d log w_k / d z_k)(d z_k / d phi) with q's parameters held fixed in
    log w_k and w~ the normalized weights; the gradient of the decoder and of the prior is the
    standard one, sum_k w~_k grad log w_k. Both estimators are unbiased for the encoder; DReG's
    variance stays low as K grows, the standard one's signal-to-noise ratio falls.

    Args:
        x: data `[B, ...]`.
        posterior: q(z|x), batch shape `[B]`, event shape `[D]`; for DReG a
            `tfd.MultivariateNormalDiag` (log q(z|x) must be a function of z with the encoder's
            outputs held fixed, with no inverse pass).
        prior: p(z), event shape `[D]`.
        likelihood_fn: maps z `[K * B, D]` to p(x|z) with batch shape `[K * B]`.
        noise: standard normal `[K, B, D]`.
        gradient_estimator: "standard" or "dreg".
        sample: None, or `(z, log_q)` (`[K, B, D]`, `[K, B]`) drawn from `noise` by a
            `tfvae.distributions.Posterior` (a flow's, with `posterior` None): used instead of
            z = loc + scale * noise. Only with the standard estimator unless q is the Gaussian.

    Returns:
        `(bound, log_likelihoods)`: float32 `[B]` and log p(x|z_k) `[K, B]`.

    Raises:
        ValueError: an unknown estimator, or DReG with another posterior.
    """
    if gradient_estimator not in GRADIENT_ESTIMATORS:
        raise ValueError(
            f"Expected gradient_estimator in {list(GRADIENT_ESTIMATORS)}. "
            f"Received: gradient_estimator={gradient_estimator!r}"
        )
    if sample is not None:
        z, log_q = sample
    else:
        z = reparameterized_sample(posterior, noise)
        log_q = None
    log_num_samples = tf.math.log(tf.cast(tf.shape(z)[0], tf.float32))
    if gradient_estimator == "standard":
        log_likelihoods = _log_likelihoods(x, likelihood_fn, z)
        log_weights = log_likelihoods + prior.log_prob(z) - (
            posterior.log_prob(z) if log_q is None else log_q
        )
        return tf.reduce_logsumexp(log_weights, axis=0) - log_num_samples, log_likelihoods
    if not isinstance(posterior, tfd.MultivariateNormalDiag):
        raise ValueError(
            "Expected a diagonal Gaussian posterior for the DReG estimator (log q(z|x) with the "
            f"encoder held fixed). Received: {type(posterior).__name__ if posterior is not None else 'a flow'}"
        )
    held_posterior = tfd.MultivariateNormalDiag(
        tf.stop_gradient(posterior.mean()), tf.stop_gradient(posterior.stddev())
    )
    # The weights are computed at a z cut off from the encoder: their gradient reaches the decoder
    # and the prior directly, and the encoder only through the surrogate below, which carries
    # d log w_k / d z_k (from one extra backward pass to z) times w~_k^2.
    held_z = tf.stop_gradient(z)
    with tf.GradientTape() as tape:
        tape.watch(held_z)
        log_likelihoods = _log_likelihoods(x, likelihood_fn, held_z)
        log_weights = log_likelihoods + prior.log_prob(held_z) - held_posterior.log_prob(held_z)
    log_weight_gradients = tf.stop_gradient(tape.gradient(log_weights, held_z))
    normalized = tf.stop_gradient(tf.nn.softmax(log_weights, axis=0))
    generative = tf.reduce_sum(normalized * log_weights, axis=0)
    encoder = tf.reduce_sum(normalized**2 * tf.reduce_sum(log_weight_gradients * z, axis=-1), axis=0)
    surrogate = generative + encoder
    bound = tf.reduce_logsumexp(log_weights, axis=0) - log_num_samples
    return tf.stop_gradient(bound) + surrogate - tf.stop_gradient(surrogate), log_likelihoods
