"""Built-in data that needs no network (scikit-learn's handwritten digits), and the order
in which a source holds its validation slice out (`holdout_order`)."""

from __future__ import annotations

import numpy as np

from tfvae.config import check_holdout


def holdout_order(num_examples: int, split: int, seed: int, holdout: str) -> np.ndarray:
    """The order of a source's examples before its first `split` train and the rest validate.

    "random": one seeded permutation of all examples. "last": the stored order's last
    `num_examples - split` examples are held out (in stored order), and the training part alone
    is permuted with the seed, so that a sorted file still reaches the shuffle buffer mixed.

    Raises:
        ValueError: a holdout not in `tfvae.config.HOLDOUT_MODES`.
    """
    rng = np.random.default_rng(seed)
    if check_holdout(holdout) == "random":
        return rng.permutation(num_examples)
    return np.concatenate([rng.permutation(split), np.arange(split, num_examples)])


def load_digits(validation_fraction: float = 0.2, seed: int = 0, holdout: str = "random"):
    """Loads scikit-learn's 1,797 handwritten 8x8 digits, scaled to [0, 1].

    The images ship inside scikit-learn (UCI optdigits test set), so this works offline.

    Args:
        validation_fraction: float in (0, 1). Share of the images held out for validation.
        seed: int. Seed of the shuffle before the split.
        holdout: "random" (a seeded random slice is held out) or "last" (the last images of
            scikit-learn's order; the training part alone is shuffled).

    Returns:
        `(train_images, train_labels), (validation_images, validation_labels)`: float32 images
        `[N, 8, 8, 1]` in [0, 1] and int64 labels `[N]`.

    Raises:
        ValueError: validation_fraction outside (0, 1), or an unknown holdout.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(
            "Expected validation_fraction in (0, 1). "
            f"Received: validation_fraction={validation_fraction}"
        )
    from sklearn.datasets import load_digits as sklearn_load_digits  # noqa: PLC0415 (slow import)

    digits = sklearn_load_digits()
    # Pixel values are counts 0..16 of set bits in 4x4 blocks of the 32x32 originals.
    images = (digits.images / 16.0).astype(np.float32)[..., np.newaxis]
    labels = digits.target.astype(np.int64)
    split = len(images) - int(round(len(images) * validation_fraction))
    order = holdout_order(len(images), split, seed, holdout)
    images, labels = images[order], labels[order]
    return (images[:split], labels[:split]), (images[split:], labels[split:])
