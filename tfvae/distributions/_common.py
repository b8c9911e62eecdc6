"""What the likelihoods and priors share: their float32 dtype and the name resolver of a registry."""

from __future__ import annotations

import inspect

import keras

# Likelihood and KL are computed in float32 even under a mixed-precision policy: log-densities
# summed over thousands of pixels lose too much in float16.
DISTRIBUTION_DTYPE = "float32"


def resolve(identifier, registry: dict, base: type, what: str, settings: dict | None = None):
    """Returns an instance of `base` from a registry name, an instance or a serialized config.

    `settings` are constructor arguments, only with a name.
    """
    if settings and not isinstance(identifier, str):
        raise ValueError(
            f"Expected {what} settings {sorted(settings)} only together with a {what} name. "
            f"Received: {identifier!r}"
        )
    if isinstance(identifier, base):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower().replace("-", "_")
        if key not in registry:
            raise ValueError(
                f"Unknown {what} '{identifier}'. Expected one of {sorted(registry)} "
                f"or a tfvae.distributions.{base.__name__} instance."
            )
        settings = settings or {}
        accepted = {
            name for name, parameter in inspect.signature(registry[key]).parameters.items()
            if parameter.kind is not inspect.Parameter.VAR_KEYWORD
        }
        unknown = sorted(set(settings) - accepted)
        if unknown:
            raise ValueError(
                f"The {what} '{key}' takes no setting(s) {unknown}; it takes {sorted(accepted)}. "
                f"Received: {settings!r}"
            )
        return registry[key](**settings)
    if isinstance(identifier, dict):
        resolved = keras.saving.deserialize_keras_object(identifier)
        if isinstance(resolved, base):
            return resolved
    raise ValueError(
        f"Expected the {what} as a name in {sorted(registry)} or a "
        f"tfvae.distributions.{base.__name__}. Received: {identifier!r}"
    )
