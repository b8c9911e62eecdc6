"""benchmarks/precision.py and benchmarks/eval_throughput.py end to end in their --tiny modes on
the digits written as IDX files (smoke tests: tiny figures mean nothing, their relations do)."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT, cli_environment
from test_data_files import write_idx


@pytest.fixture(scope="module")
def idx_folders(digits, tmp_path_factory):
    (train_images, _), (test_images, _) = digits
    root = tmp_path_factory.mktemp("idx")
    for folder, name, images in (("train", "train", train_images[:300]), ("test", "t10k", test_images[:40])):
        (root / folder).mkdir()
        write_idx(root / folder / f"{name}-images-idx3-ubyte.gz", np.round(images[..., 0] * 255).astype(np.uint8),
                  compress=True)
    return root / "train", root / "test"


def run_benchmark(name: str, *args) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / f"{name}.py"), "--tiny", *map(str, args)]
    return subprocess.run(command, env=cli_environment(), capture_output=True, text=True, timeout=600)


#: The protocol fields of a --tiny run's results file.
TINY_PROTOCOL = {"epochs": 1, "samples": 10, "test_size": 20, "tiny": True}


def test_training_precision_benchmark_refuses_a_results_file_of_another_protocol(idx_folders, tmp_path):
    train, test = idx_folders
    out = tmp_path / "precision.json"
    written = json.dumps({**TINY_PROTOCOL, "epochs": 2, "presets": {"mnist-vae": {"speedup": 1.5}}})
    out.write_text(written)
    completed = run_benchmark("precision", "--presets", "mnist-vae", "--train-data", train, "--test-data", test,
                              "--out", out)
    assert completed.returncode != 0
    assert "holds figures of another protocol: expected {'epochs': 1" in completed.stderr
    assert "received {'epochs': 2" in completed.stderr
    assert out.read_text() == written  # nothing the user has is lost


@pytest.mark.slow
def test_training_precision_benchmark_compares_both_precisions_per_preset(idx_folders, tmp_path):
    train, test = idx_folders
    out = tmp_path / "precision.json"
    # An earlier run of the same protocol measured another preset: its figures stay in the file.
    earlier = {"speedup": 1.25, "nll_difference": 0.5, "cpu": "another CPU (2 cores)"}
    out.write_text(json.dumps({**TINY_PROTOCOL, "presets": {"mnist-best": earlier, "mnist-vae": {"speedup": 9.0}}}))
    completed = run_benchmark("precision", "--presets", "mnist-vae", "--train-data", train, "--test-data", test,
                              "--out", out)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(out.read_text())
    assert re.fullmatch(r".+ \(\d+ cores\)", results["cpu"]), results["cpu"]  # the figures' machine
    assert results["presets"]["mnist-best"] == earlier
    runs = results["presets"]["mnist-vae"]
    assert runs["cpu"] == results["cpu"] and runs["speedup"] != 9.0  # replaced by this run's
    full, half = runs["float32"], runs["mixed_bfloat16"]
    for run in (full, half):
        assert run["images_per_second"] > 0 and np.isfinite(run["test_iw_nll"]) and run["validation_elbo"] < 0
        assert run["test_scored"].startswith("the first 20 of all 40 examples")
    assert runs["speedup"] == pytest.approx(half["images_per_second"] / full["images_per_second"], rel=1e-2)
    assert runs["nll_difference"] == pytest.approx(half["test_iw_nll"] - full["test_iw_nll"])
    assert full["test_iw_nll"] != half["test_iw_nll"]  # two trainings, not one reported twice
    assert "mnist-vae: float32" in completed.stdout and "x the speed" in completed.stdout


@pytest.mark.slow
def test_evaluation_throughput_benchmark_reports_every_configuration(idx_folders, tmp_path):
    _, test = idx_folders
    out = tmp_path / "throughput.json"
    completed = run_benchmark("eval_throughput", "--run", tmp_path / "no-run", "--test-data", test, "--out", out)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["model"].startswith("an untrained mnist-vae") and results["samples"] == 20
    assert re.fullmatch(r".+ \(\d+ cores\)", results["cpu"]), results["cpu"]
    figures = results["configurations"]
    assert sorted(figures) == ["bfloat16", "bfloat16-chunk50k", "float32", "float32-chunk50k"]
    assert figures["float32"]["difference_from_float32"] == 0.0
    # The chunk size changes nothing but the speed (400 decodes: one chunk at either size, so the
    # same importance samples); bfloat16 moves the estimate, a little.
    assert figures["float32-chunk50k"]["iw_nll"] == pytest.approx(figures["float32"]["iw_nll"], abs=1e-3)
    assert 0 < abs(figures["bfloat16"]["difference_from_float32"]) < 0.1
    assert all(f["decodes_per_second_best"] >= f["decodes_per_second_median"] > 0 for f in figures.values())
