"""Tensor transforms of images: channels, center crop and resize, scaling, binarization."""

from __future__ import annotations

import tensorflow as tf

BINARIZE_MODES = ("none", "static", "dynamic")


def match_channels(image: tf.Tensor, channels: int | None) -> tf.Tensor:
    """Converts an image `[H, W, C]` (C = 1 or 3) to `channels` (1: luminance, 3: gray repeated).

    Luminance uses the ITU-R 601 weights (as `tf.image.rgb_to_grayscale`), computed in float and
    rounded back for integer images, so uint8 data loses at most half a level.
    `None` keeps the image's own channels.
    """
    if channels is None or image.shape[-1] == channels:
        return image
    if channels == 3:
        return tf.image.grayscale_to_rgb(image)
    weights = tf.constant([[0.2989], [0.5870], [0.1140]], tf.float32)
    luminance = tf.tensordot(tf.cast(image, tf.float32), weights, axes=1)
    if image.dtype.is_integer:
        return tf.cast(tf.round(luminance), image.dtype)
    return luminance


def center_crop(image: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """The central `height x width` window of an image `[H, W, C]` (shorter sides stay whole)."""
    shape = tf.shape(image)
    crop_height = tf.minimum(shape[0], height)
    crop_width = tf.minimum(shape[1], width)
    return tf.image.crop_to_bounding_box(
        image, (shape[0] - crop_height) // 2, (shape[1] - crop_width) // 2, crop_height, crop_width
    )


def center_crop_and_resize(image: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """Crops the largest central window with the aspect ratio of `size`, then resizes to `size`.

    Cropping first keeps faces and digits undistorted; the resize is bilinear with antialiasing,
    so shrinking averages pixels instead of dropping them.

    Args:
        image: `[H, W, C]`, any real dtype.
        size: `(height, width)` of the result.

    Returns:
        float32 `[height, width, C]` in the value range of `image`.
    """
    height, width = size
    shape = tf.shape(image)
    source_height, source_width = shape[0], shape[1]
    # Compare aspect ratios in integers: source_height / source_width vs height / width.
    too_tall = source_height * width > source_width * height
    crop_height = tf.where(too_tall, source_width * height // width, source_height)
    crop_width = tf.where(too_tall, source_width, source_height * width // height)
    image = tf.image.crop_to_bounding_box(
        image,
        (source_height - crop_height) // 2,
        (source_width - crop_width) // 2,
        crop_height,
        crop_width,
    )
    return tf.image.resize(image, size, method="bilinear", antialias=True)


def to_unit_float(images: tf.Tensor, pixel_max: float) -> tf.Tensor:
    """Scales stored pixel values (0..pixel_max) to float32 in [0, 1]."""
    images = tf.cast(images, tf.float32)
    if pixel_max != 1.0:
        images = images / pixel_max
    return tf.clip_by_value(images, 0.0, 1.0)


def threshold_binarize(images: tf.Tensor, threshold: float) -> tf.Tensor:
    """1 where the intensity exceeds `threshold`, else 0 (float32, same shape)."""
    return tf.cast(images > threshold, tf.float32)


def bernoulli_binarize(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """One Bernoulli sample per pixel with success probability the pixel's intensity.

    Args:
        images: float32 in [0, 1], any shape.
        seed: int `[2]`, the stateless seed: the same seed gives the same sample.

    Returns:
        float32 of 0s and 1s, the shape of `images`; its expectation is `images`.
    """
    uniform = tf.random.stateless_uniform(tf.shape(images), seed=seed, dtype=tf.float32)
    return tf.cast(uniform < images, tf.float32)


def uniform_dequantize(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """(255 x + u) / 256 with u ~ U(0, 1) per sub-pixel: 8-bit levels k / 255 spread over [k/256, (k+1)/256).

    A continuous density fitted to these values bounds the 8-bit data's log-likelihood
    (Theis et al., 2016): -log P(k) <= -log p(x) + D log 256 in expectation over u.

    Args:
        images: float32 in [0, 1] holding 8-bit levels k / 255, any shape.
        seed: int `[2]`, the stateless seed: the same seed gives the same noise.

    Returns:
        float32 in [0, 1), the shape of `images`.
    """
    uniform = tf.random.stateless_uniform(tf.shape(images), seed=seed, dtype=tf.float32)
    return (tf.round(images * 255.0) + uniform) / 256.0
