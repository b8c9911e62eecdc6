"""The quick start's model is worth looking at: a real-digit classifier recognizes its samples."""

import pytest
from conftest import load_benchmark


@pytest.mark.slow
def test_default_configuration_generates_digits_a_classifier_recognizes(default_run):
    quality = load_benchmark("quickstart_quality")
    run_dir, _ = default_run  # what `tfvae train` does with no arguments
    result = quality.sample_quality(run_dir, num_samples=1000, seed=0)
    print(result)  # the margins over the thresholds, shown with `pytest -s`
    generated, real = result["generated"], result["real"]
    assert generated["mean_top_probability"] >= quality.MIN_MEAN_TOP_PROBABILITY, result
    assert generated["classes_present"] == quality.NUM_CLASSES, result
    # The classifier itself is sound: it recognizes the real held-out digits.
    assert real["accuracy"] > 0.9 and real["classes_present"] == quality.NUM_CLASSES, result
