"""The command line's failures: one line on stderr and exit status 2 (130 for Ctrl-C), no
traceback, no TensorFlow start-up output; `--help` and flag errors without importing TensorFlow."""

from __future__ import annotations

import _thread
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT, cli_environment, run_cli, run_main

from tfvae import cli
from tfvae.cli import main
from tfvae.training import load_keras_file

#: Runs the CLI in a fresh interpreter, then reports whether TensorFlow or Keras was imported.
_MAIN_THEN_REPORT_IMPORTS = """
import sys
from tfvae.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as exit_:
    status = exit_.code
loaded = sorted(name for name in ("tensorflow", "keras") if name in sys.modules)
print("imported:", ",".join(loaded) or "nothing")
sys.exit(status)
"""
#: What TensorFlow's native start-up writes to stderr (absl, oneDNN, CUDA probing, CPU features).
_STARTUP_MARKERS = ("absl::InitializeLog", "oneDNN", "cuda", "cpu_feature_guard", "I0000", "E0000")


def _cli_without_tensorflow(*args):
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", _MAIN_THEN_REPORT_IMPORTS, *args],
        env=cli_environment(), capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )
    return result, time.perf_counter() - started


# --------------------------------------------------------------------------- the process itself
def test_help_answers_without_importing_tensorflow():
    for args in (["--help"], ["train", "--help"], ["evaluate", "--help"], ["tune", "--help"]):
        result, seconds = _cli_without_tensorflow(*args)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().endswith("imported: nothing"), args
        assert "usage: tfvae" in result.stdout and result.stderr == ""
        assert seconds < 10, f"{args} took {seconds:.1f} s"  # ~0.5 s; TensorFlow alone takes ~10 s
    evaluate_help = _cli_without_tensorflow("evaluate", "--help")[0].stdout
    assert "--max-examples" in evaluate_help and "--samples" in evaluate_help and "estimate" in evaluate_help


@pytest.mark.parametrize(
    "args, error",
    [
        (["train", "--epochs", "0"], "tfvae train: error: argument --epochs: expected a positive integer, received '0'"),
        (["evaluate"], "tfvae evaluate: error: the following arguments are required: RUN_DIR"),
        (["bogus"], "tfvae: error: argument COMMAND: invalid choice: 'bogus'"),
        (["sample", "run", "--steps", "x"], "tfvae sample: error: argument --steps: expected a positive integer"),
    ],
)
def test_flag_errors_are_a_short_usage_line_and_the_error(args, error):
    result, seconds = _cli_without_tensorflow(*args)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("usage: tfvae") and "--help" in lines[0]
    assert lines[1].startswith(error)
    assert result.stdout.strip() == "imported: nothing"
    assert seconds < 10


def test_an_error_is_one_line_without_tensorflow_start_up_output(tmp_path):
    result = run_cli("evaluate", tmp_path / "no-run", timeout=300)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"tfvae: error: Expected a tfvae run directory with config.json. Received: '{tmp_path / 'no-run'}', "
        "which has none."
    ]
    assert result.stdout == ""


@pytest.mark.slow
def test_verbose_replays_tensorflow_start_up_output(tmp_path):
    from_variable, from_flag = (run_cli("evaluate", tmp_path / "no-run", env={"TFVAE_VERBOSE": "1"}, timeout=300),
                      run_cli("evaluate", tmp_path / "no-run", "--verbose", timeout=300))
    for result in (from_variable, from_flag):
        assert result.returncode == 2
        assert result.stderr.splitlines()[-1].startswith("tfvae: error: Expected a tfvae run directory")
        # This machine's TensorFlow says something when it starts (oneDNN, no CUDA, CPU features).
        assert any(marker in result.stderr for marker in _STARTUP_MARKERS), result.stderr


def test_other_keras_backend_is_one_line():
    result = run_cli("evaluate", "somewhere", env={"KERAS_BACKEND": "jax"}, timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "tfvae: error: tfvae needs Keras on the TensorFlow backend. Expected KERAS_BACKEND='tensorflow' "
        "(or unset). Received: KERAS_BACKEND='jax'."
    ]


def _default_sigint() -> None:
    """Gives a child process the terminal's SIGINT behaviour, whatever this process inherited (a
    shell's `&` starts background jobs with SIGINT ignored, and Python then keeps ignoring it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_ctrl_c_during_train_is_one_line_naming_the_resume_command(tmp_path):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "tfvae", "train", "--epochs", "200", "--run-dir", str(run_dir), "--quiet",
         "--filters", "8"],
        env=cli_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_default_sigint,
    )
    deadline = time.time() + 300
    metrics = run_dir / "metrics.csv"
    backup = run_dir / "backup" / "training_metadata.json"  # written last at an epoch's end
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2 and backup.is_file()):
        assert process.poll() is None and time.time() < deadline, "training ended before Ctrl-C"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err.splitlines() == [f"tfvae: training interrupted; continue it with: tfvae train --resume {run_dir}"]
    assert out == ""
    # What the resume command needs is there and whole.
    assert (run_dir / "backup" / "training_metadata.json").is_file()
    load_keras_file(run_dir / "model.keras")


# --------------------------------------------------------------------------- messages, in process
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A one-epoch run with a tiny model."""
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    status = main(["train", "--epochs", "1", "--filters", "4", "--latent-dim", "2", "--run-dir", str(run_dir), "--quiet"])
    assert status == 0
    return run_dir


def _copy_with_model(run_dir, tmp_path, content: bytes) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "model.keras").write_bytes(content)
    return copy


def _corruptions(model: bytes) -> dict[str, bytes]:
    flipped = bytearray(model)
    flipped[len(model) // 2] ^= 0x01  # inside model.weights.h5
    return {"empty": b"", "truncated": model[: len(model) // 2], "bit-flipped": bytes(flipped)}


@pytest.mark.parametrize("kind", ["empty", "truncated", "bit-flipped"])
def test_a_corrupt_model_is_named_as_such_by_every_command(run_dir, tmp_path, capsys, kind):
    copy = _copy_with_model(run_dir, tmp_path, _corruptions((run_dir / "model.keras").read_bytes())[kind])
    model = copy / "model.keras"
    commands = {
        "evaluate": ["evaluate", copy, "--samples", "2"],
        "sample": ["sample", copy, "--out", tmp_path / "s.png"],
        "export": ["export", copy, tmp_path / "export"],
    }
    for name, args in commands.items():
        status, out, err = run_main(capsys, *args)
        assert status == 2, name
        assert err == f"tfvae: error: '{model}' is not a readable .keras file (corrupt or truncated" + err.split(
            "(corrupt or truncated", 1)[1], name
        assert len(err.splitlines()) == 1 and "File not found" not in err and out == ""
    assert not (tmp_path / "s.png").exists() and not (tmp_path / "export").exists()


def test_export_with_a_corrupt_config_json_warns_and_exports_the_intact_model(run_dir, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "config.json").write_text('{"dataset": "dig')  # truncated
    status, out, err = run_main(capsys, "export", copy, tmp_path / "export")
    assert status == 0, err
    assert err == (f"tfvae: warning: '{copy / 'config.json'}' is not a readable run configuration "
                   "(corrupt or truncated); the export's metadata will not name the dataset\n")
    metadata = json.loads(out)["metadata"]
    assert "dataset" not in json.loads(Path(metadata).read_text())


def test_a_bit_flip_anywhere_loads_or_is_reported_as_corrupt(run_dir, tmp_path):
    model = (run_dir / "model.keras").read_bytes()
    path = tmp_path / "model.keras"
    outcomes = set()
    # Headers, the members' data, the central directory and its end record.
    for position in [0, 8, 30, 60, 200, len(model) // 3, len(model) - 200, len(model) - 60, len(model) - 10,
                     len(model) - 3]:
        flipped = bytearray(model)
        flipped[position] ^= 0x10
        path.write_bytes(bytes(flipped))
        try:
            load_keras_file(path)
            outcomes.add("loaded")
        except ValueError as error:
            assert f"'{path}' is not a readable .keras file (corrupt or truncated" in str(error), position
            outcomes.add("corrupt")
    assert "corrupt" in outcomes


def test_read_only_output_folders_are_one_line(run_dir, read_only_dir, capsys):
    cases = {
        "train": ["train", "--epochs", "1", "--run-dir", read_only_dir / "run"],
        "sample": ["sample", run_dir, "--out", read_only_dir / "s.png"],
        "export": ["export", run_dir, read_only_dir / "export"],
    }
    for name, args in cases.items():
        status, _, err = run_main(capsys, *args)
        assert status == 2, (name, err)
        assert len(err.splitlines()) == 1 and err.startswith("tfvae: error: "), err
        assert ("Read-only file system" in err or "Permission denied" in err) and str(read_only_dir) in err, err
    assert list(read_only_dir.iterdir()) == []


def test_a_full_disk_names_the_path(run_dir, tmp_path, capsys):
    # Python-level writes: an injected ENOSPC, with and without the file's name.
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / ".samples.abc.tmp.png"))
    assert cli.describe_error(full) == (
        f"no space left on device while writing '{tmp_path}'; free some space and run the command again")
    unnamed = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert "no space left on device while writing 'out.png'" in cli.describe_error(unnamed, "out.png")
    # A really full filesystem, where one can be mounted.
    folder = tmp_path / "full"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"no small tmpfs can be mounted here ({mounted.stderr.strip()}); the injected ENOSPC passed")
    try:
        (folder / "filler").write_bytes(b"\0" * 12 * 1024)
        status, _, err = run_main(capsys, "sample", run_dir, "--out", folder / "s.png", "-n", "256")
        assert status == 2
        assert err.startswith("tfvae: error: no space left on device while writing ") and str(folder) in err
        assert len(err.splitlines()) == 1
        assert sorted(p.name for p in folder.iterdir()) == ["filler"]  # no half-written PNG
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_debug_shows_the_traceback_before_or_after_the_command(tmp_path):
    for args in (["--debug", "evaluate", tmp_path], ["evaluate", tmp_path, "--debug"]):
        with pytest.raises(FileNotFoundError, match="Expected a tfvae run directory"):
            main([str(a) for a in args])


def test_native_stderr_is_kept_back_unless_verbose(capfd):
    for replay in (False, True):
        with cli._native_stderr_kept_back(replay=replay):
            os.write(2, b"I0000 native start-up line\n")
        err = capfd.readouterr().err
        assert err == ("I0000 native start-up line\n" if replay else "")


def test_ctrl_c_during_evaluate_is_one_line(run_dir, capsys):
    # A real SIGINT to this process while it evaluates (K = 5000 takes many seconds here).
    timer = threading.Timer(3.0, _thread.interrupt_main, args=(signal.SIGINT,))
    # As in a terminal, whatever this process inherited (a shell's `&` starts jobs ignoring SIGINT).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer.start()
    try:
        status, out, err = run_main(capsys, "evaluate", run_dir, "--samples", "5000", "--json")
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert status == 130
    assert err == "tfvae: evaluate interrupted\n" and out == ""
