"""The training job behind `tfvae train`: configuration -> data -> model -> fit -> a run directory.

A run directory holds everything about one run:

    config.json            the resolved configuration (what `--resume` reads back)
    model.keras            the last model whose epoch ended with finite values
    checkpoints/best.keras the model with the lowest validation loss so far
    backup/                Keras's BackupAndRestore state while a run is unfinished
    logs/                  TensorBoard: scalars (train/, validation/) and images (images/)
    metrics.csv            one row per epoch
    metrics.json           the final metrics
    samples.png, reconstructions.png, interpolations.png, loss_curves.png
    latent_manifold.png, latent_scatter.png    when latent_dim == 2 (the scatter when labels exist)
    kl_per_dimension.png   the KL of each latent dimension (posterior-collapse diagnostics)

Every file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import keras

from tfvae import distribute, pictures
from tfvae.callbacks import (
    AtomicBackupAndRestore,
    AtomicModelCheckpoint,
    ImageSummaries,
    MetricsCSVLogger,
    read_metrics_csv,
)
from tfvae.data import load
from tfvae.data.pipeline import DEFAULT_SHUFFLE_BUFFER
from tfvae.diagnostics import posterior_diagnostics
from tfvae.files import write_json_atomic
from tfvae.models import build_conv_vae

#: Images in the sample, reconstruction and interpolation pictures.
GRID_SIZE = 64
CONFIG_FILE = "config.json"
MODEL_FILE = "model.keras"
BEST_CHECKPOINT = "checkpoints/best.keras"
BACKUP_DIR = "backup"


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on; saved as `config.json` in the run directory.

    Attributes:
        dataset, data_dir, binarize, threshold, image_size, channels, validation_fraction,
            cache, shuffle_buffer: the data, as the arguments of `tfvae.data.load` (default:
            the built-in digits, as stored).
        latent_dim: int. The size of z.
        filters: tuple of ints. The encoder's conv channels; the decoder mirrors them.
        hidden_units: int or None. An extra dense layer in encoder and decoder.
        likelihood: str. "bernoulli" or "gaussian".
        beta: float. Weight of the KL term.
        epochs: int. The total number of epochs of the run (a resumed run ends there too).
        batch_size: int. The global batch size.
        learning_rate: float. Adam's learning rate.
        seed: int. Seeds weights, noise, shuffling and the pictures.
        run_dir: str or None. Where the run is written (default `runs/<dataset>-<time>`).
        strategy: str. A `tfvae.distribute.get_strategy` name ("default", "mirrored",
            "multi_worker", ...).
        mixed_precision: None, "mixed_float16" or "mixed_bfloat16".
        jit_compile: bool. Compile the train step with XLA (default/one_device strategies).
    """

    dataset: str = "digits"
    data_dir: str | None = None
    binarize: str = "none"
    threshold: float | None = None
    image_size: tuple[int, int] | None = None
    channels: int | None = None
    validation_fraction: float = 0.1
    cache: str = "auto"
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER
    latent_dim: int = 8
    filters: tuple[int, ...] = (32, 64)
    hidden_units: int | None = 256
    likelihood: str = "bernoulli"
    beta: float = 1.0
    epochs: int = 80
    batch_size: int = 32
    learning_rate: float = 2e-3
    seed: int = 0
    run_dir: str | None = None
    strategy: str = "default"
    mixed_precision: str | None = None
    jit_compile: bool = False

    def __post_init__(self):
        self.filters = tuple(self.filters)
        distribute.check_training_options(self.strategy, self.mixed_precision, self.jit_compile)
        if self.image_size is not None:
            self.image_size = tuple(self.image_size)
        for name in ("epochs", "batch_size", "latent_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Expected {name} to be an integer >= 1. Received: {name}={value!r}")
        if isinstance(self.learning_rate, bool) or not (
            isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0
        ):
            raise ValueError(f"Expected learning_rate > 0. Received: learning_rate={self.learning_rate!r}")
        if isinstance(self.beta, bool) or not (isinstance(self.beta, (int, float)) and self.beta >= 0):
            raise ValueError(f"Expected beta to be a number >= 0. Received: beta={self.beta!r}")

    @classmethod
    def from_dict(cls, values: dict, source: str = "the configuration") -> TrainConfig:
        """Builds a config from a dict whose keys are field names (dashes allowed).

        Raises:
            ValueError: an unknown key, or a value the fields reject.
        """
        known = {field.name for field in dataclasses.fields(cls)}
        normalized = {str(key).replace("-", "_"): value for key, value in values.items()}
        unknown = sorted(set(normalized) - known)
        if unknown:
            raise ValueError(
                f"Unknown setting(s) {unknown} in {source}. Expected keys among {sorted(known)}."
            )
        return cls(**normalized)


def read_config_file(path: str | os.PathLike) -> dict:
    """Reads a JSON or YAML file of settings (a mapping).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not parseable, or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Expected a JSON or YAML config file. Received: '{path}', which does not exist.")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml  # noqa: PLC0415

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except Exception as error:  # yaml and json raise their own types
        raise ValueError(f"Could not parse the config file '{path}': {error}") from None
    if not isinstance(values, dict):
        raise ValueError(
            f"Expected the config file '{path}' to hold a mapping of settings. "
            f"Received: {type(values).__name__}"
        )
    return values


def default_run_dir(config: TrainConfig) -> Path:
    """`runs/<dataset>-<YYYYmmdd-HHMMSS>` under the working directory."""
    name = Path(config.dataset).stem or "data"
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(run_dir: str | os.PathLike) -> Path:
    """Creates `run_dir`, refusing one that already holds files (they are the user's).

    Raises:
        FileExistsError: `run_dir` exists and is not empty, or is a file.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise FileExistsError(
            f"Expected a new or empty run directory. Received: '{run_dir}', which already holds "
            "files; choose another --run-dir, or continue it with --resume (nothing was changed)."
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def load_run_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The `TrainConfig` saved in a run directory.

    Raises:
        FileNotFoundError: `run_dir` or its `config.json` does not exist.
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"Expected a tfvae run directory with {CONFIG_FILE}. Received: '{run_dir}', which has none."
        )
    values = json.loads(path.read_text())
    values["run_dir"] = str(run_dir)
    return TrainConfig.from_dict(values, source=str(path))


def load_run_model(run_dir: str | os.PathLike, checkpoint: str = "last"):
    """Loads a run directory's model: "last" (model.keras) or "best" (checkpoints/best.keras).

    Raises:
        FileNotFoundError: the run directory or its model file does not exist.
        ValueError: an unknown checkpoint name.
    """
    if checkpoint not in ("last", "best"):
        raise ValueError(f"Expected checkpoint 'last' or 'best'. Received: {checkpoint!r}")
    relative = MODEL_FILE if checkpoint == "last" else BEST_CHECKPOINT
    path = Path(run_dir) / relative
    if not path.is_file():
        raise FileNotFoundError(
            f"Expected a tfvae run directory holding {relative}. Received: '{run_dir}', which has none."
        )
    return keras.models.load_model(path)


#: The TrainConfig fields that are arguments of `tfvae.data.load`.
DATA_FIELDS = (
    "data_dir", "binarize", "threshold", "image_size", "channels", "validation_fraction", "cache", "shuffle_buffer",
)


def load_data(config: TrainConfig, **overrides):
    """`tfvae.data.load` with the run's data settings (and `overrides`, e.g. another batch size).

    Raises:
        ValueError, FileNotFoundError: see `tfvae.data.load`.
    """
    settings = {name: getattr(config, name) for name in DATA_FIELDS}
    settings.update(batch_size=config.batch_size, seed=config.seed)
    settings.update({key: value for key, value in overrides.items() if value is not None})
    source = settings.pop("dataset", config.dataset)
    return load(source, **settings)


def _finite_or_none(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def write_pictures(vae, run_dir: Path, images, labels, seed: int) -> list[str]:
    """Writes the run's pictures for `vae`; returns their file names.

    Args:
        vae: a trained `tfvae.VAE`.
        run_dir: the run directory.
        images: validation images `[N, H, W, C]` (N >= 2).
        labels: their labels `[N]`, or None.
        seed: seeds the prior samples.
    """
    written = ["samples.png", "reconstructions.png", "interpolations.png"]
    pictures.save_samples(vae, run_dir / "samples.png", GRID_SIZE, seed=seed)
    pictures.save_reconstructions(vae, images[: GRID_SIZE // 2], run_dir / "reconstructions.png")
    pictures.save_interpolations(vae, images[:16], run_dir / "interpolations.png")
    if vae.latent_dim == 2:
        pictures.save_manifold(vae, run_dir / "latent_manifold.png")
        written.append("latent_manifold.png")
        if labels is not None:
            pictures.save_latent_scatter(vae, images, labels, run_dir / "latent_scatter.png")
            written.append("latent_scatter.png")
    return written


def write_diagnostics(vae, run_dir: Path, data, seed: int) -> tuple[dict, list[str]]:
    """The posterior-collapse diagnostics of `vae` on `data` and their bar chart.

    Args:
        vae: a trained `tfvae.VAE`.
        run_dir: the run directory (`kl_per_dimension.png` is written there when q(z|x) and p(z)
            factorize over the dimensions).
        data: the validation split (a dataset of batches).
        seed: seeds the mutual-information estimate.

    Returns:
        `(report, file names)`: the `tfvae.diagnostics.posterior_diagnostics` report and the
        pictures written.
    """
    report = posterior_diagnostics(vae, data, seed=seed)
    if report["kl_per_dimension"] is None:
        return report, []
    active = [v > report["active_unit_threshold"] for v in report["posterior_mean_variance"]]
    pictures.save_kl_per_dimension(report["kl_per_dimension"], run_dir / "kl_per_dimension.png", active)
    return report, ["kl_per_dimension.png"]


def train(config: TrainConfig, resume: bool = False, verbose="auto") -> dict:
    """Trains a VAE as `config` says and writes (or continues) its run directory.

    Args:
        config: the run's `TrainConfig`. With `resume`, `config.run_dir` must be an existing
            run; its epochs may be raised to train further.
        resume: continue a run that was interrupted (or extend a finished one): weights,
            optimizer state and the epoch count come back from `backup/` (Keras's
            BackupAndRestore) or, for a finished run, from `model.keras`.
        verbose: passed to `fit` ("auto" shows Keras's progress bar).

    Returns:
        The final metrics, also written to `metrics.json`.

    Raises:
        ValueError: a bad configuration or data.
        FileExistsError: a new run's directory already holds files.
        FileNotFoundError: `resume` of a directory that is not a run.
    """
    with distribute.DistributedJob(config.strategy, config.mixed_precision) as job:
        return _train(config, resume, job, verbose)


def _train(config: TrainConfig, resume: bool, job: distribute.DistributedJob, verbose) -> dict:
    if resume:
        load_run_config(config.run_dir)  # raises unless it is a run directory
    keras.utils.set_random_seed(config.seed)
    with job.scope():
        # The data first: a bad source must not leave an empty run directory behind.
        data = load_data(config)
    requested_run_dir = Path(config.run_dir or default_run_dir(config))
    config = dataclasses.replace(config, run_dir=str(requested_run_dir))
    # Only the chief writes the run directory; other workers of a multi-worker job write to a
    # temporary directory that the job removes (see tfvae.distribute.DistributedJob).
    if resume and job.is_chief:
        run_dir = requested_run_dir
    else:
        run_dir = job.output_dir(requested_run_dir, prepare_run_dir, dataclasses.asdict(config))
    write_json_atomic(run_dir / CONFIG_FILE, dataclasses.asdict(config))
    preview_images, preview_labels = data.validation_examples(GRID_SIZE * 4, seed=config.seed)

    finished_model = run_dir / MODEL_FILE
    backup_dir = job.backup_dir or run_dir / BACKUP_DIR
    interrupted = (backup_dir / "training_metadata.json").exists()
    # A multi-worker chief restarted with the same command resumes without --resume.
    previous_rows = read_metrics_csv(run_dir / "metrics.csv") if resume or interrupted else []
    with job.scope():
        if resume and not interrupted and finished_model.exists():
            # A finished run (its backup was removed at the end): extend it from its last model.
            vae = keras.models.load_model(finished_model)
            initial_epoch = len(previous_rows)
        else:
            vae = build_conv_vae(
                data.image_shape,
                config.latent_dim,
                filters=config.filters,
                hidden_units=config.hidden_units,
                likelihood=config.likelihood,
                beta=config.beta,
                seed=config.seed,
            )
            initial_epoch = 0  # BackupAndRestore moves it forward when a backup exists
        optimizer = vae.optimizer if vae.compiled else keras.optimizers.Adam(config.learning_rate)
        vae.compile(optimizer=optimizer, jit_compile=config.jit_compile)

    last_good = AtomicModelCheckpoint(finished_model)
    best = AtomicModelCheckpoint(run_dir / BEST_CHECKPOINT, monitor="val_loss")
    best.best = min((float(r["val_loss"]) for r in previous_rows if r.get("val_loss")), default=None)
    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        AtomicBackupAndRestore(str(backup_dir), delete_checkpoint=True),
        last_good,
        best,
        MetricsCSVLogger(run_dir / "metrics.csv", previous_rows),
        keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs")),
        ImageSummaries(run_dir / "logs" / "images", preview_images[:32], seed=config.seed),
    ]
    started = time.perf_counter()
    history = vae.fit(
        data.train,
        validation_data=data.validation,
        epochs=config.epochs,
        initial_epoch=initial_epoch,
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,  # the training dataset reshuffles itself every epoch
    )
    seconds = time.perf_counter() - started

    rows = read_metrics_csv(run_dir / "metrics.csv")
    good_rows = [r for r in rows if all(math.isfinite(float(v)) for k, v in r.items() if v != "")]
    # Counted from fit's own history: a restarted non-chief worker has lost its earlier rows.
    start_epoch = history.epoch[0] if history.epoch else initial_epoch
    finite = [all(math.isfinite(values[i]) for values in history.history.values()) for i in range(len(history.epoch))]
    stopped_on_nan = not all(finite)
    written, diagnostics = [], None
    if finished_model.exists() and job.is_chief:
        # Pictures of the last good model: the one on disk.
        vae = keras.models.load_model(finished_model)
        written = write_pictures(vae, run_dir, preview_images, preview_labels, config.seed)
        diagnostics, charts = write_diagnostics(vae, run_dir, data.validation, config.seed)
        written += charts
    if rows:
        pictures.save_loss_curves(rows, run_dir / "loss_curves.png")
        written.append("loss_curves.png")
    last = good_rows[-1] if good_rows else {}
    metrics = {
        "run_dir": str(run_dir),
        "epochs_completed": start_epoch + (finite.index(False) if stopped_on_nan else len(finite)),
        "epochs_requested": config.epochs,
        "stopped_on_nan": stopped_on_nan,
        "train": {k: _finite_or_none(v) for k, v in last.items() if k != "epoch" and not k.startswith("val_")},
        "validation": {k[4:]: _finite_or_none(v) for k, v in last.items() if k.startswith("val_")},
        "best_val_loss": best.best,
        "diagnostics": diagnostics,
        "seconds_this_session": round(seconds, 2),
        "image_shape": list(data.image_shape),
        "num_train_examples": data.num_train,
        "num_validation_examples": data.num_validation,
        "pictures": written,
        "epochs_run_this_session": len(history.history.get("loss", [])),
        "resumed_at_epoch": start_epoch,
        "strategy": config.strategy,
        "num_replicas": job.strategy.num_replicas_in_sync,
    }
    write_json_atomic(run_dir / "metrics.json", metrics)
    return metrics

