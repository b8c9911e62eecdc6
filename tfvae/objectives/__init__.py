"""What a VAE trains on: the bounds as pure per-example functions (`bounds.py`, the math) and the
small serializable objects a `tfvae.VAE` holds (`ELBO`, `IWAE`)."""

from tfvae.objectives.bounds import (
    GRADIENT_ESTIMATORS,
    POSTERIOR_MIN_SCALE,
    elbo_terms,
    free_bits_kl,
    importance_weighted_bound,
    kl_divergence,
    kl_per_dimension,
    log_importance_weights,
    posterior_distribution,
    reparameterized_sample,
)
from tfvae.objectives.training_objectives import ELBO, IWAE, OBJECTIVES, Objective, get_objective
from tfvae.schedules import ConstantSchedule, CyclicalAnnealing, KLSchedule, LinearWarmup

__all__ = [
    "ELBO",
    "GRADIENT_ESTIMATORS",
    "IWAE",
    "OBJECTIVES",
    "POSTERIOR_MIN_SCALE",
    "ConstantSchedule",
    "CyclicalAnnealing",
    "KLSchedule",
    "LinearWarmup",
    "Objective",
    "elbo_terms",
    "free_bits_kl",
    "get_objective",
    "importance_weighted_bound",
    "kl_divergence",
    "kl_per_dimension",
    "log_importance_weights",
    "posterior_distribution",
    "reparameterized_sample",
]
