"""The `tfvae` command line: train, evaluate, sample, export and tune.

Expected user errors (a bad flag value, a missing or corrupt file, a run directory that would be
overwritten, a folder that cannot be written) print one line, `tfvae: error: ...`, and exit with
status 2; `--debug` shows the traceback instead. Ctrl-C prints one line and exits with 130.

The arguments are parsed before TensorFlow is imported (this module and those it imports at the
top need none), so `--help` and flag errors answer at once. What TensorFlow's native code writes
to stderr while it starts is kept back unless `--verbose` (or `TFVAE_VERBOSE=1`) asks for it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import os
import shlex
import sys
import tempfile
import zipfile
from pathlib import Path

from tfvae.config import (
    CLASS_PRIOR_NAMES,
    DATA_FIELDS,
    LIKELIHOOD_NAMES,
    MIXED_PRECISION_POLICIES,
    POSTERIOR_NAMES,
    PRIOR_NAMES,
    STRATEGY_NAMES,
    TrainConfig,
)
from tfvae.data.arguments import add_data_arguments
from tfvae.presets import PRESET_NAMES, apply_preset, format_presets

EXIT_USER_ERROR = 2
#: The shell's status for a process ended by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130
#: An environment variable that does what `--verbose` does.
VERBOSE_VARIABLE = "TFVAE_VERBOSE"
#: The failures a user can cause and fix, reported as one line (others keep their traceback).
_USER_ERRORS = (ValueError, OSError, ImportError, zipfile.BadZipFile)
#: Settings that may change when a run is resumed: how long and how it runs, not what it trains.
_RESUMABLE_SETTINGS = ("epochs", "strategy", "mixed_precision", "jit_compile")
#: The flags of `add_data_arguments`, which are TrainConfig fields of the same names.
_DATA_SETTINGS = ("dataset", *DATA_FIELDS)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received '{text}'")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, received '{text}'")
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


# --------------------------------------------------------------------------- train
# Flags of `train` that map one to one onto TrainConfig fields (as do the data flags).
_TRAIN_SETTINGS = (
    ("--conditional", dict(action="store_true", help="train a conditional VAE (tfvae.ConditionalVAE) on the data's class labels: q(z|x,y), p(x|z,y); the data must have labels (see README, Conditional VAE)")),
    ("--class-prior", dict(choices=list(CLASS_PRIOR_NAMES), help="p(z|y) of --conditional: standard_normal (N(0, I) for every class) or learned (a Gaussian per class) (default: %(default)s)")),
    ("--stochastic-layers", dict(type=int, choices=[1, 2], help="1: a VAE; 2: a two-layer VAE (tfvae.TwoLayerVAE) p(x|z1) p(z1|z2) p(z2), --prior on z2, --posterior q(z2|x); not with --conditional, --free-bits or dreg (see README, Two stochastic layers) (default: %(default)s)")),
    ("--latent-dim", dict(type=_positive_int, help="size of z; with --stochastic-layers 2, D1, the size of z1 (near the data) (default: %(default)s)")),
    ("--top-latent-dim", dict(type=_positive_int, metavar="D2", help="size of z2, the top layer, with --stochastic-layers 2 (default: --latent-dim)")),
    ("--filters", dict(type=_int_list, help="encoder conv channels, comma-separated; the decoder mirrors them (default: 32,64)")),
    ("--hidden-units", dict(type=_positive_int, help="width of an extra dense layer in encoder and decoder; with --stochastic-layers 2 of every hidden dense layer (default: %(default)s)")),
    ("--likelihood", dict(choices=sorted(LIKELIHOOD_NAMES), help="p(x|z): bernoulli (data in [0, 1]), gaussian, gaussian_predicted_scale, continuous_bernoulli; for 8-bit images categorical or discretized_logistic (see README, Likelihoods) (default: %(default)s)")),
    ("--likelihood-components", dict(type=_positive_int, help="M, the logistics per sub-pixel of --likelihood discretized_logistic (default: 5)")),
    ("--posterior", dict(choices=sorted(POSTERIOR_NAMES), help="q(z|x): diagonal_gaussian, or iaf, an inverse autoregressive flow on it (Monte-Carlo KL; no --free-bits or dreg) (see README, Posteriors) (default: %(default)s)")),
    ("--iaf-steps", dict(type=_positive_int, metavar="T", help="flow steps of --posterior iaf (default: 2)")),
    ("--iaf-context-units", dict(type=_positive_int, metavar="H", help="width of the context the encoder gives --posterior iaf (default: 16)")),
    ("--prior", dict(choices=sorted(PRIOR_NAMES), help="p(z): standard_normal, mixture (a learned mixture of Gaussians) or vamp (the VampPrior; it encodes its pseudo-inputs every step, see README, Priors) (default: %(default)s)")),
    ("--prior-components", dict(type=_positive_int, help="M, the Gaussians of --prior mixture (default: 10), or K, the pseudo-inputs of --prior vamp (default: 500)")),
    ("--beta", dict(type=float, help="weight of the KL term (default: %(default)s)")),
    # The training objective (see README "Training objectives").
    ("--kl-schedule", dict(choices=["constant", "linear", "cyclical"], help="beta over training: constant, linear warm-up from 0 over --kl-warmup epochs, or cyclical annealing with cycles of --kl-cycle epochs (default: %(default)s)")),
    ("--kl-warmup", dict(type=float, metavar="EPOCHS", help="epochs of the linear KL warm-up (with --kl-schedule linear)")),
    ("--kl-cycle", dict(type=float, metavar="EPOCHS", help="epochs per cycle of cyclical annealing, ramping over the first half (with --kl-schedule cyclical)")),
    ("--free-bits", dict(type=float, metavar="NATS", help="nats of KL per latent dimension not penalized (default: %(default)s, off)")),
    ("--iw-samples", dict(type=_positive_int, metavar="K", help="train the importance-weighted bound with K samples (K > 1; K times the decodes per step) (default: %(default)s, the ELBO)")),
    ("--gradient-estimator", dict(choices=["standard", "dreg"], help="encoder gradient of the importance-weighted bound (dreg: Tucker et al. 2019) (default: %(default)s)")),
    ("--epochs", dict(type=_positive_int, help="total epochs of the run; with --resume, where it ends (default: %(default)s)")),
    ("--batch-size", dict(type=_positive_int, help="global batch size (default: %(default)s)")),
    ("--learning-rate", dict(type=float, help="Adam learning rate (default: %(default)s)")),
    ("--seed", dict(type=int, help="random seed of weights, noise, shuffling and pictures (default: %(default)s)")),
    ("--run-dir", dict(help="where to write the run, new or empty (default: runs/<dataset>-<time>)")),
)


def _add_train_command(subparsers) -> None:
    defaults = TrainConfig()
    parser = subparsers.add_parser(
        "train",
        help="train a VAE and write a run directory",
        description="Train a convolutional VAE and write a run directory: config.json, model.keras, "
        "checkpoints/best.keras, TensorBoard logs, metrics.csv, metrics.json, pictures and, with "
        "--test-dataset, test_metrics.json (the test set scored once, after training). With no "
        "arguments it trains on scikit-learn's built-in 8x8 digits, offline. Settings come from "
        "the defaults, then --preset, then --config, then the flags typed here.",
        allow_abbrev=False,  # typed flags are recognized by their full names (see _typed_settings)
    )
    parser.add_argument("--config", help="JSON or YAML file of settings (keys as the flags, e.g. latent_dim); flags given here override it")
    parser.add_argument("--preset", metavar="NAME", help=f"start from a named configuration ({', '.join(PRESET_NAMES)}; see --list-presets); --config and flags override it; it names no data, give --dataset")
    parser.add_argument("--list-presets", action=_ListPresets, help="print each preset's name, description and settings, and exit")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR after an interruption (its config.json; --epochs may raise the total; --strategy, --mixed-precision, --jit-compile may change)")
    for flag, options in _TRAIN_SETTINGS:
        parser.add_argument(flag, default=getattr(defaults, flag[2:].replace("-", "_")), **options)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_data_arguments(parser)
    _add_distribution_flags(parser)
    parser.set_defaults(handler=_run_train)


class _ListPresets(argparse.Action):
    """`--list-presets`: prints the presets and exits, as `--help` does (before TensorFlow starts)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(format_presets())
        parser.exit()


def _add_distribution_flags(parser) -> None:
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


def _typed_settings(args) -> dict:
    """The TrainConfig settings whose flags appear on the command line, with their parsed values."""
    names = [flag[2:].replace("-", "_") for flag, _ in _TRAIN_SETTINGS] + list(_DATA_SETTINGS)
    names += ["strategy", "mixed_precision", "jit_compile"]
    typed = {}
    for name in names:
        flag = "--" + name.replace("_", "-")
        if any(token == flag or token.startswith(flag + "=") for token in args.command_line):
            typed[name] = getattr(args, name)
    return typed


def resolve_train_config(args):
    """The `TrainConfig` of a `train` invocation: defaults < --preset < --config file < typed flags.

    A config file may name a preset under "preset" (`--preset` wins). With `--resume RUN_DIR` the
    run's own config.json is the base and only `--epochs` may change.

    Raises:
        ValueError: an unknown setting, a bad value, or a setting changed on resume.
        FileNotFoundError: a missing config file or run directory.
    """
    from tfvae.config import read_config_file  # noqa: PLC0415
    from tfvae.training import load_run_config  # noqa: PLC0415

    typed = _typed_settings(args)
    if args.resume:
        if args.config:
            raise ValueError("Expected either --resume or --config. Received both: a resumed run keeps its own config.json.")
        if args.preset:
            raise ValueError("Expected either --resume or --preset. Received both: a resumed run keeps its own "
                             "config.json, which records its preset.")
        base = load_run_config(args.resume)
        changed = sorted(
            key for key, value in typed.items() if key not in _RESUMABLE_SETTINGS and value != getattr(base, key)
        )
        if changed:
            raise ValueError(
                f"Expected only {sorted(_RESUMABLE_SETTINGS)} to change when resuming. Received "
                f"changes to {changed}; start a new run for other settings."
            )
        return dataclasses.replace(base, **typed)
    values = read_config_file(args.config) if args.config else {}
    values = apply_preset(args.preset, values)  # the file's settings override the preset's
    config = TrainConfig.from_dict(values, source=args.config or "the configuration")
    return dataclasses.replace(config, **typed)


def _run_train(args) -> int:
    from tfvae.training import CONFIG_FILE, default_run_dir, train  # noqa: PLC0415

    config = resolve_train_config(args)
    if config.run_dir is None:  # named now, so an interruption can say what to resume
        config = dataclasses.replace(config, run_dir=str(default_run_dir(config)))
    args.resolved_run_dir = config.run_dir
    try:
        metrics = train(config, resume=bool(args.resume), verbose=0 if args.quiet else "auto")
    except KeyboardInterrupt:
        if args.debug:
            raise
        if (Path(config.run_dir) / CONFIG_FILE).is_file():
            print("tfvae: training interrupted; continue it with: tfvae train --resume "
                  f"{shlex.quote(config.run_dir)}", file=sys.stderr)
        else:
            print("tfvae: training interrupted before its run directory was written; nothing "
                  "to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(json.dumps(metrics, indent=2))
    if metrics["stopped_on_nan"]:
        model_file = Path(metrics["run_dir"]) / "model.keras"
        saved = (f"{model_file} holds the last good epoch" if model_file.is_file() else
                 "no epoch finished with finite values, so no model was saved")
        print(f"tfvae: training stopped on a NaN or inf loss; {saved}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- shared by evaluate/sample
def _add_model_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by tfvae train")
    parser.add_argument("--checkpoint", choices=["last", "best"], default="last",
                        help="model.keras (last good epoch) or checkpoints/best.keras (lowest validation loss) (default: %(default)s)")


# --------------------------------------------------------------------------- evaluate
def _add_evaluate_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="test ELBO and importance-weighted negative log-likelihood of a trained run",
        description="Evaluate a run's model on held-out data (the run's validation split; with "
        "--split test its --test-dataset; with --dataset FILE all of FILE, a tfds name's test split) "
        "and say which examples were scored: the ELBO and the importance-weighted "
        "estimate of -log p(x) (Burda et al., 2015) with K samples per example; bits/dim where "
        "they are defined (see README, Likelihoods), else the reason why not. "
        "It decodes examples x K images (10 million for MNIST's test set at the default K=1000, "
        "tens of minutes on a laptop CPU); before its progress bar it prints that number and an "
        "estimate of the time. --max-examples and --samples make it shorter.",
    )
    _add_model_arguments(parser)
    parser.add_argument("--dataset", help="a test set to score: all of a local file or folder (the t10k file of an IDX folder, x_test of a .npz), or a tensorflow-datasets name's test split (default: the run's own data, see --split)")
    parser.add_argument("--split", choices=["validation", "test"], help="without --dataset: validation (the default) scores the run's validation split, test the run's --test-dataset; with --dataset: test (the default) scores it as a test set, validation the split training on it would hold out")
    parser.add_argument("--data-dir", help="tensorflow-datasets data directory (default: the run's)")
    parser.add_argument("--binarize", choices=["none", "static", "dynamic"], help="binarization (default: the run's; binarized data is scored on one fixed Bernoulli sample, seed 1234)")
    parser.add_argument("--dequantize", action=argparse.BooleanOptionalAction, default=None, help="score uniformly dequantized 8-bit data, as a continuous likelihood's bits/dim need (default: the run's)")
    parser.add_argument("--samples", type=_positive_int, default=1000, help="K, importance samples per example, up to 5000; the cost grows with K (default: %(default)s)")
    parser.add_argument("--batch-size", type=_positive_int, default=100, help="examples per batch (default: %(default)s)")
    parser.add_argument("--max-examples", type=_positive_int, help="evaluate only the first N examples (quicker; default: all of them)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the importance samples (default: %(default)s)")
    parser.add_argument("--decode-precision", choices=["float32", "bfloat16"], default="float32", help="precision of the decoder in the importance-weighted estimate; bfloat16 is faster on CPUs with AMX or AVX512-BF16 and moves the estimate slightly (README, Evaluation speed); the importance weights are float32 either way (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(handler=_run_evaluate)


def _run_evaluate(args) -> int:
    from tfvae.evaluation import evaluate_run  # noqa: PLC0415

    if args.samples > 5000:
        raise ValueError(f"Expected --samples <= 5000. Received: {args.samples}")
    result = evaluate_run(
        args.run_dir,
        checkpoint=args.checkpoint,
        dataset=args.dataset,
        split=args.split,
        data_dir=args.data_dir,
        binarize=args.binarize,
        dequantize=args.dequantize,
        num_samples=args.samples,
        batch_size=args.batch_size,
        max_examples=args.max_examples,
        seed=args.seed,
        verbose=not args.json,
        decode_precision=args.decode_precision,
    )
    if args.json:
        print(json.dumps(result))
    else:
        from tfvae.evaluation import format_table  # noqa: PLC0415

        print(format_table(result))
    return 0


# --------------------------------------------------------------------------- sample
def _add_sample_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "sample",
        help="draw images from a trained run's model into a PNG grid",
        description="Decode samples of the prior into a PNG grid; or interpolate between prior "
        "samples (--interpolate); or sweep one latent dimension with the others fixed (--traverse DIM). "
        "For a conditional run (trained with --conditional), --label Y draws every image of class Y; "
        "without it the grid has one row per class (n / classes images each; with --interpolate or "
        "--traverse, row r is decoded under class r modulo the classes).",
    )
    _add_model_arguments(parser)
    parser.add_argument("-n", "--num-samples", type=_positive_int, default=64, help="number of images (default: %(default)s); with --interpolate/--traverse, rows = n / steps; a conditional run without --label draws n / classes per class")
    parser.add_argument("--out", default="samples.png", help="the PNG file to write, which must not exist (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prior samples (default: %(default)s)")
    parser.add_argument("--label", type=int, metavar="Y", help="a conditional run's class to draw (default: one row per class)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--interpolate", action="store_true", help="rows of straight lines in latent space between pairs of prior samples")
    mode.add_argument("--traverse", type=_non_negative_int, metavar="DIM", help="rows that vary latent dimension DIM from -3 to 3, the others fixed (a dimension of z1 for a two-layer run)")
    parser.add_argument("--steps", type=_positive_int, default=8, help="images per row for --interpolate and --traverse (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.set_defaults(handler=_run_sample)


def _run_sample(args) -> int:
    import numpy as np  # noqa: PLC0415

    from tfvae import pictures  # noqa: PLC0415
    from tfvae.images import image_grid, save_png  # noqa: PLC0415

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"Expected --out to name a .png file. Received: '{out}'")
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"Expected --out to name a new file. Received: '{out}', which exists (pass --overwrite to replace it).")
    from tfvae.training import load_run_model  # noqa: PLC0415

    vae = load_run_model(args.run_dir, args.checkpoint)
    num_classes = pictures.model_classes(vae)
    _check_label(num_classes, args.label)
    scale = pictures.upscale_for(vae.image_shape)
    if args.interpolate or args.traverse is not None:
        rows = max(1, args.num_samples // args.steps)
        row_labels = _row_labels(num_classes, args.label, rows)
        both = None if row_labels is None else np.concatenate([row_labels, row_labels])
        z = pictures.prior_latents(vae, 2 * rows, seed=[args.seed, 1], labels=both)
        if args.interpolate:
            path = pictures.interpolate_latents(z[:rows], z[rows:], args.steps)
            images = pictures.decode_mean(vae, path, None if row_labels is None else np.repeat(row_labels, args.steps))
        else:
            images = pictures.latent_traversal(vae, args.traverse, z[:rows], steps=args.steps, labels=row_labels)
        grid = image_grid(images, columns=args.steps, scale=scale)
    else:
        grid = pictures.sample_grid(vae, args.num_samples, seed=args.seed, label=args.label, scale=scale)
    save_png(out, grid)
    print(f"wrote {out} ({grid.shape[1]}x{grid.shape[0]} pixels)")
    return 0


def _check_label(num_classes: int | None, label: int | None) -> None:
    """Raises ValueError for `--label` on an unconditional run (num_classes None) or outside
    the run's classes."""
    if label is None:
        return
    if num_classes is None:
        raise ValueError(f"Expected --label only for a conditional run (trained with --conditional). "
                         f"Received: --label {label} for an unconditional model")
    if not 0 <= label < num_classes:
        raise ValueError(f"Expected --label in [0, {num_classes - 1}], the run's {num_classes} classes. "
                         f"Received: --label {label}")


def _row_labels(num_classes: int | None, label: int | None, rows: int):
    """The class of each row of an interpolation or traversal: `label`, or r mod C for row r;
    None for an unconditional model (num_classes None)."""
    import numpy as np  # noqa: PLC0415

    if num_classes is None:
        return None
    if label is not None:
        return np.full([rows], label, np.int64)
    return np.arange(rows, dtype=np.int64) % num_classes


# --------------------------------------------------------------------------- export
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
    source = Path(args.run_dir)
    model_file = source if source.suffix == ".keras" else source / "model.keras"
    if not model_file.is_file():
        raise FileNotFoundError(
            "Expected a run directory holding model.keras (as written by tfvae train) or a "
            f".keras file. Received: '{args.run_dir}', where '{model_file}' does not exist."
        )
    import tfvae  # noqa: PLC0415
    from tfvae.training import load_keras_file  # noqa: PLC0415

    vae = load_keras_file(model_file)
    if not isinstance(vae, tfvae.VAE):
        raise ValueError(f"Expected '{model_file}' to hold a tfvae.VAE. Received: a "
                         f"{type(vae).__name__}")
    config_file = model_file.parent / "config.json"
    extra = {"source": str(model_file)}
    if config_file.is_file():
        try:
            extra["dataset"] = json.loads(config_file.read_text()).get("dataset")
        except (ValueError, AttributeError):  # not JSON, or not an object: only metadata is lost
            print(f"tfvae: warning: '{config_file}' is not a readable run configuration (corrupt or "
                  "truncated); the export's metadata will not name the dataset", file=sys.stderr)
    path = tfvae.export_saved_model(vae, args.path, overwrite=args.overwrite, metadata=extra)
    print(json.dumps({"export": str(path), "metadata": str(path / "assets.extra" / "tfvae.json")}))
    return 0


# --------------------------------------------------------------------------- tune
#: The flags of `train` that `tune` keeps fixed for every trial.
_TUNE_FIXED_SETTINGS = ("--conditional", "--class-prior", "--filters", "--hidden-units", "--likelihood", "--likelihood-components", "--posterior", "--iaf-steps", "--iaf-context-units", "--prior", "--prior-components", "--beta", "--batch-size", "--learning-rate", "--seed")


def _posterior_list(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names or any(name not in POSTERIOR_NAMES for name in names):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated names among {','.join(POSTERIOR_NAMES)}, received '{text}'"
        )
    return names


def _float_list(text: str, allow_zero: bool = False) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values or any(not (v >= 0 if allow_zero else v > 0) for v in values):
        kind = "numbers >= 0 such as 0.5,1" if allow_zero else "positive numbers such as 3e-4,1e-3"
        raise argparse.ArgumentTypeError(f"expected comma-separated {kind}, received '{text}'")
    return values


def _add_tune_command(subparsers) -> None:
    defaults = TrainConfig()
    parser = subparsers.add_parser(
        "tune",
        help="search the latent size (and learning rate, beta, batch size) with keras-tuner",
        description="Train one VAE per trial and keep the one with the lowest validation loss "
        "(-ELBO). Writes RUN_DIR/tuner/ (keras-tuner's project), trials.csv, "
        "objective_by_latent_dim.png and best/ (model.keras, saved_model/, summary.json). "
        "Running the same command on the same --run-dir resumes an interrupted search.",
        allow_abbrev=False,
    )
    parser.add_argument("--latent-dims", type=_int_list, default=(2, 8, 16, 32), help="candidate latent sizes, comma-separated (default: 2,8,16,32)")
    parser.add_argument("--max-trials", type=_positive_int, default=4, help="trials in all, those of a resumed run included; hyperband ignores it (default: %(default)s)")
    parser.add_argument("--epochs", type=_positive_int, default=10, help="epochs per trial; hyperband's largest budget (default: %(default)s)")
    parser.add_argument("--tuner", choices=["random", "bayesian", "hyperband", "grid"], default="random", help="search strategy (default: %(default)s)")
    parser.add_argument("--learning-rates", type=_float_list, help="candidate learning rates, comma-separated (default: --learning-rate only)")
    parser.add_argument("--betas", type=lambda text: _float_list(text, allow_zero=True), help="candidate KL weights, comma-separated (default: --beta only)")
    parser.add_argument("--batch-sizes", type=_int_list, help="candidate batch sizes, comma-separated (default: --batch-size only)")
    parser.add_argument("--posteriors", type=_posterior_list, help=f"candidate posteriors, comma-separated, among {','.join(POSTERIOR_NAMES)} (default: --posterior only)")
    for flag, options in _TRAIN_SETTINGS:
        if flag in _TUNE_FIXED_SETTINGS:
            parser.add_argument(flag, default=getattr(defaults, flag[2:].replace("-", "_")), **options)
    parser.add_argument("--run-dir", help="where to write the tuning run: new, empty, or a tuning run with the same settings to resume (default: runs/tune-<dataset>-<time>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or trial tables")
    add_data_arguments(parser, test_dataset=False)
    parser.set_defaults(handler=_run_tune)


def _run_tune(args) -> int:
    from tfvae.tuning import TuningConfig, default_run_dir, tune  # noqa: PLC0415

    fixed = [flag[2:].replace("-", "_") for flag in _TUNE_FIXED_SETTINGS]
    names = (*_DATA_SETTINGS, *fixed, "epochs", "run_dir")
    train = TrainConfig(**{name: getattr(args, name) for name in names if hasattr(args, name)})
    config = TuningConfig(
        train=train, latent_dims=args.latent_dims, max_trials=args.max_trials, tuner=args.tuner,
        learning_rates=args.learning_rates, betas=args.betas, batch_sizes=args.batch_sizes,
        posteriors=args.posteriors,
    )
    if train.run_dir is None:  # named now, so an interruption can say where to resume
        config.train.run_dir = str(default_run_dir(config))
    try:
        # Progress and keras-tuner's messages go to stderr: stdout carries the JSON summary only.
        with contextlib.redirect_stdout(sys.stderr):
            summary = tune(config, verbose=0 if args.quiet else 1)
    except RuntimeError as error:  # every trial failed
        print(f"tfvae: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"tfvae: tuning interrupted; the same command with --run-dir {config.train.run_dir} "
              "resumes it", file=sys.stderr)
        return 130
    if summary["trials_run"] == 0:
        completed = sum(row["status"] == "COMPLETED" for row in summary["trials"])
        if completed >= args.max_trials and args.tuner != "hyperband":
            reason = f"it has {completed} completed trials, as many as --max-trials {args.max_trials}"
        else:
            reason = f"every combination of the tuned values has been tried ({completed} trials)"
        print(f"tfvae: no trial ran: {reason}; the best of them is reported", file=sys.stderr)
    print(json.dumps({key: summary[key] for key in ("run_dir", "resumed", "trials_run", "best")}, indent=2))
    return 0


# --------------------------------------------------------------------------- main
class _Parser(argparse.ArgumentParser):
    """An argument parser whose flag errors are one short usage line and the error (status 2)."""

    def error(self, message):
        positionals = [action.metavar or action.dest for action in self._get_positional_actions()]
        usage = " ".join([self.prog, "[options]", *positionals])
        self.exit(EXIT_USER_ERROR, f"usage: {usage}  (all options: {self.prog} --help)\n"
                                   f"{self.prog}: error: {message}\n")


def _add_output_flags(parser, default) -> None:
    """`--debug` and `--verbose`, accepted before and after the command's name."""
    parser.add_argument("--debug", action="store_true", default=default,
                        help="show full tracebacks for user errors and Ctrl-C")
    parser.add_argument("--verbose", action="store_true", default=default,
                        help=f"show TensorFlow's start-up messages (as {VERBOSE_VARIABLE}=1 does)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `tfvae` with all its commands."""
    parser = _Parser(prog="tfvae", description="Variational autoencoders for Keras 3 and TensorFlow.")
    _add_output_flags(parser, default=False)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train_command(subparsers)
    _add_evaluate_command(subparsers)
    _add_sample_command(subparsers)
    _add_export_command(subparsers)
    _add_tune_command(subparsers)
    for command in subparsers.choices.values():
        # Not given after the command: keep the value parsed before it.
        _add_output_flags(command, default=argparse.SUPPRESS)
    return parser


@contextlib.contextmanager
def _native_stderr_kept_back(replay: bool):
    """Sends what is written to file descriptor 2 inside the block to a temporary file.

    TensorFlow's C++ start-up messages (oneDNN, CUDA probing, CPU features) ignore
    `TF_CPP_MIN_LOG_LEVEL`; they are written to stderr again after the block when `replay`.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as kept:
        os.dup2(kept.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if replay:
                kept.seek(0)
                sys.stderr.write(kept.read().decode(errors="replace"))
                sys.stderr.flush()


def _start_tensorflow(verbose: bool) -> None:
    """Imports TensorFlow and Keras (checking the backend) with their start-up output kept back.

    Raises:
        ImportError: Keras is set to another backend than TensorFlow.
    """
    if "tensorflow" in sys.modules:
        return
    with _native_stderr_kept_back(replay=verbose):
        from tfvae._backend import require_tensorflow_backend  # noqa: PLC0415

        require_tensorflow_backend()
        import tensorflow as tf  # noqa: PLC0415

        # The CUDA probe logs when devices are first listed. Listing them leaves the runtime
        # uninitialized, so logical devices and multi-worker strategies can still be set up.
        tf.config.list_physical_devices()


#: The attribute of the parsed arguments naming where each command writes (train's is set
#: once its run directory is known).
_OUTPUT_ARGUMENT = {"train": "resolved_run_dir", "sample": "out", "export": "path", "tune": "run_dir"}


def _output_of(args) -> str | None:
    return getattr(args, _OUTPUT_ARGUMENT.get(args.command, ""), None)


def describe_error(error: BaseException, output: str | os.PathLike | None = None) -> str:
    """One line for an expected failure: its message, or what the system said about which path.

    Args:
        error: the exception.
        output: where the command writes, named when a full disk's error names no file.
    """
    if isinstance(error, OSError) and error.errno is not None:
        path = Path(os.fsdecode(error.filename)) if error.filename is not None else None
        if path is not None and path.name.startswith(".") and ".tmp" in path.name:
            path = path.parent  # a temporary file of an atomic write: name the folder written to
        if error.errno == errno.ENOSPC:
            path = path or (Path(output) if output is not None else None)
            where = f" while writing '{path}'" if path is not None else ""
            return f"no space left on device{where}; free some space and run the command again"
        if path is not None:
            return f"{error.strerror}: '{path}'"
    return " ".join(str(error).split()) or type(error).__name__


def main(argv=None) -> int:
    """Runs `tfvae`; returns the exit status (2 for a user error, with one line on stderr; 130 for Ctrl-C)."""
    argv = sys.argv[1:] if argv is None else [str(token) for token in argv]
    args = build_parser().parse_args(argv)
    args.command_line = argv
    verbose = args.verbose or os.environ.get(VERBOSE_VARIABLE, "") not in ("", "0")
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        _start_tensorflow(verbose)
        return args.handler(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"tfvae: {args.command} interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _USER_ERRORS as error:
        if args.debug:
            raise
        print(f"tfvae: error: {describe_error(error, _output_of(args))}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
