"""`tfvae.data.load`: any source through one tf.data pipeline, ready for `VAE.fit`."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfvae.config import DEFAULT_SHUFFLE_BUFFER, check_holdout
from tfvae.data import preprocessing
from tfvae.data.batching import (
    CACHE_MODES,
    DEFAULT_MAX_CACHE_BYTES,
    TRAIN_STREAM,
    cache_split,
    check_dequantize,
    check_eight_bit,
    check_options,
    dequantized,
    held_out_batches,
    image_shape_of,
    labels_or_not,
    prepare_fn,
)
from tfvae.data.errors import translate_pipeline_errors
from tfvae.data.sources import Source, digits_source, local_source, looks_like_path
from tfvae.data.tfds_source import UnknownDatasetError, tfds_source

#: A source starting with it is a tensorflow-datasets name, even when a local path has that name.
TFDS_PREFIX = "tfds:"
_logger = logging.getLogger(__name__)

#: Examples read to choose `validation_examples` from.
_EXAMPLE_POOL = 2048
#: The seed of the one fixed binarization (or dequantization) of the data a model is scored on:
#: a test set (`load(..., test_dataset=...)`, `load_held_out`) and `tfvae evaluate`.
EVALUATION_SEED = 1234


def describe_binarization(binarize: str, threshold: float | None, seed: int) -> str:
    """How held-out images are binarized, in words: "none", "at threshold 0.5", or "one fixed
    Bernoulli sample per image (seed 1234)"."""
    if binarize == "none":
        return "none"
    if binarize == "static" and threshold is not None:
        return f"at threshold {threshold:g}"
    return f"one fixed Bernoulli sample per image (seed {seed})"


#: How `HeldOutData.description` words each `Source.held_out_split`.
_SPLIT_WORDS = {
    "all": "all {count} examples of",
    "test": "the test split ({count} examples) of",
    "validation": "the validation split ({count} examples) of",
    "held-out": "the held-out validation slice ({count} examples, seeded) of",
}


@dataclasses.dataclass(frozen=True)
class HeldOutData:
    """Examples to score a model on: a test set or a validation split (`load_held_out`).

    Attributes:
        data: finite `tf.data.Dataset` of float32 image batches `[B, H, W, C]` in [0, 1], in a
            fixed order, with one fixed binarization; `(images, labels)` batches (labels int64
            `[B]`) when loaded with `labels=True`.
        num_examples: how many examples `data` holds, or None when unknown.
        image_shape: `(H, W, C)`.
        split: what the examples are: "all" (every image of a local file or folder), "test",
            "validation" (a split of that name) or "held-out" (the seeded random slice of the
            training data that training validates on).
        source: the source's name or path.
        source_kind: as `DataSplits.source_kind`.
        binarization: how the images are binarized, in words (`describe_binarization`).
        dequantized: whether the images are uniformly dequantized (one fixed draw).
        has_labels: whether the source has class labels.
        num_classes: with labels, the number of classes.
    """

    data: tf.data.Dataset
    num_examples: int | None
    image_shape: tuple[int, int, int]
    split: str
    source: str
    source_kind: str
    binarization: str
    dequantized: bool
    has_labels: bool
    num_classes: int | None

    @property
    def source_description(self) -> str:
        """The kind and name of the source, e.g. "local file 'test.npz'"."""
        return f"{self.source_kind} '{self.source}'"

    @property
    def description(self) -> str:
        """Which examples these are, e.g. "all 500 examples of local file 'test.npz'"."""
        count = "the" if self.num_examples is None else f"{self.num_examples:,}"
        return f"{_SPLIT_WORDS[self.split].format(count=count)} {self.source_description}"


@dataclasses.dataclass(frozen=True)
class DataSplits:
    """Training and validation data, ready for `vae.fit(splits.train, validation_data=...)`.

    Attributes:
        train: finite `tf.data.Dataset` of float32 image batches `[B, H, W, C]` in [0, 1]
            (B = the global batch size, smaller for the last batch), reshuffled each epoch;
            with `with_labels`, `(images, labels)` batches, labels int64 `[B]`.
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
        with_labels: whether the batches are `(images, labels)` (`load(..., labels=True)`).
        num_classes: with labels, the number of classes (labels are 0..num_classes - 1).
        validation_split: what `validation` holds, as `HeldOutData.split` ("held-out",
            "validation" or "test").
        test: the test set of `load(..., test_dataset=...)`, or None.
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
    with_labels: bool = False
    num_classes: int | None = None
    validation_split: str = "held-out"
    test: HeldOutData | None = None

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


def open_source(
    source: str,
    data_dir: str | None,
    validation_fraction: float,
    seed: int,
    resizing: bool,
    channels: int | None,
    test: bool = False,
    holdout: str = "random",
) -> Source:
    """Resolves `source` ('digits', a local path, a tfds name or `tfds:NAME`) to a `Source`.

    An existing local path wins over a tfds dataset of the same name (offline users keep
    their copy in a folder named `mnist`); when the name could be a tfds name, a warning on
    the `tfvae.data.pipeline` logger says which was used. `tfds:NAME` always means
    tensorflow-datasets. With `test`, the source is opened as a test set (see `local_source`
    and `tfds_source`); the built-in digits have none, and give their held-out slice.
    `holdout` ("random" or "last") chooses the held-out slice of a local or built-in source;
    a tfds dataset's held-out slice is always the last part of its train split.

    Raises:
        FileNotFoundError: a path that does not exist; tfds data not prepared without network.
        ValueError: an unknown name or a bad file.
    """
    if not isinstance(source, str) or not source:
        raise ValueError(f"Expected source to be a non-empty string. Received: source={source!r}")
    if source.startswith(TFDS_PREFIX):
        return tfds_source(source[len(TFDS_PREFIX):], data_dir, validation_fraction, seed, test)
    if source == "digits":
        return digits_source(validation_fraction, seed, holdout)
    path = Path(source).expanduser()
    if path.exists():
        opened = local_source(path, validation_fraction, seed, resizing, channels, test, holdout)
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
        return tfds_source(source, data_dir, validation_fraction, seed, test)
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


def _require_labels(opened: Source) -> None:
    """Raises the one-line error for labels asked of a source without them."""
    if not opened.has_labels:
        raise ValueError(
            "Expected a data source with class labels (labels=True, conditional training). "
            f"Received: {opened.kind} '{opened.name}', which has none. Give labels as the IDX labels "
            "file beside the images file ('...-labels-idx1-ubyte.gz' beside '...-images-idx3-ubyte.gz'), "
            "a 'labels' (or 'y', 'y_train' and 'y_test') array in the .npz, one subfolder per class "
            "in an image folder, or a tensorflow-datasets dataset with a 'label' feature."
        )


def load_held_out(
    source: str,
    *,
    split: str = "test",
    batch_size: int = 100,
    data_dir: str | None = None,
    binarize: str = "none",
    threshold: float | None = None,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    validation_fraction: float = 0.1,
    cache: str = "auto",
    max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES,
    seed: int = 0,
    dequantize: bool = False,
    labels: bool = False,
    holdout: str = "random",
) -> HeldOutData:
    """Loads the examples to score a model on: a test set, or the validation split of `load`.

    With split="test", a local file or folder is a test set as a whole: all of its images (an
    IDX folder with a `train-*` and a `t10k-*` file gives the `t10k-*` file; a .npz with
    `x_test` gives `x_test`); a tensorflow-datasets name gives its `test` split (else
    `validation`, else the held-out slice); the built-in digits give their held-out slice.
    With split="validation", exactly what `load(source, ...)` validates on with the same
    `validation_fraction` and `seed`. Binarized (or dequantized) images get one fixed sample
    drawn with `EVALUATION_SEED` (1234), whatever `seed` is, so scores compare across runs.

    Args:
        source: str. As `load`'s.
        split: "test" or "validation".
        batch_size, data_dir, binarize, threshold, image_size, channels, cache,
            max_cache_bytes, dequantize: as `load`'s ("dynamic" binarization means the one
            fixed sample). A cache file path prefix counts as "auto": a training run's cache
            files hold other examples or another binarization, so held-out data is cached in
            memory when it fits, and never on disk.
        validation_fraction, seed, holdout: the held-out slice of split="validation" (and of a
            test set that has to be one), as `load`'s.
        labels: bool. Batches of `(images, labels)`; a source without labels is a ValueError.

    Returns:
        A `HeldOutData`.

    Raises:
        ValueError, DataError, FileNotFoundError: as `load`; a split other than "test" or
            "validation"; labels asked of a source without labels.
    """
    if split not in ("test", "validation"):
        raise ValueError(f"Expected split 'test' or 'validation'. Received: split={split!r}")
    if image_size is not None:
        image_size = tuple(image_size)
    check_dequantize(binarize, dequantize)
    check_options(binarize, threshold, image_size, channels, batch_size, validation_fraction,
                   cache, max_cache_bytes, DEFAULT_SHUFFLE_BUFFER)
    check_holdout(holdout)
    opened = open_source(source, data_dir, validation_fraction, seed, image_size is not None,
                         channels, test=split == "test", holdout=holdout)
    cache = cache if cache in CACHE_MODES else "auto"
    if labels:
        _require_labels(opened)
    if dequantize:
        check_eight_bit(opened, opened.validation)
    settings = dict(image_size=image_size or opened.default_image_size, channels=channels,
                    binarize=binarize, threshold=threshold, batch_size=batch_size,
                    dequantize=dequantize)
    batches, _, image_shape = held_out_batches(opened, settings, EVALUATION_SEED, cache, max_cache_bytes)
    return HeldOutData(
        data=labels_or_not(batches, labels).prefetch(tf.data.AUTOTUNE),
        num_examples=opened.num_validation,
        image_shape=image_shape,
        split=opened.held_out_split,
        source=opened.name,
        source_kind=opened.kind,
        binarization=describe_binarization(binarize, threshold, EVALUATION_SEED),
        dequantized=dequantize,
        has_labels=opened.has_labels,
        num_classes=opened.num_classes,
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
    labels: bool = False,
    test_dataset: str | None = None,
    holdout: str = "random",
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
        validation_fraction: float in (0, 1). Held out of the training data only when the
            source has no validation or test split (which slice: `holdout`).
        cache: "auto" (in memory when the stored split takes at most `max_cache_bytes`),
            "memory", "none", or a file path prefix for an on-disk cache.
        max_cache_bytes: int. The limit of cache="auto".
        shuffle_buffer: int. Examples in the training shuffle buffer.
        seed: int. Seeds the hold-out split, the shuffle and the binarization samples.
        dequantize: bool. Uniform dequantization of 8-bit images for a continuous density
            (Gaussian, continuous Bernoulli): values (255 x + u) / 256, u ~ U(0, 1) per
            sub-pixel, fresh each epoch for training and one fixed draw for validation; then
            bits/dim = (NLL + D ln 256) / (D ln 2). Only for 8-bit sources, without binarize.
        labels: bool. Batches of `(images, labels)` (int64 `[B]`, 0..num_classes - 1) for
            training and validation (and the test set), as a conditional model trains on; a
            source without labels is a ValueError saying how to give them. Without it, image
            batches alone.
        test_dataset: str or None. A test set (any source `load` takes) scored after training,
            never used for training or checkpoint selection: all of a local file or folder,
            the test split of a tfds name (see `load_held_out`), with the same image settings
            and one fixed binarization (seed 1234). It becomes `DataSplits.test`; validation
            stays the split (or held-out slice) of `source`.
        holdout: "random" (default: a seeded random slice of the training data is held out)
            or "last" (its last examples in stored order; the VampPrior paper's MNIST protocol,
            the first 50,000 train and the last 10,000 validate, is `holdout="last"`,
            `validation_fraction=1/6`). A tfds dataset holds out the last slice of its train
            split either way.

    Returns:
        A `DataSplits`.

    Raises:
        DataError: (a ValueError) a corrupt, truncated or unreadable file, naming it. An image
            of a folder is decoded only when the pipeline reaches it: iterate the datasets
            inside `tfvae.data.translate_pipeline_errors()` to get this error then.
        ValueError: an unknown dataset name, an unsupported file, a folder without images,
            images of mixed sizes without `image_size`, a bad option, labels asked of a source
            without labels, or a test set whose image shape differs from the training data's.
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
    check_dequantize(binarize, dequantize)
    check_options(binarize, threshold, image_size, channels, batch_size, validation_fraction,
                   cache, max_cache_bytes, shuffle_buffer)
    check_holdout(holdout)
    opened = open_source(
        source, data_dir, validation_fraction, seed, image_size is not None, channels,
        holdout=holdout,
    )
    if labels:
        _require_labels(opened)
    settings = dict(image_size=image_size or opened.default_image_size, channels=channels,
                    binarize=binarize, threshold=threshold, batch_size=batch_size,
                    dequantize=dequantize)
    prepare, train_pixel_max = prepare_fn(
        opened, settings["image_size"], channels, binarize, threshold, seed, TRAIN_STREAM
    )
    train = opened.train.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    image_shape = image_shape_of(train, opened)
    stored_dtype = train.element_spec[0].dtype
    if dequantize:
        check_eight_bit(opened, train)

    train = cache_split(train, cache, opened.num_train, image_shape, stored_dtype,
                   max_cache_bytes, "train")
    train = train.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    train = train.batch(batch_size)
    if binarize == "dynamic":
        # One stateless seed per batch from a stream that differs every epoch (deterministic
        # given `seed`), so each image gets a fresh Bernoulli sample each time it is seen.
        batch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        train = tf.data.Dataset.zip((train, batch_seeds)).map(
            lambda batch, batch_seed: (
                preprocessing.bernoulli_binarize(
                    preprocessing.to_unit_float(batch[0], train_pixel_max),
                    tf.stack([batch_seed, tf.constant(TRAIN_STREAM, tf.int64)]),
                ),
                batch[1],
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    else:
        train = train.map(
            lambda images, labels: (preprocessing.to_unit_float(images, train_pixel_max), labels),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    if dequantize:
        # Fresh noise each epoch for training (as dynamic binarization), one fixed draw for
        # validation (see held_out_batches).
        train = dequantized(train, seed, TRAIN_STREAM, rerandomize=True)
    validation, validation_examples, validation_shape = held_out_batches(
        opened, settings, seed, cache, max_cache_bytes
    )
    if validation_shape != image_shape:
        raise ValueError(
            f"Expected validation images of the training images' shape {image_shape}. "
            f"Received: {validation_shape} from '{opened.name}'."
        )
    test = None
    if test_dataset is not None:
        test = load_held_out(
            test_dataset, split="test", batch_size=batch_size, data_dir=data_dir,
            binarize=binarize, threshold=threshold, image_size=settings["image_size"], channels=channels,
            validation_fraction=validation_fraction, cache=cache, max_cache_bytes=max_cache_bytes,
            seed=seed, dequantize=dequantize, labels=labels, holdout=holdout,
        )
        _check_test_set(test, image_shape, opened, labels)
    return DataSplits(
        train=labels_or_not(train, labels).prefetch(tf.data.AUTOTUNE),
        validation=labels_or_not(validation, labels).prefetch(tf.data.AUTOTUNE),
        image_shape=image_shape,
        num_train=opened.num_train,
        num_validation=opened.num_validation,
        has_labels=opened.has_labels,
        label_names=opened.label_names,
        source=opened.name,
        source_kind=opened.kind,
        _validation_examples=validation_examples,
        dequantized=dequantize,
        with_labels=labels,
        num_classes=opened.num_classes,
        validation_split=opened.held_out_split,
        test=test,
    )


def _check_test_set(test: HeldOutData, image_shape, opened: Source, labels: bool) -> None:
    """A test set must fit the model trained on `opened`: the same image shape and classes."""
    if test.image_shape != image_shape:
        raise ValueError(
            f"Expected test images of the training images' shape {image_shape} (the same "
            f"image_size and channels apply). Received: {test.image_shape} from "
            f"{test.source_description}."
        )
    if labels and test.num_classes > opened.num_classes:
        raise ValueError(
            f"Expected test labels among the {opened.num_classes} classes of {opened.kind} "
            f"'{opened.name}'. Received: labels up to {test.num_classes - 1} from "
            f"{test.source_description}."
        )
