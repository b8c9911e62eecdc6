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
    parser.set_defaults(handler=_run_train)


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
    )
    metrics = train(config, verbose=0 if args.quiet else "auto")
    print(json.dumps(metrics, indent=2))
    if metrics["stopped_on_nan"]:
        print(f"tfvae: training stopped on a NaN loss; {metrics['run_dir']}/model.keras holds the "
              "last good epoch", file=sys.stderr)
        return 1
    return 0


def _add_export_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a trained model as a SavedModel for TensorFlow pipelines",
        description="Export RUN_DIR/model.keras (as written by `tfvae train`) as a SavedModel "
        "with endpoints encode, embed, decode, sample, reconstruct and elbo, loadable with "
        "tf.saved_model.load without tfvae or TensorFlow Probability installed.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory holding model.keras "
                        "(or the path of a .keras file)")
    parser.add_argument("path", metavar="PATH", help="the SavedModel directory to create")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing export at PATH (kept until the new one is "
                        "complete)")
    parser.set_defaults(handler=_run_export)


def _run_export(args) -> int:
    from pathlib import Path  # noqa: PLC0415

    source = Path(args.run_dir)
    model_file = source if source.suffix == ".keras" else source / "model.keras"
    if not model_file.is_file():
        raise FileNotFoundError(
            "Expected a run directory holding model.keras (as written by tfvae train) or a "
            f".keras file. Received: '{args.run_dir}', where '{model_file}' does not exist."
        )
    import keras  # noqa: PLC0415

    import tfvae  # noqa: PLC0415

    vae = keras.models.load_model(model_file)
    if not isinstance(vae, tfvae.VAE):
        raise ValueError(f"Expected '{model_file}' to hold a tfvae.VAE. Received: a "
                         f"{type(vae).__name__}")
    config_file = model_file.parent / "config.json"
    extra = {"source": str(model_file)}
    if config_file.is_file():
        extra["dataset"] = json.loads(config_file.read_text()).get("dataset")
    path = tfvae.export_saved_model(vae, args.path, overwrite=args.overwrite, metadata=extra)
    print(json.dumps({"export": str(path), "metadata": str(path / "assets.extra" / "tfvae.json")}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `tfvae` with all its commands."""
    parser = argparse.ArgumentParser(prog="tfvae", description="Variational autoencoders for Keras 3 and TensorFlow.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for user errors")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train_command(subparsers)
    _add_export_command(subparsers)
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
