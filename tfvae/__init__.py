"""tfvae: variational autoencoders for Keras 3 on TensorFlow.

The public names are imported on first use (PEP 562), so `import tfvae` and the command line's
`--help` do not pay TensorFlow's start-up; the first use of a name that needs TensorFlow checks
that Keras runs on the TensorFlow backend (ImportError otherwise).
"""

import importlib

from tfvae.version import __version__

#: Public name -> the module that defines it (a module itself when the name is the module's).
_PUBLIC_NAMES = {
    "ConditionalVAE": "tfvae.models",
    "VAE": "tfvae.models",
    "TwoLayerVAE": "tfvae.models",
    "build_conv_two_layer_vae": "tfvae.models",
    "build_conv_decoder": "tfvae.models",
    "build_conv_encoder": "tfvae.models",
    "build_conv_vae": "tfvae.models",
    "diagnostics": "tfvae.diagnostics",
    "distributions": "tfvae.distributions",
    "export_saved_model": "tfvae.export",
    "interrupts": "tfvae.interrupts",
    "objectives": "tfvae.objectives",
    "schedules": "tfvae.schedules",
    # Submodules that `import tfvae` used to load, so `tfvae.export.read_metadata` still works.
    "export": "tfvae.export",
    "models": "tfvae.models",
}

__all__ = [
    "ConditionalVAE",
    "TwoLayerVAE",
    "VAE",
    "__version__",
    "build_conv_two_layer_vae",
    "build_conv_decoder",
    "build_conv_encoder",
    "build_conv_vae",
    "diagnostics",
    "distributions",
    "export_saved_model",
    "interrupts",
    "objectives",
    "schedules",
]


def __getattr__(name: str):
    module_name = _PUBLIC_NAMES.get(name)
    if module_name is None:
        raise AttributeError(f"module 'tfvae' has no attribute '{name}'")
    from tfvae._backend import require_tensorflow_backend  # noqa: PLC0415

    require_tensorflow_backend()
    module = importlib.import_module(module_name)
    value = module if module_name == f"tfvae.{name}" else getattr(module, name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
