"""Built-in data that needs no network: scikit-learn's handwritten digits."""

from __future__ import annotations

import numpy as np


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
    rng = np.random.default_rng(seed)
    if holdout == "random":
        order = rng.permutation(len(images))
    elif holdout == "last":
        order = np.concatenate([rng.permutation(split), np.arange(split, len(images))])
    else:
        raise ValueError(f"Expected holdout to be 'random' or 'last'. Received: holdout={holdout!r}")
    images, labels = images[order], labels[order]
    return (images[:split], labels[:split]), (images[split:], labels[split:])
