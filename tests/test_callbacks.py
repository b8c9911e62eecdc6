"""The run directory's callbacks: atomic checkpoints, CSV metrics, backups."""

import keras
import numpy as np
import pytest

from tfvae.callbacks import (
    AtomicBackupAndRestore,
    AtomicModelCheckpoint,
    MetricsCSVLogger,
    read_metrics_csv,
)
from tfvae.models import build_conv_vae


class PoisonWeightsAtEpoch(keras.callbacks.Callback):
    """Sets the posterior mean's bias to NaN when the given epoch begins (a divergence, shortened)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            bias = self.model.encoder.get_layer("loc").bias
            bias.assign(np.full(bias.shape, np.nan, "float32"))


def test_nan_stops_training_and_keeps_the_last_good_model(tmp_path, digits):
    (images, _), _ = digits
    vae = build_conv_vae((8, 8, 1), 2, filters=(4,), seed=0)
    vae.compile()
    path = tmp_path / "model.keras"
    saver = AtomicModelCheckpoint(path)
    history = vae.fit(
        images[:256],
        epochs=5,
        batch_size=64,
        callbacks=[PoisonWeightsAtEpoch(2), keras.callbacks.TerminateOnNaN(), saver],
        verbose=0,
    )
    assert len(history.history["loss"]) == 3  # epochs 0, 1 and the NaN epoch that stopped it
    assert saver.saved_epochs == 2
    restored = keras.models.load_model(path)
    assert np.isfinite(restored.encoder.get_layer("loc").bias.numpy()).all()
    assert np.isfinite(restored.evaluate(images[:64], verbose=0, return_dict=True)["loss"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]  # no temporary left


def test_arguments_are_checked():
    with pytest.raises(ValueError, match=r"ending in '.keras'. Received: path='model.h5'"):
        AtomicModelCheckpoint("model.h5")
    with pytest.raises(ValueError, match=r"mode 'min' or 'max'. Received: mode='lowest'"):
        AtomicModelCheckpoint("m.keras", mode="lowest")


class FakeLogs(keras.callbacks.Callback):
    """Replaces the epoch logs by a scripted sequence (callbacks later in the list see them)."""

    def __init__(self, values):
        super().__init__()
        self.values = values

    def on_epoch_end(self, epoch, logs=None):
        logs["val_loss"] = self.values[epoch]


def test_best_checkpoint_saves_only_improvements(tmp_path, digits):
    (images, _), _ = digits
    vae = build_conv_vae((8, 8, 1), 2, filters=(4,), seed=0)
    vae.compile()
    best = AtomicModelCheckpoint(tmp_path / "best.keras", monitor="val_loss")
    vae.fit(images[:64], validation_data=images[:64], epochs=4, verbose=0,
            callbacks=[FakeLogs([5.0, 3.0, 4.0, 2.0]), best])
    assert best.saved_epochs == 3 and best.best == 2.0
    missing = AtomicModelCheckpoint(tmp_path / "x.keras", monitor="val_kl_typo")
    with pytest.raises(ValueError, match=r"Expected 'val_kl_typo' in the epoch logs"):
        vae.fit(images[:64], epochs=1, verbose=0, callbacks=[missing])


def test_metrics_csv_keeps_earlier_rows_and_replaces_rerun_epochs(tmp_path):
    path = tmp_path / "metrics.csv"
    logger = MetricsCSVLogger(path, previous_rows=[{"epoch": "0", "loss": "9.0"}, {"epoch": "1", "loss": "8.0"}])
    logger.on_epoch_end(1, {"loss": 7.5, "val_loss": 7.0})
    logger.on_epoch_end(2, {"loss": 7.0, "val_loss": 6.5})
    rows = read_metrics_csv(path)
    assert [(r["epoch"], r["loss"], r["val_loss"]) for r in rows] == [
        ("0", "9.0", ""), ("1", "7.5", "7.0"), ("2", "7.0", "6.5")
    ]
    assert read_metrics_csv(tmp_path / "none.csv") == []


def test_backup_restores_weights_and_epoch(tmp_path, digits):
    (images, _), _ = digits
    backup_dir = str(tmp_path / "backup")
    vae = build_conv_vae((8, 8, 1), 2, filters=(4,), seed=0)
    vae.compile()

    class StopAfterTwo(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt  # an interruption, as a kill would be

    with pytest.raises(KeyboardInterrupt):
        vae.fit(images[:64], epochs=5, verbose=0,
                callbacks=[AtomicBackupAndRestore(backup_dir), StopAfterTwo()])
    assert sorted(p.name for p in (tmp_path / "backup").iterdir()) == ["latest.keras", "training_metadata.json"]
    fresh = build_conv_vae((8, 8, 1), 2, filters=(4,), seed=1)
    fresh.compile()
    history = fresh.fit(images[:64], epochs=5, verbose=0, callbacks=[AtomicBackupAndRestore(backup_dir)])
    assert len(history.history["loss"]) == 3  # epochs 2, 3, 4 only
    assert fresh.optimizer.iterations.numpy() == vae.optimizer.iterations.numpy() + 3 * 2
    assert not (tmp_path / "backup").exists()  # removed once the run finished
