"""Tuning overhead: seconds per keras-tuner trial of VAEHyperModel against a plain build + fit.

One "trial" of each kind trains the same model (digits, the given latent size, filters 32,64)
for the same epochs on the same data. The tuner's trial adds what keras-tuner does around it
(clearing the session, its callbacks, saving the best epoch's weights, the oracle's files). The
two kinds alternate in one process, so load on the machine affects both alike; the median of
the rounds is printed.

Usage: python benchmarks/tuning_overhead.py [--rounds 3] [--epochs 3]
Target: a tuner trial takes <= 1.2x the plain build + fit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfvae  # noqa: E402
from tfvae.training import TrainConfig, load_data  # noqa: E402
from tfvae.tuning import VAEHyperModel, make_tuner  # noqa: E402


def plain_trial(data, latent_dim: int, epochs: int) -> float:
    started = time.perf_counter()
    keras.utils.set_random_seed(0)
    vae = tfvae.build_conv_vae(data.image_shape, latent_dim, seed=0)
    vae.compile(optimizer=keras.optimizers.Adam(1e-3))
    vae.fit(data.train, validation_data=data.validation, epochs=epochs, verbose=0, shuffle=False)
    return time.perf_counter() - started


def tuner_trial(data, latent_dim: int, epochs: int, directory: str) -> float:
    started = time.perf_counter()
    hypermodel = VAEHyperModel(data.image_shape, latent_dims=(latent_dim,))
    tuner = make_tuner(hypermodel, "random", directory, max_trials=1, max_epochs=epochs, overwrite=True)
    tuner.oracle.verbose = 0
    tuner.search(data.train, validation_data=data.validation, epochs=epochs, verbose=0, shuffle=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--latent-dim", type=int, default=8)
    args = parser.parse_args()
    data = load_data(TrainConfig())
    plain_trial(data, args.latent_dim, 1)  # warm-up: imports, first tracing
    samples = {"plain": [], "tuner": []}
    with tempfile.TemporaryDirectory() as directory:
        for _ in range(args.rounds):
            samples["plain"].append(plain_trial(data, args.latent_dim, args.epochs))
            samples["tuner"].append(tuner_trial(data, args.latent_dim, args.epochs, directory))
    plain, tuned = (statistics.median(samples[name]) for name in ("plain", "tuner"))
    print(f"tfvae {tfvae.__version__}, TensorFlow {tf.__version__}, Keras {keras.__version__}; digits "
          f"{data.image_shape}, latent {args.latent_dim}, {args.epochs} epochs per trial; {os.cpu_count()} CPUs; "
          f"median of {args.rounds} interleaved rounds")
    print(f"plain build + fit   {plain:8.2f} s per trial")
    print(f"keras-tuner trial   {tuned:8.2f} s per trial")
    print(f"ratio tuner/plain   {tuned / plain:8.3f}  (target <= 1.2)")


if __name__ == "__main__":
    main()
