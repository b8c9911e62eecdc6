"""Test sets: `load_held_out`, `load(..., test_dataset=...)`, `tfvae train --test-dataset` and
`tfvae evaluate --dataset FILE` / `--split test` scoring all of a test file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from test_data_files import write_idx
from test_data_tfds import write_prepared_metadata

from tfvae.cli import main
from tfvae.data import EVALUATION_SEED, load, load_held_out


def examples(dataset) -> np.ndarray:
    return np.concatenate([batch.numpy() for batch in dataset])


@pytest.fixture(scope="module")
def test_files(tmp_path_factory):
    """A 500-image test set of 8x8 digits, as an IDX file (with labels) and as a .npz."""
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("test-files")
    digits = load_digits()
    images = np.round(digits.images[-500:] / 16 * 255).astype(np.uint8)
    write_idx(folder / "test-images-idx3-ubyte.gz", images, compress=True)
    write_idx(folder / "test-labels-idx1-ubyte.gz", digits.target[-500:], compress=True)
    np.savez(folder / "test.npz", images=images, labels=digits.target[-500:])
    return folder, images


@pytest.mark.parametrize("name", ["test-images-idx3-ubyte.gz", "test.npz"])
def test_a_local_file_is_scored_whole_in_its_order(test_files, name):
    folder, images = test_files
    held_out = load_held_out(str(folder / name), batch_size=64, labels=True)
    assert held_out.num_examples == 500 and held_out.split == "all"
    assert held_out.description == f"all 500 examples of local file '{folder / name}'"
    got = np.concatenate([batch[0].numpy() for batch in held_out.data])
    np.testing.assert_allclose(got[..., 0] * 255, images, atol=1e-3)
    # As validation, the same file gives the seeded tenth that training would hold out.
    validation = load_held_out(str(folder / name), split="validation", validation_fraction=0.1)
    assert validation.num_examples == 50 and validation.split == "held-out"


def test_the_test_part_of_an_idx_folder_or_npz(tmp_path):
    rng = np.random.default_rng(0)
    test_images = rng.integers(0, 256, (7, 4, 4))
    write_idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 256, (30, 4, 4)))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", test_images)
    held_out = load_held_out(str(tmp_path))
    assert (held_out.num_examples, held_out.split) == (7, "test")
    np.testing.assert_allclose(examples(held_out.data)[..., 0] * 255, test_images, atol=1e-3)
    np.savez(tmp_path / "keras.npz", x_train=rng.integers(0, 256, (30, 4, 4)), x_test=test_images)
    assert load_held_out(str(tmp_path / "keras.npz")).num_examples == 7


def test_a_tfds_name_gives_its_test_split(tmp_path):
    write_prepared_metadata(tmp_path, "mnist", {"train": 20, "validation": 6, "test": 12})
    with tfds.testing.mock_data(num_examples=20, data_dir=str(tmp_path)):
        held_out = load_held_out("mnist", batch_size=5, data_dir=str(tmp_path))
        raw_test = np.stack([example["image"] for example in tfds.as_numpy(
            tfds.builder("mnist").as_dataset(split="test"))])
        got = examples(held_out.data)
        splits = load("mnist", batch_size=5, data_dir=str(tmp_path))
    assert (held_out.num_examples, held_out.split) == (12, "test")
    assert held_out.description == "the test split (12 examples) of tensorflow-datasets 'mnist'"
    np.testing.assert_allclose(got, raw_test / 255.0, atol=1e-6)
    # Training validates on the validation split, never on the test split.
    assert (splits.num_validation, splits.validation_split) == (6, "validation")


def test_binarized_test_sets_get_one_sample_with_seed_1234(test_files):
    folder, images = test_files
    source = str(folder / "test.npz")
    first = load_held_out(source, binarize="dynamic", seed=0)
    again = load_held_out(source, binarize="dynamic", seed=7, batch_size=33)
    assert first.binarization == f"one fixed Bernoulli sample per image (seed {EVALUATION_SEED})"
    np.testing.assert_array_equal(examples(first.data), examples(again.data))
    np.testing.assert_array_equal(examples(first.data), examples(first.data))  # each pass alike
    binary = examples(first.data)
    assert set(np.unique(binary)) == {0.0, 1.0}
    assert abs(binary.mean() - images.mean() / 255) < 0.01
    # The test set of a training run is the same sample.
    splits = load("digits", batch_size=64, binarize="dynamic", test_dataset=source)
    np.testing.assert_array_equal(examples(splits.test.data), binary)
    assert splits.test.num_examples == 500


def test_a_test_set_of_another_shape_is_refused(tmp_path):
    np.save(tmp_path / "big.npy", np.zeros((5, 9, 9), np.uint8))
    with pytest.raises(ValueError, match=r"Expected test images of the training images' shape \(8, 8, 1\)"):
        load("digits", test_dataset=str(tmp_path / "big.npy"))


@pytest.fixture(scope="module")
def run_with_test_set(test_files, tmp_path_factory):
    """A tiny run on the digits, trained for one epoch with the 500-image IDX file as its test set."""
    folder, _ = test_files
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    test_file = folder / "test-images-idx3-ubyte.gz"
    status = main(["train", "--epochs", "1", "--batch-size", "64", "--filters", "4", "--hidden-units", "8",
                   "--latent-dim", "2", "--binarize", "dynamic", "--quiet", "--run-dir", str(run_dir),
                   "--test-dataset", str(test_file)])
    assert status == 0
    return run_dir, test_file


def _evaluate(capsys, run_dir, *args) -> dict:
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--samples", "100", "--json", *map(str, args)]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow  # the module's run trains for one epoch (about 30 s with its pictures)
def test_training_scores_its_test_set_into_test_metrics(run_with_test_set, capsys):
    run_dir, test_file = run_with_test_set
    test_metrics = json.loads((run_dir / "test_metrics.json").read_text())
    assert test_metrics["num_examples"] == 500 and test_metrics["split"] == "all"
    assert test_metrics["scored"] == f"all 500 examples of local file '{test_file}'"
    assert test_metrics["checkpoint"] == "last" and test_metrics["num_samples"] == 100
    assert test_metrics["binarization"] == "one fixed Bernoulli sample per image (seed 1234)"
    assert 0 < test_metrics["iw_nll"] <= -test_metrics["elbo"] + 1.0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["test_dataset"] == str(test_file)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"] == test_metrics and metrics["num_validation_examples"] == 180
    # `evaluate --split test` scores the same examples, with the same K and seed.
    evaluated = _evaluate(capsys, run_dir, "--split", "test", "--batch-size", "64")
    assert evaluated["num_examples"] == 500 and evaluated["dataset"] == str(test_file)
    assert evaluated["iw_nll"] == pytest.approx(test_metrics["iw_nll"], abs=1e-4)


@pytest.mark.slow
def test_evaluate_scores_all_of_a_dataset_file(run_with_test_set, test_files, capsys):
    run_dir, _ = run_with_test_set
    folder, _ = test_files
    whole = _evaluate(capsys, run_dir, "--dataset", folder / "test.npz")
    assert (whole["num_examples"], whole["split"]) == (500, "all")
    assert whole["source"] == f"local file '{folder / 'test.npz'}'"
    validation = _evaluate(capsys, run_dir, "--max-examples", "40")
    assert validation["num_examples"] == 40 and validation["split"] == "held-out"
    assert validation["scored"] == "the first 40 of the held-out validation slice (180 examples, seeded) of built-in 'digits'"


def test_split_test_of_a_run_without_a_test_set_is_one_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"dataset": "digits"}))
    (run_dir / "model.keras").write_bytes(b"")
    assert main(["evaluate", str(run_dir), "--split", "test"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Expected a run trained with a test set (--test-dataset)" in error
