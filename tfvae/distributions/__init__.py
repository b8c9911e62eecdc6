"""Likelihoods p(x|z), priors p(z) and posteriors q(z|x): tensors in, distributions (or samples) out.

One module per role: `likelihoods` (the decoder's output distribution, Bernoulli and Gaussian
and, for 8-bit images, categorical and discretized logistic), `priors` and `posteriors` (the
diagonal Gaussian and the inverse autoregressive flow). Every public
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
from tfvae.distributions.posteriors import (
    POSTERIORS,
    DiagonalGaussianPosterior,
    IAFPosterior,
    MaskedDense,
    Posterior,
    PosteriorParameters,
    get_posterior,
    posterior_name,
)
from tfvae.distributions.priors import (
    PRIORS,
    ClassGaussianPrior,
    MixturePrior,
    Prior,
    StandardNormalPrior,
    VampPrior,
    get_prior,
    prior_name,
)

__all__ = [
    "LIKELIHOODS",
    "POSTERIORS",
    "PRIORS",
    "BernoulliLikelihood",
    "CategoricalLikelihood",
    "ClassGaussianPrior",
    "ContinuousBernoulliLikelihood",
    "DiagonalGaussianPosterior",
    "DiscretizedLogisticLikelihood",
    "GaussianLikelihood",
    "GaussianPredictedScaleLikelihood",
    "IAFPosterior",
    "IndependentSubpixels",
    "Likelihood",
    "MaskedDense",
    "MixturePrior",
    "Posterior",
    "PosteriorParameters",
    "Prior",
    "StandardNormalPrior",
    "VampPrior",
    "get_likelihood",
    "get_posterior",
    "get_prior",
    "likelihood_name",
    "posterior_name",
    "prior_name",
]
