"""Argument checks shared by the model builders, raised where the bad value enters."""

from __future__ import annotations

from collections.abc import Sequence


def check_latent_dim(latent_dim) -> int:
    """Returns `latent_dim` as an int.

    Raises:
        ValueError: it is not an integer >= 1.
    """
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
        raise ValueError(f"Expected latent_dim to be an integer >= 1. Received: latent_dim={latent_dim!r}")
    return latent_dim


def check_filters(filters: Sequence[int], argument_name: str = "filters") -> tuple[int, ...]:
    """Returns `filters` as a non-empty tuple of positive ints.

    Raises:
        ValueError: it is empty or holds something other than positive integers.
    """
    try:
        values = tuple(filters)
    except TypeError:
        values = ()
    if not values or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in values):
        raise ValueError(
            f"Expected {argument_name} to be a non-empty sequence of positive integers. "
            f"Received: {argument_name}={filters!r}"
        )
    return values


def check_image_shape(image_shape, num_halvings: int, argument_name: str) -> tuple[int, int, int]:
    """Returns `image_shape` as `(H, W, C)` after checking the conv stack can reproduce it.

    Args:
        image_shape: the image shape without the batch axis.
        num_halvings: how many stride-2 layers the stack has; H and W must be divisible by
            2**num_halvings so that the decoder's transposed convolutions land on H x W exactly.
        argument_name: the builder's argument, for the message.

    Raises:
        ValueError: not three positive integers, or H or W not divisible by 2**num_halvings.
    """
    try:
        shape = tuple(int(d) for d in image_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or any(d < 1 for d in shape):
        raise ValueError(
            f"Expected {argument_name} to be (height, width, channels) of positive integers. "
            f"Received: {argument_name}={image_shape!r}"
        )
    height, width, _ = shape
    factor = 2**num_halvings
    if height % factor or width % factor:
        raise ValueError(
            f"Expected height and width divisible by 2**len(filters) = {factor}, since each of "
            f"the {num_halvings} conv layers halves them. Received: {argument_name}={shape}. "
            "Resize or pad the images, or use fewer filters."
        )
    return shape


def check_num_classes(num_classes, allow_none: bool = False) -> int | None:
    """Returns `num_classes` as an int (or None, when allowed).

    Raises:
        ValueError: it is not an integer >= 2 (a conditional model needs two classes at least).
    """
    if num_classes is None and allow_none:
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            f"Expected num_classes to be an integer >= 2{' or None' if allow_none else ''}. "
            f"Received: num_classes={num_classes!r}"
        )
    return num_classes
