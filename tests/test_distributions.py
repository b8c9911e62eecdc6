"""Likelihoods and priors against closed forms computed with NumPy."""

import numpy as np
import pytest
import tensorflow as tf

from tfvae.distributions import (
    BernoulliLikelihood,
    GaussianLikelihood,
    StandardNormalPrior,
    get_likelihood,
    get_prior,
)


def _log_sigmoid(v):
    return -np.logaddexp(0.0, -v)


def test_bernoulli_log_prob_matches_numpy_for_gray_and_binary_pixels():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 4, 1)).astype(np.float32) * 3
    x = rng.uniform(size=(3, 4, 4, 1)).astype(np.float32)
    x[0] = np.round(x[0])
    expected = (x * _log_sigmoid(logits) + (1 - x) * _log_sigmoid(-logits)).sum(axis=(1, 2, 3))
    likelihood = BernoulliLikelihood()
    got = likelihood.distribution(tf.constant(logits)).log_prob(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(likelihood.mean(logits), 1 / (1 + np.exp(-logits)), rtol=1e-5)


def test_bernoulli_rejects_data_outside_unit_interval():
    with pytest.raises(ValueError, match=r"expects data in \[0, 1\].*Received: data in \[0, 255\]"):
        BernoulliLikelihood().check_data(0.0, 255.0)


def test_gaussian_log_prob_matches_numpy_with_learned_scale():
    likelihood = GaussianLikelihood(initial_scale=0.3)
    likelihood.build((None, 2, 2, 3))
    np.testing.assert_allclose(likelihood.scale.numpy(), [0.3] * 3, rtol=1e-5)
    rng = np.random.default_rng(1)
    loc = rng.normal(size=(2, 2, 2, 3)).astype(np.float32)
    x = rng.normal(size=(2, 2, 2, 3)).astype(np.float32)
    scale = 0.3
    expected = (-0.5 * ((x - loc) / scale) ** 2 - np.log(scale) - 0.5 * np.log(2 * np.pi)).sum(
        axis=(1, 2, 3)
    )
    got = likelihood.distribution(tf.constant(loc)).log_prob(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert len(likelihood.trainable_weights) == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [({"min_scale": 0.0}, "min_scale > 0"), ({"initial_scale": 1e-4}, "initial_scale > min_scale")],
)
def test_gaussian_rejects_bad_scales(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GaussianLikelihood(**kwargs)


def test_standard_normal_prior():
    prior = StandardNormalPrior().distribution(5)
    assert prior.event_shape == (5,)
    z = np.linspace(-2, 2, 10, dtype=np.float32).reshape(2, 5)
    expected = (-0.5 * z**2 - 0.5 * np.log(2 * np.pi)).sum(axis=1)
    np.testing.assert_allclose(prior.log_prob(z).numpy(), expected, rtol=1e-5)


def test_names_resolve_and_unknown_names_are_clear_errors():
    assert isinstance(get_likelihood("bernoulli"), BernoulliLikelihood)
    assert isinstance(get_likelihood("Gaussian"), GaussianLikelihood)
    assert isinstance(get_prior("standard-normal"), StandardNormalPrior)
    with pytest.raises(ValueError, match=r"Unknown likelihood 'poisson'. Expected one of \['bernoulli', 'categorical', 'continuous_bernoulli', 'discretized_logistic', 'gaussian', 'gaussian_predicted_scale'\]"):
        get_likelihood("poisson")
    with pytest.raises(ValueError, match=r"Unknown prior 'flow'. Expected one of \['mixture', 'standard_normal', 'vamp'\]"):
        get_prior("flow")
    with pytest.raises(ValueError, match="Received: 3"):
        get_likelihood(3)


def test_the_command_line_knows_every_registered_likelihood():
    # tfvae.config keeps the names TensorFlow-free for the command line's parser; they must be
    # the registry's.
    from tfvae.config import LIKELIHOOD_NAMES
    from tfvae.distributions import LIKELIHOODS

    assert sorted(LIKELIHOOD_NAMES) == sorted(LIKELIHOODS)
