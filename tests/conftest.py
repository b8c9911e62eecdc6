"""Shared fixtures: quiet TensorFlow, the repository's paths, real data, and CLI runners."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS_DIR = REPO_ROOT / "tests"
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


# --------------------------------------------------------------------------- tf.distribute checks
def run_script(script: str, *args, timeout=300) -> dict:
    """Runs tests/<script> ARGS in a fresh process; returns the JSON of its RESULT line."""
    completed = subprocess.run(
        [sys.executable, str(TESTS_DIR / script), *map(str, args)],
        env=cli_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return parse_result(completed.stdout)


def parse_result(stdout: str) -> dict:
    """The JSON of the last `RESULT {...}` line a test script printed."""
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no RESULT line in: {stdout[-2000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


#: tests/mirrored_checks.py's checks on two replicas, by name: all run in one fresh process
#: (`two_replica_results`), since a process of their own would each import TensorFlow and tfvae
#: again (seconds each). Used by test_distribute.py, test_priors.py and test_conditional.py.
TWO_REPLICA_CHECKS = {
    "gaussian": ["one-step", "--batch-size", "8", "--likelihood", "gaussian"],
    "discretized_logistic": ["one-step", "--batch-size", "6", "--likelihood", "discretized_logistic"],
    "iwae": ["one-step", "--batch-size", "7", "--objective", "iwae"],
    "free-bits": ["one-step", "--batch-size", "7", "--objective", "free-bits"],
    "iaf+standard_normal": ["one-step", "--batch-size", "7", "--posterior", "iaf", "--prior", "standard_normal"],
    "iaf+vamp": ["one-step", "--batch-size", "7", "--posterior", "iaf", "--prior", "vamp"],
    "vamp": ["one-step", "--batch-size", "7", "--prior", "vamp"],
    "conditional": ["one-step", "--batch-size", "7", "--num-classes", "3"],
    "curves": ["curves", "--epochs", "3"],
    "xla": ["xla"],
}


def computed_once(tmp_path_factory, worker_id: str, name: str, compute):
    """`compute(folder)` once per test session, however many pytest-xdist workers ask for it.

    The first worker to ask computes it in a folder shared by the session's workers and stores
    the (JSON) result; the others wait on a file lock and read it. Without xdist ("master") it
    is an ordinary session fixture's computation.

    Args:
        tmp_path_factory, worker_id: the fixtures of the same names.
        name: the result's name, unique in the session.
        compute: folder -> a JSON-serializable result.
    """
    if worker_id == "master":
        return compute(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent  # the session's folder, above each worker's
    with _file_lock(shared / f"{name}.lock"):
        stored = shared / f"{name}.json"
        if stored.is_file():
            return json.loads(stored.read_text())
        folder = shared / name
        folder.mkdir()
        result = compute(folder)
        stored.write_text(json.dumps(result))
        return result


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock on `path` (created) across processes, released on exit."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def two_replica_results(tmp_path_factory, worker_id) -> dict:
    """The results of `TWO_REPLICA_CHECKS` (one `tests/mirrored_checks.py many` process), by name."""
    return computed_once(tmp_path_factory, worker_id, "two_replica_results", lambda folder: run_script(
        "mirrored_checks.py", "many", "--replicas", 2, json.dumps(TWO_REPLICA_CHECKS), timeout=900
    ))


def two_replica_result(results: dict, name: str) -> dict:
    """The result of the check `name`; fails the test with the check's traceback if it raised."""
    result = results[name]
    assert "error" not in result, f"two-replica check {name!r} raised:\n{result.get('error')}"
    return result


def assert_one_step_equals_one_device(result: dict) -> None:
    """Asserts what mirrored_checks.py's `one-step` found: one SGD step under the strategy changed
    every trainable weight, exactly as on one device, with the same logged loss terms."""
    # Plain SGD changed every trainable weight...
    assert all(change > 1e-4 for change in result["weight_changes"].values()), result
    # ...exactly as on one device.
    for name, difference in result["weight_differences"].items():
        assert difference < 1e-5, (name, difference)
    for name in ("loss", "elbo", "reconstruction", "kl"):
        np.testing.assert_allclose(
            result["mirrored_logs"][name], result["single_logs"][name], rtol=1e-5, atol=1e-5
        )


def negative_elbo_draws(vae, images, repeats: int) -> np.ndarray:
    """`repeats` independent one-sample -ELBOs of each image, `[repeats, B]`: the model's own
    `compute_elbo_terms`, traced once (called eagerly it costs a tenth of a second a draw)."""
    import tensorflow as tf  # noqa: PLC0415

    draw = tf.function(lambda x: -vae.compute_elbo_terms(x)["elbo"])
    x = tf.constant(images, tf.float32)
    return np.stack([draw(x).numpy() for _ in range(repeats)])


def load_benchmark(name: str):
    """benchmarks/NAME.py as a module (benchmarks/ is not a package), to call its functions here.

    benchmarks/ goes on `sys.path`, as for a script run from there, so that the script's imports
    of its sibling modules (`baselines`, `binarization`) work."""
    folder = str(REPO_ROOT / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def default_run(tmp_path_factory, worker_id) -> tuple[Path, subprocess.CompletedProcess]:
    """The quick start, run once per session: `tfvae train --quiet`, no other argument, in an empty
    working directory (the defaults: 80 epochs on the built-in digits, about a minute).

    Returns:
        `(run directory, the completed process)`; the run is under `runs/` of the working directory.
    """

    def quick_start(working_dir: Path) -> dict:
        completed = run_cli("train", "--quiet", cwd=working_dir)
        assert completed.returncode == 0, completed.stderr[-3000:]
        (run_dir,) = (working_dir / "runs").iterdir()
        return {"run_dir": str(run_dir), "args": completed.args, "stdout": completed.stdout,
                "stderr": completed.stderr}

    run = computed_once(tmp_path_factory, worker_id, "quick-start", quick_start)
    return Path(run["run_dir"]), subprocess.CompletedProcess(run["args"], 0, run["stdout"], run["stderr"])


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
