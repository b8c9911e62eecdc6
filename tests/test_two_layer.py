"""tfvae.TwoLayerVAE: its bounds against a hand computation, the IW-NLL, training, saving, export, replicas,
and `tfvae train --stochastic-layers 2` with the commands that read its run."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from conftest import cli_environment, negative_elbo_draws, run_main

import tfvae
from tfvae import export
from tfvae.distributions import get_prior
from tfvae.objectives import ELBO, IWAE, LinearWarmup

tfd = tfp.distributions
TESTS_DIR = Path(__file__).resolve().parent


def _tiny(prior="standard_normal", **settings):
    return tfvae.build_conv_two_layer_vae(
        (8, 8, 1), latent_dims=(3, 2), filters=(4,), hidden_units=8, seed=0, prior=prior, **settings
    )


@pytest.fixture(scope="module")
def binary_digits(digits):
    (train_images, _), (validation_images, _) = digits
    return (train_images > 0.5).astype("float32"), (validation_images[:64] > 0.5).astype("float32")


@pytest.fixture(scope="module")
def trained(binary_digits):
    """`(vae, history, untrained_elbo)`: a small two-layer model trained 12 epochs on 8x8 digits.

    With a KL warm-up: without one the posterior collapses on these tiny images (KL ~0.1 nats
    after 12 epochs, measured), and there is nothing for importance sampling to improve.
    """
    train_images, validation_images = binary_digits
    keras.utils.set_random_seed(0)
    vae = tfvae.build_conv_two_layer_vae(
        (8, 8, 1), latent_dims=(4, 2), filters=(16,), hidden_units=64, seed=0,
        objective=ELBO(kl_schedule=LinearWarmup(150)),
    )
    vae.compile(optimizer=keras.optimizers.Adam(3e-3))
    untrained_elbo = vae.evaluate(validation_images, verbose=0, return_dict=True)["elbo"]
    history = vae.fit(train_images, epochs=12, batch_size=64, verbose=0).history
    return vae, history, untrained_elbo


def _with_noise(vae, noise, function):
    """Calls `function()` with the model's posterior noise replaced by `noise`."""
    original = vae.draw_noise
    vae.draw_noise = lambda shape: noise
    try:
        return function()
    finally:
        vae.draw_noise = original


def _normal(parameters):
    """The independent Gaussian N(loc, softplus(raw_scale) + 1e-5) of a `[..., 2 * D]` output."""
    loc, raw_scale = np.split(np.asarray(parameters, np.float64), 2, axis=-1)
    return tfd.Independent(tfd.Normal(loc, np.log1p(np.exp(raw_scale)) + 1e-5), 1)


def _hand_log_weights(vae, images, noise):
    """log p(x|z1) + log p(z1|z2) + log p(z2) - log q(z1|x, z2) - log q(z2|x), term by term, in
    float64 from the model's networks and TFP distributions: `(log_weights, reconstruction, kl)`,
    each `[..., B]`, with noise `[..., B, D1 + D2]` (z1's columns first)."""
    bottom_dim, _ = vae.latent_dims
    loc, raw_scale, features = (np.asarray(t, np.float64) for t in vae.encoder(images))
    top_posterior = _normal(np.concatenate([loc, raw_scale], -1))
    noise = np.asarray(noise, np.float64)
    z2 = top_posterior.mean() + top_posterior.stddev() * noise[..., bottom_dim:]
    leading = z2.shape[:-1]
    flat_z2 = np.reshape(z2, (-1, z2.shape[-1])).astype("float32")
    flat_features = np.broadcast_to(features, (*leading, features.shape[-1])).reshape(len(flat_z2), -1)
    bottom_posterior = _normal(
        np.reshape(vae.z1_encoder([flat_features.astype("float32"), flat_z2]), (*leading, -1))
    )
    z1 = bottom_posterior.mean() + bottom_posterior.stddev() * noise[..., :bottom_dim]
    bottom_prior = _normal(np.reshape(vae.z1_prior(flat_z2), (*leading, -1)))
    if isinstance(vae.prior, tfvae.distributions.VampPrior):
        # p(z2) = (1/K) sum_k q(z2|u_k), the encoder's Gaussians at the pseudo-inputs.
        u_loc, u_raw, _ = (np.asarray(t, np.float64) for t in vae.encoder(vae.prior.pseudo_inputs))
        components = _normal(np.concatenate([u_loc, u_raw], -1))
        per_component = components.log_prob(z2[..., np.newaxis, :])
        log_top_prior = tf.reduce_logsumexp(per_component, axis=-1) - math.log(len(u_loc))
    else:
        log_top_prior = tfd.Independent(tfd.Normal(np.zeros(z2.shape[-1]), 1.0), 1).log_prob(z2)
    logits = np.reshape(vae.decoder(np.reshape(z1, (-1, bottom_dim)).astype("float32")), (*leading, *images.shape[1:]))
    log_likelihood = np.asarray(
        tfd.Independent(tfd.Bernoulli(logits=np.asarray(logits, np.float64), dtype=tf.float64), 3).log_prob(
            np.broadcast_to(images, logits.shape).astype(np.float64)
        )
    )
    kl = sum(
        sign * np.asarray(log_density, np.float64)
        for sign, log_density in (
            (1, bottom_posterior.log_prob(z1)), (1, top_posterior.log_prob(z2)),
            (-1, bottom_prior.log_prob(z1)), (-1, log_top_prior),
        )
    )
    return log_likelihood - kl, -log_likelihood, kl


@pytest.mark.parametrize("prior", ["standard_normal", "vamp"])
def test_elbo_terms_match_a_hand_computation(binary_digits, prior):
    _, images = binary_digits
    images = images[:5]
    vae = _tiny(get_prior(prior, components=3, seed=1) if prior == "vamp" else prior)
    noise = tf.constant(np.random.default_rng(2).normal(size=(5, 5)), tf.float32)
    elbo, reconstruction, kl = _hand_log_weights(vae, images, noise)

    terms = _with_noise(vae, noise, lambda: vae.compute_elbo_terms(images))
    np.testing.assert_allclose(terms["reconstruction"], reconstruction, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(terms["kl"], kl, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(terms["elbo"], elbo, rtol=1e-5, atol=1e-4)
    # The training loss of a beta-ELBO is reconstruction + beta * KL at the same noise.
    loss, _ = _with_noise(vae, noise, lambda: ELBO(beta=0.5)(vae, images, 0.5, training=False))
    np.testing.assert_allclose(loss, reconstruction + 0.5 * kl, rtol=1e-5, atol=1e-4)


def test_importance_weights_and_the_iwae_bound_match_a_hand_computation(binary_digits):
    _, images = binary_digits
    images = images[:4]
    vae = _tiny()
    seed = tf.constant([3, 4], tf.int32)
    noise = tf.random.stateless_normal([6, 4, 5], seed=seed)
    log_weights, _, _ = _hand_log_weights(vae, images, noise)

    # posterior_sample's z and joint log q, the joint prior and the decoder give the same weights.
    z, log_q = vae.posterior_sample(images, 6, seed=seed)
    assert z.shape == (6, 4, 5) and log_q.shape == (6, 4)
    flat_z = tf.reshape(z, [-1, 5])
    log_likelihood = tf.reshape(vae.decode(flat_z).log_prob(np.repeat(images[np.newaxis], 6, 0).reshape(-1, 8, 8, 1)), [6, 4])
    model_log_weights = log_likelihood + vae.prior_distribution().log_prob(z) - log_q
    np.testing.assert_allclose(model_log_weights, log_weights, rtol=1e-5, atol=1e-4)

    # The IWAE objective's loss is -log mean_k w_k at the same noise.
    loss, terms = _with_noise(vae, noise, lambda: IWAE(6)(vae, images, None, training=False))
    expected = -(tf.reduce_logsumexp(log_weights, axis=0) - math.log(6))
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(terms["elbo"], log_weights[0], rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_k1_iw_nll_is_an_unbiased_negative_elbo(trained, binary_digits):
    vae, _, _ = trained
    _, images = binary_digits
    repeats = 40
    k1 = [vae.importance_weighted_nll(images, num_samples=1, seed=s).mean() for s in range(repeats)]
    elbos = negative_elbo_draws(vae, images, repeats).mean(axis=1)
    standard_error = math.sqrt((np.var(k1) + np.var(elbos)) / repeats)
    assert abs(np.mean(k1) - np.mean(elbos)) < 4 * standard_error, (np.mean(k1), np.mean(elbos), standard_error)


def test_iw_nll_falls_from_k1_to_k100(trained, binary_digits):
    vae, _, _ = trained
    _, images = binary_digits
    k1 = np.mean([vae.importance_weighted_nll(images, num_samples=1, seed=s).mean() for s in range(5)])
    k100 = vae.importance_weighted_nll(images, num_samples=100, seed=0).mean()
    # Measured: 22.36 and 21.88 nats.
    assert k100 < k1 - 0.25, (k1, k100)
    # Decoded in bfloat16 (through z1's decoder only): the same samples, a slightly other estimate.
    half = vae.importance_weighted_nll(images, num_samples=100, seed=0, decode_precision="bfloat16").mean()
    assert half != k100 and abs(half - k100) < 0.05, (half, k100)


def test_it_trains_on_digits_and_its_elbo_improves(trained, binary_digits):
    vae, history, untrained_elbo = trained
    _, images = binary_digits
    assert sorted(history) == ["beta", "elbo", "kl", "loss", "reconstruction"]
    assert history["elbo"][-1] > history["elbo"][0] + 3.0, history["elbo"]
    validation_elbo = vae.evaluate(images, verbose=0, return_dict=True)["elbo"]
    assert validation_elbo > untrained_elbo + 10.0, (untrained_elbo, validation_elbo)
    # Both layers carry information: the KL is well above zero.
    assert history["kl"][-1] > 1.0


def test_save_and_load_continue_training_identically(trained, binary_digits, tmp_path):
    vae, _, _ = trained
    train_images, images = binary_digits
    path = tmp_path / "two_layer.keras"
    vae.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is tfvae.TwoLayerVAE and restored.latent_dims == (4, 2)
    np.testing.assert_array_equal(restored(images), vae(images))
    np.testing.assert_array_equal(restored.encode(images).mean(), vae.encode(images).mean())
    assert restored.optimizer.iterations.numpy() == vae.optimizer.iterations.numpy()
    # The posterior noise continues from the same state (the generator's state is not saved).
    restored.seed_generator.state.assign(vae.seed_generator.state)
    more = {"epochs": 1, "batch_size": 64, "verbose": 0, "shuffle": False}
    continued = vae.fit(train_images[:256], **more).history
    again = restored.fit(train_images[:256], **more).history
    for name in ("loss", "elbo", "kl", "beta"):
        np.testing.assert_allclose(again[name], continued[name], rtol=1e-6)
    for original, loaded in zip(vae.weights, restored.weights, strict=True):
        np.testing.assert_allclose(loaded.numpy(), original.numpy(), rtol=1e-6, atol=1e-7)


def test_config_round_trip_and_refused_objectives():
    vae = _tiny(prior="mixture", beta=0.5)
    config = vae.get_config()
    clone = tfvae.TwoLayerVAE.from_config(config)
    assert clone.get_config() == config and clone.latent_dims == (3, 2) and float(clone.beta) == 0.5
    with pytest.raises(ValueError, match="Free bits need a per-dimension KL.*TwoLayerVAE"):
        _tiny(objective=ELBO(free_bits=0.1))
    with pytest.raises(ValueError, match="DReG re-evaluates.*TwoLayerVAE"):
        _tiny(objective=IWAE(3, "dreg"))
    with pytest.raises(ValueError, match=r"Expected latent_dims to be \(D1, D2\)"):
        tfvae.build_conv_two_layer_vae((8, 8, 1), latent_dims=(3,))
    with pytest.raises(ValueError, match="Expected z1_encoder to map"):
        tfvae.TwoLayerVAE(vae.encoder, vae.z1_prior, vae.z1_prior, vae.decoder)


def test_shapes_of_encode_decode_sample_and_the_prior():
    vae = _tiny()
    images = np.random.default_rng(0).random((3, 8, 8, 1)).astype("float32")
    assert vae.latent_dim == 5 and vae.latent_dims == (3, 2)
    assert vae.encode(images).mean().shape == (3, 5)
    assert vae.encode_base(images).mean().shape == (3, 2)  # q(z2|x): the VampPrior's components
    z = vae.prior_distribution().sample(4, seed=tf.constant([1, 2]))
    assert z.shape == (4, 5)
    # decode reads z1 only.
    shifted = tf.concat([z[:, :3], z[:, 3:] + 5.0], -1)
    np.testing.assert_array_equal(vae.decode(shifted).mean(), vae.decode(z).mean())
    assert vae.sample(4, seed=1).shape == (4, 8, 8, 1)
    np.testing.assert_array_equal(vae.sample(4, seed=1), vae.sample(4, seed=1))
    # The point `vae(x)` decodes is the mean of `encode` (q(z2|x) is the diagonal Gaussian here).
    np.testing.assert_allclose(vae.posterior_point(images), vae.encode(images).mean(), rtol=1e-6)
    np.testing.assert_allclose(vae(images), vae.decode(vae.encode(images).mean()).mean(), rtol=1e-6)
    # The posterior diagnostics see both layers, with the joint Monte-Carlo KL.
    report = tfvae.diagnostics.posterior_diagnostics(vae, images)
    assert report["latent_dim"] == 5 and len(report["posterior_mean_variance"]) == 5
    assert report["mutual_information"] is None and np.isfinite(report["kl"])


_TF_ONLY_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["tensorflow_probability"] = None  # any import of them now fails
    sys.modules["tfvae"] = None
    import json
    import numpy as np
    import tensorflow as tf

    path, images_file = sys.argv[1:]
    images = tf.constant(np.load(images_file))
    model = tf.saved_model.load(path)
    seed = tf.constant(9, tf.int64)
    posterior = model.posterior_sample(images, tf.constant(3), seed)
    outputs = {
        "encode_loc": model.encode(images)["loc"],
        "encode_scale": model.encode(images)["scale"],
        "embed": model.embed(images)["embedding"],
        "decode": model.decode(model.embed(images)["embedding"])["images"],
        "reconstruct": model.reconstruct(images)["images"],
        "sample": model.sample(tf.constant(3), tf.constant(5, tf.int64))["images"],
        "elbo": model.elbo(images, seed)["elbo"],
        "z": posterior["z"],
        "log_q": posterior["log_q"],
        "prior_log_prob": model.prior_log_prob(posterior["z"])["log_prob"],
        "log_likelihood": model.log_likelihood(images, posterior["z"])["log_likelihood"],
    }
    print("RESULTS" + json.dumps({name: value.numpy().tolist() for name, value in outputs.items()}))
    """
)


@pytest.mark.slow
def test_export_round_trip_with_tensorflow_only(trained, binary_digits, tmp_path):
    vae, _, _ = trained
    _, images = binary_digits
    images = images[:6]
    path = tfvae.export_saved_model(vae, tmp_path / "export")
    metadata = export.read_metadata(path)
    assert metadata["latent_dim"] == 6 and metadata["latent_dims"] == [4, 2]
    np.save(tmp_path / "images.npy", images)
    completed = subprocess.run(
        [sys.executable, "-c", _TF_ONLY_SCRIPT, str(path), str(tmp_path / "images.npy")],
        env=cli_environment(), capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = json.loads(next(line for line in completed.stdout.splitlines() if line.startswith("RESULTS"))[7:])

    z, log_q = vae.posterior_sample(images, 3, seed=export.stateless_seed(9))
    noise = tf.random.stateless_normal([len(images), 6], seed=export.stateless_seed(9))
    prior_z = vae.prior_distribution().sample(3, seed=export.stateless_seed(5))
    flat_images = np.broadcast_to(images, (3, *images.shape)).reshape(-1, 8, 8, 1)
    expected = {
        "encode_loc": vae.encode(images).mean(),
        "encode_scale": vae.encode(images).stddev(),
        "embed": vae.encode(images).mean(),
        "decode": vae.decode(vae.encode(images).mean()).mean(),
        "reconstruct": vae(images),
        "sample": vae.decode(prior_z).mean(),
        "elbo": _with_noise(vae, noise, lambda: vae.compute_elbo_terms(images))["elbo"],
        "z": z,
        "log_q": log_q,
        "prior_log_prob": vae.prior_distribution().log_prob(z),
        "log_likelihood": tf.reshape(vae.decode(tf.reshape(z, [-1, 6])).log_prob(flat_images), [3, -1]),
    }
    for name, value in expected.items():
        np.testing.assert_allclose(out[name], value, rtol=1e-5, atol=1e-4, err_msg=name)
    # The exported pieces make the importance weights of the model's IW-NLL.
    log_weights = np.asarray(out["log_likelihood"]) + np.asarray(out["prior_log_prob"]) - np.asarray(out["log_q"])
    assert log_weights.shape == (3, 6) and np.all(np.isfinite(log_weights))


@pytest.mark.slow
def test_one_sgd_step_on_two_replicas_equals_one_device():
    completed = subprocess.run(
        [sys.executable, str(TESTS_DIR / "two_layer_mirrored.py"), "--replicas", "2", "--batch-size", "7",
         "--prior", "vamp"],
        env=cli_environment(), capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(next(line for line in completed.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["replicas"] == 2
    # The step moved every weight (the VampPrior's pseudo-inputs too) ...
    assert min(result["weight_changes"].values()) > 1e-4, result["weight_changes"]
    # ... and the replicas (4 + 3 examples) moved them as one device did.
    assert max(result["weight_differences"].values()) < 1e-6, result["weight_differences"]
    for name in ("loss", "elbo", "kl", "reconstruction"):
        assert result["mirrored_logs"][name] == pytest.approx(result["single_logs"][name], rel=1e-5, abs=1e-5)


@pytest.mark.slow
def test_keras_tuner_searches_one_and_two_stochastic_layers(binary_digits, tmp_path):
    import keras_tuner  # noqa: PLC0415

    from tfvae.tuning import VAEHyperModel  # noqa: PLC0415

    train_images, validation_images = binary_digits
    hypermodel = VAEHyperModel(
        (8, 8, 1), latent_dims=(2,), filters=((4,),), hidden_units=8, stochastic_layers=(1, 2)
    )
    tuner = keras_tuner.GridSearch(hypermodel, objective="val_loss", directory=tmp_path, project_name="search")
    tuner.search(train_images[:128], validation_data=validation_images, epochs=1, batch_size=64, verbose=0)
    trials = tuner.oracle.get_best_trials(2)
    assert sorted(trial.hyperparameters["stochastic_layers"] for trial in trials) == [1, 2]
    for trial in trials:
        model = tuner.load_model(trial)  # the trial's weights, loaded into a model its hp builds
        assert isinstance(model, tfvae.TwoLayerVAE) == (trial.hyperparameters["stochastic_layers"] == 2)
        assert math.isfinite(trial.score)
    with pytest.raises(ValueError, match="no free bits and no DReG with two stochastic layers"):
        VAEHyperModel((8, 8, 1), latent_dims=(2,), free_bits=(0.0, 0.5), stochastic_layers=(2,))


# --------------------------------------------------------------------------- tfvae train --stochastic-layers 2
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"stochastic_layers": 3}, "Expected stochastic_layers to be 1 or 2. Received: stochastic_layers=3"),
        ({"stochastic_layers": True}, "Expected stochastic_layers to be 1 or 2. Received: stochastic_layers=True"),
        ({"top_latent_dim": 3}, "Expected top_latent_dim only with stochastic_layers=2"),
        ({"stochastic_layers": 2, "top_latent_dim": 0}, "Expected top_latent_dim to be an integer >= 1 or None"),
        ({"stochastic_layers": 2, "conditional": True}, "the two-layer model, tfvae.TwoLayerVAE, is not conditional"),
        ({"stochastic_layers": 2, "free_bits": 0.5}, "Expected no free_bits with stochastic_layers=2"),
        (
            {"stochastic_layers": 2, "iw_samples": 3, "gradient_estimator": "dreg"},
            "Expected gradient_estimator 'standard' with stochastic_layers=2",
        ),
    ],
)
def test_train_config_refuses_what_the_two_layer_model_refuses(settings, message):
    from tfvae.config import TrainConfig  # noqa: PLC0415

    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(**settings)


def test_flags_config_files_and_presets_name_the_two_layer_model(tmp_path, capsys):
    from tfvae.cli import build_parser, resolve_train_config  # noqa: PLC0415

    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"stochastic-layers": 2, "top_latent_dim": 3}))
    argv = ["train", "--preset", "mnist-vae", "--config", str(settings), "--latent-dim", "4"]
    args = build_parser().parse_args(argv)
    args.command_line = argv
    config = resolve_train_config(args)
    assert (config.stochastic_layers, config.latent_dim, config.top_latent_dim) == (2, 4, 3)
    assert config.preset == "mnist-vae" and config.filters == (32, 64)  # the rest comes from the preset
    status, _, err = run_main(capsys, "train", "--top-latent-dim", "3", "--run-dir", tmp_path / "run")
    assert status == 2 and "Expected top_latent_dim only with stochastic_layers=2" in err
    assert not (tmp_path / "run").exists()
    status, _, err = run_main(capsys, "train", "--stochastic-layers", "3")
    assert status == 2 and "invalid choice: 3" in err


def test_a_run_config_builds_a_two_layer_model_with_its_parts():
    from tfvae.config import TrainConfig  # noqa: PLC0415
    from tfvae.models.two_layer import DEFAULT_HIDDEN_UNITS  # noqa: PLC0415
    from tfvae.training import _run_model  # noqa: PLC0415

    config = TrainConfig(stochastic_layers=2, latent_dim=3, top_latent_dim=2, filters=(4,), hidden_units=None,
                         prior="mixture", prior_components=3, beta=0.5)
    vae, initial_epoch = _run_model(config, (8, 8, 1), 10, None)
    assert isinstance(vae, tfvae.TwoLayerVAE) and initial_epoch == 0
    assert vae.latent_dims == (3, 2) and float(vae.beta) == 0.5 and vae.prior.components == 3
    assert vae.z1_prior.get_layer("hidden").units == DEFAULT_HIDDEN_UNITS  # None: the builder's 300
    vae, _ = _run_model(TrainConfig(stochastic_layers=2, latent_dim=3, filters=(4,)), (8, 8, 1), 10, None)
    assert vae.latent_dims == (3, 3)  # top_latent_dim None: D2 = D1


def test_pictures_of_a_two_layer_model_draw_z1_or_say_why_not(tmp_path):
    from tfvae import pictures  # noqa: PLC0415

    vae = _tiny()  # latent_dims (3, 2)
    z = pictures.prior_latents(vae, 4, seed=[0, 1])
    assert z.shape == (4, 5)
    assert pictures.latent_traversal(vae, 2, z[:2], steps=3).shape == (6, 8, 8, 1)
    with pytest.raises(ValueError, match=r"Expected a dimension of z1, in \[0, 3\).*Received: 3"):
        pictures.latent_traversal(vae, 3, z[:2], steps=3)
    flat = tfvae.build_conv_two_layer_vae((8, 8, 1), latent_dims=(1, 1), filters=(4,), hidden_units=8, seed=0)
    with pytest.raises(ValueError, match=r"one stochastic layer and latent_dim == 2.*latent_dims=\(1, 1\)"):
        pictures.save_manifold(flat, tmp_path / "manifold.png")
    images = np.random.default_rng(0).random((4, 8, 8, 1)).astype("float32")
    pictures.save_interpolations(vae, images, tmp_path / "interpolations.png", steps=3)
    assert (tmp_path / "interpolations.png").stat().st_size > 0


@pytest.mark.slow
def test_cli_trains_evaluates_samples_exports_and_resumes_a_two_layer_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    status, out, err = run_main(
        capsys, "train", "--stochastic-layers", "2", "--latent-dim", "2", "--top-latent-dim", "3",
        "--filters", "8", "--hidden-units", "16", "--epochs", "1", "--batch-size", "64", "--quiet",
        "--run-dir", run_dir,
    )
    assert status == 0, err
    metrics = json.loads(out)
    assert metrics["diagnostics"]["latent_dim"] == 5 and "latent_manifold.png" not in metrics["pictures"]
    saved = json.loads((run_dir / "config.json").read_text())
    assert (saved["stochastic_layers"], saved["latent_dim"], saved["top_latent_dim"]) == (2, 2, 3)
    vae = keras.models.load_model(run_dir / "model.keras")
    assert isinstance(vae, tfvae.TwoLayerVAE) and vae.latent_dims == (2, 3)

    status, out, err = run_main(capsys, "evaluate", run_dir, "--json", "--samples", "50", "--max-examples", "100")
    assert status == 0, err
    scores = json.loads(out)
    assert math.isfinite(scores["iw_nll"]) and math.isfinite(scores["elbo"]) and scores["num_examples"] == 100
    assert scores["iw_nll"] <= -scores["elbo"] + 0.5  # K = 50 bounds -log p(x) more tightly than the ELBO
    assert scores["latent_dim"] == 5 and scores["mutual_information"] is None

    status, out, err = run_main(capsys, "sample", run_dir, "--traverse", "1", "--steps", "4", "--out", tmp_path / "z1.png")
    assert status == 0 and (tmp_path / "z1.png").is_file(), err
    status, _, err = run_main(capsys, "sample", run_dir, "--traverse", "2", "--out", tmp_path / "z2.png")
    assert status == 2 and "Expected a dimension of z1, in [0, 2)" in err and not (tmp_path / "z2.png").exists()

    status, out, err = run_main(capsys, "export", run_dir, tmp_path / "export")
    assert status == 0, err
    assert export.read_metadata(tmp_path / "export")["latent_dims"] == [2, 3]
    loaded = tf.saved_model.load(str(tmp_path / "export"))
    assert loaded.decode(tf.zeros([2, 5]))["images"].shape == (2, 8, 8, 1)

    status, out, err = run_main(capsys, "train", "--resume", run_dir, "--epochs", "2", "--quiet")
    assert status == 0, err
    resumed = json.loads(out)
    assert (resumed["resumed_at_epoch"], resumed["epochs_completed"]) == (1, 2)
    assert keras.models.load_model(run_dir / "model.keras").latent_dims == (2, 3)
