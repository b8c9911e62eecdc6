"""The functional encoder and decoder builders: shapes and argument checks."""

import numpy as np
import pytest

from tfvae.models import build_conv_decoder, build_conv_encoder


@pytest.mark.parametrize("image_shape", [(28, 28, 1), (32, 32, 3), (64, 64, 3)])
def test_encoder_and_decoder_shapes(image_shape):
    encoder = build_conv_encoder(image_shape, latent_dim=6)
    decoder = build_conv_decoder(6, image_shape)
    images = np.random.rand(2, *image_shape).astype("float32")
    loc, raw_scale = encoder(images)
    assert loc.shape == (2, 6) and raw_scale.shape == (2, 6)
    assert decoder(loc).shape == (2, *image_shape)


def test_hidden_units_and_three_filters():
    encoder = build_conv_encoder((32, 32, 3), 4, filters=(8, 16, 32), hidden_units=20)
    decoder = build_conv_decoder(4, (32, 32, 3), filters=(32, 16, 8), hidden_units=20)
    assert encoder.get_layer("hidden").units == 20
    assert encoder.get_layer("conv_2").output.shape[1:3] == (4, 4)
    assert decoder.get_layer("reshape").output.shape[1:] == (4, 4, 32)
    assert decoder.output.shape == (None, 32, 32, 3)


@pytest.mark.parametrize(
    "builder",
    [
        lambda shape: build_conv_encoder(shape, 2),
        lambda shape: build_conv_decoder(2, shape),
    ],
)
def test_shapes_not_divisible_are_clear_errors(builder):
    with pytest.raises(ValueError, match=r"divisible by 2\*\*len\(filters\) = 4.*Received: .*\(30, 28, 1\)"):
        builder((30, 28, 1))
    with pytest.raises(ValueError, match=r"\(height, width, channels\).*Received: .*\(28, 28\)"):
        builder((28, 28))


@pytest.mark.parametrize("latent_dim", [0, -3, 2.5, True, "8"])
def test_latent_dim_must_be_a_positive_integer(latent_dim):
    with pytest.raises(ValueError, match=r"latent_dim to be an integer >= 1. Received: latent_dim="):
        build_conv_encoder((28, 28, 1), latent_dim)
    with pytest.raises(ValueError, match=r"latent_dim to be an integer >= 1"):
        build_conv_decoder(latent_dim, (28, 28, 1))


@pytest.mark.parametrize("filters", [(), (32, 0), "abc", 32])
def test_filters_must_be_positive_integers(filters):
    with pytest.raises(ValueError, match=r"Expected filters to be a non-empty sequence"):
        build_conv_encoder((32, 32, 1), 2, filters=filters)
