"""`tfvae train` end to end, in a subprocess, as a user runs it."""

import json

import numpy as np
import pytest
import tensorflow as tf
from conftest import run_main

from tfvae.training import TrainConfig


def _png_shape(path):
    return tuple(tf.io.decode_png(path.read_bytes()).shape)


@pytest.mark.slow
def test_train_with_no_arguments_writes_a_complete_run_directory_under_runs(default_run):
    run_dir, result = default_run
    assert run_dir.parent.name == "runs" and run_dir.name.startswith("digits-")
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == [
        "checkpoints", "config.json", "interpolations.png", "kl_per_dimension.png", "logs", "loss_curves.png",
        "metrics.csv", "metrics.json", "model.keras", "reconstructions.png", "samples.png",
    ]
    epochs = TrainConfig().epochs
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_completed"] == epochs and metrics["stopped_on_nan"] is False
    assert metrics["validation"]["elbo"] < 0 and metrics["num_train_examples"] > 1000
    assert json.loads(result.stdout)["run_dir"] == f"runs/{run_dir.name}"  # relative to the working directory
    config = json.loads((run_dir / "config.json").read_text())
    assert config["epochs"] == epochs and config["dataset"] == "digits"
    # 64 samples of 8x8 digits, upscaled 8x, in an 8x8 grid with 2-pixel gaps.
    assert _png_shape(run_dir / "samples.png") == (8 * 66 + 2, 8 * 66 + 2, 1)
    assert _png_shape(run_dir / "reconstructions.png") == (8 * 66 + 2, 8 * 66 + 2, 1)
    pixels = tf.io.decode_png((run_dir / "samples.png").read_bytes()).numpy()
    assert pixels.std() > 10  # not blank


def test_existing_run_directory_is_refused_and_kept(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    status, _, err = run_main(capsys, "train", "--epochs", "1", "--run-dir", run_dir)
    assert status == 2
    assert err.strip().splitlines() == [
        f"tfvae: error: Expected a new or empty run directory. Received: '{run_dir}', which "
        "already holds files; choose another --run-dir, or continue it with --resume (nothing was changed)."
    ]
    assert sorted(p.name for p in run_dir.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--epochs", "0"], "expected a positive integer, received '0'"),
        (["--filters", "32,x"], "expected comma-separated positive integers"),
        (["--likelihood", "poisson"], "invalid choice: 'poisson'"),
        (["--learning-rate", "-1"], "Expected learning_rate > 0"),
        (["--beta", "-2"], "Expected beta to be a finite number >= 0"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args, message):
    status, _, err = run_main(capsys, "train", "--run-dir", tmp_path / "run", *args)
    assert status == 2
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "model.keras").exists()


def test_help_documents_every_flag(capsys):
    status, out, _ = run_main(capsys, "train", "--help")
    assert status == 0
    for flag in ["--latent-dim", "--filters", "--likelihood", "--beta", "--epochs", "--batch-size",
                 "--learning-rate", "--seed", "--run-dir"]:
        assert flag in out


def test_train_function_returns_the_metrics_it_writes(tmp_path):
    from tfvae.training import TrainConfig, train

    metrics = train(TrainConfig(epochs=1, run_dir=str(tmp_path / "r"), latent_dim=2), verbose=0)
    assert metrics["epochs_completed"] == 1
    assert np.isfinite(metrics["train"]["loss"])
    assert json.loads((tmp_path / "r" / "metrics.json").read_text()) == metrics
