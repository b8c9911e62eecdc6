"""The convolutional decoder: z in, the likelihood's parameters (P per sub-pixel) out."""

from __future__ import annotations

from collections.abc import Sequence

import keras

from tfvae.models.validation import (
    check_filters,
    check_image_shape,
    check_latent_dim,
    check_num_classes,
)


def build_conv_decoder(
    latent_dim: int,
    output_shape: Sequence[int],
    filters: Sequence[int] = (64, 32),
    kernel_size: int = 3,
    hidden_units: int | None = None,
    activation: str = "relu",
    parameters_per_subpixel: int = 1,
    name: str = "decoder",
    num_classes: int | None = None,
) -> keras.Model:
    """Builds a functional decoder: Dense -> Reshape -> Conv2DTranspose stack -> parameters.

    The Dense layer produces a `H / 2**n x W / 2**n x filters[0]` map (n = len(filters)); each
    Conv2DTranspose doubles it, and a last stride-1 Conv2DTranspose gives P linear outputs per
    pixel and channel (`C * P` channels, P = the likelihood's `parameters_per_subpixel`): logits
    for the Bernoulli likelihood (P = 1), the mean for the Gaussian one (P = 1), 256 logits for
    the categorical one.

    Args:
        latent_dim: int. The size D of z.
        output_shape: tuple of 3 ints. `(H, W, C)` of the data; H, W divisible by `2**len(filters)`.
        filters: sequence of ints. Channels of each stride-2 Conv2DTranspose layer.
        kernel_size: int. Kernel size of every transposed convolution.
        hidden_units: int or None. Width of an optional Dense layer before the projection.
        activation: str. Activation of the hidden layers.
        parameters_per_subpixel: int >= 1. P, the likelihood parameters of each sub-pixel.
        name: str. The model's name.
        num_classes: None or int >= 2. For p(x|z, y) of a `tfvae.ConditionalVAE`: the decoder
            then takes `[z, labels]`, the labels one-hot `[B, num_classes]`, concatenated to z.

    Returns:
        A `keras.Model` mapping z `[B, D]` (with `num_classes`, `[z, labels]`) to likelihood
        parameters `[B, H, W, C * P]`.

    Raises:
        ValueError: a shape or size that the stack cannot produce.

    Example:

    >>> decoder = build_conv_decoder(16, (28, 28, 1))
    >>> tuple(decoder.output.shape)
    (None, 28, 28, 1)
    >>> tuple(build_conv_decoder(16, (28, 28, 1), parameters_per_subpixel=256).output.shape)
    (None, 28, 28, 256)
    """
    if (
        isinstance(parameters_per_subpixel, bool)
        or not isinstance(parameters_per_subpixel, int)
        or parameters_per_subpixel < 1
    ):
        raise ValueError(
            "Expected parameters_per_subpixel to be an integer >= 1. "
            f"Received: parameters_per_subpixel={parameters_per_subpixel!r}"
        )
    filters = check_filters(filters)
    latent_dim = check_latent_dim(latent_dim)
    height, width, channels = check_image_shape(output_shape, len(filters), "output_shape")
    base_height = height // 2 ** len(filters)
    base_width = width // 2 ** len(filters)

    num_classes = check_num_classes(num_classes, allow_none=True)

    z = keras.Input(shape=(latent_dim,), name="z")
    features = z
    inputs = z
    if num_classes is not None:
        labels = keras.Input(shape=(num_classes,), name="labels")
        inputs = [z, labels]
        features = keras.layers.Concatenate(name="with_labels")([z, labels])
    if hidden_units:
        features = keras.layers.Dense(hidden_units, activation=activation, name="hidden")(features)
    features = keras.layers.Dense(
        base_height * base_width * filters[0], activation=activation, name="project"
    )(features)
    features = keras.layers.Reshape((base_height, base_width, filters[0]), name="reshape")(features)
    for index, channels_out in enumerate(filters):
        features = keras.layers.Conv2DTranspose(
            channels_out,
            kernel_size,
            strides=2,
            padding="same",
            activation=activation,
            name=f"deconv_{index}",
        )(features)
    parameters = keras.layers.Conv2DTranspose(
        channels * parameters_per_subpixel, kernel_size, strides=1, padding="same", name="parameters"
    )(features)
    return keras.Model(inputs, parameters, name=name)
