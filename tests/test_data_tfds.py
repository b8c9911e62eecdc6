"""tensorflow-datasets sources through `tfvae.data.load`, with tfds's own mock_data records."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from tfvae.cli import main
from tfvae.data import load
from tfvae.data.pipeline import source_short_name
from tfvae.data.tfds_source import network_available


def write_prepared_metadata(data_dir, name: str, split_sizes: dict[str, int]) -> None:
    """Writes the metadata a prepared tfds dataset has (dataset_info.json, features.json)."""
    builder = tfds.builder(name, data_dir=str(data_dir))
    builder.data_path.mkdir(parents=True)
    splits = [
        tfds.core.SplitInfo(
            name=split,
            shard_lengths=[size],
            num_bytes=0,
            filename_template=tfds.core.ShardedFileTemplate(
                data_dir=builder.data_path,
                template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
                dataset_name=builder.name,
                split=split,
                filetype_suffix="tfrecord",
            ),
        )
        for split, size in split_sizes.items()
    ]
    builder.info.set_splits(tfds.core.SplitDict(splits))
    builder.info.write_to_directory(builder.data_path)


def test_mnist_from_tfds(tmp_path):
    write_prepared_metadata(tmp_path, "mnist", {"train": 40, "test": 40})
    with tfds.testing.mock_data(num_examples=40, data_dir=str(tmp_path)):
        splits = load("mnist", batch_size=16, data_dir=str(tmp_path))
        raw_test = np.stack([ex["image"] for ex in tfds.as_numpy(
            tfds.builder("mnist").as_dataset(split="test"))])
        train_batches = [batch.numpy() for batch in splits.train]
        validation = np.concatenate([batch.numpy() for batch in splits.validation])
        images, labels = splits.validation_examples(8, seed=3)

    assert splits.image_shape == (28, 28, 1)
    assert (splits.num_train, splits.num_validation) == (40, 40)
    assert splits.has_labels and splits.label_names == tuple(str(d) for d in range(10))
    assert [len(batch) for batch in train_batches] == [16, 16, 8]
    # uint8 -> [0, 1], validation in the split's own order.
    np.testing.assert_allclose(validation, raw_test.astype(np.float32) / 255.0, atol=1e-6)
    assert images.shape == (8, 28, 28, 1) and labels.shape == (8,)
    assert labels.min() >= 0 and labels.max() <= 9


def test_cifar10_from_tfds_converted_to_gray(tmp_path):
    write_prepared_metadata(tmp_path, "cifar10", {"train": 24, "test": 12})
    with tfds.testing.mock_data(num_examples=24, data_dir=str(tmp_path)):
        color = load("cifar10", batch_size=8, data_dir=str(tmp_path))
        gray = load("cifar10", batch_size=8, data_dir=str(tmp_path), channels=1)
        color_batch = next(iter(color.validation)).numpy()
        gray_batch = next(iter(gray.validation)).numpy()

    assert color.image_shape == (32, 32, 3) and gray.image_shape == (32, 32, 1)
    assert (color.num_train, color.num_validation) == (24, 12)
    luminance = color_batch @ np.array([0.2989, 0.5870, 0.1140], np.float32)
    # Stored as uint8 after the conversion: within half a gray level.
    np.testing.assert_allclose(gray_batch[..., 0], luminance, atol=0.5 / 255 + 1e-5)


def test_celeb_a_is_center_cropped_to_64(tmp_path):
    write_prepared_metadata(tmp_path, "celeb_a", {"train": 6, "validation": 3, "test": 3})
    with tfds.testing.mock_data(num_examples=6, data_dir=str(tmp_path)):
        default = load("celeb_a", batch_size=4, data_dir=str(tmp_path))
        small = load("celeb_a", batch_size=4, data_dir=str(tmp_path), image_size=(16, 16))
        batch = next(iter(default.train)).numpy()
        small_batch = next(iter(small.validation)).numpy()

    assert default.image_shape == (64, 64, 3) and small.image_shape == (16, 16, 3)
    assert batch.shape == (4, 64, 64, 3) and small_batch.shape == (4, 16, 16, 3)
    assert 0.0 <= batch.min() and batch.max() <= 1.0
    assert not default.has_labels and default.num_validation == 3


def test_tfds_dataset_without_validation_split_holds_out_a_slice(tmp_path):
    write_prepared_metadata(tmp_path, "fashion_mnist", {"train": 50})
    with tfds.testing.mock_data(num_examples=50, data_dir=str(tmp_path)):
        splits = load("fashion_mnist", data_dir=str(tmp_path), validation_fraction=0.2)
    assert (splits.num_train, splits.num_validation) == (40, 10)


def test_tfds_dataset_without_images_is_refused():
    with pytest.raises(ValueError, match="'image' feature.*imdb_reviews"):
        load("imdb_reviews")


def test_unknown_name_lists_what_works():
    with pytest.raises(ValueError, match="Unknown dataset 'no_such_set'.*'digits'.*mnist"):
        load("no_such_set")


def test_unprepared_tfds_dataset_without_network_fails_fast(tmp_path):
    if network_available():
        pytest.skip("this machine has network: tfds would download mnist instead of failing")
    started = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="no network.*--data-dir"):
        load("mnist", data_dir=str(tmp_path))
    assert time.perf_counter() - started < 15


def test_network_check_answers_quickly_for_a_closed_port():
    started = time.perf_counter()
    assert not network_available(("127.0.0.1", 9), timeout=1.0)
    assert time.perf_counter() - started < 5


def write_local_mnist_folder(folder) -> None:
    """A folder of ten 6x6 gray PNGs, shaped unlike tfds's 28x28 mnist."""
    folder.mkdir()
    for index in range(10):
        Image.fromarray(np.full((6, 6), index * 20, np.uint8)).save(folder / f"{index}.png")


def test_local_folder_named_like_a_tfds_dataset_wins_and_says_so(tmp_path, monkeypatch, caplog):
    data_dir = tmp_path / "tfds"
    write_prepared_metadata(data_dir, "mnist", {"train": 20, "test": 10})
    monkeypatch.chdir(tmp_path)
    write_local_mnist_folder(tmp_path / "mnist")
    with tfds.testing.mock_data(num_examples=20, data_dir=str(data_dir)):
        with caplog.at_level(logging.WARNING, logger="tfvae.data"):
            local = load("mnist", batch_size=4, data_dir=str(data_dir))
        forced = load("tfds:mnist", batch_size=4, data_dir=str(data_dir))
    assert local.image_shape == (6, 6, 1) and local.source_kind == "local folder"
    assert local.source_description == "local folder 'mnist'"
    [record] = [r for r in caplog.records if r.name.startswith("tfvae.data")]
    assert f"local folder '{tmp_path / 'mnist'}' for dataset 'mnist' (an existing path wins" in (
        record.getMessage()
    )
    assert "'tfds:mnist'" in record.getMessage()
    assert forced.image_shape == (28, 28, 1) and forced.source == "mnist"
    assert forced.source_description == "tensorflow-datasets 'mnist'"
    assert (forced.num_train, forced.num_validation) == (20, 10)


def test_tfds_name_without_a_local_folder_is_tfds_and_quiet(tmp_path, monkeypatch, caplog):
    data_dir = tmp_path / "tfds"
    write_prepared_metadata(data_dir, "mnist", {"train": 20, "test": 10})
    monkeypatch.chdir(tmp_path)  # no ./mnist here
    with tfds.testing.mock_data(num_examples=20, data_dir=str(data_dir)):
        with caplog.at_level(logging.WARNING, logger="tfvae.data"):
            splits = load("mnist", batch_size=4, data_dir=str(data_dir))
    assert splits.source_kind == "tensorflow-datasets" and splits.image_shape == (28, 28, 1)
    assert not [r for r in caplog.records if r.name.startswith("tfvae.data")]


def test_cli_says_which_source_it_used(tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.chdir(tmp_path)
    write_local_mnist_folder(tmp_path / "mnist")
    # A model that cannot be built for 6x6 images stops the run right after the data is read.
    with caplog.at_level(logging.WARNING, logger="tfvae.data"):
        status = main(["train", "--dataset", "mnist", "--filters", "4,4", "--quiet"])
    assert status == 2 and "divisible by" in capsys.readouterr().err
    assert any("Using the local folder" in r.getMessage() for r in caplog.records)


def test_tfds_prefix_with_an_unknown_name_is_an_unknown_dataset():
    with pytest.raises(ValueError, match="Unknown dataset 'no_such_set'"):
        load("tfds:no_such_set")


def test_unknown_tfds_configuration_is_one_clear_line():
    with pytest.raises(ValueError, match=r"known configuration.*'mnist/nope'.*BuilderConfig nope") as raised:
        load("mnist/nope")
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "source, name",
    [("digits", "digits"), ("tfds:mnist", "mnist"), ("celeb_a/align:2.1.0", "celeb_a"),
     ("data/train.npz", "train"), ("~/faces/", "faces"), ("my data.npy", "my-data"), ("..", "data")],
)
def test_default_run_names_have_no_prefix_or_odd_characters(source, name):
    assert source_short_name(source) == name
