"""Data sources for tfvae (interim: the built-in digits only, until the data module lands)."""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from tfvae.data.builtin import load_digits


@dataclasses.dataclass
class DataSplits:
    """Training and validation datasets ready for `fit`, and what they hold."""

    train: tf.data.Dataset
    validation: tf.data.Dataset
    image_shape: tuple
    num_train: int | None
    num_validation: int | None
    has_labels: bool
    _validation_arrays: tuple

    def validation_examples(self, n: int, seed: int = 0):
        images, labels = self._validation_arrays
        return images[:n], labels[:n]


def load(source: str = "digits", *, batch_size: int = 64, data_dir=None, binarize="none", seed: int = 0):
    if source != "digits":
        raise ValueError(f"Unknown dataset '{source}'. Expected one of ['digits'].")
    (train_images, _), (val_images, val_labels) = load_digits(seed=seed)
    train = (
        tf.data.Dataset.from_tensor_slices(train_images)
        .shuffle(len(train_images), seed=seed)
        .batch(batch_size)
        .prefetch(2)
    )
    validation = tf.data.Dataset.from_tensor_slices(val_images).batch(batch_size).prefetch(2)
    return DataSplits(train, validation, train_images.shape[1:], len(train_images), len(val_images), True, (val_images, np.asarray(val_labels)))


__all__ = ["DataSplits", "load", "load_digits"]
