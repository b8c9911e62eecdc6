"""Training settings that need no TensorFlow: the command line parses its flags with them first.

`tfvae --help` and flag errors must answer without the seconds TensorFlow takes to import, so
the names and checks the parser and `TrainConfig` use live here, importing nothing heavy.
"""

from __future__ import annotations

STRATEGY_NAMES = ("default", "one_device", "mirrored", "multi_worker", "tpu")
MIXED_PRECISION_POLICIES = ("mixed_float16", "mixed_bfloat16")
#: Examples in the training data's shuffle buffer (`tfvae.data.load`'s default).
DEFAULT_SHUFFLE_BUFFER = 10_000


def check_mixed_precision(policy: str | None) -> str | None:
    """Returns `policy` if it is None or one of `MIXED_PRECISION_POLICIES`.

    Raises:
        ValueError: any other value.
    """
    if policy is not None and policy not in MIXED_PRECISION_POLICIES:
        raise ValueError(
            f"Expected mixed_precision to be one of {list(MIXED_PRECISION_POLICIES)} or None. "
            f"Received: mixed_precision={policy!r}"
        )
    return policy


def check_training_options(strategy: str, mixed_precision: str | None, jit_compile: bool) -> None:
    """Checks the distribution options of a training run (`tfvae train`) without acting on them.

    XLA (`jit_compile=True`) is allowed only with the `default` and `one_device` strategies:
    under a strategy Keras compiles the whole replicated step, `strategy.run` included, as one
    XLA function, which cannot reach the other replicas' variables (MirroredStrategy fails with
    "Trying to access resource ... located in device ..."), and TPUStrategy compiles with XLA
    anyway.

    Raises:
        ValueError: an unknown strategy or policy, a non-bool jit_compile, or XLA with a
            distributing strategy.
    """
    if strategy not in STRATEGY_NAMES:
        raise ValueError(f"Unknown strategy '{strategy}'. Expected one of {list(STRATEGY_NAMES)}.")
    check_mixed_precision(mixed_precision)
    if not isinstance(jit_compile, bool):
        raise ValueError(
            f"Expected jit_compile to be a bool. Received: jit_compile={jit_compile!r}"
        )
    if jit_compile and strategy not in ("default", "one_device"):
        raise ValueError(
            "Expected jit_compile (XLA) only with strategy 'default' or 'one_device': Keras "
            "compiles the whole replicated step as one XLA function, which fails under "
            f"'{strategy}'. Received: jit_compile=True with strategy '{strategy}'."
        )
