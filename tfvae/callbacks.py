"""Keras callbacks of tfvae's training job, usable on their own with any `fit`.

Every file they write goes through a temporary name and a rename, so a run killed at any moment
leaves each file either as it was or complete. Models are serialized in memory and written by
Python: HDF5 writing straight to a full disk leaves its library in a state that crashes the
process at exit (a segmentation fault), where a Python write raises a plain `OSError`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras.src.saving import saving_lib  # noqa: PLC2701 (save_model into a file object)

from tfvae import pictures
from tfvae.files import write_bytes_atomic


def model_bytes(model: keras.Model) -> bytes:
    """The `.keras` archive of `model` (weights, optimizer state, config), built in memory.

    `keras.Model.save` accepts only paths; Keras's saving library also writes to a file object,
    which keeps HDF5 off the disk (see the module docstring).
    """
    buffer = io.BytesIO()
    saving_lib.save_model(model, buffer)
    return buffer.getvalue()


def save_model_atomic(model: keras.Model, path) -> None:
    """Saves `model` as a `.keras` file at `path` through a temporary file and a rename.

    Raises:
        OSError: the file cannot be written (e.g. no space left on device, naming `path`);
            `path` is then unchanged and no temporary file is left.
    """
    write_bytes_atomic(path, model_bytes(model))


def _all_finite(logs) -> bool:
    return all(math.isfinite(float(v)) for v in (logs or {}).values() if isinstance(v, (int, float)))


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops `fit` after a batch whose loss is NaN or infinite, saying so on stderr.

    `keras.callbacks.TerminateOnNaN` does the same but prints its line to stdout, which
    `tfvae train` keeps for its JSON result (so that scripts can parse it whatever happened).

    Args:
        stream: where the one-line message goes (default: `sys.stderr` at the time of writing).
    """

    def __init__(self, stream=None):
        super().__init__()
        self.stream = stream

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            print(f"Batch {batch}: the loss is {float(loss)}; training stops.",
                  file=self.stream or sys.stderr, flush=True)
            self.model.stop_training = True


class AtomicModelCheckpoint(keras.callbacks.Callback):
    """Saves the whole model (weights, optimizer state, config) to a `.keras` file after an epoch.

    With `monitor=None` it saves after each epoch whose logged values are all finite, so an
    epoch that ended in NaN (see `keras.callbacks.TerminateOnNaN`) leaves the last good model in
    place. With `monitor="val_loss"` it saves only when that value improves on the best so far.

    Args:
        path: str or Path. Where the `.keras` file goes.
        monitor: str or None. A key of the epoch logs to select on.
        mode: "min" or "max". Whether a lower or a higher `monitor` is better.

    Raises:
        ValueError: a path without the `.keras` suffix or an unknown mode.
    """

    def __init__(self, path, monitor: str | None = None, mode: str = "min"):
        super().__init__()
        if not str(path).endswith(".keras"):
            raise ValueError(f"Expected a path ending in '.keras'. Received: path={str(path)!r}")
        if mode not in ("min", "max"):
            raise ValueError(f"Expected mode 'min' or 'max'. Received: mode={mode!r}")
        self.path = Path(path)
        self.monitor = monitor
        self.mode = mode
        self.best = None
        self.saved_epochs = 0

    def _improves(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if not _all_finite(logs):
            return
        if self.monitor is not None:
            if self.monitor not in logs:
                raise ValueError(
                    f"Expected '{self.monitor}' in the epoch logs to select checkpoints. "
                    f"Received logs with keys {sorted(logs)}"
                )
            value = float(logs[self.monitor])
            if not self._improves(value):
                return
            self.best = value
        save_model_atomic(self.model, self.path)
        self.saved_epochs += 1


class MetricsCSVLogger(keras.callbacks.Callback):
    """Writes one row per epoch (`epoch` and every logged metric) to a CSV file.

    Unlike `keras.callbacks.CSVLogger`, the whole file is rewritten through a rename after each
    epoch, so it is never half a row long; rows of an earlier, resumed run are kept.

    Args:
        path: str or Path of the CSV file.
        previous_rows: list of dicts, rows already written by the run being resumed.
    """

    def __init__(self, path, previous_rows: list[dict] | None = None):
        super().__init__()
        self.path = Path(path)
        self.rows = list(previous_rows or [])

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch}
        row.update({key: float(value) for key, value in (logs or {}).items()})
        self.rows = [r for r in self.rows if int(r["epoch"]) < epoch] + [row]
        columns = ["epoch"] + sorted({key for r in self.rows for key in r if key != "epoch"})
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        write_bytes_atomic(self.path, text.getvalue().encode())


def read_metrics_csv(path) -> list[dict]:
    """The rows of a `metrics.csv` written by `MetricsCSVLogger` ([] when there is none)."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


class CorruptBackupError(ValueError):
    """A `BackupAndRestore` state that cannot be read (a bit flip, a truncated file)."""

    def __init__(self, path, error: BaseException):
        self.path = str(path)
        super().__init__(f"The backup '{path}' cannot be read (corrupt or truncated): {error}")


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras's `BackupAndRestore`, with its backup written through temporary names and renames.

    Keras writes `latest.weights.h5` and `training_metadata.json` in place; a process killed
    during that write would leave a backup that cannot be read. Here the model state goes to
    `latest.keras` (a `.keras` archive built in memory, whose weights `load_weights` restores,
    optimizer state included) and the metadata to `training_metadata.json`, each beside its final
    name and renamed, the weights first, so the metadata never names an epoch whose weights are
    not on disk.

    Raises:
        CorruptBackupError: from `fit`, when the backup exists but cannot be read.
    """

    #: The backup's model state, in the backup directory.
    WEIGHTS_FILE = "latest.keras"

    def __init__(self, backup_dir, **kwargs):
        super().__init__(backup_dir, **kwargs)
        self._weights_path = os.path.join(str(backup_dir), self.WEIGHTS_FILE)
        self._prev_weights_path = f"{self._weights_path}.bkp"

    def on_train_begin(self, logs=None):
        try:
            super().on_train_begin(logs)
        except (OSError, ValueError, zipfile.BadZipFile, KeyError) as error:
            raise CorruptBackupError(self._weights_path, " ".join(str(error).split())) from error

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        write_bytes_atomic(self._weights_path, model_bytes(self.model))
        metadata = {"epoch": self._current_epoch, "batch": self._last_batch_seen}
        write_bytes_atomic(self._training_metadata_path, json.dumps(metadata).encode())


class ImageSummaries(keras.callbacks.Callback):
    """Logs sample and reconstruction grids to TensorBoard after every epoch.

    For a conditional model (`tfvae.ConditionalVAE`) the samples grid has one row per class and
    the reconstructions are given the images' `labels`.

    Args:
        log_dir: str. A TensorBoard log directory (e.g. the run's `logs/images`).
        images: array `[N, H, W, C]` of validation images to reconstruct (a few dozen).
        num_samples: int. Prior samples per grid.
        seed: int. The same prior samples every epoch, so the grids show progress.
        labels: None, or the class ids `[N]` of `images`, which a conditional model needs.
    """

    def __init__(self, log_dir, images, num_samples: int = 64, seed: int = 0, labels=None):
        super().__init__()
        self.log_dir = str(log_dir)
        self.images = np.asarray(images)
        self.labels = None if labels is None else np.asarray(labels)
        self.num_samples = num_samples
        self.seed = seed
        self._writer = None

    def on_train_begin(self, logs=None):
        self._writer = tf.summary.create_file_writer(self.log_dir)

    def on_epoch_end(self, epoch, logs=None):
        samples = pictures.sample_grid(self.model, self.num_samples, seed=self.seed)
        reconstructions = pictures.reconstruction_grid(self.model, self.images, self.labels)
        with self._writer.as_default():
            tf.summary.image("samples", samples[np.newaxis], step=epoch)
            tf.summary.image("reconstructions", reconstructions[np.newaxis], step=epoch)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
