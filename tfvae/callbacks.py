"""Keras callbacks that tfvae's training job uses and users can reuse."""

from __future__ import annotations

import math
import os

import keras

from tfvae.files import atomic_path


class SaveLastGoodModel(keras.callbacks.Callback):
    """Saves the model to `path` after each epoch whose logged values are all finite.

    The file is written under a temporary name and renamed into place, so `path` always holds
    either the previous good model or the new one, never half of one; an epoch that ended in NaN
    (see `keras.callbacks.TerminateOnNaN`) leaves the previous model in place.

    Args:
        path: str. Where the `.keras` file goes.
    """

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        if not str(path).endswith(".keras"):
            raise ValueError(f"Expected a path ending in '.keras'. Received: path={path!r}")
        self.path = path
        self.saved_epochs = 0

    def on_epoch_end(self, epoch, logs=None):
        values = [float(v) for v in (logs or {}).values() if isinstance(v, (int, float))]
        if not all(math.isfinite(v) for v in values):
            return
        with atomic_path(self.path) as temporary:
            self.model.save(temporary)
        self.saved_epochs += 1
