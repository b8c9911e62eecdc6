"""SaveLastGoodModel: a NaN epoch never replaces the last good model on disk."""

import keras
import numpy as np
import pytest

from tfvae.callbacks import SaveLastGoodModel
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
    saver = SaveLastGoodModel(path)
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


def test_path_must_end_in_keras():
    with pytest.raises(ValueError, match=r"ending in '.keras'. Received: path='model.h5'"):
        SaveLastGoodModel("model.h5")
