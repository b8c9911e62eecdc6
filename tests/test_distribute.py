"""tfvae.distribute: strategies, equality with one-device training, multi-worker jobs, precision.

Checks that need several (logical) devices run in fresh processes (tests/mirrored_checks.py and
tests/multi_worker_fit.py): TensorFlow fixes its devices when it first starts, long before these
tests run in pytest's process.
"""

from __future__ import annotations

import csv
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import (
    TESTS_DIR,
    assert_one_step_equals_one_device,
    cli_environment,
    parse_result,
    run_cli,
    run_script,
    two_replica_result,
)

import tfvae
from tfvae import distribute
from tfvae.training import TrainConfig, train


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def tf_configs(count: int) -> list[str]:
    workers = [f"127.0.0.1:{port}" for port in free_ports(count)]
    return [
        json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        for index in range(count)
    ]


def start_worker(command: list[str], tf_config: str, log: Path, extra_env=None, cwd=None):
    env = cli_environment({"TF_CONFIG": tf_config, **(extra_env or {})})
    with open(log, "a") as handle:
        return subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd)


# --------------------------------------------------------------------------- get_strategy
def test_get_strategy_default_and_one_device():
    assert distribute.get_strategy() is tf.distribute.get_strategy()
    one_device = distribute.get_strategy("one_device")
    assert isinstance(one_device, tf.distribute.OneDeviceStrategy)
    assert one_device.num_replicas_in_sync == 1
    assert distribute.is_chief(one_device)


def test_get_strategy_rejects_bad_requests(monkeypatch):
    with pytest.raises(ValueError, match=r"Unknown strategy 'gpus'\. Expected one of"):
        distribute.get_strategy("gpus")
    with pytest.raises(ValueError, match="num_cpu_devices only with strategy 'mirrored'"):
        distribute.get_strategy("one_device", num_cpu_devices=2)
    with pytest.raises(ValueError, match="Expected num_cpu_devices to be an integer >= 1"):
        distribute.get_strategy("mirrored", num_cpu_devices=0)
    # pytest's TensorFlow has one CPU device already: splitting it now is refused, clearly.
    with pytest.raises(ValueError, match="already initialized 1"):
        distribute.get_strategy("mirrored", num_cpu_devices=2)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="Expected the TF_CONFIG environment variable"):
        distribute.get_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match=r"Received: TF_CONFIG='\{not json'"):
        distribute.get_strategy("multi_worker")


def test_tpu_strategy_fails_clearly_without_a_tpu():
    started = time.perf_counter()
    with pytest.raises(ValueError, match="Expected a reachable TPU for strategy 'tpu'"):
        distribute.get_strategy("tpu")
    assert time.perf_counter() - started < 30


def test_training_options_are_checked_in_the_config():
    with pytest.raises(ValueError, match="Unknown strategy 'mirror'"):
        TrainConfig(strategy="mirror")
    with pytest.raises(ValueError, match="Expected mixed_precision to be one of"):
        TrainConfig(mixed_precision="float16")
    with pytest.raises(ValueError, match="jit_compile .XLA. only with strategy 'default' or"):
        TrainConfig(strategy="mirrored", jit_compile=True)
    assert TrainConfig(strategy="one_device", jit_compile=True).jit_compile is True


def test_cli_rejects_an_unknown_strategy(tmp_path):
    completed = run_cli("train", "--strategy", "gpus", "--run-dir", tmp_path / "run")
    assert completed.returncode == 2
    assert "invalid choice: 'gpus'" in completed.stderr
    assert not (tmp_path / "run").exists()


def test_keras_fix_is_gated_on_the_keras_version():
    # The installed Keras (3.15) is one that needs the fix; installing twice is harmless.
    assert distribute.keras_needs_fit_fix()
    assert distribute.install_keras_fit_fix() is True
    assert distribute.install_keras_fit_fix() is True


# --------------------------------------------------------------------------- equality
@pytest.mark.slow
@pytest.mark.parametrize(
    ("replicas", "batch_size", "likelihood"),
    [(2, 8, "gaussian"), (3, 7, "gaussian"), (2, 6, "discretized_logistic")],
)
def test_one_step_under_mirrored_equals_one_device(replicas, batch_size, likelihood, request):
    if replicas == 2:
        result = two_replica_result(request.getfixturevalue("two_replica_results"), likelihood)
    else:
        result = run_script("mirrored_checks.py", "one-step", "--replicas", replicas,
                            "--batch-size", batch_size, "--likelihood", likelihood)
    assert result["replicas"] == replicas
    assert sum(result["replica_batch_sizes"]) == batch_size
    if batch_size % replicas:
        # Keras's split of 7 over 3 replicas: [3, 3, 1]; unfixed Keras cannot start fit then.
        assert len(set(result["replica_batch_sizes"])) > 1
        assert "must have the same size and shape" in result["error_without_fix"]
    else:
        assert result["error_without_fix"] is None
    assert_one_step_equals_one_device(result)
    # tfvae's own draw_noise: every replica draws its own noise (the generator's state is
    # mirrored, so without folding in the replica id they would all draw the same numbers).
    draws = [np.array(draw) for draw in result["replica_draws"]]
    assert len(draws) == replicas and all(draw.shape == (4, 3) for draw in draws)
    for index in range(1, replicas):
        assert np.max(np.abs(draws[index] - draws[0])) > 0.1


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["iwae", "free-bits"])
def test_one_step_of_another_objective_under_two_replicas_equals_one_device(two_replica_results, objective):
    # 7 examples over 2 replicas ([4, 3]): free bits must take each dimension's mean KL over the
    # global batch, not per replica; IWAE decodes K = 5 samples of every example.
    result = two_replica_result(two_replica_results, objective)
    assert result["replica_batch_sizes"] == [4, 3]
    assert result["objective"].startswith("IWAE(num_samples=5" if objective == "iwae" else "ELBO(")
    assert_one_step_equals_one_device(result)


@pytest.mark.slow
@pytest.mark.parametrize("prior", ["standard_normal", "vamp"])
def test_one_step_of_an_iaf_model_under_two_replicas_equals_one_device(two_replica_results, prior):
    # 7 examples over 2 replicas ([4, 3]); the flow's MADE weights are trained too, and with the
    # VampPrior its pseudo-inputs (whose components are the encoder's pre-flow Gaussians).
    result = two_replica_result(two_replica_results, f"iaf+{prior}")
    assert result["replica_batch_sizes"] == [4, 3]
    assert any("step_0_gate" in name for name in result["weight_changes"]), sorted(result["weight_changes"])
    if prior == "vamp":
        assert any("pseudo_input" in name for name in result["weight_changes"]), sorted(result["weight_changes"])
    assert_one_step_equals_one_device(result)


@pytest.mark.slow
def test_loss_curves_under_two_replicas_match_one_device(two_replica_results):
    result = two_replica_result(two_replica_results, "curves")
    single, mirrored = result["single"], result["mirrored"]
    assert len(mirrored["loss"]) == 3
    assert mirrored["loss"][-1] < mirrored["loss"][0] - 5  # it learns
    # The same data order and initial weights; only the posterior noise of the second
    # replica's half of each batch differs (replicas draw independent noise). Stated
    # tolerance: 1% per epoch, on the training and the validation loss.
    np.testing.assert_allclose(mirrored["loss"], single["loss"], rtol=0.01)
    np.testing.assert_allclose(mirrored["val_loss"], single["val_loss"], rtol=0.01)


@pytest.mark.slow
def test_xla_under_mirrored_is_what_the_readme_says(two_replica_results):
    result = two_replica_result(two_replica_results, "xla")
    # jit_compile="auto" turns XLA off under a strategy...
    assert result["jit_compile=auto"] == {"resolved": False, "error": None}
    # ...and jit_compile=True compiles the whole replicated step, which cannot be placed.
    assert "located in device" in result["jit_compile=True"]["error"]


def test_vae_train_step_outside_strategy_run_uses_the_local_batch(digits):
    (train_images, _), _ = digits
    vae = tfvae.build_conv_vae((8, 8, 1), 2, filters=(4,), seed=0)
    vae.compile(optimizer=keras.optimizers.SGD(0.01))
    logs = vae.train_step(tf.constant(train_images[:16]))
    assert np.isfinite(float(logs["loss"]))
    assert float(logs["loss"]) == pytest.approx(-float(logs["elbo"]), rel=1e-6)


# --------------------------------------------------------------------------- precision, XLA
def _short_training(digits, policy=None, jit_compile=False):
    (train_images, _), (validation_images, _) = digits
    keras.utils.set_random_seed(0)
    with distribute.dtype_policy(policy):
        vae = tfvae.build_conv_vae((8, 8, 1), 4, filters=(16,), seed=0)
        vae.compile(optimizer=keras.optimizers.Adam(2e-3), jit_compile=jit_compile)
        history = vae.fit(train_images[:768], batch_size=64, epochs=2, verbose=0)
        evaluation = vae.evaluate(validation_images, verbose=0, return_dict=True)
    return vae, history.history, evaluation


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_close_to_float32(digits, policy):
    _, reference, reference_eval = _short_training(digits)
    vae, history, evaluation = _short_training(digits, policy)
    assert keras.config.dtype_policy().name == "float32"  # restored after the block
    assert vae.encoder.layers[1].compute_dtype == policy.split("_")[1]
    assert vae.encoder.layers[1].kernel.dtype == "float32"
    if policy == "mixed_float16":
        assert isinstance(vae.optimizer, keras.optimizers.LossScaleOptimizer)
    assert history["loss"][-1] < history["loss"][0]
    # Stated tolerance 3%: bfloat16 keeps 8 bits of mantissa, and under float16 the dynamic
    # loss scale skips the first steps whose scaled gradients overflow.
    np.testing.assert_allclose(history["loss"], reference["loss"], rtol=0.03)
    np.testing.assert_allclose(evaluation["loss"], reference_eval["loss"], rtol=0.03)


def test_xla_trains_close_to_no_xla(digits):
    _, reference, reference_eval = _short_training(digits)
    vae, history, evaluation = _short_training(digits, jit_compile=True)
    assert vae.jit_compile is True
    # Stated tolerance 1%: XLA fuses and reorders float32 arithmetic, and its kernels of the
    # stateless random ops need not draw the same posterior noise.
    np.testing.assert_allclose(history["loss"], reference["loss"], rtol=0.01)
    np.testing.assert_allclose(evaluation["loss"], reference_eval["loss"], rtol=0.01)


def test_train_with_mixed_precision_and_xla_writes_a_run(tmp_path):
    config = TrainConfig(
        latent_dim=2, filters=(8,), epochs=1, strategy="one_device",
        mixed_precision="mixed_float16", jit_compile=True, run_dir=str(tmp_path / "run"),
    )
    metrics = train(config, verbose=0)
    assert keras.config.dtype_policy().name == "float32"
    assert metrics["epochs_completed"] == 1 and np.isfinite(metrics["train"]["loss"])
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["strategy"], saved["mixed_precision"], saved["jit_compile"]) == (
        "one_device", "mixed_float16", True)
    restored = keras.models.load_model(tmp_path / "run" / "model.keras")
    assert restored.encoder.layers[1].compute_dtype == "float16"
    assert not (tmp_path / "run" / "backup").exists()


# --------------------------------------------------------------------------- multi-worker
@pytest.mark.slow
def test_two_workers_need_the_keras_fix_and_train_to_identical_weights(tmp_path):
    command = [sys.executable, str(TESTS_DIR / "multi_worker_fit.py")]
    workers = [
        start_worker(command, tf_config, tmp_path / f"worker{index}.log")
        for index, tf_config in enumerate(tf_configs(2))
    ]
    try:
        codes = [worker.wait(timeout=300) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    logs = [(tmp_path / f"worker{index}.log").read_text() for index in range(2)]
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)
    chief, other = (parse_result(log) for log in logs)
    # Unfixed Keras 3.15 fails in fit under the multi-worker strategy (keras-team/keras#20585).
    for result in (chief, other):
        assert "Invalid reduction dimension 0 for input with 0 dimensions" in (
            result["error_without_fix"]
        )
        assert result["fix_installed"] is True
        assert result["replicas"] == 2
    assert (chief["is_chief"], other["is_chief"]) == (True, False)
    assert chief["history"] == other["history"]
    assert chief["history"]["loss"][-1] < chief["history"]["loss"][0]
    assert chief["weights_sha256"] == other["weights_sha256"]


@pytest.mark.slow
def test_cli_multi_worker_writes_only_the_chiefs_run_and_survives_a_worker_restart(tmp_path):
    run_dir = tmp_path / "run"
    worker_tmp = tmp_path / "tmp"  # TMPDIR of both processes: worker files must not stay
    worker_tmp.mkdir()
    epochs = 4
    command = [
        sys.executable, "-m", "tfvae", "train", "--strategy", "multi_worker", "--run-dir",
        str(run_dir), "--epochs", str(epochs), "--batch-size", "32", "--latent-dim", "2",
        "--filters", "8", "--quiet",
    ]
    configs = tf_configs(2)
    logs = [tmp_path / "chief.log", tmp_path / "worker.log"]
    env = {"TMPDIR": str(worker_tmp)}

    def start(index):
        return start_worker(command, configs[index], logs[index], env, cwd=tmp_path)

    processes = [start(0), start(1)]
    restarts = [0, 0]
    try:
        # Kill worker 1 once its own backup holds a finished epoch, early in the next epoch.
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            backups = list(worker_tmp.glob("tfvae-worker-*-worker-1/backup/training_metadata.json"))
            try:
                if backups and json.loads(backups[0].read_text())["epoch"] >= 1:
                    break
            except (OSError, ValueError):
                pass
            assert processes[1].poll() is None, logs[1].read_text()[-3000:]
            time.sleep(0.05)
        else:
            pytest.fail("worker 1 never finished epoch 1:\n" + logs[1].read_text()[-3000:])
        processes[1].send_signal(signal.SIGKILL)
        processes[1].wait()
        processes[1] = start(1)
        restarts[1] += 1
        # A cluster manager's job: restart whichever process fails, until both finish.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            codes = [process.poll() for process in processes]
            if codes == [0, 0]:
                break
            for index, code in enumerate(codes):
                if code not in (None, 0):
                    assert restarts[index] < 3, logs[index].read_text()[-3000:]
                    processes[index] = start(index)
                    restarts[index] += 1
            time.sleep(0.2)
        else:
            pytest.fail("the job did not finish:\n" + logs[0].read_text()[-3000:])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()

    outputs = [parse_metrics(log.read_text()) for log in logs]
    chief, worker = outputs
    assert chief["epochs_completed"] == worker["epochs_completed"] == epochs
    # Both resumed from their backups (at the same epoch, or the collectives would not match).
    assert chief["resumed_at_epoch"] == worker["resumed_at_epoch"] >= 1
    assert chief["train"] == worker["train"]  # the same model trained on both
    assert chief["run_dir"] == str(run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "checkpoints", "config.json", "interpolations.png", "kl_per_dimension.png", "latent_manifold.png",
        "latent_scatter.png", "logs", "loss_curves.png", "metrics.csv", "metrics.json",
        "model.keras", "reconstructions.png", "samples.png",
    ]
    with (run_dir / "metrics.csv").open() as handle:  # the chief kept every epoch's row
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == list(range(epochs))
    assert json.loads((run_dir / "metrics.json").read_text())["train"] == chief["train"]
    # Only the chief's run directory exists: the worker's run and backup were removed.
    assert not Path(worker["run_dir"]).exists()
    assert sorted(p.name for p in worker_tmp.iterdir() if p.name.startswith("tfvae")) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["run", "tmp", "chief.log", "worker.log"]
    )


def parse_metrics(output: str) -> dict:
    """The metrics JSON `tfvae train` printed last (after any failed attempts' output)."""
    start = output.rindex('{\n  "run_dir"')
    return json.loads(output[start : output.index("\n}", start) + 2])
