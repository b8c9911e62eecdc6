"""One worker of a two-worker `model.fit` under MultiWorkerMirroredStrategy; prints JSON.

Run with `TF_CONFIG` set (tests/test_distribute.py starts two of these on 127.0.0.1). It first
tries `fit` with plain Keras, records how that fails, then installs tfvae's Keras fix and
trains: both workers must end with the same losses and weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

# First, before any other TensorFlow operation. Created directly (not with get_strategy, which
# installs the fix) so that the unfixed Keras can be tried first.
strategy = tf.distribute.MultiWorkerMirroredStrategy()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfvae  # noqa: E402
from tfvae import distribute  # noqa: E402
from tfvae.data import load_digits  # noqa: E402


def main() -> int:
    keras.utils.set_random_seed(0)
    (train_images, _), (validation_images, _) = load_digits(seed=0)
    with strategy.scope():
        vae = tfvae.build_conv_vae((8, 8, 1), 4, filters=(16,), seed=0)
        vae.compile(optimizer=keras.optimizers.Adam(2e-3))

    def fit():
        return vae.fit(
            train_images,
            validation_data=validation_images,
            batch_size=64,
            epochs=2,
            verbose=0,
        )

    try:
        fit()
        error_without_fix = None
    except Exception as error:  # noqa: BLE001 (the test reads which error it was)
        error_without_fix = f"{type(error).__name__}: {error}"[:300]
    fix_installed = distribute.install_keras_fit_fix()
    history = fit()
    weights = b"".join(np.ascontiguousarray(w).tobytes() for w in vae.get_weights())
    result = {
        "error_without_fix": error_without_fix,
        "fix_installed": fix_installed,
        "is_chief": distribute.is_chief(strategy),
        "replicas": strategy.num_replicas_in_sync,
        "history": history.history,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
    }
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
