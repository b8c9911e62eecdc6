"""Evaluation precision: a bfloat16 copy of a decoder for the importance-weighted estimate.

`VAE.importance_weighted_nll(..., decode_precision="bfloat16")` decodes its K x B samples with a
copy of the decoder whose hidden layers compute in bfloat16 (float32 weights, cast per call:
Keras's "mixed_bfloat16" policy) while its output layer, the likelihood, the prior, the
posterior and the importance weights stay float32. On a CPU with AVX512-BF16 the decodes run
faster; the estimate moves by the rounding of the hidden activations, which
`benchmarks/eval_throughput.py` measures beside the speed.
"""

from __future__ import annotations

import keras

#: The `decode_precision` values `importance_weighted_nll` takes.
DECODE_PRECISIONS = ("float32", "bfloat16")


def check_decode_precision(decode_precision) -> str:
    """Returns `decode_precision` if it is one of `DECODE_PRECISIONS`.

    Raises:
        ValueError: any other value, naming the choices.
    """
    if decode_precision not in DECODE_PRECISIONS:
        raise ValueError(
            f"Expected decode_precision to be one of {list(DECODE_PRECISIONS)}. "
            f"Received: decode_precision={decode_precision!r}"
        )
    return decode_precision


def bfloat16_copy(network: keras.Model) -> keras.Model:
    """A copy of a functional `network` computing in bfloat16, except its output layer.

    Every layer but the last gets the "mixed_bfloat16" dtype policy (float32 variables, bfloat16
    computation); the last layer (which emits the likelihood's parameters) stays float32, so the
    output is float32. The copy has new variables: give it the network's weights with
    `copy.set_weights(network.get_weights())` before each use.

    Args:
        network: a functional `keras.Model` (the decoder), whose layers have `get_config`.

    Returns:
        A new functional `keras.Model` of the same structure and inputs.
    """
    output_layers = {output._keras_history.operation.name for output in network.outputs}

    def with_policy(layer):
        config = layer.get_config()
        config["dtype"] = "float32" if layer.name in output_layers else "mixed_bfloat16"
        return layer.__class__.from_config(config)

    return keras.models.clone_model(network, clone_function=with_policy)


class EvaluationDecoder:
    """Holds a model's bfloat16 decoder copy, outside Keras's layer tracking (so it is never
    saved, counted among the model's weights, or exported)."""

    def __init__(self):
        self.copy = None
        self.active = False
