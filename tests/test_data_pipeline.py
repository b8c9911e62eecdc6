"""The tf.data pipeline of `tfvae.data.load`: batching, shuffling, binarization, resizing, flags."""

from __future__ import annotations

import argparse
import json

import keras
import numpy as np
import pytest
from conftest import run_cli

import tfvae
from tfvae.data import add_data_arguments, load, load_from_arguments
from tfvae.data.preprocessing import center_crop, center_crop_and_resize

GRAY = 0.3


def epoch(dataset) -> np.ndarray:
    return np.concatenate([batch.numpy() for batch in dataset])


@pytest.fixture
def gray_npy(tmp_path):
    """200 float images 10x10 whose pixels are 0.3, but for one pixel that tells them apart."""
    images = np.full((200, 10, 10), GRAY, np.float32)
    images[:, 0, 0] = np.linspace(0.2, 0.4, 200)
    path = tmp_path / "gray.npy"
    np.save(path, images)
    return str(path)


def test_digits_default_batches_for_fit():
    splits = load(batch_size=50)
    assert splits.image_shape == (8, 8, 1) and splits.source == "digits"
    assert (splits.num_train, splits.num_validation) == (1617, 180)
    batches = [batch.numpy() for batch in splits.train]
    assert [len(b) for b in batches] == [50] * 32 + [17]
    assert all(b.dtype == np.float32 and b.min() >= 0 and b.max() <= 1 for b in batches)
    assert len(epoch(splits.validation)) == 180


def test_training_order_changes_every_epoch_but_not_between_runs():
    first = load(batch_size=64, seed=5)
    second = load(batch_size=64, seed=5)
    epoch_1, epoch_2 = epoch(first.train), epoch(first.train)
    assert not np.array_equal(epoch_1, epoch_2)
    # The same images each epoch, in another order.
    np.testing.assert_allclose(np.sort(epoch_1.sum(axis=(1, 2, 3))),
                               np.sort(epoch_2.sum(axis=(1, 2, 3))), rtol=1e-6)
    np.testing.assert_array_equal(epoch_1, epoch(second.train))
    np.testing.assert_array_equal(epoch(first.validation), epoch(first.validation))


def test_dynamic_binarization_is_fresh_each_epoch_with_the_right_mean(gray_npy):
    splits = load(gray_npy, batch_size=32, binarize="dynamic", shuffle_buffer=1)
    epochs = [epoch(splits.train) for _ in range(3)]
    for images in epochs:
        assert set(np.unique(images)) == {0.0, 1.0}
        # 18,000 Bernoulli(0.3) pixels: standard error 0.0034.
        assert abs(images.mean() - GRAY) < 0.015
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    # Validation: one fixed sample, the same every time it is read.
    validation = epoch(splits.validation)
    assert set(np.unique(validation)) == {0.0, 1.0} and abs(validation.mean() - GRAY) < 0.03
    np.testing.assert_array_equal(validation, epoch(splits.validation))
    np.testing.assert_array_equal(splits.validation_examples(5, seed=1)[0],
                                  splits.validation_examples(5, seed=1)[0])


def test_static_bernoulli_binarization_is_the_same_every_epoch(gray_npy):
    splits = load(gray_npy, batch_size=32, binarize="static", shuffle_buffer=1)
    epoch_1, epoch_2 = epoch(splits.train), epoch(splits.train)
    np.testing.assert_array_equal(epoch_1, epoch_2)
    assert set(np.unique(epoch_1)) == {0.0, 1.0} and abs(epoch_1.mean() - GRAY) < 0.015
    # One sample per image, not one shared pattern.
    assert not np.array_equal(epoch_1[0], epoch_1[1])
    np.testing.assert_array_equal(
        epoch_1, epoch(load(gray_npy, batch_size=32, binarize="static", shuffle_buffer=1).train)
    )
    # Shuffled: another order each epoch, the same binarized images.
    shuffled = load(gray_npy, batch_size=32, binarize="static")
    first, second = epoch(shuffled.train).reshape(180, -1), epoch(shuffled.train).reshape(180, -1)
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(np.unique(first, axis=0), np.unique(second, axis=0))


def test_static_threshold_binarization(tmp_path):
    images = np.random.default_rng(0).random((20, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x_train=images, x_test=images)
    splits = load(str(tmp_path / "x.npz"), binarize="static", threshold=0.5)
    np.testing.assert_array_equal(epoch(splits.validation)[..., 0], images > 0.5)


def test_center_crop_and_resize_keeps_the_middle():
    # A 4x8 image: a 2-pixel dark border left and right around a bright 4x4 center.
    image = np.zeros((4, 8, 1), np.float32)
    image[:, 2:6] = 1.0
    np.testing.assert_allclose(center_crop_and_resize(image, (2, 2)).numpy(), 1.0, atol=1e-6)
    np.testing.assert_allclose(center_crop_and_resize(image, (4, 8)).numpy(), image, atol=1e-6)
    tall = center_crop_and_resize(np.transpose(image, (1, 0, 2)), (4, 4)).numpy()
    np.testing.assert_allclose(tall, 1.0, atol=1e-6)


def test_center_crop_takes_celeb_a_face_window():
    image = np.arange(218 * 178, dtype=np.int32).reshape(218, 178, 1)
    np.testing.assert_array_equal(center_crop(image, 148, 148).numpy(), image[35:183, 15:163])
    np.testing.assert_array_equal(center_crop(image[:100, :50], 148, 148).numpy(),
                                  image[:100, :50])


def test_resize_and_channels_of_digits():
    splits = load(batch_size=16, image_size=(16, 16), channels=3)
    batch = next(iter(splits.train)).numpy()
    assert splits.image_shape == (16, 16, 3) and batch.shape == (16, 16, 16, 3)
    np.testing.assert_array_equal(batch[..., 0], batch[..., 2])
    assert batch.min() >= 0.0 and batch.max() <= 1.0


def test_cache_modes_give_the_same_data(tmp_path):
    in_memory = epoch(load(batch_size=100, cache="memory").validation)
    on_disk = load(batch_size=100, cache=str(tmp_path / "cache"))
    np.testing.assert_array_equal(in_memory, epoch(on_disk.validation))
    np.testing.assert_array_equal(in_memory, epoch(on_disk.validation))
    assert any(tmp_path.iterdir())
    np.testing.assert_array_equal(in_memory, epoch(load(batch_size=100, cache="none").validation))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"binarize": "sometimes"}, "binarize to be one of"),
        ({"threshold": 0.5}, "threshold in \\[0, 1\\) together with binarize='static'"),
        ({"binarize": "static", "threshold": 1.5}, "threshold in \\[0, 1\\)"),
        ({"image_size": (0, 4)}, "image_size to be \\(height, width\\)"),
        ({"channels": 2}, "channels to be None, 1 or 3"),
        ({"batch_size": 0}, "batch_size to be an integer >= 1"),
        ({"validation_fraction": 1.5}, "validation_fraction in \\(0, 1\\)"),
        ({"cache": ""}, "cache to be 'auto'"),
        ({"max_cache_bytes": -1}, "max_cache_bytes to be an integer >= 0"),
        ({"shuffle_buffer": 0}, "shuffle_buffer to be an integer >= 1"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        load("digits", **options)


def test_validation_examples_are_seeded():
    splits = load()
    images, labels = splits.validation_examples(12, seed=1)
    again, again_labels = splits.validation_examples(12, seed=1)
    other, _ = splits.validation_examples(12, seed=2)
    assert images.shape == (12, 8, 8, 1) and labels.shape == (12,)
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, again_labels)
    assert not np.array_equal(images, other)
    assert len(splits.validation_examples(1000)[0]) == 180
    with pytest.raises(ValueError, match="n to be an integer >= 1"):
        splits.validation_examples(0)


def test_command_line_flags(gray_npy):
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    args = parser.parse_args(
        ["--dataset", gray_npy, "--binarize", "dynamic", "--image-size", "8x6", "--channels", "3"]
    )
    splits = load_from_arguments(args, batch_size=20, seed=0)
    batch = next(iter(splits.train)).numpy()
    assert batch.shape == (20, 8, 6, 3) and set(np.unique(batch)) == {0.0, 1.0}
    assert parser.parse_args(["--image-size", "32"]).image_size == (32, 32)
    with pytest.raises(SystemExit):
        parser.parse_args(["--image-size", "0x3"])


def test_vae_fits_on_the_splits():
    splits = load(batch_size=128, binarize="dynamic")
    keras.utils.set_random_seed(0)
    vae = tfvae.build_conv_vae(splits.image_shape, latent_dim=2, filters=(8,))
    vae.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = vae.fit(splits.train, validation_data=splits.validation, epochs=2, verbose=0)
    losses = history.history["loss"]
    assert len(losses) == 2 and np.isfinite(losses).all() and losses[1] < losses[0]
    assert np.isfinite(history.history["val_loss"]).all()


@pytest.mark.slow
def test_cli_refuses_an_unknown_dataset_in_one_line(tmp_path):
    result = run_cli("train", "--dataset", "no_such_set", "--run-dir", tmp_path / "run",
                     cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    # TensorFlow's C++ start-up logging aside, the error is one line.
    errors = [line for line in result.stderr.splitlines() if line.startswith("tfvae:")]
    assert len(errors) == 1 and "Unknown dataset 'no_such_set'" in errors[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_cli_trains_on_an_npz_file(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (96, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "tiny.npz", images=images)
    result = run_cli("train", "--dataset", tmp_path / "tiny.npz", "--epochs", "1",
                     "--batch-size", "32", "--filters", "8", "--quiet", "--run-dir",
                     tmp_path / "run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["num_train_examples"] == 86 and metrics["num_validation_examples"] == 10
    assert (tmp_path / "run" / "reconstructions.png").is_file()
