"""Quality: tfvae's default configuration against the keras.io-style baseline, on real MNIST digits.

Both models train on the first 8,000 images of the MNIST test set with dynamic binarization (a
fresh Bernoulli sample of each image every epoch), for the same epochs and batch size, and are
scored on the last 2,000 images under one fixed binarization (seed 1234) with the
importance-weighted estimate of -log p(x) (K samples, Burda et al. 2015).

Needs: the MNIST test set's images, t10k-images-idx3-ubyte.gz, in ../shared/data/mnist-t10k/
beside the repository (or given with --images PATH). Without them the script downloads nothing:
it stops before training anything, with an error naming the missing file (exit status 2).

Usage: python benchmarks/quality.py [--epochs 10] [--samples 1000] [--images PATH]
Target: tfvae's default is better (lower NLL) than the baseline by at least 3 nats.
Options such as --latent-dim override tfvae's defaults, for exploring other configurations.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from baselines import build_minimal_vae  # noqa: E402

from tfvae.data import load  # noqa: E402
from tfvae.data.idx import read_idx  # noqa: E402
from tfvae.models import VAE, build_conv_vae  # noqa: E402
from tfvae.training import TrainConfig  # noqa: E402

MNIST_IMAGES = Path(__file__).resolve().parents[2] / "shared/data/mnist-t10k/t10k-images-idx3-ubyte.gz"
NUM_TRAIN = 8000
EVALUATION_SEED = 1234


def baseline_as_tfvae(baseline) -> keras.Model:
    """The hand-written baseline's networks inside a tfvae VAE, to score it the same way.

    The baseline's encoder outputs (z_mean, z_log_var) and its decoder logits; mapping the
    log-variance to tfvae's softplus scale parameterization gives exactly the same q(z|x) and
    p(x|z), so tfvae's importance-weighted estimator scores the baseline's own model.
    """
    images = keras.Input(baseline.encoder.input_shape[1:])
    z_mean, z_log_var = baseline.encoder(images)
    # softplus(raw) + 1e-5 = exp(z_log_var / 2)  =>  raw = log(expm1(exp(z_log_var / 2) - 1e-5))
    scale = keras.ops.exp(0.5 * z_log_var)
    raw_scale = keras.ops.log(keras.ops.expm1(keras.ops.maximum(scale - 1e-5, 1e-7)))
    return VAE(keras.Model(images, [z_mean, raw_scale]), baseline.decoder, likelihood="bernoulli")


def main(argv=None) -> None:
    # The network measured in the README: tfvae's MNIST-sized conv VAE (latent 8, conv 32-64, no
    # dense layer, Adam 1e-3, batch 64), pinned so that the quick start's own defaults (tuned for
    # the 8x8 digits) do not change this benchmark.
    defaults = TrainConfig(latent_dim=8, filters=(32, 64), hidden_units=None, learning_rate=1e-3, batch_size=64)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--samples", type=int, default=1000, help="K importance samples")
    parser.add_argument("--latent-dim", type=int, default=defaults.latent_dim)
    parser.add_argument("--filters", default=",".join(map(str, defaults.filters)))
    parser.add_argument("--hidden-units", type=int, default=defaults.hidden_units, help="a dense layer of this width (default: none)")
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--images", type=Path, default=MNIST_IMAGES, help="MNIST t10k images, IDX (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.images.is_file():
        parser.error(
            f"Expected the MNIST test images (t10k-images-idx3-ubyte.gz, IDX format) at {args.images}; "
            "no such file. Put them there or pass --images PATH."
        )
    config = dataclasses.replace(
        defaults, latent_dim=args.latent_dim, filters=tuple(int(f) for f in args.filters.split(",")),
        hidden_units=args.hidden_units, learning_rate=args.learning_rate, batch_size=args.batch_size,
    )

    images = read_idx(args.images)[..., np.newaxis]
    evaluation = (np.random.default_rng(EVALUATION_SEED).random(images[NUM_TRAIN:].shape) < images[NUM_TRAIN:] / 255.0).astype("float32")
    with tempfile.TemporaryDirectory() as folder:
        arrays = Path(folder) / "mnist_split.npz"
        np.savez(arrays, x_train=images[:NUM_TRAIN], x_test=images[NUM_TRAIN:])
        splits = load(str(arrays), batch_size=config.batch_size, binarize="dynamic", seed=0)

        keras.utils.set_random_seed(0)
        models = {
            "tfvae default": build_conv_vae(
                splits.image_shape, config.latent_dim, filters=config.filters,
                hidden_units=config.hidden_units, likelihood=config.likelihood, seed=0,
            ),
        }
        models["tfvae default"].compile(optimizer=keras.optimizers.Adam(config.learning_rate))
        if not args.skip_baseline:
            models["keras.io baseline"] = build_minimal_vae(latent_dim=16, seed=0)
        results = {}
        for name, model in models.items():
            started = time.perf_counter()
            model.fit(splits.train, epochs=args.epochs, verbose=0, shuffle=False)
            train_seconds = time.perf_counter() - started
            scorer = model if name.startswith("tfvae") else baseline_as_tfvae(model)
            started = time.perf_counter()
            nll = scorer.importance_weighted_nll(evaluation, num_samples=args.samples, seed=EVALUATION_SEED)
            elbo = np.mean([scorer.compute_elbo_terms(evaluation)["elbo"].numpy().mean() for _ in range(5)])
            results[name] = (nll.mean(), -elbo, train_seconds, time.perf_counter() - started)
            print(f"{name}: done ({train_seconds:.0f} s training)", flush=True)

    print(f"\nMNIST test set: train on the first {NUM_TRAIN} (dynamic binarization), score the last "
          f"{len(evaluation)} (fixed binarization, seed {EVALUATION_SEED}); {args.epochs} epochs, batch "
          f"{config.batch_size}; TensorFlow {tf.__version__}")
    print(f"tfvae default: latent {config.latent_dim}, filters {config.filters}, hidden {config.hidden_units}, "
          f"Adam {config.learning_rate}; baseline: keras.io architecture, latent 16, Adam 0.001\n")
    print(f"{'model':<20} {'IW NLL K=' + str(args.samples):>14} {'-ELBO':>9} {'train s':>8} {'score s':>8}")
    for name, (nll, negative_elbo, train_seconds, score_seconds) in results.items():
        print(f"{name:<20} {nll:14.2f} {negative_elbo:9.2f} {train_seconds:8.0f} {score_seconds:8.0f}")
    if len(results) == 2:
        gap = results["keras.io baseline"][0] - results["tfvae default"][0]
        print(f"\ntfvae default is better by {gap:.2f} nats (target >= 3: {'met' if gap >= 3 else 'NOT met'})")


if __name__ == "__main__":
    main()
