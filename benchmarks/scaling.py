"""Training throughput (images/s) on one device, on 2 mirrored replicas, and on two local workers.

    python benchmarks/scaling.py [--epochs 3] [--batch-size 128]

Every configuration trains the same conv VAE with `fit` on scikit-learn's digits, upsampled to
32x32 so that a step is real work, with the same global batch size. The replicas are logical
devices split from the one CPU and the two workers are processes on 127.0.0.1: on a machine
whose cores are shared this measures the overhead of tf.distribute (ratio of time per image to
one device), not a speed-up. The one-device and 2-replica runs alternate in one process, and the
best epoch of each is kept; the two workers run at the same time as two more processes.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The overhead per image of the 2-replica run over one device that the issue allows.
MAX_TWO_REPLICA_OVERHEAD = 1.5


def _environment(extra=None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.update(extra or {})
    return env


def _images():
    import numpy as np  # noqa: PLC0415

    from tfvae.data import load_digits  # noqa: PLC0415

    (train_images, _), _ = load_digits(seed=0)
    return np.kron(train_images, np.ones((1, 4, 4, 1), dtype="float32"))  # [N, 32, 32, 1]


def _best_images_per_second(strategy, images, args) -> float:
    import keras  # noqa: PLC0415

    import tfvae  # noqa: PLC0415

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.started)

    keras.utils.set_random_seed(0)
    with strategy.scope():
        vae = tfvae.build_conv_vae(images.shape[1:], 16, filters=(32, 64), seed=0)
        vae.compile(optimizer=keras.optimizers.Adam(1e-3))
    seconds = []
    vae.fit(images, batch_size=args.batch_size, epochs=args.epochs + 1, verbose=0,
            callbacks=[EpochTimer()])
    return len(images) / min(seconds[1:])  # epoch 0 traces the step


def measure_replicas(args) -> dict:
    """In this process: one device and 2 logical-CPU replicas, alternating."""
    import tensorflow as tf  # noqa: PLC0415

    from tfvae import distribute  # noqa: PLC0415

    mirrored = distribute.get_strategy("mirrored", num_cpu_devices=2)
    images = _images()
    results = {"one device": [], "2 replicas (MirroredStrategy)": []}
    for _ in range(args.rounds):
        results["one device"].append(
            _best_images_per_second(tf.distribute.get_strategy(), images, args)
        )
        results["2 replicas (MirroredStrategy)"].append(
            _best_images_per_second(mirrored, images, args)
        )
    return {name: max(values) for name, values in results.items()}


def measure_worker(args) -> dict:
    """In this process: one of two workers (TF_CONFIG set by the parent)."""
    from tfvae import distribute  # noqa: PLC0415

    strategy = distribute.get_strategy("multi_worker")
    return {"images_per_second": _best_images_per_second(strategy, _images(), args)}


def _run_self(mode: str, args, env=None) -> subprocess.Popen:
    command = [sys.executable, __file__, "--mode", mode, "--epochs", str(args.epochs),
               "--batch-size", str(args.batch_size), "--rounds", str(args.rounds)]
    return subprocess.Popen(command, env=_environment(env), stdout=subprocess.PIPE, text=True)


def _result(process: subprocess.Popen) -> dict:
    stdout, _ = process.communicate(timeout=1800)
    if process.returncode:
        raise RuntimeError(f"a benchmark process failed with status {process.returncode}")
    return json.loads(stdout.strip().splitlines()[-1])


def _two_worker_configs() -> list[str]:
    sockets = [socket.socket() for _ in range(2)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    workers = [f"127.0.0.1:{sock.getsockname()[1]}" for sock in sockets]
    for sock in sockets:
        sock.close()
    return [
        json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        for index in range(2)
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after a warm-up one")
    parser.add_argument("--batch-size", type=int, default=128, help="global batch size")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of 1 and 2 replicas")
    parser.add_argument("--mode", choices=["main", "replicas", "worker"], default="main",
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.mode == "replicas":
        print(json.dumps(measure_replicas(args)))
        return 0
    if args.mode == "worker":
        print(json.dumps(measure_worker(args)))
        return 0

    figures = _result(_run_self("replicas", args))
    workers = [_run_self("worker", args, {"TF_CONFIG": config}) for config in _two_worker_configs()]
    worker_results = [_result(worker) for worker in workers]
    figures["2 local workers (MultiWorkerMirroredStrategy)"] = min(
        result["images_per_second"] for result in worker_results
    )
    baseline = figures["one device"]
    print(f"Training throughput, conv VAE on 32x32 digits, global batch {args.batch_size}, best "
          f"of {args.epochs} epochs x {args.rounds} rounds (shared CPU: overhead, not speed-up)")
    print(f"{'configuration':48s} {'images/s':>10s} {'time per image vs one device':>30s}")
    for name, images_per_second in figures.items():
        print(f"{name:48s} {images_per_second:10.0f} {baseline / images_per_second:29.2f}x")
    overhead = baseline / figures["2 replicas (MirroredStrategy)"]
    verdict = "OK" if overhead < MAX_TWO_REPLICA_OVERHEAD else "TOO SLOW"
    print(f"2-replica overhead per image: {overhead:.2f}x "
          f"(target < {MAX_TWO_REPLICA_OVERHEAD}x): {verdict}")
    return 0 if overhead < MAX_TWO_REPLICA_OVERHEAD else 1


if __name__ == "__main__":
    sys.exit(main())
