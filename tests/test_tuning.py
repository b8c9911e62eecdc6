"""Tests of tfvae.tuning: real keras-tuner searches on the 8x8 digits with tiny models."""

from __future__ import annotations

import csv
import json
import math

import keras
import keras_tuner
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_main

import tfvae
from tfvae.cli import main
from tfvae.training import TrainConfig, load_data
from tfvae.tuning import TuningConfig, VAEHyperModel, make_tuner, tune

TINY_FILTERS = (4, 8)


def tiny_config(run_dir, epochs: int = 2, **changes) -> TuningConfig:
    train = TrainConfig(filters=TINY_FILTERS, epochs=epochs, learning_rate=3e-3, run_dir=str(run_dir))
    settings = dict(latent_dims=(2, 8, 16), max_trials=3)
    settings.update(changes)
    return TuningConfig(train=train, **settings)


def read_rows(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """A finished random search: 3 trials of 2 epochs over latent sizes 2, 8 and 16."""
    config = tiny_config(tmp_path_factory.mktemp("tuning") / "run")
    return config, tune(config, verbose=0)


def test_search_writes_table_plot_and_best_model(search):
    config, summary = search
    run_dir = summary["run_dir"]
    rows = read_rows(f"{run_dir}/trials.csv")
    assert [row["status"] for row in rows] == ["COMPLETED"] * 3
    assert sorted(int(row["latent_dim"]) for row in rows) == [2, 8, 16]
    losses = [float(row["best_val_loss"]) for row in rows]
    assert all(math.isfinite(value) and value > 0 for value in losses)
    best = summary["best"]
    assert best["best_value"] == pytest.approx(min(losses))
    assert best["hyperparameters"]["latent_dim"] == int(rows[int(np.argmin(losses))]["latent_dim"])
    assert json.loads(open(f"{run_dir}/best/summary.json").read()) == json.loads(json.dumps(best))

    plot = open(f"{run_dir}/objective_by_latent_dim.png", "rb").read()
    assert plot.startswith(b"\x89PNG") and len(plot) > 5_000

    vae = keras.models.load_model(f"{run_dir}/best/model.keras")
    assert isinstance(vae, tfvae.VAE) and vae.latent_dim == best["hyperparameters"]["latent_dim"]
    data = load_data(config.train)
    # The ELBO uses one posterior sample per example: average a few evaluations.
    evaluated = np.mean([vae.evaluate(data.validation, verbose=0, return_dict=True)["loss"] for _ in range(4)])
    assert evaluated == pytest.approx(best["best_value"], abs=0.5)

    exported = tf.saved_model.load(f"{run_dir}/best/saved_model")
    images = next(iter(data.validation))[:5]
    embedding = exported.embed(images)["embedding"]
    assert embedding.shape == (5, vae.latent_dim)
    np.testing.assert_allclose(embedding, vae.encode(images).mean(), rtol=1e-4, atol=1e-5)


def test_best_models_and_hyperparameters_of_the_reloaded_tuner(search):
    config, summary = search
    data = load_data(config.train)
    hypermodel = config.hypermodel(data.image_shape)
    tuner = make_tuner(hypermodel, "random", summary["run_dir"], max_trials=3, max_epochs=2)

    best_vae = tuner.get_best_models(1)[0]
    assert isinstance(best_vae, tfvae.VAE)
    reloaded = keras.models.load_model(f"{summary['run_dir']}/best/model.keras")
    for loaded, kept in zip(best_vae.get_weights(), reloaded.get_weights(), strict=True):
        np.testing.assert_array_equal(loaded, kept)

    best_hp = tuner.get_best_hyperparameters(1)[0]
    assert best_hp.values == summary["best"]["hyperparameters"]
    retrained = hypermodel.build(best_hp)
    history = retrained.fit(data.train, validation_data=data.validation, epochs=1, verbose=0, shuffle=False)
    assert retrained.latent_dim == best_hp["latent_dim"]
    assert retrained.optimizer.learning_rate.numpy() == pytest.approx(config.train.learning_rate)
    assert math.isfinite(history.history["val_loss"][0])


@pytest.mark.slow
def test_a_deliberately_bad_trial_is_never_the_best(tmp_path):
    data = load_data(TrainConfig())
    hypermodel = VAEHyperModel(
        data.image_shape, latent_dims=(1, 16), learning_rates=(1e-6, 3e-3), filters=(TINY_FILTERS,)
    )
    tuner = make_tuner(hypermodel, "grid", tmp_path, max_trials=4, max_epochs=1)
    tuner.search(data.train, validation_data=data.validation, epochs=1, verbose=0, shuffle=False)

    scores = {
        (t.hyperparameters["latent_dim"], t.hyperparameters["learning_rate"]): t.score
        for t in tuner.oracle.trials.values()
    }
    assert len(scores) == 4
    best = tuner.get_best_hyperparameters(1)[0].values
    assert best["learning_rate"] == 3e-3
    assert scores[(1, 1e-6)] > scores[(best["latent_dim"], 3e-3)] + 1.0
    assert tuner.oracle.get_best_trials(1)[0].score == min(scores.values())


@pytest.mark.slow
def test_hyperband_tunes_the_batch_size_and_returns_a_trained_vae(tmp_path):
    data = load_data(TrainConfig())
    hypermodel = VAEHyperModel(data.image_shape, latent_dims=(2, 8), filters=(TINY_FILTERS,),
                               learning_rates=(3e-3,), batch_sizes=(32, 128))
    tuner = make_tuner(hypermodel, "hyperband", tmp_path, max_trials=1, max_epochs=2)
    tuner.search(data.train, validation_data=data.validation, epochs=2, verbose=0, shuffle=False)

    trials = list(tuner.oracle.trials.values())
    assert len(trials) >= 2 and all(t.hyperparameters["tuner/epochs"] == 2 for t in trials)
    best_trial = tuner.oracle.get_best_trials(1)[0]
    assert best_trial.hyperparameters["batch_size"] in (32, 128)
    best_vae = tuner.get_best_models(1)[0]
    evaluated = np.mean([best_vae.evaluate(data.validation, verbose=0, return_dict=True)["loss"] for _ in range(4)])
    assert evaluated == pytest.approx(best_trial.score, abs=0.5)


class InterruptSecondTrial(keras.callbacks.Callback):
    """Stops the search as Ctrl-C would, three batches into the second trial."""

    trials_started = 0  # on the class: keras-tuner deep-copies callbacks for each trial

    def on_train_begin(self, logs=None):
        type(self).trials_started += 1

    def on_train_batch_end(self, batch, logs=None):
        if type(self).trials_started == 2 and batch == 2:
            raise KeyboardInterrupt


class RecordTrials(keras.callbacks.Callback):
    latent_dims = []

    def on_train_begin(self, logs=None):
        type(self).latent_dims.append(self.model.latent_dim)


@pytest.mark.slow
def test_an_interrupted_search_resumes_with_the_remaining_trials(tmp_path):
    config = tiny_config(tmp_path / "run", epochs=1, tuner="bayesian")
    with pytest.raises(KeyboardInterrupt):
        tune(config, verbose=0, callbacks=[InterruptSecondTrial()])
    first = json.loads((tmp_path / "run/tuner/trial_0/trial.json").read_text())
    interrupted = json.loads((tmp_path / "run/tuner/trial_1/trial.json").read_text())
    assert first["status"] == "COMPLETED" and interrupted["status"] == "RUNNING"

    summary = tune(config, verbose=0, callbacks=[RecordTrials()])
    assert summary["resumed"]
    # The interrupted trial runs again, then the last one; the completed one is kept as it was.
    assert len(RecordTrials.latent_dims) == 2
    assert RecordTrials.latent_dims[0] == interrupted["hyperparameters"]["values"]["latent_dim"]
    rows = read_rows(tmp_path / "run/trials.csv")
    assert [row["status"] for row in rows] == ["COMPLETED"] * 3
    assert float(rows[0]["best_val_loss"]) == pytest.approx(first["score"])


def test_a_run_directory_is_refused_unless_it_is_the_same_tuning_run(tmp_path, search):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds files"):
        tune(tiny_config(occupied), verbose=0)
    assert sorted(p.name for p in occupied.iterdir()) == ["notes.txt"]

    _, summary = search
    before = open(f"{summary['run_dir']}/trials.csv").read()
    with pytest.raises(ValueError, match=r"latent_dims"):
        tune(tiny_config(summary["run_dir"], latent_dims=(2, 4)), verbose=0)
    assert open(f"{summary['run_dir']}/trials.csv").read() == before


def test_bad_candidates_are_rejected_with_what_was_received():
    with pytest.raises(ValueError, match=r"latent_dims.*Received: latent_dims=\(\)"):
        VAEHyperModel((8, 8, 1), latent_dims=())
    with pytest.raises(ValueError, match="learning_rates"):
        VAEHyperModel((8, 8, 1), learning_rates=(0.0,))
    with pytest.raises(ValueError, match="tuner"):
        TuningConfig(tuner="evolution")


@pytest.mark.slow
def test_cli_tune_writes_the_run_and_resumes_it(tmp_path, capsys):
    run_dir = tmp_path / "run"
    common = ["tune", "--latent-dims", "2,4", "--epochs", "1", "--filters", "4,8", "--quiet", "--run-dir", run_dir]
    status, out, err = run_main(capsys, *common, "--max-trials", "1")
    assert status == 0, err
    output = json.loads(out)
    assert output["resumed"] is False and output["best"]["hyperparameters"]["latent_dim"] in (2, 4)
    for name in ("tuning.json", "trials.csv", "objective_by_latent_dim.png", "best/model.keras",
                 "best/saved_model/saved_model.pb", "tuner/oracle.json"):
        assert (run_dir / name).exists(), name

    status, out, err = run_main(capsys, *common, "--max-trials", "2")  # more trials: the same run goes on
    assert status == 0, err
    assert json.loads(out)["resumed"] is True
    rows = read_rows(run_dir / "trials.csv")
    assert sorted(int(row["latent_dim"]) for row in rows) == [2, 4]


def test_a_larger_max_trials_on_a_used_up_search_space_says_that_no_trial_ran(search, capsys):
    # The search tried all three latent sizes: a larger --max-trials has nothing left to try.
    config, summary = search
    before = read_rows(f"{summary['run_dir']}/trials.csv")
    args = ["tune", "--latent-dims", "2,8,16", "--filters", "4,8", "--epochs", str(config.train.epochs),
            "--learning-rate", str(config.train.learning_rate), "--max-trials", "5", "--quiet",
            "--run-dir", summary["run_dir"]]
    assert main(args) == 0
    captured = capsys.readouterr()
    output = json.loads(captured.out)
    assert output["resumed"] is True and output["trials_run"] == 0
    assert output["best"]["best_value"] == pytest.approx(summary["best"]["best_value"])
    assert ("tfvae: no trial ran: every combination of the tuned values has been tried (3 trials); "
            "the best of them is reported") in captured.err.splitlines()
    assert read_rows(f"{summary['run_dir']}/trials.csv") == before
    assert summary["trials_run"] == 3  # the first search ran all three


def test_hypermodel_searches_beta_free_bits_and_k_compared_by_the_validation_elbo():
    hypermodel = VAEHyperModel((8, 8, 1), latent_dims=(2,), filters=((4,),), betas=(0.5, 1.0),
                               free_bits=(0.0, 0.25), iw_samples=(1, 3), gradient_estimator="dreg")
    assert hypermodel.default_objective.name == "val_elbo"
    assert hypermodel.default_objective.direction == "max"
    hp = keras_tuner.HyperParameters()
    hp.Fixed("iw_samples", 3)
    vae = hypermodel.build(hp)
    assert isinstance(vae.objective, tfvae.objectives.IWAE)
    assert (vae.objective.num_samples, vae.objective.gradient_estimator) == (3, "dreg")
    assert "beta" not in hp.values and "free_bits" not in hp.values  # no KL term with K > 1
    hp = keras_tuner.HyperParameters()
    hp.Fixed("iw_samples", 1)
    hp.Fixed("free_bits", 0.25)
    vae = hypermodel.build(hp)
    assert isinstance(vae.objective, tfvae.objectives.ELBO) and vae.objective.free_bits == 0.25
    assert hypermodel.build(keras_tuner.HyperParameters()).objective.beta == 0.5
    assert VAEHyperModel((8, 8, 1), filters=((4,),)).default_objective.name == "val_loss"
    with pytest.raises(ValueError, match=r"iw_samples.*Received: iw_samples=\(0,\)"):
        VAEHyperModel((8, 8, 1), iw_samples=(0,))
