"""Training objectives side by side on MNIST: ELBO, KL warm-up, free bits, IWAE (K = 5, 50; standard
and DReG gradients), each trained for the same wall-clock budget.

Every configuration trains tfvae's default network (latent size 8, filters 32,64, a 256-unit
dense layer) on the full MNIST training set (../shared/data/mnist-train/, 60,000 images,
dynamic binarization: a fresh Bernoulli sample of each image every epoch), batch 64, Adam 1e-3,
for `--budget-minutes` of training (stopped at the first step past the budget; K = 50 costs
tens of times more per epoch than the ELBO, so it sees far fewer epochs). It is then scored on a
fixed subset of the MNIST test set (the first `--test-examples` images of
../shared/data/mnist-t10k/, binarized once with seed 1234):

    iw_nll      -log p(x) estimated with K = `--samples` importance samples (1000), nats
    elbo        the one-sample ELBO (beta = 1), nats
    active_units  dimensions d with Cov_x(E_q[z_d|x]) > 0.01 (Burda et al. 2015)
    seconds_per_epoch, epochs   the training's pace and how far it got

The equal-epoch comparison: each run keeps its weights after epoch 1, 2, 4, 8, ...; when all
configurations are done, the largest such epoch that every one reached is scored the same way
(`equal_epochs` in the results), unless `--no-equal-epochs`; none when a configuration (K = 50)
did not finish one epoch within the budget.

Results go to `--out` (JSON, default benchmarks/results/objectives.json) after every
configuration, and the script is resumable: a configuration already in the file is not run
again (its snapshots stay in `--work-dir`). The defaults (7 configurations x 10 minutes, plus
about 2 x 7 evaluations of 1,000 images x 1,000 samples) are meant to fit in about two hours on
a 2-core machine; check `seconds_per_epoch` and the evaluation times in the JSON.

Usage: python benchmarks/objectives.py [--budget-minutes 10] [--test-examples 1000] [--tiny]
`--tiny` runs every configuration end to end on a few hundred images in under a minute (a smoke
test, exercised by tests/test_benchmarks_objectives.py; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tfvae.data import load  # noqa: E402
from tfvae.data.idx import read_idx  # noqa: E402
from tfvae.files import write_json_atomic  # noqa: E402
from tfvae.models import build_conv_vae  # noqa: E402
from tfvae.objectives import ELBO, IWAE, LinearWarmup  # noqa: E402
from tfvae.training import TrainConfig  # noqa: E402

#: ../shared/data beside the repository, holding mnist-train/ and mnist-t10k/.
DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
TRAIN_IMAGES = "mnist-train/train-images-idx3-ubyte.gz"
TEST_IMAGES = "mnist-t10k/t10k-images-idx3-ubyte.gz"
EVALUATION_SEED = 1234
BATCH_SIZE = 64
ACTIVE_UNIT_THRESHOLD = 0.01


def configurations(steps_per_epoch: int, warmup_epochs: float, free_bits: float) -> dict:
    """The objectives compared, by name."""
    return {
        "elbo": ELBO(),
        "elbo_warmup": ELBO(kl_schedule=LinearWarmup(max(1, round(warmup_epochs * steps_per_epoch)))),
        "free_bits": ELBO(free_bits=free_bits),
        "iwae_k5_standard": IWAE(5, "standard"),
        "iwae_k5_dreg": IWAE(5, "dreg"),
        "iwae_k50_standard": IWAE(50, "standard"),
        "iwae_k50_dreg": IWAE(50, "dreg"),
    }


def active_units(vae, images, threshold: float = ACTIVE_UNIT_THRESHOLD, batch_size: int = 500) -> int:
    """Burda et al.'s active units: d with Cov_x(E_q[z_d|x]) > threshold over `images`."""
    try:
        from tfvae.diagnostics import active_units as library_active_units  # noqa: PLC0415
    except ImportError:
        library_active_units = None
    if library_active_units is not None:
        try:
            return int(library_active_units(vae, images, threshold=threshold))
        except TypeError:
            pass  # another signature: compute it here
    means = np.concatenate([
        np.asarray(vae.encode(images[start:start + batch_size]).mean())
        for start in range(0, len(images), batch_size)
    ])
    return int(np.sum(means.var(axis=0) > threshold))


def score(vae, images, num_samples: int) -> dict:
    """IW-NLL, ELBO and active units of `vae` on the binarized test `images`."""
    started = time.perf_counter()
    nll = vae.importance_weighted_nll(images, num_samples=num_samples, batch_size=50, seed=EVALUATION_SEED)
    keras.utils.set_random_seed(EVALUATION_SEED)  # the ELBO's posterior noise
    elbo = np.mean(np.concatenate([
        vae.compute_elbo_terms(images[start:start + 250])["elbo"].numpy() for start in range(0, len(images), 250)
    ]))
    return {
        "iw_nll": float(nll.mean()),
        "iw_nll_standard_error": float(nll.std(ddof=1) / np.sqrt(len(nll))) if len(nll) > 1 else None,
        "elbo": float(elbo),
        "active_units": active_units(vae, images),
        "evaluation_seconds": round(time.perf_counter() - started, 1),
    }


class Budget(keras.callbacks.Callback):
    """Stops training at the first step past `seconds`; times epochs; saves power-of-two epochs.

    The clock starts when the first step ends, so the tracing of the train step is not counted
    (it takes seconds, more with K = 50).
    """

    def __init__(self, seconds: float, snapshot_dir: Path):
        super().__init__()
        self.seconds = seconds
        self.snapshot_dir = snapshot_dir
        self.epoch_seconds = []

    def on_train_begin(self, logs=None):
        self.started = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.started is None:
            self.started = time.perf_counter()
        elif time.perf_counter() - self.started > self.seconds:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.model.stop_training:
            return  # a partial epoch: neither timed nor kept
        self.epoch_seconds.append(time.perf_counter() - self.epoch_started)
        completed = epoch + 1
        if completed & (completed - 1) == 0:
            self.model.save_weights(self.snapshot_dir / f"epoch_{completed}.weights.h5")


def build_model(config: TrainConfig, image_shape, objective):
    keras.utils.set_random_seed(0)
    vae = build_conv_vae(image_shape, config.latent_dim, filters=config.filters,
                         hidden_units=config.hidden_units, objective=objective, seed=0)
    vae.compile(optimizer=keras.optimizers.Adam(config.learning_rate))
    vae.optimizer.build(vae.trainable_variables)
    return vae


def run_configuration(name, objective, config, splits, steps_per_epoch, test_images, args, work_dir: Path) -> dict:
    snapshot_dir = work_dir / name
    snapshot_dir.mkdir(parents=True, exist_ok=True)
    vae = build_model(config, splits.image_shape, objective)
    budget = Budget(args.budget_minutes * 60, snapshot_dir)
    history = vae.fit(splits.train, epochs=10**6, callbacks=[budget], verbose=0)
    training_seconds = time.perf_counter() - budget.started
    steps = int(vae.optimizer.iterations.numpy())
    result = {
        "objective": repr(objective),
        "training_seconds": round(training_seconds, 1),
        "steps": steps,
        "epochs": round(steps / steps_per_epoch, 2),
        "complete_epochs": len(budget.epoch_seconds),
        # From the timed steps (all but the first), so that a run shorter than one epoch has it too.
        "seconds_per_epoch": round(training_seconds / max(1, steps - 1) * steps_per_epoch, 3),
        "final_train_loss": float(history.history["loss"][-1]),
        "snapshots": sorted(int(p.name.split("_")[1].split(".")[0]) for p in snapshot_dir.glob("epoch_*.weights.h5")),
    }
    result.update(score(vae, test_images, args.samples))
    return result


def equal_epoch_comparison(results: dict, config, splits, steps_per_epoch, test_images, args, work_dir: Path) -> dict:
    reached = [set(entry["snapshots"]) for entry in results["configurations"].values()]
    common = set.intersection(*reached) if reached else set()
    if not common:
        return {"epochs": None, "note": "no epoch count was reached by every configuration"}
    epochs = max(common)
    scores = {}
    for name in results["configurations"]:
        objective = configurations(steps_per_epoch, args.warmup_epochs, args.free_bits)[name]
        vae = build_model(config, splits.image_shape, objective)
        vae.load_weights(work_dir / name / f"epoch_{epochs}.weights.h5")
        scores[name] = score(vae, test_images, args.samples)
        print(f"equal epochs ({epochs}) {name}: {scores[name]}", flush=True)
    return {"epochs": epochs, "scores": scores}


def print_table(results: dict) -> None:
    samples = results["settings"]["samples"]
    print(f"| objective | epochs | s/epoch | test IW-NLL (K={samples}) | test ELBO | active units |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, entry in results["configurations"].items():
        print(f"| {name} | {entry['epochs']} | {entry['seconds_per_epoch']} | {entry['iw_nll']:.2f} | "
              f"{entry['elbo']:.2f} | {entry['active_units']} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-minutes", type=float, default=10.0, help="training wall-clock budget per configuration")
    parser.add_argument("--test-examples", type=int, default=1000, help="the first N MNIST test images are scored")
    parser.add_argument("--samples", type=int, default=1000, help="K of the test IW-NLL")
    parser.add_argument("--warmup-epochs", type=float, default=5.0, help="epochs of the linear KL warm-up")
    parser.add_argument("--free-bits", type=float, default=0.5, help="nats per latent dimension")
    parser.add_argument("--only", help="comma-separated configuration names (default: all)")
    parser.add_argument("--no-equal-epochs", action="store_true", help="skip the equal-epoch comparison")
    parser.add_argument("--data-dir", default=str(DATA_DIR), help="holding mnist-train/ and mnist-t10k/ (default: %(default)s)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "objectives.json"))
    parser.add_argument("--work-dir", help="weight snapshots (default: beside --out)")
    parser.add_argument("--tiny", action="store_true", help="a smoke test: a few hundred images, seconds per configuration")
    args = parser.parse_args(argv)

    # The default network of `tfvae train` (latent 8, conv 32-64, a 256-unit dense layer), pinned
    # here so that later changes of the quick start's defaults do not change this benchmark.
    config = TrainConfig(latent_dim=8, filters=(32, 64), hidden_units=256, learning_rate=1e-3)
    train_path, test_path = Path(args.data_dir) / TRAIN_IMAGES, Path(args.data_dir) / TEST_IMAGES
    train_images = read_idx(train_path)[..., np.newaxis]
    test_raw = read_idx(test_path)[: args.test_examples, ..., np.newaxis]
    if args.tiny:
        config = TrainConfig(latent_dim=4, filters=(4,), hidden_units=None)
        train_images, test_raw = train_images[:128], test_raw[:16]
        args.budget_minutes, args.samples = min(args.budget_minutes, 0.01), min(args.samples, 10)
    test_images = (np.random.default_rng(EVALUATION_SEED).random(test_raw.shape) < test_raw / 255.0).astype("float32")

    out = Path(args.out)
    work_dir = Path(args.work_dir) if args.work_dir else out.parent / (out.stem + "_snapshots")
    settings = {
        "train": TRAIN_IMAGES, "train_examples": len(train_images), "binarization": "dynamic",
        "test": TEST_IMAGES, "test_examples": len(test_images), "test_binarization_seed": EVALUATION_SEED,
        "budget_minutes": args.budget_minutes, "samples": args.samples, "batch_size": BATCH_SIZE,
        "latent_dim": config.latent_dim, "filters": list(config.filters), "hidden_units": config.hidden_units,
        "learning_rate": config.learning_rate, "warmup_epochs": args.warmup_epochs, "free_bits": args.free_bits,
        "tiny": args.tiny,
    }
    results = json.loads(out.read_text()) if out.exists() else {}
    if results.get("settings", settings) != settings:
        raise SystemExit(f"{out} holds results of other settings; choose another --out. Expected {settings}, "
                         f"found {results['settings']}")
    results.setdefault("settings", settings)
    results.setdefault("configurations", {})

    with tempfile.TemporaryDirectory() as folder:
        arrays = Path(folder) / "mnist.npz"
        np.savez(arrays, x_train=train_images, x_test=test_raw)
        splits = load(str(arrays), batch_size=BATCH_SIZE, binarize="dynamic", seed=0)
        steps_per_epoch = int(np.ceil(len(train_images) / BATCH_SIZE))
        chosen = configurations(steps_per_epoch, args.warmup_epochs, args.free_bits)
        names = args.only.split(",") if args.only else list(chosen)
        unknown = sorted(set(names) - set(chosen))
        if unknown:
            raise SystemExit(f"Unknown configuration(s) {unknown}. Expected names among {list(chosen)}.")
        for name in names:
            if name in results["configurations"]:
                print(f"{name}: already in {out}, skipped", flush=True)
                continue
            print(f"{name}: training for {args.budget_minutes} minutes", flush=True)
            results["configurations"][name] = run_configuration(
                name, chosen[name], config, splits, steps_per_epoch, test_images, args, work_dir
            )
            print(f"{name}: {results['configurations'][name]}", flush=True)
            write_json_atomic(out, results)
        if not args.no_equal_epochs and "equal_epochs" not in results and set(names) <= set(results["configurations"]):
            results["equal_epochs"] = equal_epoch_comparison(
                results, config, splits, steps_per_epoch, test_images, args, work_dir
            )
            write_json_atomic(out, results)
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
