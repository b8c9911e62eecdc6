"""The conditional VAE on the command line: `train --conditional`, its run-directory pictures,
`sample --label`, `evaluate` (-log p(x|y)) and `tune --conditional`, on the 8x8 digits."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_main

import tfvae
from tfvae.cli import main
from tfvae.training import load_data, load_run_config

#: A tiny model, so the run takes seconds: 2-D z (every picture is drawn), 8 filters.
TINY = ["--latent-dim", "2", "--filters", "8", "--hidden-units", "32", "--learning-rate", "3e-3"]
#: 8x8 digits are drawn 8x larger, in cells of 64 + 2 pixels.
CELL = 66


def _png(path):
    return tf.io.decode_png(path.read_bytes()).numpy()


def _cell(grid, row: int, column: int) -> np.ndarray:
    """The 8x8 image in a grid cell, read back from its 8x upscaled pixels, in [0, 255]."""
    top, left = 2 + row * CELL, 2 + column * CELL
    return grid[top : top + 64 : 8, left : left + 64 : 8, 0].astype(float)


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    """Two epochs of a conditional VAE with a learned Gaussian per class, p(z|y)."""
    run_dir = tmp_path_factory.mktemp("runs") / "conditional"
    status = main(["train", "--conditional", "--class-prior", "learned", *TINY, "--epochs", "2",
                   "--run-dir", str(run_dir), "--quiet"])
    assert status == 0
    return run_dir


@pytest.fixture(scope="module")
def conditional_model(conditional_run):
    return keras.models.load_model(conditional_run / "model.keras")


def test_train_conditional_records_the_classes_and_builds_a_conditional_model(conditional_run, conditional_model):
    config = json.loads((conditional_run / "config.json").read_text())
    assert config["conditional"] is True and config["num_classes"] == 10 and config["class_prior"] == "learned"
    assert isinstance(conditional_model, tfvae.ConditionalVAE) and conditional_model.num_classes == 10
    assert conditional_model.prior.uses_labels  # the learned p(z|y)
    metrics = json.loads((conditional_run / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 2 and np.isfinite(metrics["validation"]["loss"])
    assert metrics["diagnostics"]["num_examples"] == 180


def test_run_pictures_are_label_aware_with_the_right_grid_sizes(conditional_run):
    pictures = json.loads((conditional_run / "metrics.json").read_text())["pictures"]
    assert "style_transfer.png" in pictures and "latent_manifold.png" not in pictures
    assert not (conditional_run / "latent_manifold.png").exists()  # it would take one per class
    expected = {
        "samples.png": (10 * CELL + 2, 6 * CELL + 2),  # one row per class, 64 // 10 samples each
        "style_transfer.png": (10 * CELL + 2, 11 * CELL + 2),  # one image per class; it, then 10 labels
        "reconstructions.png": (8 * CELL + 2, 8 * CELL + 2),  # 32 pairs
        "interpolations.png": (8 * CELL + 2, 10 * CELL + 2),  # 8 rows of 10 steps
    }
    for name, size in expected.items():
        pixels = _png(conditional_run / name)
        assert pixels.shape[:2] == size, name
        assert pixels.std() > 5, name
    assert _png(conditional_run / "latent_scatter.png").std() > 5


def test_samples_picture_has_one_row_per_class(conditional_run, conditional_model):
    grid = _png(conditional_run / "samples.png")
    labels = np.repeat(np.arange(10), 6)
    expected = np.round(np.clip(np.asarray(conditional_model.sample(60, seed=0, labels=labels)), 0, 1) * 255)
    for index, label in enumerate(labels):
        row, column = divmod(index, 6)
        assert row == label
        np.testing.assert_allclose(_cell(grid, row, column), expected[index, :, :, 0], atol=1.0)
    # The rows differ: the label changes the images.
    assert np.abs(_cell(grid, 0, 0) - _cell(grid, 1, 0)).mean() > 5


def test_style_transfer_rows_are_inputs_then_their_z_under_every_label(conditional_run, conditional_model):
    grid = _png(conditional_run / "style_transfer.png")
    config = load_run_config(conditional_run)
    images, labels = load_data(config).validation_examples(256, seed=config.seed)
    first = [int(np.flatnonzero(labels == label)[0]) for label in range(10)]  # row c: an image of class c
    for row, index in enumerate(first):
        np.testing.assert_allclose(_cell(grid, row, 0), np.round(images[index, :, :, 0] * 255), atol=1.0)
        transferred = np.asarray(conditional_model.transfer_style(images[index : index + 1], [row], 4))
        np.testing.assert_allclose(_cell(grid, row, 5), np.round(transferred[0, :, :, 0] * 255), atol=1.0)


def test_image_summaries_are_logged_every_epoch(conditional_run):
    (event_file,) = (conditional_run / "logs" / "images").iterdir()
    shapes = {}
    for event in tf.compat.v1.train.summary_iterator(str(event_file)):
        for value in event.summary.value:
            shapes.setdefault(value.tag, set()).add(event.step)
    assert shapes == {"samples": {0, 1}, "reconstructions": {0, 1}}


def test_sample_label_draws_one_class(conditional_run, conditional_model, tmp_path, capsys):
    out = tmp_path / "threes.png"
    status, stdout, err = run_main(capsys, "sample", conditional_run, "--label", "3", "-n", "16", "--out", out)
    assert status == 0, err
    assert stdout.strip() == f"wrote {out} (266x266 pixels)"
    grid = _png(out)  # 4x4 images of 8x8, upscaled 8x
    expected = np.round(np.clip(np.asarray(conditional_model.sample(16, seed=0, labels=3)), 0, 1) * 255)
    for index in range(16):
        np.testing.assert_allclose(_cell(grid, *divmod(index, 4)), expected[index, :, :, 0], atol=1.0)


def test_sample_without_label_has_one_row_per_class(conditional_run, tmp_path, capsys):
    out = tmp_path / "classes.png"
    status, _, err = run_main(capsys, "sample", conditional_run, "-n", "20", "--out", out)
    assert status == 0, err
    assert _png(out).shape[:2] == (10 * CELL + 2, 2 * CELL + 2)  # 20 // 10 per class


@pytest.mark.parametrize("mode", [["--interpolate"], ["--traverse", "1"], ["--traverse", "0", "--label", "7"]])
def test_sample_interpolations_and_traversals_of_a_conditional_run(conditional_run, tmp_path, capsys, mode):
    out = tmp_path / "walk.png"
    status, _, err = run_main(capsys, "sample", conditional_run, *mode, "-n", "24", "--steps", "6", "--out", out)
    assert status == 0, err
    pixels = _png(out)
    assert pixels.shape[:2] == (4 * CELL + 2, 6 * CELL + 2) and pixels.std() > 5


@pytest.mark.parametrize("label", ["10", "-1"])
def test_sample_label_out_of_range_is_one_line(conditional_run, tmp_path, capsys, label):
    status, _, err = run_main(capsys, "sample", conditional_run, "--label", label, "--out", tmp_path / "x.png")
    assert status == 2
    assert err.strip().splitlines() == [
        f"tfvae: error: Expected --label in [0, 9], the run's 10 classes. Received: --label {label}"
    ]
    assert not (tmp_path / "x.png").exists()


def test_sample_label_on_an_unconditional_run_is_one_line(tmp_path, capsys):
    run_dir = tmp_path / "plain"
    run_dir.mkdir()
    tfvae.build_conv_vae((8, 8, 1), 2, filters=(8,)).save(run_dir / "model.keras")
    status, _, err = run_main(capsys, "sample", run_dir, "--label", "3", "--out", tmp_path / "x.png")
    assert status == 2
    assert err.strip().splitlines() == [
        "tfvae: error: Expected --label only for a conditional run (trained with --conditional). "
        "Received: --label 3 for an unconditional model"
    ]


def test_evaluate_scores_log_p_of_x_given_the_data_labels(conditional_run, conditional_model, capsys):
    status, out, err = run_main(capsys, "evaluate", conditional_run, "--samples", "20", "--json")
    assert status == 0, err
    result = json.loads(out)
    assert result["num_classes"] == 10 and result["num_examples"] == 180
    assert 0 < result["iw_nll"] <= -result["elbo"] + 0.5
    # The same figure as the model's own estimate on the run's (images, labels) validation split...
    validation = load_data(load_run_config(conditional_run), batch_size=100).validation  # as evaluate's
    nll = conditional_model.importance_weighted_nll(validation, num_samples=20, seed=0)
    assert result["iw_nll"] == pytest.approx(nll.mean(), rel=1e-5)
    # ... which uses the labels: the images under the wrong labels are less likely.
    images = np.concatenate([batch[0] for batch in validation])
    labels = np.concatenate([batch[1] for batch in validation])
    wrong = conditional_model.importance_weighted_nll(images, (labels + 1) % 10, num_samples=20, seed=0)
    assert wrong.mean() > nll.mean() + 1.0

    status, table, _ = run_main(capsys, "evaluate", conditional_run, "--samples", "5", "--max-examples", "10")
    assert status == 0 and "IW NLL -log p(x|y), K=5 (nats/image)" in table


def test_class_prior_without_conditional_is_one_line(tmp_path, capsys):
    status, _, err = run_main(capsys, "train", "--class-prior", "learned", "--run-dir", tmp_path / "run")
    assert status == 2
    assert err.strip().splitlines() == [
        "tfvae: error: Expected class_prior only with conditional=True (a prior per class needs labels). "
        "Received: class_prior='learned', conditional=False"
    ]
    assert not (tmp_path / "run").exists()


def test_conditional_on_a_source_without_labels_is_one_line(tmp_path, capsys):
    data = tmp_path / "images.npz"
    np.savez(data, x_train=np.random.default_rng(0).random((40, 8, 8, 1), dtype=np.float32))
    status, _, err = run_main(capsys, "train", "--conditional", "--dataset", data, "--run-dir", tmp_path / "run")
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and "labels" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # about 18 s: a trial and the export of its best model
def test_tune_conditional_searches_conditional_models(tmp_path, capsys):
    run_dir = tmp_path / "tune"
    status, out, err = run_main(capsys, "tune", "--conditional", "--latent-dims", "2", "--max-trials", "1",
                             "--epochs", "1", "--filters", "4", "--hidden-units", "16", "--run-dir", run_dir, "--quiet")
    assert status == 0, err
    assert json.loads(out)["trials_run"] == 1
    vae = keras.models.load_model(run_dir / "best" / "model.keras")
    assert isinstance(vae, tfvae.ConditionalVAE) and vae.num_classes == 10
