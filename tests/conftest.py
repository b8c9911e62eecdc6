"""Shared fixtures: quiet TensorFlow, the repository's paths, real data, and CLI runners."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The real MNIST test set (IDX files), beside the repository as ../shared/data/mnist-t10k/.
MNIST_T10K_DIR = REPO_ROOT.parent / "shared" / "data" / "mnist-t10k"


def cli_environment(extra: dict | None = None) -> dict:
    """The environment for a `python -m tfvae` subprocess that imports this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.update(extra or {})
    return env


def run_cli(*args, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Runs `python -m tfvae ARGS` from this checkout; returns the completed process (text)."""
    return subprocess.run(
        [sys.executable, "-m", "tfvae", *map(str, args)],
        cwd=cwd,
        env=cli_environment(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_main(capsys, *args) -> tuple[int | str | None, str, str]:
    """Runs `tfvae ARGS` in this process (faster than `run_cli`'s subprocess).

    Args:
        capsys: pytest's `capsys` fixture of the calling test; what the command printed is read
            from it (and cleared).
        *args: the command line after `tfvae`; paths and numbers are turned into strings.

    Returns:
        `(exit status, stdout, stderr)`; the status is `main`'s return value, or the code of the
        `SystemExit` that argparse raises for a bad command line.
    """
    from tfvae.cli import main

    try:
        status = main([str(arg) for arg in args])
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture(scope="session")
def default_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The quick start, run once per session: `tfvae train --quiet`, no other argument, in an empty
    working directory (the defaults: 80 epochs on the built-in digits, about a minute).

    Returns:
        `(run directory, the completed process)`; the run is under `runs/` of the working directory.
    """
    working_dir = tmp_path_factory.mktemp("quick-start")
    completed = run_cli("train", "--quiet", cwd=working_dir)
    assert completed.returncode == 0, completed.stderr[-3000:]
    (run_dir,) = (working_dir / "runs").iterdir()
    return run_dir, completed


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits: `(train_images, train_labels), (val_images, val_labels)`."""
    from tfvae.data import load_digits

    return load_digits(seed=0)


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody may write in: a read-only tmpfs for root (who ignores permissions)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"running as root, and a read-only tmpfs cannot be mounted here: {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)
