"""Choosing a `tf.distribute` strategy for training, and what a process of a distributed job writes.

See the README's "Distributed training" section for the multi-GPU and several-machines recipes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import keras
import tensorflow as tf

# Re-exported: the names live in the TensorFlow-free tfvae.config, for the command line's parser.
from tfvae.config import (  # noqa: F401
    MIXED_PRECISION_POLICIES,
    STRATEGY_NAMES,
    check_mixed_precision,
    check_training_options,
)

#: The file `keras.callbacks.BackupAndRestore` writes after each epoch (its presence marks a run
#: that was interrupted and can resume).
BACKUP_METADATA_FILE = "training_metadata.json"


def _check_positive_int(value, name):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"Expected {name} to be an integer >= 1. Received: {name}={value!r}")


def _logical_cpu_devices(count: int) -> list[str]:
    """Splits the first physical CPU into `count` logical devices (for tests and benchmarks)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * count
        )
    except RuntimeError:
        # TensorFlow has initialized its devices already: usable only if they are the same.
        pass
    devices = [device.name for device in tf.config.list_logical_devices("CPU")]
    if len(devices) != count:
        raise ValueError(
            f"Expected to split the CPU into {count} logical devices, but TensorFlow had already "
            f"initialized {len(devices)}. Received: num_cpu_devices={count}. Call get_strategy "
            "before any other TensorFlow operation (in a fresh process)."
        )
    return devices


def _tf_config() -> dict:
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise ValueError(
            "Expected the TF_CONFIG environment variable to describe the cluster for "
            "strategy 'multi_worker', e.g. TF_CONFIG='{\"cluster\": {\"worker\": "
            "[\"host1:12345\", \"host2:12345\"]}, \"task\": {\"type\": \"worker\", "
            "\"index\": 0}}'. Received: no TF_CONFIG."
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError:
        config = None
    if not (isinstance(config, dict) and config.get("cluster") and "task" in config):
        raise ValueError(
            "Expected TF_CONFIG to be JSON with a 'cluster' (job name -> list of host:port) and a "
            f"'task' ({{'type': ..., 'index': ...}}). Received: TF_CONFIG={text!r}"
        )
    return config


def _tpu_strategy(tpu: str | None) -> tf.distribute.Strategy:
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        raise ValueError(
            "Expected a reachable TPU for strategy 'tpu' (a Cloud TPU VM, or tpu='name' / "
            f"'grpc://host:port'). Received: tpu={tpu!r}, which failed with: {error}"
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def get_strategy(
    name: str = "default",
    *,
    devices: list[str] | None = None,
    num_cpu_devices: int | None = None,
    tpu: str | None = None,
) -> tf.distribute.Strategy:
    """Returns the `tf.distribute.Strategy` called `name`, ready for `with strategy.scope():`.

    Create the model, its optimizer and metrics under `strategy.scope()` and give `fit` the
    global batch size: each step splits it across the replicas. tfvae's `VAE.train_step` makes
    the gradient that of the global batch's mean loss however the batch was split, and reports
    metrics over the global batch.

    Names:
        `default`: no distribution (one device, the one TensorFlow picks).
        `one_device`: `OneDeviceStrategy` on `devices[0]`, or the first GPU, or the CPU.
        `mirrored`: `MirroredStrategy`, synchronous data parallelism over `devices`, by default
            all local GPUs (the CPU if there is none); `num_cpu_devices=N` mirrors N logical
            devices split from the CPU instead (for tests; no speed-up).
        `multi_worker`: `MultiWorkerMirroredStrategy` over the machines listed in the
            `TF_CONFIG` environment variable (every worker runs the same program). Also installs
            `install_keras_fit_fix`. Create it first thing in the program, before any other
            TensorFlow operation.
        `tpu`: `TPUStrategy` on the TPU named by `tpu` (None: the TPU VM this runs on).

    Args:
        name: str. One of `STRATEGY_NAMES`.
        devices: list of device names (e.g. `["/gpu:0", "/gpu:1"]`) for `one_device` and
            `mirrored`.
        num_cpu_devices: int >= 1. For `mirrored`: split the CPU into this many logical devices
            and mirror them. Must come before TensorFlow initializes its devices.
        tpu: str. For `tpu`: the TPU's name or `grpc://` address.

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        ValueError: an unknown name; `multi_worker` without a valid `TF_CONFIG`; `tpu` when no
            TPU is reachable; `num_cpu_devices` after TensorFlow made other devices.

    Example:

    >>> strategy = get_strategy("mirrored")  # doctest: +SKIP
    >>> with strategy.scope():  # doctest: +SKIP
    ...     vae = tfvae.build_conv_vae((28, 28, 1), latent_dim=16)
    ...     vae.compile(optimizer="adam")
    >>> vae.fit(images, batch_size=256, epochs=10)  # doctest: +SKIP
    """
    if name not in STRATEGY_NAMES:
        raise ValueError(f"Unknown strategy '{name}'. Expected one of {list(STRATEGY_NAMES)}.")
    _check_positive_int(num_cpu_devices, "num_cpu_devices")
    if num_cpu_devices is not None and name != "mirrored":
        raise ValueError(
            "Expected num_cpu_devices only with strategy 'mirrored'. "
            f"Received: num_cpu_devices={num_cpu_devices} with strategy '{name}'."
        )
    if devices is not None and name not in ("one_device", "mirrored"):
        raise ValueError(
            "Expected devices only with strategies 'one_device' and 'mirrored'. "
            f"Received: devices={devices!r} with strategy '{name}'."
        )
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        if devices:
            device = devices[0]
        else:
            device = "/gpu:0" if tf.config.list_physical_devices("GPU") else "/cpu:0"
        return tf.distribute.OneDeviceStrategy(device)
    if name == "mirrored":
        if num_cpu_devices is not None:
            devices = _logical_cpu_devices(num_cpu_devices)
        install_keras_fit_fix()
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        _tf_config()
        install_keras_fit_fix()
        return tf.distribute.MultiWorkerMirroredStrategy()
    return _tpu_strategy(tpu)


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process is the one that writes the run (True outside a multi-worker job).

    The chief is the task of type `chief`, or worker 0 when the cluster has no `chief` job.
    """
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if task_type is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    if task_type == "chief":
        return True
    has_chief_job = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and resolver.task_id == 0 and not has_chief_job


@contextlib.contextmanager
def dtype_policy(policy: str | None):
    """Sets Keras's global dtype policy inside the block (None keeps it); restores it after.

    Layers created inside compute in the policy's dtype and keep float32 variables. The VAE
    computes its likelihood, KL and loss in float32 whatever the policy, and `compile` wraps the
    optimizer in a `LossScaleOptimizer` under `mixed_float16` (bfloat16 needs no loss scaling).

    Raises:
        ValueError: see `check_mixed_precision`.
    """
    check_mixed_precision(policy)
    previous = keras.config.dtype_policy()
    if policy is not None:
        keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


# --------------------------------------------------------------------------- the Keras fix
# Keras 3 (checked up to 3.15.1, the newest that setup.cfg allows; re-check when raising the cap)
# fails in `fit` under tf.distribute in two places (keras-team/keras#20585,
# tensorflow/tensorflow#72388):
#  1. `TensorFlowTrainer._maybe_symbolic_build` averages the first distributed batch over the
#     replicas with `strategy.reduce("MEAN", batch, axis=None)`, only to read its shapes. That
#     fails when the replicas got batches of different sizes (a global batch not divisible by the
#     number of replicas under MirroredStrategy), and under MultiWorkerMirroredStrategy with
#     several local devices, whose collectives cannot reduce eagerly. The fix passes the first
#     replica's part instead: it has the shapes the build needs.
#  2. `reduce_per_replica` reduces the step's metrics under a multi-worker
#     MultiWorkerMirroredStrategy with `strategy.reduce("MEAN", value, axis=0)`, which fails for
#     scalars ("Invalid reduction dimension 0 for input with 0 dimensions"). The fix reduces
#     scalars with axis=None.
# Both replacements hand every other strategy and reduction to the original Keras code.
_FIXED_KERAS_VERSIONS = ((3, 0), (3, 16))  # [first, last) Keras versions that get the fix
_keras_fix_installed = False


def _keras_version() -> tuple[int, int]:
    major, minor = keras.__version__.split(".")[:2]
    return int(major), int(minor)


def keras_needs_fit_fix() -> bool:
    """Whether this Keras version gets `install_keras_fit_fix`."""
    first, last = _FIXED_KERAS_VERSIONS
    return first <= _keras_version() < last


def install_keras_fit_fix() -> bool:
    """Makes `Model.fit`/`evaluate` work under MirroredStrategy and MultiWorkerMirroredStrategy.

    Replaces two functions of Keras's TensorFlow trainer (see the comment above this function in
    the source) with versions that change what they do only under those strategies. Idempotent;
    `get_strategy("mirrored")` and `get_strategy("multi_worker")` call it. Call it yourself if
    you create these strategies with `tf.distribute` directly.

    Returns:
        True if the fix is in place, False for Keras versions that do not need it.
    """
    global _keras_fix_installed
    if not keras_needs_fit_fix():
        return False
    if _keras_fix_installed:
        return True
    from keras.src.backend.tensorflow import trainer  # noqa: PLC0415 (private Keras module)

    original_symbolic_build = trainer.TensorFlowTrainer._maybe_symbolic_build
    original_reduce = trainer.reduce_per_replica
    fixed_strategies = (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is not None and isinstance(strategy, fixed_strategies):
            for _, _, batches in iterator:
                batch = next(batches)
                break
            data_batch = tf.nest.map_structure(
                lambda value: strategy.experimental_local_results(value)[0], batch
            )
            iterator = None
        return original_symbolic_build(self, iterator=iterator, data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        multi_worker = isinstance(
            strategy, tf.distribute.MultiWorkerMirroredStrategy
        ) and strategy.extended._in_multi_worker_mode()
        if multi_worker and reduction in ("auto", "mean"):
            return tf.nest.map_structure(
                lambda value: strategy.reduce(
                    "MEAN", value, axis=0 if value.shape.rank else None
                ),
                values,
            )
        return original_reduce(values, strategy, reduction)

    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    trainer.reduce_per_replica = reduce_per_replica
    _keras_fix_installed = True
    return True


# --------------------------------------------------------------------------- a distributed job
def _same_config(saved_path: Path, config: dict) -> bool:
    try:
        saved = json.loads(saved_path.read_text())
    except (OSError, ValueError):
        return False
    normalize = json.loads(json.dumps(config))  # tuples -> lists, as in the saved file
    return {k: v for k, v in saved.items() if k != "run_dir"} == {
        k: v for k, v in normalize.items() if k != "run_dir"
    }


class DistributedJob:
    """One process's part of a training run: its strategy, precision and where it writes.

    Use it as a context manager around the run: inside, Keras's dtype policy is `mixed_precision`;
    on exit the policy is restored and a non-chief worker's temporary run directory is removed.

    Only the chief writes the run directory. Other workers of a multi-worker job run exactly the
    same code (every collective must happen on every worker) but write into a temporary
    directory, `$TMPDIR/tfvae-worker-<hash of run_dir>-<task>/run`. Under `multi_worker` every
    process also keeps a `keras.callbacks.BackupAndRestore` state: the chief in
    `<run_dir>/backup`, the others beside their temporary run; a process restarted with the same
    command resumes from it, and the state is removed when `fit` ends.

    Args:
        strategy_name: str. One of `STRATEGY_NAMES`, passed to `get_strategy`. The strategy is
            created here, first: `multi_worker` must come before other TensorFlow operations.
        mixed_precision: None, `"mixed_float16"` or `"mixed_bfloat16"`.
        **strategy_options: passed to `get_strategy` (`devices`, `num_cpu_devices`, `tpu`).

    Raises:
        ValueError: see `get_strategy` and `check_mixed_precision`.
    """

    def __init__(self, strategy_name: str = "default", mixed_precision: str | None = None,
                 **strategy_options):
        self._policy = dtype_policy(mixed_precision)  # checks the name; entered in __enter__
        self.strategy = get_strategy(strategy_name, **strategy_options)
        self.is_chief = is_chief(self.strategy)
        self.multi_worker = isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy)
        self._worker_dir: Path | None = None
        self._temporary_dir: Path | None = None
        self._backup_dir: Path | None = None

    def __enter__(self) -> DistributedJob:
        self._policy.__enter__()
        return self

    def __exit__(self, *exc_info):
        if self._temporary_dir is not None:
            shutil.rmtree(self._temporary_dir, ignore_errors=True)
            with contextlib.suppress(OSError):  # still holds the backup if fit did not finish
                self._worker_dir.rmdir()
        return self._policy.__exit__(*exc_info)

    def scope(self):
        """`strategy.scope()`: create the model, its optimizer and metrics inside."""
        return self.strategy.scope()

    def output_dir(self, run_dir: str | os.PathLike, prepare, config: dict) -> Path:
        """The directory this process writes the run to.

        Args:
            run_dir: the run directory the user asked for.
            prepare: callable(run_dir) -> Path. Creates it, refusing one that holds files.
            config: the run's configuration, as saved in `config.json`.

        Returns:
            On the chief: `run_dir`, prepared by `prepare`, or as it is when it holds the backup
            of an interrupted multi-worker run with the same configuration (which resumes).
            Elsewhere: an emptied temporary directory, removed when the job ends.

        Raises:
            FileExistsError: `run_dir` holds files (other than a resumable run).
        """
        run_dir = Path(run_dir)
        if not self.is_chief:
            # A fixed place per run and task, so that a restarted worker finds its backup and
            # replaces what a killed attempt left behind.
            resolver = self.strategy.cluster_resolver
            digest = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:12]
            self._worker_dir = Path(tempfile.gettempdir()) / (
                f"tfvae-worker-{digest}-{resolver.task_type}-{resolver.task_id}"
            )
            self._temporary_dir = self._worker_dir / "run"
            shutil.rmtree(self._temporary_dir, ignore_errors=True)
            self._temporary_dir.mkdir(parents=True)
            self._backup_dir = self._worker_dir / "backup"
            return self._temporary_dir
        if not self.multi_worker:
            return prepare(run_dir)
        self._backup_dir = run_dir / "backup"
        # A restarted chief finds its run: a backup, or only what precedes the first backup.
        leftovers = {path.name for path in run_dir.iterdir()} if run_dir.is_dir() else set()
        backed_up = (self._backup_dir / BACKUP_METADATA_FILE).exists()
        if backed_up or (leftovers and leftovers <= {"config.json", "backup"}):
            if not _same_config(run_dir / "config.json", config):
                raise FileExistsError(
                    f"Expected '{run_dir}' to hold an interrupted run with the same configuration "
                    "to resume. Received: a different or missing config.json; choose another "
                    "--run-dir (nothing was changed)."
                )
            return run_dir
        return prepare(run_dir)

    @property
    def backup_dir(self) -> Path | None:
        """Where this process keeps its BackupAndRestore state (set by `output_dir`; None
        outside a multi-worker job)."""
        return self._backup_dir

    def callbacks(self) -> list[keras.callbacks.Callback]:
        """Callbacks the job needs in `fit`: `BackupAndRestore` under `multi_worker`."""
        if self._backup_dir is None:
            return []
        return [keras.callbacks.BackupAndRestore(str(self._backup_dir))]
