"""The objective seam of tfvae.VAE: schedules inside the compiled step, IWAE bounds, saving,
refusals, the command line, and a resume after a kill in the middle of a KL warm-up."""

import csv
import json
import math
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from conftest import cli_environment, run_cli, run_main

import tfvae
from tfvae.distributions import Prior
from tfvae.objectives import (
    ELBO,
    IWAE,
    ConstantSchedule,
    CyclicalAnnealing,
    LinearWarmup,
    log_importance_weights,
)
from tfvae.schedules import get_kl_schedule

tfd = tfp.distributions


# --------------------------------------------------------------------------- schedules
def test_schedules_follow_their_formulas_and_round_trip():
    steps = np.array([0, 1, 5, 9, 10, 11, 25, 39, 40, 41])
    warmup = LinearWarmup(10)
    np.testing.assert_allclose([float(warmup(s)) for s in steps], np.minimum(1, steps / 10), rtol=1e-6)
    cyclical = CyclicalAnnealing(20, ramp_fraction=0.5)
    tau = (steps % 20) / 20
    np.testing.assert_allclose([float(cyclical(s)) for s in steps], np.minimum(1, tau / 0.5), rtol=1e-6)
    assert [float(ConstantSchedule()(s)) for s in (0, 100)] == [1.0, 1.0]
    for schedule in (warmup, cyclical, ConstantSchedule()):
        restored = get_kl_schedule(keras.saving.serialize_keras_object(schedule))
        assert type(restored) is type(schedule) and restored.get_config() == schedule.get_config()
    with pytest.raises(ValueError, match="warmup_steps to be an integer >= 1. Received: warmup_steps=0"):
        LinearWarmup(0)
    with pytest.raises(ValueError, match="ramp_fraction in"):
        CyclicalAnnealing(10, ramp_fraction=0)


class FixedNoiseVAE(tfvae.VAE):
    """The same posterior noise every step, so every step of a frozen model has the same terms."""

    def draw_noise(self, shape):
        return tf.broadcast_to(tf.linspace(-1.0, 1.0, self.latent_dim), shape)


@pytest.mark.parametrize("steps_per_execution", [1, 3])
def test_scheduled_beta_is_the_beta_of_each_compiled_step(digits, steps_per_execution):
    (images, _), _ = digits
    batch = images[:32]
    encoder = tfvae.build_conv_encoder((8, 8, 1), 3, filters=(4,))
    decoder = tfvae.build_conv_decoder(3, (8, 8, 1), filters=(4,))
    schedule = LinearWarmup(7)
    vae = FixedNoiseVAE(encoder, decoder, objective=ELBO(beta=0.8, kl_schedule=schedule))
    # A learning rate of 0: the weights, hence reconstruction and KL, are the same at every step.
    vae.compile(optimizer=keras.optimizers.SGD(0.0), steps_per_execution=steps_per_execution)
    data = tf.data.Dataset.from_tensors(batch).repeat(3)  # 3 steps per epoch
    history = vae.fit(data, epochs=4, verbose=0).history
    for epoch in range(4):
        betas = [0.8 * min(1.0, step / 7) for step in range(3 * epoch, 3 * epoch + 3)]
        expected_loss = history["reconstruction"][epoch] + np.mean(betas) * history["kl"][epoch]
        np.testing.assert_allclose(history["loss"][epoch], expected_loss, rtol=1e-5)
        np.testing.assert_allclose(history["beta"][epoch], betas[-1], rtol=1e-6)
    assert history["kl"][0] > 0.1
    np.testing.assert_allclose(float(vae.beta_variable.numpy()), 0.8 * min(1.0, 11 / 7), rtol=1e-6)


def test_constant_schedule_reads_the_beta_variable_and_keeps_beta_working(digits):
    (images, _), _ = digits
    vae = tfvae.build_conv_vae((8, 8, 1), 2, filters=(4,), beta=0.25)
    assert isinstance(vae.objective, ELBO) and vae.objective.beta == 0.25
    assert float(vae.beta_variable.numpy()) == 0.25
    vae.compile()
    history = vae.fit(images[:64], batch_size=64, epochs=1, verbose=0).history
    assert history["beta"] == [0.25]
    with pytest.raises(ValueError, match="beta inside the objective"):
        tfvae.build_conv_vae((8, 8, 1), 2, filters=(4,), beta=0.5, objective=IWAE(5))


@pytest.mark.parametrize(
    "objective",
    [ELBO(0.5, LinearWarmup(5), free_bits=0.1), ELBO(1.0, CyclicalAnnealing(8)), IWAE(3, "dreg")],
    ids=["elbo-warmup-free-bits", "elbo-cyclical", "iwae-dreg"],
)
def test_objective_round_trips_through_config_and_keras_file(tmp_path, digits, objective):
    (images, _), _ = digits
    vae = tfvae.build_conv_vae((8, 8, 1), 2, filters=(4,), objective=objective, seed=1)
    clone = tfvae.VAE.from_config(vae.get_config())
    assert clone.get_config() == vae.get_config()
    vae.compile()
    vae.fit(images[:64], batch_size=32, epochs=1, verbose=0)
    vae.save(tmp_path / "vae.keras")
    restored = keras.models.load_model(tmp_path / "vae.keras")
    assert type(restored.objective) is type(objective)
    assert restored.objective.get_config() == objective.get_config()
    assert float(restored.beta_variable.numpy()) == float(vae.beta_variable.numpy())
    assert int(restored.optimizer.iterations.numpy()) == 2
    history = restored.fit(images[:64], batch_size=32, epochs=1, verbose=0).history
    assert math.isfinite(history["loss"][0]) and ("beta" in history) == isinstance(objective, ELBO)


class MixturePrior(Prior):
    def build(self, input_shape):
        pass

    def distribution(self, latent_dim):
        return tfd.MixtureSameFamily(
            tfd.Categorical(probs=[0.5, 0.5]),
            tfd.MultivariateNormalDiag(loc=tf.stack([-tf.ones(latent_dim), tf.ones(latent_dim)])),
        )


def test_free_bits_are_refused_for_a_prior_that_does_not_factorize():
    encoder = tfvae.build_conv_encoder((8, 8, 1), 2, filters=(4,))
    decoder = tfvae.build_conv_decoder(2, (8, 8, 1), filters=(4,))
    with pytest.raises(ValueError, match="Free bits need a per-dimension KL.*MixtureSameFamily"):
        tfvae.VAE(encoder, decoder, prior=MixturePrior(), objective=ELBO(free_bits=0.5))
    tfvae.VAE(encoder, decoder, prior=MixturePrior(), objective=ELBO())  # the MC KL is fine


def test_iwae_bound_is_above_the_elbo_and_grows_with_k_on_a_trained_model(digits):
    (train_images, _), (validation_images, _) = digits
    keras.utils.set_random_seed(0)
    vae = tfvae.build_conv_vae((8, 8, 1), 4, filters=(16,), seed=0)
    vae.compile(optimizer=keras.optimizers.Adam(2e-3))
    vae.fit(train_images, batch_size=64, epochs=5, verbose=0)
    x = tf.constant(validation_images)  # 359 examples
    posterior, prior = vae.encode(x), vae.prior_distribution()
    # 10 draws of 50 samples per example; the K-sample bound uses the first K of each draw.
    bounds = {1: 0.0, 5: 0.0, 50: 0.0}
    for seed in range(10):
        noise = tf.random.stateless_normal([50, *posterior.mean().shape], seed=[seed, 0])
        log_weights = log_importance_weights(x, posterior, prior, vae.decode, posterior.mean() + posterior.stddev() * noise)
        for k in bounds:
            bounds[k] += (tf.reduce_logsumexp(log_weights[:k], axis=0) - np.log(k)).numpy() / 10
    elbo = vae.evaluate(x, batch_size=359, verbose=0, return_dict=True)["elbo"]
    # K = 1 estimates the ELBO (analytic KL) itself...
    assert abs(bounds[1].mean() - elbo) < 4 * bounds[1].std() / np.sqrt(10 * 359) + 0.05
    # ...and the bound grows with K, per example on average, by more than 4 standard errors
    # (measured: +0.19 nats from K = 1 to 5, +0.06 from 5 to 50, standard errors 0.013, 0.006).
    for smaller, larger in ((1, 5), (5, 50)):
        gain = bounds[larger] - bounds[smaller]
        assert gain.mean() > 4 * gain.std(ddof=1) / np.sqrt(gain.size), (smaller, larger, gain.mean())


# --------------------------------------------------------------------------- command line
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kl-schedule", "linear"], "Expected kl_warmup > 0 epochs with kl_schedule='linear'"),
        (["--kl-warmup", "2"], "Expected kl_warmup only with kl_schedule='linear'"),
        (["--kl-schedule", "cyclical"], "Expected kl_cycle > 0 epochs"),
        (["--free-bits", "-1"], "Expected free_bits to be a finite number >= 0"),
        (["--iw-samples", "5", "--beta", "0.5"], "Expected no beta with iw_samples > 1"),
        (["--iw-samples", "5", "--free-bits", "1"], "Expected no free_bits with iw_samples > 1"),
        (["--iw-samples", "5", "--kl-schedule", "linear", "--kl-warmup", "1"], "Expected no kl_schedule with iw_samples > 1"),
        (["--gradient-estimator", "dreg"], "Expected iw_samples > 1 with gradient_estimator='dreg'"),
    ],
)
def test_cli_refuses_bad_objective_settings_in_one_line(tmp_path, capsys, args, message):
    status, _, err = run_main(capsys, "train", "--run-dir", tmp_path / "run", *args)
    assert status == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_cli_trains_with_a_warmup_and_logs_beta(tmp_path, capsys):
    run_dir = tmp_path / "run"
    config_file = tmp_path / "settings.json"
    config_file.write_text(json.dumps({"kl_schedule": "linear", "kl_warmup": 1.5, "beta": 0.5}))
    status, _, _ = run_main(capsys, "train", "--config", config_file, "--epochs", "2", "--filters", "8",
                            "--batch-size", "64", "--run-dir", run_dir, "--quiet")
    assert status == 0
    saved = json.loads((run_dir / "config.json").read_text())
    assert (saved["kl_schedule"], saved["kl_warmup"], saved["beta"]) == ("linear", 1.5, 0.5)
    steps = math.ceil(json.loads((run_dir / "metrics.json").read_text())["num_train_examples"] / 64)
    with (run_dir / "metrics.csv").open() as handle:
        betas = [float(row["beta"]) for row in csv.DictReader(handle)]
    expected = [0.5 * min(1.0, (steps * (epoch + 1) - 1) / round(1.5 * steps)) for epoch in range(2)]
    np.testing.assert_allclose(betas, expected, rtol=1e-6)
    model = keras.models.load_model(run_dir / "model.keras")
    assert model.objective.kl_schedule.get_config() == {"warmup_steps": round(1.5 * steps)}


def _csv_rows(path):
    if not path.exists():
        return []
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_resume_after_sigkill_mid_warmup_continues_the_schedule_exactly(tmp_path):
    run_dir = tmp_path / "run"
    epochs, warmup = 8, 6
    process = subprocess.Popen(
        [sys.executable, "-m", "tfvae", "train", "--epochs", str(epochs), "--run-dir", str(run_dir), "--quiet",
         "--filters", "64,128", "--hidden-units", "256", "--batch-size", "64", "--kl-schedule", "linear",
         "--kl-warmup", str(warmup)],
        env=cli_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while len(_csv_rows(run_dir / "metrics.csv")) < 2 and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "training ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_after = len(_csv_rows(run_dir / "metrics.csv"))
    assert 2 <= killed_after < warmup  # killed in the middle of the warm-up

    result = run_cli("train", "--resume", run_dir, "--quiet", timeout=600)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_completed"] == epochs
    steps = math.ceil(metrics["num_train_examples"] / 64)
    rows = _csv_rows(run_dir / "metrics.csv")
    assert [int(row["epoch"]) for row in rows] == list(range(epochs))
    # beta at the last step of every epoch, before and after the kill, is that of an
    # uninterrupted run: min(1, step / (warmup * steps)) at step (epoch + 1) * steps - 1.
    expected = [min(1.0, ((epoch + 1) * steps - 1) / (warmup * steps)) for epoch in range(epochs)]
    np.testing.assert_allclose([float(row["beta"]) for row in rows], expected, rtol=1e-6)
    model = keras.models.load_model(run_dir / "model.keras")
    assert model.optimizer.iterations.numpy() == epochs * steps
    assert float(model.beta_variable.numpy()) == 1.0
