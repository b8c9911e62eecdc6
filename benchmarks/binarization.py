"""MNIST binarization shared by the benchmarks that train on arrays (conditional.py, model_family.py).

Dynamic binarization for training (Burda et al., 2015: a fresh Bernoulli draw of every gray level
each time an image is seen) and one fixed binarization of the test images (seed 1234, as
`tfvae.data` binarizes held-out data).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

#: The seed of the test images' binarization and of the importance samples.
EVALUATION_SEED = 1234


def dynamically_binarized(images: np.ndarray, batch_size: int, seed: int,
                          labels: np.ndarray | None = None) -> tf.data.Dataset:
    """Shuffled batches of Bernoulli(k / 255) draws of uint8 `images` `[N, H, W, C]`, fresh every
    epoch; batches of `(images, labels)` when labels are given."""
    elements = images if labels is None else (images, labels)
    dataset = tf.data.Dataset.from_tensor_slices(elements).shuffle(len(images), seed=seed).batch(batch_size)
    batch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

    def binarize(batch, batch_seed):
        gray = tf.cast(batch, tf.float32) / 255.0
        uniform = tf.random.stateless_uniform(tf.shape(gray), tf.stack([batch_seed, tf.constant(2, tf.int64)]))
        return tf.cast(uniform < gray, tf.float32)

    if labels is None:
        return tf.data.Dataset.zip((dataset, batch_seeds)).map(binarize).prefetch(tf.data.AUTOTUNE)
    return tf.data.Dataset.zip((dataset, batch_seeds)).map(
        lambda pair, batch_seed: (binarize(pair[0], batch_seed), pair[1])
    ).prefetch(tf.data.AUTOTUNE)


def binarized_once(images: np.ndarray) -> np.ndarray:
    """The test images binarized once: pixel ~ Bernoulli(k / 255) with `EVALUATION_SEED`."""
    uniform = np.random.default_rng(EVALUATION_SEED).uniform(size=images.shape)
    return (uniform < images / 255.0).astype(np.float32)
