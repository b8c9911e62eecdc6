"""Image grids as PNG files: samples, reconstructions next to their inputs."""

from __future__ import annotations

import math
import os

import numpy as np
import tensorflow as tf

from tfvae.files import write_bytes_atomic


def image_grid(
    images, columns: int | None = None, padding: int = 2, scale: int = 1, gap_value: float = 0.5
) -> np.ndarray:
    """Tiles a batch of images into one uint8 image.

    Args:
        images: array `[N, H, W, C]` with C in {1, 3} and values in [0, 1] (clipped).
        columns: images per row; default the ceiling of sqrt(N).
        padding: pixels between images (and around the grid).
        gap_value: the gaps' gray level in [0, 1]; mid-gray separates both white strokes on black
            (digits) and dark images.
        scale: integer upscaling factor (nearest neighbour), so 8x8 digits are visible.

    Returns:
        uint8 array `[rows * (H + padding) + padding, ..., C]`.

    Raises:
        ValueError: not a rank-4 batch with 1 or 3 channels, or an empty batch.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(
            "Expected a non-empty batch of images [N, H, W, C] with C in (1, 3). "
            f"Received: shape {images.shape}"
        )
    count, height, width, channels = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    images = np.clip(images, 0.0, 1.0)
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
        height, width = height * scale, width * scale
    grid = np.full(
        (rows * (height + padding) + padding, columns * (width + padding) + padding, channels),
        gap_value,
        dtype=np.float32,
    )
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        top = padding + row * (height + padding)
        left = padding + column * (width + padding)
        grid[top : top + height, left : left + width] = image
    return np.round(grid * 255).astype(np.uint8)


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Writes a uint8 `[H, W, C]` image as PNG (atomically)."""
    write_bytes_atomic(path, tf.io.encode_png(image).numpy())


def interleave_pairs(originals, reconstructions) -> np.ndarray:
    """Returns `[o1, r1, o2, r2, ...]`, so a grid with an even column count shows pairs side by side."""
    originals = np.asarray(originals)
    reconstructions = np.asarray(reconstructions)
    pairs = np.stack([originals, reconstructions], axis=1)
    return pairs.reshape((-1,) + originals.shape[1:])
