"""Model builders and the VAE."""

from tfvae.models.decoder import build_conv_decoder
from tfvae.models.encoder import build_conv_encoder
from tfvae.models.vae import VAE, build_conv_vae

__all__ = ["VAE", "build_conv_decoder", "build_conv_encoder", "build_conv_vae"]
