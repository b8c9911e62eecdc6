"""The objective a `tfvae.VAE` trains on: one small serializable object, the math in `bounds.py`.

`ELBO` (the default: beta-weighted, with an optional KL schedule and free bits) and `IWAE` (K
importance samples, the standard or the DReG gradient). The VAE calls `objective(vae, images,
beta, training)` in `train_step` and `test_step`, and `objective.kl_weight(step, variable)` for
the beta of the step.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfvae.distributions.posteriors import PosteriorParameters
from tfvae.objectives.bounds import (
    GRADIENT_ESTIMATORS,
    elbo_terms,
    free_bits_kl,
    importance_weighted_bound,
    kl_divergence,
    kl_per_dimension,
)
from tfvae.schedules import get_kl_schedule


def _global_batch_mean(values):
    """The mean over the global batch of `values` `[B, D]`: summed over the replicas, then divided."""
    total = tf.reduce_sum(values, axis=0)
    count = tf.cast(tf.shape(values)[0], values.dtype)
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        total, count = context.all_reduce("sum", [total, count])
    return tf.math.divide_no_nan(total, count)


class Objective:
    """Base class of what a VAE trains on.

    Subclasses implement `__call__(vae, images, beta, training)` returning `(per_example_loss,
    terms)`: the loss `[B]` whose batch mean is minimized (its gradient is the estimator's), and
    the dict of `[B]` tensors `reconstruction`, `kl`, `elbo` (the one-sample, beta = 1 ELBO),
    reported as metrics.
    """

    def kl_weight(self, step, beta_variable):
        """The beta of the step at `step` (optimizer iterations), or None without a KL term."""
        del step, beta_variable
        return None

    def writes_kl_weight(self) -> bool:
        """Whether the train step writes `kl_weight` into the model's `beta` variable."""
        return False

    def initial_kl_weight(self) -> float:
        """The value the model's `beta` variable starts from."""
        return 1.0

    def check_model(self, vae) -> None:
        """Raises ValueError when this objective cannot train `vae` (checked at construction)."""

    def __call__(self, vae, images, beta, training):
        raise NotImplementedError

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"{type(self).__name__}({arguments})"


@keras.saving.register_keras_serializable(package="tfvae")
class ELBO(Objective):
    """E_q[log p(x|z)] - beta_t * KL(q(z|x) || p(z)), one reparameterized sample per example.

    beta_t = beta * kl_schedule(step). With the constant schedule (the default) beta is the
    model's `beta` variable, which starts at `beta` and which callbacks may change during `fit`;
    with another schedule the train step computes beta_t from `optimizer.iterations` and writes
    it into that variable each step (logged as `beta`).

    With `free_bits` = lambda > 0 the KL term is sum_d max(lambda, mean KL_d), the mean taken over
    the global batch (all replicas): a dimension below lambda nats gets no KL gradient (Kingma et
    al., 2016). It needs a posterior and a prior that factorize over the latent dimensions.

    Args:
        beta: float >= 0. The KL weight (the schedule's target).
        kl_schedule: None, "constant" or a `tfvae.schedules.KLSchedule` (`LinearWarmup`,
            `CyclicalAnnealing`).
        free_bits: float >= 0. Nats per latent dimension not penalized; 0 turns it off.

    Raises:
        ValueError: a negative beta or free_bits, or an unknown schedule; from the VAE, free bits
            with a prior that does not factorize.
    """

    def __init__(self, beta: float = 1.0, kl_schedule=None, free_bits: float = 0.0):
        for name, value in (("beta", beta), ("free_bits", free_bits)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"Expected {name} to be a number >= 0. Received: {name}={value!r}")
        self.beta = float(beta)
        self.kl_schedule = get_kl_schedule(kl_schedule)
        self.free_bits = float(free_bits)

    def kl_weight(self, step, beta_variable):
        if self.kl_schedule.is_constant:
            return tf.cast(tf.convert_to_tensor(beta_variable), tf.float32)
        return self.beta * self.kl_schedule(step)

    def writes_kl_weight(self):
        return not self.kl_schedule.is_constant

    def initial_kl_weight(self):
        return self.beta * float(self.kl_schedule(0))

    def check_model(self, vae):
        if self.free_bits > 0:
            if not vae.posterior_factorized:
                raise ValueError(
                    "Free bits need a per-dimension KL: expected a posterior that factorizes "
                    f"(diagonal_gaussian). Received: {vae.posterior_description}"
                )
            latent_zeros = tf.zeros([1, vae.latent_dim])
            placeholder = vae.posterior.base_distribution(PosteriorParameters(latent_zeros, latent_zeros))
            try:
                kl_per_dimension(placeholder, vae.prior_distribution())
            except ValueError as error:
                raise ValueError(f"Free bits need a per-dimension KL. {error}") from None

    def __call__(self, vae, images, beta, training):
        noise = vae.draw_noise(tf.stack([tf.shape(images)[0], vae.latent_dim]))
        z, log_q, posterior = vae.sample_latents(images, noise, training=training)
        prior = vae.prior_distribution()
        terms = elbo_terms(images, vae.decode(z, training=training), posterior, prior, z, beta, log_q)
        if self.free_bits == 0:
            return -terms["objective"], terms
        kl_per_dim = kl_per_dimension(posterior, prior)
        kl = free_bits_kl(kl_per_dim, self.free_bits, _global_batch_mean(kl_per_dim))
        return terms["reconstruction"] + tf.cast(beta, tf.float32) * kl, terms

    def __repr__(self):
        return f"ELBO(beta={self.beta!r}, kl_schedule={self.kl_schedule!r}, free_bits={self.free_bits!r})"

    def get_config(self):
        return {
            "beta": self.beta,
            "kl_schedule": keras.saving.serialize_keras_object(self.kl_schedule),
            "free_bits": self.free_bits,
        }


@keras.saving.register_keras_serializable(package="tfvae")
class IWAE(Objective):
    """The importance-weighted bound with K samples per example (Burda et al., 2015).

    log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x): a bound on log p(x) that tightens with K.
    There is no separate KL term, hence no beta, schedule or free bits. Each step decodes K x
    batch images: memory and time grow K-fold. `gradient_estimator="dreg"` gives the encoder the
    doubly-reparameterized gradient (Tucker et al., 2019), whose variance stays low as K grows;
    the decoder's gradient is the same with either.

    Args:
        num_samples: int >= 1. K.
        gradient_estimator: "standard" or "dreg".

    Raises:
        ValueError: num_samples < 1 or an unknown estimator.
    """

    def __init__(self, num_samples: int = 5, gradient_estimator: str = "standard"):
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"Expected num_samples to be an integer >= 1. Received: num_samples={num_samples!r}")
        if gradient_estimator not in GRADIENT_ESTIMATORS:
            raise ValueError(
                f"Expected gradient_estimator in {list(GRADIENT_ESTIMATORS)}. "
                f"Received: gradient_estimator={gradient_estimator!r}"
            )
        self.num_samples = num_samples
        self.gradient_estimator = gradient_estimator

    def check_model(self, vae):
        if self.gradient_estimator == "dreg" and not vae.posterior_factorized:
            raise ValueError(
                "DReG re-evaluates log q(z|x) at a given z: expected the diagonal_gaussian "
                f"posterior. Received: {vae.posterior_description}"
            )

    def __call__(self, vae, images, beta, training):
        del beta
        noise = vae.draw_noise(tf.stack([self.num_samples, tf.shape(images)[0], vae.latent_dim]))
        z, log_q, posterior = vae.sample_latents(images, noise, training=training)
        prior = vae.prior_distribution()
        bound, log_likelihoods = importance_weighted_bound(
            images, posterior, prior, lambda flat_z: vae.decode(flat_z, training=training), noise,
            self.gradient_estimator, sample=(z, log_q),
        )
        # The reported ELBO: the first sample's reconstruction and the KL, as ELBO reports them.
        reconstruction = -log_likelihoods[0]
        kl = kl_divergence(posterior, prior, z[0], log_q[0])
        terms = {"reconstruction": reconstruction, "kl": kl, "elbo": -reconstruction - kl}
        return -bound, terms

    def get_config(self):
        return {"num_samples": self.num_samples, "gradient_estimator": self.gradient_estimator}


OBJECTIVES = {"elbo": ELBO, "iwae": IWAE}


def get_objective(identifier) -> Objective:
    """Returns an Objective from None (the ELBO), a name ("elbo", "iwae"), an instance or a config.

    Raises:
        ValueError: anything else.
    """
    if identifier is None:
        return ELBO()
    if isinstance(identifier, Objective):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in OBJECTIVES:
        return OBJECTIVES[identifier.lower()]()
    if isinstance(identifier, dict):
        resolved = keras.saving.deserialize_keras_object(identifier)
        if isinstance(resolved, Objective):
            return resolved
    raise ValueError(
        f"Expected the objective as a name in {sorted(OBJECTIVES)} or a tfvae.objectives.Objective "
        f"such as ELBO(beta=1.0) or IWAE(num_samples=5). Received: objective={identifier!r}"
    )
