"""Input pipeline speed and memory: `tfvae.data.load` alone vs the training step it feeds.

Prints images/s of the pipeline for an in-memory 28x28 dataset (the MNIST test set when
../shared/data/mnist-t10k/ exists, else random uint8 images) and for a folder of PNG files,
the training step's images/s measured in the same process (a conv VAE on 28x28x1, input from
one in-memory batch), their ratio (target >= 10x), and the peak RSS while streaming an image
folder several times larger than the cache limit.

    python benchmarks/input_pipeline.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from baselines import build_tfvae_keras_io  # noqa: E402
from PIL import Image  # noqa: E402
from throughput import epoch_seconds  # noqa: E402

from tfvae.data import load  # noqa: E402

MNIST_T10K_DIR = REPO_ROOT.parent / "shared" / "data" / "mnist-t10k"
BATCH_SIZE = 128


def current_rss_mb() -> float:
    """Resident set size of this process now (Linux /proc)."""
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * resource.getpagesize() / 2**20


def peak_rss_while_reading(dataset: tf.data.Dataset, epochs: int) -> tuple[float, int]:
    """The largest RSS sampled after every batch of `epochs` passes, and the images read."""
    peak, count = current_rss_mb(), 0
    for _ in range(epochs):
        for batch in dataset:
            count += int(batch.shape[0])
            peak = max(peak, current_rss_mb())
    return peak, count


def images_per_second(dataset: tf.data.Dataset, epochs: int) -> float:
    """Reads `dataset` once to warm caches, then times `epochs` full passes."""
    for _ in dataset:
        pass
    count = 0
    started = time.perf_counter()
    for _ in range(epochs):
        for batch in dataset:
            count += int(batch.shape[0])
    return count / (time.perf_counter() - started)


def training_step_images_per_second(steps: int) -> float:
    """Images/s of tfvae's training step as benchmarks/throughput.py measures it (the keras.io
    architecture, latent 16, batch 128), on one in-memory batch so that input costs nothing."""
    keras.utils.set_random_seed(0)
    vae = build_tfvae_keras_io(latent_dim=16)
    batch = np.random.default_rng(0).random((BATCH_SIZE, 28, 28, 1)).astype(np.float32)
    epoch_seconds(vae, tf.data.Dataset.from_tensors(batch).repeat(5))  # trace and warm up
    timed = tf.data.Dataset.from_tensors(batch).repeat(steps).prefetch(2)
    return steps * BATCH_SIZE / epoch_seconds(vae, timed)


def write_png_folder(folder: Path, count: int, size: int, channels: int) -> int:
    """Writes `count` random PNG images; returns their decoded size in bytes."""
    rng = np.random.default_rng(0)
    shape = (size, size, channels) if channels == 3 else (size, size)
    for index in range(count):
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        subfolder = folder / f"class_{index % 10}"
        subfolder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(subfolder / f"{index:06d}.png", compress_level=1)
    return count * size * size * channels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller folders and fewer steps")
    parser.add_argument("--memory-child", nargs=3, metavar=("FOLDER", "CACHE", "LIMIT_MB"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        folder, cache, cache_limit_mb = args.memory_child
        memory_child(folder, cache, int(cache_limit_mb))
        return
    epochs = 2 if args.quick else 3

    print(f"tfvae input pipeline benchmark (batch {BATCH_SIZE}, {os.cpu_count()} CPUs, "
          f"TensorFlow {tf.__version__})")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        if MNIST_T10K_DIR.is_dir():
            memory_source, label = str(MNIST_T10K_DIR), "MNIST t10k IDX, 10,000 x 28x28x1"
        else:
            memory_source, label = str(scratch / "random.npy"), "random uint8, 10,000 x 28x28x1"
            np.save(memory_source, np.random.default_rng(0).integers(0, 256, (10000, 28, 28),
                                                                     dtype=np.uint8))
        rates = {}
        for binarize in ("none", "dynamic"):
            splits = load(memory_source, batch_size=BATCH_SIZE, binarize=binarize)
            rates[f"in-memory 28x28 ({label}), binarize={binarize}"] = images_per_second(
                splits.train, epochs
            )

        folder = scratch / "png28"
        write_png_folder(folder, 2000 if args.quick else 5000, 28, 1)
        streamed = load(str(folder), batch_size=BATCH_SIZE, cache="none")
        rates["PNG folder 28x28, streamed (decode every epoch)"] = images_per_second(
            streamed.train, epochs
        )
        cached = load(str(folder), batch_size=BATCH_SIZE, cache="memory")
        rates["PNG folder 28x28, cached after the first epoch"] = images_per_second(
            cached.train, epochs
        )

        training_rate = training_step_images_per_second(30 if args.quick else 80)
        print(f"\ntraining step (conv VAE 28x28x1, latent 16): {training_rate:12,.0f} images/s")
        print(f"{'pipeline alone':<70} {'images/s':>12} {'x training':>11}")
        for name, rate in rates.items():
            print(f"{name:<70} {rate:12,.0f} {rate / training_rate:10.1f}x")

        # Memory, each figure from a fresh process: streaming folders of several times the
        # cache limit keeps the peak RSS flat as the folder grows; caching them does not.
        cache_limit_mb = 32
        counts = (800, 2000) if args.quick else (1500, 4000)
        print(f"\nmemory: folders of PNGs 128x128x3 (48 KiB each decoded), cache limit "
              f"{cache_limit_mb} MiB, shuffle buffer 512, 2 epochs, each in a fresh process")
        for count, cache in ((counts[0], "auto"), (counts[1], "auto"), (counts[1], "memory")):
            folder = scratch / f"png128-{count}"
            if not folder.exists():
                write_png_folder(folder, count, 128, 3)
            child = subprocess.run(
                [sys.executable, __file__, "--memory-child", str(folder), cache,
                 str(cache_limit_mb)],
                capture_output=True, text=True, check=True,
            )
            print(child.stdout.rstrip().splitlines()[-1])


def memory_child(folder: str, cache: str, cache_limit_mb: int) -> None:
    """Reads an image folder for 2 epochs and prints the RSS before and at its peak."""
    baseline = current_rss_mb()
    splits = load(folder, batch_size=BATCH_SIZE, cache=cache, max_cache_bytes=cache_limit_mb << 20,
                  shuffle_buffer=512)
    peak, images = peak_rss_while_reading(splits.train, epochs=2)
    decoded_mb = splits.num_train * int(np.prod(splits.image_shape)) / 2**20
    what = "streams" if cache == "auto" and decoded_mb > cache_limit_mb else "cached in memory"
    print(f"  {splits.num_train + splits.num_validation:5d} images ({decoded_mb:4.0f} MiB training "
          f"split = {decoded_mb / cache_limit_mb:4.1f}x the limit), cache={cache:<6} ({what}): "
          f"RSS {baseline:.0f} MiB before, peak {peak:.0f} MiB (+{peak - baseline:.0f} MiB)")


if __name__ == "__main__":
    main()
