"""`tfvae.data.load`: any source through one tf.data pipeline, ready for `VAE.fit`."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfvae.config import DEFAULT_SHUFFLE_BUFFER
from tfvae.data import preprocessing
from tfvae.data.errors import DataError, translate_pipeline_errors
from tfvae.data.sources import Source, digits_source, local_source, looks_like_path
from tfvae.data.tfds_source import UnknownDatasetError, tfds_source

#: A source starting with it is a tensorflow-datasets name, even when a local path has that name.
TFDS_PREFIX = "tfds:"
#: The `cache` values that are not file path prefixes.
_CACHE_MODES = ("auto", "memory", "none")
_logger = logging.getLogger(__name__)

#: With cache="auto", a split is cached in memory when its stored images take at most this.
DEFAULT_MAX_CACHE_BYTES = 1 << 30
#: Examples read to choose `validation_examples` from.
_EXAMPLE_POOL = 2048
# Distinct stateless-seed streams, so training and validation samples are independent.
_TRAIN_STREAM, _VALIDATION_STREAM = 1, 2


@dataclasses.dataclass(frozen=True)
class DataSplits:
    """Training and validation data, ready for `vae.fit(splits.train, validation_data=...)`.

    Attributes:
        train: finite `tf.data.Dataset` of float32 image batches `[B, H, W, C]` in [0, 1]
            (B = the global batch size, smaller for the last batch), reshuffled each epoch.
        validation: the same, not shuffled; with dynamic binarization it holds one fixed
            binarization, so evaluations are comparable.
        image_shape: `(H, W, C)`.
        num_train: number of training images, or None when unknown.
        num_validation: number of validation images, or None when unknown.
        has_labels: whether the source has class labels.
        label_names: class names indexed by label, when known.
        source: the source's name or path (without a `tfds:` prefix).
        source_kind: where the images come from: "built-in", "local file", "local folder" or
            "tensorflow-datasets".
        dequantized: whether `train` and `validation` hold uniformly dequantized 8-bit values
            (`load(..., dequantize=True)`).
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset
    image_shape: tuple[int, int, int]
    num_train: int | None
    num_validation: int | None
    has_labels: bool
    label_names: tuple[str, ...] | None
    source: str
    source_kind: str
    _validation_examples: tf.data.Dataset = dataclasses.field(repr=False)
    dequantized: bool = False

    @property
    def source_description(self) -> str:
        """The kind and name of the source, e.g. "local folder 'mnist'", "tensorflow-datasets
        'mnist'" or "built-in 'digits'"."""
        return f"{self.source_kind} '{self.source}'"

    def validation_examples(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        """A seeded random choice of `n` validation images (and labels), for pictures.

        Args:
            n: int >= 1. How many; fewer when the validation set is smaller. They are drawn
                from the first 2,048 validation examples, so streaming sources stay fast.
            seed: int. The same seed gives the same images.

        Returns:
            `(images, labels)`: float32 `[n, H, W, C]` in [0, 1] (preprocessed exactly as
            `validation`), and int64 `[n]`, or None without labels.

        Raises:
            ValueError: n < 1.
            DataError: an unreadable image among the examples read.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"Expected n to be an integer >= 1. Received: n={n!r}")
        chosen = self._validation_examples.take(_EXAMPLE_POOL).shuffle(_EXAMPLE_POOL, seed=seed)
        with translate_pipeline_errors():
            images, labels = next(iter(chosen.take(n).batch(n)))
        return images.numpy(), (labels.numpy() if self.has_labels else None)


def _check_options(
    binarize, threshold, image_size, channels, batch_size, validation_fraction, cache,
    max_cache_bytes, shuffle_buffer,
):
    if binarize not in preprocessing.BINARIZE_MODES:
        raise ValueError(
            f"Expected binarize to be one of {list(preprocessing.BINARIZE_MODES)}. "
            f"Received: binarize={binarize!r}"
        )
    if threshold is not None and (binarize != "static" or not 0.0 <= threshold < 1.0):
        raise ValueError(
            "Expected threshold in [0, 1) together with binarize='static' (None: one fixed "
            f"Bernoulli sample). Received: threshold={threshold!r}, binarize={binarize!r}"
        )
    if image_size is not None and (
        len(image_size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                                    for s in image_size)
    ):
        raise ValueError(
            f"Expected image_size to be (height, width) of positive integers. "
            f"Received: image_size={image_size!r}"
        )
    if channels not in (None, 1, 3):
        raise ValueError(f"Expected channels to be None, 1 or 3. Received: channels={channels!r}")
    for name, value in (("batch_size", batch_size), ("shuffle_buffer", shuffle_buffer)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"Expected {name} to be an integer >= 1. Received: {name}={value!r}")
    if not isinstance(validation_fraction, (int, float)) or not 0.0 < validation_fraction < 1.0:
        raise ValueError(
            "Expected validation_fraction in (0, 1). "
            f"Received: validation_fraction={validation_fraction!r}"
        )
    if isinstance(max_cache_bytes, bool) or not isinstance(max_cache_bytes, int) or (
        max_cache_bytes < 0
    ):
        raise ValueError(
            f"Expected max_cache_bytes to be an integer >= 0. Received: {max_cache_bytes!r}"
        )
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if batch_size % replicas:
        raise ValueError(
            f"Expected a global batch_size divisible by the {replicas} replicas of the active "
            f"strategy. Received: batch_size={batch_size}"
        )
    if not isinstance(cache, str) or not cache:
        raise ValueError(
            "Expected cache to be 'auto', 'memory', 'none' or a file path prefix. "
            f"Received: cache={cache!r}"
        )
    if cache not in _CACHE_MODES:
        _check_cache_folder(cache)


def _cache_file(cache: str, split: str) -> str:
    return str(Path(f"{cache}-{split}").expanduser())


def _check_cache_folder(cache: str) -> None:
    """Checks that the folder of an on-disk cache exists and is writable.

    TensorFlow would only fail when the first epoch reaches the cache, mid-`fit`.

    Raises:
        FileNotFoundError: the folder does not exist.
        DataError: it is not a folder, or not writable.
    """
    folder = Path(_cache_file(cache, "train")).parent
    if not folder.exists():
        raise FileNotFoundError(
            "Expected cache to be a file path prefix in an existing folder (or 'auto', "
            f"'memory', 'none'). Received: cache='{cache}', whose folder '{folder}' does not "
            "exist: no such file or folder; create it first."
        )
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        state = "is not a folder" if not folder.is_dir() else "is not writable"
        raise DataError(
            "Expected cache to be a file path prefix in a writable folder. Received: "
            f"cache='{cache}', whose folder '{folder}' {state}."
        )


def open_source(
    source: str,
    data_dir: str | None,
    validation_fraction: float,
    seed: int,
    resizing: bool,
    channels: int | None,
) -> Source:
    """Resolves `source` ('digits', a local path, a tfds name or `tfds:NAME`) to a `Source`.

    An existing local path wins over a tfds dataset of the same name (offline users keep
    their copy in a folder named `mnist`); when the name could be a tfds name, a warning on
    the `tfvae.data.pipeline` logger says which was used. `tfds:NAME` always means
    tensorflow-datasets.

    Raises:
        FileNotFoundError: a path that does not exist; tfds data not prepared without network.
        ValueError: an unknown name or a bad file.
    """
    if not isinstance(source, str) or not source:
        raise ValueError(f"Expected source to be a non-empty string. Received: source={source!r}")
    if source.startswith(TFDS_PREFIX):
        return tfds_source(source[len(TFDS_PREFIX):], data_dir, validation_fraction, seed)
    if source == "digits":
        return digits_source(validation_fraction, seed)
    path = Path(source).expanduser()
    if path.exists():
        opened = local_source(path, validation_fraction, seed, resizing, channels)
        if not looks_like_path(source):
            # The name could also be a tfds dataset's; asking tfds would cost its slow import.
            _logger.warning(
                "Using the %s '%s' for dataset '%s' (an existing path wins over a "
                "tensorflow-datasets name); pass '%s%s' to use tensorflow-datasets.",
                opened.kind, path.resolve(), source, TFDS_PREFIX, source,
            )
        return opened
    missing_path = FileNotFoundError(
        "Expected an existing .npz/.npy file, IDX file or image folder (or a "
        f"tensorflow-datasets name). Received: '{source}': no such file or folder."
    )
    if looks_like_path(source):
        raise missing_path
    try:
        return tfds_source(source, data_dir, validation_fraction, seed)
    except UnknownDatasetError:
        if "/" in source:  # not a tfds `name/config` either: a relative path, then
            raise missing_path from None
        raise


def source_short_name(source: str) -> str:
    """A short, file-name-safe name of a source, for default run directory names.

    "digits" -> "digits", "tfds:mnist" -> "mnist", "celeb_a/align:2.1.0" -> "celeb_a",
    "data/train.npz" -> "train", "~/faces/" -> "faces"; "data" when nothing is left.
    """
    if source.startswith(TFDS_PREFIX) or not looks_like_path(source):
        stem = source.removeprefix(TFDS_PREFIX).split(":")[0].split("/")[0]
    else:
        stem = Path(source).stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.") or "data"


def _prepare_fn(source: Source, image_size, channels, binarize, threshold, seed, stream):
    """The per-image step before the cache: channels, crop, resize, static binarization.

    Its output keeps a compact dtype (uint8 stays uint8) so the cache stays small; scaling
    to [0, 1] happens per batch.

    Returns:
        `(prepare, pixel_max)`: `prepare(image, label) -> (image, label)` and the
        white value of its output.
    """
    source_pixel_max = source.pixel_max
    fixed_sample = binarize == "dynamic" and stream == _VALIDATION_STREAM
    static = binarize == "static" or fixed_sample

    def prepare(image, label):
        stored_dtype = image.dtype
        image = preprocessing.match_channels(image, channels)
        if source.crop is not None:
            image = preprocessing.center_crop(image, *source.crop)
        if image_size is not None:
            image = preprocessing.center_crop_and_resize(image, image_size)
            if stored_dtype.is_integer:
                image = tf.cast(tf.round(image), stored_dtype)
        if static:
            unit = preprocessing.to_unit_float(image, source_pixel_max)
            if threshold is not None and not fixed_sample:
                image = preprocessing.threshold_binarize(unit, threshold)
            else:
                # The seed comes from the image's content, not its position (tfds shuffles its
                # files each epoch): the same image gets the same sample every epoch and run.
                content_hash = tf.strings.to_hash_bucket_fast(
                    tf.io.serialize_tensor(image), tf.int64.max
                )
                example_seed = tf.stack([tf.constant(seed * 4 + stream, tf.int64), content_hash])
                image = preprocessing.bernoulli_binarize(unit, example_seed)
            image = tf.cast(image, tf.uint8)
        return image, label

    return prepare, (1.0 if static else source_pixel_max)


def _image_shape(dataset: tf.data.Dataset, source: Source) -> tuple[int, int, int]:
    shape = dataset.element_spec[0].shape
    if not shape.is_fully_defined():
        raise ValueError(
            f"Expected images of one size from '{source.name}', or an image_size "
            f"(--image-size) to resize them to. Received: images of shape {shape} (varying)."
        )
    return tuple(int(size) for size in shape)


def _cache(dataset, cache: str, num_examples, image_shape, dtype, max_cache_bytes, split):
    if cache == "none":
        return dataset
    if cache == "memory":
        return dataset.cache()
    if cache == "auto":
        if num_examples is None:
            return dataset
        size = num_examples * int(np.prod(image_shape)) * tf.as_dtype(dtype).size
        return dataset.cache() if size <= max_cache_bytes else dataset
    return dataset.cache(_cache_file(cache, split))


def _dequantized(batches: tf.data.Dataset, seed: int, stream: int, rerandomize: bool):
    """Uniformly dequantized image batches, one stateless seed per batch."""
    batch_seeds = tf.data.Dataset.random(seed=seed * 4 + stream, rerandomize_each_iteration=rerandomize)
    return tf.data.Dataset.zip((batches, batch_seeds)).map(
        lambda images, batch_seed: preprocessing.uniform_dequantize(
            images, tf.stack([batch_seed, tf.constant(stream, tf.int64)])
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def load(
    source: str = "digits",
    *,
    batch_size: int = 64,
    data_dir: str | None = None,
    binarize: str = "none",
    threshold: float | None = None,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    validation_fraction: float = 0.1,
    cache: str = "auto",
    max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
    seed: int = 0,
    dequantize: bool = False,
) -> DataSplits:
    """Loads images from a tfds name, a local file or folder, or the built-in digits.

    The pipeline of each split: read -> prepare each image in parallel (channels, center crop
    and resize, static binarization) -> cache -> shuffle (training only) -> batch -> scale to
    [0, 1] and dynamic binarization per batch -> prefetch. Image folders and tfds datasets
    stream from disk; nothing is materialized as one array unless it is cached.

    Args:
        source: str. "digits" (scikit-learn's 8x8 digits, built in); a path to a `.npz` /
            `.npy` file, an IDX file (gzipped or raw; its labels file beside it is used), a
            folder with MNIST's IDX files, or a folder of PNG/JPEG images (recursively;
            first-level subfolders are class labels); or the name of a tensorflow-datasets
            dataset with an `image` feature ("mnist", "fashion_mnist", "kmnist",
            "binarized_mnist", "cifar10", "svhn_cropped", "celeb_a", ...). An existing local
            path wins over a tfds name (a warning is logged); "tfds:NAME" forces tfds.
        batch_size: int. The global batch size (split across the replicas of the active
            `tf.distribute` strategy by `fit`).
        data_dir: str. Where tensorflow-datasets keeps prepared data.
        binarize: "none"; "static" (binarized once: at `threshold`, or one fixed Bernoulli
            sample per image when `threshold` is None); or "dynamic" (a fresh Bernoulli sample
            each time an image is seen, Burda et al. 2015; validation gets one fixed sample).
        threshold: float in [0, 1) or None. Only with binarize="static".
        image_size: `(height, width)`. Center-crop to this aspect ratio, then resize.
            celeb_a defaults to its central 148x148 face window resized to (64, 64).
        channels: 1 or 3 to convert images to (luminance, or gray repeated), None to keep.
        validation_fraction: float in (0, 1). Held out (a seeded random slice of the
            training data) only when the source has no validation or test split.
        cache: "auto" (in memory when the stored split takes at most `max_cache_bytes`),
            "memory", "none", or a file path prefix for an on-disk cache.
        max_cache_bytes: int. The limit of cache="auto".
        shuffle_buffer: int. Examples in the training shuffle buffer.
        seed: int. Seeds the hold-out split, the shuffle and the binarization samples.
        dequantize: bool. Uniform dequantization of 8-bit images for a continuous density
            (Gaussian, continuous Bernoulli): values (255 x + u) / 256, u ~ U(0, 1) per
            sub-pixel, fresh each epoch for training and one fixed draw for validation; then
            bits/dim = (NLL + D ln 256) / (D ln 2). Only for 8-bit sources, without binarize.

    Returns:
        A `DataSplits`.

    Raises:
        DataError: (a ValueError) a corrupt, truncated or unreadable file, naming it. An image
            of a folder is decoded only when the pipeline reaches it: iterate the datasets
            inside `tfvae.data.translate_pipeline_errors()` to get this error then.
        ValueError: an unknown dataset name, an unsupported file, a folder without images,
            images of mixed sizes without `image_size`, or a bad option.
        FileNotFoundError: a path that does not exist (or the folder of a `cache` path), or a
            tfds dataset that is not prepared when there is no network to download it.

    Example:

    ```python
    splits = tfvae.data.load("mnist", batch_size=128, binarize="dynamic")
    vae = tfvae.build_conv_vae(splits.image_shape, latent_dim=16)
    vae.compile(optimizer="adam")
    vae.fit(splits.train, validation_data=splits.validation, epochs=10)
    ```
    """
    if image_size is not None:
        image_size = tuple(image_size)
    if not isinstance(dequantize, bool):
        raise ValueError(f"Expected dequantize to be True or False. Received: dequantize={dequantize!r}")
    if dequantize and binarize != "none":
        raise ValueError(
            "Expected dequantize=True only with binarize='none' (it spreads 8-bit levels, binary "
            f"data has none). Received: binarize={binarize!r}"
        )
    _check_options(binarize, threshold, image_size, channels, batch_size, validation_fraction,
                   cache, max_cache_bytes, shuffle_buffer)
    opened = open_source(
        source, data_dir, validation_fraction, seed, image_size is not None, channels
    )
    image_size = image_size or opened.default_image_size

    def prepared(split_examples, stream):
        prepare, pixel_max = _prepare_fn(
            opened, image_size, channels, binarize, threshold, seed, stream
        )
        dataset = split_examples.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
        return dataset, pixel_max

    train, train_pixel_max = prepared(opened.train, _TRAIN_STREAM)
    validation, validation_pixel_max = prepared(opened.validation, _VALIDATION_STREAM)
    image_shape = _image_shape(train, opened)
    _image_shape(validation, opened)
    stored_dtype = train.element_spec[0].dtype
    if dequantize and (stored_dtype != tf.uint8 or train_pixel_max != 255.0):
        raise ValueError(
            f"Expected 8-bit images (uint8, 0..255) from '{opened.name}' with dequantize=True. "
            f"Received: {stored_dtype.name} images with white = {train_pixel_max:g}."
        )

    train = _cache(train, cache, opened.num_train, image_shape, stored_dtype,
                   max_cache_bytes, "train")
    train = train.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    train = train.batch(batch_size)
    if binarize == "dynamic":
        # One stateless seed per batch from a stream that differs every epoch (deterministic
        # given `seed`), so each image gets a fresh Bernoulli sample each time it is seen.
        batch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        train = tf.data.Dataset.zip((train, batch_seeds)).map(
            lambda batch, batch_seed: preprocessing.bernoulli_binarize(
                preprocessing.to_unit_float(batch[0], train_pixel_max),
                tf.stack([batch_seed, tf.constant(_TRAIN_STREAM, tf.int64)]),
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    else:
        train = train.map(
            lambda images, labels: preprocessing.to_unit_float(images, train_pixel_max),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    if dequantize:
        # Fresh noise each epoch for training (as dynamic binarization), one fixed draw for
        # validation: its batches come in a fixed order, so a non-rerandomized stream fixes it.
        train = _dequantized(train, seed, _TRAIN_STREAM, rerandomize=True)

    # Pictures read a few examples: from before the cache, which a partial read would not fill.
    validation_examples = validation.map(
        lambda image, label: (preprocessing.to_unit_float(image, validation_pixel_max), label)
    )
    validation = _cache(validation, cache, opened.num_validation, image_shape, stored_dtype,
                        max_cache_bytes, "validation")
    validation = validation.batch(batch_size).map(
        lambda images, labels: preprocessing.to_unit_float(images, validation_pixel_max),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    if dequantize:
        validation = _dequantized(validation, seed, _VALIDATION_STREAM, rerandomize=False)
    return DataSplits(
        train=train.prefetch(tf.data.AUTOTUNE),
        validation=validation.prefetch(tf.data.AUTOTUNE),
        image_shape=image_shape,
        num_train=opened.num_train,
        num_validation=opened.num_validation,
        has_labels=opened.has_labels,
        label_names=opened.label_names,
        source=opened.name,
        source_kind=opened.kind,
        _validation_examples=validation_examples,
        dequantized=dequantize,
    )
