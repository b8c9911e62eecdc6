"""Conditional VAE (issue 14): what the label buys in likelihood, and whether samples obey it.

On binarized MNIST (trained with dynamic binarization, fresh Bernoulli draws every epoch; the
test set binarized once, pixel ~ Bernoulli(gray level), seed 1234), one encoder/decoder pair
(the same `build_conv_vae` network, Bernoulli likelihood, N(0, I) prior) is trained the same
number of epochs twice:

- `unconditional`: a `tfvae.VAE`; reported: its test -log p(x);
- `conditional`: a `tfvae.ConditionalVAE` given the labels (`--class-prior`); reported: its test
  -log p(x | y) with the true labels, and its marginal -log p(x) = -log sum_y p(y) p(x | y),
  with p(y) the training set's class frequencies (by construction at most -log p(x | y) - log p(y),
  about -log p(x | y) + log 10);

all importance-weighted estimates with K = `--samples` (default 1000) samples per example (the
marginal costs K decodes per class: 10 times the others). Also the test ELBOs, parameters and
training images/s. Then `sample_accuracy`: `--samples-per-class` images drawn from the
conditional model for each class (mean images of p(x | z, y)) are classified by a logistic
regression trained on real gray training images (`--classifier-train-subset` of them); reported:
the share classified as the label they were drawn for, overall and per class, and the
classifier's accuracy on the real test images for reference.

Needs: the MNIST IDX files (images and labels) in ../shared/data/mnist-train/ and
../shared/data/mnist-t10k/ beside the repository (or --train-images/--train-labels/
--test-images/--test-labels). Nothing is downloaded.

Resumable like benchmarks/model_family.py: each finished step is written to the results JSON at
once (atomically), each trained model to `<out>.models/<settings hash>/<step>.keras`; a rerun
with the same settings skips finished steps and scores a trained model without training it
again. Other settings get their own entry (the key holds the settings).

Usage:
    python benchmarks/conditional.py [--epochs 10] [--train-subset N] [--test-subset N]
        [--samples 1000] [--class-prior standard_normal] [--out conditional.json]
    python benchmarks/conditional.py --tiny     # under a minute, a smoke test of every step

Cost (2 CPU cores): an epoch over 60,000 images takes minutes per model; the IW estimates take
12 x K decodes per test image in all (K = 1000 on 10,000 test images: 120 million decodes, hours).
Choose --epochs, --test-subset and --samples for the time you have, and report them.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from binarization import EVALUATION_SEED, binarized_once, dynamically_binarized  # noqa: E402

from tfvae.data.idx import read_idx  # noqa: E402
from tfvae.files import write_json_atomic  # noqa: E402
from tfvae.models import build_conv_vae  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TRAIN_IMAGES = SHARED_DATA / "mnist-train" / "train-images-idx3-ubyte.gz"
TRAIN_LABELS = SHARED_DATA / "mnist-train" / "train-labels-idx1-ubyte.gz"
TEST_IMAGES = SHARED_DATA / "mnist-t10k" / "t10k-images-idx3-ubyte.gz"
TEST_LABELS = SHARED_DATA / "mnist-t10k" / "t10k-labels-idx1-ubyte.gz"
STEPS = ("unconditional", "conditional", "sample_accuracy")


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a result depends on (its key in the results file)."""

    epochs: int = 10
    train_subset: int | None = None
    test_subset: int | None = None
    samples: int = 1000
    latent_dim: int = 32
    filters: tuple[int, ...] = (32, 64)
    batch_size: int = 128
    learning_rate: float = 1e-3
    class_prior: str = "standard_normal"
    samples_per_class: int = 100
    classifier_train_subset: int = 10_000
    seed: int = 0

    def key(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


TINY = {"epochs": 1, "train_subset": 512, "test_subset": 16, "samples": 4, "latent_dim": 4, "filters": (8,),
        "batch_size": 64, "samples_per_class": 10, "classifier_train_subset": 512}


@dataclasses.dataclass
class Data:
    """uint8 images `[N, H, W, 1]` and int64 labels `[N]` of both splits."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    @property
    def class_frequencies(self) -> np.ndarray:
        """p(y): the training set's class frequencies `[C]`."""
        counts = np.bincount(self.train_labels, minlength=self.num_classes)
        return counts / counts.sum()

    @property
    def num_classes(self) -> int:
        return int(max(self.train_labels.max(), self.test_labels.max())) + 1


def read_split(images_path: Path, labels_path: Path, subset: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The first `subset` uint8 images `[N, H, W, 1]` of an IDX file, and their int64 labels `[N]`.

    Raises:
        ValueError: images that are not 8-bit, or not as many labels as images.
    """
    images, labels = read_idx(images_path), read_idx(labels_path).astype(np.int64)
    if images.dtype != np.uint8:
        raise ValueError(f"Expected 8-bit (uint8) images in {images_path}. Received: {images.dtype}")
    if len(labels) != len(images):
        raise ValueError(f"Expected one label per image in {labels_path}. Received: {len(labels)} labels "
                         f"for {len(images)} images")
    if images.ndim == 3:
        images = images[..., np.newaxis]
    return (images[:subset], labels[:subset]) if subset else (images, labels)


def trained_model(settings: Settings, data: Data, conditional: bool, model_path: Path):
    """The model of a step: reloaded from `model_path`, or trained and saved there.

    Returns:
        `(vae, train_seconds, train_images_per_second)` (the timings None for a reloaded model).
    """
    if model_path.exists():
        return keras.models.load_model(model_path), None, None
    keras.utils.set_random_seed(settings.seed)
    classes = {"num_classes": data.num_classes, "class_prior": settings.class_prior} if conditional else {}
    vae = build_conv_vae(data.train_images.shape[1:], settings.latent_dim, filters=settings.filters,
                         likelihood="bernoulli", seed=settings.seed, **classes)
    vae.compile(optimizer=keras.optimizers.Adam(settings.learning_rate))
    labels = data.train_labels if conditional else None
    started = time.perf_counter()
    vae.fit(dynamically_binarized(data.train_images, settings.batch_size, settings.seed, labels),
            epochs=settings.epochs, verbose=0)
    seconds = time.perf_counter() - started
    model_path.parent.mkdir(parents=True, exist_ok=True)
    vae.save(model_path)
    return vae, seconds, settings.epochs * len(data.train_images) / seconds


def run_unconditional(settings: Settings, data: Data, model_path: Path) -> dict:
    """The plain VAE's test -log p(x)."""
    vae, seconds, speed = trained_model(settings, data, conditional=False, model_path=model_path)
    test = binarized_once(data.test_images)
    elbo = vae.evaluate(test, batch_size=settings.batch_size, verbose=0, return_dict=True)["elbo"]
    nll = vae.importance_weighted_nll(test, num_samples=settings.samples, seed=EVALUATION_SEED)
    return {"test_elbo": float(elbo), "test_nll": float(nll.mean()), "iw_samples": settings.samples,
            "parameters": int(vae.count_params()), "train_seconds": seconds, "train_images_per_second": speed}


def run_conditional(settings: Settings, data: Data, model_path: Path) -> dict:
    """The conditional VAE's test -log p(x | y) and its marginal -log sum_y p(y) p(x | y)."""
    vae, seconds, speed = trained_model(settings, data, conditional=True, model_path=model_path)
    test, labels = binarized_once(data.test_images), data.test_labels
    elbo = vae.evaluate(test, labels, batch_size=settings.batch_size, verbose=0, return_dict=True)["elbo"]
    nll = vae.importance_weighted_nll(test, labels, num_samples=settings.samples, seed=EVALUATION_SEED)
    frequencies = data.class_frequencies
    marginal = vae.marginal_nll(test, frequencies, num_samples=settings.samples, seed=EVALUATION_SEED)
    return {
        "class_prior": settings.class_prior,
        "test_elbo_given_labels": float(elbo),
        "test_nll_given_labels": float(nll.mean()),
        "test_marginal_nll": float(marginal.mean()),
        # The bound that holds by construction: -log p(x) <= -log p(x|y) - log p(y), per example.
        "marginal_bound": float(np.mean(nll - np.log(frequencies[labels]))),
        "class_frequencies": [float(p) for p in frequencies],
        "iw_samples": settings.samples,
        "parameters": int(vae.count_params()),
        "train_seconds": seconds,
        "train_images_per_second": speed,
    }


def run_sample_accuracy(settings: Settings, data: Data, conditional_model_path: Path) -> dict:
    """How often a classifier of real digits recognizes the label a sample was drawn for."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415 (a benchmark-only dependency)

    vae = keras.models.load_model(conditional_model_path)
    count = settings.classifier_train_subset
    real = data.train_images[:count].reshape(len(data.train_images[:count]), -1) / 255.0
    classifier = LogisticRegression(max_iter=1000).fit(real, data.train_labels[:count])
    test_accuracy = classifier.score(data.test_images.reshape(len(data.test_images), -1) / 255.0, data.test_labels)
    labels = np.repeat(np.arange(data.num_classes), settings.samples_per_class)
    samples = np.asarray(vae.sample(len(labels), seed=settings.seed, labels=labels))
    predicted = classifier.predict(samples.reshape(len(samples), -1))
    per_class = [float(np.mean(predicted[labels == label] == label)) for label in range(data.num_classes)]
    return {
        "sample_accuracy": float(np.mean(predicted == labels)),
        "sample_accuracy_per_class": per_class,
        "samples_per_class": settings.samples_per_class,
        "classifier": f"logistic regression on {len(real)} real gray training images",
        "classifier_test_accuracy": float(test_accuracy),
    }


def summary_line(name: str, result: dict) -> str:
    if name == "unconditional":
        return f"{name}: -log p(x) {result['test_nll']:.2f} nats (K={result['iw_samples']})"
    if name == "conditional":
        return (f"{name}: -log p(x|y) {result['test_nll_given_labels']:.2f}, marginal -log p(x) "
                f"{result['test_marginal_nll']:.2f} (bound {result['marginal_bound']:.2f}) nats (K={result['iw_samples']})")
    return (f"{name}: {result['sample_accuracy']:.3f} of the samples classified as their label "
            f"(classifier: {result['classifier_test_accuracy']:.3f} on real test images)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Settings()
    parser.add_argument("--tiny", action="store_true", help="an under-a-minute smoke run: " + json.dumps(TINY))
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="epochs of each model (default: %(default)s)")
    parser.add_argument("--train-subset", type=int, default=None, help="train on the first N images (default: all)")
    parser.add_argument("--test-subset", type=int, default=None, help="score the first N test images (default: all)")
    parser.add_argument("--samples", type=int, default=defaults.samples, help="K importance samples per example (default: %(default)s)")
    parser.add_argument("--latent-dim", type=int, default=defaults.latent_dim)
    parser.add_argument("--filters", default=",".join(map(str, defaults.filters)))
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--class-prior", choices=["standard_normal", "learned"], default=defaults.class_prior, help="p(z|y) of the conditional model (default: %(default)s)")
    parser.add_argument("--samples-per-class", type=int, default=defaults.samples_per_class, help="conditional samples classified per class (default: %(default)s)")
    parser.add_argument("--classifier-train-subset", type=int, default=defaults.classifier_train_subset, help="real training images of the classifier (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--train-images", type=Path, default=TRAIN_IMAGES)
    parser.add_argument("--train-labels", type=Path, default=TRAIN_LABELS)
    parser.add_argument("--test-images", type=Path, default=TEST_IMAGES)
    parser.add_argument("--test-labels", type=Path, default=TEST_LABELS)
    parser.add_argument("--out", type=Path, default=Path("conditional.json"), help="the results JSON (default: %(default)s)")
    args = parser.parse_args(argv)
    for path in (args.train_images, args.train_labels, args.test_images, args.test_labels):
        if not path.is_file():
            parser.error(f"Expected an MNIST IDX file at {path}; no such file. Put it there or pass "
                         "--train-images/--train-labels/--test-images/--test-labels.")
    values = dict(
        epochs=args.epochs, train_subset=args.train_subset, test_subset=args.test_subset, samples=args.samples,
        latent_dim=args.latent_dim, filters=tuple(int(f) for f in args.filters.split(",")),
        batch_size=args.batch_size, learning_rate=args.learning_rate, class_prior=args.class_prior,
        samples_per_class=args.samples_per_class, classifier_train_subset=args.classifier_train_subset,
        seed=args.seed,
    )
    if args.tiny:
        values.update(TINY)
    settings = Settings(**values)
    data = Data(*read_split(args.train_images, args.train_labels, settings.train_subset),
                *read_split(args.test_images, args.test_labels, settings.test_subset))

    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    runs = results.setdefault("runs", {})
    entry = runs.setdefault(settings.key(), {"settings": dataclasses.asdict(settings), "results": {}})
    models = args.out.with_name(args.out.name + ".models") / hashlib.sha1(settings.key().encode()).hexdigest()[:12]
    steps = {
        "unconditional": lambda: run_unconditional(settings, data, models / "unconditional.keras"),
        "conditional": lambda: run_conditional(settings, data, models / "conditional.keras"),
        "sample_accuracy": lambda: run_sample_accuracy(settings, data, models / "conditional.keras"),
    }
    for name in STEPS:
        if name in entry["results"]:
            print(f"{name}: done already, skipped")
            continue
        started = time.perf_counter()
        result = steps[name]()
        result["wall_seconds"] = round(time.perf_counter() - started, 1)
        entry["results"][name] = result
        write_json_atomic(args.out, results)
        print(summary_line(name, result), flush=True)
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
