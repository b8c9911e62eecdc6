"""Local sources of `tfvae.data.load`: IDX files, .npz/.npy arrays and image folders."""

from __future__ import annotations

import gzip
import re
import struct

import numpy as np
import pytest
from conftest import MNIST_T10K_DIR
from PIL import Image

from tfvae.data import load
from tfvae.data.idx import read_idx

#: Class counts of the MNIST test set (from its README).
MNIST_T10K_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    """Writes `array` (uint8) as an IDX file, as MNIST's files are written."""
    content = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    content += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(content) if compress else content)


def all_images(dataset) -> np.ndarray:
    return np.concatenate([batch.numpy() for batch in dataset])


requires_mnist = pytest.mark.skipif(
    not MNIST_T10K_DIR.is_dir(), reason=f"the MNIST test set is not at {MNIST_T10K_DIR}"
)


@requires_mnist
def test_real_mnist_idx_files():
    images = read_idx(MNIST_T10K_DIR / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(MNIST_T10K_DIR / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == MNIST_T10K_CLASS_COUNTS


@requires_mnist
def test_real_mnist_folder_holds_out_a_labelled_tenth():
    splits = load(str(MNIST_T10K_DIR), batch_size=500, validation_fraction=0.1, cache="none")
    assert splits.image_shape == (28, 28, 1)
    assert (splits.num_train, splits.num_validation) == (9000, 1000)
    assert splits.has_labels
    validation = all_images(splits.validation)
    assert validation.shape == (1000, 28, 28, 1)
    # MNIST digits: about 19% of the pixels are ink; values are multiples of 1/255.
    assert 0.10 < validation.mean() < 0.16
    np.testing.assert_allclose(validation * 255, np.round(validation * 255), atol=1e-3)
    images, labels = splits.validation_examples(100, seed=0)
    assert images.shape == (100, 28, 28, 1) and len(np.unique(labels)) >= 8


def test_idx_files_raw_and_gzipped_round_trip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (20, 6, 4), dtype=np.uint8)
    labels = np.arange(20, dtype=np.uint8) % 3
    write_idx(tmp_path / "raw-images-idx3-ubyte", images)
    write_idx(tmp_path / "zipped-images-idx3-ubyte.gz", images, compress=True)
    write_idx(tmp_path / "zipped-labels-idx1-ubyte.gz", labels, compress=True)

    np.testing.assert_array_equal(read_idx(tmp_path / "raw-images-idx3-ubyte"), images)
    splits = load(str(tmp_path / "zipped-images-idx3-ubyte.gz"), validation_fraction=0.25)
    assert splits.image_shape == (6, 4, 1) and (splits.num_train, splits.num_validation) == (15, 5)
    assert splits.has_labels
    train = all_images(splits.train)
    validation = all_images(splits.validation)
    # Every image exactly once across the two splits, scaled to [0, 1].
    together = np.concatenate([train, validation])[..., 0] * 255
    np.testing.assert_allclose(
        np.sort(together.reshape(20, -1), axis=0), np.sort(images.reshape(20, -1), axis=0),
        atol=1e-3,
    )
    unlabelled = load(str(tmp_path / "raw-images-idx3-ubyte"))
    assert not unlabelled.has_labels
    assert unlabelled.validation_examples(3)[1] is None


def test_idx_folder_uses_train_and_test_files(tmp_path):
    rng = np.random.default_rng(1)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (12, 4, 4)), True)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(12) % 10, True)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (5, 4, 4)), True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(5), True)
    splits = load(str(tmp_path))
    assert (splits.num_train, splits.num_validation) == (12, 5) and splits.has_labels


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00\x00\x09", "magic number"),
        (bytes([0x12, 0x34, 0x08, 0x03]) + b"\x00" * 40, r"magic number.*0x12340803"),
        (bytes([0, 0, 0x08, 3, 0, 0, 0, 2]), "header.*truncated"),
        (bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2, 4, 4) + b"\x01" * 20, "truncated"),
        (bytes([0, 0, 0x08, 1]) + struct.pack(">I", 3) + b"\x01" * 5, "longer than"),
    ],
)
def test_corrupt_idx_files_are_refused(tmp_path, content, message):
    path = tmp_path / "bad-images-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load(str(path))


def test_truncated_gzip_idx_file_is_refused(tmp_path):
    path = tmp_path / "cut-images-idx3-ubyte.gz"
    write_idx(path, np.zeros((10, 4, 4), np.uint8), compress=True)
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(ValueError, match="gzip stream is corrupt or truncated"):
        load(str(path))


def test_idx_labels_file_is_not_images(tmp_path):
    path = tmp_path / "some-labels-idx1-ubyte"
    write_idx(path, np.arange(10, dtype=np.uint8))
    with pytest.raises(ValueError, match="3 dimensions.*Received: 1"):
        load(str(path))


def test_npz_in_keras_layout_keeps_its_test_split(tmp_path):
    rng = np.random.default_rng(2)
    x_train = rng.integers(0, 256, (30, 8, 8), dtype=np.uint8)
    x_test = rng.integers(0, 256, (7, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "data.npz", x_train=x_train, y_train=np.arange(30) % 4,
             x_test=x_test, y_test=np.arange(7) % 4)
    splits = load(str(tmp_path / "data.npz"), batch_size=4)
    assert (splits.num_train, splits.num_validation) == (30, 7) and splits.has_labels
    np.testing.assert_allclose(all_images(splits.validation)[..., 0], x_test / 255.0, atol=1e-6)


def test_npz_images_and_npy_arrays(tmp_path):
    images = np.random.default_rng(3).random((40, 4, 4, 3)).astype(np.float32)
    np.savez(tmp_path / "images.npz", images=images, labels=np.arange(40) % 2)
    np.save(tmp_path / "images.npy", images)
    from_npz = load(str(tmp_path / "images.npz"), validation_fraction=0.25)
    from_npy = load(str(tmp_path / "images.npy"), validation_fraction=0.25)
    assert from_npz.has_labels and not from_npy.has_labels
    assert from_npz.image_shape == from_npy.image_shape == (4, 4, 3)
    assert (from_npy.num_train, from_npy.num_validation) == (30, 10)
    # Floats in [0, 1] pass unchanged.
    together = np.concatenate([all_images(from_npy.train), all_images(from_npy.validation)])
    np.testing.assert_allclose(np.sort(together.ravel()), np.sort(images.ravel()))


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"images": np.full((5, 4, 4), 2.0)}, r"float images with values in \[0, 1\]"),
        ({"images": np.full((5, 4, 4), 300)}, "0..255"),
        ({"images": np.zeros((5, 16))}, r"shape \[N, H, W\].*\(5, 16\)"),
        ({"images": np.zeros((5, 4, 4)), "labels": np.zeros(4, int)}, "5 integer labels"),
        ({"a": np.zeros((5, 4, 4)), "b": np.zeros(5)}, r"'x_train'.*keys \['a', 'b'\]"),
    ],
)
def test_bad_arrays_are_refused(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        load(str(tmp_path / "bad.npz"))


def write_png(path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_image_folder_with_class_subfolders(tmp_path):
    rng = np.random.default_rng(4)
    written = {}
    for index in range(10):
        pixels = rng.integers(0, 256, (6, 5), dtype=np.uint8)
        written[index] = pixels
        write_png(tmp_path / ("cats" if index % 2 else "dogs") / "deep" / f"{index}.png", pixels)
    splits = load(str(tmp_path), batch_size=3, validation_fraction=0.2)
    assert splits.image_shape == (6, 5, 1)
    assert (splits.num_train, splits.num_validation) == (8, 2)
    assert splits.has_labels and splits.label_names == ("cats", "dogs")
    images, labels = splits.validation_examples(2)
    for image, label in zip(images, labels, strict=True):
        # Each picked image is one of the written PNGs, exactly, and carries its folder's label.
        matches = [i for i, p in written.items() if np.allclose(image[..., 0] * 255, p, atol=1e-3)]
        assert len(matches) == 1 and label == (0 if matches[0] % 2 else 1)


def test_image_folder_mixed_color_and_jpeg_is_rgb(tmp_path):
    write_png(tmp_path / "gray.png", np.full((8, 8), 200, np.uint8))
    Image.fromarray(np.full((8, 8, 3), 50, np.uint8)).save(tmp_path / "color.JPG")
    write_png(tmp_path / "more.png", np.full((8, 8), 10, np.uint8))
    splits = load(str(tmp_path), validation_fraction=0.34)
    assert splits.image_shape == (8, 8, 3) and not splits.has_labels
    pixels = np.concatenate([all_images(splits.train), all_images(splits.validation)])
    assert sorted(np.round(pixels.mean(axis=(1, 2, 3)) * 255).astype(int)) == [10, 50, 200]


def test_image_folder_of_mixed_sizes_needs_a_resize(tmp_path):
    write_png(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    write_png(tmp_path / "b.png", np.zeros((12, 6), np.uint8))
    write_png(tmp_path / "c.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="one size, or an image_size.*8x8.*12x6"):
        load(str(tmp_path))
    splits = load(str(tmp_path), image_size=(4, 4), validation_fraction=0.34)
    assert splits.image_shape == (4, 4, 1) and next(iter(splits.train)).shape[1:] == (4, 4, 1)


def test_folder_without_images_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="PNG or JPEG images.*holds none"):
        load(str(tmp_path))


def test_unreadable_image_is_refused(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="readable PNG or JPEG.*broken.png"):
        load(str(tmp_path))


@pytest.mark.parametrize(
    "source",
    ["missing.npz", "./no/such/folder", "t10k-images-idx3-ubyte", "data/nope.npy", "data/nope",
     "./foo", "foo.npy", "~/no-such-tfvae-folder"],
)
def test_missing_path_is_refused(tmp_path, monkeypatch, source):
    # Relative paths with a separator or a suffix are files, not "Unknown dataset" tfds names.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"Received: '{re.escape(source)}': no such file or folder"):
        load(source)
