"""The `tfvae` command line: `tfvae train` (and more commands as they are added)."""

from __future__ import annotations

import argparse
import json
import os
import sys


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received '{text}'")
    return value


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers such as 32,64, received '{text}'"
        )
    return values


def _add_train_command(subparsers) -> None:
    from tfvae.training import TrainConfig  # noqa: PLC0415

    defaults = TrainConfig()
    parser = subparsers.add_parser(
        "train",
        help="train a VAE and write a run directory",
        description="Train a convolutional VAE and write a run directory with the model, "
        "sample and reconstruction grids and the final metrics. With no arguments it trains on "
        "scikit-learn's built-in 8x8 digits, offline.",
    )
    parser.add_argument("--dataset", default=defaults.dataset, help="data source (default: %(default)s)")
    parser.add_argument("--latent-dim", type=_positive_int, default=defaults.latent_dim, help="size of z (default: %(default)s)")
    parser.add_argument("--filters", type=_int_list, default=defaults.filters, help="encoder conv channels, comma-separated; the decoder mirrors them (default: 32,64)")
    parser.add_argument("--hidden-units", type=_positive_int, default=defaults.hidden_units, help="width of an extra dense layer in encoder and decoder (default: none)")
    parser.add_argument("--likelihood", choices=["bernoulli", "gaussian"], default=defaults.likelihood, help="p(x|z) (default: %(default)s)")
    parser.add_argument("--beta", type=float, default=defaults.beta, help="weight of the KL term (default: %(default)s)")
    parser.add_argument("--epochs", type=_positive_int, default=defaults.epochs, help="epochs (default: %(default)s)")
    parser.add_argument("--batch-size", type=_positive_int, default=defaults.batch_size, help="global batch size (default: %(default)s)")
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate, help="Adam learning rate (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default: %(default)s)")
    parser.add_argument("--run-dir", default=None, help="where to write the run (default: runs/<dataset>-<time>); must be new or empty")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_distribution_flags(parser)
    parser.set_defaults(handler=_run_train)


def _add_distribution_flags(parser) -> None:
    from tfvae.distribute import MIXED_PRECISION_POLICIES, STRATEGY_NAMES  # noqa: PLC0415

    parser.add_argument(
        "--strategy",
        choices=STRATEGY_NAMES,
        default="default",
        help="tf.distribute strategy: mirrored = all local GPUs, multi_worker = the machines "
        "in TF_CONFIG (default: %(default)s)",
    )
    parser.add_argument(
        "--mixed-precision",
        choices=MIXED_PRECISION_POLICIES,
        default=None,
        help="compute layers in float16/bfloat16; likelihood, KL and loss stay float32",
    )
    parser.add_argument(
        "--jit-compile",
        action="store_true",
        help="compile the train step with XLA (strategies default and one_device only)",
    )


def _run_train(args) -> int:
    from tfvae.training import TrainConfig, train  # noqa: PLC0415

    config = TrainConfig(
        dataset=args.dataset,
        latent_dim=args.latent_dim,
        filters=args.filters,
        hidden_units=args.hidden_units,
        likelihood=args.likelihood,
        beta=args.beta,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        run_dir=args.run_dir,
        strategy=args.strategy,
        mixed_precision=args.mixed_precision,
        jit_compile=args.jit_compile,
    )
    metrics = train(config, verbose=0 if args.quiet else "auto")
    print(json.dumps(metrics, indent=2))
    if metrics["stopped_on_nan"]:
        print(f"tfvae: training stopped on a NaN loss; {metrics['run_dir']}/model.keras holds the "
              "last good epoch", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `tfvae` with all its commands."""
    parser = argparse.ArgumentParser(prog="tfvae", description="Variational autoencoders for Keras 3 and TensorFlow.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for user errors")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train_command(subparsers)
    return parser


def main(argv=None) -> int:
    """Runs `tfvae`; returns the exit status (2 for a user error, with one line on stderr)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        if args.debug:
            raise
        message = " ".join(str(error).split())
        print(f"tfvae: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
