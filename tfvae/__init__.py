"""tfvae: variational autoencoders for Keras 3 on TensorFlow."""

from tfvae._backend import require_tensorflow_backend

require_tensorflow_backend()

from tfvae import distributions, objectives  # noqa: E402
from tfvae.export import export_saved_model  # noqa: E402
from tfvae.models import VAE, build_conv_decoder, build_conv_encoder, build_conv_vae  # noqa: E402
from tfvae.version import __version__  # noqa: E402

__all__ = [
    "VAE",
    "__version__",
    "build_conv_decoder",
    "build_conv_encoder",
    "build_conv_vae",
    "distributions",
    "export_saved_model",
    "objectives",
]
