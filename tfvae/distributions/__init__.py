"""Likelihoods p(x|z) and priors p(z): tensors in, TensorFlow Probability distributions out.

One module per role: `likelihoods` (the decoder's output distribution, Bernoulli and Gaussian
and, for 8-bit images, categorical and discretized logistic) and `priors`. Every public
name is re-exported here, so `tfvae.distributions.X` keeps working.
"""

from tfvae.distributions.likelihoods import (
    LIKELIHOODS,
    BernoulliLikelihood,
    CategoricalLikelihood,
    ContinuousBernoulliLikelihood,
    DiscretizedLogisticLikelihood,
    GaussianLikelihood,
    GaussianPredictedScaleLikelihood,
    IndependentSubpixels,
    Likelihood,
    get_likelihood,
    likelihood_name,
)
from tfvae.distributions.priors import (
    PRIORS,
    MixturePrior,
    Prior,
    StandardNormalPrior,
    VampPrior,
    get_prior,
    prior_name,
)

__all__ = [
    "LIKELIHOODS",
    "PRIORS",
    "BernoulliLikelihood",
    "CategoricalLikelihood",
    "ContinuousBernoulliLikelihood",
    "DiscretizedLogisticLikelihood",
    "GaussianLikelihood",
    "GaussianPredictedScaleLikelihood",
    "IndependentSubpixels",
    "Likelihood",
    "MixturePrior",
    "Prior",
    "StandardNormalPrior",
    "VampPrior",
    "get_likelihood",
    "get_prior",
    "likelihood_name",
    "prior_name",
]
