"""Makes sure Keras runs on the TensorFlow backend before anything else in tfvae imports it."""

import os

_SUPPORTED_BACKEND = "tensorflow"


def require_tensorflow_backend() -> None:
    """Raises ImportError unless Keras is (or will be) on the TensorFlow backend.

    tfvae computes its objective with TensorFlow Probability and uses `tf.distribute`
    and SavedModel export, so it cannot run on JAX, PyTorch or NumPy.

    Raises:
        ImportError: `KERAS_BACKEND` (or `~/.keras/keras.json`) names another backend.
    """
    requested = os.environ.get("KERAS_BACKEND")
    if requested is not None and requested != _SUPPORTED_BACKEND:
        raise ImportError(
            "tfvae needs Keras on the TensorFlow backend. Expected KERAS_BACKEND="
            f"'{_SUPPORTED_BACKEND}' (or unset). Received: KERAS_BACKEND='{requested}'."
        )
    import keras  # noqa: PLC0415 (must come after the environment check)

    active = keras.backend.backend()
    if active != _SUPPORTED_BACKEND:
        raise ImportError(
            f"tfvae needs Keras on the TensorFlow backend. Expected backend "
            f"'{_SUPPORTED_BACKEND}'. Received: '{active}' (set KERAS_BACKEND=tensorflow "
            "or change ~/.keras/keras.json)."
        )
