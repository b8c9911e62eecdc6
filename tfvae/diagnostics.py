"""Posterior-collapse diagnostics: active units, the KL of each latent dimension, and I(x; z) under q.

A collapsed latent dimension is one the encoder does not use: q(z_d|x) is the same for every x
(usually the prior), its KL is about 0, and the decoder learns to ignore it. Three standard
measures tell how much of the latent space a trained model uses:

- active units (Burda et al., 2015): dimension d is active when the variance over the data of its
  posterior mean, Cov_x(E_q[z_d|x]), exceeds a threshold (0.01);
- the KL of each dimension, KL(q(z_d|x) || p(z_d)) averaged over the data, where q and p factorize
  over the dimensions (they sum to the total KL);
- the mutual information between x and z under the encoder's joint q(x, z) = p_data(x) q(z|x)
  (Hoffman & Johnson, 2016; Dieng et al., 2019), the part of the KL that carries information
  about x.

Example:

>>> import numpy as np, tfvae
>>> from tfvae.diagnostics import posterior_diagnostics
>>> vae = tfvae.build_conv_vae((8, 8, 1), latent_dim=4, seed=0)
>>> report = posterior_diagnostics(vae, np.random.rand(200, 8, 8, 1).astype("float32"))
>>> sorted(report)  # doctest: +NORMALIZE_WHITESPACE
['active_unit_threshold', 'active_units', 'kl', 'kl_per_dimension', 'latent_dim',
 'mutual_information', 'mutual_information_examples', 'mutual_information_max',
 'num_examples', 'posterior_mean_variance']
"""

from __future__ import annotations

import contextlib
import math
import weakref

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfvae.objectives import kl_divergence

tfd = tfp.distributions

#: Burda et al.'s threshold on Cov_x(E_q[z_d|x]) above which dimension d counts as active.
ACTIVE_UNIT_THRESHOLD = 0.01
#: At most this many examples enter the mutual-information estimate (its cost grows as N^2).
MAX_MUTUAL_INFORMATION_EXAMPLES = 10_000
# Pairs (z_i, x_j) scored at once in the mutual-information estimate, times the latent size.
_PAIR_BUDGET = 4_000_000


def posterior_mean_variance(posterior_means) -> np.ndarray:
    """Cov_x(E_q[z_d|x]) for each dimension d: the variance over examples of the posterior means.

    Args:
        posterior_means: `[N, D]` posterior means E_q[z|x] of N examples.

    Returns:
        float64 array `[D]`.

    Raises:
        ValueError: not a `[N, D]` array with N >= 2.
    """
    means = np.asarray(posterior_means, dtype=np.float64)
    if means.ndim != 2 or means.shape[0] < 2:
        raise ValueError(
            f"Expected posterior means of shape [N, D] with N >= 2. Received: shape {means.shape}"
        )
    return means.var(axis=0)


def active_units(posterior_means, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """The number of active latent dimensions (Burda et al., 2015).

    Dimension d is active when Cov_x(E_q[z_d|x]) > `threshold`: an encoder that gives every x the
    same mean in d tells the decoder nothing through d.

    Args:
        posterior_means: `[N, D]` posterior means E_q[z|x] of N >= 2 examples.
        threshold: float >= 0. Burda et al. use 0.01.

    Returns:
        int in [0, D].

    Raises:
        ValueError: a negative threshold, or means not of shape `[N, D]` with N >= 2.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
        raise ValueError(f"Expected threshold to be a number >= 0. Received: threshold={threshold!r}")
    return int(np.count_nonzero(posterior_mean_variance(posterior_means) > threshold))


def _factors(distribution: tfd.Distribution):
    """The per-dimension scalar distributions of a distribution that factorizes over its event
    `[D]`, with batch shape `[..., D]`; None when it does not (as far as its type says)."""
    if isinstance(distribution, tfd.MultivariateNormalDiag):
        # Its scale is a diagonal operator: stddev() is exactly that diagonal.
        return tfd.Normal(loc=distribution.mean(), scale=distribution.stddev())
    if isinstance(distribution, tfd.Independent) and distribution.event_shape.rank == 1:
        if distribution.distribution.event_shape.rank == 0:
            return distribution.distribution
    return None


def kl_per_dimension(posterior: tfd.Distribution, prior: tfd.Distribution):
    """KL(q(z_d|x) || p(z_d)) for each example and latent dimension.

    Defined when q(z|x) and p(z) both factorize over the latent dimensions: diagonal Gaussians
    (`tfd.MultivariateNormalDiag`) or `tfd.Independent` products of scalar distributions whose
    KL has a closed form. The KL of a product is then the sum of the dimensions' KLs, so the
    result sums over its last axis to `tfd.kl_divergence(posterior, prior)`.

    Args:
        posterior: q(z|x), batch shape `[B]`, event shape `[D]`.
        prior: p(z), batch shape `[]` (or `[B]`), event shape `[D]`.

    Returns:
        float32 tensor `[B, D]` in nats.

    Raises:
        ValueError: q or p does not factorize over the dimensions (a full-covariance Gaussian, a
            mixture, a flow), or the pair has no closed-form KL.
    """
    posterior_factors, prior_factors = _factors(posterior), _factors(prior)
    if posterior_factors is None or prior_factors is None:
        raise ValueError(
            "Expected q(z|x) and p(z) that factorize over the latent dimensions (diagonal "
            "Gaussians, or tfd.Independent products of scalar distributions) for a per-dimension "
            f"KL. Received: q={type(posterior).__name__}, p={type(prior).__name__}"
        )
    try:
        return tf.cast(tfd.kl_divergence(posterior_factors, prior_factors), tf.float32)
    except NotImplementedError:
        raise ValueError(
            "Expected a closed-form KL between the dimensions of q(z|x) and p(z). Received: "
            f"{type(posterior_factors).__name__} against {type(prior_factors).__name__}"
        ) from None


def _image_batches(data, batch_size: int, labels=None):
    """`(images, labels)` batches from an array `[N, H, W, C]` (with `labels` `[N, ...]` or None),
    a tensor or a dataset of batches (or of `(images, labels, ...)` tuples); labels None without."""
    if not isinstance(data, tf.data.Dataset):
        for start in range(0, len(data), batch_size):
            batch_labels = None if labels is None else labels[start : start + batch_size]
            yield tf.cast(data[start : start + batch_size], tf.float32), batch_labels
        return
    for batch in data:
        if isinstance(batch, (list, tuple)):
            yield tf.cast(batch[0], tf.float32), batch[1] if len(batch) > 1 else None
        else:
            yield tf.cast(batch, tf.float32), None


def _given_labels(vae, labels):
    """The conditional model's `conditioned_on(labels)`; nothing for an unconditional one."""
    return contextlib.nullcontext() if labels is None else vae.conditioned_on(labels)


def concatenate_posteriors(posteriors: list) -> tfd.Distribution:
    """One distribution with batch shape `[N]` from q(z|x) of several batches `[B_k]`, in order.

    Diagonal Gaussians are joined into one `tfd.MultivariateNormalDiag` (so the mutual-information
    estimate takes its closed form); other distributions into a `tfd.BatchConcat`.
    """
    if len(posteriors) == 1:
        return posteriors[0]
    if all(isinstance(q, tfd.MultivariateNormalDiag) for q in posteriors):
        return tfd.MultivariateNormalDiag(
            loc=tf.concat([q.mean() for q in posteriors], 0),
            scale_diag=tf.concat([q.stddev() for q in posteriors], 0),
        )
    return tfd.BatchConcat(posteriors, axis=0)


def _pairwise_log_prob(posterior: tfd.Distribution, z):
    """log q(z_i | x_j) for every row z_i of `z` `[C, D]` and every x_j of `posterior` `[N]`: `[C, N]`."""
    factors = _factors(posterior)
    if isinstance(factors, tfd.Normal):
        # Diagonal Gaussian: -1/2 sum_d ((z_id - m_jd) / s_jd)^2 - sum_d log s_jd - D/2 log(2 pi),
        # with the square expanded into matrix products (no [C, N, D] tensor).
        z = tf.cast(z, tf.float64)
        loc = tf.cast(factors.loc, tf.float64)
        precision = 1.0 / tf.square(tf.cast(factors.scale, tf.float64))
        squares = (
            tf.matmul(tf.square(z), precision, transpose_b=True)
            - 2.0 * tf.matmul(z, loc * precision, transpose_b=True)
            + tf.reduce_sum(tf.square(loc) * precision, axis=1)[tf.newaxis, :]
        )
        log_normalizer = tf.reduce_sum(tf.math.log(tf.cast(factors.scale, tf.float64)), axis=1)
        dims = tf.cast(tf.shape(z)[1], tf.float64)
        return -0.5 * squares - log_normalizer[tf.newaxis, :] - 0.5 * dims * math.log(2 * math.pi)
    # Any other posterior: its own log_prob, broadcast over [C, N] (BatchConcat does not
    # broadcast, so its parts are scored one by one).
    parts = posterior.distributions if isinstance(posterior, tfd.BatchConcat) else [posterior]
    return tf.concat(
        [tf.cast(part.log_prob(tf.cast(z, part.dtype)[:, tf.newaxis, :]), tf.float64) for part in parts], axis=1
    )


def mutual_information(posterior: tfd.Distribution, z) -> float:
    """Estimates I(x; z) under q(x, z) = p_data(x) q(z|x) from N examples x_i and one z_i ~ q(z|x_i).

    I(x; z) = E_x E_q(z|x)[log q(z|x) - log q(z)], with the aggregate posterior q(z) replaced by
    the mixture (1/N) sum_j q(z|x_j) over the same N examples (Hoffman & Johnson, 2016; the
    estimator of Dieng et al., 2019 and He et al., 2019):

        I ~= (1/N) sum_i [log q(z_i|x_i) - log (1/N) sum_j q(z_i|x_j)].

    The estimate is biased (the mixture includes x_i itself, and the log of a mean is not the
    mean of the logs) and can never exceed log N: each term is at most log N, since the mixture
    is at least q(z_i|x_i) / N. A model that uses its latent space well can score close to
    log N, so use N >= 1,000 examples and compare figures at the same N.

    Args:
        posterior: q(z|x) of the N examples: batch shape `[N]`, event shape `[D]` (see
            `concatenate_posteriors` for several batches).
        z: `[N, D]`, z_i drawn from q(z|x_i).

    Returns:
        float, in nats.

    Raises:
        ValueError: the posterior's batch does not match the rows of z, or N < 1.
    """
    z = tf.convert_to_tensor(z)
    num_examples = int(z.shape[0])
    if num_examples < 1 or list(posterior.batch_shape) != [num_examples]:
        raise ValueError(
            "Expected a posterior with batch shape [N] for samples z of shape [N, D], N >= 1. "
            f"Received: batch shape {list(posterior.batch_shape)}, z of shape {list(z.shape)}"
        )
    chunk = max(1, _PAIR_BUDGET // (num_examples * max(1, int(z.shape[1]))))
    terms = []
    for start in range(0, num_examples, chunk):
        log_q = _pairwise_log_prob(posterior, z[start : start + chunk])  # [C, N]
        rows = tf.range(tf.shape(log_q)[0])
        own = tf.gather_nd(log_q, tf.stack([rows, rows + start], axis=1))
        aggregate = tf.reduce_logsumexp(log_q, axis=1) - math.log(num_examples)
        terms.append((own - aggregate).numpy())
    return float(np.mean(np.concatenate(terms)))


#: One compiled batch pass per model, kept while the model lives (a new tf.function on every
#: call would be traced again each time).
_BATCH_STATISTICS = weakref.WeakKeyDictionary()


def _batch_statistics_function(vae):
    """A tf.function of (images, seed) giving z ~ q(z|x), E_q[z|x], the KL, and where defined the
    per-dimension KL and the posterior's stddev (diagonal Gaussians): TFP's eager overhead per
    batch would otherwise dominate."""
    if vae in _BATCH_STATISTICS:
        return _BATCH_STATISTICS[vae]

    model = weakref.ref(vae)  # a strong reference here would keep the model alive forever

    @tf.function(reduce_retracing=True)
    def batch_statistics(images, batch_seed, labels=None):
        # A conditional model's statistics are those of q(z|x, y) and p(z|y), given the labels.
        with _given_labels(model(), labels):
            return _statistics(images, batch_seed)

    def _statistics(images, batch_seed):
        if not model().posterior_factorized:
            # A flow (or two stochastic layers): z and log q(z|x) come from its sampler; E_q[z|x]
            # has no closed form, so the posterior's point (the sample at zero noise) stands for
            # it in the active units.
            z, log_q = model().posterior_sample(images, 1, seed=batch_seed)
            return {
                "z": z[0],
                "mean": model().posterior_point(images),
                "kl": kl_divergence(None, model().prior_distribution(), z[0], log_q[0]),
            }
        posterior, prior = model().encode(images), model().prior_distribution()
        z = posterior.sample(seed=batch_seed)
        statistics = {"z": z, "mean": posterior.mean(), "kl": kl_divergence(posterior, prior, z)}
        try:  # decided by the distributions' types, once, when traced
            statistics["kl_per_dimension"] = kl_per_dimension(posterior, prior)
        except ValueError:
            pass
        if isinstance(posterior, tfd.MultivariateNormalDiag):
            statistics["stddev"] = posterior.stddev()
        return statistics

    _BATCH_STATISTICS[vae] = batch_statistics
    return batch_statistics


def posterior_diagnostics(
    vae,
    data,
    threshold: float = ACTIVE_UNIT_THRESHOLD,
    batch_size: int = 100,
    max_mutual_information_examples: int = MAX_MUTUAL_INFORMATION_EXAMPLES,
    seed: int = 0,
    labels=None,
) -> dict:
    """Active units, the KL of each dimension and I(x; z) of a VAE on `data`, from one pass.

    Args:
        vae: a `tfvae.VAE` (anything with `encode(images)`, `prior_distribution()` and
            `latent_dim`). For a `tfvae.ConditionalVAE` every figure is given y: q(z|x, y) and
            its KL to p(z|y).
        data: images `[N, H, W, C]` (array or tensor, N >= 2) or a `tf.data.Dataset` of image
            batches (or of `(images, ...)` tuples; `(images, labels, ...)` for a conditional
            model).
        threshold: the active-unit threshold on Cov_x(E_q[z_d|x]).
        batch_size: examples per batch when `data` is an array.
        max_mutual_information_examples: I(x; z) is estimated on the first this many examples
            (its cost grows as N^2); the other figures use all of them.
        seed: seed of the z_i ~ q(z|x_i) of the mutual-information estimate.
        labels: None, or the labels `[N]` (ids) or `[N, C]` (one-hot) of array `data`, for a
            conditional model.

    Returns:
        A dict of plain Python values (JSON-ready):
          `num_examples`, `latent_dim`;
          `active_units` (int) with `active_unit_threshold`, and `posterior_mean_variance`
          (`[D]`, Cov_x(E_q[z_d|x]));
          `kl`: the mean KL(q(z|x) || p(z)) per example (Monte-Carlo at z_i when no closed form);
          `kl_per_dimension`: `[D]` means (summing to `kl`), or None when q or p does not factorize;
          `mutual_information` (nats; None for a flow posterior, `iaf`, or a `TwoLayerVAE`, whose q(z|x) is not
          evaluated at other images' samples), `mutual_information_examples` (N of the estimate)
          and `mutual_information_max` (log N, its upper bound). For a flow, the active units use
          the posterior's point (the flow at zero noise) for E_q[z|x].

    Raises:
        ValueError: fewer than 2 examples, or a bad threshold; labels for an unconditional
            model, or missing or bad labels for a conditional one.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
        raise ValueError(f"Expected threshold to be a number >= 0. Received: threshold={threshold!r}")

    conditional = hasattr(vae, "conditioned_on")
    if labels is not None and not conditional:
        vae._refuse_labels(labels, "posterior_diagnostics")
    batch_statistics = _batch_statistics_function(vae)
    batches, posteriors, mi_examples = [], [], 0
    for step, (images, batch_labels) in enumerate(_image_batches(data, batch_size, labels)):
        # An unconditional model ignores the labels of (images, labels) datasets.
        batch_labels = vae.one_hot(batch_labels, int(images.shape[0])) if conditional else None
        statistics = batch_statistics(images, tf.constant([seed, step], tf.int32), batch_labels)
        batches.append({key: value.numpy() for key, value in statistics.items()})
        if not vae.posterior_factorized:
            pass  # I(x; z) needs q(z_i|x_j) at other images' samples: no inverse pass of a flow
        elif "stddev" not in statistics and mi_examples < max_mutual_information_examples:
            # A posterior without a closed-form pairwise density: kept as a distribution.
            with _given_labels(vae, batch_labels):
                posteriors.append(vae.encode(images))
        mi_examples = min(max_mutual_information_examples, mi_examples + len(batches[-1]["z"]))
    if not batches:
        raise ValueError("Expected at least 2 examples. Received: empty data")
    values = {key: np.concatenate([batch[key] for batch in batches]) for key in batches[0]}
    if not vae.posterior_factorized:
        posterior = None
    elif "stddev" in values:
        posterior = tfd.MultivariateNormalDiag(
            loc=values["mean"][:mi_examples], scale_diag=values["stddev"][:mi_examples]
        )
    else:
        posterior = concatenate_posteriors(posteriors)[:mi_examples]
    means = values["mean"]
    return {
        "num_examples": int(len(means)),
        "latent_dim": int(vae.latent_dim),
        "active_units": active_units(means, threshold),
        "active_unit_threshold": float(threshold),
        "posterior_mean_variance": posterior_mean_variance(means).tolist(),
        "kl": float(values["kl"].astype(np.float64).mean()),
        "kl_per_dimension": (
            values["kl_per_dimension"].astype(np.float64).mean(axis=0).tolist()
            if "kl_per_dimension" in values
            else None
        ),
        "mutual_information": (
            mutual_information(posterior, values["z"][:mi_examples]) if posterior is not None else None
        ),
        "mutual_information_examples": mi_examples,
        "mutual_information_max": math.log(mi_examples),
    }
