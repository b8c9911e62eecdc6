"""The convolutional encoder: images in, the parameters of q(z|x) out."""

from __future__ import annotations

from collections.abc import Sequence

import keras

from tfvae.models.validation import (
    check_filters,
    check_image_shape,
    check_latent_dim,
    check_num_classes,
)


def build_conv_encoder(
    input_shape: Sequence[int],
    latent_dim: int,
    filters: Sequence[int] = (32, 64),
    kernel_size: int = 3,
    hidden_units: int | None = None,
    activation: str = "relu",
    name: str = "encoder",
    context_units: int = 0,
    num_classes: int | None = None,
) -> keras.Model:
    """Builds a functional encoder: strided Conv2D stack -> Dense -> posterior parameters.

    Each Conv2D has stride 2 and `same` padding, so an `H x W` image leaves the stack as
    `H / 2**len(filters) x W / 2**len(filters)`; the decoder mirrors that.

    Args:
        input_shape: tuple of 3 ints. `(H, W, C)`; H and W divisible by `2**len(filters)`.
        latent_dim: int. The size D of z.
        filters: sequence of ints. Channels of each stride-2 Conv2D layer.
        kernel_size: int. Kernel size of every convolution.
        hidden_units: int or None. Width of an optional Dense layer after flattening.
        activation: str. Activation of the hidden layers.
        name: str. The model's name.
        context_units: int >= 0. H, the width of a context output for a posterior that takes
            one (`tfvae.distributions.IAFPosterior.context_units`); 0 for none.
        num_classes: None or int >= 2. C, for q(z|x, y) of a `tfvae.ConditionalVAE`: the
            encoder then takes `[images, labels]`, the labels one-hot `[B, C]`, and sees them as
            C constant extra channels of the image.

    Returns:
        A `keras.Model` mapping images `[B, H, W, C]` to `[loc, raw_scale]`, two tensors of shape
        `[B, D]`: the posterior mean and its unconstrained scale (the VAE applies softplus);
        with `context_units` > 0, to `[loc, raw_scale, context]`, the context `[B, H]`. With
        `num_classes`, its inputs are `[images, labels]`.

    Raises:
        ValueError: a shape or size that the stack cannot handle.

    Example:

    >>> encoder = build_conv_encoder((28, 28, 1), latent_dim=16)
    >>> [tuple(t.shape) for t in encoder.outputs]
    [(None, 16), (None, 16)]
    """
    if isinstance(context_units, bool) or not isinstance(context_units, int) or context_units < 0:
        raise ValueError(f"Expected context_units to be an integer >= 0. Received: context_units={context_units!r}")
    filters = check_filters(filters)
    latent_dim = check_latent_dim(latent_dim)
    input_shape = check_image_shape(input_shape, len(filters), "input_shape")
    num_classes = check_num_classes(num_classes, allow_none=True)

    images = keras.Input(shape=input_shape, name="images")
    features = images
    inputs = images
    if num_classes is not None:
        labels = keras.Input(shape=(num_classes,), name="labels")
        inputs = [images, labels]
        # The one-hot row repeated at every pixel: C constant channels beside the image's.
        label_planes = keras.layers.Reshape((1, 1, num_classes), name="label_pixel")(labels)
        label_planes = keras.layers.UpSampling2D(input_shape[:2], name="label_planes")(label_planes)
        features = keras.layers.Concatenate(name="with_labels")([images, label_planes])
    for index, channels in enumerate(filters):
        features = keras.layers.Conv2D(
            channels,
            kernel_size,
            strides=2,
            padding="same",
            activation=activation,
            name=f"conv_{index}",
        )(features)
    features = keras.layers.Flatten(name="flatten")(features)
    if hidden_units:
        features = keras.layers.Dense(hidden_units, activation=activation, name="hidden")(features)
    loc = keras.layers.Dense(latent_dim, name="loc")(features)
    raw_scale = keras.layers.Dense(latent_dim, name="raw_scale")(features)
    outputs = [loc, raw_scale]
    if context_units:
        outputs.append(keras.layers.Dense(context_units, name="context")(features))
    return keras.Model(inputs, outputs, name=name)
