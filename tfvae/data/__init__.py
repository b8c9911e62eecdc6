"""Data sources for tfvae."""

from tfvae.data.builtin import load_digits

__all__ = ["load_digits"]
