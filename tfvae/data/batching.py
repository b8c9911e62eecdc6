"""The steps from a `Source`'s examples to batches: option checks, per-image preparation, cache,
batching, binarization and dequantization (`tfvae.data.load` chains them)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfvae.data import preprocessing
from tfvae.data.errors import DataError
from tfvae.data.sources import Source

#: The `cache` values that are not file path prefixes.
CACHE_MODES = ("auto", "memory", "none")
#: With cache="auto", a split is cached in memory when its stored images take at most this.
DEFAULT_MAX_CACHE_BYTES = 1 << 30
# Distinct stateless-seed streams, so training and validation samples are independent.
TRAIN_STREAM, VALIDATION_STREAM = 1, 2


def check_options(
    binarize, threshold, image_size, channels, batch_size, validation_fraction, cache,
    max_cache_bytes, shuffle_buffer,
):
    """Checks the options of `tfvae.data.load` (see there).

    Raises:
        ValueError: a bad option.
        FileNotFoundError: a cache path prefix whose folder does not exist.
    """
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
    if cache not in CACHE_MODES:
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


def prepare_fn(source: Source, image_size, channels, binarize, threshold, seed, stream):
    """The per-image step before the cache: channels, crop, resize, static binarization.

    Its output keeps a compact dtype (uint8 stays uint8) so the cache stays small; scaling
    to [0, 1] happens per batch.

    Returns:
        `(prepare, pixel_max)`: `prepare(image, label) -> (image, label)` and the
        white value of its output.
    """
    source_pixel_max = source.pixel_max
    fixed_sample = binarize == "dynamic" and stream == VALIDATION_STREAM
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


def image_shape_of(dataset: tf.data.Dataset, source: Source) -> tuple[int, int, int]:
    shape = dataset.element_spec[0].shape
    if not shape.is_fully_defined():
        raise ValueError(
            f"Expected images of one size from '{source.name}', or an image_size "
            f"(--image-size) to resize them to. Received: images of shape {shape} (varying)."
        )
    return tuple(int(size) for size in shape)


def cache_split(dataset, cache: str, num_examples, image_shape, dtype, max_cache_bytes, split):
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


def dequantized(batches: tf.data.Dataset, seed: int, stream: int, rerandomize: bool):
    """Uniformly dequantized `(images, labels)` batches, one stateless seed per batch."""
    batch_seeds = tf.data.Dataset.random(seed=seed * 4 + stream, rerandomize_each_iteration=rerandomize)
    return tf.data.Dataset.zip((batches, batch_seeds)).map(
        lambda batch, batch_seed: (
            preprocessing.uniform_dequantize(batch[0], tf.stack([batch_seed, tf.constant(stream, tf.int64)])),
            batch[1],
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def labels_or_not(batches: tf.data.Dataset, labels: bool) -> tf.data.Dataset:
    """`(images, labels)` batches as they are with `labels`, else the images alone."""
    return batches if labels else batches.map(lambda images, _: images)


def held_out_batches(opened: Source, settings: dict, seed: int, cache: str, max_cache_bytes: int):
    """The held-out examples of `opened` (`opened.validation`) as batches in a fixed order.

    Args:
        opened: the `Source`.
        settings: `image_size`, `channels`, `binarize`, `threshold`, `batch_size`,
            `dequantize`, as `load` takes them.
        seed: int. Seeds the one fixed binarization or dequantization.
        cache, max_cache_bytes: as `load` takes them.

    Returns:
        `(batches, examples, image_shape)`: `(images, labels)` batches in [0, 1]; the unbatched
        `(image, label)` examples before the cache (for pictures); `(H, W, C)`.
    """
    prepare, pixel_max = prepare_fn(
        opened, settings["image_size"], settings["channels"], settings["binarize"],
        settings["threshold"], seed, VALIDATION_STREAM,
    )
    examples = opened.validation.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    image_shape = image_shape_of(examples, opened)
    # Pictures read a few examples: from before the cache, which a partial read would not fill.
    unit_examples = examples.map(
        lambda image, label: (preprocessing.to_unit_float(image, pixel_max), label)
    )
    batches = cache_split(examples, cache, opened.num_validation, image_shape,
                     examples.element_spec[0].dtype, max_cache_bytes, "validation")
    batches = batches.batch(settings["batch_size"]).map(
        lambda images, labels: (preprocessing.to_unit_float(images, pixel_max), labels),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    if settings["dequantize"]:
        # Its batches come in a fixed order, so a stream that is not rerandomized fixes the draw.
        batches = dequantized(batches, seed, VALIDATION_STREAM, rerandomize=False)
    return batches, unit_examples, image_shape


def check_dequantize(binarize: str, dequantize) -> None:
    if not isinstance(dequantize, bool):
        raise ValueError(f"Expected dequantize to be True or False. Received: dequantize={dequantize!r}")
    if dequantize and binarize != "none":
        raise ValueError(
            "Expected dequantize=True only with binarize='none' (it spreads 8-bit levels, binary "
            f"data has none). Received: binarize={binarize!r}"
        )


def check_eight_bit(opened: Source, dataset: tf.data.Dataset) -> None:
    """With dequantize: the stored images (kept in their dtype by `prepare_fn`) must be 8-bit."""
    stored_dtype = dataset.element_spec[0].dtype
    if stored_dtype != tf.uint8 or opened.pixel_max != 255.0:
        raise ValueError(
            f"Expected 8-bit images (uint8, 0..255) from '{opened.name}' with dequantize=True. "
            f"Received: {stored_dtype.name} images with white = {opened.pixel_max:g}."
        )
