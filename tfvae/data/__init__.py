"""Data for tfvae: tfds datasets by name, local files and built-in digits through one pipeline.

The names are imported on first use (PEP 562): `tfvae.data.arguments`, which the command line
parses with, needs no TensorFlow.
"""

import importlib

#: Public name -> the module that defines it.
_PUBLIC_NAMES = {
    "DataError": "tfvae.data.errors",
    "DataSplits": "tfvae.data.pipeline",
    "EVALUATION_SEED": "tfvae.data.pipeline",
    "HeldOutData": "tfvae.data.pipeline",
    "add_data_arguments": "tfvae.data.arguments",
    "load": "tfvae.data.pipeline",
    "load_digits": "tfvae.data.builtin",
    "load_from_arguments": "tfvae.data.arguments",
    "load_held_out": "tfvae.data.pipeline",
    "translate_pipeline_errors": "tfvae.data.errors",
}

__all__ = sorted(_PUBLIC_NAMES)


def __getattr__(name: str):
    module_name = _PUBLIC_NAMES.get(name)
    if module_name is None:
        raise AttributeError(f"module 'tfvae.data' has no attribute '{name}'")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
