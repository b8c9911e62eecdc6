"""Labels from every source that has them: `tfvae.data.load(..., labels=True)`."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from test_data_files import write_idx
from test_data_tfds import write_prepared_metadata

from tfvae.config import TrainConfig
from tfvae.data import load, load_held_out
from tfvae.training import train


def labelled_examples(dataset) -> tuple[np.ndarray, np.ndarray]:
    """All `(images, labels)` of a dataset of labelled batches, checking each batch's types."""
    images, labels = [], []
    for batch_images, batch_labels in dataset:
        assert batch_labels.dtype.name == "int64" and batch_labels.shape == (batch_images.shape[0],)
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(images), np.concatenate(labels)


def test_digits_labels_match_their_images(digits):
    splits = load("digits", batch_size=64, labels=True, validation_fraction=0.2, cache="none")
    assert splits.with_labels and splits.num_classes == 10
    images, labels = labelled_examples(splits.validation)
    (_, _), (expected_images, expected_labels) = digits  # the same seeded split (seed 0, 0.2)
    np.testing.assert_array_equal(labels, expected_labels)
    np.testing.assert_allclose(images, expected_images, atol=1e-6)
    train_images, train_labels = labelled_examples(splits.train)
    assert len(train_labels) == splits.num_train and set(train_labels) == set(range(10))


def test_idx_file_labels_come_from_the_file_beside_it(tmp_path):
    # Image i is filled with the value 10 * label, so each label can be checked against its image.
    labels = np.arange(30) % 7
    write_idx(tmp_path / "x-images-idx3-ubyte.gz", np.repeat(10 * labels, 16).reshape(30, 4, 4), True)
    write_idx(tmp_path / "x-labels-idx1-ubyte.gz", labels, True)
    splits = load(str(tmp_path / "x-images-idx3-ubyte.gz"), batch_size=8, labels=True)
    assert splits.num_classes == 7
    for dataset in (splits.train, splits.validation):
        images, got = labelled_examples(dataset)
        np.testing.assert_allclose(images[:, 0, 0, 0] * 255, 10 * got, atol=1e-3)


def test_npz_labels_array(tmp_path):
    labels = np.arange(40) % 4
    np.savez(tmp_path / "data.npz", images=np.repeat(labels / 4, 9).reshape(40, 3, 3).astype("float32"),
             labels=labels)
    splits = load(str(tmp_path / "data.npz"), batch_size=16, labels=True, binarize="none")
    images, got = labelled_examples(splits.train)
    assert splits.num_classes == 4 and len(got) == 36
    np.testing.assert_allclose(images[:, 0, 0, 0] * 4, got, atol=1e-6)


def test_image_folder_labels_are_its_first_level_subfolders(tmp_path):
    for index, name in enumerate(["cat", "dog", "emu"]):
        (tmp_path / name / "more").mkdir(parents=True)
        for copy in range(4):
            folder = tmp_path / name / ("more" if copy == 3 else "")
            Image.fromarray(np.full((5, 5), 60 * index + 10, np.uint8)).save(folder / f"{copy}.png")
    splits = load(str(tmp_path), batch_size=4, labels=True, validation_fraction=0.25)
    assert splits.num_classes == 3 and splits.label_names == ("cat", "dog", "emu")
    images, got = labelled_examples(splits.train.concatenate(splits.validation))
    assert np.bincount(got).tolist() == [4, 4, 4]
    np.testing.assert_allclose(images[:, 0, 0, 0] * 255, 60 * got + 10, atol=1e-3)


def test_tfds_supervised_labels(tmp_path):
    write_prepared_metadata(tmp_path, "mnist", {"train": 20, "test": 12})
    with tfds.testing.mock_data(num_examples=20, data_dir=str(tmp_path)):
        splits = load("mnist", batch_size=8, data_dir=str(tmp_path), labels=True)
        expected = np.array([example["label"] for example in tfds.as_numpy(
            tfds.builder("mnist").as_dataset(split="test"))])
        _, labels = labelled_examples(splits.validation)
        _, train_labels = labelled_examples(splits.train)
    assert splits.num_classes == 10 and len(train_labels) == 20
    np.testing.assert_array_equal(labels, expected)


def test_without_labels_the_batches_are_images_alone():
    splits = load("digits", batch_size=32)
    assert not splits.with_labels and next(iter(splits.train)).shape == (32, 8, 8, 1)


@pytest.mark.parametrize("make", ["idx", "npy", "flat_folder"])
def test_labels_of_a_labelless_source_are_a_one_line_error(tmp_path, make):
    if make == "idx":
        source = tmp_path / "x-images-idx3-ubyte"
        write_idx(source, np.zeros((10, 4, 4)))
    elif make == "npy":
        source = tmp_path / "x.npy"
        np.save(source, np.zeros((10, 4, 4), np.uint8))
    else:
        source = tmp_path / "flat"
        source.mkdir()
        for index in range(10):
            Image.fromarray(np.zeros((4, 4), np.uint8)).save(source / f"{index}.png")
    for loader in (load, load_held_out):
        with pytest.raises(ValueError, match=r"^Expected a data source with class labels") as error:
            loader(str(source), labels=True)
        message = str(error.value)
        assert "\n" not in message and f"'{source}', which has none" in message
        assert "labels-idx1" in message and "subfolder per class" in message


def test_negative_labels_are_refused(tmp_path):
    np.savez(tmp_path / "data.npz", images=np.zeros((10, 3, 3), np.uint8), labels=np.arange(10) - 1)
    with pytest.raises(ValueError, match=r"Expected class labels >= 0. Received: the label -1"):
        load(str(tmp_path / "data.npz"))


def test_a_conditional_run_on_labelless_data_fails_before_writing(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((20, 4, 4), np.uint8))
    config = TrainConfig(dataset=str(tmp_path / "x.npy"), conditional=True, run_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match=r"^Expected a data source with class labels"):
        train(config)
    assert not (tmp_path / "run").exists()


def test_num_classes_needs_a_conditional_config():
    assert TrainConfig(conditional=True, num_classes=10).num_classes == 10
    with pytest.raises(ValueError, match=r"Expected num_classes to be None, or an integer >= 2 with conditional"):
        TrainConfig(num_classes=10)
