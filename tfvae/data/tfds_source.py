"""tensorflow-datasets sources: any tfds dataset with an `image` feature, by name."""

from __future__ import annotations

import os
import socket
import urllib.parse

import numpy as np
import tensorflow as tf

from tfvae.data.sources import NO_LABEL, Source, holdout_split

#: Datasets whose stored pixels are not 0..255.
_PIXEL_MAX = {"binarized_mnist": 1.0}
#: CelebA: the central 148x148 face window (as in most VAE papers), then 64x64.
_CROPS = {"celeb_a": (148, 148)}
_DEFAULT_IMAGE_SIZES = {"celeb_a": (64, 64)}
#: Where tfds downloads most datasets from; reachable means a download can start.
_DOWNLOAD_HOST = ("storage.googleapis.com", 443)
_NETWORK_TIMEOUT_SECONDS = 3.0
#: Named in messages; any tfds dataset with an `image` feature works.
EXAMPLE_TFDS_NAMES = (
    "mnist", "fashion_mnist", "kmnist", "binarized_mnist", "cifar10", "svhn_cropped", "celeb_a",
)


def network_available(
    address: tuple[str, int] | None = None, timeout: float = _NETWORK_TIMEOUT_SECONDS
) -> bool:
    """Whether a TCP connection to the download host (or the HTTPS proxy) opens within `timeout`.

    tfds retries a failed download for minutes; this answers in seconds.
    """
    if address is None:
        proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
        if proxy:
            parsed = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            address = (parsed.hostname or "", parsed.port or 80)
        else:
            address = _DOWNLOAD_HOST
    try:
        socket.create_connection(address, timeout=timeout).close()
    except OSError:
        return False
    return True


class UnknownDatasetError(ValueError):
    """No tensorflow-datasets dataset has this name."""


def _unknown_source_message(name: str) -> str:
    return (
        f"Unknown dataset '{name}': no such file or folder, and no tensorflow-datasets dataset "
        "of that name. Expected 'digits' (built in, no network), a path to an existing "
        ".npz/.npy file, IDX file or folder of PNG/JPEG images, or the name of a "
        "tensorflow-datasets dataset with an 'image' feature such as "
        f"{', '.join(EXAMPLE_TFDS_NAMES)}. Received: '{name}'."
    )


def _builder(name: str, data_dir: str | None):
    """tfds's builder for `name`.

    Raises:
        UnknownDatasetError: no dataset of that name.
        ValueError: an unknown configuration or version of a known dataset.
    """
    import tensorflow_datasets as tfds  # noqa: PLC0415 (slow import, only for tfds sources)

    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise UnknownDatasetError(_unknown_source_message(name)) from None
    except ValueError as error:
        # tfds goes on to list close matches over many lines; its first sentence says it.
        reason = str(error).split(" Here are ")[0].splitlines()[0]
        raise ValueError(
            "Expected a tensorflow-datasets name with a known configuration and version "
            f"(name/config:version). Received: '{name}': {reason}"
        ) from None


def _prepare(builder, name: str, data_dir: str | None) -> None:
    """Downloads and prepares the dataset unless it is prepared in `data_dir` already.

    Raises:
        FileNotFoundError: not prepared, and no network to download it.
    """
    if builder.is_prepared():
        return
    if not network_available():
        raise FileNotFoundError(
            f"tensorflow-datasets '{name}' is not prepared in {builder.data_dir} and there is "
            "no network to download it. Prepare it on a machine with network (e.g. "
            f"`tfds build {name} --data_dir DIR`), copy DIR here and pass --data-dir DIR "
            "(data_dir=...), or use a local .npz/.npy, IDX or image folder, or 'digits'."
        )
    builder.download_and_prepare()


def _choose_splits(builder, validation_fraction: float, name: str, test: bool = False):
    """The splits for training and validation (a held-out slice of train when needed).

    Validation is the `validation` split, else `test`, else a held-out slice of `train`; with
    `test` (choosing a test set) the `test` split comes first.

    Returns:
        `(train_split, validation_split, num_train, num_validation, held_out_split)`, the last
        one of `tfvae.data.sources.HELD_OUT_SPLITS`.
    """
    splits = builder.info.splits
    if "train" not in splits:
        raise ValueError(
            f"Expected tensorflow-datasets '{name}' to have a 'train' split. "
            f"Received: splits {sorted(splits)}."
        )
    num_examples = splits["train"].num_examples
    for validation in ("test", "validation") if test else ("validation", "test"):
        if validation in splits:
            return "train", validation, num_examples, splits[validation].num_examples, validation
    split = holdout_split(num_examples, validation_fraction, name)
    return f"train[:{split}]", f"train[{split}:]", split, num_examples - split, "held-out"


def tfds_source(
    name: str, data_dir: str | None, validation_fraction: float, seed: int, test: bool = False
) -> Source:
    """A tensorflow-datasets dataset by name: `train`, and `validation`, `test` or a slice of train.

    With `test`, a test set: `Source.train` is None and `Source.validation` holds the `test`
    split (else `validation`, else the held-out slice of train that training validates on).

    Args:
        name: a tfds name (with an optional `/config` and `:version`).
        data_dir: where tfds keeps prepared data (None: tfds's default, ~/tensorflow_datasets).
        validation_fraction: float in (0, 1). Held out of train when there is no
            validation or test split.
        seed: int. Seeds tfds's file shuffling.
        test: bool. Open the dataset's test split only.

    Raises:
        UnknownDatasetError: (a ValueError) an unknown name.
        ValueError: an unknown configuration, or a dataset without an `image` feature.
        FileNotFoundError: the data is not prepared and there is no network.
    """
    import tensorflow_datasets as tfds  # noqa: PLC0415

    builder = _builder(name, data_dir)
    features = builder.info.features
    image_feature = features["image"] if "image" in features.keys() else None
    if not isinstance(image_feature, tfds.features.Image):
        raise ValueError(
            f"Expected a tensorflow-datasets dataset with an 'image' feature. Received: '{name}' "
            f"with features {sorted(features.keys())}."
        )
    _prepare(builder, name, data_dir)
    label_feature = features["label"] if "label" in features.keys() else None
    has_labels = isinstance(label_feature, tfds.features.ClassLabel)
    train_split, validation_split, num_train, num_validation, held_out_split = _choose_splits(
        builder, validation_fraction, name, test
    )

    def examples(split: str, shuffle_files: bool) -> tf.data.Dataset:
        dataset = builder.as_dataset(
            split=split,
            shuffle_files=shuffle_files,
            read_config=tfds.ReadConfig(shuffle_seed=seed),
        )
        if has_labels:
            return dataset.map(lambda example: (example["image"], example["label"]))
        return dataset.map(lambda example: (example["image"], tf.constant(NO_LABEL, tf.int64)))

    dtype = np.dtype(image_feature.np_dtype)
    pixel_max = _PIXEL_MAX.get(builder.name) or (
        float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0
    )
    return Source(
        name=name,
        kind="tensorflow-datasets",
        train=None if test else examples(train_split, shuffle_files=True),
        validation=examples(validation_split, shuffle_files=False),
        num_train=None if test else num_train,
        num_validation=num_validation,
        pixel_max=pixel_max,
        has_labels=has_labels,
        label_names=tuple(label_feature.names) if has_labels else None,
        num_classes=label_feature.num_classes if has_labels else None,
        held_out_split=held_out_split,
        crop=_CROPS.get(builder.name),
        default_image_size=_DEFAULT_IMAGE_SIZES.get(builder.name),
    )

