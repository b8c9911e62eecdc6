"""Tests of the learned priors: the mixture of Gaussians and the VampPrior, in every place a
model goes (objectives, importance-weighted NLL, .keras files, SavedModel export, tf.distribute)."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from conftest import (
    assert_one_step_equals_one_device,
    cli_environment,
    negative_elbo_draws,
    two_replica_result,
)
from scipy.special import logsumexp

import tfvae
from tfvae import export
from tfvae.distributions import (
    MixturePrior,
    StandardNormalPrior,
    VampPrior,
    get_posterior,
    get_prior,
)
from tfvae.objectives import elbo_terms, kl_divergence

tfd = tfp.distributions

PRIOR_SETTINGS = {
    "standard_normal": {},
    "mixture": {"components": 3, "seed": 0},
    "vamp": {"components": 10, "seed": 0},
}


def _small_vae(prior, latent_dim=3, seed=0):
    return tfvae.build_conv_vae((8, 8, 1), latent_dim=latent_dim, filters=(8,), hidden_units=16,
                                prior=prior, seed=seed)


def _log_normal_diag(z, loc, scale):
    """log N(z; loc, diag(scale^2)) in float64, summed over the last axis (numpy reference)."""
    z, loc, scale = (np.asarray(a, np.float64) for a in (z, loc, scale))
    return np.sum(-0.5 * ((z - loc) / scale) ** 2 - np.log(scale) - 0.5 * math.log(2 * math.pi), axis=-1)


# --------------------------------------------------------------------------- the registry
def test_registry_names_and_settings():
    assert isinstance(get_prior("standard_normal"), StandardNormalPrior)
    mixture = get_prior("mixture", components=4)
    assert isinstance(mixture, MixturePrior) and mixture.components == 4
    assert get_prior("vamp").components == 500  # the paper's default K
    with pytest.raises(ValueError, match=r"takes no setting\(s\) \['components'\]"):
        get_prior("standard_normal", components=3)
    with pytest.raises(ValueError, match="Expected components to be an integer >= 1. Received: components=0"):
        get_prior("vamp", components=0)


def test_vamp_pseudo_inputs_must_have_the_model_image_shape():
    with pytest.raises(ValueError, match=r"model's image shape \(8, 8, 1\). Received: image_shape=\(4, 4, 1\)"):
        _small_vae(VampPrior(components=2, image_shape=(4, 4, 1)))


# --------------------------------------------------------------------------- the mixture
def test_mixture_with_one_component_equals_the_gaussian(digits):
    (images, _), _ = digits
    images = images[:16]
    rng = np.random.default_rng(0)
    mixture = MixturePrior(components=1)
    mixture.build((3,))
    loc, raw_scale = rng.normal(size=(1, 3)), rng.normal(size=(1, 3))
    mixture.locs.assign(loc)
    mixture.raw_scales.assign(raw_scale)
    gaussian = tfd.MultivariateNormalDiag(loc[0].astype("float32"),
                                          (tf.nn.softplus(raw_scale[0]) + 1e-5).numpy().astype("float32"))
    z = rng.normal(size=(5, 7, 3)).astype("float32")
    np.testing.assert_allclose(mixture.distribution(3).log_prob(z), gaussian.log_prob(z), rtol=1e-6, atol=1e-5)

    # In a VAE: with the component at N(0, I) the ELBO's KL is the one-sample estimate
    # log q(z|x) - log N(z; 0, I) exactly, and its mean over many z is the analytic KL.
    vae = _small_vae(MixturePrior(components=1))
    vae.prior.locs.assign(np.zeros((1, 3)))
    vae.prior.raw_scales.assign(np.full((1, 3), math.log(math.expm1(1 - 1e-5))))
    posterior = vae.encode(images)
    standard = tfd.MultivariateNormalDiag(tf.zeros(3), tf.ones(3))
    z = posterior.sample(4000, seed=tf.constant([1, 2]))
    estimate = kl_divergence(posterior, vae.prior_distribution(), z).numpy()
    np.testing.assert_allclose(estimate, posterior.log_prob(z) - standard.log_prob(z), rtol=1e-5, atol=1e-4)
    analytic = tfd.kl_divergence(posterior, standard).numpy()
    standard_error = estimate.std(axis=0) / math.sqrt(len(estimate))
    assert np.all(np.abs(estimate.mean(axis=0) - analytic) < 4 * standard_error + 1e-4)
    # ...and the ELBO at one z equals the standard-normal model's with that estimate.
    likelihood = vae.decode(z[0])
    terms = elbo_terms(images, likelihood, posterior, vae.prior_distribution(), z[0])
    reference = -likelihood.log_prob(images) + (posterior.log_prob(z[0]) - standard.log_prob(z[0]))
    np.testing.assert_allclose(-terms["elbo"], reference, rtol=1e-5, atol=1e-4)


def test_mixture_free_bits_are_refused():
    with pytest.raises(ValueError, match="Free bits need a per-dimension KL"):
        tfvae.build_conv_vae((8, 8, 1), 2, filters=(4,), prior="mixture",
                             objective=tfvae.objectives.ELBO(free_bits=0.5))


# --------------------------------------------------------------------------- the VampPrior
def test_vamp_log_prob_is_the_log_mean_exp_of_its_components():
    vae = _small_vae(get_prior("vamp", components=6, seed=1))
    pseudo_inputs = vae.prior.pseudo_inputs.numpy()
    assert pseudo_inputs.shape == (6, 8, 8, 1)
    assert 0.4 < pseudo_inputs.min() and pseudo_inputs.max() < 0.6  # 0.5 + small noise
    components = vae.encode(pseudo_inputs)
    z = np.random.default_rng(2).normal(size=(4, 5, 3)).astype("float32")
    by_hand = logsumexp(
        _log_normal_diag(z[..., None, :], components.mean().numpy(), components.stddev().numpy()), axis=-1
    ) - math.log(6)
    np.testing.assert_allclose(vae.prior_distribution().log_prob(z), by_hand, rtol=1e-5, atol=1e-5)


def test_gaussian_mixture_log_prob_and_gradients_match_tfp_without_the_component_table():
    from tfvae.distributions.priors import gaussian_mixture  # noqa: PLC0415

    tfd = tfp.distributions
    rng = np.random.default_rng(0)
    components, dimensions = 50, 16
    loc = tf.constant(rng.normal(size=(components, dimensions)) * 2, tf.float32)
    scale = tf.constant(np.exp(rng.normal(size=(components, dimensions)) - 2), tf.float32)  # down to ~0.01
    logits = tf.constant(rng.normal(size=components), tf.float32)
    # Points far from every component and points at a component's mean, with leading axes [3, 40].
    far = rng.normal(size=(3, 20, dimensions)) * 3
    near = loc.numpy()[None, :20] + 0.1 * scale.numpy()[None, :20] * rng.normal(size=(3, 20, dimensions))
    z = tf.constant(np.concatenate([far, near], 1), tf.float32)

    def log_probs(mixture):
        with tf.GradientTape() as tape:
            tape.watch([loc, scale, logits])
            value = mixture(logits, loc, scale).log_prob(z)
            total = tf.reduce_sum(value)
        return value, tape.gradient(total, [loc, scale, logits])

    ours, our_gradients = log_probs(gaussian_mixture)
    theirs, their_gradients = log_probs(lambda w, m, s: tfd.MixtureSameFamily(
        tfd.Categorical(logits=w), tfd.MultivariateNormalDiag(loc=m, scale_diag=s)))
    assert ours.shape == theirs.shape == (3, 40) and ours.dtype == tf.float32
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-3)  # values up to ~1e4 nats
    for mine, reference in zip(our_gradients, their_gradients, strict=True):
        np.testing.assert_allclose(mine, reference, rtol=1e-4, atol=1e-3 * np.abs(reference).max())


def test_vamp_with_images_as_pseudo_inputs_is_the_mean_of_their_posteriors(digits):
    (images, _), _ = digits
    chosen = images[:5]
    vae = _small_vae(get_prior("vamp", components=5))
    vae.prior.set_pseudo_inputs(chosen)
    np.testing.assert_array_equal(vae.prior.pseudo_inputs.numpy(), chosen)
    z = np.random.default_rng(3).normal(size=(9, 3)).astype("float32")
    # log q(z | x_k) for every z and every image, [9, 5]
    per_image = vae.encode(chosen).log_prob(z[:, None, :]).numpy()
    expected = logsumexp(per_image, axis=1) - math.log(5)
    np.testing.assert_allclose(vae.prior_distribution().log_prob(z), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"Expected 5 pseudo-inputs of shape \(5, 8, 8, 1\)"):
        vae.prior.set_pseudo_inputs(images[:4])


def test_vamp_evaluation_encodes_the_pseudo_inputs_once_per_call(digits):
    (images, _), _ = digits
    vae = _small_vae(get_prior("vamp", components=4))
    vae.compile(optimizer="adam")
    calls = []
    original = vae.prior.prepare_evaluation

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    vae.prior.prepare_evaluation = counting
    vae.evaluate(images[:64], batch_size=16, verbose=0)
    assert len(calls) == 1  # four batches, one encoding of the pseudo-inputs
    vae.importance_weighted_nll(images[:64], num_samples=4, batch_size=16)
    assert len(calls) == 2
    # The prepared components are those of the current encoder...
    components = vae.encode(vae.prior.pseudo_inputs)
    np.testing.assert_allclose(vae.prior.evaluation_loc.numpy(), components.mean(), rtol=1e-6)
    # ...so evaluate's KL equals the live prior's at the same z.
    vae.fit(images[:64], epochs=1, batch_size=32, verbose=0)
    vae.evaluate(images[:8], verbose=0)
    with vae._evaluation_prior():
        frozen = vae.prior_distribution()
    z = np.random.default_rng(0).normal(size=(6, 3)).astype("float32")
    np.testing.assert_allclose(frozen.log_prob(z), vae.prior_distribution().log_prob(z), rtol=1e-5)


# --------------------------------------------------------------------------- IW-NLL
PAIRS = [(prior, posterior) for posterior in ("diagonal_gaussian", "iaf") for prior in PRIOR_SETTINGS]


@pytest.mark.slow
@pytest.mark.parametrize(("prior", "posterior"), PAIRS)
def test_iw_nll_is_an_unbiased_elbo_at_one_sample_and_falls_to_k100_and_k1000(prior, posterior, digits):
    """For every prior/posterior pair: E[IW-NLL at K = 1] = -ELBO, and K = 1 > K = 100 > K = 1000.

    On the 360 binarized validation digits (so that the code carries information; on the gray
    digits this small model's KL is ~0.04 nats and K barely matters). The K = 100 -> 1000 gain of
    this small model is ~0.005 nats, below the noise of two independent estimates (~1 standard
    error), so it is measured on common samples: ten K = 100 estimates (seeds 0..9) and the
    K = 1000 estimate of their union, -log mean_r exp(-NLL_r), which is itself an IW estimate
    with 1000 samples and must agree with the model's own K = 1000 estimate (another seed)
    within 4 standard errors, so the K = 1000 path (its chunks and their logsumexp) is checked.
    Printed with -s: each gain in nats and in standard errors of the per-image gain. Measured
    (seed 0): K 1 -> 100 gains 0.29-0.44 nats (18-21 standard errors), K 100 -> 1000 gains
    0.004-0.009 nats (8.6-16.6 standard errors) over the six pairs.
    """
    (train_images, _), (test_images, _) = digits
    train_images = (train_images > 0.5).astype("float32")
    images = (test_images > 0.5).astype("float32")
    keras.utils.set_random_seed(0)
    flow = get_posterior("iaf", steps=2, context_units=8, hidden_units=32) if posterior == "iaf" else posterior
    vae = tfvae.build_conv_vae((8, 8, 1), latent_dim=4, filters=(16,), hidden_units=64,
                               prior=get_prior(prior, **PRIOR_SETTINGS[prior]), posterior=flow, seed=0)
    vae.compile(optimizer=keras.optimizers.Adam(3e-3))
    vae.fit(train_images, epochs=10, batch_size=64, verbose=0)
    n = len(images)
    # K = 1 is -ELBO at one posterior sample: the mean over 10 seeds of the K = 1 estimate
    # equals the mean of 20 one-sample -ELBOs within 4 standard errors of the difference.
    one = np.mean([vae.importance_weighted_nll(images, num_samples=1, seed=s) for s in range(10)], axis=0)
    elbos = negative_elbo_draws(vae, images, 20).mean(axis=0)
    difference = one - elbos
    assert abs(difference.mean()) < 4 * difference.std() / math.sqrt(n), (prior, posterior)
    hundreds = np.stack([vae.importance_weighted_nll(images, num_samples=100, seed=100 + r) for r in range(10)])
    union = -logsumexp(-hundreds, axis=0) + math.log(len(hundreds))  # K = 1000 on the same samples
    thousand = vae.importance_weighted_nll(images, num_samples=1000, seed=1000)
    agreement = thousand - union
    assert abs(agreement.mean()) < 4 * agreement.std() / math.sqrt(n), (prior, posterior, agreement.mean())
    for name, gain in (("1 -> 100", one - hundreds[0]), ("100 -> 1000", hundreds.mean(axis=0) - union)):
        standard_errors = gain.mean() / (gain.std() / math.sqrt(n))
        print(f"{prior}/{posterior} K {name}: gain {gain.mean():.4f} nats, {standard_errors:.1f} standard errors")
        assert standard_errors > 4, (prior, posterior, name, gain.mean(), standard_errors)


# --------------------------------------------------------------------------- .keras and export
@pytest.mark.parametrize("name", ["mixture", "vamp"])
def test_save_load_continues_training_identically(name, digits, tmp_path):
    (images, _), _ = digits
    images = images[:128]
    keras.utils.set_random_seed(0)
    vae = _small_vae(get_prior(name, **PRIOR_SETTINGS[name]), seed=3)
    vae.compile(optimizer=keras.optimizers.Adam(1e-3))
    vae.fit(images, epochs=1, batch_size=32, verbose=0, shuffle=False)
    vae.save(tmp_path / "vae.keras")
    restored = keras.models.load_model(tmp_path / "vae.keras")
    assert type(restored.prior) is type(vae.prior)
    assert restored.prior.get_config() == vae.prior.get_config()
    restored.seed_generator.state.assign(vae.seed_generator.state)
    more = {"epochs": 1, "batch_size": 32, "verbose": 0, "shuffle": False}
    continued = vae.fit(images, **more).history["loss"]
    again = restored.fit(images, **more).history["loss"]
    np.testing.assert_allclose(again, continued, rtol=1e-6)
    for original, loaded in zip(vae.weights, restored.weights, strict=True):
        np.testing.assert_allclose(loaded.numpy(), original.numpy(), rtol=1e-6, atol=1e-7)


_TF_ONLY_PRIOR_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["tensorflow_probability"] = None  # any import of them now fails
    sys.modules["tfvae"] = None
    import json
    import numpy as np
    import tensorflow as tf

    path, images_file = sys.argv[1:]
    model = tf.saved_model.load(path)
    images = np.load(images_file)
    print("RESULTS" + json.dumps({
        "sample": model.sample(num_samples=4, seed=5)["images"].numpy().tolist(),
        "elbo": model.elbo(images, tf.constant(9, tf.int64))["elbo"].numpy().tolist(),
    }))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mixture", "vamp"])
def test_export_samples_and_scores_with_tensorflow_only(name, digits, tmp_path):
    (images, _), (test_images, _) = digits
    keras.utils.set_random_seed(0)
    vae = _small_vae(get_prior(name, **PRIOR_SETTINGS[name]))
    vae.compile(optimizer="adam")
    vae.fit(images[:256], epochs=1, batch_size=64, verbose=0)
    path = tfvae.export_saved_model(vae, tmp_path / "export")
    metadata = export.read_metadata(path)
    assert metadata["prior"] == name
    assert metadata["prior_settings"] == {"components": PRIOR_SETTINGS[name]["components"]}

    scored = test_images[:8]
    np.save(tmp_path / "images.npy", scored)
    completed = subprocess.run(
        [sys.executable, "-c", _TF_ONLY_PRIOR_SCRIPT, str(path), str(tmp_path / "images.npy")],
        env=cli_environment(), cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(line for line in completed.stdout.splitlines() if line.startswith("RESULTS"))
    out = json.loads(line[len("RESULTS"):])

    z = vae.prior_distribution().sample(4, seed=export.stateless_seed(5))
    np.testing.assert_allclose(out["sample"], vae.likelihood.mean(vae.decoder(z)), rtol=1e-5, atol=1e-4)
    noise = tf.random.stateless_normal([len(scored), vae.latent_dim], seed=export.stateless_seed(9))
    original = vae.draw_noise
    vae.draw_noise = lambda shape: noise
    expected = vae.compute_elbo_terms(scored)["elbo"]
    vae.draw_noise = original
    np.testing.assert_allclose(out["elbo"], expected, rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------- tf.distribute
@pytest.mark.slow
def test_one_vamp_step_on_two_replicas_equals_one_device(two_replica_results):
    # 7 examples over 2 replicas ([4, 3]); each replica encodes the 4 pseudo-inputs itself.
    result = two_replica_result(two_replica_results, "vamp")
    assert result["replica_batch_sizes"] == [4, 3]
    assert any("pseudo_inputs" in name for name in result["weight_changes"])
    assert_one_step_equals_one_device(result)


# --------------------------------------------------------------------------- config, CLI, tuning
def test_config_prior_names_are_the_registry():
    from tfvae.config import PRIOR_NAMES  # noqa: PLC0415 (TF-free module)
    from tfvae.distributions import PRIORS  # noqa: PLC0415

    assert sorted(PRIOR_NAMES) == sorted(PRIORS)


def test_config_checks_the_prior_settings():
    from tfvae.config import TrainConfig  # noqa: PLC0415

    with pytest.raises(ValueError, match=r"Expected prior to be one of \['mixture', 'standard_normal', 'vamp'\]"):
        TrainConfig(prior="flow")
    with pytest.raises(ValueError, match="Expected prior_components to be an integer >= 1 or None"):
        TrainConfig(prior="vamp", prior_components=0)
    with pytest.raises(ValueError, match="Expected prior_components only with a prior that has components"):
        TrainConfig(prior_components=3)


@pytest.mark.slow
def test_train_with_a_vamp_prior_writes_it_in_the_config_and_resumes(tmp_path):
    from tfvae.training import TrainConfig, load_run_config, train  # noqa: PLC0415

    run_dir = tmp_path / "run"
    config = TrainConfig(latent_dim=2, filters=(4,), hidden_units=None, prior="vamp", prior_components=4,
                         epochs=1, batch_size=128, run_dir=str(run_dir))
    train(config, verbose=0)
    saved = json.loads((run_dir / "config.json").read_text())
    assert (saved["prior"], saved["prior_components"]) == ("vamp", 4)
    assert load_run_config(run_dir).prior == "vamp"
    first = keras.models.load_model(run_dir / "model.keras")
    assert type(first.prior) is VampPrior and first.prior.components == 4
    train(dataclasses.replace(load_run_config(run_dir), epochs=2), resume=True, verbose=0)
    second = keras.models.load_model(run_dir / "model.keras")
    assert type(second.prior) is VampPrior
    assert len((run_dir / "metrics.csv").read_text().strip().splitlines()) == 3  # header + 2 epochs
    assert not np.allclose(second.prior.pseudo_input_weights.numpy(), first.prior.pseudo_input_weights.numpy())


def test_cli_train_flags_name_the_prior(capsys, tmp_path):
    from tfvae.cli import build_parser, main  # noqa: PLC0415

    args = build_parser().parse_args(["train", "--prior", "mixture", "--prior-components", "3"])
    assert (args.prior, args.prior_components) == ("mixture", 3)
    status = main(["train", "--prior-components", "3", "--epochs", "1", "--run-dir", str(tmp_path / "run")])
    assert status == 2
    assert "Expected prior_components only with a prior that has components" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_tuner_searches_the_prior():
    import keras_tuner  # noqa: PLC0415

    from tfvae.tuning import VAEHyperModel  # noqa: PLC0415

    hypermodel = VAEHyperModel((8, 8, 1), latent_dims=(2,), filters=((4,),),
                               prior=("standard_normal", "vamp"), prior_components=3)
    for name, expected in (("standard_normal", StandardNormalPrior), ("vamp", VampPrior)):
        hp = keras_tuner.HyperParameters()
        hp.Fixed("prior", name)
        vae = hypermodel.build(hp)
        assert type(vae.prior) is expected
    assert vae.prior.components == 3
    with pytest.raises(ValueError, match="Unknown prior 'flow'"):
        VAEHyperModel((8, 8, 1), prior=("vamp", "flow"))
