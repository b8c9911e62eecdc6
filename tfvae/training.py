"""The training job behind `tfvae train`: data -> model -> fit -> a run directory."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path

import keras

from tfvae import distribute
from tfvae.callbacks import SaveLastGoodModel
from tfvae.data import load_digits
from tfvae.files import write_json_atomic
from tfvae.images import image_grid, interleave_pairs, save_png
from tfvae.models import build_conv_vae

#: Number of images in the sample and reconstruction grids.
GRID_SIZE = 64


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on; saved as `config.json` in the run directory."""

    dataset: str = "digits"
    latent_dim: int = 8
    filters: tuple[int, ...] = (32, 64)
    hidden_units: int | None = None
    likelihood: str = "bernoulli"
    beta: float = 1.0
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 0
    run_dir: str | None = None
    strategy: str = "default"
    mixed_precision: str | None = None
    jit_compile: bool = False

    def __post_init__(self):
        self.filters = tuple(self.filters)
        distribute.check_training_options(self.strategy, self.mixed_precision, self.jit_compile)
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Expected {name} to be an integer >= 1. Received: {name}={value!r}")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise ValueError(
                f"Expected learning_rate > 0. Received: learning_rate={self.learning_rate!r}"
            )
        if self.dataset != "digits":
            raise ValueError(f"Unknown dataset '{self.dataset}'. Expected one of ['digits'].")


def default_run_dir(config: TrainConfig) -> Path:
    """`runs/<dataset>-<YYYYmmdd-HHMMSS>` under the working directory."""
    return Path("runs") / f"{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(run_dir: str | os.PathLike) -> Path:
    """Creates `run_dir`, refusing one that already holds files (they are the user's).

    Raises:
        FileExistsError: `run_dir` exists and is not empty, or is a file.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise FileExistsError(
            f"Expected a new or empty run directory. Received: '{run_dir}', which already holds "
            "files; choose another --run-dir (nothing was changed)."
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _finite_float(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def train(config: TrainConfig, verbose="auto") -> dict:
    """Trains a VAE as `config` says and writes its run directory.

    The run directory receives `config.json`, `model.keras` (after every finite epoch, so a NaN
    leaves the last good model), `samples.png`, `reconstructions.png` (inputs and their
    reconstructions, side by side) and `metrics.json`.

    Args:
        config: the run's `TrainConfig`.
        verbose: passed to `fit` ("auto" shows Keras's progress bar).

    Returns:
        The final metrics: `{"run_dir", "epochs_completed", "train": {...}, "validation": {...},
        "seconds"}`.

    Raises:
        ValueError: a bad configuration.
        FileExistsError: the run directory already holds files.
    """
    with distribute.DistributedJob(config.strategy, config.mixed_precision) as job:
        return _train(config, job, verbose)


def _train(config: TrainConfig, job: distribute.DistributedJob, verbose) -> dict:
    requested_run_dir = config.run_dir or default_run_dir(config)
    config = dataclasses.replace(config, run_dir=str(requested_run_dir))
    run_dir = job.output_dir(requested_run_dir, prepare_run_dir, dataclasses.asdict(config))
    write_json_atomic(run_dir / "config.json", dataclasses.asdict(config))

    keras.utils.set_random_seed(config.seed)
    (train_images, _), (validation_images, _) = load_digits(seed=config.seed)
    with job.scope():
        vae = build_conv_vae(
            train_images.shape[1:],
            config.latent_dim,
            filters=config.filters,
            hidden_units=config.hidden_units,
            likelihood=config.likelihood,
            beta=config.beta,
            seed=config.seed,
        )
        vae.compile(
            optimizer=keras.optimizers.Adam(config.learning_rate), jit_compile=config.jit_compile
        )
    saver = SaveLastGoodModel(run_dir / "model.keras")
    started = time.perf_counter()
    history = vae.fit(
        train_images,
        validation_data=validation_images,
        epochs=config.epochs,
        batch_size=config.batch_size,
        callbacks=[keras.callbacks.TerminateOnNaN(), saver, *job.callbacks()],
        verbose=verbose,
    )
    seconds = time.perf_counter() - started

    if saver.saved_epochs:
        # Pictures and metrics of the last good model, the one on disk.
        vae = keras.models.load_model(run_dir / "model.keras")
        save_png(run_dir / "samples.png", image_grid(vae.sample(GRID_SIZE, seed=config.seed), scale=4))
        originals = validation_images[: GRID_SIZE // 2]
        pairs = interleave_pairs(originals, vae.reconstruct(originals))
        save_png(run_dir / "reconstructions.png", image_grid(pairs, columns=8, scale=4))
    last_good_epoch = saver.saved_epochs - 1
    last = {k: v[last_good_epoch] for k, v in history.history.items()} if saver.saved_epochs else {}
    metrics = {
        "run_dir": str(run_dir),
        # After a multi-worker restart, fit resumed at history.epoch[0] (BackupAndRestore).
        "epochs_completed": (history.epoch[0] if history.epoch else 0) + saver.saved_epochs,
        "resumed_at_epoch": history.epoch[0] if history.epoch else 0,
        "epochs_requested": config.epochs,
        "stopped_on_nan": len(history.history.get("loss", [])) > saver.saved_epochs,
        "train": {k: _finite_float(v) for k, v in last.items() if not k.startswith("val_")},
        "validation": {k[4:]: _finite_float(v) for k, v in last.items() if k.startswith("val_")},
        "seconds": round(seconds, 2),
        "num_train_examples": int(len(train_images)),
        "num_validation_examples": int(len(validation_images)),
    }
    write_json_atomic(run_dir / "metrics.json", metrics)
    return metrics

