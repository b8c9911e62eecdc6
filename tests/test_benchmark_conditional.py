"""benchmarks/conditional.py end to end in its --tiny mode on the digits written as IDX files (a
smoke test: the figures of one tiny epoch mean nothing, the relations between them do)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT, cli_environment
from test_data_files import write_idx


@pytest.mark.slow
def test_tiny_benchmark_reports_every_figure_and_resumes(digits, tmp_path):
    (train_images, train_labels), (test_images, test_labels) = digits
    files = {
        "--train-images": (train_images[..., 0], "train-images-idx3-ubyte.gz"),
        "--train-labels": (train_labels, "train-labels-idx1-ubyte.gz"),
        "--test-images": (test_images[..., 0], "t10k-images-idx3-ubyte.gz"),
        "--test-labels": (test_labels, "t10k-labels-idx1-ubyte.gz"),
    }
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "conditional.py"), "--tiny", "--out", str(tmp_path / "results.json")]
    for flag, (values, name) in files.items():
        scale = 255 if values.ndim > 1 else 1  # images in [0, 1] become 8-bit levels
        write_idx(tmp_path / name, np.round(values * scale).astype(np.uint8), compress=True)
        command += [flag, str(tmp_path / name)]

    first = subprocess.run(command, env=cli_environment(), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    (run,) = json.loads((tmp_path / "results.json").read_text())["runs"].values()
    assert sorted(run["results"]) == ["conditional", "sample_accuracy", "unconditional"]
    assert run["settings"]["samples"] == 4 and run["settings"]["test_subset"] == 16
    plain, conditional, accuracy = (run["results"][name] for name in ("unconditional", "conditional", "sample_accuracy"))
    assert plain["test_nll"] > 0 and plain["iw_samples"] == 4 and plain["train_images_per_second"] > 0
    assert conditional["parameters"] > plain["parameters"]  # the same network, plus the label inputs
    assert sum(conditional["class_frequencies"]) == pytest.approx(1.0)
    # -log sum_y p(y) p(x|y) <= -log p(y_true) p(x|y_true), per example and so on average.
    assert 0 < conditional["test_marginal_nll"] <= conditional["marginal_bound"] + 1e-6
    assert conditional["marginal_bound"] > conditional["test_nll_given_labels"]
    assert len(accuracy["sample_accuracy_per_class"]) == 10 and 0 <= accuracy["sample_accuracy"] <= 1
    assert accuracy["sample_accuracy"] == pytest.approx(np.mean(accuracy["sample_accuracy_per_class"]))
    assert accuracy["classifier_test_accuracy"] > 0.5  # logistic regression on real digits

    again = subprocess.run(command, env=cli_environment(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("done already, skipped") == 3
