"""Which examples a source without a validation split holds out (`holdout`, issue 15): a seeded
random slice ("random", the default) or the last examples in stored order ("last", the VampPrior
paper's MNIST split: the first 50,000 train, the last 10,000 validate)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO_ROOT
from test_data_files import write_idx, write_png

from tfvae import cli
from tfvae.config import TrainConfig
from tfvae.data import load, load_held_out
from tfvae.data.idx import read_idx
from tfvae.presets import preset_config
from tfvae.training import load_data

MNIST_TRAIN_DIR = REPO_ROOT.parent / "shared" / "data" / "mnist-train"


def images_of(dataset) -> np.ndarray:
    """The images of a batched dataset (of images or `(images, labels)`), as uint8 levels."""
    batches = [batch[0] if isinstance(batch, (tuple, list)) else batch for batch in dataset]
    return np.round(np.concatenate([batch.numpy() for batch in batches]) * 255).astype(np.uint8)


def numbered_images(count: int) -> np.ndarray:
    """`count` 4x4 images whose first pixel is the image's index (so order can be read back)."""
    images = np.zeros((count, 4, 4), np.uint8)
    images[:, 0, 0] = np.arange(count)
    images[:, 1, 1] = 255  # not an all-black file
    return images


def test_last_holds_out_the_last_examples_of_an_idx_file_in_stored_order(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path, numbered_images(60))
    last = load(str(path), batch_size=7, validation_fraction=0.25, holdout="last", cache="none")
    assert (last.num_train, last.num_validation, last.validation_split) == (45, 15, "held-out")
    assert images_of(last.validation)[:, 0, 0, 0].tolist() == list(range(45, 60))
    trained = images_of(last.train)[:, 0, 0, 0]
    assert sorted(trained.tolist()) == list(range(45))
    assert trained.tolist() != list(range(45))  # the training part is still shuffled
    # The default, a seeded random slice, holds out other examples.
    random = load(str(path), batch_size=7, validation_fraction=0.25, cache="none")
    held = sorted(images_of(random.validation)[:, 0, 0, 0].tolist())
    assert len(held) == 15 and held != list(range(45, 60))


def test_last_applies_to_npz_files_image_folders_and_the_digits(tmp_path):
    np.savez(tmp_path / "data.npz", images=numbered_images(20))
    splits = load(str(tmp_path / "data.npz"), batch_size=4, validation_fraction=0.2, holdout="last")
    assert images_of(splits.validation)[:, 0, 0, 0].tolist() == [16, 17, 18, 19]

    folder = tmp_path / "pngs"
    for index, image in enumerate(numbered_images(10)):
        write_png(folder / f"{index:02d}.png", image)
    splits = load(str(folder), batch_size=4, validation_fraction=0.3, holdout="last")
    assert images_of(splits.validation)[:, 0, 0, 0].tolist() == [7, 8, 9]  # sorted paths' last

    from sklearn.datasets import load_digits  # noqa: PLC0415

    digits = load_digits().images / 16.0
    splits = load("digits", batch_size=100, validation_fraction=0.2, holdout="last")
    held = np.concatenate([batch.numpy() for batch in splits.validation])[..., 0]
    np.testing.assert_allclose(held, digits[-len(held):], atol=1e-6)


def test_the_validation_split_scored_later_is_the_one_trained_against(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path, numbered_images(30))
    splits = load(str(path), batch_size=5, validation_fraction=0.2, holdout="last")
    held_out = load_held_out(str(path), split="validation", batch_size=5, validation_fraction=0.2,
                             holdout="last")
    np.testing.assert_array_equal(images_of(held_out.data), images_of(splits.validation))


@pytest.mark.parametrize("call", [
    lambda path: load(path, holdout="first"),
    lambda path: load_held_out(path, split="validation", holdout="first"),
    lambda path: TrainConfig(dataset=path, holdout="first"),
])
def test_an_unknown_holdout_is_refused(tmp_path, call):
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path, numbered_images(10))
    with pytest.raises(ValueError, match=r"Expected holdout to be one of \['random', 'last'\]. Received: holdout='first'"):
        call(str(path))


def test_holdout_flag_reaches_the_run_config():
    args = cli.build_parser().parse_args(["train", "--holdout", "last", "--validation-fraction", "0.16667"])
    args.command_line = ["train", "--holdout", "last", "--validation-fraction", "0.16667"]
    config = cli.resolve_train_config(args)
    assert (config.holdout, config.validation_fraction) == ("last", 0.16667)
    assert cli.resolve_train_config(_parsed(["train"])).holdout == "random"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--holdout", "first"])


def _parsed(argv):
    args = cli.build_parser().parse_args(argv)
    args.command_line = argv
    return args


@pytest.mark.skipif(not MNIST_TRAIN_DIR.is_dir(), reason=f"MNIST's training images are not at {MNIST_TRAIN_DIR}")
def test_mnist_presets_train_on_the_first_50000_and_validate_on_the_last_10000():
    config = preset_config("mnist-vae", dataset=str(MNIST_TRAIN_DIR))
    splits = load_data(config, batch_size=1000)
    assert (splits.num_train, splits.num_validation) == (50_000, 10_000)
    raw = read_idx(MNIST_TRAIN_DIR / "train-images-idx3-ubyte.gz")
    # Dynamic binarization: validation gets one fixed Bernoulli sample of each stored image, so
    # its ink lies where the stored image's does, image by image, in stored order.
    validation = images_of(splits.validation)[..., 0] > 0
    assert validation.shape == (10_000, 28, 28)
    assert not np.any(validation & (raw[50_000:] == 0))
    assert np.all(validation.sum(axis=(1, 2)) > 0.5 * (raw[50_000:] > 127).sum(axis=(1, 2)))
