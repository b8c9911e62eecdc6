"""Faults around a run directory: a full disk, failed starts, corrupt files, bad settings, resume limits.

Each fault must end in one line `tfvae: error: ...` (exit status 2) with nothing the user had lost
and nothing half-written left, and must not block the retry of the corrected command.
"""

import errno
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import REPO_ROOT, cli_environment, run_main

import tfvae
from tfvae.callbacks import (
    AtomicBackupAndRestore,
    AtomicModelCheckpoint,
    CorruptBackupError,
    StopOnNonFiniteLoss,
)
from tfvae.cli import main
from tfvae.files import write_json_atomic
from tfvae.models import build_conv_vae
from tfvae.training import TrainConfig, load_run_config

#: Small and fast: the built-in 8x8 digits with a 2-D latent space.
_SMALL = ["--latent-dim", "2", "--filters", "8,16", "--quiet"]


def _error_line(err: str) -> str:
    """The one `tfvae: error:` line of stderr (TensorFlow's start-up lines aside)."""
    lines = [line for line in err.splitlines() if line.startswith("tfvae:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _files(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


def _fill_disk_on(monkeypatch, name_prefix: str, after: int = 0):
    """Makes `Path.write_bytes` of files named `name_prefix*` write half their data, then fail
    with ENOSPC (no file name, as a real full disk does), from the call number `after` + 1 on."""
    real_write_bytes = Path.write_bytes
    calls = []

    def write_bytes(self, data):
        if self.name.startswith(name_prefix):
            calls.append(self)
            if len(calls) > after:
                real_write_bytes(self, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    return calls


# --------------------------------------------------------------------------- a full disk, injected
def test_a_full_disk_keeps_the_old_file_and_names_the_path(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    write_json_atomic(target, {"epoch": 1})
    _fill_disk_on(monkeypatch, ".metrics.")
    with pytest.raises(OSError) as raised:
        write_json_atomic(target, {"epoch": 2})
    assert raised.value.errno == errno.ENOSPC
    assert str(raised.value) == f"[Errno 28] No space left on device: '{target}'"
    assert json.loads(target.read_text()) == {"epoch": 1}
    assert _files(tmp_path) == ["metrics.json"]  # the half-written temporary file is removed


def test_checkpoint_on_a_full_disk_keeps_the_last_good_model(tmp_path, monkeypatch, digits):
    (images, _), _ = digits
    vae = build_conv_vae((8, 8, 1), 2, filters=(4,), seed=0)
    vae.compile()
    path = tmp_path / "model.keras"
    first_epoch_model = []

    class Remember(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                first_epoch_model.append(path.read_bytes())

    _fill_disk_on(monkeypatch, ".model.", after=1)  # epoch 0 is saved, epoch 1 finds the disk full
    with pytest.raises(OSError, match=r"No space left on device: '.*model\.keras'"):
        vae.fit(images[:128], epochs=3, batch_size=64, verbose=0,
                callbacks=[AtomicModelCheckpoint(path), Remember()])
    assert _files(tmp_path) == ["model.keras"]
    assert path.read_bytes() == first_epoch_model[0]
    assert np.isfinite(keras.models.load_model(path).evaluate(images[:64], verbose=0, return_dict=True)["loss"])


def test_train_on_a_full_disk_is_one_line_and_resumes(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    writes = _fill_disk_on(monkeypatch, ".model.", after=1)
    status, _, err = run_main(capsys, "train", "--epochs", "3", "--run-dir", run_dir, *_SMALL)
    assert status == 2
    assert _error_line(err) == (
        f"tfvae: error: no space left on device while writing '{run_dir / 'model.keras'}'; "
        "free some space and run the command again"
    )
    assert len(writes) == 2
    assert not any(".tmp" in name for name in _files(run_dir))
    first_epoch = keras.models.load_model(run_dir / "model.keras")  # intact, from epoch 0
    assert first_epoch.optimizer.iterations.numpy() > 0

    monkeypatch.undo()  # space freed
    status, out, err = run_main(capsys, "train", "--resume", run_dir, "--quiet")
    assert status == 0, err
    assert json.loads(out)["epochs_completed"] == 3
    rows = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == ["0", "1", "2"]


# --------------------------------------------------------------------------- a full disk, for real
_FULL_DISK_DRIVER = textwrap.dedent("""
    import json, os, subprocess, sys
    from pathlib import Path

    disk = Path(sys.argv[1])
    run_dir = disk / "run"
    small = ["--latent-dim", "2", "--filters", "8,16", "--quiet"]

    def tfvae(*args):
        done = subprocess.run([sys.executable, "-m", "tfvae", "train", *args, *small],
                              capture_output=True, text=True)
        return {"status": done.returncode, "stderr": done.stderr, "stdout": done.stdout}

    report = {"first": tfvae("--epochs", "1", "--run-dir", str(run_dir))}
    before = {name: (run_dir / name).read_bytes() for name in ("model.keras", "metrics.csv")}
    stats = os.statvfs(disk)
    ballast = disk / "ballast"
    ballast.write_bytes(bytes(max(0, stats.f_bavail * stats.f_frsize - 64 * 1024)))
    report["full"] = tfvae("--resume", str(run_dir), "--epochs", "3")
    report["intact"] = {name: (run_dir / name).read_bytes() == data for name, data in before.items()}
    report["config"] = json.loads((run_dir / "config.json").read_text())  # complete, the new one
    report["files"] = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())
    ballast.unlink()
    report["resumed"] = tfvae("--resume", str(run_dir), "--epochs", "3")
    print(json.dumps(report))
""")


def _small_filesystem_command(mount_point: Path) -> list[str] | None:
    """A command prefix that runs the rest inside a new mount namespace with a 16 MB tmpfs at
    `mount_point` (as root, or as a user where user namespaces are allowed); None if neither works."""
    if shutil.which("unshare") is None:
        return None
    mount = f"mount -t tmpfs -o size=16m tmpfs {mount_point}"
    for flags in (["-m"], ["-r", "-m"]):
        probe = subprocess.run(["unshare", *flags, "sh", "-c", mount], capture_output=True)
        if probe.returncode == 0:
            return ["unshare", *flags, "sh", "-c", f'{mount} && exec "$0" "$@"']
    return None


@pytest.mark.slow
def test_a_really_full_disk_is_one_line_keeps_the_run_and_resumes(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    prefix = _small_filesystem_command(disk)
    if prefix is None:
        pytest.skip("no way to mount a small filesystem here: neither `unshare -m` (root) nor "
                    "`unshare -r -m` (user namespaces) can mount a tmpfs")
    driver = tmp_path / "driver.py"
    driver.write_text(_FULL_DISK_DRIVER)
    done = subprocess.run([*prefix, sys.executable, str(driver), str(disk)], capture_output=True,
                          text=True, env=cli_environment(), cwd=REPO_ROOT, timeout=900)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["first"]["status"] == 0, report["first"]["stderr"]
    full = report["full"]
    assert full["status"] == 2, full["stderr"]  # not 139, a segmentation fault
    line = _error_line(full["stderr"])
    assert line.startswith("tfvae: error: ") and "no space left on device" in line.lower()
    assert f"{disk}/run/" in line  # names the file
    assert report["intact"] == {"model.keras": True, "metrics.csv": True}
    assert report["config"]["epochs"] == 3
    assert not any(".tmp" in name for name in report["files"])
    resumed = report["resumed"]
    assert resumed["status"] == 0, resumed["stderr"]
    assert json.loads(resumed["stdout"])["epochs_completed"] == 3


# --------------------------------------------------------------------------- a failed start
@pytest.mark.parametrize(
    "settings, flags, message",
    [
        ({"likelihood": "poisson"}, [], "Expected likelihood to be one of ['bernoulli', 'categorical', 'continuous_bernoulli'"),
        ({"image_size": 5}, [], "Received: input_shape=(5, 5, 1)"),
        ({}, ["--cache", "no/such/folder/cache"], "whose folder 'no/such/folder' does not exist"),
        ({}, ["--filters", "32,64,128,256"], "divisible by 2**len(filters) = 16"),
    ],
)
def test_a_failed_start_writes_nothing(tmp_path, capsys, monkeypatch, settings, flags, message):
    monkeypatch.chdir(tmp_path)
    config_file = tmp_path / "settings.json"
    config_file.write_text(json.dumps(settings))
    status, _, err = run_main(capsys, "train", "--config", config_file, "--run-dir", "run", *flags)
    assert status == 2
    assert message in _error_line(err)
    assert not (tmp_path / "run").exists()


def test_leftovers_of_a_failed_start_do_not_block_the_retry(tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "logs" / "train").mkdir(parents=True)
    (run_dir / "logs" / "train" / "events.out.tfevents.1.host.1.0.v2").write_bytes(b"header")
    (run_dir / "checkpoints").mkdir()
    (run_dir / "config.json").write_text(json.dumps({"likelihood": "poisson"}))  # an older tfvae's
    status, _, err = run_main(capsys, "train", "--epochs", "1", "--run-dir", run_dir, *_SMALL)
    assert status == 0, err
    assert json.loads((run_dir / "config.json").read_text())["likelihood"] == "bernoulli"
    assert "logs/train/events.out.tfevents.1.host.1.0.v2" not in _files(run_dir)
    assert "model.keras" in _files(run_dir)


@pytest.mark.parametrize("extra", ["notes.txt", "checkpoints/best.keras", "logs/train/notes.txt"])
def test_a_run_directory_with_other_files_is_refused_untouched(tmp_path, capsys, extra):
    run_dir = tmp_path / "run"
    (run_dir / "logs" / "train").mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")
    (run_dir / extra).parent.mkdir(parents=True, exist_ok=True)
    (run_dir / extra).write_text("mine")
    before = _files(run_dir)
    status, _, err = run_main(capsys, "train", "--epochs", "1", "--run-dir", run_dir, *_SMALL)
    assert status == 2 and "already holds files" in _error_line(err)
    assert _files(run_dir) == before


def test_run_dir_that_is_a_file(tmp_path, capsys):
    path = tmp_path / "run"
    path.write_text("mine")
    status, _, err = run_main(capsys, "train", "--run-dir", path, *_SMALL)
    assert status == 2
    assert _error_line(err) == (f"tfvae: error: Expected --run-dir to name a directory. Received: "
                                f"'{path}', which is a file (nothing was changed).")
    assert path.read_text() == "mine"


# --------------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    "settings, message",
    [
        ({"learning_rate": float("inf")}, "Expected learning_rate > 0 and finite. Received: learning_rate=inf"),
        ({"learning_rate": float("nan")}, "Expected learning_rate > 0 and finite. Received: learning_rate=nan"),
        ({"beta": float("inf")}, "Expected beta to be a finite number >= 0. Received: beta=inf"),
        ({"beta": float("nan")}, "Expected beta to be a finite number >= 0. Received: beta=nan"),
        ({"likelihood": "poisson"}, "Expected likelihood to be one of ['bernoulli', 'categorical', 'continuous_bernoulli'"),
        ({"filters": "32,x"}, "Expected filters to be positive integers"),
        ({"filters": [32, 0]}, "Expected filters to be positive integers"),
        ({"image_size": "big"}, "Expected image_size to be HEIGHTxWIDTH or one size"),
        ({"image_size": [16, 16, 3]}, "Expected image_size to be HEIGHTxWIDTH or one size"),
        ({"image_size": 0}, "Expected image_size to be HEIGHTxWIDTH or one size"),
    ],
)
def test_bad_settings_are_rejected(settings, message):
    with pytest.raises(ValueError) as raised:
        TrainConfig.from_dict(settings)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    "settings, filters, image_size",
    [
        ({"filters": "32,64"}, (32, 64), None),
        ({"filters": [16]}, (16,), None),
        ({"image_size": "16x12"}, (32, 64), (16, 12)),
        ({"image_size": "16"}, (32, 64), (16, 16)),
        ({"image_size": 16}, (32, 64), (16, 16)),
        ({"image_size": [16, 8]}, (32, 64), (16, 8)),
    ],
)
def test_settings_in_the_flags_syntax_are_accepted(settings, filters, image_size):
    config = TrainConfig.from_dict(settings)
    assert config.filters == filters and config.image_size == image_size


def test_infinite_beta_is_rejected_by_the_model():
    with pytest.raises(ValueError, match="Expected beta to be a finite number >= 0. Received: beta=inf"):
        parts = build_conv_vae((8, 8, 1), 2, filters=(4,))
        tfvae.VAE(parts.encoder, parts.decoder, beta=float("inf"))


def test_infinite_learning_rate_flag(tmp_path, capsys):
    status, _, err = run_main(capsys, "train", "--learning-rate", "inf", "--run-dir", tmp_path / "run")
    assert status == 2 and "learning_rate=inf" in _error_line(err)
    assert not (tmp_path / "run").exists()


class _PoisonAtEpoch(StopOnNonFiniteLoss):
    """StopOnNonFiniteLoss that first sets the posterior mean's bias to NaN when `EPOCH` begins."""

    EPOCH = 0

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.EPOCH:
            bias = self.model.encoder.get_layer("loc").bias
            bias.assign(np.full(bias.shape, np.nan, "float32"))


@pytest.mark.parametrize("nan_epoch", [0, 1])
def test_the_nan_message_says_what_was_saved(tmp_path, capsys, monkeypatch, nan_epoch):
    monkeypatch.setattr(_PoisonAtEpoch, "EPOCH", nan_epoch)
    monkeypatch.setattr(tfvae.training, "StopOnNonFiniteLoss", _PoisonAtEpoch)
    run_dir = tmp_path / "run"
    status, out, err = run_main(capsys, "train", "--epochs", "3", "--run-dir", run_dir, *_SMALL)
    assert status == 1
    assert json.loads(out)["stopped_on_nan"] is True  # stdout holds the JSON result alone
    assert re.search(r"^Batch \d+: the loss is nan; training stops\.$", err, re.MULTILINE), err
    line = _error_line(err)
    if nan_epoch == 0:
        assert line == ("tfvae: training stopped on a NaN or inf loss; no epoch finished with finite "
                        "values, so no model was saved")
        assert not (run_dir / "model.keras").exists()
    else:
        assert line == (f"tfvae: training stopped on a NaN or inf loss; {run_dir / 'model.keras'} "
                        "holds the last good epoch")
        assert (run_dir / "model.keras").exists()


# --------------------------------------------------------------------------- corrupt run files
def test_a_corrupt_config_json_is_named(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{"epochs": 3, "latent')
    with pytest.raises(ValueError, match=r"Expected '.*run/config.json' to hold a run's configuration as JSON"):
        load_run_config(run_dir)
    status, _, err = run_main(capsys, "train", "--resume", run_dir, "--epochs", "4")
    assert status == 2 and f"'{run_dir / 'config.json'}'" in _error_line(err)
    status, _, err = run_main(capsys, "evaluate", run_dir)
    assert status == 2 and "corrupt or truncated" in _error_line(err)


def test_resume_with_fewer_epochs_than_trained_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_json_atomic(run_dir / "config.json", {"epochs": 3, "latent_dim": 2})
    (run_dir / "metrics.csv").write_text("epoch,loss\n0,9.0\n1,8.0\n2,7.5\n")
    before = {name: (run_dir / name).read_bytes() for name in _files(run_dir)}
    status, _, err = run_main(capsys, "train", "--resume", run_dir, "--epochs", "2")
    assert status == 2
    assert _error_line(err) == (f"tfvae: error: Expected --epochs >= 3 to resume '{run_dir}', which has "
                                "trained 3 epochs. Received: epochs=2 (nothing was changed).")
    assert {name: (run_dir / name).read_bytes() for name in _files(run_dir)} == before


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    """A finished one-epoch run, copied by the tests that damage it."""
    run_dir = tmp_path_factory.mktemp("runs") / "one"
    assert main(["train", "--epochs", "1", "--run-dir", str(run_dir), *_SMALL]) == 0
    return run_dir


def _interrupted_copy(run: Path, destination: Path, backup: bytes) -> Path:
    """`run` copied, with a backup as an interruption after epoch 1 would leave it, holding `backup`."""
    shutil.copytree(run, destination)
    (destination / "backup").mkdir()
    (destination / "backup" / "latest.keras").write_bytes(backup)
    (destination / "backup" / "training_metadata.json").write_text('{"epoch": 1, "batch": 0}')
    return destination


def test_a_corrupt_backup_falls_back_to_the_last_model(one_epoch_run, tmp_path, capsys):
    model = (one_epoch_run / "model.keras").read_bytes()
    flipped = bytearray(model)
    flipped[len(flipped) // 2] ^= 0xFF
    run_dir = _interrupted_copy(one_epoch_run, tmp_path / "run", bytes(flipped))
    status, out, err = run_main(capsys, "train", "--resume", run_dir, "--epochs", "2", "--quiet")
    assert status == 0, err
    assert _error_line(err) == (
        f"tfvae: warning: the backup '{run_dir / 'backup' / 'latest.keras'}' is missing, corrupt or "
        f"truncated; resuming from '{run_dir / 'model.keras'}', the last finished epoch's model"
    )
    metrics = json.loads(out)
    assert metrics["epochs_completed"] == 2 and metrics["epochs_run_this_session"] == 1


def test_a_corrupt_backup_without_a_model_says_to_start_over(one_epoch_run, tmp_path, capsys):
    run_dir = _interrupted_copy(one_epoch_run, tmp_path / "run", b"PK\x03\x04 truncated")
    (run_dir / "model.keras").unlink()
    before = _files(run_dir)
    status, _, err = run_main(capsys, "train", "--resume", run_dir, "--epochs", "2")
    assert status == 2
    line = _error_line(err)
    assert f"'{run_dir / 'backup' / 'latest.keras'}'" in line and "start over" in line
    assert _files(run_dir) == before


def test_the_backup_callback_names_an_unreadable_backup(tmp_path, digits):
    (images, _), _ = digits
    (tmp_path / "latest.keras").write_bytes(b"not a zip")
    vae = build_conv_vae((8, 8, 1), 2, filters=(4,), seed=0)
    vae.compile()
    with pytest.raises(CorruptBackupError, match=r"The backup '.*latest.keras' cannot be read"):
        vae.fit(images[:64], epochs=1, verbose=0, callbacks=[AtomicBackupAndRestore(str(tmp_path))])


def test_a_validation_split_of_one_image_gets_the_pictures_it_allows(tmp_path, capsys):
    # 10 images at the default validation fraction leave one validation image: no
    # interpolation and no diagnostics (they need two), but the run finishes and says which
    # pictures it drew.
    images = np.random.default_rng(0).random((10, 8, 8, 1)).astype("float32")
    np.save(tmp_path / "ten.npy", images)
    run_dir = tmp_path / "run"
    status, out, err = run_main(capsys, "train", "--dataset", tmp_path / "ten.npy", "--epochs", "1",
                             "--run-dir", run_dir, *_SMALL)
    assert status == 0, err
    metrics = json.loads(out[out.index("{"):])
    assert metrics["num_validation_examples"] == 1
    assert "reconstructions.png" in metrics["pictures"]
    assert "interpolations.png" not in metrics["pictures"]
    assert (run_dir / "reconstructions.png").is_file() and not (run_dir / "interpolations.png").exists()
    assert metrics["diagnostics"] is None
