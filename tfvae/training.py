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
    style_transfer.png     for a conditional run: each row one image's z under every class
    latent_manifold.png, latent_scatter.png    when latent_dim == 2 (the scatter when labels exist;
                           no manifold for a conditional or two-layer run)
    kl_per_dimension.png   the KL of each latent dimension (posterior-collapse diagnostics)
    test_metrics.json      with a test set (`test_dataset`): the last model's scores on it

Every file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import shutil
import sys
import time
import zipfile
import zlib
from pathlib import Path

import keras

from tfvae import distribute, interrupts, pictures
from tfvae.callbacks import (
    AtomicBackupAndRestore,
    AtomicModelCheckpoint,
    ImageSummaries,
    MetricsCSVLogger,
    StopOnNonFiniteLoss,
    read_metrics_csv,
)
from tfvae.config import DATA_FIELDS, TrainConfig, read_config_file  # noqa: F401 (defined there, TF-free)
from tfvae.data import load, translate_pipeline_errors
from tfvae.data.pipeline import source_short_name
from tfvae.diagnostics import posterior_diagnostics
from tfvae.distributions import get_likelihood, get_posterior, get_prior
from tfvae.files import write_json_atomic
from tfvae.models import build_conv_two_layer_vae, build_conv_vae
from tfvae.models.two_layer import DEFAULT_HIDDEN_UNITS
from tfvae.objectives import ELBO, IWAE, CyclicalAnnealing, LinearWarmup

#: Images in the sample, reconstruction and interpolation pictures.
GRID_SIZE = 64
CONFIG_FILE = "config.json"
MODEL_FILE = "model.keras"
BEST_CHECKPOINT = "checkpoints/best.keras"
BACKUP_DIR = "backup"
TEST_METRICS_FILE = "test_metrics.json"
#: K of the importance-weighted NLL a run scores its test set with: a quick figure (100 decodes
#: per test image; `tfvae evaluate RUN --split test --samples 1000` gives the standard one).
TEST_IW_SAMPLES = 100


def default_run_dir(config: TrainConfig) -> Path:
    """`runs/<dataset>-<YYYYmmdd-HHMMSS>` under the working directory."""
    name = source_short_name(config.dataset)
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


#: What tfvae writes into a run directory before its first epoch is saved: a run directory
#: holding nothing else is the leftover of a failed start, and a new run may take it over.
_FAILED_START_FILES = (CONFIG_FILE,)
_FAILED_START_FOLDERS = ("logs", "checkpoints", BACKUP_DIR)


def _is_failed_start(run_dir: Path) -> bool:
    """Whether `run_dir` holds only what a `train` that saved no epoch leaves: config.json, and
    TensorBoard event files or nothing under logs/, checkpoints/ and backup/."""
    for entry in run_dir.iterdir():
        if entry.name in _FAILED_START_FILES and entry.is_file():
            continue
        if entry.name not in _FAILED_START_FOLDERS or not entry.is_dir() or entry.is_symlink():
            return False
        for path in entry.rglob("*"):
            if path.is_symlink() or (
                path.is_file() and not (entry.name == "logs" and path.name.startswith("events.out.tfevents."))
            ):
                return False
    return True


def prepare_run_dir(run_dir: str | os.PathLike) -> Path:
    """Creates `run_dir`, refusing one that already holds files (they are the user's).

    A directory that holds only what a failed start of `tfvae train` wrote (config.json and empty
    TensorBoard logs, no saved epoch) counts as empty: those leftovers are removed, nothing else.

    Raises:
        FileExistsError: `run_dir` is a file, or a directory holding other files.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(
            f"Expected --run-dir to name a directory. Received: '{run_dir}', which is a file "
            "(nothing was changed)."
        )
    if run_dir.exists() and any(run_dir.iterdir()):
        if not _is_failed_start(run_dir):
            raise FileExistsError(
                f"Expected a new or empty run directory. Received: '{run_dir}', which already holds "
                "files; choose another --run-dir, or continue it with --resume (nothing was changed)."
            )
        for name in _FAILED_START_FOLDERS:
            shutil.rmtree(run_dir / name, ignore_errors=True)
        (run_dir / CONFIG_FILE).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def load_run_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The `TrainConfig` saved in a run directory.

    Raises:
        FileNotFoundError: `run_dir` or its `config.json` does not exist.
        ValueError: `config.json` is not a valid configuration (corrupt, truncated, edited).
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"Expected a tfvae run directory with {CONFIG_FILE}. Received: '{run_dir}', which has none."
        )
    try:
        values = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        raise ValueError(f"Expected '{path}' to hold a run's configuration as JSON. It cannot be read "
                         f"(corrupt or truncated): {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"Expected '{path}' to hold a JSON object of settings. Received: "
                         f"{type(values).__name__}")
    values["run_dir"] = str(run_dir)
    return TrainConfig.from_dict(values, source=str(path))


def load_keras_file(path: str | os.PathLike):
    """`keras.models.load_model(path)` once the file is known to be an intact `.keras` archive.

    Keras reports a file that is not a zip archive as "File not found"; this says what it is.

    Raises:
        ValueError: the file is empty, truncated or corrupt (a zip member fails its CRC check).
        OSError: the file cannot be read.
    """
    contents = io.BytesIO(Path(path).read_bytes())  # a file that cannot be read raises OSError here
    try:
        with zipfile.ZipFile(contents) as archive:
            damaged = archive.testzip()  # reads every member and checks its CRC
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError, OSError):
        damaged = "the archive"  # damaged headers: offsets, sizes or names that make no sense
    if damaged is not None:
        raise ValueError(f"'{path}' is not a readable .keras file (corrupt or truncated: {damaged} "
                         "fails its checks).")
    return keras.models.load_model(path)


def epochs_trained(run_dir: str | os.PathLike) -> int:
    """The epochs a run directory records: rows of metrics.csv, or its backup's epoch if later."""
    run_dir = Path(run_dir)
    epochs = len(read_metrics_csv(run_dir / "metrics.csv"))
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        metadata = json.loads((run_dir / BACKUP_DIR / distribute.BACKUP_METADATA_FILE).read_text())
        epochs = max(epochs, int(metadata["epoch"]))
    return epochs


def _backup_is_readable(backup_dir: Path) -> bool:
    """Whether a backup's metadata parses and its model archive passes the zip CRC checks."""
    try:
        metadata = json.loads((backup_dir / distribute.BACKUP_METADATA_FILE).read_text())
        int(metadata["epoch"])
        with zipfile.ZipFile(backup_dir / AtomicBackupAndRestore.WEIGHTS_FILE) as archive:
            return archive.testzip() is None
    except (OSError, ValueError, TypeError, KeyError, zipfile.BadZipFile):
        return False


def load_run_model(run_dir: str | os.PathLike, checkpoint: str = "last"):
    """Loads a run directory's model: "last" (model.keras) or "best" (checkpoints/best.keras).

    Raises:
        FileNotFoundError: the run directory or its model file does not exist.
        ValueError: an unknown checkpoint name, or a corrupt model file.
    """
    if checkpoint not in ("last", "best"):
        raise ValueError(f"Expected checkpoint 'last' or 'best'. Received: {checkpoint!r}")
    relative = MODEL_FILE if checkpoint == "last" else BEST_CHECKPOINT
    path = Path(run_dir) / relative
    if not path.is_file():
        raise FileNotFoundError(
            f"Expected a tfvae run directory holding {relative}. Received: '{run_dir}', which has none."
        )
    return load_keras_file(path)


def load_data(config: TrainConfig, **overrides):
    """`tfvae.data.load` with the run's data settings (and `overrides`, e.g. another batch size).

    A conditional run's batches are `(images, labels)`.

    Raises:
        ValueError, FileNotFoundError: see `tfvae.data.load`.
    """
    settings = {name: getattr(config, name) for name in DATA_FIELDS}
    settings.update(batch_size=config.batch_size, seed=config.seed, labels=config.conditional)
    settings.update({key: value for key, value in overrides.items() if value is not None})
    source = settings.pop("dataset", config.dataset)
    return load(source, **settings)


def build_objective(config: TrainConfig, steps_per_epoch: int):
    """The `tfvae.objectives` object of a run's settings; schedule lengths in epochs become steps.

    Args:
        config: the run's `TrainConfig` (checked by `check_objective_settings`).
        steps_per_epoch: int >= 1. Optimizer steps per epoch.

    Returns:
        `IWAE(iw_samples, gradient_estimator)` when iw_samples > 1, else `ELBO(beta, schedule,
        free_bits)`.
    """
    if config.iw_samples > 1:
        return IWAE(config.iw_samples, config.gradient_estimator)
    schedule = None
    if config.kl_schedule == "linear":
        schedule = LinearWarmup(max(1, round(config.kl_warmup * steps_per_epoch)))
    elif config.kl_schedule == "cyclical":
        schedule = CyclicalAnnealing(max(1, round(config.kl_cycle * steps_per_epoch)))
    return ELBO(config.beta, schedule, config.free_bits)


def _steps_per_epoch(data, batch_size: int) -> int:
    if data.num_train is not None:
        return max(1, math.ceil(data.num_train / batch_size))
    return max(1, int(data.train.cardinality().numpy()))
def config_likelihood(config: TrainConfig):
    """The `tfvae.distributions.Likelihood` a config names, with its settings.

    Raises:
        ValueError: an unknown likelihood, or components for one that takes none.
    """
    settings = {}
    if config.likelihood_components is not None:
        settings["components"] = config.likelihood_components
    return get_likelihood(config.likelihood, **settings)


def config_posterior(config: TrainConfig):
    """The `tfvae.distributions.Posterior` a config names, with its settings (iaf_steps, ...)."""
    settings = {}
    if config.iaf_steps is not None:
        settings["steps"] = config.iaf_steps
    if config.iaf_context_units is not None:
        settings["context_units"] = config.iaf_context_units
    return get_posterior(config.posterior, **settings)
def config_prior(config: TrainConfig):
    """The `tfvae.distributions.Prior` a config names, with its components and the run's seed.

    Raises:
        ValueError: an unknown prior, or components for one that takes none.
    """
    if config.prior == "standard_normal":
        return get_prior(config.prior)
    settings = {"seed": config.seed}
    if config.prior_components is not None:
        settings["components"] = config.prior_components
    return get_prior(config.prior, **settings)


def _finite_or_none(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def write_pictures(vae, run_dir: Path, images, labels, seed: int) -> list[str]:
    """Writes the run's pictures for `vae`; returns their file names.

    A conditional model (`tfvae.ConditionalVAE`) is given the images' labels: its samples have
    one row per class, its reconstructions and interpolations are encoded under the images'
    labels (each interpolation decoded under its first image's label), and `style_transfer.png`
    shows one validation image of each class per row, then its z decoded under every class. Its
    latent manifold is not drawn (it would take one per class), nor is a two-layer model's
    (`tfvae.TwoLayerVAE`: its prior p(z1|z2) p(z2) has no quantile grid).

    Args:
        vae: a trained `tfvae.VAE`.
        run_dir: the run directory.
        images: validation images `[N, H, W, C]`: reconstructions need N >= 1,
            interpolations N >= 2 (a tiny validation split gets only the pictures it allows).
        labels: their labels `[N]`, or None (a conditional model needs them).
        seed: seeds the prior samples.
    """
    conditional = pictures.model_classes(vae) is not None
    given = labels if conditional else None
    written = ["samples.png"]
    pictures.save_samples(vae, run_dir / "samples.png", GRID_SIZE, seed=seed)
    if len(images) >= 1:
        count = GRID_SIZE // 2
        pictures.save_reconstructions(
            vae, images[:count], run_dir / "reconstructions.png", None if given is None else given[:count]
        )
        written.append("reconstructions.png")
    if len(images) >= 1 and conditional:
        rows = pictures.first_of_each_class(given)
        pictures.save_style_transfer(vae, images[rows], given[rows], run_dir / "style_transfer.png")
        written.append("style_transfer.png")
    if len(images) >= 2:
        pictures.save_interpolations(
            vae, images[:16], run_dir / "interpolations.png", labels=None if given is None else given[:16]
        )
        written.append("interpolations.png")
    if vae.latent_dim == 2:
        # A manifold walks p(z)'s quantiles, which a two-layer model's p(z1|z2) p(z2) has not.
        if not conditional and len(vae.latent_dims) == 1:
            pictures.save_manifold(vae, run_dir / "latent_manifold.png")
            written.append("latent_manifold.png")
        if labels is not None:
            pictures.save_latent_scatter(vae, images, labels, run_dir / "latent_scatter.png")
            written.append("latent_scatter.png")
    return written


def _check_cache(cache) -> None:
    """A cache path prefix must lie in an existing folder (checked by `train` before anything is
    written; not by TrainConfig, so that a run whose cache folder is gone can still be evaluated)."""
    if not isinstance(cache, str) or cache in ("auto", "memory", "none") or not cache:
        return  # the data pipeline checks the rest
    folder = Path(cache).parent
    if not folder.is_dir():
        raise ValueError(
            f"Expected cache to be 'auto', 'memory', 'none' or a file path prefix in an existing "
            f"folder. Received: cache={cache!r}, whose folder '{folder}' does not exist."
        )


def _run_model(config: TrainConfig, image_shape, steps_per_epoch: int, resume_dir: Path | None):
    """The model to train and its first epoch: a new one, or the one a resumed run continues.

    A new model is a `tfvae.TwoLayerVAE` with latent_dims (latent_dim, top_latent_dim) when
    `config.stochastic_layers == 2`, else a `tfvae.VAE` (a `tfvae.ConditionalVAE` when conditional).

    A resumed run with a backup (interrupted) gets a new model that `BackupAndRestore` fills in
    `fit`; a finished run (its backup removed at the end) continues from its model.keras; so does
    an interrupted run whose backup is unreadable, with a warning on stderr.

    Raises:
        ValueError: the model cannot be built from `config`; or the backup is unreadable and
            there is no model.keras to fall back on.
    """
    initial_epoch = 0  # BackupAndRestore moves it forward when a backup exists
    if resume_dir is not None:
        finished_model = resume_dir / MODEL_FILE
        backup_dir = resume_dir / BACKUP_DIR
        interrupted = (backup_dir / distribute.BACKUP_METADATA_FILE).exists()
        if interrupted and not _backup_is_readable(backup_dir):
            backup_file = backup_dir / AtomicBackupAndRestore.WEIGHTS_FILE
            if not finished_model.exists():
                raise ValueError(
                    f"Expected a readable backup to resume '{resume_dir}'. Received: '{backup_file}', "
                    "which is missing, corrupt or truncated, and no model.keras of a finished epoch; "
                    f"start over (remove '{resume_dir}' or choose another --run-dir)."
                )
            print(f"tfvae: warning: the backup '{backup_file}' is missing, corrupt or truncated; "
                  f"resuming from '{finished_model}', the last finished epoch's model",
                  file=sys.stderr)
            shutil.rmtree(backup_dir)
            interrupted = False
        if not interrupted and finished_model.exists():
            # A finished run (its backup was removed at the end): extend it from its last model.
            return keras.models.load_model(finished_model), len(read_metrics_csv(resume_dir / "metrics.csv"))
    parts = dict(
        filters=config.filters,
        likelihood=config_likelihood(config),
        posterior=config_posterior(config),
        prior=config_prior(config),
        objective=build_objective(config, steps_per_epoch),
        seed=config.seed,
    )
    if config.stochastic_layers == 2:
        latent_dims = (config.latent_dim, config.top_latent_dim or config.latent_dim)
        hidden_units = config.hidden_units or DEFAULT_HIDDEN_UNITS  # the builder has no layer-free variant
        return build_conv_two_layer_vae(image_shape, latent_dims, hidden_units=hidden_units, **parts), initial_epoch
    # Only a conditional model takes labels (the model of `tfvae.models` with num_classes).
    conditional = {"num_classes": config.num_classes, "class_prior": config.class_prior} if config.conditional else {}
    vae = build_conv_vae(image_shape, config.latent_dim, **conditional, hidden_units=config.hidden_units, **parts)
    return vae, initial_epoch
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


def write_test_metrics(vae, run_dir: Path, test, config: TrainConfig) -> dict:
    """Scores the run's last model on its test set and writes `test_metrics.json`.

    The test set is scored only here, after training: it never chooses a checkpoint.

    Args:
        vae: the run's last model (model.keras).
        run_dir: the run directory.
        test: the `tfvae.data.HeldOutData` of the run's `test_dataset` (`DataSplits.test`).
        config: the run's `TrainConfig`.

    Returns:
        The fields of `tfvae.evaluation.score` (ELBO and IW-NLL with K = `TEST_IW_SAMPLES`,
        which examples, their binarization), plus `dataset` and `checkpoint` ("last").
    """
    from tfvae.evaluation import score  # noqa: PLC0415 (tfvae.evaluation imports this module)

    result = {"dataset": config.test_dataset, "checkpoint": "last"}
    result.update(score(vae, test, TEST_IW_SAMPLES, config.batch_size, seed=config.seed))
    write_json_atomic(run_dir / TEST_METRICS_FILE, result)
    return result


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
        ValueError: a bad configuration, data or model (found before anything is written; a
            `tfvae.data.DataError` for a file that cannot be read, also when found during
            training); with `resume`, fewer epochs than the run has, or an unreadable backup and
            no model.keras.
        FileExistsError: a new run's directory already holds files (other than the leftovers of
            a failed start, see `prepare_run_dir`), or is a file.
        FileNotFoundError: `resume` of a directory that is not a run.
        OSError: a file cannot be written (e.g. no space left on device), naming it; the files
            of the last finished epoch stay intact and `resume` continues from them.
        KeyboardInterrupt: Ctrl-C, even one that TensorFlow's finalizers swallowed (raised at
            the next batch's end; `tfvae.interrupts`); `resume` continues from the last epoch.
    """
    # An image found unreadable mid-fit becomes a DataError naming the file; a Ctrl-C is never
    # lost (see tfvae.interrupts).
    with interrupts.guard(), translate_pipeline_errors(), distribute.DistributedJob(
        config.strategy, config.mixed_precision
    ) as job:
        return _train(config, resume, job, verbose)


def _train(config: TrainConfig, resume: bool, job: distribute.DistributedJob, verbose) -> dict:
    _check_cache(config.cache)
    if resume:
        load_run_config(config.run_dir)  # raises unless it is a run directory
        trained = epochs_trained(config.run_dir)
        if config.epochs < trained:
            raise ValueError(
                f"Expected --epochs >= {trained} to resume '{config.run_dir}', which has trained "
                f"{trained} epochs. Received: epochs={config.epochs} (nothing was changed)."
            )
    keras.utils.set_random_seed(config.seed)
    requested_run_dir = Path(config.run_dir or default_run_dir(config))
    config = dataclasses.replace(config, run_dir=str(requested_run_dir))
    # The data and the model first: a bad source or a model that cannot be built must not leave
    # a run directory behind (a retry of the corrected command would find it).
    with job.scope():
        data = load_data(config)
        if config.conditional:
            config = dataclasses.replace(config, num_classes=data.num_classes)
        preview_images, preview_labels = data.validation_examples(GRID_SIZE * 4, seed=config.seed)
        # Only the chief resumes in the run directory itself (see output_dir below).
        vae, initial_epoch = _run_model(
            config, data.image_shape, _steps_per_epoch(data, config.batch_size),
            requested_run_dir if resume and job.is_chief else None,
        )
        optimizer = vae.optimizer if vae.compiled else keras.optimizers.Adam(config.learning_rate)
        vae.compile(optimizer=optimizer, jit_compile=config.jit_compile)

    # Only the chief writes the run directory; other workers of a multi-worker job write to a
    # temporary directory that the job removes (see tfvae.distribute.DistributedJob).
    if resume and job.is_chief:
        run_dir = requested_run_dir
    else:
        run_dir = job.output_dir(requested_run_dir, prepare_run_dir, dataclasses.asdict(config))
    write_json_atomic(run_dir / CONFIG_FILE, dataclasses.asdict(config))

    finished_model = run_dir / MODEL_FILE
    backup_dir = job.backup_dir or run_dir / BACKUP_DIR
    interrupted = (backup_dir / distribute.BACKUP_METADATA_FILE).exists()
    # A multi-worker chief restarted with the same command resumes without --resume.
    previous_rows = read_metrics_csv(run_dir / "metrics.csv") if resume or interrupted else []
    last_good = AtomicModelCheckpoint(finished_model)
    best = AtomicModelCheckpoint(run_dir / BEST_CHECKPOINT, monitor="val_loss")
    best.best = min((float(r["val_loss"]) for r in previous_rows if r.get("val_loss")), default=None)
    callbacks = [
        interrupts.RaisePendingInterrupt(),  # first: an epoch ended by Ctrl-C is not recorded
        StopOnNonFiniteLoss(),
        last_good,
        best,
        MetricsCSVLogger(run_dir / "metrics.csv", previous_rows),
        keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs")),
        ImageSummaries(
            run_dir / "logs" / "images", preview_images[:32], seed=config.seed,
            labels=preview_labels[:32] if config.conditional else None,
        ),
        # Last: its metadata marks an epoch as done only once every file of that epoch is
        # written, so a run stopped by a full disk or a kill redoes that epoch on resume.
        AtomicBackupAndRestore(str(backup_dir), delete_checkpoint=True),
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
        if data.num_validation is None or data.num_validation >= 2:  # a covariance needs two
            diagnostics, charts = write_diagnostics(vae, run_dir, data.validation, config.seed)
            written += charts
    if rows:
        pictures.save_loss_curves(rows, run_dir / "loss_curves.png")
        written.append("loss_curves.png")
    test_metrics = None
    if data.test is not None and finished_model.exists() and job.is_chief:
        test_metrics = write_test_metrics(vae, run_dir, data.test, config)
    last = good_rows[-1] if good_rows else {}
    metrics = {
        "run_dir": str(run_dir),
        "epochs_completed": start_epoch + (finite.index(False) if stopped_on_nan else len(finite)),
        "epochs_requested": config.epochs,
        "stopped_on_nan": stopped_on_nan,
        "train": {k: _finite_or_none(v) for k, v in last.items() if k != "epoch" and not k.startswith("val_")},
        "validation": {k[4:]: _finite_or_none(v) for k, v in last.items() if k.startswith("val_")},
        "best_val_loss": best.best,
        "test": test_metrics,
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

