"""Latency of `decode` and `reconstruct` through the exported SavedModel vs the Keras model.

Run: `python benchmarks/export_latency.py [--image-shape 28,28,1] [--latent-dim 16]`. Both paths are
timed in this one process, interleaved round by round (so machine load hits both alike), after a
warm-up; each figure is the median over rounds (30 by default) of the time per call (one call per
round for batch 256, the mean of 20 for batch 1). Keras is timed two
ways: calling the model (`vae(x)`, `likelihood.mean(decoder(z))`), as a user does, and
`predict_on_batch` (Keras's compiled predict function). Target: SavedModel / Keras <= 1.05.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfvae  # noqa: E402


def _seconds_per_call(function, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        result = function()
    # Results are eager tensors: reading one waits for the computation to finish.
    np.asarray(result if not isinstance(result, dict) else next(iter(result.values())))
    return (time.perf_counter() - started) / calls


def _compare(candidates: dict, rounds: int, calls: int) -> dict:
    for function in candidates.values():  # warm-up: tracing, first allocations
        _seconds_per_call(function, 3)
    samples = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, function in candidates.items():
            samples[name].append(_seconds_per_call(function, calls))
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-shape", default="28,28,1", help="H,W,C (default: %(default)s)")
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    image_shape = tuple(int(d) for d in args.image_shape.split(","))

    keras.utils.set_random_seed(0)
    vae = tfvae.build_conv_vae(image_shape, args.latent_dim)
    with tempfile.TemporaryDirectory() as directory:
        path = tfvae.export_saved_model(vae, os.path.join(directory, "export"))
        exported = tf.saved_model.load(str(path))

    print(f"tfvae {tfvae.__version__}, TensorFlow {tf.__version__}, Keras {keras.__version__}; "
          f"conv VAE {image_shape}, latent {args.latent_dim}; {os.cpu_count()} CPUs; "
          f"median of {args.rounds} interleaved rounds")
    print(f"{'endpoint':<12}{'batch':>6}{'SavedModel ms':>15}{'Keras call ms':>15}"
          f"{'Keras predict ms':>18}{'ratio call':>12}{'ratio predict':>15}")
    mean_image_decoder = keras.Sequential([vae.decoder, keras.layers.Lambda(vae.likelihood.mean)])
    rng = np.random.default_rng(0)
    for batch in (1, 256):
        calls = 20 if batch == 1 else 1  # calls per timing; one timing per path and round
        images = tf.constant(rng.random((batch, *image_shape), dtype=np.float32))
        z = tf.constant(rng.normal(size=(batch, args.latent_dim)).astype(np.float32))
        cases = {
            "decode": {
                "savedmodel": lambda z=z: exported.decode(z),
                "keras_call": lambda z=z: vae.likelihood.mean(vae.decoder(z, training=False)),
                "keras_predict": lambda z=z: mean_image_decoder.predict_on_batch(z),
            },
            "reconstruct": {
                "savedmodel": lambda x=images: exported.reconstruct(x),
                "keras_call": lambda x=images: vae(x, training=False),
                "keras_predict": lambda x=images: vae.predict_on_batch(x),
            },
        }
        for endpoint, candidates in cases.items():
            t = _compare(candidates, args.rounds, calls)
            print(f"{endpoint:<12}{batch:>6}{1e3 * t['savedmodel']:>15.3f}"
                  f"{1e3 * t['keras_call']:>15.3f}{1e3 * t['keras_predict']:>18.3f}"
                  f"{t['savedmodel'] / t['keras_call']:>12.3f}"
                  f"{t['savedmodel'] / t['keras_predict']:>15.3f}")


if __name__ == "__main__":
    main()
