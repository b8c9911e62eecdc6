"""Is the quick start's model worth looking at? Generated digits scored by a real-digit classifier.

`tfvae train` with no arguments trains on scikit-learn's 8x8 digits. This script trains that
default configuration (in-process, through `tfvae.training.train`), or reads an existing run
directory, and asks a logistic regression trained on the run's own training digits (their 64
pixels) to classify 1,000 generated samples (the decoder means of prior samples). A model worth
looking at gives samples the classifier is confident about (mean top-class probability >= 0.80)
and covers every digit (all 10 classes among the predictions). The same figures for the real
held-out digits are printed beside them, as the ceiling.

Usage: python benchmarks/quickstart_quality.py [--run-dir RUN] [--samples 1000] [--seed 0]
Options such as --latent-dim override the defaults, for exploring other configurations.
Targets: mean top-class probability >= 0.80 and 10 classes present, for the generated samples.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

from tfvae.data import load_digits  # noqa: E402
from tfvae.training import TrainConfig, load_run_config, load_run_model, train  # noqa: E402

#: The thresholds the quick start's samples must meet.
MIN_MEAN_TOP_PROBABILITY = 0.80
NUM_CLASSES = 10


def fit_digit_classifier(config: TrainConfig) -> tuple[LogisticRegression, np.ndarray, np.ndarray]:
    """A logistic regression on the pixels of the run's training digits.

    Args:
        config: the run's `TrainConfig` (its validation fraction and seed give the split).

    Returns:
        `(classifier, held_out_images [N, 8, 8, 1], held_out_labels [N])`.
    """
    (train_images, train_labels), (held_out_images, held_out_labels) = load_digits(
        validation_fraction=config.validation_fraction, seed=config.seed
    )
    classifier = LogisticRegression(max_iter=5000)
    classifier.fit(train_images.reshape(len(train_images), -1), train_labels)
    return classifier, held_out_images, held_out_labels


def classify(classifier: LogisticRegression, images) -> dict:
    """The classifier's verdict on images `[N, 8, 8, 1]` in [0, 1].

    Returns:
        `{"mean_top_probability", "classes_present", "class_counts"}`: the mean over images of
        the largest class probability, the number of distinct predicted classes, and the count
        of each predicted class (a list of 10).
    """
    probabilities = classifier.predict_proba(np.asarray(images).reshape(len(images), -1))
    predicted = classifier.classes_[probabilities.argmax(axis=1)]
    counts = np.bincount(predicted, minlength=NUM_CLASSES)
    return {
        "mean_top_probability": float(probabilities.max(axis=1).mean()),
        "classes_present": int(np.count_nonzero(counts)),
        "class_counts": counts.tolist(),
    }


def sample_quality(run_dir, num_samples: int = 1000, seed: int = 0) -> dict:
    """Scores a run's generated samples and its real held-out digits with the same classifier.

    Returns:
        `{"generated": classify(...), "real": classify(...), "num_real": N}`.
    """
    config = load_run_config(run_dir)
    classifier, held_out_images, held_out_labels = fit_digit_classifier(config)
    vae = load_run_model(run_dir)
    generated = np.asarray(vae.sample(num_samples, seed=seed))
    real = classify(classifier, held_out_images)
    real["accuracy"] = float(np.mean(classifier.predict(held_out_images.reshape(len(held_out_images), -1)) == held_out_labels))
    return {"generated": classify(classifier, generated), "real": real, "num_real": len(held_out_images)}


def main(argv=None) -> None:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", help="score this run instead of training the default configuration")
    parser.add_argument("--samples", type=int, default=1000, help="generated samples to classify")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prior samples")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--latent-dim", type=int, default=defaults.latent_dim)
    parser.add_argument("--filters", default=",".join(map(str, defaults.filters)))
    parser.add_argument("--hidden-units", type=int, default=defaults.hidden_units)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--binarize", default=defaults.binarize)
    parser.add_argument("--likelihood", default=defaults.likelihood)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as folder:
        run_dir = args.run_dir
        seconds = None
        if run_dir is None:
            run_dir = str(Path(folder) / "run")
            config = dataclasses.replace(
                defaults, run_dir=run_dir, epochs=args.epochs, latent_dim=args.latent_dim,
                filters=tuple(int(f) for f in args.filters.split(",")), hidden_units=args.hidden_units,
                learning_rate=args.learning_rate, batch_size=args.batch_size, binarize=args.binarize,
                likelihood=args.likelihood,
            )
            metrics = train(config, verbose=0)
            seconds = metrics["seconds_this_session"]
        config = load_run_config(run_dir)
        result = sample_quality(run_dir, args.samples, args.seed)

    print(f"digits: latent {config.latent_dim}, filters {config.filters}, hidden {config.hidden_units}, "
          f"{config.likelihood}, binarize {config.binarize}, {config.epochs} epochs, batch {config.batch_size}, "
          f"Adam {config.learning_rate}" + (f"; trained in {seconds:.0f} s" if seconds is not None else ""))
    print("classifier: logistic regression on the run's training digits (64 pixels)\n")
    print(f"{'images':<28}{'mean top-class prob':>21}{'classes present':>17}")
    print(f"{'generated (' + str(args.samples) + ', decoder means)':<28}"
          f"{result['generated']['mean_top_probability']:>21.3f}{result['generated']['classes_present']:>17}")
    print(f"{'real held-out (' + str(result['num_real']) + ')':<28}"
          f"{result['real']['mean_top_probability']:>21.3f}{result['real']['classes_present']:>17}")
    print(f"\ngenerated per class: {result['generated']['class_counts']}")
    print(f"classifier accuracy on the real held-out digits: {result['real']['accuracy']:.3f}")
    print(f"target: generated mean top-class prob >= {MIN_MEAN_TOP_PROBABILITY}, {NUM_CLASSES} classes present")


if __name__ == "__main__":
    main()
