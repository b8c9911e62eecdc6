"""Where images come from: built-in digits, .npz/.npy arrays, IDX files and image folders.

Each opener returns a `Source`: unbatched `(image, label)` datasets for training and
validation in the source's own pixel type, plus what the pipeline needs to know about them.
`local_source(..., test=True)` opens a local path as a test set instead: all of its images
(or its test part). tensorflow-datasets sources live in `tfvae.data.tfds_source`.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfvae.data.builtin import holdout_order, load_digits
from tfvae.data.errors import DataError, marked_message
from tfvae.data.idx import is_idx_images_name, matching_labels_file, read_idx

#: File name suffixes read as images in a folder (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: The label of an example whose source has no labels.
NO_LABEL = -1
#: Suffixes that make a name a file path, never a tensorflow-datasets name.
DATA_FILE_SUFFIXES = (".npz", ".npy", ".gz", *IMAGE_SUFFIXES)
#: `Source.kind` values: where the examples come from.
SOURCE_KINDS = ("built-in", "local file", "local folder", "tensorflow-datasets")
#: `Source.held_out_split` values: what the held-out examples (`Source.validation`) are.
#: "all": every image of the source (a test set); "test", "validation": a split of that name
#: (a tfds split, the t10k file of an IDX folder, `x_test` of a .npz); "held-out": a slice of
#: the training data (which one: `tfvae.config.HOLDOUT_MODES`).
HELD_OUT_SPLITS = ("all", "test", "validation", "held-out")


@dataclasses.dataclass
class Source:
    """Training and validation examples of one data source, before preprocessing.

    Attributes:
        name: what the user asked for (a dataset name or a path), for messages.
        kind: where the examples come from, one of `SOURCE_KINDS`.
        train: unbatched dataset of `(image, label)`: image `[H, W, C]` with values in
            0..pixel_max (uint8 or float32), label int64 (`NO_LABEL` without labels); None
            for a test set (`local_source(..., test=True)`, `tfds_source(..., test=True)`).
        validation: the same for the held-out examples: validation, or the test set.
        num_train: number of training examples, or None when unknown.
        num_validation: number of validation examples, or None when unknown.
        pixel_max: the stored value of a white pixel (255 for uint8 images, 1 for floats and
            binary data).
        has_labels: whether the labels are real class labels.
        label_names: class names indexed by label, when known.
        crop: a central window `(height, width)` cut before any resize (CelebA's faces), or None.
        default_image_size: the size images are resized to when the user gives none, or None.
        num_classes: with labels, the number of classes (labels are 0..num_classes - 1).
        held_out_split: what `validation` holds, one of `HELD_OUT_SPLITS`.
    """

    name: str
    kind: str
    train: tf.data.Dataset | None
    validation: tf.data.Dataset
    num_train: int | None
    num_validation: int | None
    pixel_max: float
    has_labels: bool
    label_names: tuple[str, ...] | None = None
    crop: tuple[int, int] | None = None
    default_image_size: tuple[int, int] | None = None
    num_classes: int | None = None
    held_out_split: str = "held-out"


def holdout_split(num_examples: int, validation_fraction: float, name: str) -> int:
    """The number of training examples when `validation_fraction` of them is held out.

    Raises:
        ValueError: a fraction outside (0, 1), or too few examples to hold one out.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(
            "Expected validation_fraction in (0, 1) (the source has no validation split). "
            f"Received: validation_fraction={validation_fraction}"
        )
    num_validation = int(round(num_examples * validation_fraction))
    if num_validation < 1 or num_validation >= num_examples:
        raise ValueError(
            f"Expected enough examples in '{name}' to hold out validation_fraction="
            f"{validation_fraction} of them for validation. Received: {num_examples} examples."
        )
    return num_examples - num_validation


def _standardize_images(images: np.ndarray, name: str) -> tuple[np.ndarray, float]:
    """Checks an image array and returns it as `[N, H, W, C]` with its white value.

    Integers 0..255 are stored as uint8 (pixel_max 255; integer or boolean arrays holding only
    0 and 1 are binary data, pixel_max 1); floats must already lie in [0, 1].
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., np.newaxis]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(
            "Expected images of shape [N, H, W] or [N, H, W, C] with C = 1 or 3 and N >= 1. "
            f"Received: shape {images.shape} from '{name}'."
        )
    if images.dtype == bool:
        return images.astype(np.uint8), 1.0
    if np.issubdtype(images.dtype, np.integer):
        low, high = int(images.min()), int(images.max())
        if low < 0 or high > 255:
            raise ValueError(
                "Expected integer images with values in 0..255. "
                f"Received: values in [{low}, {high}] from '{name}'."
            )
        return images.astype(np.uint8, copy=False), 1.0 if high <= 1 else 255.0
    if np.issubdtype(images.dtype, np.floating):
        images = images.astype(np.float32, copy=False)
        low, high = float(np.min(images)), float(np.max(images))
        if not (np.isfinite(low) and np.isfinite(high) and low >= 0.0 and high <= 1.0):
            raise ValueError(
                "Expected float images with values in [0, 1] (or integers 0..255). "
                f"Received: values in [{low}, {high}] from '{name}'."
            )
        return images, 1.0
    raise ValueError(
        f"Expected an integer or float image array. Received: dtype {images.dtype} from '{name}'."
    )


def _standardize_labels(labels, num_images: int, name: str) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != num_images or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"Expected {num_images} integer labels, one per image. Received: {labels.shape[0]} "
            f"labels of dtype {labels.dtype} from '{name}'."
        )
    if labels.size and labels.min() < 0:
        raise ValueError(
            f"Expected class labels >= 0. Received: the label {labels.min()} from '{name}'."
        )
    return labels.astype(np.int64)


def _num_classes(*labels: np.ndarray | None) -> int | None:
    """1 + the largest label of the arrays, or None when any of them is missing."""
    if any(part is None for part in labels):
        return None
    return 1 + max(int(part.max()) for part in labels if part.size)


def _examples_dataset(images: np.ndarray, labels: np.ndarray | None) -> tf.data.Dataset:
    if labels is None:
        labels = np.full(len(images), NO_LABEL, np.int64)
    return tf.data.Dataset.from_tensor_slices((images, labels))


def array_source(
    name: str,
    kind: str,
    train: tuple[np.ndarray, np.ndarray | None],
    validation: tuple[np.ndarray, np.ndarray | None] | None,
    validation_fraction: float,
    seed: int,
    held_out_split: str | None = None,
    holdout: str = "random",
) -> Source:
    """A `Source` from in-memory arrays, holding out a slice of them when no validation.

    Args:
        name: the source's name, for messages.
        kind: one of `SOURCE_KINDS`.
        train: `(images, labels or None)`: images `[N, H, W]` or `[N, H, W, C]`.
        validation: the same for a validation split, or None to hold out `validation_fraction`.
        validation_fraction: float in (0, 1), used when `validation` is None.
        seed: int. The permutation applied before the hold-out split.
        held_out_split: what `validation` is, one of `HELD_OUT_SPLITS` (default: "test" when
            given, else "held-out").
        holdout: one of `HOLDOUT_MODES`: which slice is held out when `validation` is None.

    Raises:
        ValueError: bad shapes, values, labels or fraction.
    """
    images, pixel_max = _standardize_images(train[0], name)
    labels = _standardize_labels(train[1], len(images), name)
    # One fixed order: the held-out slice is a random sample (or the last examples), and sorted
    # files (all zeros first, ...) reach the shuffle buffer mixed.
    split = len(images)
    if validation is None:
        split = holdout_split(len(images), validation_fraction, name)
    order = holdout_order(len(images), split, seed, holdout if validation is None else "random")
    images = images[order]
    labels = None if labels is None else labels[order]
    if validation is None:
        train_images, validation_images = images[:split], images[split:]
        train_labels = None if labels is None else labels[:split]
        validation_labels = None if labels is None else labels[split:]
    else:
        train_images, train_labels = images, labels
        validation_images, validation_pixel_max = _standardize_images(validation[0], name)
        validation_labels = _standardize_labels(validation[1], len(validation_images), name)
        if validation_images.shape[1:] != train_images.shape[1:]:
            raise ValueError(
                f"Expected validation images of the training images' shape "
                f"{train_images.shape[1:]}. Received: {validation_images.shape[1:]} from '{name}'."
            )
        pixel_max = max(pixel_max, validation_pixel_max)
    return Source(
        name=name,
        kind=kind,
        train=_examples_dataset(train_images, train_labels),
        validation=_examples_dataset(validation_images, validation_labels),
        num_train=len(train_images),
        num_validation=len(validation_images),
        pixel_max=pixel_max,
        has_labels=train_labels is not None and validation_labels is not None,
        num_classes=_num_classes(train_labels, validation_labels),
        held_out_split=held_out_split or ("held-out" if validation is None else "test"),
    )


def array_test_source(
    name: str, kind: str, examples: tuple[np.ndarray, np.ndarray | None], split: str
) -> Source:
    """A test set from in-memory arrays, in their stored order (no training examples).

    Args:
        name: the source's name, for messages.
        kind: one of `SOURCE_KINDS`.
        examples: `(images, labels or None)`: images `[N, H, W]` or `[N, H, W, C]`.
        split: what the examples are, one of `HELD_OUT_SPLITS` ("all" or "test").

    Raises:
        ValueError: bad shapes, values or labels.
    """
    images, pixel_max = _standardize_images(examples[0], name)
    labels = _standardize_labels(examples[1], len(images), name)
    return Source(
        name=name,
        kind=kind,
        train=None,
        validation=_examples_dataset(images, labels),
        num_train=None,
        num_validation=len(images),
        pixel_max=pixel_max,
        has_labels=labels is not None,
        num_classes=_num_classes(labels),
        held_out_split=split,
    )


def digits_source(validation_fraction: float, seed: int, holdout: str = "random") -> Source:
    """scikit-learn's 8x8 digits (built in, no network)."""
    train, validation = load_digits(validation_fraction=validation_fraction, seed=seed, holdout=holdout)
    return array_source(
        "digits", "built-in", train, validation, validation_fraction, seed, held_out_split="held-out"
    )


def _read_numpy_file(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a `.npy` file (under the key "images") or of a `.npz` archive.

    Raises:
        FileNotFoundError: `path` does not exist.
        DataError: a file NumPy cannot read: truncated, corrupt, pickled or unreadable.
    """
    try:
        if path.suffix.lower() == ".npy":
            return {"images": np.load(path)}
        with np.load(path) as archive:
            return {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise
    # What a cut or bit-flipped file raises: zip and zlib errors, a short read (EOFError,
    # ValueError "cannot reshape"), a bad header (ValueError), pickled data, a read error.
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error,
            pickle.UnpicklingError) as error:
        kind = "NumPy .npy file" if path.suffix.lower() == ".npy" else "NumPy .npz archive"
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0] or type(error).__name__
        raise DataError(
            f"Expected a complete {kind}. Received: '{path}', which cannot be read; it is "
            f"truncated or corrupt ({reason})."
        ) from None


def _numpy_file_examples(path: Path):
    """The examples of a `.npy` file or `.npz` archive (see `numpy_file_source` for the keys).

    Returns:
        `(train, test, test_split)`: `(images, labels or None)` pairs, `test` None when the
        archive has no test (or validation) arrays; `test_split` "test" or "validation".
    """
    arrays = _read_numpy_file(path)

    def first(*keys):
        return next((arrays[key] for key in keys if key in arrays), None)

    if "x_train" in arrays:
        train = (arrays["x_train"], first("y_train"))
        for split, suffixes in (("test", ("test",)), ("validation", ("val", "validation"))):
            for suffix in suffixes:
                if f"x_{suffix}" in arrays:
                    return train, (arrays[f"x_{suffix}"], first(f"y_{suffix}")), split
        return train, None, None
    images = first("images", "x")
    if images is None and len(arrays) == 1:
        images = next(iter(arrays.values()))
    if images is None:
        raise ValueError(
            "Expected a .npz archive with 'x_train' (and 'x_test'), 'images' or 'x', or a single "
            f"array. Received: keys {sorted(arrays)} in '{path}'."
        )
    return (images, first("labels", "y")), None, None


def numpy_file_source(
    path: Path, validation_fraction: float, seed: int, test: bool = False, holdout: str = "random"
) -> Source:
    """A `.npy` image array, or a `.npz` archive of images (and labels).

    `.npz` keys: `x_train` / `y_train` with `x_test` (or `x_val`) / `y_test` (the layout of
    Keras's mnist.npz); or `images` (or `x`) with optional `labels` (or `y`); or one array.
    With `test`, a test set: the test (or validation) arrays when there are, else all images.

    Raises:
        DataError: a truncated, corrupt or unreadable file.
        ValueError: arrays of the wrong shape, type or range, or unknown `.npz` keys.
    """
    train, test_examples, test_split = _numpy_file_examples(path)
    if test:
        if test_examples is None:
            return array_test_source(str(path), "local file", train, "all")
        return array_test_source(str(path), "local file", test_examples, test_split)
    return array_source(
        str(path), "local file", train, test_examples, validation_fraction, seed,
        held_out_split=test_split, holdout=holdout,
    )


def _read_idx_images(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    images = read_idx(path)
    if images.ndim not in (3, 4):
        raise ValueError(
            "Expected an IDX file of images with 3 dimensions [N, H, W] (magic 0x00000803). "
            f"Received: {images.ndim} dimensions {images.shape} in '{path}'."
        )
    labels_path = matching_labels_file(path)
    labels = read_idx(labels_path) if labels_path is not None else None
    return images, labels


def idx_file_source(
    path: Path, validation_fraction: float, seed: int, test: bool = False, holdout: str = "random"
) -> Source:
    """An IDX images file (its labels file beside it is used when present); all of it with `test`."""
    if test:
        return array_test_source(str(path), "local file", _read_idx_images(path), "all")
    return array_source(
        str(path), "local file", _read_idx_images(path), None, validation_fraction, seed,
        holdout=holdout,
    )


def idx_folder_source(
    folder: Path,
    images_files: list[Path],
    validation_fraction: float,
    seed: int,
    test: bool = False,
    holdout: str = "random",
) -> Source:
    """A folder with MNIST's IDX files: `train-*` for training, `t10k-*` / `test-*` for validation.

    With `test`, a test set: the `t10k-*` file (all of the one file when there is only one).

    Raises:
        ValueError: several IDX image files that are not one train and one test file.
    """
    if len(images_files) == 1:
        return idx_file_source(images_files[0], validation_fraction, seed, test, holdout)
    train_files = [p for p in images_files if p.name.startswith("train")]
    test_files = [p for p in images_files if p.name.startswith(("t10k", "test"))]
    if len(train_files) != 1 or len(test_files) != 1:
        raise ValueError(
            "Expected one IDX images file, or one 'train-*' and one 't10k-*' (or 'test-*') file. "
            f"Received: {sorted(p.name for p in images_files)} in '{folder}'."
        )
    if test:
        return array_test_source(str(folder), "local folder", _read_idx_images(test_files[0]), "test")
    return array_source(
        str(folder),
        "local folder",
        _read_idx_images(train_files[0]),
        _read_idx_images(test_files[0]),
        validation_fraction,
        seed,
    )


def _list_images(folder: Path) -> list[Path]:
    return sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    )


def _channels_of_mode(mode: str) -> int:
    return 1 if mode in ("1", "L", "LA", "I", "I;16", "F") else 3


def _scan_images(files: list[Path], check_sizes: bool) -> tuple[tuple[int, int] | None, int]:
    """Reads image headers: the common size (None without `check_sizes`) and channel count.

    Only headers are read (PIL opens files lazily). Without `check_sizes` only the first file
    is read, since a resize makes sizes agree anyway.

    Raises:
        ValueError: an unreadable image, or mixed sizes when `check_sizes`.
    """
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415 (only folders need it)

    sizes: dict[tuple[int, int], Path] = {}
    channels = 1
    for path in files if check_sizes else files[:1]:
        try:
            with Image.open(path) as image:
                width, height = image.size
                channels = max(channels, _channels_of_mode(image.mode))
        except (UnidentifiedImageError, OSError) as error:
            raise DataError(
                f"Expected a readable PNG or JPEG image. Received: '{path}' ({error})."
            ) from None
        sizes.setdefault((height, width), path)
        if len(sizes) > 1:
            (size_a, path_a), (size_b, path_b) = list(sizes.items())[:2]
            raise ValueError(
                "Expected images of one size, or an image_size (--image-size) to resize them "
                f"to. Received: {size_a[0]}x{size_a[1]} ('{path_a}') and {size_b[0]}x{size_b[1]} "
                f"('{path_b}')."
            )
    return (next(iter(sizes)) if check_sizes else None), channels


def image_folder_source(
    folder: Path,
    validation_fraction: float,
    seed: int,
    resizing: bool,
    channels: int | None,
    test: bool = False,
    holdout: str = "random",
) -> Source:
    """The PNG/JPEG images under `folder` (recursively), decoded on the fly (streaming).

    When every image lies in a subfolder, the first-level subfolder names are the class
    labels (sorted, numbered from 0). With `test`, all the images are a test set, in the
    order of their sorted paths.

    Args:
        folder: the folder.
        validation_fraction: float in (0, 1). Share of the images held out.
        seed: int. Seed of the permutation before the split.
        resizing: whether the pipeline resizes images (then their sizes may differ).
        channels: 1 or 3 to decode to, or None for the images' own (3 if any is in color).
        test: bool. Open the folder as a test set (no training examples).
        holdout: one of `HOLDOUT_MODES`: a random slice, or the last images in sorted order.

    Raises:
        ValueError: no images, unreadable images, mixed sizes without `resizing`.
    """
    files = _list_images(folder)
    if not files:
        raise ValueError(
            f"Expected PNG or JPEG images ({', '.join(IMAGE_SUFFIXES)}) under the folder. "
            f"Received: '{folder}', which holds none (searched recursively)."
        )
    size, own_channels = _scan_images(files, check_sizes=not resizing)
    channels = channels or own_channels
    relative_parts = [path.relative_to(folder).parts for path in files]
    label_names = None
    labels = np.full(len(files), NO_LABEL, np.int64)
    if all(len(parts) > 1 for parts in relative_parts):
        label_names = tuple(sorted({parts[0] for parts in relative_parts}))
        label_of_name = {label_name: index for index, label_name in enumerate(label_names)}
        labels = np.array([label_of_name[parts[0]] for parts in relative_parts], np.int64)
    paths = np.array([str(path) for path in files])
    if test:
        split = 0
    else:
        split = holdout_split(len(files), validation_fraction, str(folder))
        order = holdout_order(len(files), split, seed, holdout)
        paths, labels = paths[order], labels[order]
    static_shape = (*size, channels) if size is not None else (None, None, channels)

    def files_dataset(selection):
        return _decoded_image_files(paths[selection], labels[selection], channels, static_shape)

    return Source(
        name=str(folder),
        kind="local folder",
        train=None if test else files_dataset(slice(None, split)),
        validation=files_dataset(slice(split, None)),
        num_train=None if test else split,
        num_validation=len(files) - split,
        pixel_max=255.0,
        has_labels=label_names is not None,
        label_names=label_names,
        num_classes=None if label_names is None else len(label_names),
        held_out_split="all" if test else "held-out",
    )


def _decoded_image_files(
    paths: np.ndarray, labels: np.ndarray, channels: int, static_shape: tuple
) -> tf.data.Dataset:
    """Reads and decodes image files in parallel, in order; a bad file fails with its path.

    Only the first file's header is read before training (no decoding pass up front), so a
    corrupt file is found when the pipeline reaches it. TensorFlow's decode error does not
    say which file; instead a file that fails to read or decode is dropped (`ignore_errors`),
    and a check that each example's file number equals its position in the stream fails at
    the first gap with a message naming that file, which
    `tfvae.data.translate_pipeline_errors` turns into a `DataError`. A sentinel after the
    last file catches a dropped last file.

    Args:
        paths: string array `[N]` of file paths.
        labels: int64 array `[N]`.
        channels: 1 or 3, the channels to decode to.
        static_shape: `(H, W, C)`, with None for sizes that vary.

    Returns:
        Unbatched dataset of `(image, label)`: uint8 image `static_shape`, int64 label.
    """
    count = len(paths)

    def decode(path, label, number):
        image = tf.io.decode_image(
            tf.io.read_file(path), channels=channels, expand_animations=False
        )
        image.set_shape(static_shape)
        return image, label, number

    numbered = tf.data.Dataset.from_tensor_slices((paths, labels, np.arange(count, dtype=np.int64)))
    decoded = numbered.map(decode, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
    # When the last file is dropped, the sentinel takes its place and names it.
    sentinel = tf.data.Dataset.from_tensors((
        tf.zeros([size or 1 for size in static_shape], tf.uint8),
        tf.constant(NO_LABEL, tf.int64),
        tf.constant(count, tf.int64),
    ))
    path_table = tf.constant(paths)

    def check_number(position, example):
        image, label, number = example
        tf.debugging.Assert(
            tf.equal(number, position),
            [marked_message(
                "Expected a readable PNG or JPEG image. Received: '",
                tf.gather(path_table, position),
                "', which cannot be read or decoded (corrupt, truncated or not an image); "
                "remove or replace it.",
            )],
        )
        return image, label

    examples = decoded.concatenate(sentinel).take(count).enumerate().map(
        check_number, num_parallel_calls=tf.data.AUTOTUNE
    )
    # `take` after `ignore_errors` hides the count, which Keras uses for its epoch ends.
    return examples.apply(tf.data.experimental.assert_cardinality(count))


def local_source(
    path: Path,
    validation_fraction: float,
    seed: int,
    resizing: bool,
    channels: int | None,
    test: bool = False,
    holdout: str = "random",
) -> Source:
    """The source for an existing local path: .npz/.npy, IDX file, IDX folder or image folder.

    With `test`, the path is a test set: all of its images, except where it has a test part of
    its own (the `t10k-*` file of an IDX folder, `x_test` of a .npz); then `Source.train` is
    None and `Source.validation` holds the test examples (`held_out_split` says which).

    Raises:
        DataError: (a ValueError) an unreadable or corrupt file or folder.
        ValueError: an unsupported file, or a folder without images.
    """
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        raise DataError(
            f"Expected a readable file or folder. Received: '{path}', which this user may not "
            "read (permission denied)."
        )
    if path.is_dir():
        idx_files = sorted(p for p in path.iterdir() if p.is_file() and is_idx_images_name(p))
        if idx_files and not _list_images(path):
            return idx_folder_source(path, idx_files, validation_fraction, seed, test, holdout)
        return image_folder_source(path, validation_fraction, seed, resizing, channels, test, holdout)
    suffix = path.suffix.lower()
    if suffix in (".npz", ".npy"):
        return numpy_file_source(path, validation_fraction, seed, test, holdout)
    if suffix in IMAGE_SUFFIXES:
        raise ValueError(
            "Expected a folder of images, a .npz/.npy file or an IDX file. Received: the single "
            f"image '{path}'; pass its folder instead."
        )
    return idx_file_source(path, validation_fraction, seed, test, holdout)


#: tensorflow-datasets names: `name`, `name/config`, `name:version`, `name/config:version`.
_TFDS_NAME = re.compile(r"[a-z0-9_]+(/[a-zA-Z0-9_.\-]+)?(:[0-9.*]+)?")


def looks_like_path(source: str) -> bool:
    """Whether `source` can only name a file or folder, not a tensorflow-datasets dataset.

    True for anything outside tfds's name syntax (`./data`, `~/x`, `Data`, `a b`), MNIST's IDX
    file names, and names ending in a data file suffix (`data/train.npz`), which tfds's
    `name/config` syntax would otherwise accept.
    """
    return (
        _TFDS_NAME.fullmatch(source) is None
        or "idx" in source
        or source.lower().endswith(DATA_FILE_SUFFIXES)
    )
