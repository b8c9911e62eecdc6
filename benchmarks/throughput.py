"""Training throughput: tfvae's VAE against a minimal hand-written Keras 3 VAE, same networks.

Both models use the keras.io example's architecture (latent 16, Bernoulli logits, batch 128) on
the same 28x28 images (the MNIST test set in ../shared/data/mnist-t10k/ when present, else
random binary images of that size). Epochs alternate between the two models in one process, so
load on the machine affects both alike; the first epoch of each (tracing) is not timed, and an
epoch is timed from its first step to its end (fit's one-time setup is not the training step).

Usage: python benchmarks/throughput.py [--rounds 5] [--images 8192]
Target: tfvae >= 0.95x the hand-written step's images/s.
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from baselines import build_minimal_vae, build_tfvae_keras_io  # noqa: E402

MNIST_IMAGES = Path(__file__).resolve().parents[2] / "shared/data/mnist-t10k/t10k-images-idx3-ubyte.gz"
BATCH_SIZE = 128


def mnist_like_images(count: int) -> tuple[np.ndarray, str]:
    """Up to `count` 28x28 images in [0, 1], and where they came from."""
    if MNIST_IMAGES.exists():
        raw = gzip.decompress(MNIST_IMAGES.read_bytes())
        images = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28, 1)[:count]
        return (images / 255.0).astype("float32"), str(MNIST_IMAGES)
    rng = np.random.default_rng(0)
    return (rng.random((count, 28, 28, 1)) < 0.13).astype("float32"), "random binary images"


class EpochTimer(keras.callbacks.Callback):
    """Wall time from the start to the end of the epoch: the training steps, not fit's setup."""

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.started


def epoch_seconds(model, dataset) -> float:
    """Seconds of one epoch of `model.fit` over `dataset`."""
    timer = EpochTimer()
    model.fit(dataset, epochs=1, verbose=0, shuffle=False, callbacks=[timer])
    return timer.seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=8192)
    args = parser.parse_args(argv)

    images, source = mnist_like_images(args.images)
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(BATCH_SIZE).cache().prefetch(2)
    keras.utils.set_random_seed(0)
    models = {"hand-written": build_minimal_vae(), "tfvae": build_tfvae_keras_io()}
    for model in models.values():
        epoch_seconds(model, dataset)  # trace and warm up
    seconds = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            seconds[name].append(epoch_seconds(model, dataset))

    rates = {name: len(images) / statistics.median(times) for name, times in seconds.items()}
    print(f"data: {len(images)} images of 28x28x1 from {source}; batch {BATCH_SIZE}; "
          f"{args.rounds} alternating epochs each; TensorFlow {tf.__version__}, Keras {keras.__version__}")
    for name, rate in rates.items():
        print(f"{name:>13}: {rate:8.0f} images/s (median epoch {statistics.median(seconds[name]):.2f} s)")
    ratio = rates["tfvae"] / rates["hand-written"]
    print(f"ratio tfvae / hand-written: {ratio:.3f}  (target >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'})")


if __name__ == "__main__":
    main()
