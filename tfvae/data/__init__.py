"""Data for tfvae: tfds datasets by name, local files and built-in digits through one pipeline."""

from tfvae.data.arguments import add_data_arguments, load_from_arguments
from tfvae.data.builtin import load_digits
from tfvae.data.errors import DataError, translate_pipeline_errors
from tfvae.data.pipeline import DataSplits, load

__all__ = [
    "DataError",
    "DataSplits",
    "add_data_arguments",
    "load",
    "load_digits",
    "load_from_arguments",
    "translate_pipeline_errors",
]
