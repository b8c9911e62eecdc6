"""Data errors: `DataError`, and turning a bad file met inside a tf.data pipeline into one.

A file that only turns out to be unreadable while a pipeline runs (an image folder is not
decoded up front) fails inside TensorFlow, far from the Python code that knows the file. The
pipeline then raises an `InvalidArgumentError` whose message carries a marked `DataError`
message; `translate_pipeline_errors` turns it back into that `DataError`.
"""

from __future__ import annotations

import codecs
import contextlib
import re

# Around a message in a TensorFlow error, so it can be found in TF's multi-line text.
_START, _END = "<<tfvae.DataError:", ":tfvae.DataError>>"
_MARKED = re.compile(re.escape(_START) + "(.*?)" + re.escape(_END), re.DOTALL)


class DataError(ValueError):
    """A data file or folder that cannot be read as images: corrupt, truncated or unreadable.

    The message names the file and what is wrong with it. It is a `ValueError`, so code that
    catches bad input as `ValueError` catches it too (the `tfvae` command line prints it as one
    line and exits with status 2).
    """


def marked_message(*parts):
    """A scalar string tensor joining `parts` (strings or string tensors), marked for
    `translate_pipeline_errors`.

    Pass it to `tf.debugging.Assert` inside a pipeline; the failure becomes a `DataError`
    with this message.
    """
    import tensorflow as tf  # noqa: PLC0415 (DataError itself needs no TensorFlow)

    return tf.strings.join([_START, *parts, _END])


def data_error_from(error) -> DataError | None:
    """The `DataError` marked in a TensorFlow error's message (a `tf.errors.OpError`), or None."""
    found = _MARKED.search(error.message or "")
    if found is None:
        return None
    # tf.debugging.Assert escapes quotes, backslashes and control bytes; UTF-8 passes as is.
    text = codecs.escape_decode(found.group(1).encode("utf-8"))[0]
    return DataError(text.decode("utf-8", "replace"))


@contextlib.contextmanager
def translate_pipeline_errors():
    """Re-raises a marked TensorFlow error from a tf.data pipeline as its `DataError`.

    Wrap the code that iterates a `tfvae.data` dataset (`fit`, `evaluate`, a loop). Other
    errors pass through unchanged.

    Raises:
        DataError: a file the pipeline could not read, named in the message.
    """
    import tensorflow as tf  # noqa: PLC0415

    try:
        yield
    except tf.errors.OpError as error:
        data_error = data_error_from(error)
        if data_error is None:
            raise
        raise data_error from None
