"""Evaluation precision: a bfloat16 view of a decoder for the importance-weighted estimate.

`VAE.importance_weighted_nll(..., decode_precision="bfloat16")` decodes its K x B samples with
`bfloat16_copy(decoder)`: the same network, computing every layer in bfloat16 with the decoder's
own (float32) variables cast at each call, its output cast back to float32. The prior, the
posterior, the likelihood's log-probabilities and the importance weights stay float32.

The speed comes from what oneDNN runs fast on a CPU with AMX or AVX512-BF16: bfloat16 matrix
products and convolutions with their bias and activation fused in. TensorFlow fuses a `Conv2D`
or `MatMul` with a following `BiasAdd` and activation, but not a transposed convolution, and its
stand-alone bfloat16 element-wise ops and casts are slow. So a `Conv2DTranspose` with "same"
padding is computed as the equivalent sub-pixel convolution (Shi et al., 2016): one `Conv2D` over
the input, producing the s x s output phases as channels, with the bias and activation fused,
then `depth_to_space`. The sub-pixel form is exact (`float32_copy` checks it in float32);
`benchmarks/eval_throughput.py` measures the speed and the estimate's shift.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

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


def _transposed_taps(kernel_size: int, stride: int, pad_before: int) -> tuple[dict, int, int]:
    """The taps of a 1-D "same" transposed convolution in sub-pixel form.

    Output position j = stride * m + p (phase p) receives input m - d through kernel tap
    k = stride * d + p + pad_before, for every d that puts k inside the kernel.

    Returns:
        `({(p, d): k}, d_min, d_max)`.
    """
    taps = {}
    for phase in range(stride):
        for offset in range(-kernel_size, kernel_size + 1):
            tap = stride * offset + phase + pad_before
            if 0 <= tap < kernel_size:
                taps[(phase, offset)] = tap
    offsets = [offset for _, offset in taps]
    return taps, min(offsets), max(offsets)


def _sub_pixel_plan(kernel_shape, strides):
    """Index table and paddings of the sub-pixel form of a "same" `Conv2DTranspose`.

    Args:
        kernel_shape: `(kh, kw, out_channels, in_channels)`, Keras's transposed-conv kernel.
        strides: `(s, s)`.

    Returns:
        `(index, paddings)`: int32 `[span_h, span_w, in, s * s * out]` indices into the flat
        kernel transposed to `[kh, kw, in, out]` with one zero appended (index `kh*kw*in*out`
        means zero), and the `[[top, bottom], [left, right]]` input paddings.
    """
    kernel_h, kernel_w, out_channels, in_channels = kernel_shape
    stride = strides[0]
    plans = []
    for size in (kernel_h, kernel_w):
        taps, low, high = _transposed_taps(size, stride, max(size - stride, 0) // 2)
        plans.append((taps, low, high))
    (taps_h, low_h, high_h), (taps_w, low_w, high_w) = plans
    zero = kernel_h * kernel_w * in_channels * out_channels
    index = np.full((high_h - low_h + 1, high_w - low_w + 1, in_channels, stride, stride, out_channels),
                    zero, np.int32)
    channels_in = np.arange(in_channels)[:, None]
    channels_out = np.arange(out_channels)[None, :]
    for (phase_h, offset_h), tap_h in taps_h.items():
        for (phase_w, offset_w), tap_w in taps_w.items():
            flat = ((tap_h * kernel_w + tap_w) * in_channels + channels_in) * out_channels + channels_out
            index[high_h - offset_h, high_w - offset_w, :, phase_h, phase_w, :] = flat
    shape = index.shape
    index = index.reshape(shape[0], shape[1], in_channels, stride * stride * out_channels)
    return index, [[high_h, -low_h], [high_w, -low_w]]


class _Reference:
    """Holds a layer without Keras tracking it (as a sublayer whose variables would be counted)."""

    def __init__(self, layer):
        self.layer = layer


class _PrecisionView(keras.layers.Layer):
    """Computes a layer of the source network in `compute` precision from the source's variables.

    Dense, Conv2D and "same" Conv2DTranspose layers (channels last, no dilation, square strides)
    get a fused matmul or convolution, bias and activation (the transposed convolution in
    sub-pixel form); any other layer is called itself, on inputs cast to float32, with its output
    cast to `compute` (exact, not faster).
    """

    def __init__(self, source: keras.layers.Layer, compute: str, **kwargs):
        # No autocast: the inputs arrive in `compute` already (a cast back and forth is slow).
        super().__init__(name=f"{source.name}_{compute}", dtype="float32", autocast=False, **kwargs)
        self._source = _Reference(source)  # not tracked: the view owns no variables
        self._compute = tf.as_dtype(compute)
        self._kind = self._kind_of(source)
        if self._kind == "conv_transpose":
            index, self._paddings = _sub_pixel_plan(tuple(source.kernel.shape), source.strides)
            self._index = tf.constant(index)

    @staticmethod
    def _kind_of(layer) -> str:
        conv_like = (
            getattr(layer, "data_format", "channels_last") == "channels_last"
            and tuple(getattr(layer, "dilation_rate", (1, 1))) == (1, 1)
            and getattr(layer, "groups", 1) == 1
        )
        if type(layer) is keras.layers.Dense:
            return "dense"
        if type(layer) is keras.layers.Conv2D and conv_like:
            return "conv"
        if (
            type(layer) is keras.layers.Conv2DTranspose
            and conv_like
            and layer.padding == "same"
            and layer.output_padding is None
            and layer.strides[0] == layer.strides[1]
        ):
            return "conv_transpose"
        return "other"

    def _weight(self, variable):
        return tf.cast(tf.convert_to_tensor(variable), self._compute)

    def _finish(self, outputs, source):
        if source.use_bias:
            outputs = tf.nn.bias_add(outputs, self._weight(source.bias))
        return source.activation(outputs)

    def call(self, *inputs, **kwargs):
        source = self._source.layer
        if self._kind == "other":
            cast = tf.nest.map_structure(
                lambda x: tf.cast(x, "float32") if x.dtype.is_floating else x, inputs
            )
            outputs = source(*cast, **kwargs)
            return tf.nest.map_structure(
                lambda y: tf.cast(y, self._compute) if y.dtype.is_floating else y, outputs
            )
        inputs = tf.cast(inputs[0], self._compute)
        if self._kind == "dense":
            return self._finish(tf.matmul(inputs, self._weight(source.kernel)), source)
        if self._kind == "conv":
            outputs = tf.nn.conv2d(inputs, self._weight(source.kernel), source.strides,
                                   source.padding.upper())
            return self._finish(outputs, source)
        # The sub-pixel form: one convolution producing the stride x stride phases as channels.
        kernel = tf.transpose(self._weight(source.kernel), [0, 1, 3, 2])
        flat = tf.concat([tf.reshape(kernel, [-1]), tf.zeros([1], self._compute)], 0)
        sub_pixel_kernel = tf.gather(flat, self._index)
        padded = tf.pad(inputs, [[0, 0], *self._paddings, [0, 0]])
        outputs = tf.nn.conv2d(padded, sub_pixel_kernel, 1, "VALID")
        if source.use_bias:
            stride = source.strides[0]
            outputs = tf.nn.bias_add(outputs, tf.tile(self._weight(source.bias), [stride * stride]))
        outputs = source.activation(outputs)
        return tf.nn.depth_to_space(outputs, source.strides[0]) if source.strides[0] > 1 else outputs


def precision_copy(network: keras.Model, compute: str) -> keras.Model:
    """A functional network of `network`'s structure computing in `compute`, on its variables.

    Each layer becomes a view (`_PrecisionView`) that reads the source layer's current variables
    at every call (so the copy follows training, and owns no weights); the outputs are cast to
    float32.

    Args:
        network: a functional `keras.Model` (the decoder).
        compute: "bfloat16" (or "float32", to check the sub-pixel forms exactly).

    Returns:
        A new functional `keras.Model` with `network`'s inputs.
    """

    def view(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return layer
        return _PrecisionView(layer, compute)

    copy = keras.models.clone_model(network, clone_function=view)
    outputs = tf.nest.map_structure(lambda y: keras.ops.cast(y, "float32"), copy.outputs)
    return keras.Model(copy.input, outputs[0] if len(outputs) == 1 else outputs, name=f"{network.name}_{compute}")


def bfloat16_copy(network: keras.Model) -> keras.Model:
    """`precision_copy(network, "bfloat16")`: the decoder `decode_precision="bfloat16"` uses."""
    return precision_copy(network, "bfloat16")


class EvaluationDecoder:
    """Holds a model's bfloat16 decoder copy, outside Keras's layer tracking (so it is never
    saved, counted among the model's weights, or exported)."""

    def __init__(self):
        self.copy = None
        self.active = False
