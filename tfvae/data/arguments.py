"""Command-line flags for choosing and preprocessing data, shared by `tfvae` commands."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

# TensorFlow-free, so that the command line parses its flags before TensorFlow is imported.
from tfvae.config import DEFAULT_SHUFFLE_BUFFER, HOLDOUT_MODES

if TYPE_CHECKING:
    from tfvae.data.pipeline import DataSplits


def _image_size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        size = tuple(int(part) for part in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise argparse.ArgumentTypeError(
            f"expected HEIGHTxWIDTH or one size such as 64x64 or 32, received '{text}'"
        )
    return size


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), received '{text}'")
    return value


def add_data_arguments(parser: argparse.ArgumentParser, test_dataset: bool = True) -> None:
    """Adds `--dataset`, `--data-dir`, `--binarize`, `--threshold`, `--image-size`,
    `--channels`, `--validation-fraction`, `--holdout`, `--cache`, `--shuffle-buffer`,
    `--dequantize` and (with `test_dataset`) `--test-dataset` to `parser`."""
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset", default="digits",
        help="'digits' (built in, offline), a tensorflow-datasets name (mnist, fashion_mnist, "
        "kmnist, binarized_mnist, cifar10, svhn_cropped, celeb_a or any tfds image dataset), or "
        "a path: .npz/.npy file, IDX file (gz or raw), or a folder of PNG/JPEG images; an "
        "existing path wins over a tfds name, tfds:NAME forces tensorflow-datasets "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--data-dir", default=None,
        help="where tensorflow-datasets keeps prepared data (default: ~/tensorflow_datasets)",
    )
    group.add_argument(
        "--binarize", choices=["none", "static", "dynamic"], default="none",
        help="none; static: binarize once (at --threshold, or one fixed Bernoulli sample); "
        "dynamic: a fresh Bernoulli sample each epoch (default: %(default)s)",
    )
    group.add_argument(
        "--threshold", type=float, default=None,
        help="with --binarize static: pixels above it become 1 (default: a Bernoulli sample)",
    )
    group.add_argument(
        "--image-size", type=_image_size, default=None, metavar="HxW",
        help="center-crop to this aspect ratio and resize, e.g. 64x64 (default: as stored; "
        "64x64 for celeb_a)",
    )
    group.add_argument(
        "--channels", type=int, choices=[1, 3], default=None,
        help="convert images to 1 (gray) or 3 (RGB) channels (default: as stored)",
    )
    group.add_argument(
        "--validation-fraction", type=_fraction, default=0.1,
        help="share of the training data held out (which slice: --holdout) when the source has "
        "no validation or test split; 0.16667 holds out 10,000 of MNIST's 60,000 "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--holdout", choices=list(HOLDOUT_MODES), default="random",
        help="which examples --validation-fraction holds out: random (a seeded random slice) or "
        "last (the last ones in stored order: with --validation-fraction 0.16667, MNIST's first "
        "50,000 train and its last 10,000 validate, as in the VampPrior paper; a tfds dataset "
        "always holds out the last slice of its train split) (default: %(default)s)",
    )
    group.add_argument(
        "--cache", default="auto",
        help="auto (in memory when a split fits in 1 GiB), memory, none, or a file path prefix "
        "in an existing folder (default: %(default)s)",
    )
    group.add_argument(
        "--shuffle-buffer", type=int, default=DEFAULT_SHUFFLE_BUFFER,
        help="examples in the shuffle buffer (default: %(default)s)",
    )
    group.add_argument(
        "--dequantize", action="store_true",
        help="uniform dequantization of 8-bit images, (255 x + u) / 256, for a continuous "
        "likelihood (gaussian, gaussian_predicted_scale, continuous_bernoulli): its bits/dim "
        "need it",
    )
    if test_dataset:
        group.add_argument(
            "--test-dataset", default=None, metavar="SOURCE",
            help="a test set scored once after training into test_metrics.json, never used to "
            "train or choose a checkpoint: all of a file or folder, or a tfds name's test split "
            "(default: none)",
        )


def load_from_arguments(args: argparse.Namespace, batch_size: int, seed: int) -> DataSplits:
    """`tfvae.data.load` with the options parsed by `add_data_arguments`.

    Raises:
        ValueError (DataError), FileNotFoundError: as `tfvae.data.load`.
    """
    from tfvae.data.pipeline import load  # noqa: PLC0415 (imports TensorFlow)

    return load(
        args.dataset,
        batch_size=batch_size,
        data_dir=args.data_dir,
        binarize=args.binarize,
        threshold=args.threshold,
        image_size=args.image_size,
        channels=args.channels,
        validation_fraction=args.validation_fraction,
        holdout=args.holdout,
        cache=args.cache,
        shuffle_buffer=args.shuffle_buffer,
        seed=seed,
        dequantize=args.dequantize,
        test_dataset=getattr(args, "test_dataset", None),
    )
