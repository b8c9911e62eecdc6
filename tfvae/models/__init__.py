"""Model builders and the VAE."""

from tfvae._backend import require_tensorflow_backend

# Direct imports (`from tfvae.models import VAE`) are checked too, not only `tfvae.VAE`.
require_tensorflow_backend()

from tfvae.models.conditional import ConditionalVAE  # noqa: E402
from tfvae.models.decoder import build_conv_decoder  # noqa: E402
from tfvae.models.encoder import build_conv_encoder  # noqa: E402
from tfvae.models.two_layer import TwoLayerVAE, build_conv_two_layer_vae  # noqa: E402
from tfvae.models.vae import VAE, build_conv_vae  # noqa: E402

__all__ = [
    "ConditionalVAE",
    "VAE",
    "TwoLayerVAE",
    "build_conv_decoder",
    "build_conv_encoder",
    "build_conv_two_layer_vae",
    "build_conv_vae",
]
